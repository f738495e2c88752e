//! Issue 20, the records source at work on a real SS-MIX2 storage: what the hospital
//! writes is in the very next read (new files, replaced versions, deletion flags);
//! a restart resumes from the persistent index; broken, half-written and unreachable
//! storage is survived; patients indexed after start-up are linked; the index is
//! rebuilt when it is deleted. Every test runs on SQLite and on PostgreSQL.

use kakehashi_certs::Role;
use kakehashi_e2e::storage::{self, admission, prescription, write};
use kakehashi_e2e::{backend_is_postgres, patient_consent, Client, Options, TestGateway, CLINIC, HUB};
use serde_json::Value;
use sqlx::Row;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The path of an SS-MIX2 message in the test hub's storage.
fn ss_mix2(gw: &TestGateway, pid: &str, date: &str, kind: &str, order: &str, ts: &str, valid: bool) -> PathBuf {
    storage::path(&gw.dir.path().join("sites/hub/ss-mix2"), pid, date, kind, order, ts, valid)
}

/// The drug names of a patient's MedicationRequests, sorted.
async fn drugs(c: &Client, addr: SocketAddr, patient: &str) -> Vec<String> {
    let r = c.get(addr, &format!("/fhir/MedicationRequest?patient={patient}&_count=500")).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let mut out: Vec<String> = v["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| {
                    e["resource"]["medicationCodeableConcept"]["coding"][0]["display"]
                        .as_str()
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn wait_for(what: &str, check: impl AsyncFnMut() -> bool) {
    wait_within(what, 30, check).await
}

async fn wait_within(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..secs * 10 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {secs} s");
}

#[tokio::test]
async fn a_new_file_a_replaced_version_and_a_deletion_flag_are_in_the_very_next_read() {
    // On a local file system a cached patient is told current by change notices: each
    // step lets the patient's directories settle and reads it (so it is armed) first.
    let gw = TestGateway::start().await;
    next_reads_see_what_is_written(&gw, true).await;
    gw.stop().await;
}

#[tokio::test]
async fn the_next_read_sees_what_is_written_with_change_notices_off() {
    // As on a network file system: every read checks the directories' times.
    let gw =
        TestGateway::start_opts(Options { records_extra: "change_notices = false".into(), ..Default::default() }).await;
    next_reads_see_what_is_written(&gw, false).await;
    gw.stop().await;
}

/// A new order, a newer version of it and a deletion flag, each in the very next read;
/// `notices`: change notices are in use, and each step begins from an armed patient.
async fn next_reads_see_what_is_written(gw: &TestGateway, notices: bool) {
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let patient = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000001").await;
    let before = drugs(&hub, gw.addr, &patient).await;
    assert_eq!(before.len(), 2, "the demo's prescription: {before:?}");
    let order = "000000000009001";
    // Directory times younger than a second are not trusted to tell a change: let them
    // age, then read, which arms the patient's notices.
    let settle = async || {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        drugs(&hub, gw.addr, &patient).await;
        let watched = gw.records_status().await["watched_directories"].as_u64().unwrap();
        assert_eq!(watched > 0, notices, "directories under change notices: {watched}");
    };

    // A new order, read at once: no waiting for a scan.
    settle().await;
    write(
        &ss_mix2(gw, "1000001", "20260420", "OMP-01", order, "20260420103100000", true),
        &prescription("1000001", order, ("620000001", "新薬錠１０ｍｇ")),
    );
    let now = drugs(&hub, gw.addr, &patient).await;
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.contains(&"新薬錠１０ｍｇ".to_string()), "{now:?}");
    // ... and in `$everything`, from the same source.
    let all = hub.get(gw.addr, &format!("/fhir/Patient/{patient}/$everything?_count=500")).await.unwrap();
    assert!(String::from_utf8_lossy(&all.body).contains("新薬錠１０ｍｇ"));

    // A newer version of the same order replaces it.
    settle().await;
    write(
        &ss_mix2(gw, "1000001", "20260420", "OMP-01", order, "20260420113100000", true),
        &prescription("1000001", order, ("620000002", "改訂錠５ｍｇ")),
    );
    let now = drugs(&hub, gw.addr, &patient).await;
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.contains(&"改訂錠５ｍｇ".to_string()) && !now.contains(&"新薬錠１０ｍｇ".to_string()), "{now:?}");

    // A newest version flagged 0 deletes the order.
    settle().await;
    write(
        &ss_mix2(gw, "1000001", "20260420", "OMP-01", order, "20260420123100000", false),
        &prescription("1000001", order, ("620000002", "改訂錠５ｍｇ")),
    );
    assert_eq!(drugs(&hub, gw.addr, &patient).await, before);

    // A file rewritten in place (its writer finishing it) is seen too.
    settle().await;
    let late = ss_mix2(gw, "1000001", "20260420", "OMP-01", "000000000009004", "20260420133100000", true);
    let msg = prescription("1000001", "000000000009004", ("620000004", "追記錠"));
    let (bytes, _, _) = encoding_rs::ISO_2022_JP.encode(&msg);
    std::fs::write(&late, &bytes[..24]).unwrap();
    assert_eq!(drugs(&hub, gw.addr, &patient).await, before, "half written: skipped");
    settle().await;
    std::fs::write(&late, &bytes).unwrap();
    assert!(drugs(&hub, gw.addr, &patient).await.contains(&"追記錠".to_string()));

    // A search without a patient finds what the reads indexed.
    let v = hub.get(gw.addr, "/fhir/MedicationRequest?_count=500").await.unwrap().json();
    assert!(!v.to_string().contains("改訂錠５ｍｇ"), "the deleted order is not found by a search either");
}

#[tokio::test]
async fn a_file_changed_through_a_hard_link_outside_the_storage_is_seen_when_listed_again() {
    // Such a write raises no notice in the patient's directories (found by an outside
    // check): the patient is listed again after at most 30 s, as without notices.
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let patient = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000001").await;
    let order = "000000000009005";
    let path = ss_mix2(&gw, "1000001", "20260423", "OMP-01", order, "20260423103100000", true);
    write(&path, &prescription("1000001", order, ("620000005", "リンク錠")));
    let link = gw.dir.path().join("outside-link.hl7");
    std::fs::hard_link(&path, &link).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(drugs(&hub, gw.addr, &patient).await.contains(&"リンク錠".to_string()));
    drugs(&hub, gw.addr, &patient).await;
    assert!(gw.records_status().await["watched_directories"].as_u64().unwrap() > 0, "armed");

    write(&link, &prescription("1000001", order, ("620000006", "改変錠")));
    // Listed again 30 s after the listing at most; 45 s leaves the test host slack.
    wait_within("the change through the link read", 45, async || {
        drugs(&hub, gw.addr, &patient).await.contains(&"改変錠".to_string())
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_index_without_translating_again() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let first = gw.records_status().await;
    assert_eq!(first["complete"], true, "{first}");
    assert!(first["files_indexed"].as_u64().unwrap() >= 12, "{first}");
    let patients = hub.get(gw.addr, "/fhir/Patient?_count=100").await.unwrap().json()["total"].clone();

    let gw = gw.restart().await;
    let hub = gw.client(Some(&gw.issue("hub2", HUB, Role::HospitalSystem)));
    assert_eq!(hub.get(gw.addr, "/fhir/Patient?_count=100").await.unwrap().json()["total"], patients);
    let pt = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000002").await;
    assert_eq!(drugs(&hub, gw.addr, &pt).await.len(), 2);
    // Give the indexer a pass: it finds nothing to do.
    wait_for("an indexer pass", async || gw.records_status().await["passes"].as_u64().unwrap() >= 1).await;
    let again = gw.records_status().await;
    assert_eq!(again["complete"], true, "{again}");
    assert_eq!(again["files_indexed"], 0, "nothing translated again by the indexer: {again}");
    assert_eq!(again["patients_indexed"], 0, "{again}");
    gw.stop().await;
}

#[tokio::test]
async fn a_half_written_file_is_skipped_named_in_metrics_and_taken_once_complete() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let patient = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000001").await;
    let order = "000000000009002";
    let path = ss_mix2(&gw, "1000001", "20260421", "OMP-01", order, "20260421103100000", true);
    let msg = prescription("1000001", order, ("620000003", "途中錠"));
    let (bytes, _, _) = encoding_rs::ISO_2022_JP.encode(&msg);

    // The hospital's writer has flushed the first bytes only.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &bytes[..24]).unwrap();
    let r = hub.get(gw.addr, &format!("/fhir/Patient/{patient}/$everything?_count=500")).await.unwrap();
    assert_eq!(r.status, 200, "the rest of the patient is served");
    assert_eq!(drugs(&hub, gw.addr, &patient).await.len(), 2);
    let status = gw.records_status().await;
    assert!(status["problems"].as_u64().unwrap() >= 1, "counted: {status}");

    // Not HL7 at all is the same: skipped, the rest served.
    let junk = ss_mix2(&gw, "1000001", "20260422", "OML-11", "000000000009003", "20260422103100000", true);
    std::fs::create_dir_all(junk.parent().unwrap()).unwrap();
    std::fs::write(&junk, [0xff, 0xfe, 0x00, 0x01]).unwrap();
    assert_eq!(drugs(&hub, gw.addr, &patient).await.len(), 2);

    // Once complete (its time changes), it is in the next read.
    std::fs::write(&path, &bytes).unwrap();
    let now = drugs(&hub, gw.addr, &patient).await;
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.contains(&"途中錠".to_string()));
    gw.stop().await;
}

#[tokio::test]
async fn a_patient_indexed_after_start_up_is_found_and_linked() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    let clinic_pt = clinic.first_id(gw.addr, "/fhir/Patient?identifier=A-0102").await;

    // The hub admits the clinic's patient (港 健太, same kana, birth date and sex).
    write(
        &ss_mix2(&gw, "2000009", "-", "ADT-00", "999999999999999", "20260501090000000", true),
        &admission("2000009", ("港", "健太"), ("ミナト", "ケンタ"), "19800530", "M"),
    );
    let mut hub_pt = String::new();
    wait_for("the new patient found by identifier", async || {
        let v = hub.get(gw.addr, "/fhir/Patient?identifier=2000009").await.unwrap().json();
        hub_pt = v["entry"][0]["resource"]["id"].as_str().unwrap_or("").to_string();
        !hub_pt.is_empty()
    })
    .await;
    // Found by name too (the background indexer's demographics, not a read).
    wait_for("the new patient found by name", async || {
        hub.get(gw.addr, "/fhir/Patient?name=ミナト").await.unwrap().json()["total"] == 1
    })
    .await;

    // With the patient's consent the clinic reaches the hub's new record from its own.
    assert_eq!(hub.post_json(gw.addr, "/fhir/Consent", &patient_consent(&hub_pt, CLINIC)).await.unwrap().status, 201);
    let v = clinic.get(gw.addr, &format!("/fhir/Linkage?item=Patient/{clinic_pt}")).await.unwrap().json();
    let linked: Vec<String> = v["entry"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["resource"]["item"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["type"] == "alternate")
        .filter_map(|i| i["resource"]["reference"].as_str().map(str::to_string))
        .collect();
    assert_eq!(linked, [format!("Patient/{hub_pt}")], "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn an_unreachable_storage_answers_503_audited_and_the_index_is_kept() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let patient = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000003").await;
    let indexed = gw.records_status().await["files_indexed"].clone();
    let root = gw.dir.path().join("sites/hub/ss-mix2");
    let away = gw.dir.path().join("sites/hub/unmounted");
    std::fs::rename(&root, &away).unwrap();

    let r = hub.get(gw.addr, &format!("/fhir/Patient/{patient}/$everything")).await.unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["resourceType"], "OperationOutcome");
    assert_eq!(v["issue"][0]["code"], "transient");
    assert!(!String::from_utf8_lossy(&r.body).contains("unmounted"), "no paths in the answer");
    let pool = gw.db().await;
    let row = sqlx::query("SELECT outcome FROM audit_event ORDER BY seq DESC LIMIT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(row.get::<String, _>(0), "8", "audited as a failure");
    wait_for("the indexer to notice", async || {
        gw.records_status().await["unreachable_sites"].as_array().is_some_and(|a| a.iter().any(|s| s == "hub"))
    })
    .await;

    // Back: served again from the index as it was (nothing re-translated by the indexer).
    std::fs::rename(&away, &root).unwrap();
    let r = hub.get(gw.addr, &format!("/fhir/Patient/{patient}/$everything")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(hub.get(gw.addr, "/fhir/Patient?identifier=1000003").await.unwrap().json()["total"], 1);
    wait_for("the site reachable again", async || {
        gw.records_status().await["unreachable_sites"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert_eq!(gw.records_status().await["files_indexed"], indexed, "the index was kept, not rebuilt");
    gw.stop().await;
}

#[tokio::test]
async fn a_deleted_index_is_rebuilt_not_served_empty() {
    let gw = TestGateway::start().await;
    let dir = gw.dir.path().to_path_buf();
    let gw = if backend_is_postgres() {
        // The index lives in the PostgreSQL store itself: its tables are dropped.
        let pool = gw.db().await;
        sqlx::query("DROP TABLE rec_file, rec_resource, rec_patient, rec_name, rec_ident, rec_key, rec_dir, rec_meta")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        gw.restart().await
    } else {
        assert!(dir.join("kakehashi-records.db").exists(), "the SQLite index sits beside the store");
        gw.restart_after(|| {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(dir.join(format!("kakehashi-records.db{suffix}")));
            }
        })
        .await
    };
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let v: Value = hub.get(gw.addr, "/fhir/Patient?_count=100").await.unwrap().json();
    assert_eq!(v["total"], 3, "rebuilt before serving (a small storage): {v}");
    let status = gw.records_status().await;
    assert!(status["files_indexed"].as_u64().unwrap() >= 12, "translated again: {status}");
    gw.stop().await;
}

#[tokio::test]
async fn a_search_that_would_read_too_many_patients_asks_for_one() {
    let gw = TestGateway::start_opts(Options { records_extra: "max_search_patients = 2".into(), ..Default::default() })
        .await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    // The hub's three patients are more than the two a search may read.
    let r = hub.get(gw.addr, "/fhir/MedicationRequest").await.unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["issue"][0]["code"], "too-costly");
    assert!(v["issue"][0]["diagnostics"].as_str().unwrap().contains("patient"), "{v}");
    // Named patients are answered; so are Patient searches (from the index).
    let pt = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000001").await;
    assert_eq!(hub.get(gw.addr, &format!("/fhir/MedicationRequest?patient={pt}")).await.unwrap().status, 200);
    assert_eq!(hub.get(gw.addr, "/fhir/Patient").await.unwrap().json()["total"], 3);
    gw.stop().await;
}
