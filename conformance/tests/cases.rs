//! Runs every conformance case and compares its output exactly with `expected.json`.

use kakehashi_conformance::{cases, repo_root, run_case, write_emitted};

fn run_format(format: &str) {
    let bless = std::env::var("KAKEHASHI_BLESS").is_ok_and(|v| v == "1");
    let out_dir = repo_root().join("target/conformance-out").join(format);
    let _ = std::fs::remove_dir_all(&out_dir);
    let dirs = cases(format);
    assert!(!dirs.is_empty(), "no conformance cases for {format}");
    let mut failures = Vec::new();
    for dir in &dirs {
        let r = run_case(format, dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        write_emitted(&out_dir, &r).expect("write emitted resources");
        if bless {
            let text = serde_json::to_string_pretty(&r.actual).unwrap() + "\n";
            std::fs::write(dir.join("expected.json"), text).unwrap();
            continue;
        }
        match &r.expected {
            None => failures.push(format!("{}: expected.json is missing", r.name)),
            Some(e) if *e != r.actual => failures.push(format!(
                "{}: output differs from expected.json\n--- actual ---\n{}",
                r.name,
                serde_json::to_string_pretty(&r.actual).unwrap()
            )),
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), dirs.len(), failures.join("\n\n"));
}

#[test]
fn ss_mix2_cases() {
    run_format("ss-mix2");
}

#[test]
fn hl7v2_cases() {
    run_format("hl7v2");
}

#[test]
fn mml_cases() {
    run_format("mml");
}

#[test]
fn jahis_rx_cases() {
    run_format("jahis-rx");
}

#[test]
fn cda_cases() {
    run_format("cda");
}
