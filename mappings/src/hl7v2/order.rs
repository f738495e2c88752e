//! Orders (ORM^O01, OMG^O19, OMI^O23, and the OBR of lab messages) as ServiceRequests,
//! with placer and filler numbers, ordering provider (ORC-12, OBR-16) and facility
//! (ORC-21), priority, timing and reason; referrals (REF^I12…I15, RF1 with PRD) as
//! ServiceRequests of category referral. Pharmacy orders in ORM (RXO/RXE) become
//! MedicationRequests.

use super::lab::groups;
use super::{at, medication, Helper};
use crate::codes;
use crate::Translation;
use kakehashi_adapters::hl7v2::Segment;
use kakehashi_fhir::*;

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    if m.segment("OBR").is_none() && (m.segment("RXO").is_some() || m.segment("RXE").is_some()) {
        medication::translate(h, t);
        return;
    }
    if m.segment("OBR").is_none() && m.segment("ODS").is_some() {
        diet(h, t);
        return;
    }
    let gs = groups(m);
    if gs.iter().all(|g| g.obr.is_none()) {
        t.warn("OBR", "order message has no OBR segment: nothing ordered");
    }
    for (gi, g) in gs.iter().enumerate() {
        let Some(obr) = g.obr else { continue };
        let placer = g.orc.map(|o| h.comp(o, 2, 1)).filter(|s| !s.is_empty()).unwrap_or_else(|| h.comp(obr, 2, 1));
        let key = format!("{}:{placer}:{gi}", h.pid);
        let mut r = service_request(h, g.orc, obr, &key, &[], t);
        // Results sent with an order (OBX) are what the order is based on, such as
        // a question's answer: kept as notes rather than lost.
        for obx in &g.obx {
            let code = h.comp(obx, 3, 2);
            let value = h.comp(obx, 5, 1);
            if !value.is_empty() {
                r.note.push(Annotation {
                    text: format!("{code}: {value}").trim_start_matches(": ").to_string(),
                    ..Default::default()
                });
            }
        }
        t.resources.push(Resource::ServiceRequest(r));
    }
}

/// OMD (SS-MIX2 給食オーダ): each diet or supplement (ODS) ordered, as a
/// ServiceRequest of category diet with its codes and instructions.
fn diet(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    let orc = m.segment("ORC");
    let placer = orc.map(|o| h.comp(o, 2, 1)).unwrap_or_default();
    for (i, ods) in m.segments("ODS").enumerate() {
        let codes = h.coded_all(ods, 3, t);
        let text: Vec<String> = h.reps(ods, 4).map(|p| p.get(1)).filter(|s| !s.is_empty()).collect();
        let code = match (codes.len(), text.is_empty()) {
            (0, true) => {
                t.warn(at(ods, 3), "diet order without a code or instruction; not mapped");
                continue;
            }
            (0, false) => CodeableConcept::text(text.join(" ")),
            _ => {
                let mut c =
                    CodeableConcept { coding: codes.iter().flat_map(|c| c.coding.clone()).collect(), text: None };
                c.text = codes.iter().find_map(|c| c.text.clone());
                c
            }
        };
        let kind = match h.value(ods, 1).as_str() {
            "S" => "supplement",
            "P" => "preference",
            _ => "diet",
        };
        let key = format!("{}:ODS:{placer}:{}", h.pid, i + 1);
        let tq1 = m.segment("TQ1");
        let occurrence = tq1.and_then(|q| h.when(q, 7, t));
        let authored = orc.and_then(|o| h.when(o, 9, t));
        t.resources.push(Resource::ServiceRequest(ServiceRequest {
            id: Some(h.ctx.id_for("ServiceRequest", &key)),
            identifier: orc.and_then(|o| h.entity(o, 2, "placer-order")).into_iter().collect(),
            status: orc.map(|o| order_status(h, o)).unwrap_or("active").into(),
            intent: "order".into(),
            category: vec![
                CodeableConcept::coding(
                    Coding::new("http://snomed.info/sct", "182922004").with_display("Dietary regime"),
                ),
                CodeableConcept::text(kind),
            ],
            priority: tq1.and_then(|q| priority(&h.value(q, 9))),
            code: Some(code),
            subject: h.patient_ref(),
            occurrence_date_time: occurrence,
            authored_on: authored,
            requester: orc.and_then(|o| h.person(o, 12)),
            note: text.into_iter().map(|text| Annotation { text, ..Default::default() }).collect(),
            ..Default::default()
        }));
    }
}

/// An ORC's status as a request status.
fn order_status(h: &Helper<'_>, orc: &Segment) -> &'static str {
    match (h.value(orc, 1).as_str(), h.value(orc, 5).as_str()) {
        (_, "CA") | ("CA" | "OC" | "CR" | "DC" | "OD" | "DR", _) => "revoked",
        (_, "CM") => "completed",
        (_, "HD") | ("HD" | "OH", _) => "on-hold",
        _ => "active",
    }
}

/// ORC-5 order status and ORC-1 order control as a request status.
fn status(h: &Helper<'_>, orc: Option<&Segment>, obr: &Segment) -> &'static str {
    let control = orc.map(|o| h.value(o, 1)).unwrap_or_default();
    let state = orc.map(|o| h.value(o, 5)).unwrap_or_default();
    match (control.as_str(), state.as_str(), h.value(obr, 25).as_str()) {
        (_, "CA", _) | ("CA" | "OC" | "CR", _, _) => "revoked",
        (_, "DC", _) | ("DC" | "OD" | "DR", _, _) => "revoked",
        (_, "CM", _) | (_, _, "F") => "completed",
        (_, "HD", _) | ("HD" | "OH", _, _) => "on-hold",
        _ => "active",
    }
}

/// TQ1-9 / OBR-27 priority (table 0485: S stat, A asap, R routine, P preop, T timing).
fn priority(code: &str) -> Option<String> {
    match code {
        "S" => Some("stat".into()),
        "A" | "P" => Some("asap".into()),
        "R" | "T" => Some("routine".into()),
        _ => None,
    }
}

/// One OBR (with its ORC) as a ServiceRequest.
pub(super) fn service_request(
    h: &Helper<'_>,
    orc: Option<&Segment>,
    obr: &Segment,
    key: &str,
    specimens: &[Reference],
    t: &mut Translation,
) -> ServiceRequest {
    let mut identifier = Vec::new();
    for (seg, placer_f, filler_f) in [(orc, 2, 3), (Some(obr), 2, 3)] {
        let Some(seg) = seg else { continue };
        for (f, kind, code) in [(placer_f, "placer-order", "PLAC"), (filler_f, "filler-order", "FILL")] {
            if let Some(mut id) = h.entity(seg, f, kind) {
                if identifier.iter().any(|i: &Identifier| i.value == id.value && i.system == id.system) {
                    continue;
                }
                id.type_ =
                    Some(CodeableConcept::coding(Coding::new("http://terminology.hl7.org/CodeSystem/v2-0203", code)));
                identifier.push(id);
            }
        }
    }
    // The ordering provider: ORC-12, else OBR-16; the facility (ORC-21) when no one
    // is named, and as the performer's organisation otherwise.
    let obr_provider = h.person(obr, 16);
    let provider = orc.and_then(|o| h.person(o, 12)).or(obr_provider);
    let facility = orc.and_then(|o| h.organization(o, 21));
    let (requester, facility_note) = match (provider, facility) {
        (Some(p), Some(f)) => (Some(p), Some(f)),
        (Some(p), None) => (Some(p), None),
        (None, f) => (f, None),
    };
    let tq1 = h.msg.segments("TQ1").find(|s| s.position > obr.position || orc.is_some_and(|o| s.position > o.position));
    let prio = tq1.map(|q| h.value(q, 9)).filter(|s| !s.is_empty()).unwrap_or_else(|| h.comp(obr, 27, 6));
    let start = tq1.and_then(|q| h.when(q, 7, t)).or_else(|| h.when(obr, 6, t)).or_else(|| h.when(obr, 7, t));
    let mut note = h.notes_after(obr);
    if let Some(f) = facility_note {
        note.push(Annotation {
            text: format!(
                "ordering facility: {}",
                f.display.clone().or(f.identifier.as_ref().and_then(|i| i.value.clone())).unwrap_or_default()
            ),
            ..Default::default()
        });
    }
    ServiceRequest {
        id: Some(h.ctx.id_for("ServiceRequest", key)),
        identifier,
        status: status(h, orc, obr).into(),
        intent: "order".into(),
        priority: priority(&prio),
        code: h.coded(obr, 4, t),
        subject: h.patient_ref(),
        occurrence_date_time: start,
        authored_on: orc.and_then(|o| h.when(o, 9, t)),
        requester,
        performer: Vec::new(),
        reason_code: h.coded_all(obr, 31, t),
        specimen: specimens.to_vec(),
        note,
        ..Default::default()
    }
}

/// REF/RRI: a referral (RF1, PRD) as a ServiceRequest of category referral, with
/// the referring provider as requester and the provider referred to as performer.
pub(super) fn referral(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    let Some(rf1) = m.segment("RF1") else {
        t.warn("RF1", "referral message has no RF1 segment: nothing referred");
        return;
    };
    let id = h.entity(rf1, 6, "referral");
    let key = format!("{}:REF:{}", h.pid, id.as_ref().and_then(|i| i.value.clone()).unwrap_or_default());
    // Table 0283: A accepted, P pending, R rejected, E expired.
    let status = match h.value(rf1, 1).as_str() {
        "A" | "P" | "" => "active",
        "R" => "revoked",
        "E" => "completed",
        other => {
            t.warn(at(rf1, 1), format!("referral status `{other}` is unknown"));
            "unknown"
        }
    };
    let mut requester = None;
    let mut performer = Vec::new();
    for prd in m.segments("PRD") {
        // PRD-1 role (table 0286): RP referring, RT referred to, CP consulting, PP primary.
        let role = h.value(prd, 1);
        let name = h.reps(prd, 2).next().map(|p| {
            let x = kakehashi_adapters::hl7v2::datatypes::Xpn::parse(&p);
            x.given.iter().cloned().chain(x.family.clone()).collect::<Vec<_>>().join(" ")
        });
        let id = h.comp(prd, 7, 1);
        let r = Reference {
            identifier: (!id.is_empty()).then(|| Identifier {
                system: Some(codes::local_system(&h.ctx.owner, "provider")),
                value: Some(id),
                ..Default::default()
            }),
            display: name.filter(|n| !n.trim().is_empty()),
            type_: Some("Practitioner".into()),
            ..Default::default()
        };
        if r.identifier.is_none() && r.display.is_none() {
            continue;
        }
        match role.as_str() {
            "RP" => requester = Some(r),
            _ => performer.push(r),
        }
    }
    let mut reason = h.coded_all(rf1, 10, t);
    for dg1 in m.segments("DG1") {
        if let Some(c) = h.coded(dg1, 3, t) {
            reason.push(c);
        }
    }
    let mut category = vec![CodeableConcept::coding(
        Coding::new("http://snomed.info/sct", "3457005").with_display("Patient referral"),
    )];
    // RF1-3 referral type and RF1-5 category (inpatient, outpatient …).
    category.extend(h.coded(rf1, 3, t));
    category.extend(h.coded(rf1, 5, t));
    // Notes may follow RF1 or the diagnoses: every NTE of the message is the referral's.
    let mut note: Vec<Annotation> = m
        .segments("NTE")
        .map(|n| h.value(n, 3))
        .filter(|s| !s.is_empty())
        .map(|text| Annotation { text, ..Default::default() })
        .collect();
    if let Some(disposition) =
        h.coded(rf1, 4, t).and_then(|c| c.text.or_else(|| c.coding.first().and_then(|c| c.code.clone())))
    {
        note.push(Annotation { text: format!("referral disposition: {disposition}"), ..Default::default() });
    }
    let request = ServiceRequest {
        id: Some(h.ctx.id_for("ServiceRequest", &key)),
        identifier: id.into_iter().collect(),
        status: status.into(),
        intent: "order".into(),
        category,
        priority: priority(&h.comp(rf1, 2, 1)),
        subject: h.patient_ref(),
        authored_on: h.when(rf1, 7, t),
        occurrence_period: h.when(rf1, 8, t).map(|end| Period { start: None, end: Some(end) }),
        requester,
        performer,
        reason_code: reason,
        note,
        ..Default::default()
    };
    t.resources.push(Resource::ServiceRequest(request));
}
