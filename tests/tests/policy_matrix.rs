//! Issue 5: the boundary policy through the real HTTP stack with real certificates —
//! a table of principal × resource type × patient (grant state) × break-glass, each
//! checking status, total and the ids returned; then grant management's bad input.

use bytes::Bytes;
use http_body_util::Full;
use kakehashi_certs::Role;
use kakehashi_e2e::{Client, TestGateway, AUDIT_BODY, CLINIC, CLINIC_B, HUB, PHARMACY};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

fn iso(offset_secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs);
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn consent(kind: &str, patient: Option<&str>, grantee: (&str, &str), start: i64, end: i64, classes: &[&str]) -> Value {
    let mut c = json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "urn:kakehashi:grant-kind", "code": kind}]}],
        "provision": {
            "type": "permit",
            "period": {"start": iso(start), "end": iso(end)},
            "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"identifier": {"system": grantee.0, "value": grantee.1}}
            }],
            "class": classes.iter().map(|c| json!({"system": "http://hl7.org/fhir/resource-types", "code": c})).collect::<Vec<_>>()
        }
    });
    if let Some(p) = patient {
        c["patient"] = json!({"reference": format!("Patient/{p}")});
    }
    c
}

const INST: &str = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no";

async fn post(c: &Client, addr: SocketAddr, body: &Value) -> kakehashi_e2e::Reply {
    c.post_json(addr, "/fhir/Consent", body).await.unwrap()
}

async fn get_with(c: &Client, addr: SocketAddr, path: &str, break_glass: Option<&str>) -> kakehashi_e2e::Reply {
    let mut b = http::Request::get(path);
    if let Some(r) = break_glass {
        b = b.header("kakehashi-break-glass", r);
    }
    c.send(addr, b.body(Full::new(Bytes::new())).unwrap()).await.unwrap()
}

fn match_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test]
async fn boundary_policy_matrix() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let readers: Vec<(&str, Client)> = vec![
        ("hub-system", hub.clone()),
        ("clinic-terminal", gw.client(Some(&gw.issue("clinic-t", CLINIC, Role::ClinicTerminal)))),
        ("clinic-doctor", gw.client(Some(&gw.issue("clinic-d", CLINIC, Role::Doctor)))),
        ("clinicb-terminal", gw.client(Some(&gw.issue("clinicb-t", CLINIC_B, Role::ClinicTerminal)))),
        ("clinicb-doctor", gw.client(Some(&gw.issue("clinicb-d", CLINIC_B, Role::Doctor)))),
        ("pharmacy", gw.client(Some(&gw.issue("rx", PHARMACY, Role::Pharmacy)))),
        ("auditor", gw.client(Some(&gw.issue("aud", AUDIT_BODY, Role::Auditor)))),
    ];

    // The hub's three patients and, per type, the ids the hub itself sees.
    let mut pid = HashMap::new();
    let mut truth: HashMap<(String, &str), Vec<String>> = HashMap::new();
    for local in ["1000001", "1000002", "1000003"] {
        let p = hub.get(gw.addr, &format!("/fhir/Patient?identifier={local}")).await.unwrap().json();
        let id = p["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
        for ty in ["Patient", "MedicationRequest", "Observation", "Condition"] {
            let q =
                if ty == "Patient" { format!("/fhir/Patient?_id={id}") } else { format!("/fhir/{ty}?patient={id}") };
            truth.insert((id.clone(), ty), match_ids(&hub.get(gw.addr, &q).await.unwrap().json()));
        }
        pid.insert(local, id);
    }
    let (p1, p2, p3) = (pid["1000001"].clone(), pid["1000002"].clone(), pid["1000003"].clone());

    // Grants: P1 consent → clinic (all types, active); P1 consent → clinic B (prescriptions
    // only); P2 consent → clinic (expires in 2 s); P2 consent → clinic B (starts tomorrow);
    // P3 consent → clinic (revoked); delegation → clinic's doctors (all patients);
    // pharmacy designation → pharmacy for P1.
    let g = |b: &Value| b.clone();
    for body in [
        g(&consent("consent", Some(&p1), (INST, CLINIC), -60, 86_400, &[])),
        g(&consent("consent", Some(&p1), (INST, CLINIC_B), -60, 86_400, &["MedicationRequest"])),
        g(&consent("consent", Some(&p2), (INST, CLINIC), -60, 2, &[])),
        g(&consent("consent", Some(&p2), (INST, CLINIC_B), 86_400, 2 * 86_400, &[])),
        g(&consent("delegation", None, (INST, CLINIC), -60, 86_400, &[])),
        g(&consent("pharmacy", Some(&p1), (INST, PHARMACY), -60, 86_400, &[])),
    ] {
        let r = post(&hub, gw.addr, &body).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.headers["location"].to_str().unwrap().contains("/fhir/Consent/grant-"));
    }
    let revoked = post(&hub, gw.addr, &consent("consent", Some(&p3), (INST, CLINIC), -60, 86_400, &[])).await.json();
    let del = http::Request::delete(format!("/fhir/Consent/{}", revoked["id"].as_str().unwrap()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(hub.send(gw.addr, del).await.unwrap().status, 204);
    tokio::time::sleep(Duration::from_millis(3100)).await; // let P2's clinic consent expire

    // Expected: Some(types visible) per (reader, patient, break-glass); None = 403 before lookup.
    let all = ["Patient", "MedicationRequest", "Observation", "Condition"];
    let expect = |reader: &str, patient: &str, ty: &str, bg: bool| -> Result<bool, u16> {
        let p = if patient == p1 {
            1
        } else if patient == p2 {
            2
        } else {
            3
        };
        match reader {
            "auditor" => Err(403),
            "pharmacy" if !matches!(ty, "Patient" | "MedicationRequest") => Err(403),
            "pharmacy" => Ok(p == 1),
            "hub-system" | "clinic-doctor" => Ok(true),
            "clinic-terminal" => Ok(p == 1),
            "clinicb-terminal" => Ok(p == 1 && ty == "MedicationRequest"),
            "clinicb-doctor" => Ok(bg || (p == 1 && ty == "MedicationRequest")),
            _ => unreachable!(),
        }
    };
    let mut cases = 0;
    for (reader, client) in &readers {
        for patient in [&p1, &p2, &p3] {
            for ty in all {
                for bg in [false, true] {
                    if bg && !reader.starts_with("clinicb") {
                        continue;
                    }
                    let q = if ty == "Patient" {
                        format!("/fhir/Patient?_id={patient}")
                    } else {
                        format!("/fhir/{ty}?patient={patient}")
                    };
                    let glass = "emergency-treatment; 急変のため夜間当直医が確認";
                    let r = get_with(client, gw.addr, &q, bg.then_some(glass)).await;
                    let want = expect(reader, patient, ty, bg);
                    let ctx = format!("{reader} {ty} {patient} bg={bg}: {}", String::from_utf8_lossy(&r.body));
                    match want {
                        Err(status) => assert_eq!(r.status, status, "{ctx}"),
                        Ok(visible) => {
                            assert_eq!(r.status, 200, "{ctx}");
                            let v = r.json();
                            let expected = if visible { truth[&(patient.clone(), ty)].clone() } else { vec![] };
                            assert_eq!(match_ids(&v), expected, "{ctx}");
                            assert_eq!(v["total"].as_u64().unwrap() as usize, expected.len(), "{ctx}");
                        }
                    }
                    cases += 1;
                }
            }
        }
    }
    assert!(cases >= 40, "{cases} cases");

    // Totals count only what is visible: of the hub's prescriptions clinic B sees P1's
    // two, besides its own (the JAHIS prescription of its site).
    let cb = &readers[3].1;
    let all_mr = cb.get(gw.addr, "/fhir/MedicationRequest").await.unwrap().json();
    let owned_by = |owner: &str| -> Vec<String> {
        let mut ids: Vec<String> = all_mr["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["resource"]["meta"]["security"][0]["code"] == owner)
            .map(|e| e["resource"]["id"].as_str().unwrap_or("").to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(owned_by(HUB), truth[&(p1.clone(), "MedicationRequest")]);
    assert_eq!(owned_by(CLINIC_B).len(), 1);
    assert_eq!(all_mr["total"], match_ids(&all_mr).len());
    assert_eq!(match_ids(&all_mr).len(), 3);
    assert_eq!(cb.get(gw.addr, "/fhir/Observation").await.unwrap().json()["total"], 0);
    // Direct reads: a patient without a grant looks absent.
    let ct = &readers[1].1;
    assert_eq!(ct.get(gw.addr, &format!("/fhir/Patient/{p1}")).await.unwrap().status, 200);
    assert_eq!(ct.get(gw.addr, &format!("/fhir/Patient/{p2}")).await.unwrap().status, 404);
    assert_eq!(ct.get(gw.addr, &format!("/fhir/Patient/{p3}")).await.unwrap().status, 404);

    // Break-glass reads were flagged and the owner notified through the outbox: one
    // declaration, and one notice, per patient read (not one per request).
    let pool = gw.db().await;
    let notices: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE kind = 'break-glass' AND destination = $1")
            .bind(HUB)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(notices, 3, "one per patient the doctor broke the glass for");
    let declared: Vec<String> =
        sqlx::query_scalar("SELECT patient FROM break_glass WHERE reader_institution = $1 ORDER BY patient")
            .bind(CLINIC_B)
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut want = vec![p1.clone(), p2.clone(), p3.clone()];
    want.sort();
    assert_eq!(declared, want);
    let ev: String =
        sqlx::query_scalar("SELECT event FROM audit_event WHERE event LIKE '%ETREAT%' ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ev.contains("急変のため夜間当直医が確認"), "{ev}");
    assert!(ev.contains("break-glass"));
    gw.stop().await;
}

#[tokio::test]
async fn bad_grants_are_refused_precisely_and_nothing_is_half_applied() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let p1 = hub.get(gw.addr, "/fhir/Patient?identifier=1000001").await.unwrap().json()["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let good = consent("consent", Some(&p1), (INST, CLINIC), -60, 86_400, &[]);
    assert_eq!(post(&hub, gw.addr, &good).await.status, 201);

    let mut inverted = consent("consent", Some(&p1), (INST, CLINIC_B), 86_400, 60, &[]);
    let mut forged = good.clone();
    forged["organization"] = json!([{"identifier": {"system": INST, "value": CLINIC}}]);
    let mut no_kind = good.clone();
    no_kind["category"] = json!([]);
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (consent("consent", Some(&p1), (INST, CLINIC), 3600, 7200, &[]), 409, "conflict", "overlapping"),
        (std::mem::take(&mut inverted), 400, "invalid", "Consent.provision.period"),
        (
            consent("consent", Some(&p1), (INST, "4999999999"), -60, 86_400, &[]),
            400,
            "invalid",
            "Consent.provision.actor[0].reference",
        ),
        (
            consent("consent", Some("patient-of-someone-else"), (INST, CLINIC_B), -60, 86_400, &[]),
            400,
            "business-rule",
            "Consent.patient",
        ),
        (forged, 403, "forbidden", ""),
        (no_kind, 400, "invalid", "Consent.category"),
        (
            consent("pharmacy", Some(&p1), (INST, CLINIC_B), -60, 86_400, &[]),
            400,
            "invalid",
            "Consent.provision.actor[0].reference",
        ),
        (
            consent("consent", Some(&p1), (INST, CLINIC_B), -60, 86_400, &["CarePlan"]),
            400,
            "invalid",
            "Consent.provision.class[0]",
        ),
        (
            consent("consent", Some(&p1), (INST, CLINIC_B), -7200, -60, &[]),
            400,
            "invalid",
            "Consent.provision.period.end",
        ),
    ];
    for (body, status, code, expr) in cases {
        let r = post(&hub, gw.addr, &body).await;
        let v = r.json();
        assert_eq!(r.status, status, "{v}");
        assert_eq!(v["issue"][0]["code"], code, "{v}");
        if !expr.is_empty() && status == 400 {
            assert_eq!(v["issue"][0]["expression"][0], expr, "{v}");
        }
        if status == 409 {
            assert!(v["issue"][0]["diagnostics"].as_str().unwrap().contains("overlapping"));
        }
    }
    let not_json = http::Request::post("/fhir/Consent")
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from("{\"resourceType\": \"Consent\", ")))
        .unwrap();
    let r = hub.send(gw.addr, not_json).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["issue"][0]["code"], "structure");

    // Only the owner's hospital system manages grants.
    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    assert_eq!(
        post(&clinic, gw.addr, &consent("consent", Some(&p1), (INST, CLINIC_B), -60, 86_400, &[])).await.status,
        403
    );
    let clinic_sys = gw.client(Some(&gw.issue("clinic-sys", CLINIC, Role::HospitalSystem)));
    let r = post(&clinic_sys, gw.addr, &consent("consent", Some(&p1), (INST, CLINIC_B), -60, 86_400, &[])).await;
    assert_eq!(r.status, 400, "a clinic cannot grant on the hub's patient");
    assert_eq!(clinic_sys.get(gw.addr, "/fhir/Consent").await.unwrap().json()["total"], 0);

    // Exactly one grant stored; listed and readable by the owner, then revoked.
    let list = hub.get(gw.addr, "/fhir/Consent").await.unwrap().json();
    assert_eq!(list["total"], 1);
    let id = list["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    let read = hub.get(gw.addr, &format!("/fhir/Consent/{id}")).await.unwrap().json();
    assert_eq!(read["status"], "active");
    let del = http::Request::delete(format!("/fhir/Consent/{id}")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(hub.send(gw.addr, del).await.unwrap().status, 204);
    let del = http::Request::delete(format!("/fhir/Consent/{id}")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(hub.send(gw.addr, del).await.unwrap().status, 404);
    assert_eq!(hub.get(gw.addr, &format!("/fhir/Consent/{id}")).await.unwrap().json()["status"], "inactive");
    gw.stop().await;
}
