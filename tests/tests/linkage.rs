//! Issue 7, cross-site patient linkage over real mutual TLS: the demo's hub and clinic
//! records of one person are linked (kana + birth date + gender, insurance identity),
//! found from either site by identifier, returned together by `$everything` with each
//! owner marked, and separated or re-linked by an owner by hand.

use kakehashi_certs::Role;
use kakehashi_e2e::{patient_consent, Client, TestGateway, AUDIT_BODY, CLINIC, CLINIC_B, HUB, PHARMACY};
use serde_json::{json, Value};
use std::net::SocketAddr;

fn owner(r: &Value) -> String {
    r["meta"]["security"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["system"] == "urn:kakehashi:owner-institution"))
        .and_then(|c| c["code"].as_str())
        .unwrap_or("")
        .to_string()
}

fn resources(v: &Value) -> Vec<&Value> {
    v["entry"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["search"]["mode"] != "outcome").map(|e| &e["resource"]).collect())
        .unwrap_or_default()
}

fn ids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = resources(v).iter().filter_map(|r| r["id"].as_str().map(str::to_string)).collect();
    out.sort();
    out
}

/// (alternate Patient id, basis) of the caller's view of a patient's links.
async fn links(c: &Client, addr: SocketAddr, patient: &str) -> Vec<(String, String)> {
    let v = c.get(addr, &format!("/fhir/Linkage?item=Patient/{patient}")).await.unwrap().json();
    let mut out: Vec<(String, String)> = resources(&v)
        .iter()
        .flat_map(|l| l["item"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["type"] == "alternate")
        .map(|i| {
            let id = i["resource"]["reference"].as_str().unwrap_or("").trim_start_matches("Patient/").to_string();
            (id, i["extension"][0]["valueCode"].as_str().unwrap_or("").to_string())
        })
        .collect();
    out.sort();
    out
}

fn decision(a: &str, b: &str, active: bool) -> Value {
    json!({"resourceType": "Linkage", "active": active, "item": [
        {"type": "source", "resource": {"reference": format!("Patient/{a}")}},
        {"type": "alternate", "resource": {"reference": format!("Patient/{b}")}}
    ]})
}

#[tokio::test]
async fn one_person_across_hub_and_clinic_is_found_from_either_site_and_owners_decide() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    let hub_pt = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000001").await;
    let clinic_pt = clinic.first_id(gw.addr, "/fhir/Patient?identifier=A-0101").await;
    let by_id = "/fhir/Patient?identifier=A-0101";
    let everything = format!("/fhir/Patient/{clinic_pt}/$everything?_count=500");

    // Linked, but the hub has not allowed the clinic anything: nothing of the hub's shows.
    assert_eq!(ids(&clinic.get(gw.addr, by_id).await.unwrap().json()), std::slice::from_ref(&clinic_pt));
    assert!(links(&clinic, gw.addr, &clinic_pt).await.is_empty());
    let v = clinic.get(gw.addr, &everything).await.unwrap().json();
    assert!(resources(&v).iter().all(|r| owner(r) == CLINIC), "{v}");

    // With the patient's consent the clinic finds the hub's record by its own id, and
    // `$everything` returns both sites' records, each with its owner marked.
    assert_eq!(hub.post_json(gw.addr, "/fhir/Consent", &patient_consent(&hub_pt, CLINIC)).await.unwrap().status, 201);
    let mut both = vec![clinic_pt.clone(), hub_pt.clone()];
    both.sort();
    assert_eq!(ids(&clinic.get(gw.addr, by_id).await.unwrap().json()), both);
    assert_eq!(links(&clinic, gw.addr, &clinic_pt).await, [(hub_pt.clone(), "demographics".to_string())]);
    let v = clinic.get(gw.addr, &everything).await.unwrap().json();
    let hub_types: Vec<&str> =
        resources(&v).iter().filter(|r| owner(r) == HUB).filter_map(|r| r["resourceType"].as_str()).collect();
    for ty in ["Patient", "MedicationRequest", "Observation", "Condition"] {
        assert!(hub_types.contains(&ty), "{ty} missing from {hub_types:?}");
    }
    assert!(resources(&v).iter().any(|r| owner(r) == CLINIC));

    // The clinic (an owner of one record) says these are different people: the hub's
    // record is no longer reached from the clinic's, whatever the demographics say.
    let sep = clinic.post_json(gw.addr, "/fhir/Linkage", &decision(&clinic_pt, &hub_pt, false)).await.unwrap();
    assert_eq!(sep.status, 201, "{}", String::from_utf8_lossy(&sep.body));
    assert_eq!(ids(&clinic.get(gw.addr, by_id).await.unwrap().json()), std::slice::from_ref(&clinic_pt));
    let v = clinic.get(gw.addr, &everything).await.unwrap().json();
    assert!(resources(&v).iter().all(|r| owner(r) == CLINIC), "{v}");
    // ... and the hub links them again by hand: the latest decision is in force.
    let link = hub.post_json(gw.addr, "/fhir/Linkage", &decision(&hub_pt, &clinic_pt, true)).await;
    // The hub cannot see the clinic's record (no grant from the clinic): no hint it exists.
    let link = link.unwrap();
    assert_eq!(link.status, 400, "{}", String::from_utf8_lossy(&link.body));
    assert!(link.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("not known or not visible"));
    let link = clinic.post_json(gw.addr, "/fhir/Linkage", &decision(&clinic_pt, &hub_pt, true)).await.unwrap();
    assert_eq!(link.status, 201);
    assert_eq!(links(&clinic, gw.addr, &clinic_pt).await, [(hub_pt.clone(), "manual".to_string())]);
    // Both answers go to the independent FHIR validator (scripts/test).
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-out/linkage");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("linkage-created.json"), &link.body).unwrap();
    let listed = clinic.get(gw.addr, &format!("/fhir/Linkage?item=Patient/{clinic_pt}")).await.unwrap();
    std::fs::write(out.join("linkage-searchset.json"), &listed.body).unwrap();
    assert_eq!(ids(&clinic.get(gw.addr, by_id).await.unwrap().json()), both);

    // Refusals: roles that never link, records nobody of the caller's owns, bad shapes.
    let rx = gw.client(Some(&gw.issue("rx", PHARMACY, Role::Pharmacy)));
    assert_eq!(rx.post_json(gw.addr, "/fhir/Linkage", &decision(&clinic_pt, &hub_pt, true)).await.unwrap().status, 403);
    // The pharmacy's own auditor sees its refused attempt.
    let rx_auditor = gw.client(Some(&gw.issue("rx-auditor", PHARMACY, Role::Auditor)));
    let seen = rx_auditor.get(gw.addr, &format!("/fhir/AuditEvent?agent={PHARMACY}&subtype=create")).await.unwrap();
    let seen = seen.json();
    assert!(resources(&seen).iter().any(|e| e["outcome"] == "4"), "a refused role is audited: {seen}");
    let other_hub = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000002").await;
    let mut hub_view = [hub_pt.clone(), other_hub.clone()];
    hub_view.sort();
    let clinic_b = gw.client(Some(&gw.issue("clinic-b", CLINIC_B, Role::ClinicTerminal)));
    let r = clinic_b.post_json(gw.addr, "/fhir/Linkage", &decision(&hub_view[0], &hub_view[1], true)).await.unwrap();
    assert_eq!(r.status, 400, "a record the caller cannot see is refused like an absent one");
    // ... and leaves the trace a refused read leaves: its owner's auditor sees the
    // refused create at its boundary, naming the record asked about.
    let hub_auditor = gw.client(Some(&gw.issue("hub-auditor", HUB, Role::Auditor)));
    let refused =
        hub_auditor.get(gw.addr, &format!("/fhir/AuditEvent?patient={}&subtype=create", hub_view[0])).await.unwrap();
    assert_eq!(refused.status, 200);
    let refused = refused.json();
    let refused: Vec<&Value> =
        resources(&refused).into_iter().filter(|e| e["outcome"] == "4" && e.to_string().contains(CLINIC_B)).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let r = clinic
        .post_json(gw.addr, "/fhir/Linkage", &json!({"resourceType": "Linkage", "item": [{"type": "source", "resource": {"reference": format!("Patient/{clinic_pt}")}}]}))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["issue"][0]["expression"][0], "Linkage.item");

    // Each decision is in the audit log with both records and their owners.
    let auditor = gw.client(Some(&gw.issue("auditor", AUDIT_BODY, Role::Auditor)));
    let v = auditor.get(gw.addr, &format!("/fhir/AuditEvent?patient={hub_pt}&subtype=create")).await.unwrap().json();
    let texts: Vec<String> = resources(&v).iter().map(|e| e.to_string()).collect();
    assert!(
        texts.iter().filter(|t| t.contains("patients separated") || t.contains("patients linked")).count() >= 2,
        "{v}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_insurance_identity_links_a_clinic_prescription_patient_to_the_hub() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let clinic_b = gw.client(Some(&gw.issue("clinic-b", CLINIC_B, Role::ClinicTerminal)));
    let hub_pt = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000002").await;
    assert_eq!(hub.post_json(gw.addr, "/fhir/Consent", &patient_consent(&hub_pt, CLINIC_B)).await.unwrap().status, 201);
    // Clinic B's JAHIS prescription names 39461002:山辺:５６７ (full-width) for the patient
    // the hub's IN1 names 39461002:山辺:567 (clinic B's MML record and prescription are
    // one Patient of clinic B: same local id, same owner).
    let clinic_pt = clinic_b.first_id(gw.addr, "/fhir/Patient?identifier=B-0201").await;
    let mut both = vec![clinic_pt.clone(), hub_pt.clone()];
    both.sort();
    assert_eq!(ids(&clinic_b.get(gw.addr, "/fhir/Patient?identifier=B-0201").await.unwrap().json()), both);
    // Insurance is the strongest rule that links them (demographics agree as well).
    assert_eq!(links(&clinic_b, gw.addr, &clinic_pt).await, [(hub_pt.clone(), "insurance".to_string())]);
    gw.stop().await;
}
