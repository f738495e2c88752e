//! Issue 7.6: a widely used third-party FHIR client — fhirclient (SMART on FHIR
//! client-py, from PyPI) — configured only with the CA, a certificate and its key,
//! completes journey 2 (clinic terminal reads a consented hub patient) and the push of
//! journey 3 against the gateway over real mutual TLS. The client script is
//! `tests/third_party/fhirclient_journeys.py`; this test judges what it saw.
//!
//! scripts/test installs fhirclient and sets `KAKEHASHI_REQUIRE_FHIRCLIENT=1`, so in CI
//! a missing client is a failure; elsewhere the test says it was skipped.

use kakehashi_certs::Role;
use kakehashi_e2e::{patient_consent, TestGateway, CLINIC, HUB};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn python_with_fhirclient() -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).args(["-c", "import fhirclient"]).output().is_ok_and(|o| o.status.success());
    if ok {
        Some(python)
    } else if std::env::var_os("KAKEHASHI_REQUIRE_FHIRCLIENT").is_some() {
        panic!("{python} cannot import fhirclient (pip install fhirclient==4.4.0)");
    } else {
        eprintln!("skipped: {python} cannot import fhirclient (scripts/test installs it)");
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirclient_reads_consented_hub_records_and_pushes_a_discharge_summary() {
    let Some(python) = python_with_fhirclient() else { return };
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub-system", HUB, Role::HospitalSystem)));
    gw.issue("clinic-a-terminal", CLINIC, Role::ClinicTerminal);
    let consented = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000001").await;
    assert_eq!(
        hub.post_json(gw.addr, "/fhir/Consent", &patient_consent(&consented, CLINIC)).await.unwrap().status,
        201
    );

    let ca = gw.pki.ca_cert_path();
    let pki = ca.parent().unwrap_or(Path::new("."));
    let pair = |name: &str| [pki.join(format!("{name}.pem")), pki.join(format!("{name}.key"))];
    let document = gw.config_path().with_file_name("samples").join("discharge-summary.json");
    let args = serde_json::json!({
        "base": format!("https://{}/fhir/", gw.addr),
        "ca": ca,
        "clinic": pair("clinic-a-terminal"),
        "hub": pair("hub-system"),
        "hub_code": HUB,
        "consented": "1000001",
        "not_consented": "1000003",
        "document": document,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("third_party/fhirclient_journeys.py");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&script).arg(args.to_string()).kill_on_drop(true);
    // requests prefers these over the session's own CA (machine-wide bundles, not ours).
    for var in ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("fhirclient finished within 120 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fhirclient failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("script prints JSON");

    // Journey 2: the hub's patient (and clinic A's own linked record), the hub's
    // medication, labs and problems, one read by id; nothing of a patient without consent.
    let owners: Vec<&str> = seen["patients"].as_array().unwrap().iter().filter_map(|p| p[1].as_str()).collect();
    assert!(owners.contains(&HUB), "{seen}");
    for (ty, n) in [("MedicationRequest", 2), ("Observation", 6), ("Condition", 1)] {
        assert_eq!(seen[ty], serde_json::json!({ "count": n, "owners": [HUB] }), "{ty}: {seen}");
    }
    assert_eq!(seen["read"], true);
    assert_eq!(seen["not_consented"], serde_json::json!([]), "{seen}");

    // Journey 3: the push was acknowledged, and is durable: stored once, delivery queued.
    assert_eq!(seen["push"], "OperationOutcome", "{seen}");
    let pool = gw.db().await;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pushed_document").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 1);
    gw.stop().await;
}
