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

/// Every string in a value: what a separator would leak into.
fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Issue 21 as classes over every HL7 v2 case (SS-MIX2 and generic): no component,
/// repetition or sub-component separator reaches a value, and every literal reference
/// of a message's resources resolves inside what the message became.
fn hl7_classes(format: &str) {
    for dir in cases(format) {
        let r = run_case(format, &dir).unwrap();
        let Some(resources) = r.actual.get("resources").and_then(serde_json::Value::as_array) else { continue };
        let mut all = Vec::new();
        resources.iter().for_each(|x| strings(x, &mut all));
        // The message's own separators (component, repetition, sub-component); one the
        // message sends escaped as data (\S\, \R\, \T\) may appear.
        let (seps, escaped) = separators(&dir);
        let leaked: Vec<String> = seps
            .iter()
            .zip(["S", "R", "T"])
            .filter(|(_, code)| !escaped.contains(code))
            .map(|(c, _)| c.to_string())
            .collect();
        for s in &all {
            assert!(!leaked.iter().any(|l| s.contains(l.as_str())), "{}: a separator leaked into `{s}`", r.name);
        }
        references_resolve(&r.name, resources);
    }
}

/// Every literal reference of a case's resources resolves inside its output.
fn references_resolve(name: &str, resources: &[serde_json::Value]) {
    let present: std::collections::HashSet<String> = resources
        .iter()
        .map(|x| format!("{}/{}", x["resourceType"].as_str().unwrap_or(""), x["id"].as_str().unwrap_or("")))
        .collect();
    let mut refs = Vec::new();
    for x in resources {
        collect_references(x, &mut refs);
    }
    for reference in refs {
        assert!(present.contains(&reference), "{name}: `{reference}` does not resolve inside the output");
    }
}

/// Issue 21 item 7 as a class over the document formats: every subject (and every
/// other literal reference) of a translated MML, CDA or JAHIS source resolves.
#[test]
fn document_references_resolve() {
    for format in ["mml", "cda", "jahis-rx"] {
        for dir in cases(format) {
            let r = run_case(format, &dir).unwrap();
            if let Some(resources) = r.actual.get("resources").and_then(serde_json::Value::as_array) {
                references_resolve(&r.name, resources);
            }
        }
    }
}

/// MSH-2's component, repetition and sub-component separators of a case's input, and
/// which of them the message also sends escaped (`S`, `R`, `T`).
fn separators(dir: &std::path::Path) -> ([char; 3], Vec<&'static str>) {
    let case: serde_json::Value = std::fs::read_to_string(dir.join("case.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let input = match case.get("input").and_then(serde_json::Value::as_str) {
        Some(p) => repo_root().join(p),
        None => dir.join("input.hl7"),
    };
    let bytes = std::fs::read(&input).unwrap_or_default();
    let start = bytes.windows(3).position(|w| w == b"MSH").unwrap_or(0);
    let enc: Vec<char> = bytes.get(start + 4..start + 8).unwrap_or(b"^~\\&").iter().map(|&b| b as char).collect();
    let text = String::from_utf8_lossy(&bytes);
    let escaped = ["S", "R", "T"].into_iter().filter(|c| text.contains(&format!("{}{c}{}", enc[2], enc[2]))).collect();
    ([enc[0], enc[1], enc[3]], escaped)
}

fn collect_references(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("reference", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_references(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_references(x, out)),
        _ => {}
    }
}

#[test]
fn hl7_values_carry_no_separators_and_references_resolve() {
    hl7_classes("hl7v2");
    hl7_classes("ss-mix2");
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
