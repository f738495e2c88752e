//! Issue 3 (server) with the policy and audit steps in the path: searches and reads of
//! the hub's SS-MIX2 records over real mutual TLS, every disclosure audited.

use kakehashi_certs::Role;
use kakehashi_e2e::{backend_is_postgres, Reply, TestGateway, AUDIT_BODY, CLINIC, HUB, PHARMACY};
use serde_json::Value;
use sqlx::Row;
use std::time::Duration;

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| {
            format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())
        })
        .collect()
}

async fn audit_rows(gw: &TestGateway) -> Vec<(i64, String, String, String, Value)> {
    let pool = gw.db().await;
    let rows = sqlx::query("SELECT seq, agent_institution, outcome, subtype, event FROM audit_event ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let (seq, ev): (i64, String) = (r.get(0), r.get(4));
            let rendered = kakehashi::audit::event::render_stored(seq, &ev).unwrap();
            (seq, r.get(1), r.get(2), r.get(3), serde_json::from_str(rendered.get()).unwrap())
        })
        .collect()
}

fn entity_refs(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["role"]["code"] == "4")
        .map(|e| e["what"]["reference"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn hub_system_searches_and_reads_its_own_records_and_each_read_is_audited() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let get = |path: &'static str| {
        let hub = hub.clone();
        let addr = gw.addr;
        async move { hub.get(addr, path).await.unwrap() }
    };

    // Name in kanji, kana; identifier; birthdate.
    let kanji: Reply = get("/fhir/Patient?name=%E5%B3%B6%E7%94%B0").await; // 島田
    assert_eq!(kanji.status, 200);
    let bundle = kanji.json();
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 1);
    let patient_id = bundle["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    let kana = get("/fhir/Patient?name=%E3%82%B7%E3%83%9E%E3%83%80").await.json(); // シマダ
    assert_eq!(ids(&kana), vec![format!("Patient/{patient_id}")]);
    let by_id = get("/fhir/Patient?identifier=urn:oid:1.2.392.100495.20.3.51.14610100011|1000001").await.json();
    assert_eq!(ids(&by_id), vec![format!("Patient/{patient_id}")]);
    let by_birth = get("/fhir/Patient?birthdate=1952-03-14").await.json();
    assert_eq!(by_birth["total"], 1);
    let none = get("/fhir/Patient?birthdate=lt1900").await.json();
    assert_eq!(none["total"], 0);
    let all = get("/fhir/Patient").await.json();
    assert_eq!(all["total"], 3);

    // Read.
    let path: &'static str = Box::leak(format!("/fhir/Patient/{patient_id}").into_boxed_str());
    let read = get(path).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["meta"]["security"][0]["code"], HUB);

    // Clinical searches for the patient.
    let q = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let meds = get(q(format!("/fhir/MedicationRequest?patient=Patient/{patient_id}"))).await.json();
    assert_eq!(meds["total"], 2);
    let obs =
        get(q(format!("/fhir/Observation?patient={patient_id}&code=urn:oid:1.2.392.200119.4.504|3D046000001906202")))
            .await
            .json();
    assert_eq!(obs["total"], 1);
    assert_eq!(obs["entry"][0]["resource"]["valueQuantity"]["value"], 6.9);
    let dated =
        get(q(format!("/fhir/Observation?patient={patient_id}&date=2026-04-10&category=laboratory"))).await.json();
    assert_eq!(dated["total"], 3);
    let cond = get(q(format!("/fhir/Condition?patient={patient_id}"))).await.json();
    assert_eq!(cond["total"], 1);
    let allergy = get(q(format!("/fhir/AllergyIntolerance?patient={patient_id}"))).await.json();
    assert_eq!(allergy["total"], 1);

    // Paging: _count=1 over the two prescriptions, following next.
    let page1 = get(q(format!("/fhir/MedicationRequest?patient={patient_id}&_count=1"))).await.json();
    assert_eq!(page1["total"], 2);
    assert_eq!(page1["entry"].as_array().unwrap().len(), 1);
    let next =
        page1["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap();
    let next_path = q(next.split_once("/fhir").map(|(_, p)| format!("/fhir{p}")).unwrap());
    let page2 = get(next_path).await.json();
    assert_eq!(page2["entry"].as_array().unwrap().len(), 1);
    assert_ne!(ids(&page1), ids(&page2));
    assert!(page2["link"].as_array().unwrap().iter().all(|l| l["relation"] != "next"));

    // $everything.
    let every = get(q(format!("/fhir/Patient/{patient_id}/$everything"))).await.json();
    // Patient, allergy, coverage, 3 body measurements, condition, 3 lab results, report,
    // the lab order and its specimen, 2 prescriptions.
    assert_eq!(every["total"], 15, "{every}");

    // Every request above wrote exactly one audit event listing exactly what it returned.
    let rows = audit_rows(&gw).await;
    assert_eq!(rows.len(), 15);
    assert!(rows.iter().all(|(_, agent, outcome, _, _)| agent == HUB && outcome == "0"));
    let last = &rows.last().unwrap().4;
    assert_eq!(entity_refs(last), ids(&every));
    assert_eq!(last["entity"][0]["what"]["reference"], format!("Patient/{patient_id}"));
    let details = &last["entity"][1]["detail"];
    assert!(details.as_array().unwrap().iter().any(|d| d["type"] == "boundary" && d["valueString"] == "same-site"));
    gw.stop().await;
}

#[tokio::test]
async fn without_a_grant_other_institutions_see_nothing_and_refusals_are_audited() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let patient = hub.get(gw.addr, "/fhir/Patient?identifier=1000001").await.unwrap().json()["entry"][0]["resource"]
        ["id"]
        .as_str()
        .unwrap()
        .to_string();

    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    let search = clinic.get(gw.addr, "/fhir/Patient?identifier=1000001").await.unwrap();
    assert_eq!(search.status, 200);
    assert_eq!(search.json()["total"], 0, "the total counts only what may be seen");
    let read = clinic.get(gw.addr, &format!("/fhir/Patient/{patient}")).await.unwrap();
    assert_eq!(read.status, 404, "existence must not leak across the boundary");
    let missing = clinic.get(gw.addr, "/fhir/Patient/no-such-id").await.unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(
        read.json()["issue"][0]["diagnostics"],
        missing.json()["issue"][0]["diagnostics"].as_str().unwrap().replace("no-such-id", &patient)
    );
    assert_eq!(clinic.get(gw.addr, &format!("/fhir/Patient/{patient}/$everything")).await.unwrap().status, 404);

    let auditor = gw.client(Some(&gw.issue("aud", AUDIT_BODY, Role::Auditor)));
    let r = auditor.get(gw.addr, "/fhir/Patient").await.unwrap();
    assert_eq!(r.status, 403);
    let pharmacy = gw.client(Some(&gw.issue("rx", PHARMACY, Role::Pharmacy)));
    assert_eq!(pharmacy.get(gw.addr, "/fhir/Observation").await.unwrap().status, 403);

    let rows = audit_rows(&gw).await;
    let denied: Vec<_> = rows.iter().filter(|r| r.2 == "4").collect();
    assert_eq!(denied.len(), 4, "direct read, $everything, auditor and pharmacy refusals");
    let read_refusal = denied.iter().find(|r| r.3 == "read").unwrap();
    assert_eq!(entity_refs(&read_refusal.4), vec![format!("Patient/{patient}")]);
    assert!(read_refusal.4["entity"][1]["detail"].as_array().unwrap().iter().any(|d| d["valueString"] == "cross-site"));
    gw.stop().await;
}

#[tokio::test]
async fn bad_search_parameters_get_located_outcomes() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    for (path, expr) in [
        ("/fhir/Observation?date=2026-13-40", "date"),
        ("/fhir/Observation?_count=-3", "_count"),
        ("/fhir/Patient?name:phonetic=x", "name"),
    ] {
        let r = hub.get(gw.addr, path).await.unwrap();
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["issue"][0]["expression"][0], expr);
    }
    let lenient = hub.get(gw.addr, "/fhir/Patient?nonsense=1").await.unwrap().json();
    let last = lenient["entry"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["search"]["mode"], "outcome");
    let strict = http::Request::get("/fhir/Patient?nonsense=1")
        .header("prefer", "handling=strict")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(hub.send(gw.addr, strict).await.unwrap().status, 400);
    let huge = hub.get(gw.addr, "/fhir/Patient?_count=100000").await.unwrap().json();
    assert_eq!(huge["total"], 3);
    assert_eq!(hub.get(gw.addr, "/fhir/CarePlan").await.unwrap().status, 404);
    gw.stop().await;
}

#[tokio::test]
async fn new_files_are_served_without_restart() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    assert_eq!(hub.get(gw.addr, "/fhir/Patient").await.unwrap().json()["total"], 3);
    let dir = gw.dir.path().join("sites/hub/ss-mix2/200/000/2000001/-/ADT-00");
    std::fs::create_dir_all(&dir).unwrap();
    let msg = "MSH|^~\\&|KK|4610100011|GW|RCV|20260501||ADT^A08^ADT_A01|9|P|2.5||||||~ISO IR87\rPID|1||2000001^^^^PI||新患^次郎^^^^^L^I||19900101|M\r";
    let (bytes, _, _) = encoding_rs::ISO_2022_JP.encode(msg);
    std::fs::write(dir.join("2000001_-_ADT-00_999999999999999_20260501000000000_-_1"), &bytes).unwrap();
    let mut total = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        total = hub.get(gw.addr, "/fhir/Patient").await.unwrap().json()["total"].as_u64().unwrap();
        if total == 4 {
            break;
        }
    }
    assert_eq!(total, 4);
    gw.stop().await;
}

#[tokio::test]
async fn a_broken_audit_table_refuses_reads_on_postgresql_and_leaves_them_to_the_journal_on_sqlite() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    assert_eq!(hub.get(gw.addr, "/fhir/Patient").await.unwrap().status, 200);
    // Break the audit table underneath the running gateway.
    let pool = gw.db().await;
    sqlx::query("ALTER TABLE audit_event RENAME TO audit_event_gone").execute(&pool).await.unwrap();
    if !backend_is_postgres() {
        // On SQLite the journal is where an event becomes durable, and the table only
        // its index: reads go on, and their events reach the table once it is back.
        // (A journal that cannot be written refuses reads: audit_durability's full disk.)
        let r = hub.get(gw.addr, "/fhir/Patient?_count=3").await.unwrap();
        assert_eq!(r.status, 200, "durable in the journal: {}", String::from_utf8_lossy(&r.body));
        sqlx::query("ALTER TABLE audit_event_gone RENAME TO audit_event").execute(&pool).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_event WHERE event LIKE '%_count=3%'")
                .fetch_one(&pool)
                .await
                .unwrap();
            if n == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the read's event reached the table ({n})");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        gw.stop().await;
        return;
    }
    let r = hub.get(gw.addr, "/fhir/Patient").await.unwrap();
    assert_eq!(r.status, 503);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(!body.contains("1000001") && !body.contains("Patient/patient-"), "no data in a refusal: {body}");
    assert_eq!(r.json()["issue"][0]["code"], "transient");
    sqlx::query("ALTER TABLE audit_event_gone RENAME TO audit_event").execute(&pool).await.unwrap();
    assert_eq!(hub.get(gw.addr, "/fhir/Patient").await.unwrap().status, 200, "recovers by itself");
    gw.stop().await;
}

#[tokio::test]
async fn clinic_mml_records_are_served_through_the_same_endpoints() {
    let gw = TestGateway::start().await;
    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    let all = clinic.get(gw.addr, "/fhir/Patient").await.unwrap().json();
    assert_eq!(all["total"], 2, "the clinic's own two MML patients: {all}");
    let shimada = clinic.get(gw.addr, "/fhir/Patient?name=%E3%82%B7%E3%83%9E%E3%83%80").await.unwrap().json(); // シマダ
    assert_eq!(shimada["total"], 1);
    let p = &shimada["entry"][0]["resource"];
    assert_eq!(p["meta"]["source"], "urn:kakehashi:site:clinic-a");
    let owner = p["meta"]["security"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["system"] == "urn:kakehashi:owner-institution")
        .unwrap();
    assert_eq!(owner["code"], CLINIC);
    assert_eq!(p["identifier"][0]["value"], "A-0101");
    assert_eq!(p["birthDate"], "1952-03-14");
    // The hub sees none of the clinic's patients without a grant.
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let hub_view = hub.get(gw.addr, "/fhir/Patient?name=%E3%82%B7%E3%83%9E%E3%83%80").await.unwrap().json();
    assert_eq!(ids(&hub_view).len(), 1, "only the hub's own 島田: {hub_view}");
    assert!(ids(&hub_view)[0] != format!("Patient/{}", p["id"].as_str().unwrap()));
    gw.stop().await;
}
