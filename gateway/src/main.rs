//! The `kakehashi` command.

fn main() -> std::process::ExitCode {
    kakehashi::cli::main()
}
