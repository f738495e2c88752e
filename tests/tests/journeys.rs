//! Issue 7 journeys over real mutual TLS: the pharmacist's prescription lookup, the
//! clinic terminal reading a consented hub patient across sites, and the auditor's
//! review.

use kakehashi_certs::Role;
use kakehashi_e2e::{patient_consent, TestGateway, AUDIT_BODY, CLINIC, HUB, PHARMACY};
use serde_json::Value;

fn entries<'a>(v: &'a Value, mode: &str) -> Vec<&'a Value> {
    v["entry"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["search"]["mode"] == mode).map(|e| &e["resource"]).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn pharmacist_fetches_a_prescription_by_number_and_birth_date() {
    let gw = TestGateway::start().await;
    let rx = gw.client(Some(&gw.issue("rx", PHARMACY, Role::Pharmacy)));

    // A clinic's JAHIS prescription, by its prescription number.
    let v = rx
        .get(gw.addr, "/fhir/MedicationRequest?identifier=RX-YAMABE-0001&patient.birthdate=1945-11-02")
        .await
        .unwrap()
        .json();
    assert_eq!(v["total"], 1, "{v}");
    let mr = entries(&v, "match")[0];
    assert_eq!(mr["medicationCodeableConcept"]["text"], "【般】ロキソプロフェンＮａ錠６０ｍｇ");
    assert_eq!(mr["substitution"]["allowedBoolean"], false);
    let included = entries(&v, "include");
    assert_eq!(included.len(), 1, "{v}");
    assert_eq!(included[0]["resourceType"], "Patient");
    assert_eq!(included[0]["birthDate"], "1945-11-02");

    // A hub order, by its order number.
    let v = rx
        .get(gw.addr, "/fhir/MedicationRequest?identifier=000000000001000&patient.birthdate=1952-03-14")
        .await
        .unwrap()
        .json();
    assert_eq!(v["total"], 2, "{v}");
    assert_eq!(entries(&v, "include").len(), 1);

    // A wrong birth date: nothing, and no hint whether the prescription exists.
    let wrong = rx
        .get(gw.addr, "/fhir/MedicationRequest?identifier=RX-YAMABE-0001&patient.birthdate=1945-11-03")
        .await
        .unwrap()
        .json();
    let unknown = rx
        .get(gw.addr, "/fhir/MedicationRequest?identifier=NO-SUCH-RX&patient.birthdate=1945-11-02")
        .await
        .unwrap()
        .json();
    assert_eq!(wrong["total"], 0);
    assert_eq!(wrong["entry"], unknown["entry"]);
    // Only an exact presentation counts: no date ranges, partial dates or lists of numbers.
    for q in [
        "identifier=RX-YAMABE-0001&patient.birthdate=ge1900-01-01",
        "identifier=RX-YAMABE-0001&patient.birthdate=1945",
        "identifier=RX-YAMABE-0001&patient.birthdate=1945-11",
        "identifier=NO-SUCH-RX,RX-YAMABE-0001&patient.birthdate=1945-11-02",
        "identifier=RX-YAMABE-0001&identifier=RX-YAMABE-0001&patient.birthdate=1945-11-02",
    ] {
        let v = rx.get(gw.addr, &format!("/fhir/MedicationRequest?{q}")).await.unwrap().json();
        assert_eq!(v["total"], 0, "{q}: {v}");
    }
    // Anything else is refused.
    assert_eq!(rx.get(gw.addr, "/fhir/MedicationRequest").await.unwrap().json()["total"], 0);
    assert_eq!(rx.get(gw.addr, "/fhir/Patient").await.unwrap().json()["total"], 0);
    assert_eq!(rx.get(gw.addr, "/fhir/Observation").await.unwrap().status, 403);
    assert_eq!(rx.get(gw.addr, "/fhir/Condition").await.unwrap().status, 403);

    // Audited, with the basis.
    let pool = gw.db().await;
    let ev: String = sqlx::query_scalar(
        "SELECT event FROM audit_event WHERE event LIKE '%presented-prescription%' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(ev.contains("MedicationRequest/") && ev.contains(PHARMACY));
    gw.stop().await;
}

#[tokio::test]
async fn clinic_terminal_reads_a_consented_hub_patient_and_the_auditor_reviews_it() {
    let gw = TestGateway::start().await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    let consented = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000001").await;
    let not_consented = hub.first_id(gw.addr, "/fhir/Patient?identifier=1000003").await;
    let grant = patient_consent(&consented, CLINIC);
    let created = hub.post_json(gw.addr, "/fhir/Consent", &grant).await.unwrap();
    assert_eq!(created.status, 201);
    // The start defaulted to now is shown, so what the owner reviews is what is enforced.
    let start = created.json()["provision"]["period"]["start"].as_str().map(str::to_string);
    assert!(
        start.as_deref().is_some_and(|s| s.starts_with(&time::OffsetDateTime::now_utc().year().to_string())),
        "{start:?}"
    );

    // Search the patient from the clinic (the clinic's own record and the hub's).
    let found = clinic
        .get(gw.addr, "/fhir/Patient?name=%E3%82%B7%E3%83%9E%E3%83%80&birthdate=1952-03-14")
        .await
        .unwrap()
        .json(); // シマダ
    let owners: Vec<&str> = entries(&found, "match")
        .iter()
        .map(|p| {
            p["meta"]["security"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["system"] == "urn:kakehashi:owner-institution")
                .unwrap()["code"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(owners.contains(&HUB) && owners.contains(&CLINIC), "{owners:?}");
    // Hub medication, labs, problems for the consented patient.
    for (ty, n) in [("MedicationRequest", 2), ("Observation", 6), ("Condition", 1), ("DiagnosticReport", 1)] {
        let v = clinic.get(gw.addr, &format!("/fhir/{ty}?patient={consented}")).await.unwrap().json();
        assert_eq!(v["total"], n, "{ty}: {v}");
    }
    // Nothing of the patient who did not consent.
    for ty in ["Patient?_id=", "MedicationRequest?patient=", "Observation?patient=", "Condition?patient="] {
        let v = clinic.get(gw.addr, &format!("/fhir/{ty}{not_consented}")).await.unwrap().json();
        assert_eq!(v["total"], 0, "{ty}");
    }

    // The auditor lists the reads of that patient for the day and who crossed whose boundary.
    let auditor = gw.client(Some(&gw.issue("auditor", AUDIT_BODY, Role::Auditor)));
    let today = kakehashi_e2e::jst_today().to_string();
    let v = auditor.get(gw.addr, &format!("/fhir/AuditEvent?patient={consented}&date={today}")).await.unwrap().json();
    let crossings: Vec<(String, String)> = entries(&v, "match")
        .iter()
        .filter(|e| e["agent"][0]["who"]["identifier"]["value"] == CLINIC)
        .flat_map(|e| {
            e["entity"].as_array().unwrap().iter().filter_map(|x| {
                let d = x["detail"].as_array()?;
                let owner = d.iter().find(|d| d["type"] == "owner")?["valueString"].as_str()?.to_string();
                let boundary = d.iter().find(|d| d["type"] == "boundary")?["valueString"].as_str()?.to_string();
                Some((owner, boundary))
            })
        })
        .collect();
    assert!(crossings.contains(&(HUB.to_string(), "cross-site".to_string())), "{crossings:?}");
    gw.stop().await;
}
