//! Lab results (OUL^R22, ORU^R01, OML): an Observation per OBX with its code, value
//! and unit, reference range, interpretation flag and effective time; a
//! DiagnosticReport per OBR grouping them, based on the order (ServiceRequest, with
//! the ordering provider and facility); a Specimen per SPM.

use super::{at, order, At, Helper};
use crate::Translation;
use kakehashi_adapters::hl7v2::datatypes::*;
use kakehashi_adapters::hl7v2::Segment;
use kakehashi_fhir::*;

/// One order group: its ORC, OBR, results and specimens.
#[derive(Default)]
pub(super) struct Group<'a> {
    pub orc: Option<&'a Segment>,
    pub obr: Option<&'a Segment>,
    pub obx: Vec<&'a Segment>,
    pub spm: Vec<&'a Segment>,
}

/// The message's order groups: an ORC or OBR opens one (an OBR after its own ORC
/// joins it, as does an ORC right after its OBR); OBX and SPM belong to the group
/// they follow.
pub(super) fn groups(m: &kakehashi_adapters::hl7v2::Message) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for seg in &m.segments {
        match seg.id.as_str() {
            // OUL^R22 puts ORC after its OBR: it joins that group.
            "ORC" => match out.last_mut() {
                Some(g) if g.orc.is_none() && g.obr.is_some() && g.obx.is_empty() => g.orc = Some(seg),
                _ => out.push(Group { orc: Some(seg), ..Default::default() }),
            },
            "OBR" => match out.last_mut() {
                Some(g) if g.obr.is_none() && g.obx.is_empty() => g.obr = Some(seg),
                _ => out.push(Group { obr: Some(seg), orc: out.last().and_then(|g| g.orc), ..Default::default() }),
            },
            "OBX" | "SPM" => {
                if out.is_empty() {
                    out.push(Group::default());
                }
                let g = out.last_mut().expect("a group was just made");
                if seg.id == "OBX" {
                    g.obx.push(seg);
                } else {
                    g.spm.push(seg);
                }
            }
            _ => {}
        }
    }
    out
}

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let groups = groups(h.msg);
    if groups.iter().all(|g| g.obr.is_none() && g.obx.is_empty()) {
        t.warn("OBR", "lab message has no OBR or OBX segments");
    }
    for (gi, g) in groups.iter().enumerate() {
        let order_no = g
            .obr
            .map(|o| {
                let placer = h.comp(o, 2, 1);
                if placer.is_empty() {
                    h.comp(o, 3, 1)
                } else {
                    placer
                }
            })
            .or_else(|| g.orc.map(|o| h.comp(o, 2, 1)))
            .unwrap_or_default();
        let group_key = format!("{}:{order_no}:{gi}", h.pid);
        let specimens = specimens(h, &g.spm, &group_key, t);
        let specimen_refs: Vec<Reference> = specimens.iter().map(|s| literal("Specimen", s.id.as_deref())).collect();
        t.resources.extend(specimens.into_iter().map(Resource::Specimen));
        let request = g.obr.map(|obr| order::service_request(h, g.orc, obr, &group_key, &specimen_refs, t));
        let based_on = request.as_ref().map(|r| literal("ServiceRequest", r.id.as_deref()));
        if let Some(r) = request {
            t.resources.push(Resource::ServiceRequest(r));
        }
        let mut results = Vec::new();
        for (i, obx) in g.obx.iter().enumerate() {
            let set_id = h.value(obx, 1);
            let key = format!("{group_key}:{}", if set_id.is_empty() { i.to_string() } else { set_id });
            if let Some(mut o) = observation(h, obx, &key, t) {
                if o.effective_date_time.is_none() {
                    o.effective_date_time = g.obr.and_then(|b| h.when(b, 7, t));
                }
                o.category = vec![laboratory()];
                o.based_on = based_on.clone().into_iter().collect();
                o.specimen = specimen_refs.first().cloned();
                results.push(literal("Observation", o.id.as_deref()));
                t.resources.push(Resource::Observation(o));
            }
        }
        let Some(obr) = g.obr else { continue };
        let code = h.coded(obr, 4, t).unwrap_or_else(|| CodeableConcept::text("検体検査"));
        let control = g.orc.map(|o| h.value(o, 5)).unwrap_or_default();
        let status = match (h.value(obr, 25).as_str(), control.as_str()) {
            ("F", _) | (_, "CM") => "final",
            ("P", _) | (_, "IP") | (_, "SC") => "partial",
            ("C", _) => "corrected",
            ("X", _) | (_, "CA") => "cancelled",
            ("I", _) | ("O", _) | ("S", _) => "registered",
            _ => "final",
        };
        let performer = g
            .obx
            .iter()
            .find_map(|obx| h.organization(obx, 23))
            .map(|o| vec![o])
            .unwrap_or_else(|| vec![h.owner_ref()]);
        let report = Resource::DiagnosticReport(DiagnosticReport {
            id: Some(h.ctx.id_for("DiagnosticReport", &group_key)),
            identifier: (!order_no.is_empty())
                .then(|| Identifier {
                    system: Some(crate::codes::local_system(&h.ctx.owner, "lab-order")),
                    value: Some(order_no.clone()),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            based_on: based_on.clone().into_iter().collect(),
            status: status.into(),
            category: vec![CodeableConcept::coding(Coding::new(
                "http://terminology.hl7.org/CodeSystem/v2-0074",
                "LAB",
            ))],
            code,
            subject: Some(h.patient_ref()),
            effective_date_time: h.when(obr, 7, t),
            issued: h.when(obr, 22, t).filter(|d| d.contains('T')),
            performer,
            specimen: specimen_refs,
            result: results,
            ..Default::default()
        });
        t.resources.push(report);
    }
}

/// `Type/id` as a Reference.
pub(super) fn literal(ty: &str, id: Option<&str>) -> Reference {
    Reference { reference: Some(format!("{ty}/{}", id.unwrap_or_default())), ..Default::default() }
}

fn laboratory() -> CodeableConcept {
    CodeableConcept::coding(Coding::new("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory"))
}

/// SPM: the specimens of a group.
fn specimens(h: &Helper<'_>, spms: &[&Segment], group_key: &str, t: &mut Translation) -> Vec<Specimen> {
    let mut out = Vec::new();
    for (i, spm) in spms.iter().enumerate() {
        // SPM-2 (EIP): placer and filler assigned ids, each an EI in sub-components.
        let eip = h.first(spm, 2);
        let mut identifier = Vec::new();
        for (n, kind) in [(1, "specimen-placer"), (2, "specimen-filler")] {
            let ei = Ei::parse(&eip.sub(n));
            if let Some(id) = ei.id {
                let system = ei.authority.uri().unwrap_or_else(|| crate::codes::local_system(&h.ctx.owner, kind));
                identifier.push(Identifier { system: Some(system), value: Some(id), ..Default::default() });
            }
        }
        let collected = h.first(spm, 17);
        let (start, end) = (collected.get(1), collected.get(2));
        let start = h.date_time(&start, &At(spm, 17), t);
        let end = h.date_time(&end, &At(spm, 17), t);
        let description = h.value(spm, 14);
        out.push(Specimen {
            id: Some(h.ctx.id_for(
                "Specimen",
                &format!(
                    "{group_key}:SPM:{}",
                    identifier.first().and_then(|i| i.value.clone()).unwrap_or_else(|| i.to_string())
                ),
            )),
            identifier,
            type_: h.coded_in(spm, 4, "HL70487", t),
            subject: h.patient_ref(),
            received_time: h.when(spm, 18, t),
            collection: {
                let method = h.coded_in(spm, 7, "HL70488", t);
                let body_site = h.coded(spm, 8, t);
                let (date_time, period) = match (&start, &end) {
                    (Some(s), Some(e)) if s != e => {
                        (None, Some(Period { start: Some(s.clone()), end: Some(e.clone()) }))
                    }
                    _ => (start.clone(), None),
                };
                (date_time.is_some() || period.is_some() || method.is_some() || body_site.is_some()).then_some(
                    SpecimenCollection { collected_date_time: date_time, collected_period: period, method, body_site },
                )
            },
            condition: h.coded_all(spm, 24, t),
            note: (!description.is_empty())
                .then(|| Annotation { text: description, ..Default::default() })
                .into_iter()
                .collect(),
            ..Default::default()
        });
    }
    out
}

/// One OBX as an Observation (shared with ADT's body measurements).
pub(super) fn observation(h: &Helper<'_>, obx: &Segment, key: &str, t: &mut Translation) -> Option<Observation> {
    let m = h.msg;
    let Some(code) = h.coded(obx, 3, t) else {
        t.warn(at(obx, 3), "observation without a code; not mapped");
        return None;
    };
    let value_type = h.value(obx, 2);
    let raw_value = m.repetitions(h.field(obx, 5)).next().unwrap_or("");
    let value = m.parts(raw_value);
    let mut o = Observation {
        id: Some(h.ctx.id_for("Observation", key)),
        // HL7 table 0085.
        status: match h.value(obx, 11).as_str() {
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
        effective_date_time: h.when(obx, 14, t),
        performer: h.person(obx, 16).into_iter().collect(),
        method: h.coded(obx, 17, t),
        ..Default::default()
    };
    if let Some(site) = h.coded(obx, 20, t) {
        o.body_site = Some(site);
    }
    match value_type.as_str() {
        "NM" | "SN" => {
            // SN: comparator ^ number (and ^ separator ^ number for ranges and ratios).
            let text = if value_type == "SN" { format!("{}{}", value.get(1), value.get(2)) } else { value.get(1) };
            // Analysers report "<0.1" for values under the detection limit.
            let (comparator, number) = split_comparator(text.trim());
            if let Some(v) = h.number(number, &At(obx, 5), t) {
                let mut q = unit(h, obx, t);
                q.value = Some(v);
                q.comparator = comparator.map(String::from);
                o.value_quantity = Some(q);
            } else if !text.trim().is_empty() {
                o.value_string = Some(text.trim().to_string());
            }
        }
        "CWE" | "CE" | "CNE" => o.value_codeable_concept = h.concept(raw_value, &At(obx, 5), t),
        "ST" | "TX" | "FT" | "" => {
            // Every repetition is a line of the text.
            let lines: Vec<String> = m.repetitions(obx.field(5)).map(|r| m.unescape(r).trim().to_string()).collect();
            let v = lines.join("\n").trim().to_string();
            if !v.is_empty() {
                o.value_string = Some(v);
            }
        }
        "DT" | "DTM" | "TS" => o.value_date_time = h.date_time(&value.get(1), &At(obx, 5), t),
        "RP" => {
            // A reference pointer: the address of the data, kept as text.
            let v = value.get(1);
            if !v.is_empty() {
                o.value_string = Some(v);
            }
        }
        other => {
            t.warn(at(obx, 2), format!("value type `{other}` is not mapped; value kept as text"));
            let v = value.get(1);
            if !v.is_empty() {
                o.value_string = Some(v);
            }
        }
    }
    if o.value_quantity.is_none()
        && o.value_codeable_concept.is_none()
        && o.value_string.is_none()
        && o.value_date_time.is_none()
    {
        o.data_absent_reason = Some(CodeableConcept::coding(Coding::new(
            "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "unknown",
        )));
    }
    let range = h.value(obx, 7);
    if !range.is_empty() {
        o.reference_range.push(reference_range(h, &range, obx, t));
    }
    for flag in h.reps(obx, 8).map(|p| p.get(1)).collect::<Vec<_>>() {
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
fn unit(h: &Helper<'_>, obx: &Segment, t: &mut Translation) -> Quantity {
    let cwe = Cwe::parse(&h.first(obx, 6));
    let Some((code, text, table)) = cwe.codings.first() else { return Quantity::default() };
    let (Some(code), Some(table)) = (code, table) else {
        // A unit with no coding system is text only: no system is better than a guess.
        return Quantity { unit: text.clone().or(code.clone()), ..Default::default() };
    };
    let system = h.system(table, &At(obx, 6), t);
    Quantity {
        unit: Some(text.clone().unwrap_or_else(|| code.clone())),
        system: Some(system),
        code: Some(code.clone()),
        ..Default::default()
    }
}

fn reference_range(h: &Helper<'_>, range: &str, obx: &Segment, t: &mut Translation) -> ObservationReferenceRange {
    let mut rr = ObservationReferenceRange { text: Some(range.to_string()), ..Default::default() };
    let q = |v: f64, t: &mut Translation| {
        let mut q = unit(h, obx, t);
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
