//! Vaccinations (VXU^V04): an Immunization per RXA with the vaccine (CVX or local
//! code), time given, dose, lot, expiry, manufacturer, route and site (RXR), who gave
//! it, whether it was given or refused, and whether the record is first-hand.

use super::{at, Helper};
use crate::codes;
use crate::Translation;
use kakehashi_adapters::hl7v2::Segment;
use kakehashi_fhir::*;

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    let mut orc: Option<&Segment> = None;
    let mut current: Option<Immunization> = None;
    let mut seq = 0usize;
    for seg in &m.segments {
        match seg.id.as_str() {
            "ORC" => orc = Some(seg),
            "RXA" => {
                if let Some(i) = current.take() {
                    t.resources.push(Resource::Immunization(i));
                }
                seq += 1;
                current = immunization(h, orc, seg, seq, t);
            }
            "RXR" => {
                if let Some(i) = current.as_mut() {
                    i.route = h.coded_in(seg, 1, "HL70162", t);
                    i.site = h.coded_in(seg, 2, "HL70163", t);
                }
            }
            "OBX" => {
                // Observations about the vaccination (funding eligibility, the
                // information sheet given …) travel with it as notes.
                if let Some(i) = current.as_mut() {
                    let what = h.comp(seg, 3, 2);
                    let what = if what.is_empty() { h.comp(seg, 3, 1) } else { what };
                    let value = {
                        let p = h.first(seg, 5);
                        let text = p.get(2);
                        if text.is_empty() {
                            p.get(1)
                        } else {
                            text
                        }
                    };
                    let when = h.when(seg, 14, t);
                    if !value.is_empty() {
                        i.note.push(Annotation { text: format!("{what}: {value}"), time: when, ..Default::default() });
                    }
                }
            }
            _ => {}
        }
    }
    match current {
        Some(i) => t.resources.push(Resource::Immunization(i)),
        None if seq == 0 => t.warn("RXA", "vaccination message has no RXA segment"),
        None => {}
    }
}

fn immunization(
    h: &Helper<'_>,
    orc: Option<&Segment>,
    rxa: &Segment,
    seq: usize,
    t: &mut Translation,
) -> Option<Immunization> {
    let Some(vaccine) = h.coded(rxa, 5, t) else {
        t.warn(at(rxa, 5), "vaccination without a vaccine code; not mapped");
        return None;
    };
    let Some(given) = h.when(rxa, 3, t) else {
        t.warn(at(rxa, 3), "vaccination without the time given (RXA-3); not mapped");
        return None;
    };
    // RXA-20 completion status (table 0322) and RXA-21 action code (table 0323).
    let status = match (h.value(rxa, 20).as_str(), h.value(rxa, 21).as_str()) {
        (_, "D") => "entered-in-error",
        ("RE" | "NA", _) => "not-done",
        ("CP" | "PA" | "", _) => "completed",
        (other, _) => {
            t.warn(at(rxa, 20), format!("completion status `{other}` is unknown; kept as completed"));
            "completed"
        }
    };
    // 999 means "amount unknown" in the CDC implementation guide.
    let dose = h.amount(rxa, 6, 7, t).filter(|q| q.value != Some(999.0));
    // RXA-9 (NIP001): 00 new record (first-hand), 01 historical.
    let source = h.comp(rxa, 9, 1);
    let order = orc
        .map(|o| h.comp(o, 3, 1))
        .filter(|s| !s.is_empty())
        .or_else(|| orc.map(|o| h.comp(o, 2, 1)))
        .unwrap_or_default();
    let manufacturer = h.first(rxa, 17);
    let manufacturer = (!manufacturer.get(1).is_empty() || !manufacturer.get(2).is_empty()).then(|| Reference {
        identifier: Some(manufacturer.get(1)).filter(|s| !s.is_empty()).map(|c| Identifier {
            system: Some(if manufacturer.get(3) == "MVX" {
                "http://hl7.org/fhir/sid/mvx".to_string()
            } else {
                codes::local_system(&h.ctx.owner, "manufacturer")
            }),
            value: Some(c),
            ..Default::default()
        }),
        display: Some(manufacturer.get(2)).filter(|s| !s.is_empty()),
        type_: Some("Organization".into()),
        ..Default::default()
    });
    let performer = h
        .reps(rxa, 10)
        .collect::<Vec<_>>()
        .iter()
        .filter_map(|p| h.person_of(p))
        .map(|actor| Performer {
            function: Some(CodeableConcept::coding(
                Coding::new("http://terminology.hl7.org/CodeSystem/v2-0443", "AP")
                    .with_display("Administering Provider"),
            )),
            actor,
        })
        .chain(orc.and_then(|o| h.person(o, 12)).map(|actor| Performer {
            function: Some(CodeableConcept::coding(
                Coding::new("http://terminology.hl7.org/CodeSystem/v2-0443", "OP").with_display("Ordering Provider"),
            )),
            actor,
        }))
        .collect();
    let key = format!("{}:RXA:{order}:{given}:{seq}", h.pid);
    Some(Immunization {
        id: Some(h.ctx.id_for("Immunization", &key)),
        identifier: orc.and_then(|o| h.entity(o, 3, "immunization")).into_iter().collect(),
        status: status.into(),
        status_reason: h.coded(rxa, 18, t),
        vaccine_code: vaccine,
        patient: h.patient_ref(),
        occurrence_date_time: given,
        recorded: orc.and_then(|o| h.when(o, 9, t)),
        primary_source: match source.as_str() {
            "00" => Some(true),
            "" => None,
            _ => Some(false),
        },
        manufacturer,
        lot_number: Some(h.value(rxa, 15)).filter(|s| !s.is_empty()),
        expiration_date: h.when(rxa, 16, t).map(|d| d.chars().take(10).collect()),
        dose_quantity: dose,
        performer,
        ..Default::default()
    })
}
