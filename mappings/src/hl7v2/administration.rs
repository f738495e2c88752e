//! Administration records (OMP-11/OMP-12 実施通知, RAS^O17): a MedicationAdministration
//! per RXA with the drug, dose, time given, who gave it, route, and the order it fulfils.

use super::{at, At, Helper};
use crate::codes;
use crate::Translation;
use kakehashi_adapters::hl7v2::Segment;
use kakehashi_fhir::*;

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    let mut orc: Option<&Segment> = None;
    let mut current: Option<MedicationAdministration> = None;
    let mut seq = 0usize;
    for seg in &m.segments {
        match seg.id.as_str() {
            "ORC" => orc = Some(seg),
            "RXA" => {
                if let Some(a) = current.take() {
                    t.resources.push(Resource::MedicationAdministration(a));
                }
                seq += 1;
                current = Some(administration(h, orc, seg, seq, t));
            }
            "RXR" => {
                if let Some(a) = current.as_mut() {
                    let route = h.coded_in(seg, 1, "HL70162", t);
                    a.dosage.get_or_insert_with(Default::default).route = route;
                }
            }
            _ => {}
        }
    }
    match current {
        Some(a) => t.resources.push(Resource::MedicationAdministration(a)),
        None if seq == 0 => t.warn("RXA", "administration message has no RXA segment"),
        None => {}
    }
}

fn administration(
    h: &Helper<'_>,
    orc: Option<&Segment>,
    rxa: &Segment,
    seq: usize,
    t: &mut Translation,
) -> MedicationAdministration {
    let order = orc.map(|o| h.comp(o, 2, 1)).unwrap_or_default();
    let dose = h.amount(rxa, 6, 7, t);
    // RXA-20 completion status (HL7 table 0322): CP complete, RE refused, NA not given, PA partial.
    let status = match h.field(rxa, 20).trim() {
        "CP" | "" => "completed",
        "PA" => "in-progress",
        "RE" | "NA" => "not-done",
        other => {
            t.warn(at(rxa, 20), format!("completion status `{other}` is unknown"));
            "unknown"
        }
    };
    MedicationAdministration {
        id: Some(
            h.ctx.id_for("MedicationAdministration", &format!("{}:{order}:{}:{seq}", h.pid, h.field(rxa, 3).trim())),
        ),
        identifier: (!order.is_empty())
            .then(|| Identifier {
                system: Some(codes::ORDER_NUMBER.into()),
                value: Some(format!("{}-{}-{order}", h.ctx.owner, h.pid)),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        status: status.into(),
        medication_codeable_concept: Some(
            h.concept(h.field(rxa, 5), &At(rxa, 5), t).unwrap_or_else(|| CodeableConcept::text("(薬剤コードなし)")),
        ),
        subject: h.patient_ref(),
        effective_date_time: h.when(rxa, 3, t),
        performer: h
            .person(rxa, 10)
            .map(|actor| MedicationAdministrationPerformer { function: None, actor })
            .into_iter()
            .collect(),
        dosage: dose.map(|d| MedicationAdministrationDosage { dose: Some(d), ..Default::default() }),
        ..Default::default()
    }
}
