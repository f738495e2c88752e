//! ADT (ADT-00 and friends): Patient, AllergyIntolerance (AL1), Coverage (IN1) and the
//! height, weight and blood-type Observations carried in OBX.

use super::{ascii_fold, at, Helper};
use crate::codes;
use crate::Translation;
use kakehashi_fhir::*;

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let Some(pid) = h.msg.segment("PID") else { return };
    let p = patient(h, pid, t);
    t.resources.push(Resource::Patient(p));
    for (i, al1) in h.msg.segments("AL1").enumerate() {
        if let Some(a) = allergy(h, al1, i, t) {
            t.resources.push(Resource::AllergyIntolerance(a));
        }
    }
    for in1 in h.msg.segments("IN1") {
        if let Some(c) = coverage(h, in1, t) {
            t.resources.push(Resource::Coverage(c));
        }
    }
    for obx in h.msg.segments("OBX") {
        if let Some(o) = body_observation(h, obx, t) {
            t.resources.push(Resource::Observation(o));
        }
    }
}

fn patient(h: &Helper<'_>, pid: &kakehashi_adapters::hl7v2::Segment, t: &mut Translation) -> Patient {
    let m = h.msg;
    let mut p = Patient {
        id: Some(h.patient_id()),
        identifier: vec![Identifier {
            system: Some(codes::patient_id_system(&h.ctx.owner)),
            value: Some(h.pid.to_string()),
            ..Default::default()
        }],
        ..Default::default()
    };
    for rep in m.repetitions(pid.field(5)) {
        let family = m.component(rep, 1).trim().to_string();
        let given = m.component(rep, 2).trim().to_string();
        if family.is_empty() && given.is_empty() {
            continue;
        }
        let repr = match m.component(rep, 8).trim() {
            "I" => Some("IDE"),
            "P" => Some("SYL"),
            "A" => Some("ABC"),
            "" => None,
            other => {
                t.warn(at(pid, 5), format!("name representation `{other}` is unknown"));
                None
            }
        };
        p.name.push(HumanName {
            extension: repr.map(codes::name_representation).into_iter().collect(),
            use_: Some("official".into()),
            text: Some(format!("{family} {given}").trim().to_string()),
            family: (!family.is_empty()).then_some(family),
            given: (!given.is_empty()).then_some(given).into_iter().collect(),
            ..Default::default()
        });
    }
    let birth = pid.field(7).trim();
    if !birth.is_empty() {
        match crate::datetime::date(birth) {
            Ok(d) => p.birth_date = Some(d),
            Err(e) => t.warn(at(pid, 7), e.to_string()),
        }
    }
    p.gender = match pid.field(8).trim() {
        "M" => Some("male".into()),
        "F" => Some("female".into()),
        "O" => Some("other".into()),
        "U" | "A" | "N" => Some("unknown".into()),
        "" => None,
        other => {
            t.warn(at(pid, 8), format!("administrative sex `{other}` is unknown"));
            Some("unknown".into())
        }
    };
    for rep in m.repetitions(pid.field(11)) {
        let c = |n| m.component(rep, n).trim().to_string();
        let text = c(8);
        let mut lines: Vec<String> = [c(1), c(2)].into_iter().filter(|s| !s.is_empty()).collect();
        if lines.is_empty() && text.is_empty() && c(5).is_empty() {
            continue;
        }
        lines.retain(|l| !l.is_empty());
        p.address.push(Address {
            use_: match c(7).as_str() {
                "H" => Some("home".into()),
                "B" | "O" => Some("work".into()),
                _ => None,
            },
            text: (!text.is_empty()).then_some(text),
            line: lines,
            city: Some(c(3)).filter(|s| !s.is_empty()),
            state: Some(c(4)).filter(|s| !s.is_empty()),
            postal_code: Some(c(5)).filter(|s| !s.is_empty()),
            country: Some(c(6)).filter(|s| !s.is_empty()),
            ..Default::default()
        });
    }
    for (field, default_use) in [(13, "home"), (14, "work")] {
        for rep in m.repetitions(pid.field(field)) {
            let value = [m.component(rep, 12), m.component(rep, 1), m.component(rep, 4)]
                .into_iter()
                .map(|v| v.trim().to_string())
                .find(|v| !v.is_empty());
            let Some(value) = value else { continue };
            let system = match m.component(rep, 3).trim() {
                "FX" => "fax",
                "Internet" | "X.400" => "email",
                "BP" => "pager",
                _ => "phone",
            };
            let use_ = match m.component(rep, 2).trim() {
                "PRN" => "home",
                "WPN" => "work",
                "EMR" => "temp",
                "ORN" | "VHN" => "home",
                _ => default_use,
            };
            p.telecom.push(ContactPoint {
                system: Some(system.into()),
                value: Some(value),
                use_: Some(use_.into()),
                rank: None,
            });
        }
    }
    p
}

fn allergy(
    h: &Helper<'_>,
    al1: &kakehashi_adapters::hl7v2::Segment,
    _index: usize,
    t: &mut Translation,
) -> Option<AllergyIntolerance> {
    let m = h.msg;
    let raw_code = m.repetitions(al1.field(3)).next().unwrap_or("");
    let code = h.concept(raw_code, &at(al1, 3), t);
    let Some(code) = code else {
        t.warn(at(al1, 3), "allergen is empty; allergy not mapped");
        return None;
    };
    let key = format!(
        "{}:AL1:{}",
        h.pid,
        code.coding.first().and_then(|c| c.code.clone()).or(code.text.clone()).unwrap_or_default()
    );
    let category = match h.comp(al1, 2, 1).as_str() {
        "DA" | "MA" => Some("medication"),
        "FA" => Some("food"),
        "EA" | "PA" | "AA" | "LA" => Some("environment"),
        _ => None,
    };
    let criticality = match h.comp(al1, 4, 1).as_str() {
        "SV" => Some("high"),
        "MO" | "MI" => Some("low"),
        _ => None,
    };
    let reaction: Vec<AllergyReaction> = m
        .repetitions(al1.field(5))
        .map(|r| m.unescape(r).trim().to_string())
        .filter(|r| !r.is_empty())
        .map(|r| AllergyReaction { manifestation: vec![CodeableConcept::text(r)], ..Default::default() })
        .collect();
    Some(AllergyIntolerance {
        id: Some(h.ctx.id_for("AllergyIntolerance", &key)),
        clinical_status: Some(CodeableConcept::coding(Coding::new(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            "active",
        ))),
        verification_status: Some(CodeableConcept::coding(Coding::new(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "confirmed",
        ))),
        type_: Some("allergy".into()),
        category: category.map(String::from).into_iter().collect(),
        criticality: criticality.map(String::from),
        code: Some(code),
        patient: h.patient_ref(),
        onset_date_time: h.date_time(al1.field(6), &at(al1, 6), t),
        reaction,
        ..Default::default()
    })
}

const JP_COVERAGE_EXT: &str = "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPerson";

fn coverage(h: &Helper<'_>, in1: &kakehashi_adapters::hl7v2::Segment, t: &mut Translation) -> Option<Coverage> {
    let m = h.msg;
    let insurer = ascii_fold(&m.unescape(in1.field(3)));
    if insurer.is_empty() {
        t.warn(at(in1, 3), "insurer number (保険者番号) is empty; coverage not mapped");
        return None;
    }
    if !insurer.bytes().all(|b| b.is_ascii_digit()) || !matches!(insurer.len(), 6 | 8) {
        t.warn(at(in1, 3), format!("insurer number `{insurer}` is not 6 or 8 digits"));
    }
    // SS-MIX2: 記号 in IN1-10, 番号 in IN1-11 (as written on the card, full-width allowed).
    let symbol = m.unescape(in1.field(10)).trim().to_string();
    let number = m.unescape(in1.field(11)).trim().to_string();
    let mut ext = Vec::new();
    for (suffix, v) in [("Symbol", &symbol), ("Number", &number)] {
        if !v.is_empty() {
            ext.push(Extension {
                url: format!("{JP_COVERAGE_EXT}{suffix}"),
                value_string: Some(v.clone()),
                ..Default::default()
            });
        }
    }
    let member_id = format!("{insurer}:{}:{}", ascii_fold(&symbol), ascii_fold(&number));
    let start = h.date_time(in1.field(12), &at(in1, 12), t);
    let end = h.date_time(in1.field(13), &at(in1, 13), t);
    let relationship = match h.comp(in1, 17, 1).as_str() {
        "SEL" => Some(("self", "本人")),
        "SPO" => Some(("spouse", "配偶者")),
        "CHD" => Some(("child", "子")),
        "" => None,
        _ => Some(("other", "家族")),
    };
    Some(Coverage {
        id: Some(h.ctx.id_for("Coverage", &format!("{}:IN1:{member_id}:{}", h.pid, in1.field(1).trim()))),
        extension: ext,
        identifier: (!symbol.is_empty() || !number.is_empty())
            .then(|| Identifier {
                system: Some(codes::INSURANCE_MEMBER_ID.into()),
                value: Some(member_id),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        status: "active".into(),
        type_: h.concept(m.repetitions(in1.field(2)).next().unwrap_or(""), &at(in1, 2), t),
        subscriber_id: (!number.is_empty()).then(|| ascii_fold(&number)),
        beneficiary: h.patient_ref(),
        relationship: relationship.map(|(c, d)| {
            CodeableConcept::coding(
                Coding::new("http://terminology.hl7.org/CodeSystem/subscriber-relationship", c).with_display(d),
            )
        }),
        period: (start.is_some() || end.is_some()).then_some(Period { start, end }),
        payor: vec![Reference {
            identifier: Some(Identifier {
                system: Some(codes::INSURER_NUMBER.into()),
                value: Some(insurer),
                ..Default::default()
            }),
            type_: Some("Organization".into()),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// OBX in ADT carries body height, body weight and blood type (JLAC10 codes).
fn body_observation(
    h: &Helper<'_>,
    obx: &kakehashi_adapters::hl7v2::Segment,
    t: &mut Translation,
) -> Option<Observation> {
    let code_raw = obx.field(3);
    let jlac = h.msg.component(code_raw, 1).trim().to_string();
    let (loinc, display) = match jlac.as_str() {
        "9N001000000000001" => ("8302-2", "Body height"),
        "9N006000000000001" => ("29463-7", "Body weight"),
        "5H010000009199911" => ("883-9", "ABO group [Type] in Blood"),
        _ => {
            t.warn(at(obx, 3), format!("ADT observation `{jlac}` is not height, weight or blood type; not mapped"));
            return None;
        }
    };
    let mut o = super::lab::observation(h, obx, &format!("{}:ADT-OBX:{jlac}", h.pid), t)?;
    o.code.coding.push(Coding::new("http://loinc.org", loinc).with_display(display));
    let category = if loinc == "883-9" { "laboratory" } else { "vital-signs" };
    o.category = vec![CodeableConcept::coding(Coding::new(
        "http://terminology.hl7.org/CodeSystem/observation-category",
        category,
    ))];
    Some(o)
}
