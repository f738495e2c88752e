//! Prescriptions and injections (OMP-01/02/11/12, RDE^O11): a MedicationRequest per
//! RXE with HOT9 drug code, dose in MERIT-9 units, JAMI usage code, duration (TQ1),
//! route (RXR), prescriber, requesting institution, order number and status.

use super::{ascii_fold, at, Helper};
use crate::codes;
use crate::Translation;
use kakehashi_adapters::hl7v2::Segment;
use kakehashi_fhir::*;

const MERIT9_CATEGORY: &str = "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCategoryMERIT9_CS";
const INSTITUTION_EXT: &str = "http://jpfhir.jp/fhir/clins/Extension/StructureDefinition/JP_eCS_InstitutionNumber";
const PERIOD_OF_USE_EXT: &str =
    "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_MedicationDosage_PeriodOfUse";

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let mut orc: Option<&Segment> = None;
    let mut current: Option<MedicationRequest> = None;
    let mut seq_in_rp = 0usize;
    let mut last_rp = String::new();
    let mut found = false;
    for seg in &h.msg.segments {
        match seg.id.as_str() {
            "ORC" => orc = Some(seg),
            "RXE" => {
                found = true;
                if let Some(mr) = current.take() {
                    t.resources.push(Resource::MedicationRequest(mr));
                }
                let rp = orc.map(|o| o.field(4).trim().to_string()).unwrap_or_default();
                if rp != last_rp {
                    seq_in_rp = 0;
                    last_rp = rp.clone();
                }
                seq_in_rp += 1;
                current = Some(request(h, orc, seg, &rp, seq_in_rp, t));
            }
            "TQ1" => {
                if let Some(mr) = current.as_mut() {
                    timing(h, seg, mr, t);
                }
            }
            "RXR" => {
                if let (Some(mr), Some(d)) = (current.as_mut(), current_dosage_route(h, seg, t)) {
                    if let Some(dosage) = mr.dosage_instruction.first_mut() {
                        dosage.route = Some(d);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(mr) = current.take() {
        t.resources.push(Resource::MedicationRequest(mr));
    }
    if !found {
        t.warn("RXE", "prescription message has no RXE segment");
    }
}

fn current_dosage_route(h: &Helper<'_>, rxr: &Segment, t: &mut Translation) -> Option<CodeableConcept> {
    h.concept(h.msg.repetitions(rxr.field(1)).next().unwrap_or(""), &at(rxr, 1), t)
}

fn status(h: &Helper<'_>, orc: Option<&Segment>, t: &mut Translation) -> &'static str {
    let Some(orc) = orc else { return "unknown" };
    match h.comp(orc, 5, 1).as_str() {
        "CM" => return "completed",
        "CA" => return "cancelled",
        "DC" => return "stopped",
        "HD" => return "on-hold",
        _ => {}
    }
    match orc.field(1).trim() {
        "NW" | "RO" | "XO" | "OK" | "SC" | "SN" | "" => "active",
        "CA" | "OC" | "CR" => "cancelled",
        "DC" | "OD" | "DR" => "stopped",
        "HD" | "OH" => "on-hold",
        other => {
            t.warn(at(orc, 1), format!("order control `{other}` is unknown"));
            "unknown"
        }
    }
}

fn request(
    h: &Helper<'_>,
    orc: Option<&Segment>,
    rxe: &Segment,
    rp: &str,
    seq: usize,
    t: &mut Translation,
) -> MedicationRequest {
    let m = h.msg;
    let order = orc.map(|o| h.comp(o, 2, 1)).unwrap_or_default();
    let key = format!("{}:{order}:{rp}:{seq}", h.pid);
    let mut identifier = Vec::new();
    if !order.is_empty() {
        identifier.push(Identifier {
            system: Some(codes::ORDER_NUMBER.into()),
            value: Some(format!("{}-{}-{order}", h.ctx.owner, h.pid)),
            ..Default::default()
        });
    }
    if !order.is_empty() {
        // The bare order number is what a pharmacist reads off the prescription.
        identifier.push(Identifier {
            system: Some(codes::local_system(&h.ctx.owner, "prescription-number")),
            value: Some(order.clone()),
            ..Default::default()
        });
    }
    if !rp.is_empty() {
        identifier.push(Identifier {
            system: Some(codes::RP_NUMBER.into()),
            value: Some(ascii_fold(rp)),
            ..Default::default()
        });
    }
    let medication = h.concept(rxe.field(2), &at(rxe, 2), t);
    if medication.is_none() {
        t.warn(at(rxe, 2), "give code is empty");
    }
    let mut dose = Quantity::default();
    if let Some(v) = h.number(&m.component(rxe.field(3), 1), &at(rxe, 3), t) {
        dose = unit(h, rxe.field(5), &at(rxe, 5), t);
        dose.value = Some(v);
    }
    let mut dispense = None;
    if let Some(v) = h.number(&m.component(rxe.field(10), 1), &at(rxe, 10), t) {
        let mut q = unit(h, rxe.field(11), &at(rxe, 11), t);
        q.value = Some(v);
        dispense = Some(q);
    }
    let category = m
        .repetitions(rxe.field(21))
        .filter_map(|r| {
            let code = m.component(r, 1).trim().to_string();
            (!code.is_empty()).then(|| {
                let mut c = Coding::new(MERIT9_CATEGORY, code);
                let d = m.component(r, 2).trim().to_string();
                if !d.is_empty() {
                    c.display = Some(d);
                }
                CodeableConcept::coding(c)
            })
        })
        .collect();
    MedicationRequest {
        id: Some(h.ctx.id_for("MedicationRequest", &key)),
        extension: vec![Extension {
            url: INSTITUTION_EXT.into(),
            value_identifier: Some(Identifier {
                system: Some(codes::INSTITUTION_NUMBER.into()),
                value: Some(h.ctx.owner.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        identifier,
        status: status(h, orc, t).into(),
        intent: "order".into(),
        category,
        medication_codeable_concept: Some(medication.unwrap_or_else(|| CodeableConcept::text("(薬剤コードなし)"))),
        subject: h.patient_ref(),
        authored_on: orc.and_then(|o| h.date_time(o.field(9), &at(o, 9), t)),
        requester: orc.and_then(|o| h.person(m.repetitions(o.field(12)).next().unwrap_or(""))),
        recorder: orc.and_then(|o| h.person(m.repetitions(o.field(10)).next().unwrap_or(""))),
        dosage_instruction: vec![Dosage {
            dose_and_rate: (dose.value.is_some())
                .then(|| DoseAndRate { dose_quantity: Some(dose), ..Default::default() })
                .into_iter()
                .collect(),
            ..Default::default()
        }],
        dispense_request: dispense.map(|q| DispenseRequest { quantity: Some(q), ..Default::default() }),
        ..Default::default()
    }
}

/// A MERIT-9 (or other) unit as a Quantity without value.
fn unit(h: &Helper<'_>, raw: &str, where_: &str, t: &mut Translation) -> Quantity {
    let m = h.msg;
    let code = m.component(raw, 1).trim().to_string();
    let text = m.component(raw, 2).trim().to_string();
    if code.is_empty() {
        return Quantity { unit: (!text.is_empty()).then_some(text), ..Default::default() };
    }
    let system = h.system(&m.component(raw, 3), where_, t);
    Quantity {
        unit: Some(if text.is_empty() { code.clone() } else { text }),
        system: Some(system),
        code: Some(code),
        ..Default::default()
    }
}

/// TQ1: usage (JAMI 16-digit code in TQ1-3), duration (TQ1-6) and start (TQ1-7).
fn timing(h: &Helper<'_>, tq1: &Segment, mr: &mut MedicationRequest, t: &mut Translation) {
    let m = h.msg;
    let raw = m.repetitions(tq1.field(3)).next().unwrap_or("");
    let code = m.subcomponent(raw, 1, 1).trim().to_string();
    let text = m.subcomponent(raw, 1, 2).trim().to_string();
    let table = m.subcomponent(raw, 1, 3).trim().to_string();
    let mut timing = Timing::default();
    if !code.is_empty() {
        if table == "JAMISDP01" && (code.len() != 16 || !code.bytes().all(|b| b.is_ascii_alphanumeric())) {
            t.warn(at(tq1, 3), format!("usage code `{code}` is not a 16-character JAMI usage code"));
        }
        let mut c = Coding::new(h.system(&table, &at(tq1, 3), t), code);
        if !text.is_empty() {
            c.display = Some(text.clone());
        }
        timing.code = Some(CodeableConcept { coding: vec![c], text: (!text.is_empty()).then(|| text.clone()) });
    } else if !text.is_empty() {
        timing.code = Some(CodeableConcept::text(text.clone()));
    }
    let duration = m.component(tq1.field(6), 1).trim().to_string();
    let mut supply = None;
    if let Some(n) = h.number(&duration, &at(tq1, 6), t) {
        let (ucum, label) = match m.component(tq1.field(6), 2).trim() {
            "d" | "D" | "" => ("d", "日"),
            "wk" | "W" => ("wk", "週"),
            "mo" | "M" => ("mo", "月"),
            other => {
                t.warn(at(tq1, 6), format!("duration unit `{other}` is unknown; days assumed"));
                ("d", "日")
            }
        };
        let q = Quantity {
            value: Some(n),
            unit: Some(label.into()),
            system: Some("http://unitsofmeasure.org".into()),
            code: Some(ucum.into()),
            ..Default::default()
        };
        timing.repeat = Some(TimingRepeat { bounds_duration: Some(q.clone()), ..Default::default() });
        supply = Some(q);
    }
    let start = h.date_time(tq1.field(7), &at(tq1, 7), t);
    if let Some(d) = mr.dosage_instruction.first_mut() {
        if !text.is_empty() {
            d.text = Some(text);
        }
        if timing != Timing::default() {
            d.timing = Some(timing);
        }
        if let Some(start) = start {
            d.extension.push(Extension {
                url: PERIOD_OF_USE_EXT.into(),
                value_period: Some(Period { start: Some(start), end: None }),
                ..Default::default()
            });
        }
    }
    if let Some(q) = supply {
        mr.dispense_request.get_or_insert_with(DispenseRequest::default).expected_supply_duration = Some(q);
    }
}
