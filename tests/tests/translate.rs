//! Issue 20, `kakehashi translate` on large inputs: a whole generated SS-MIX2 storage
//! streamed as NDJSON (one resource a line) in one process, the same resources as the
//! Bundle form; HL7 v2 batch files and directories of messages in one run; bad input
//! named, the rest kept, a non-zero exit.

use kakehashi_e2e::kakehashi_bin;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

fn run(args: &[&str], path: &Path) -> Output {
    std::process::Command::new(kakehashi_bin()).args(args).arg(path).output().expect("run kakehashi")
}

/// A generated SS-MIX2 storage of `patients` with `visits` each (removed with the
/// directory returned).
fn generated(patients: u32, visits: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("storage");
    let gen = std::process::Command::new(kakehashi_bin())
        .args(["generate", "ss-mix2", "--patients", &patients.to_string(), "--visits", &visits.to_string(), "--out"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    (dir, root)
}

/// Resources per type of NDJSON output; every line must be one FHIR resource.
fn ndjson_types(out: &[u8]) -> BTreeMap<String, usize> {
    let mut types = BTreeMap::new();
    for line in String::from_utf8_lossy(out).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        *types.entry(v["resourceType"].as_str().expect("resourceType").to_string()).or_insert(0) += 1;
    }
    types
}

#[test]
fn a_generated_storage_streams_as_ndjson_with_the_same_resources_as_the_bundle() {
    let (_dir, root) = generated(40, 3);

    let nd = run(&["translate", "--from", "ss-mix2", "--format", "ndjson"], &root);
    assert!(nd.status.success(), "{}", String::from_utf8_lossy(&nd.stderr));
    let types = ndjson_types(&nd.stdout);
    assert_eq!(types.get("Patient"), Some(&40), "{types:?}");
    assert!(types.get("MedicationRequest").is_some_and(|&n| n >= 40 * 3), "{types:?}");
    assert!(types.contains_key("Observation"), "{types:?}");
    // stderr is not a terminal here: no progress bar in it.
    assert!(!String::from_utf8_lossy(&nd.stderr).contains('\r'));

    let bundle = run(&["translate", "--from", "ss-mix2"], &root);
    assert!(bundle.status.success());
    let v: Value = serde_json::from_slice(&bundle.stdout).unwrap();
    let mut from_bundle = BTreeMap::new();
    for e in v["entry"].as_array().unwrap() {
        *from_bundle.entry(e["resource"]["resourceType"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(from_bundle, types, "both forms hold the same resources");

    // The stream goes to the independent FHIR validator too (scripts/test).
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-out/stream");
    std::fs::create_dir_all(&out).unwrap();
    let head: Vec<&str> = std::str::from_utf8(&nd.stdout).unwrap().lines().take(300).collect();
    std::fs::write(out.join("generated-storage.ndjson"), head.join("\n") + "\n").unwrap();
}

const ADT: &str = "MSH|^~\\&|HIS|4610100011|GW|RCV|20260501090000||ADT^A08^ADT_A01|{n}|P|2.5||||||UNICODE UTF-8\rEVN||202605010900\rPID|0001||{id}^^^^PI||港^健太^^^^^L^I||19800530|M\r";

fn adt(n: usize, id: &str) -> String {
    ADT.replace("{n}", &n.to_string()).replace("{id}", id)
}

#[test]
fn a_batch_file_and_a_directory_of_messages_translate_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    // An HL7 v2 batch (FHS/BHS ... BTS/FTS) of three messages, LF line ends as files have.
    let batch = format!(
        "FHS|^~\\&|HIS\rBHS|^~\\&|HIS\r{}{}{}BTS|3\rFTS|1\r",
        adt(1, "3000001"),
        adt(2, "3000002"),
        adt(3, "3000003")
    );
    let file = dir.path().join("batch.hl7");
    std::fs::write(&file, batch.replace('\r', "\n")).unwrap();
    let out = run(&["translate", "--from", "hl7v2", "--format", "ndjson"], &file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ndjson_types(&out.stdout).get("Patient"), Some(&3));

    // A directory: each file translated, one broken one named, the others kept.
    let msgs = dir.path().join("inbox");
    std::fs::create_dir_all(&msgs).unwrap();
    std::fs::write(msgs.join("a.hl7"), adt(4, "3000004")).unwrap();
    std::fs::write(msgs.join("b.hl7"), adt(5, "3000005")).unwrap();
    std::fs::write(msgs.join("c.hl7"), "MSH|^~\\&|HIS|46101").unwrap();
    let out = run(&["translate", "--from", "hl7v2", "--format", "ndjson"], &msgs);
    assert_eq!(ndjson_types(&out.stdout).get("Patient"), Some(&2), "the good ones are kept");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed source is an error exit");
    assert!(err.contains("c.hl7") && err.contains("MSH-9"), "the bad file is named with its fault: {err}");
}

/// Issue 21: a message that cannot be translated (a billing type that is out of scope,
/// a type Kakehashi does not map) fails the run and says so in the output, beside
/// what the other messages became; `--allow-partial` keeps the exit at 0 for them.
#[test]
fn an_untranslatable_message_fails_the_run_and_its_outcome_is_in_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let msgs = dir.path().join("feed");
    std::fs::create_dir_all(&msgs).unwrap();
    std::fs::write(msgs.join("1-adt.hl7"), adt(1, "3100001")).unwrap();
    let bar = adt(2, "3100002").replace("ADT^A08^ADT_A01", "BAR^P01^BAR_P01");
    std::fs::write(msgs.join("2-bar.hl7"), bar).unwrap();
    let qry = adt(3, "3100003").replace("ADT^A08^ADT_A01", "ZZZ^Z01");
    std::fs::write(msgs.join("3-zzz.hl7"), qry).unwrap();

    let out = run(&["translate", "--from", "hl7v2"], &msgs);
    assert!(!out.status.success(), "a message that could not be translated is an error exit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2-bar.hl7") && err.contains("out of scope"), "{err}");
    assert!(err.contains("3-zzz.hl7") && err.contains("not mapped"), "{err}");
    let bundle: Value = serde_json::from_slice(&out.stdout).expect("the bundle is still written");
    let entries = bundle["entry"].as_array().unwrap();
    let outcomes: Vec<&Value> =
        entries.iter().map(|e| &e["resource"]).filter(|r| r["resourceType"] == "OperationOutcome").collect();
    let errors: Vec<&str> = outcomes
        .iter()
        .flat_map(|o| o["issue"].as_array().unwrap())
        .filter(|i| i["severity"] == "error")
        .map(|i| i["diagnostics"].as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 2, "one error outcome per message not translated: {errors:?}");
    assert!(errors.iter().any(|d| d.contains("2-bar.hl7") && d.contains("BAR^P01")), "{errors:?}");
    assert!(entries.iter().any(|e| e["resource"]["resourceType"] == "Patient"), "the good message is kept");

    let partial = run(&["translate", "--from", "hl7v2", "--allow-partial", "--format", "ndjson"], &msgs);
    assert!(partial.status.success(), "{}", String::from_utf8_lossy(&partial.stderr));
    let types = ndjson_types(&partial.stdout);
    assert_eq!(types.get("Patient"), Some(&1));
    assert_eq!(types.get("OperationOutcome"), Some(&2), "{types:?}");

    // Nothing translatable at all fails even with --allow-partial.
    let only_bad = dir.path().join("bad");
    std::fs::create_dir_all(&only_bad).unwrap();
    std::fs::write(only_bad.join("bar.hl7"), adt(4, "3100004").replace("ADT^A08^ADT_A01", "DFT^P03")).unwrap();
    assert!(!run(&["translate", "--from", "hl7v2", "--allow-partial"], &only_bad).status.success());
}

/// Issue 21: an SS-MIX2 file translated on its own honours its name's deletion flag
/// (`…_0`: the order was withdrawn).
#[test]
fn a_deleted_ss_mix2_file_translates_as_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let omp = "MSH|^~\\&|HIS|4610100011|GW|RCV|20260501090000||RDE^O11^RDE_O11|9|P|2.5||||||UNICODE UTF-8\rPID|0001||3200001^^^^PI||港^健太^^^^^L^I||19800530|M\rORC|NW|000000000004000|||||||20260501090000\rRXE||103835401^アムロジピン錠５ｍｇ^HOT9|1||TAB^錠^MR9P\r";
    let live = dir.path().join("3200001_20260501_OMP-01_000000000004000_20260501090000000_01_1");
    let gone = dir.path().join("3200001_20260501_OMP-01_000000000004000_20260501093000000_01_0");
    std::fs::write(&live, omp).unwrap();
    std::fs::write(&gone, omp).unwrap();
    let status = |path: &Path| {
        let out = run(&["translate", "--from", "ss-mix2", "--format", "ndjson"], path);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|r| r["resourceType"] == "MedicationRequest")
            .map(|r| r["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status(&live).as_deref(), Some("active"));
    assert_eq!(status(&gone).as_deref(), Some("cancelled"));
}

/// A storage file that cannot be used (misfiled, not HL7) is named in the output, as
/// an error OperationOutcome, not only on stderr; the run exits 1 and keeps the rest.
#[test]
fn an_unusable_storage_file_is_named_in_the_output() {
    let (_dir, root) = generated(2, 1);
    // A file that is not a message, in a patient's ADT directory, named as one.
    let adt = walkdir_first(&root, "ADT-00");
    let bad = adt.join("not-a-message_20260101_ADT-00_-_20260101000000000_01_1");
    std::fs::write(&bad, b"XYZ").unwrap();
    let out = run(&["translate", "--from", "ss-mix2", "--format", "ndjson"], &root);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let errors: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["resourceType"] == "OperationOutcome" && r["issue"][0]["severity"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().contains("not-a-message"), "{}", errors[0]);
    assert!(ndjson_types(&out.stdout).get("Patient").copied().unwrap_or(0) >= 2, "the rest is kept");
}

/// The first directory named `name` under `root`.
fn walkdir_first(root: &Path, name: &str) -> std::path::PathBuf {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == name) {
                    return p;
                }
                stack.push(p);
            }
        }
    }
    panic!("no {name} under {}", root.display())
}
