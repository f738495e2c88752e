//! What any message may carry about its patient, mapped whatever the message type:
//! the patient (PID, NK1, MRG), the visit (PV1, PV2) as an Encounter, allergies (AL1),
//! insurance (IN1, IN2), diagnoses (DG1) as encounter-diagnosis Conditions and
//! procedures (PR1). Every message's Bundle thus holds the Patient its entries name.

use super::{at, patient, Helper};
use crate::codes;
use crate::Translation;
use kakehashi_adapters::hl7v2::datatypes::*;
use kakehashi_adapters::hl7v2::Segment;
use kakehashi_fhir::*;

/// The segments mapped here.
pub(super) const READS: &[&str] = &["PID", "PD1", "NK1", "MRG", "PV1", "PV2", "AL1", "IN1", "IN2", "DG1", "PR1"];

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    if let Some(pid) = m.segment("PID") {
        let patients = patient::patient(h, pid, t);
        // The patient first: readers of a message's Bundle expect it there.
        let rest = std::mem::take(&mut t.resources);
        t.resources.extend(patients.into_iter().map(Resource::Patient));
        t.resources.extend(rest);
    }
    let encounter = m.segment("PV1").and_then(|pv1| encounter(h, pv1, t));
    let encounter_ref = encounter.as_ref().map(|e| Reference {
        reference: Some(format!("Encounter/{}", e.id.clone().unwrap_or_default())),
        ..Default::default()
    });
    if let Some(e) = encounter {
        t.resources.push(Resource::Encounter(e));
    }
    for al1 in m.segments("AL1") {
        if let Some(a) = patient::allergy(h, al1, t) {
            t.resources.push(Resource::AllergyIntolerance(a));
        }
    }
    for in1 in m.segments("IN1") {
        if let Some(c) = patient::coverage(h, in1, t) {
            t.resources.push(Resource::Coverage(c));
        }
    }
    for dg1 in m.segments("DG1") {
        if let Some(c) = diagnosis(h, dg1, encounter_ref.clone(), t) {
            t.resources.push(Resource::Condition(c));
        }
    }
    for pr1 in m.segments("PR1") {
        if let Some(p) = procedure(h, pr1, encounter_ref.clone(), t) {
            t.resources.push(Resource::Procedure(p));
        }
    }
}

fn coding(system: &str, code: &str) -> CodeableConcept {
    CodeableConcept::coding(Coding::new(system, code))
}

/// PV1 (with PV2): the visit as an Encounter, identified by its visit number when it
/// has one.
fn encounter(h: &Helper<'_>, pv1: &Segment, t: &mut Translation) -> Option<Encounter> {
    let class = h.value(pv1, 2);
    let (code, display) = match class.as_str() {
        "I" => ("IMP", "inpatient encounter"),
        "O" | "R" => ("AMB", "ambulatory"),
        "E" => ("EMER", "emergency"),
        "P" => ("PRENC", "pre-admission"),
        "B" => ("IMP", "inpatient encounter"),
        "C" => ("AMB", "ambulatory"),
        "N" | "" => return None,
        other => {
            t.warn(at(pv1, 2), format!("patient class `{other}` is unknown; encounter not mapped"));
            return None;
        }
    };
    let visit = Cx::parse(&h.first(pv1, 19));
    let admitted = h.when(pv1, 44, t);
    let discharged = h.when(pv1, 45, t);
    // A visit is one Encounter however many messages mention it: it is named by its
    // visit number, else by its admission time. A PV1 with neither (SS-MIX2 orders
    // carry the department and doctor only) does not identify a visit.
    let key = match (&visit.id, &admitted) {
        (Some(v), _) => format!("{}:visit:{v}", h.pid),
        (None, Some(a)) => format!("{}:admitted:{class}:{a}", h.pid),
        (None, None) => return None,
    };
    let mut participant = Vec::new();
    for (f, code, display) in
        [(7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"), (17, "ADM", "admitter")]
    {
        for rep in h.reps(pv1, f).collect::<Vec<_>>() {
            if let Some(who) = h.person_of(&rep) {
                participant.push(EncounterParticipant {
                    type_: vec![CodeableConcept::coding(
                        Coding::new("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", code)
                            .with_display(display),
                    )],
                    individual: Some(who),
                });
            }
        }
    }
    let location = Pl::parse(&h.first(pv1, 3)).display().map(|d| EncounterLocation {
        location: Reference { display: Some(d), type_: Some("Location".into()), ..Default::default() },
    });
    let service = h.coded_in(pv1, 10, "HL70069", t);
    let mut reason = Vec::new();
    if let Some(pv2) = h.msg.segment("PV2") {
        if let Some(r) = h.coded(pv2, 3, t) {
            reason.push(r);
        }
        if let Some(text) = Some(h.value(pv2, 12)).filter(|s| !s.is_empty()) {
            reason.push(CodeableConcept::text(text));
        }
    }
    let status = match (discharged.is_some(), class.as_str()) {
        (true, _) => "finished",
        (false, "P") => "planned",
        (false, "I" | "B") => "in-progress",
        _ => "unknown",
    };
    Some(Encounter {
        id: Some(h.ctx.id_for("Encounter", &key)),
        identifier: visit
            .id
            .map(|v| Identifier {
                system: Some(
                    visit.authority.uri().unwrap_or_else(|| codes::local_system(&h.ctx.owner, "visit-number")),
                ),
                value: Some(v),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        status: status.into(),
        class_: Coding::new("http://terminology.hl7.org/CodeSystem/v3-ActCode", code).with_display(display),
        service_type: service,
        subject: Some(h.patient_ref()),
        participant,
        period: (admitted.is_some() || discharged.is_some()).then_some(Period { start: admitted, end: discharged }),
        reason_code: reason,
        hospitalization: {
            let source = h.coded_in(pv1, 14, "HL70023", t);
            let disposition = h.coded_in(pv1, 36, "HL70112", t);
            (source.is_some() || disposition.is_some())
                .then_some(EncounterHospitalization { admit_source: source, discharge_disposition: disposition })
        },
        location: location.into_iter().collect(),
        service_provider: Some(h.owner_ref()),
        ..Default::default()
    })
}

/// DG1: a diagnosis of the encounter.
fn diagnosis(h: &Helper<'_>, dg1: &Segment, encounter: Option<Reference>, t: &mut Translation) -> Option<Condition> {
    let code =
        h.coded(dg1, 3, t).or_else(|| Some(h.value(dg1, 4)).filter(|s| !s.is_empty()).map(CodeableConcept::text));
    let Some(code) = code else {
        t.warn(at(dg1, 3), "diagnosis without a code or description; not mapped");
        return None;
    };
    let key = format!(
        "{}:DG1:{}:{}",
        h.pid,
        code.coding.first().and_then(|c| c.code.clone()).or(code.text.clone()).unwrap_or_default(),
        h.value(dg1, 5)
    );
    // Table 0052: A admitting, W working, F final.
    let verification = match h.value(dg1, 6).as_str() {
        "A" | "W" => "provisional",
        "F" | "" => "confirmed",
        other => {
            t.warn(at(dg1, 6), format!("diagnosis type `{other}` is unknown; kept as confirmed"));
            "confirmed"
        }
    };
    let mut category = vec![coding("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis")];
    if let Some(kind) = h.coded_in(dg1, 6, "HL70052", t) {
        category.push(kind);
    }
    Some(Condition {
        id: Some(h.ctx.id_for("Condition", &key)),
        clinical_status: Some(coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")),
        verification_status: Some(coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", verification)),
        category,
        code: Some(code),
        subject: h.patient_ref(),
        encounter,
        onset_date_time: h.when(dg1, 5, t),
        recorded_date: h.when(dg1, 19, t),
        asserter: h.person(dg1, 16),
        ..Default::default()
    })
}

/// PR1: a procedure performed.
fn procedure(h: &Helper<'_>, pr1: &Segment, encounter: Option<Reference>, t: &mut Translation) -> Option<Procedure> {
    let code =
        h.coded(pr1, 3, t).or_else(|| Some(h.value(pr1, 4)).filter(|s| !s.is_empty()).map(CodeableConcept::text));
    let Some(code) = code else {
        t.warn(at(pr1, 3), "procedure without a code or description; not mapped");
        return None;
    };
    let when = h.when(pr1, 5, t);
    let key = format!(
        "{}:PR1:{}:{}",
        h.pid,
        code.coding.first().and_then(|c| c.code.clone()).or(code.text.clone()).unwrap_or_default(),
        when.clone().unwrap_or_default()
    );
    let mut performer = Vec::new();
    for (f, function) in [(8, "anesthesiologist"), (11, "surgeon"), (12, "procedure practitioner")] {
        for rep in h.reps(pr1, f).collect::<Vec<_>>() {
            if let Some(actor) = h.person_of(&rep) {
                performer.push(Performer { function: Some(CodeableConcept::text(function)), actor });
            }
        }
    }
    Some(Procedure {
        id: Some(h.ctx.id_for("Procedure", &key)),
        identifier: h.entity(pr1, 19, "procedure").into_iter().collect(),
        status: "completed".into(),
        category: h.coded_in(pr1, 6, "HL70230", t),
        code: Some(code),
        subject: h.patient_ref(),
        encounter,
        performed_date_time: when,
        performer,
        reason_code: h.coded(pr1, 15, t).into_iter().collect(),
        ..Default::default()
    })
}
