//! Lab results (OUL^R22, ORU^R01, OML): an Observation per OBX with JLAC10 code,
//! value and unit, reference range, interpretation flag and effective time, and a
//! DiagnosticReport per OBR grouping them.

use super::{at, Helper};
use crate::codes;
use crate::Translation;
use kakehashi_adapters::hl7v2::Segment;
use kakehashi_fhir::*;

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let mut groups: Vec<(Option<&Segment>, Vec<&Segment>)> = Vec::new();
    for seg in &h.msg.segments {
        match seg.id.as_str() {
            "OBR" => groups.push((Some(seg), Vec::new())),
            "OBX" => match groups.last_mut() {
                Some(g) => g.1.push(seg),
                None => groups.push((None, vec![seg])),
            },
            _ => {}
        }
    }
    if groups.is_empty() {
        t.warn("OBR", "lab message has no OBR or OBX segments");
    }
    for (gi, (obr, obxs)) in groups.into_iter().enumerate() {
        let order = obr
            .map(|o| {
                let placer = h.comp(o, 2, 1);
                if placer.is_empty() {
                    h.comp(o, 3, 1)
                } else {
                    placer
                }
            })
            .unwrap_or_default();
        let group_key = format!("{}:{order}:{gi}", h.pid);
        let mut results = Vec::new();
        for (i, obx) in obxs.iter().enumerate() {
            let set_id = obx.field(1).trim();
            let key = format!("{group_key}:{}", if set_id.is_empty() { i.to_string() } else { set_id.to_string() });
            if let Some(mut o) = observation(h, obx, &key, t) {
                if o.effective_date_time.is_none() {
                    o.effective_date_time = obr.and_then(|b| h.date_time(b.field(7), &at(b, 7), t));
                }
                o.category = vec![laboratory()];
                results.push(Reference {
                    reference: Some(format!("Observation/{}", o.id.clone().unwrap_or_default())),
                    ..Default::default()
                });
                t.resources.push(Resource::Observation(o));
            }
        }
        let Some(obr) = obr else { continue };
        let code = h.concept(obr.field(4), &at(obr, 4), t).unwrap_or_else(|| CodeableConcept::text("検体検査"));
        let status =
            match (obr.field(25).trim(), h.msg.segment("ORC").map(|o| h.comp(o, 5, 1)).unwrap_or_default().as_str()) {
                ("F", _) | (_, "CM") => "final",
                ("P", _) | (_, "IP") | (_, "SC") => "partial",
                ("C", _) => "corrected",
                ("X", _) | (_, "CA") => "cancelled",
                _ => "final",
            };
        let report = Resource::DiagnosticReport(DiagnosticReport {
            id: Some(h.ctx.id_for("DiagnosticReport", &group_key)),
            identifier: (!order.is_empty())
                .then(|| Identifier {
                    system: Some(codes::local_system(&h.ctx.owner, "lab-order")),
                    value: Some(order.clone()),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            status: status.into(),
            category: vec![CodeableConcept::coding(Coding::new(
                "http://terminology.hl7.org/CodeSystem/v2-0074",
                "LAB",
            ))],
            code,
            subject: Some(h.patient_ref()),
            effective_date_time: h.date_time(obr.field(7), &at(obr, 7), t),
            issued: h.date_time(obr.field(22), &at(obr, 22), t).filter(|d| d.contains('T')),
            performer: vec![h.owner_ref()],
            result: results,
            ..Default::default()
        });
        t.resources.push(report);
    }
}

fn laboratory() -> CodeableConcept {
    CodeableConcept::coding(Coding::new("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory"))
}

/// One OBX as an Observation (shared with ADT's body measurements).
pub(super) fn observation(h: &Helper<'_>, obx: &Segment, key: &str, t: &mut Translation) -> Option<Observation> {
    let m = h.msg;
    let Some(code) = h.concept(obx.field(3), &at(obx, 3), t) else {
        t.warn(at(obx, 3), "observation without a code; not mapped");
        return None;
    };
    let value_type = obx.field(2).trim();
    let raw_value = m.repetitions(obx.field(5)).next().unwrap_or("");
    let mut o = Observation {
        id: Some(h.ctx.id_for("Observation", key)),
        // HL7 table 0085.
        status: match obx.field(11).trim() {
            "F" | "U" | "" => "final",
            "P" | "R" | "S" => "preliminary",
            "C" => "corrected",
            "O" | "I" => "registered",
            "X" | "N" | "D" => "cancelled",
            "W" => "entered-in-error",
            other => {
                t.warn(at(obx, 11), format!("result status `{other}` is unknown"));
                "unknown"
            }
        }
        .into(),
        code,
        subject: Some(h.patient_ref()),
        effective_date_time: h.date_time(obx.field(14), &at(obx, 14), t),
        ..Default::default()
    };
    match value_type {
        "NM" | "SN" => {
            let text = if value_type == "SN" {
                m.component(raw_value, 2).into_owned()
            } else {
                m.unescape(raw_value).into_owned()
            };
            // Analysers report "<0.1" for values under the detection limit.
            let (comparator, number) = split_comparator(text.trim());
            if let Some(v) = h.number(number, &at(obx, 5), t) {
                let mut q = unit(h, obx.field(6), &at(obx, 6), t);
                q.value = Some(v);
                q.comparator = comparator.map(String::from);
                o.value_quantity = Some(q);
            } else if !text.trim().is_empty() {
                o.value_string = Some(text.trim().to_string());
            }
        }
        "CWE" | "CE" | "CNE" => o.value_codeable_concept = h.concept(raw_value, &at(obx, 5), t),
        "ST" | "TX" | "FT" | "" => {
            let v = m.unescape(raw_value).trim().to_string();
            if !v.is_empty() {
                o.value_string = Some(v);
            }
        }
        other => {
            t.warn(at(obx, 2), format!("value type `{other}` is not mapped; value kept as text"));
            let v = m.unescape(raw_value).trim().to_string();
            if !v.is_empty() {
                o.value_string = Some(v);
            }
        }
    }
    if o.value_quantity.is_none() && o.value_codeable_concept.is_none() && o.value_string.is_none() {
        o.data_absent_reason = Some(CodeableConcept::coding(Coding::new(
            "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "unknown",
        )));
    }
    let range = m.unescape(obx.field(7)).trim().to_string();
    if !range.is_empty() {
        o.reference_range.push(reference_range(h, &range, obx.field(6), &at(obx, 6), t));
    }
    for flag in m.repetitions(obx.field(8)) {
        let flag = m.component(flag, 1).trim().to_string();
        let display = match flag.as_str() {
            "H" => "High",
            "L" => "Low",
            "HH" => "Critical high",
            "LL" => "Critical low",
            "N" => "Normal",
            "A" => "Abnormal",
            "AA" => "Critical abnormal",
            "" => continue,
            other => {
                t.warn(at(obx, 8), format!("abnormal flag `{other}` is unknown; kept as text"));
                o.interpretation.push(CodeableConcept::text(other));
                continue;
            }
        };
        o.interpretation.push(CodeableConcept::coding(
            Coding::new("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", flag)
                .with_display(display),
        ));
    }
    Some(o)
}

/// OBX-6 as a Quantity without value: UCUM when the table says so, else site-local.
fn unit(h: &Helper<'_>, raw: &str, where_: &str, t: &mut Translation) -> Quantity {
    let m = h.msg;
    let code = m.component(raw, 1).trim().to_string();
    let text = m.component(raw, 2).trim().to_string();
    let table = m.component(raw, 3).trim().to_string();
    if code.is_empty() || table.is_empty() {
        // A unit with no coding system is text only: no system is better than a guess.
        let shown = if text.is_empty() { code } else { text };
        return Quantity { unit: (!shown.is_empty()).then_some(shown), ..Default::default() };
    }
    let system = h.system(&table, where_, t);
    Quantity {
        unit: Some(if text.is_empty() { code.clone() } else { text }),
        system: Some(system),
        code: Some(code),
        ..Default::default()
    }
}

fn reference_range(
    h: &Helper<'_>,
    range: &str,
    unit_raw: &str,
    where_: &str,
    t: &mut Translation,
) -> ObservationReferenceRange {
    let mut rr = ObservationReferenceRange { text: Some(range.to_string()), ..Default::default() };
    let q = |v: f64, t: &mut Translation| {
        let mut q = unit(h, unit_raw, where_, t);
        q.value = Some(v);
        q
    };
    let parse = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    if let Some(hi) =
        range.strip_prefix('<').or_else(|| range.strip_prefix("<=")).and_then(|s| parse(s.trim_start_matches('=')))
    {
        rr.high = Some(q(hi, t));
    } else if let Some(lo) = range.strip_prefix('>').and_then(|s| parse(s.trim_start_matches('='))) {
        rr.low = Some(q(lo, t));
    } else if let Some(i) = range.get(1..).and_then(|r| r.find('-')).map(|i| i + 1) {
        if let (Some(lo), Some(hi)) = (parse(&range[..i]), parse(&range[i + 1..])) {
            rr.low = Some(q(lo, t));
            rr.high = Some(q(hi, t));
        }
    }
    rr
}

/// `<0.1` → (Some("<"), "0.1").
fn split_comparator(v: &str) -> (Option<&'static str>, &str) {
    for c in ["<=", ">=", "<", ">"] {
        if let Some(rest) = v.strip_prefix(c) {
            return (Some(c), rest.trim_start());
        }
    }
    (None, v)
}
