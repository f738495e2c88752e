//! Issue 7 (journey 3): a hospital pushes a discharge summary; it is acknowledged only
//! once durable, idempotent by Bundle.identifier, delivered to the recipient clinic's
//! inbox in its native format through the outbox, and a process killed after the
//! acknowledgement delivers exactly once after restart.

use kakehashi_certs::Role;
use kakehashi_e2e::{Client, ServeProcess, TestGateway, CLINIC, CLINIC_B, HUB};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const SUMMARY: &str = include_str!("../../mappings/tests/fixtures/discharge-summary.json");

async fn post(c: &Client, addr: SocketAddr, body: &Value) -> kakehashi_e2e::Reply {
    c.post_json(addr, "/fhir", body).await.unwrap()
}

async fn wait_for_file(dir: &std::path::Path, secs: u64) -> Vec<std::path::PathBuf> {
    for _ in 0..secs * 10 {
        if let Ok(rd) = std::fs::read_dir(dir) {
            let files: Vec<_> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect();
            if !files.is_empty() {
                return files;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    vec![]
}

async fn count(gw: &TestGateway, sql: &'static str) -> i64 {
    let pool = gw.db().await;
    sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
}

#[tokio::test]
async fn push_is_durable_idempotent_delivered_and_grants_the_recipient() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    let doc: Value = serde_json::from_str(SUMMARY).unwrap();

    // Before: the clinic sees nothing of the hub's patient.
    let before = clinic
        .get(gw.addr, "/fhir/Patient?identifier=urn:oid:1.2.392.100495.20.3.51.14610100011|1000001")
        .await
        .unwrap()
        .json();
    assert_eq!(before["total"], 0);

    let r = post(&hub, gw.addr, &doc).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let location = r.headers["location"].to_str().unwrap().to_string();
    assert!(location.contains("/fhir/Bundle/"));
    assert_eq!(count(&gw, "SELECT COUNT(*) FROM pushed_document").await, 1, "durable before the 201");

    // A retry returns the first result and stores nothing twice.
    let again = post(&hub, gw.addr, &doc).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.headers["location"].to_str().unwrap(), location);
    assert_eq!(count(&gw, "SELECT COUNT(*) FROM pushed_document").await, 1);
    assert_eq!(count(&gw, "SELECT COUNT(*) FROM outbox WHERE kind = 'deliver'").await, 1);
    // Same identifier, different content.
    let mut changed = doc.clone();
    changed["entry"][0]["resource"]["title"] = json!("改訂版");
    let conflict = post(&hub, gw.addr, &changed).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json()["issue"][0]["code"], "conflict");

    // Delivered to clinic A's inbox as MML 4, readable back.
    let files = wait_for_file(&gw.dir.path().join("sites/clinic-a/inbox"), 10).await;
    assert_eq!(files.len(), 1, "{files:?}");
    let mml = std::fs::read(&files[0]).unwrap();
    // What the gateway delivered is valid against the real MML 4 schema (xmllint, from
    // Debian's libxml2-utils, which scripts/test installs).
    let xsd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/mml/schema/mml.xsd");
    let check = std::process::Command::new("xmllint")
        .args(["--noout", "--nonet", "--schema"])
        .arg(&xsd)
        .arg(&files[0])
        .output()
        .expect("xmllint must be installed");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let parsed = kakehashi_adapters_mml_patient(&mml);
    assert_eq!(parsed.as_deref(), Some("1000001"));
    let status_path = format!("{}/$delivery-status", &location[location.find("/fhir").unwrap()..]);
    let mut state = String::new();
    for _ in 0..50 {
        let s = hub.get(gw.addr, &status_path).await.unwrap().json();
        state = s["parameter"][0]["valueCode"].as_str().unwrap_or("").to_string();
        if state == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "delivered");
    // Another institution asking about the document by id gets an absent document's
    // answer, and leaves a trace.
    let stranger = gw.client(Some(&gw.issue("clinic-b-t", CLINIC_B, Role::ClinicTerminal)));
    assert_eq!(stranger.get(gw.addr, &status_path).await.unwrap().status, 404);
    let bundle_ref = status_path.trim_start_matches("/fhir/").trim_end_matches("/$delivery-status").to_string();
    let traced = "SELECT COUNT(*) FROM audit_event WHERE outcome = 'not-found' AND event LIKE $1";
    let n: i64 = sqlx::query_scalar(traced).bind(format!("%{bundle_ref}%")).fetch_one(&gw.db().await).await.unwrap();
    assert_eq!(n, 1, "the refused status read is audited");

    // The referral lets the clinic read the hub's patient and the pushed summary.
    let after = clinic
        .get(gw.addr, "/fhir/Patient?identifier=urn:oid:1.2.392.100495.20.3.51.14610100011|1000001")
        .await
        .unwrap()
        .json();
    // The hub's record, and clinic A's own record of the same person (linked).
    assert_eq!(after["total"], 2, "{after}");
    let pid = after["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["identifier"][0]["value"] == "1000001")
        .and_then(|e| e["resource"]["id"].as_str())
        .unwrap()
        .to_string();
    let comps = clinic.get(gw.addr, &format!("/fhir/Composition?patient={pid}")).await.unwrap().json();
    assert_eq!(comps["total"], 1, "{comps}");
    assert_eq!(comps["entry"][0]["resource"]["title"], "退院時サマリー");
    // Read by id and in $everything: the pushed records come from the database.
    let comp_id = comps["entry"][0]["resource"]["id"].as_str().unwrap();
    let read = clinic.get(gw.addr, &format!("/fhir/Composition/{comp_id}")).await.unwrap();
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), comps["entry"][0]["resource"]);
    // (The document's Organizations and Practitioners are about no patient.)
    let stored = count(&gw, "SELECT COUNT(*) FROM pushed_record WHERE patient IS NOT NULL").await;
    let everything = clinic.get(gw.addr, &format!("/fhir/Patient/{pid}/$everything")).await.unwrap().json();
    let pushed_ids: Vec<&str> = everything["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["meta"]["source"] == "urn:kakehashi:site:push")
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert!(pushed_ids.contains(&comp_id), "{everything}");
    assert_eq!(pushed_ids.len() as i64, stored, "every record of the document about the patient, once: {pushed_ids:?}");
    // A record nobody pushed is still unknown.
    let missing = clinic.get(gw.addr, "/fhir/Composition/not-pushed").await.unwrap();
    assert_eq!(missing.status, 404);
    gw.stop().await;
}

fn kakehashi_adapters_mml_patient(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let start = text.find("<masterId>")?;
    let rest = &text[start..];
    let v = &rest[rest.find('>')? + 1..];
    let v = &v[v.find('>')? + 1..];
    Some(v[..v.find('<')?].to_string())
}

#[tokio::test]
async fn bad_pushes_are_refused_precisely_and_nothing_is_stored_or_delivered() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let doc: Value = serde_json::from_str(SUMMARY).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut d = doc.clone();
        f(&mut d);
        d
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (with(&|d| d["type"] = json!("collection")), 400, "Bundle.type"),
        (with(&|d| d["entry"].as_array_mut().unwrap().swap(0, 1)), 400, "Bundle.entry[0].resource"),
        (
            with(&|d| d["entry"][5]["resource"]["subject"] = json!({"reference": "urn:uuid:does-not-exist"})),
            400,
            "Bundle.entry[5].resource",
        ),
        (
            with(&|d| d["entry"][4]["resource"]["identifier"][0]["value"] = json!("4999999999")),
            400,
            "Composition.section",
        ),
        (
            with(&|d| {
                d["entry"][0]["resource"]["section"].as_array_mut().unwrap().remove(1);
            }),
            400,
            "Composition.section",
        ),
        (with(&|d| d["entry"][3]["resource"]["identifier"][0]["value"] = json!(CLINIC)), 403, ""),
        // The recipients' MML needs the patient's birth date and sex (JP-CLINS requires both).
        (
            with(&|d| {
                d["entry"][1]["resource"].as_object_mut().unwrap().remove("birthDate");
            }),
            400,
            "Patient.birthDate",
        ),
        (
            with(&|d| d.as_object_mut().unwrap().remove("identifier").map(|_| ()).unwrap_or(())),
            400,
            "Bundle.identifier",
        ),
        // A Binary is read under its patient: one whose securityContext names another
        // resource would be stored where nobody could read it.
        (
            with(&|d| {
                d["entry"].as_array_mut().unwrap().push(json!({
                    "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000b1",
                    "resource": {"resourceType": "DocumentReference", "status": "current",
                        "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"},
                        "content": [{"attachment": {"contentType": "text/plain", "url": "urn:uuid:00000000-0000-4000-8000-0000000000b2"}}]}
                }));
                d["entry"].as_array_mut().unwrap().push(json!({
                    "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000b2",
                    "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "5pys5paH",
                        "securityContext": {"reference": "urn:uuid:00000000-0000-4000-8000-0000000000b1"}}
                }));
            }),
            400,
            "Bundle.entry[12].resource.securityContext",
        ),
    ];
    for (body, status, expr) in cases {
        let r = post(&hub, gw.addr, &body).await;
        let v = r.json();
        assert_eq!(r.status, status, "{v}");
        if !expr.is_empty() {
            assert_eq!(v["issue"][0]["expression"][0], expr, "{v}");
        }
    }
    let refused = "SELECT COUNT(*) FROM audit_event WHERE subtype = 'create' AND outcome = '4'";
    let before = count(&gw, refused).await;
    let clinic_sys = gw.client(Some(&gw.issue("clinic-t", CLINIC, Role::ClinicTerminal)));
    assert_eq!(post(&clinic_sys, gw.addr, &doc).await.status, 403);
    assert_eq!(count(&gw, refused).await, before + 1, "a push by a role that may not push is audited");
    assert_eq!(count(&gw, "SELECT COUNT(*) FROM pushed_document").await, 0);
    assert_eq!(count(&gw, "SELECT COUNT(*) FROM outbox").await, 0);
    assert_eq!(count(&gw, "SELECT COUNT(*) FROM policy_grant").await, 0);
    assert!(
        count(&gw, "SELECT COUNT(*) FROM audit_event WHERE subtype = 'create' AND outcome = '4'").await >= 7,
        "refused pushes are audited"
    );
    assert!(wait_for_file(&gw.dir.path().join("sites/clinic-a/inbox"), 1).await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn killed_after_acknowledging_delivers_exactly_once_after_restart() {
    // A real `kakehashi serve` process, killed with SIGKILL between the 201 and the delivery.
    let gw = TestGateway::start().await;
    let hub_id = gw.issue("hub", HUB, Role::HospitalSystem);
    let ca = gw.pki.ca_cert_path();
    let db_url = gw.db_url.clone();
    // Keep its directory, PKI and sample sites; run our own processes on them.
    let kept = gw.stop_keeping_dir().await;
    let dir = kept.path().to_path_buf();
    let config = dir.join("kakehashi.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let (port, admin) = free_ports();
    let serve_cfg = |delay: u64| {
        // admin_listen first: `listen = ` is a suffix of it.
        text.replace("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"127.0.0.1:{admin}\""))
            .replace("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"127.0.0.1:{port}\""))
            .replace("outbox_poll_ms = 100", &format!("outbox_poll_ms = 100\noutbox_delay_ms = {delay}"))
    };
    std::fs::write(&config, serve_cfg(5_000)).unwrap();
    let mut child = ServeProcess::spawn(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Client::new(&ca, Some(&hub_id), &[b"http/1.1"], None);
    wait_ready(&client, addr).await;
    let doc: Value = serde_json::from_str(SUMMARY).unwrap();
    let r = post(&client, addr, &doc).await;
    assert_eq!(r.status, 201);
    // SIGKILL: no chance to flush anything beyond what was committed before the 201.
    child.kill();
    let inbox = dir.join("sites/clinic-a/inbox");
    assert!(std::fs::read_dir(&inbox).map(|r| r.count()).unwrap_or(0) == 0, "not delivered before the kill");

    std::fs::write(&config, serve_cfg(0)).unwrap();
    let mut child = ServeProcess::spawn(&config);
    wait_ready(&client, addr).await;
    let files = wait_for_file(&inbox, 15).await;
    // Give a duplicate delivery every chance to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let files_after: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    child.kill();
    assert_eq!(files.len(), 1);
    assert_eq!(files_after.len(), 1, "exactly one delivery");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db_url).await.unwrap();
    let (state, attempts): (String, i64) =
        sqlx::query_as("SELECT state, attempts FROM outbox WHERE kind = 'deliver'").fetch_one(&pool).await.unwrap();
    assert_eq!((state.as_str(), attempts), ("delivered", 1));

    // A document stored before its records were kept apart (as a database written by an
    // earlier version holds it) gets them at start-up and is served again.
    let records: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pushed_record").fetch_one(&pool).await.unwrap();
    assert!(records > 0);
    sqlx::query("DELETE FROM pushed_record").execute(&pool).await.unwrap();
    let mut child = ServeProcess::spawn(&config);
    wait_ready(&client, addr).await;
    let pid = client.first_id(addr, "/fhir/Patient?identifier=1000001").await;
    let comps = client.get(addr, &format!("/fhir/Composition?patient={pid}")).await.unwrap().json();
    child.kill();
    assert_eq!(comps["total"], 1, "{comps}");
    let again: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pushed_record").fetch_one(&pool).await.unwrap();
    assert_eq!(again, records);
}

/// Two distinct free ports (both held until both are known).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

async fn wait_ready(c: &Client, addr: SocketAddr) {
    for _ in 0..100 {
        if c.get(addr, "/fhir/metadata").await.is_ok_and(|r| r.status == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gateway did not come up on {addr}");
}

/// Pushes, their deliveries and audited reads all write to one database. Under load a
/// push used to make an audit batch fail with "database is locked" (reads answered 503);
/// every writer now waits its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_and_audited_reads_all_succeed() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let doc: Value = serde_json::from_str(SUMMARY).unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (pusher, addr) = (hub.clone(), gw.addr);
        let mut doc = doc.clone();
        doc["identifier"]["value"] = json!(format!("4610100011^2026^DS-LOAD-{i}"));
        tasks.push(tokio::spawn(async move { post(&pusher, addr, &doc).await.status }));
        for _ in 0..4 {
            let reader = hub.clone();
            tasks.push(tokio::spawn(async move {
                reader.get(addr, "/fhir/Patient?identifier=1000001").await.unwrap().status
            }));
        }
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 12, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 48, "{statuses:?}");
    assert_eq!(count(&gw, "SELECT COUNT(*) FROM pushed_document").await, 12);
    gw.stop().await;
}
