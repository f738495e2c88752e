//! `fuzz-hl7 [SECONDS] [SEED]`: mutate and run HL7/SS-MIX2 inputs until time is up.

use std::time::{Duration, Instant};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0x6b61_6b65);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seeds = kakehashi_fuzz::seeds(&repo);
    if seeds.is_empty() {
        eprintln!("error: no seed inputs found under conformance/");
        return std::process::ExitCode::FAILURE;
    }
    // Panics are caught and reported; keep the default hook quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut total = 0u64;
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        match kakehashi_fuzz::fuzz(&seeds, seed.wrapping_add(round), 1_000) {
            Ok(n) => total += n,
            Err((input, msg)) => {
                let path = std::env::temp_dir().join(format!("kakehashi-fuzz-crash-{}", std::process::id()));
                let _ = std::fs::write(&path, &input);
                eprintln!("error: panic `{msg}`; input saved to {}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        }
        round += 1;
    }
    println!(
        "fuzz-hl7: {total} inputs from {} seeds in {:.0} s, no panic",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    std::process::ExitCode::SUCCESS
}
