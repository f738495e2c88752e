//! Issue 6: the auditor's API over mutual TLS — scope by institution, filters, paging,
//! newest first, bad input, and reading the log being audited itself.

use bytes::Bytes;
use http_body_util::Full;
use kakehashi_certs::Role;
use kakehashi_e2e::{patient_consent, TestGateway, AUDIT_BODY, CLINIC, CLINIC_B, HUB};
use serde_json::Value;

fn seqs(v: &Value) -> Vec<i64> {
    v["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn auditors_see_their_scope_with_filters_and_paging() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let p1 = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000001").await;
    assert_eq!(hub.post_json(gw.addr, "/fhir/Consent", &patient_consent(&p1, CLINIC)).await.unwrap().status, 201);

    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    let r = clinic.get(gw.addr, &format!("/fhir/Patient/{p1}")).await.unwrap();
    assert_eq!(r.status, 200);
    let obs = clinic.get(gw.addr, &format!("/fhir/Observation?patient={p1}")).await.unwrap().json();
    assert_eq!(obs["total"], 6);
    let clinic_b = gw.client(Some(&gw.issue("clinicb", CLINIC_B, Role::ClinicTerminal)));
    assert_eq!(clinic_b.get(gw.addr, &format!("/fhir/Patient/{p1}")).await.unwrap().status, 404);

    let body = gw.client(Some(&gw.issue("fed-auditor", AUDIT_BODY, Role::Auditor)));
    let all = body.get(gw.addr, "/fhir/AuditEvent?_count=200").await.unwrap().json();
    let all_seqs = seqs(&all);
    assert_eq!(all["total"].as_u64().unwrap() as usize, all_seqs.len());
    assert_eq!(all_seqs.len(), 5, "hub search, grant, clinic read and search, clinic B refusal");
    assert!(all_seqs.windows(2).all(|w| w[0] > w[1]), "newest first: {all_seqs:?}");
    // Every kind of event rendered from its stored entry, for the independent validator.
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-out/auditor");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("audit-events.json"), serde_json::to_vec_pretty(&all).unwrap()).unwrap();

    // Who crossed whose boundary: the clinic's read of the hub's patient, marked cross-site.
    let crossing = body
        .get(gw.addr, &format!("/fhir/AuditEvent?agent={CLINIC}&entity=Patient/{p1}&subtype=read"))
        .await
        .unwrap()
        .json();
    assert_eq!(crossing["total"], 1, "{crossing}");
    let ev = &crossing["entry"][0]["resource"];
    let entity = ev["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["what"]["reference"] == format!("Patient/{p1}") && e["role"]["code"] == "4")
        .unwrap();
    let details: Vec<(&str, &str)> = entity["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["type"].as_str().unwrap(), d["valueString"].as_str().unwrap()))
        .collect();
    assert!(details.contains(&("owner", HUB)) && details.contains(&("boundary", "cross-site")), "{details:?}");
    assert!(details.iter().any(|(t, v)| *t == "basis" && v.starts_with("consent:")));

    let patient_reads = body.get(gw.addr, &format!("/fhir/AuditEvent?patient={p1}")).await.unwrap().json();
    assert!(patient_reads["total"].as_u64().unwrap() >= 3);
    let denied = body.get(gw.addr, "/fhir/AuditEvent?outcome=4").await.unwrap().json();
    assert_eq!(denied["total"], 1, "clinic B's refused read");
    let today = kakehashi_e2e::jst_today().to_string();
    let dated = body.get(gw.addr, &format!("/fhir/AuditEvent?date=ge{today}&date=lt2999-01-01")).await.unwrap().json();
    assert!(dated["total"].as_u64().unwrap() >= all_seqs.len() as u64);
    assert_eq!(body.get(gw.addr, "/fhir/AuditEvent?date=lt2000-01-01").await.unwrap().json()["total"], 0);

    // Paging.
    let page1 = body.get(gw.addr, "/fhir/AuditEvent?_count=2").await.unwrap().json();
    assert_eq!(seqs(&page1).len(), 2);
    let next = page1["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let page2 = body.get(gw.addr, &next[next.find("/fhir").unwrap()..]).await.unwrap().json();
    assert!(seqs(&page2)[0] < seqs(&page1)[1]);

    // An institution's auditor sees only events where it read or was crossed.
    let clinic_auditor = gw.client(Some(&gw.issue("clinic-auditor", CLINIC, Role::Auditor)));
    let mine = clinic_auditor.get(gw.addr, "/fhir/AuditEvent?_count=200").await.unwrap().json();
    for e in mine["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "match") {
        let ev = &e["resource"];
        let agent = ev["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or("");
        let owners: Vec<&str> = ev["entity"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|x| x["detail"].as_array().into_iter().flatten())
            .filter(|d| d["type"] == "owner")
            .map(|d| d["valueString"].as_str().unwrap())
            .collect();
        assert!(agent == CLINIC || owners.contains(&CLINIC), "{ev}");
    }
    assert!(mine["total"].as_u64().unwrap() >= 2);
    let agents: Vec<&str> = mine["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or(""))
        .collect();
    assert!(!agents.contains(&CLINIC_B) && !agents.contains(&HUB), "{agents:?}");

    // Nobody else reads the log.
    assert_eq!(hub.get(gw.addr, "/fhir/AuditEvent").await.unwrap().status, 403);

    // Reading the log is audited.
    let latest = body.get(gw.addr, &format!("/fhir/AuditEvent?agent={AUDIT_BODY}&_count=1")).await.unwrap().json();
    let last = &latest["entry"][0]["resource"];
    assert!(
        last["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"]["reference"].as_str().is_some_and(|r| r.starts_with("AuditEvent/"))),
        "{last}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn auditor_queries_reject_bad_input_without_sql_details() {
    let gw = TestGateway::start().await;
    let body = gw.client(Some(&gw.issue("fed-auditor", AUDIT_BODY, Role::Auditor)));
    for (q, expr) in [
        ("date=2026-13-01", "date"),
        ("date=ge'2026'", "date"),
        ("agent=%27%20OR%201%3D1%20--", "agent"),
        ("patient=x%27%20OR%20%271%27%3D%271", "patient"),
        ("entity=Patient", "entity"),
        ("outcome=1%3B%20DROP%20TABLE%20audit_event", "outcome"),
        ("subtype=read%27--", "subtype"),
        ("_count=many", "_count"),
    ] {
        let r = body.get(gw.addr, &format!("/fhir/AuditEvent?{q}")).await.unwrap();
        assert_eq!(r.status, 400, "{q}");
        let v = r.json();
        assert_eq!(v["issue"][0]["expression"][0], expr, "{q}: {v}");
        let text = r.body.escape_ascii().to_string().to_lowercase();
        assert!(!text.contains("sqlite") && !text.contains("syntax") && !text.contains("select"), "{q}: {text}");
    }
    let huge = body.get(gw.addr, "/fhir/AuditEvent?_count=1000000").await.unwrap();
    assert_eq!(huge.status, 200);
    let lenient = body.get(gw.addr, "/fhir/AuditEvent?colour=blue").await.unwrap().json();
    assert_eq!(lenient["entry"].as_array().unwrap().last().unwrap()["search"]["mode"], "outcome");
    let strict = http::Request::get("/fhir/AuditEvent?colour=blue")
        .header("prefer", "handling=strict")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(body.send(gw.addr, strict).await.unwrap().status, 400);
    // The table is intact.
    assert_eq!(body.get(gw.addr, "/fhir/AuditEvent").await.unwrap().status, 200);
    gw.stop().await;
}
