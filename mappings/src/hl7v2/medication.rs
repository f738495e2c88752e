//! Prescriptions and injections (OMP-01/02/11/12, RDE^O11): a MedicationRequest per
//! RXE with HOT9 drug code, dose in MERIT-9 units, JAMI usage code, duration (TQ1),
//! route (RXR), prescriber, requesting institution, order number and status.

use super::{ascii_fold, at, At, Helper};
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
    // RXE (the encoded order) when present; a pharmacy order sent as RXO alone (ORM)
    // is read from its own fields.
    let give = if h.msg.segment("RXE").is_some() { "RXE" } else { "RXO" };
    for seg in &h.msg.segments {
        match seg.id.as_str() {
            "ORC" => orc = Some(seg),
            id if id == give => {
                found = true;
                if let Some(mr) = current.take() {
                    t.resources.push(Resource::MedicationRequest(mr));
                }
                let rp = orc.map(|o| h.field(o, 4).trim().to_string()).unwrap_or_default();
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
        t.warn("RXE", "prescription message has no RXE or RXO segment: nothing prescribed");
    }
}

fn current_dosage_route(h: &Helper<'_>, rxr: &Segment, t: &mut Translation) -> Option<CodeableConcept> {
    h.coded_in(rxr, 1, "HL70162", t)
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
    match h.field(orc, 1).trim() {
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
    // Where RXE and RXO keep the same things: give code, amount, units, dispense
    // amount and units, and (RXE only) the MERIT-9 category.
    let (give_f, amount_f, units_f, disp_f, disp_units_f) =
        if rxe.id == "RXO" { (1, 2, 4, 11, 12) } else { (2, 3, 5, 10, 11) };
    let medication = h.coded(rxe, give_f, t);
    if medication.is_none() {
        t.warn(at(rxe, give_f), "give code is empty");
    }
    let mut dose = Quantity::default();
    if let Some(v) = h.number(&h.comp(rxe, amount_f, 1), &At(rxe, amount_f), t) {
        dose = unit(h, rxe, units_f, t);
        dose.value = Some(v);
    }
    let mut dispense = None;
    if let Some(v) = h.number(&h.comp(rxe, disp_f, 1), &At(rxe, disp_f), t) {
        let mut q = unit(h, rxe, disp_units_f, t);
        q.value = Some(v);
        dispense = Some(q);
    }
    let merit9 = if rxe.id == "RXE" { h.field(rxe, 21) } else { "" };
    let category = m
        .repetitions(merit9)
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
        authored_on: orc.and_then(|o| h.when(o, 9, t)),
        requester: orc.and_then(|o| h.person(o, 12)).or_else(|| orc.and_then(|o| h.organization(o, 21))),
        recorder: orc.and_then(|o| h.person(o, 10)),
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
fn unit(h: &Helper<'_>, seg: &Segment, f: usize, t: &mut Translation) -> Quantity {
    let m = h.msg;
    let raw = h.field(seg, f);
    let where_ = &super::At(seg, f);
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
    let raw = m.repetitions(h.field(tq1, 3)).next().unwrap_or("");
    let code = m.subcomponent(raw, 1, 1).trim().to_string();
    let text = m.subcomponent(raw, 1, 2).trim().to_string();
    let table = m.subcomponent(raw, 1, 3).trim().to_string();
    let mut timing = Timing::default();
    if !code.is_empty() {
        if table == "JAMISDP01" && (code.len() != 16 || !code.bytes().all(|b| b.is_ascii_alphanumeric())) {
            t.warn(at(tq1, 3), format!("usage code `{code}` is not a 16-character JAMI usage code"));
        }
        let mut c = Coding::new(h.system(&table, &At(tq1, 3), t), code);
        if !text.is_empty() {
            c.display = Some(text.clone());
        }
        timing.code = Some(CodeableConcept { coding: vec![c], text: (!text.is_empty()).then(|| text.clone()) });
    } else if !text.is_empty() {
        timing.code = Some(CodeableConcept::text(text.clone()));
    }
    // TQ1-6 service duration (CQ): a number and its unit, a coded element whose
    // code (`d`, `h`, `wk` …, or the v2 ANSI+/ISO+ spellings) is honoured.
    let cq = kakehashi_adapters::hl7v2::datatypes::Cq::parse(&h.first(tq1, 6));
    let mut supply = None;
    if let Some(n) = cq.quantity.as_deref().and_then(|v| h.number(v, &At(tq1, 6), t)) {
        let unit = cq.units.code().or(cq.units.text()).unwrap_or("");
        let (ucum, label) = match duration_unit(unit) {
            Some(u) => u,
            None => {
                t.warn(at(tq1, 6), format!("duration unit `{unit}` is unknown; days assumed"));
                ("d", "日")
            }
        };
        let q = Quantity {
            value: Some(n),
            // Japanese labels in Japanese messages; the UCUM code elsewhere.
            unit: Some(if h.japanese { label } else { ucum }.into()),
            system: Some("http://unitsofmeasure.org".into()),
            code: Some(ucum.into()),
            ..Default::default()
        };
        timing.repeat = Some(TimingRepeat { bounds_duration: Some(q.clone()), ..Default::default() });
        // A supply is counted in days or longer; a duration in hours is not one.
        if matches!(ucum, "d" | "wk" | "mo" | "a") {
            supply = Some(q);
        }
    }
    let start = h.when(tq1, 7, t);
    let end = h.when(tq1, 8, t);
    // TQ1-9 priority (table 0485).
    mr.priority = match h.value(tq1, 9).as_str() {
        "S" => Some("stat".into()),
        "A" | "P" => Some("asap".into()),
        "R" => Some("routine".into()),
        _ => mr.priority.take(),
    };
    if let Some(d) = mr.dosage_instruction.first_mut() {
        if !text.is_empty() {
            d.text = Some(text);
        }
        if timing != Timing::default() {
            d.timing = Some(timing);
        }
        if start.is_some() || end.is_some() {
            d.extension.push(Extension {
                url: PERIOD_OF_USE_EXT.into(),
                value_period: Some(Period { start, end }),
                ..Default::default()
            });
        }
    }
    if let Some(q) = supply {
        mr.dispense_request.get_or_insert_with(DispenseRequest::default).expected_supply_duration = Some(q);
    }
}

/// A duration unit as UCUM code and label: UCUM itself, the v2 `ISO+`/`ANSI+` units
/// and the one-letter codes SS-MIX2 writes. No unit means days (JAHIS).
fn duration_unit(unit: &str) -> Option<(&'static str, &'static str)> {
    Some(match unit.trim() {
        "" | "d" | "D" | "day" | "days" | "Day" | "DAY" => ("d", "日"),
        "wk" | "W" | "w" | "week" | "weeks" | "WK" => ("wk", "週"),
        "mo" | "M" | "month" | "months" | "MO" => ("mo", "月"),
        "a" | "Y" | "y" | "year" | "years" | "ANN" | "ann" => ("a", "年"),
        "h" | "H" | "hr" | "Hr" | "HR" | "hour" | "hours" | "HOUR" => ("h", "時間"),
        "min" | "MIN" | "minute" | "minutes" => ("min", "分"),
        "s" | "S" | "sec" | "second" | "seconds" => ("s", "秒"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn duration_units_are_honoured() {
        assert_eq!(super::duration_unit("Hr"), Some(("h", "時間")));
        assert_eq!(super::duration_unit("wk"), Some(("wk", "週")));
        assert_eq!(super::duration_unit(""), Some(("d", "日")));
        assert_eq!(super::duration_unit("fortnight"), None);
    }
}
