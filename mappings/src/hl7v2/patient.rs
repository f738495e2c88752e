//! The patient (PID, with NK1 contacts and MRG merges), allergies (AL1), insurance
//! (IN1) and, in ADT, the height, weight and blood-type Observations carried in OBX.

use super::{ascii_fold, at, At, Helper};
use crate::codes;
use crate::Translation;
use kakehashi_adapters::hl7v2::datatypes::*;
use kakehashi_adapters::hl7v2::Segment;
use kakehashi_fhir::*;

/// ADT: what only ADT carries (body measurements in OBX); the patient and the rest
/// are mapped for every message by `common`.
pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    for obx in h.msg.segments("OBX") {
        if let Some(o) = body_observation(h, obx, t) {
            t.resources.push(Resource::Observation(o));
        }
    }
}

/// A name (XPN) as a HumanName.
pub(super) fn human_name(x: &Xpn, where_: &dyn std::fmt::Display, t: &mut Translation) -> Option<HumanName> {
    if x.is_empty() {
        return None;
    }
    let repr = match x.representation.as_deref() {
        Some("I") => Some("IDE"),
        Some("P") => Some("SYL"),
        Some("A") => Some("ABC"),
        None => None,
        Some(other) => {
            t.warn(where_.to_string(), format!("name representation `{other}` is unknown"));
            None
        }
    };
    // Table 0200 name types.
    let use_ = match x.name_type.as_deref() {
        Some("L") | None => "official",
        Some("D") => "usual",
        Some("M") | Some("B") => "maiden",
        Some("N") | Some("A") => "nickname",
        Some("S") | Some("P") => "anonymous",
        Some("T") | Some("C") => "temp",
        Some("U") => "usual",
        Some(other) => {
            t.warn(where_.to_string(), format!("name type `{other}` is unknown; kept as official"));
            "official"
        }
    };
    // Japanese names are written family first; others given first.
    let text = match repr {
        Some(_) => [x.family.clone().unwrap_or_default(), x.given.join(" ")].join(" "),
        None => x.given.iter().cloned().chain(x.family.clone()).collect::<Vec<_>>().join(" "),
    };
    Some(HumanName {
        extension: repr.map(codes::name_representation).into_iter().collect(),
        use_: Some(use_.into()),
        text: Some(text.trim().to_string()).filter(|s| !s.is_empty()),
        family: x.family.clone(),
        given: x.given.clone(),
        prefix: x.prefix.clone().into_iter().collect(),
        suffix: x.suffix.clone(),
        period: period(h_date(&x.valid.0), h_date(&x.valid.1)),
    })
}

/// A v2 date (YYYYMMDD…) as a FHIR date/time, or None when it does not parse.
fn h_date(v: &Option<String>) -> Option<String> {
    v.as_deref().and_then(|v| crate::datetime::date_time(v).ok())
}

fn period(start: Option<String>, end: Option<String>) -> Option<Period> {
    (start.is_some() || end.is_some()).then_some(Period { start, end })
}

/// An address (XAD) as an Address.
pub(super) fn address(x: &Xad) -> Option<Address> {
    if x.is_empty() {
        return None;
    }
    Some(Address {
        use_: match x.kind.as_deref() {
            Some("H") | Some("P") => Some("home".into()),
            Some("B") | Some("O") => Some("work".into()),
            Some("C") => Some("temp".into()),
            Some("BA") => Some("old".into()),
            _ => None,
        },
        type_: match x.kind.as_deref() {
            Some("M") => Some("postal".into()),
            _ => None,
        },
        text: x.text.clone(),
        line: x.lines.clone(),
        city: x.city.clone(),
        district: x.district.clone(),
        state: x.state.clone(),
        postal_code: x.postal_code.clone(),
        country: x.country.clone(),
    })
}

/// A telecom (XTN) as a ContactPoint; `default_use` for a number without a use code.
pub(super) fn contact_point(x: &Xtn, default_use: &str) -> Option<ContactPoint> {
    let value = x.value.clone()?;
    let system = match x.equipment.as_deref() {
        Some("FX") => "fax",
        Some("Internet") | Some("X.400") => "email",
        Some("BP") => "pager",
        _ if x.use_code.as_deref() == Some("NET") => "email",
        _ => "phone",
    };
    let use_ = match (x.use_code.as_deref(), x.equipment.as_deref()) {
        (_, Some("CP")) => "mobile",
        (Some("PRN") | Some("ORN") | Some("VHN"), _) => "home",
        (Some("WPN"), _) => "work",
        (Some("EMR"), _) => "temp",
        _ => default_use,
    };
    Some(ContactPoint { system: Some(system.into()), value: Some(value), use_: Some(use_.into()), rank: None })
}

/// The patient of the message: PID, with NK1 contacts and MRG merge links.
pub(super) fn patient(h: &Helper<'_>, pid: &Segment, t: &mut Translation) -> Vec<Patient> {
    let mut p = Patient { id: Some(h.patient_id()), identifier: identifiers(h, pid, t), ..Default::default() };
    for rep in h.reps(pid, 5).collect::<Vec<_>>() {
        if let Some(n) = human_name(&Xpn::parse(&rep), &At(pid, 5), t) {
            p.name.push(n);
        }
    }
    let birth = h.value(pid, 7);
    if !birth.is_empty() {
        match crate::datetime::date(&birth) {
            Ok(d) => p.birth_date = Some(d),
            Err(e) => t.warn(at(pid, 7), e.to_string()),
        }
    }
    p.gender = match h.value(pid, 8).as_str() {
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
    for rep in h.reps(pid, 11) {
        if let Some(a) = address(&Xad::parse(&rep)) {
            p.address.push(a);
        }
    }
    for (field, default_use) in [(13, "home"), (14, "work")] {
        for rep in h.reps(pid, field) {
            if let Some(c) = contact_point(&Xtn::parse(&rep), default_use) {
                p.telecom.push(c);
            }
        }
    }
    // Table 0002 codes are the v3 MaritalStatus codes FHIR binds (see the table file).
    p.marital_status = h.coded_in(pid, 16, "HL70002", t);
    let language = h.coded(pid, 15, t);
    if let Some(l) = language {
        p.communication.push(PatientCommunication { language: l, preferred: Some(true) });
    }
    let death = h.when(pid, 29, t);
    match (death, h.value(pid, 30).as_str()) {
        (Some(d), _) => p.deceased_date_time = Some(d),
        (None, "Y") => p.deceased_boolean = Some(true),
        (None, "N") => p.deceased_boolean = Some(false),
        _ => {}
    }
    for nk1 in h.msg.segments("NK1") {
        if let Some(c) = contact(h, nk1, t) {
            p.contact.push(c);
        }
    }
    let mut out = Vec::new();
    for mrg in h.msg.segments("MRG") {
        // The message's patient survives; the one named in MRG-1 is merged into it.
        for rep in h.reps(mrg, 1).collect::<Vec<_>>() {
            let cx = Cx::parse(&rep);
            let Some(old) = cx.id.clone() else { continue };
            let system = cx.authority.uri().unwrap_or_else(|| codes::patient_id_system(&h.ctx.owner));
            let old_id = h.ctx.id_for("Patient", &old);
            p.link.push(PatientLink {
                other: Reference {
                    reference: Some(format!("Patient/{old_id}")),
                    identifier: Some(Identifier {
                        system: Some(system.clone()),
                        value: Some(old.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                type_: "replaces".into(),
            });
            out.push(Patient {
                id: Some(old_id),
                identifier: vec![Identifier { system: Some(system), value: Some(old), ..Default::default() }],
                active: Some(false),
                link: vec![PatientLink { other: h.patient_ref(), type_: "replaced-by".into() }],
                ..Default::default()
            });
        }
        if mrg.field(1).trim().is_empty() {
            t.warn(at(mrg, 1), "merge without a prior patient identifier (MRG-1); not mapped");
        }
    }
    out.insert(0, p);
    out
}

/// Every PID-3 identifier: the site's patient id under the owner's JP Core system
/// (the first, which links the records), the others under their assigning authority.
fn identifiers(h: &Helper<'_>, pid: &Segment, t: &mut Translation) -> Vec<Identifier> {
    let mut out = vec![Identifier {
        system: Some(codes::patient_id_system(&h.ctx.owner)),
        value: Some(h.pid.to_string()),
        ..Default::default()
    }];
    for (i, rep) in h.reps(pid, 3).collect::<Vec<_>>().iter().enumerate() {
        let cx = Cx::parse(rep);
        let Some(id) = cx.id.clone() else { continue };
        if i == 0 {
            // Already the first identifier; its type is kept when given.
            out[0].type_ = cx.id_type.as_deref().map(id_type);
            continue;
        }
        let system = cx.authority.uri().or_else(|| cx.facility.uri()).unwrap_or_else(|| {
            let name = cx.authority.name().or(cx.id_type.as_deref()).unwrap_or("patient-id");
            codes::local_system(&h.ctx.owner, name)
        });
        if cx.authority.uri().is_none() && cx.authority.name().is_none() {
            t.warn(at(pid, 3), format!("identifier `{id}` names no assigning authority; kept as local"));
        }
        out.push(Identifier {
            type_: cx.id_type.as_deref().map(id_type),
            system: Some(system),
            value: Some(id),
            period: period(h_date(&cx.valid.0), h_date(&cx.valid.1)),
            ..Default::default()
        });
    }
    out
}

/// An identifier type code of table 0203 as FHIR's v2-0203 CodeableConcept.
fn id_type(code: &str) -> CodeableConcept {
    CodeableConcept::coding(Coding::new("http://terminology.hl7.org/CodeSystem/v2-0203", code))
}

/// NK1: a contact of the patient.
fn contact(h: &Helper<'_>, nk1: &Segment, t: &mut Translation) -> Option<PatientContact> {
    let names: Vec<_> = h.reps(nk1, 2).collect();
    let mut c = PatientContact {
        name: names.iter().find_map(|r| human_name(&Xpn::parse(r), &At(nk1, 2), t)),
        ..Default::default()
    };
    if let Some(rel) = h.coded_in(nk1, 3, "HL70063", t) {
        c.relationship.push(rel);
    }
    if let Some(role) = h.coded_in(nk1, 7, "HL70131", t) {
        c.relationship.push(role);
    }
    c.address = h.reps(nk1, 4).find_map(|r| address(&Xad::parse(&r)));
    for (f, u) in [(5, "home"), (6, "work")] {
        for r in h.reps(nk1, f) {
            if let Some(cp) = contact_point(&Xtn::parse(&r), u) {
                c.telecom.push(cp);
            }
        }
    }
    c.period = period(h.when(nk1, 8, t), h.when(nk1, 9, t));
    c.organization = h.organization(nk1, 13);
    c.gender = match h.value(nk1, 15).as_str() {
        "M" => Some("male".into()),
        "F" => Some("female".into()),
        "O" => Some("other".into()),
        "U" => Some("unknown".into()),
        _ => None,
    };
    if c.name.is_none() && c.organization.is_none() && c.telecom.is_empty() && c.address.is_none() {
        t.warn(at(nk1, 2), "next of kin without a name, organisation, address or telecom; not mapped");
        return None;
    }
    Some(c)
}

/// AL1: an allergy.
pub(super) fn allergy(h: &Helper<'_>, al1: &Segment, t: &mut Translation) -> Option<AllergyIntolerance> {
    let Some(code) = h.coded(al1, 3, t) else {
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
    let reaction: Vec<AllergyReaction> = h
        .reps(al1, 5)
        .map(|r| r.get(1))
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
        onset_date_time: h.when(al1, 6, t),
        reaction,
        ..Default::default()
    })
}

const JP_COVERAGE_EXT: &str = "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPerson";

/// IN1: insurance. Japanese messages carry 保険者番号 (IN1-3), 記号 (IN1-10) and 番号
/// (IN1-11) as JP Core expects; other messages are read by the HL7 v2 definitions
/// (IN1-3 insurance company id, IN1-36 policy number, IN1-49 insured's id).
pub(super) fn coverage(h: &Helper<'_>, in1: &Segment, t: &mut Translation) -> Option<Coverage> {
    if h.japanese {
        return japanese_coverage(h, in1, t);
    }
    let company = Cx::parse(&h.first(in1, 3));
    let name = h.value(in1, 4);
    let policy = h.value(in1, 36);
    let insured = Cx::parse(&h.first(in1, 49));
    let group = h.value(in1, 8);
    if company.id.is_none() && name.is_empty() {
        t.warn(at(in1, 3), "insurance company is empty (IN1-3, IN1-4); coverage not mapped");
        return None;
    }
    let payor = Reference {
        identifier: company.id.clone().map(|id| Identifier {
            system: Some(company.authority.uri().unwrap_or_else(|| codes::local_system(&h.ctx.owner, "insurer"))),
            value: Some(id),
            ..Default::default()
        }),
        display: Some(name).filter(|s| !s.is_empty()),
        type_: Some("Organization".into()),
        ..Default::default()
    };
    let member = insured.id.clone().or_else(|| Some(policy.clone()).filter(|s| !s.is_empty()));
    let relationship = subscriber_relationship(&h.comp(in1, 17, 1));
    let key = format!("{}:IN1:{}:{}:{}", h.pid, company.id.clone().unwrap_or_default(), policy, h.value(in1, 1));
    Some(Coverage {
        id: Some(h.ctx.id_for("Coverage", &key)),
        identifier: Some(policy.clone())
            .filter(|s| !s.is_empty())
            .map(|p| Identifier {
                system: Some(codes::local_system(&h.ctx.owner, "policy-number")),
                value: Some(p),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        status: "active".into(),
        type_: h.coded_in(in1, 15, "HL70086", t),
        subscriber_id: member,
        beneficiary: h.patient_ref(),
        relationship,
        period: period(h.when(in1, 12, t), h.when(in1, 13, t)),
        payor: vec![payor],
        class_: Some(group)
            .filter(|g| !g.is_empty())
            .map(|g| CoverageClass {
                type_: CodeableConcept::coding(Coding::new(
                    "http://terminology.hl7.org/CodeSystem/coverage-class",
                    "group",
                )),
                value: g,
                name: Some(h.value(in1, 9)).filter(|s| !s.is_empty()),
            })
            .into_iter()
            .collect(),
        ..Default::default()
    })
}

fn subscriber_relationship(code: &str) -> Option<CodeableConcept> {
    let (c, d) = match code {
        "SEL" | "01" => ("self", "本人"),
        "SPO" | "02" => ("spouse", "配偶者"),
        "CHD" | "03" => ("child", "子"),
        "" => return None,
        _ => ("other", "家族"),
    };
    Some(CodeableConcept::coding(
        Coding::new("http://terminology.hl7.org/CodeSystem/subscriber-relationship", c).with_display(d),
    ))
}

fn japanese_coverage(h: &Helper<'_>, in1: &Segment, t: &mut Translation) -> Option<Coverage> {
    let insurer = ascii_fold(&h.value(in1, 3));
    if insurer.is_empty() {
        t.warn(at(in1, 3), "insurer number (保険者番号) is empty; coverage not mapped");
        return None;
    }
    if !insurer.bytes().all(|b| b.is_ascii_digit()) || !matches!(insurer.len(), 6 | 8) {
        t.warn(at(in1, 3), format!("insurer number `{insurer}` is not 6 or 8 digits"));
    }
    // SS-MIX2: 記号 in IN1-10, 番号 in IN1-11 (as written on the card, full-width allowed).
    let symbol = h.value(in1, 10);
    let number = h.value(in1, 11);
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
    Some(Coverage {
        id: Some(h.ctx.id_for("Coverage", &format!("{}:IN1:{member_id}:{}", h.pid, h.value(in1, 1)))),
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
        type_: h.coded(in1, 2, t),
        subscriber_id: (!number.is_empty()).then(|| ascii_fold(&number)),
        beneficiary: h.patient_ref(),
        relationship: subscriber_relationship(&h.comp(in1, 17, 1)),
        period: period(h.when(in1, 12, t), h.when(in1, 13, t)),
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

/// OBX in ADT carries body height, body weight and blood type (JLAC10 codes in
/// Japanese messages; LOINC elsewhere, mapped as vital signs or laboratory).
fn body_observation(h: &Helper<'_>, obx: &Segment, t: &mut Translation) -> Option<Observation> {
    let code = h.comp(obx, 3, 1);
    let (loinc, display) = match code.as_str() {
        "9N001000000000001" | "8302-2" => ("8302-2", "Body height"),
        "9N006000000000001" | "29463-7" => ("29463-7", "Body weight"),
        "5H010000009199911" | "883-9" => ("883-9", "ABO group [Type] in Blood"),
        _ => ("", ""),
    };
    let mut o = super::lab::observation(h, obx, &format!("{}:ADT-OBX:{code}", h.pid), t)?;
    if !loinc.is_empty() && !o.code.coding.iter().any(|c| c.code.as_deref() == Some(loinc)) {
        o.code.coding.push(Coding::new("http://loinc.org", loinc).with_display(display));
    }
    let category = if loinc.is_empty() || loinc == "883-9" { "laboratory" } else { "vital-signs" };
    let category = if loinc.is_empty() && o.code.coding.iter().any(|c| c.system.as_deref() == Some("http://loinc.org"))
    {
        // A generic feed's vital signs (heart rate …) are coded in LOINC.
        "vital-signs"
    } else {
        category
    };
    o.category = vec![CodeableConcept::coding(Coding::new(
        "http://terminology.hl7.org/CodeSystem/observation-category",
        category,
    ))];
    Some(o)
}
