//! MML (2.3 and 4.x) to FHIR R4 / JP Core. Every content module with a FHIR
//! counterpart is mapped; a module that is not becomes a warning, never a silent drop.
//! `docInfo` gives provenance (creator, facility, confirmation date) and its security
//! level becomes a confidentiality label.

use crate::codes;
use crate::document::narrative;
use crate::hl7v2::ascii_fold;
use crate::{Context, Translation};
use kakehashi_adapters::mml::model::{
    self as mml, ClinicalBase, DocInfo, Document, DocumentKind, HealthInsurance, Lifestyle, Medication, Module,
    ObservationContext, PatientInfo, TestResult, VitalSigns,
};
use kakehashi_adapters::mml::MmlDocument;
use kakehashi_fhir::*;

const YJ: &str = "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code";
const ICD10: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/ICD10-2013-full";
const JP_COVERAGE_EXT: &str = "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPerson";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// Translate one MML document.
pub fn translate(doc: &MmlDocument, ctx: &Context) -> Translation {
    let mut t = Translation::default();
    let header_patient = doc.header.as_ref().and_then(|h| h.master_id.clone());
    for (i, item) in doc.items.iter().enumerate() {
        let patient = header_patient.clone().or_else(|| {
            item.modules.iter().find_map(|m| match m {
                Module::Patient(p) => p.master_id.clone(),
                _ => None,
            })
        });
        let key = item.doc_info.uid.clone().unwrap_or_else(|| format!("{}#{i}", ctx.source_key));
        let m = Mapper { ctx, patient: patient.as_deref(), key: &key, info: &item.doc_info };
        let before = t.resources.len();
        for (j, module) in item.modules.iter().enumerate() {
            m.module(module, &format!("{j}"), &mut t);
        }
        if let Some(label) = confidentiality(item.doc_info.security.as_deref()) {
            for r in &mut t.resources[before..] {
                r.meta_mut().security.push(label.clone());
            }
        }
    }
    match &doc.shared_component {
        Some(name) => t.warn(
            name.as_str(),
            format!("{name} is an MML shared component, not a content module: nothing to map on its own"),
        ),
        None if doc.items.is_empty() => t.warn("MmlBody", "the document holds no module items"),
        None => {}
    }
    // An MML instance is one document: the records of its other module items (a
    // referral's diagnoses, prescriptions, allergies, results) belong to its
    // Composition, so a document read back and written again keeps them.
    link_to_composition(&mut t.resources);
    // Every subject resolves: a document that names its patient only in the header
    // (no PatientModule) still carries that Patient, known by its master id.
    if let Some(master) = &header_patient {
        let id = ctx.id_for("Patient", master);
        let has = t.resources.iter().any(|r| matches!(r, Resource::Patient(p) if p.id.as_deref() == Some(id.as_str())));
        // Every record made with a named patient refers to it.
        if !has && !t.resources.is_empty() {
            t.resources.push(Resource::Patient(Patient {
                id: Some(id),
                identifier: vec![Identifier {
                    system: Some(codes::patient_id_system(&ctx.owner)),
                    value: Some(master.clone()),
                    ..Default::default()
                }],
                ..Default::default()
            }));
        }
    }
    t.resources = t.resources.into_iter().map(|r| ctx.own(r)).collect();
    t
}

/// The records of a one-Composition instance not yet in a section, as entries of its
/// `含まれる記録` section.
fn link_to_composition(resources: &mut [Resource]) {
    let mut compositions = resources.iter().filter(|r| matches!(r, Resource::Composition(_)));
    if compositions.next().is_none() || compositions.next().is_some() {
        return;
    }
    let Some(Resource::Composition(c)) = resources.iter().find(|r| matches!(r, Resource::Composition(_))) else {
        return;
    };
    let listed: std::collections::HashSet<String> =
        c.section.iter().flat_map(|s| s.entry.iter()).filter_map(|r| r.reference.clone()).collect();
    let more: Vec<Reference> = resources
        .iter()
        .filter(|r| crate::export::is_structured_entry(r))
        .filter_map(|r| Some(format!("{}/{}", r.type_name(), r.id()?)))
        .filter(|r| !listed.contains(r))
        .map(|r| Reference { reference: Some(r), ..Default::default() })
        .collect();
    if more.is_empty() {
        return;
    }
    let Some(Resource::Composition(c)) = resources.iter_mut().find(|r| matches!(r, Resource::Composition(_))) else {
        return;
    };
    match c.section.iter_mut().find(|s| s.title.as_deref() == Some(INCLUDED)) {
        Some(s) => {
            s.entry.extend(more);
            s.text = Some(narrative(&format!("{} records", s.entry.len())));
        }
        None => c.section.push(CompositionSection {
            title: Some(INCLUDED.into()),
            text: Some(narrative(&format!("{} records", more.len()))),
            entry: more,
            ..Default::default()
        }),
    }
}

/// The section listing a document's structured records.
const INCLUDED: &str = "含まれる記録";

/// docInfo security level → v3 confidentiality.
fn confidentiality(permit: Option<&str>) -> Option<Coding> {
    let code = match permit? {
        "all" | "read" | "write" | "delete" => "N",
        "none" => "R",
        _ => return None,
    };
    Some(Coding::new("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", code))
}

struct Mapper<'a> {
    ctx: &'a Context,
    patient: Option<&'a str>,
    key: &'a str,
    info: &'a DocInfo,
}

/// MML dates are `YYYY-MM-DD` or `YYYY-MM-DDThh:mm:ss` (local time, JST).
fn fhir_date(v: Option<&str>, t: &mut Translation, at: &str) -> Option<String> {
    let v = v?.trim();
    let compact: String = v.chars().filter(|c| c.is_ascii_digit()).collect();
    let ok = match v.len() {
        10 => crate::datetime::date(&compact).ok(),
        19 if v.as_bytes()[10] == b'T' => crate::datetime::date_time(&compact).ok(),
        _ => None,
    };
    if ok.is_none() {
        t.warn(at, format!("`{v}` is not an MML date (YYYY-MM-DD[Thh:mm:ss]); left out"));
    }
    ok
}

fn number(v: Option<&str>) -> Option<f64> {
    v.and_then(|v| ascii_fold(v).parse::<f64>().ok()).filter(|n| n.is_finite())
}

impl Mapper<'_> {
    fn id(&self, ty: &str, part: &str) -> Option<String> {
        Some(self.ctx.id_for(ty, &format!("{}:{}:{part}", self.patient.unwrap_or("-"), self.key)))
    }

    fn subject(&self, t: &mut Translation) -> Reference {
        match self.patient {
            Some(p) => Reference {
                reference: Some(format!("Patient/{}", self.ctx.id_for("Patient", p))),
                ..Default::default()
            },
            None => {
                if !t.warnings.iter().any(|w| w.location == "MmlHeader/masterId") {
                    t.warn(
                        "MmlHeader/masterId",
                        "the document names no patient; records refer to an unidentified patient",
                    );
                }
                Reference { display: Some("患者不明 (the document names no patient)".into()), ..Default::default() }
            }
        }
    }

    fn author(&self) -> Option<Reference> {
        let c = self.info.creator.as_ref()?;
        let display = match (&c.name, &c.facility_name) {
            (Some(n), Some(f)) => format!("{n} ({f})"),
            (Some(n), None) => n.clone(),
            (None, Some(f)) => f.clone(),
            (None, None) => return None,
        };
        Some(Reference {
            display: Some(display),
            type_: Some(if c.name.is_some() { "Practitioner" } else { "Organization" }.into()),
            ..Default::default()
        })
    }

    /// JP-CLINS section 910: the receiving institution as an Organization entry.
    fn to_section(
        &self,
        name: Option<String>,
        code: Option<&str>,
        text: &str,
        part: &str,
        t: &mut Translation,
    ) -> CompositionSection {
        let org = Organization {
            id: self.id("Organization", &format!("{part}.to")),
            identifier: institution_identifier(code).into_iter().collect(),
            name,
            ..Default::default()
        };
        let entry = Reference {
            reference: Some(format!("Organization/{}", org.id.clone().unwrap_or_default())),
            ..Default::default()
        };
        push(Resource::Organization(org), t);
        CompositionSection {
            title: Some("紹介先情報".into()),
            code: Some(CodeableConcept::coding(
                Coding::new(crate::document::SECTION_SYSTEM, crate::document::RECIPIENT_SECTION)
                    .with_display("紹介先情報"),
            )),
            text: Some(narrative(text)),
            entry: vec![entry],
            ..Default::default()
        }
    }

    /// A `【紹介先情報】` block (`name (institution code)` first) as section 910, when its
    /// first line names an institution code.
    fn recipient_section(&self, body: &str, part: &str, t: &mut Translation) -> Option<CompositionSection> {
        let first = body.lines().next()?.trim();
        let (name, rest) = first.rsplit_once(" (")?;
        let code = rest.strip_suffix(')')?;
        institution_identifier(Some(code))?;
        Some(self.to_section(Some(name.to_string()), Some(code), body, part, t))
    }

    /// The document's creator as resources: the author references (Practitioner, then
    /// Organization) and the custodian (the creator's facility when it has an
    /// institution code, else the owner).
    fn creator_resources(&self, part: &str, t: &mut Translation) -> (Vec<Reference>, Reference) {
        let Some(c) = self.info.creator.as_ref() else {
            let owner = self.ctx.owner_ref();
            return (vec![owner.clone()], owner);
        };
        let mut authors = Vec::new();
        if let Some(name) = &c.name {
            // The creator's id is the person's own unless it is the facility's code.
            let person = c.person_id.as_ref().filter(|p| Some(*p) != c.facility_id.as_ref());
            let p = Practitioner {
                id: self.id("Practitioner", &format!("{part}.creator")),
                identifier: person
                    .map(|v| Identifier {
                        system: Some(codes::local_system(&self.ctx.owner, "mml-creator")),
                        value: Some(v.clone()),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                name: vec![HumanName { text: Some(name.clone()), ..Default::default() }],
                ..Default::default()
            };
            authors.push(Reference {
                reference: Some(format!("Practitioner/{}", p.id.clone().unwrap_or_default())),
                ..Default::default()
            });
            push(Resource::Practitioner(p), t);
        }
        let institution = institution_identifier(c.facility_id.as_deref());
        let mut custodian = self.ctx.owner_ref();
        if c.facility_name.is_some() || institution.is_some() {
            let o = Organization {
                id: self.id("Organization", &format!("{part}.creator")),
                identifier: institution.clone().into_iter().collect(),
                name: c.facility_name.clone(),
                ..Default::default()
            };
            let r = Reference {
                reference: Some(format!("Organization/{}", o.id.clone().unwrap_or_default())),
                ..Default::default()
            };
            if institution.is_some() {
                custodian = r.clone();
            }
            authors.push(r);
            push(Resource::Organization(o), t);
        }
        if authors.is_empty() {
            authors.push(self.ctx.owner_ref());
        }
        (authors, custodian)
    }

    fn module(&self, m: &Module, part: &str, t: &mut Translation) -> Vec<Reference> {
        let start = t.resources.len();
        match m {
            Module::Patient(p) => self.patient_info(p, part, t),
            Module::Insurance(h) => self.insurance(h, part, t),
            Module::Diagnosis(d) => self.diagnosis(d, part, t),
            Module::Prescription(meds) => self.medications(meds, part, false, t),
            Module::Injection(meds) => self.medications(meds, part, true, t),
            Module::Test(r) => self.test(r, part, t),
            Module::Vitals(v) => self.vitals(v, &v.context, part, t),
            Module::FlowSheet(f) => self.flow_sheet(f, part, t),
            Module::Base(b) => self.base(b, part, t),
            Module::Lifestyle(l) => self.lifestyle(l, part, t),
            Module::Document(d) => self.document(d, part, t),
            Module::Unmapped { name, line } => {
                t.warn(format!("line {line}"), format!("MML module {name} is not mapped to FHIR"))
            }
        }
        t.resources[start..]
            .iter()
            .filter_map(|r| {
                Some(Reference { reference: Some(format!("{}/{}", r.type_name(), r.id()?)), ..Default::default() })
            })
            .collect()
    }

    fn patient_info(&self, p: &PatientInfo, _part: &str, t: &mut Translation) {
        let Some(master) = p.master_id.as_deref().or(self.patient) else {
            t.warn("PatientModule/uniqueInfo/masterId", "patient without a master id; not mapped");
            return;
        };
        let mut out = Patient {
            id: Some(self.ctx.id_for("Patient", master)),
            identifier: vec![Identifier {
                system: Some(codes::patient_id_system(&self.ctx.owner)),
                value: Some(master.to_string()),
                ..Default::default()
            }],
            birth_date: fhir_date(p.birthday.as_deref(), t, "PatientModule/birthday"),
            gender: p.sex.as_deref().map(|s| {
                match s {
                    "male" | "M" => "male",
                    "female" | "F" => "female",
                    "other" | "O" => "other",
                    _ => "unknown",
                }
                .to_string()
            }),
            ..Default::default()
        };
        for (ty, id) in &p.other_ids {
            out.identifier.push(Identifier {
                system: Some(codes::local_system(&self.ctx.owner, &format!("mml-{ty}"))),
                value: Some(id.clone()),
                ..Default::default()
            });
        }
        for n in &p.names {
            let repr = match n.rep_code.as_deref() {
                Some("I") => Some("IDE"),
                Some("P") => Some("SYL"),
                Some("A") => Some("ABC"),
                _ => None,
            };
            let text = n.full.clone().or_else(|| {
                Some(
                    format!("{} {}", n.family.clone().unwrap_or_default(), n.given.clone().unwrap_or_default())
                        .trim()
                        .to_string(),
                )
            });
            out.name.push(HumanName {
                extension: repr.map(codes::name_representation).into_iter().collect(),
                use_: Some("official".into()),
                text: text.filter(|s| !s.is_empty()),
                family: n.family.clone(),
                given: n.given.clone().into_iter().collect(),
                ..Default::default()
            });
        }
        for a in &p.addresses {
            out.address.push(kakehashi_fhir::Address {
                use_: match a.class.as_deref() {
                    Some("home") => Some("home".into()),
                    Some("business") => Some("work".into()),
                    _ => None,
                },
                // A Japanese address is written whole, prefecture first and without
                // spaces; other addresses keep their parts as lines.
                text: a.full.clone().or_else(|| {
                    let parts: Vec<&str> =
                        [&a.prefecture, &a.city, &a.town, &a.home_number].iter().filter_map(|x| x.as_deref()).collect();
                    let japanese = parts.iter().any(|p| !p.is_ascii());
                    (japanese && !parts.is_empty()).then(|| parts.concat())
                }),
                line: [&a.town, &a.home_number].iter().filter_map(|x| (*x).clone()).collect(),
                city: a.city.clone(),
                state: a.prefecture.clone(),
                postal_code: a.zip.clone(),
                country: a.country.clone(),
                ..Default::default()
            });
        }
        for ph in &p.phones {
            out.telecom.push(ContactPoint {
                system: Some(if ph.equip.as_deref() == Some("FX") { "fax" } else { "phone" }.into()),
                value: Some(ph.number.clone()),
                use_: None,
                rank: None,
            });
        }
        for e in &p.emails {
            out.telecom.push(ContactPoint {
                system: Some("email".into()),
                value: Some(e.clone()),
                use_: None,
                rank: None,
            });
        }
        match p.death.as_deref() {
            Some("true") => out.deceased_boolean = Some(true),
            Some(d) => out.deceased_date_time = fhir_date(Some(d), t, "PatientModule/death"),
            None => {}
        }
        push(Resource::Patient(out), t);
    }

    fn insurance(&self, h: &HealthInsurance, part: &str, t: &mut Translation) {
        let insurer = h.insurer.as_deref().map(ascii_fold);
        let mut ext = Vec::new();
        for (suffix, v) in [("Symbol", &h.group), ("Number", &h.number)] {
            if let Some(v) = v {
                ext.push(Extension {
                    url: format!("{JP_COVERAGE_EXT}{suffix}"),
                    value_string: Some(v.clone()),
                    ..Default::default()
                });
            }
        }
        let member = (h.group.is_some() || h.number.is_some()).then(|| {
            format!(
                "{}:{}:{}",
                insurer.clone().unwrap_or_default(),
                ascii_fold(h.group.as_deref().unwrap_or("")),
                ascii_fold(h.number.as_deref().unwrap_or(""))
            )
        });
        let subject = self.subject(t);
        let start = fhir_date(h.start.as_deref(), t, "HealthInsuranceModule/startDate");
        let end = fhir_date(h.expired.as_deref(), t, "HealthInsuranceModule/expiredDate");
        push(
            Resource::Coverage(Coverage {
                id: self.id("Coverage", part),
                extension: ext,
                identifier: member
                    .map(|m| Identifier {
                        system: Some(codes::INSURANCE_MEMBER_ID.into()),
                        value: Some(m),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                status: "active".into(),
                type_: h.class_name.as_ref().map(|n| {
                    let mut cc = CodeableConcept::text(n.clone());
                    if let Some(c) = &h.class_code {
                        cc.coding.push(
                            Coding::new(codes::local_system(&self.ctx.owner, "MMC0002"), c.clone())
                                .with_display(n.clone()),
                        );
                    }
                    cc
                }),
                subscriber_id: h.number.as_deref().map(ascii_fold),
                beneficiary: subject.clone(),
                relationship: h.family.map(|f| {
                    CodeableConcept::coding(
                        Coding::new(
                            "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                            if f { "other" } else { "self" },
                        )
                        .with_display(if f { "家族" } else { "本人" }),
                    )
                }),
                period: (start.is_some() || end.is_some()).then_some(Period { start, end }),
                payor: vec![Reference {
                    identifier: insurer.map(|i| Identifier {
                        system: Some(codes::INSURER_NUMBER.into()),
                        value: Some(i),
                        ..Default::default()
                    }),
                    type_: Some("Organization".into()),
                    display: if h.insurer.is_none() { Some("保険者不明".into()) } else { None },
                    ..Default::default()
                }],
                ..Default::default()
            }),
            t,
        );
        for (i, p) in h.public.iter().enumerate() {
            let start = fhir_date(p.start.as_deref(), t, "publicInsuranceItem/startDate");
            let end = fhir_date(p.expired.as_deref(), t, "publicInsuranceItem/expiredDate");
            push(
                Resource::Coverage(Coverage {
                    id: self.id("Coverage", &format!("{part}.public{i}")),
                    status: "active".into(),
                    type_: Some(CodeableConcept::text(p.provider_name.clone().unwrap_or_else(|| "公費".into()))),
                    subscriber_id: p.recipient.clone(),
                    beneficiary: subject.clone(),
                    period: (start.is_some() || end.is_some()).then_some(Period { start, end }),
                    payor: vec![Reference {
                        identifier: p.provider.clone().map(|v| Identifier {
                            system: Some("urn:oid:1.2.392.100495.20.3.71".into()),
                            value: Some(v),
                            ..Default::default()
                        }),
                        display: p.provider_name.clone(),
                        type_: Some("Organization".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                t,
            );
        }
    }

    fn diagnosis(&self, d: &mml::Diagnosis, part: &str, t: &mut Translation) {
        let mut code = CodeableConcept { coding: vec![], text: d.name.clone() };
        if let Some(c) = &d.code {
            let system = match d.system.as_deref().map(|s| s.to_ascii_uppercase().replace(['-', ' '], "")) {
                Some(s) if s.starts_with("ICD10") => ICD10.to_string(),
                Some(s) if s.contains("MEDIS") || s == "MDCDX2" => {
                    "http://medis.or.jp/CodeSystem/master-disease-keyNumber".into()
                }
                Some(s) => {
                    t.warn(
                        "RegisteredDiagnosisModule/diagnosis/@system",
                        format!("code system `{s}` is unknown; kept as local"),
                    );
                    codes::local_system(&self.ctx.owner, &s)
                }
                None => codes::local_system(&self.ctx.owner, "diagnosis"),
            };
            let mut coding = Coding::new(system, c.clone());
            coding.display = d.name.clone();
            code.coding.push(coding);
        }
        if code.text.is_none() && code.coding.is_empty() {
            t.warn("RegisteredDiagnosisModule/diagnosis", "diagnosis without a name or code; not mapped");
            return;
        }
        let end = fhir_date(d.end.as_deref(), t, "RegisteredDiagnosisModule/endDate");
        let status = match (d.outcome.as_deref(), end.is_some()) {
            (Some("recovered" | "fullyRecovered" | "cured"), _) => "resolved",
            (Some("recovering" | "partiallyRecovered"), _) => "remission",
            (Some("died" | "transferred" | "end" | "discontinued"), _) | (_, true) => "inactive",
            _ => "active",
        };
        let subject = self.subject(t);
        push(
            Resource::Condition(Condition {
                id: self.id("Condition", part),
                clinical_status: Some(CodeableConcept::coding(Coding::new(
                    "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    status,
                ))),
                verification_status: Some(CodeableConcept::coding(Coding::new(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "confirmed",
                ))),
                category: vec![CodeableConcept::coding(Coding::new(
                    "http://terminology.hl7.org/CodeSystem/condition-category",
                    "encounter-diagnosis",
                ))],
                code: Some(code),
                subject,
                onset_date_time: fhir_date(d.start.as_deref(), t, "RegisteredDiagnosisModule/startDate"),
                abatement_date_time: end,
                recorded_date: fhir_date(
                    d.first_encounter.as_deref().or(self.info.confirm_date.as_deref()),
                    t,
                    "RegisteredDiagnosisModule/firstEncounterDate",
                ),
                note: d
                    .outcome
                    .as_ref()
                    .map(|o| Annotation { text: format!("転帰: {o}"), ..Default::default() })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            t,
        );
    }

    fn medications(&self, meds: &[Medication], part: &str, injection: bool, t: &mut Translation) {
        for (i, m) in meds.iter().enumerate() {
            let mut concept = CodeableConcept { coding: vec![], text: m.name.clone() };
            for (code_system, code) in &m.codes {
                // Codes are written with stray characters at times (a quote after a YJ code).
                let clean: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
                if clean != *code {
                    t.warn(
                        format!("medication[{i}]/medicine/code"),
                        format!("drug code `{code}` contains stray characters; read as `{clean}`"),
                    );
                }
                let system = match code_system.as_deref() {
                    Some("YJ") => YJ.to_string(),
                    Some("HOT" | "HOT9") => "urn:oid:1.2.392.200119.4.403.1".into(),
                    // A system written as a URI (Kakehashi's own export) is that system.
                    Some(uri) if uri.contains(':') => uri.to_string(),
                    Some(other) => {
                        t.warn(
                            format!("medication[{i}]/medicine/code/@system"),
                            format!("drug code system `{other}` is unknown; kept as local"),
                        );
                        codes::local_system(&self.ctx.owner, other)
                    }
                    None => codes::local_system(&self.ctx.owner, "drug"),
                };
                let mut c = Coding::new(system, clean);
                c.display = m.name.clone();
                concept.coding.push(c);
            }
            let mut dosage = Dosage { text: m.instruction.clone(), ..Default::default() };
            if let Some(v) = number(m.dose.as_deref()) {
                dosage.dose_and_rate.push(DoseAndRate {
                    dose_quantity: Some(Quantity { value: Some(v), unit: m.dose_unit.clone(), ..Default::default() }),
                    ..Default::default()
                });
            } else if m.dose.is_some() {
                t.warn(
                    format!("medication[{i}]/dose"),
                    format!("dose `{}` is not a number", m.dose.clone().unwrap_or_default()),
                );
            }
            let mut repeat = TimingRepeat::default();
            if let Some(f) = m.frequency_per_day.as_deref().and_then(|f| ascii_fold(f).parse::<u32>().ok()) {
                repeat.frequency = Some(f);
                repeat.period = Some(1.0);
                repeat.period_unit = Some("d".into());
            }
            let supply = m.duration.as_deref().and_then(|d| {
                let days = d.strip_prefix('P').and_then(|x| x.strip_suffix('D')).and_then(|n| n.parse::<f64>().ok());
                if days.is_none() {
                    t.warn(format!("medication[{i}]/duration"), format!("duration `{d}` is not PnD"));
                }
                days.map(|n| Quantity {
                    value: Some(n),
                    unit: Some("日".into()),
                    system: Some("http://unitsofmeasure.org".into()),
                    code: Some("d".into()),
                    ..Default::default()
                })
            });
            repeat.bounds_duration = supply.clone();
            if repeat != TimingRepeat::default() {
                dosage.timing = Some(Timing { repeat: Some(repeat), ..Default::default() });
            }
            dosage.route = m.route.clone().map(CodeableConcept::text);
            dosage.site = m.site.clone().map(CodeableConcept::text);
            dosage.method = m.method.clone().map(CodeableConcept::text);
            let start = fhir_date(m.start.as_deref(), t, &format!("medication[{i}]/startDate"));
            if let Some(s) = start.clone() {
                dosage.extension.push(Extension {
                    url: "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_MedicationDosage_PeriodOfUse"
                        .into(),
                    value_period: Some(Period {
                        start: Some(s),
                        end: fhir_date(m.end.as_deref(), t, &format!("medication[{i}]/endDateTime")),
                    }),
                    ..Default::default()
                });
            }
            let subject = self.subject(t);
            push(
                Resource::MedicationRequest(MedicationRequest {
                    id: self.id("MedicationRequest", &format!("{part}.{i}")),
                    identifier: m
                        .batch_no
                        .iter()
                        .map(|b| Identifier {
                            system: Some(codes::RP_NUMBER.into()),
                            value: Some(ascii_fold(b)),
                            ..Default::default()
                        })
                        .collect(),
                    status: "active".into(),
                    intent: "order".into(),
                    category: vec![CodeableConcept::text(if injection { "注射" } else { "内服・外用" })],
                    medication_codeable_concept: Some(concept),
                    subject,
                    authored_on: fhir_date(self.info.confirm_date.as_deref(), t, "docInfo/confirmDate"),
                    requester: self.author(),
                    dosage_instruction: vec![dosage],
                    dispense_request: supply
                        .map(|s| DispenseRequest { expected_supply_duration: Some(s), ..Default::default() }),
                    substitution: m
                        .substitution
                        .map(|b| MedicationRequestSubstitution { allowed_boolean: Some(b), ..Default::default() }),
                    ..Default::default()
                }),
                t,
            );
        }
    }

    fn test(&self, r: &TestResult, part: &str, t: &mut Translation) {
        let effective = fhir_date(r.sample_time.as_deref(), t, "TestModule/information/@sampleTime");
        for (k, lt) in r.tests.iter().enumerate() {
            let mut results = Vec::new();
            for (i, it) in lt.items.iter().enumerate() {
                let mut code = CodeableConcept { coding: vec![], text: it.name.clone() };
                if let Some(c) = it.code.as_ref().filter(|c| !c.trim().is_empty()) {
                    let system = match it.code_id.as_deref() {
                        Some(id) if id.eq_ignore_ascii_case("JLAC10") => "urn:oid:1.2.392.200119.4.504".to_string(),
                        Some(id) if id.eq_ignore_ascii_case("LOINC") => "http://loinc.org".to_string(),
                        // A code table named by its URI (Kakehashi's own export).
                        Some(id) if id.contains(':') => id.to_string(),
                        Some(id) => codes::local_system(&self.ctx.owner, id),
                        None => codes::local_system(&self.ctx.owner, "lab"),
                    };
                    let mut coding = Coding::new(system, c.clone());
                    coding.display = it.name.clone();
                    code.coding.push(coding);
                }
                let mut o = Observation {
                    id: self.id("Observation", &format!("{part}.{k}.{i}")),
                    status: match r.status.as_deref() {
                        Some("mid") => "preliminary",
                        _ => "final",
                    }
                    .into(),
                    category: vec![CodeableConcept::coding(Coding::new(OBS_CATEGORY, "laboratory"))],
                    code,
                    subject: Some(self.subject(t)),
                    effective_date_time: effective.clone(),
                    ..Default::default()
                };
                match number(it.num_value.as_deref()) {
                    Some(v) => {
                        o.value_quantity =
                            Some(Quantity { value: Some(v), unit: it.unit.clone(), ..Default::default() })
                    }
                    None => o.value_string = it.value.clone().or_else(|| it.num_value.clone()),
                }
                if o.value_quantity.is_none() && o.value_string.is_none() {
                    o.data_absent_reason = Some(CodeableConcept::coding(Coding::new(
                        "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                        "unknown",
                    )));
                }
                if it.low.is_some() || it.up.is_some() || it.normal.is_some() {
                    let q = |v: Option<&str>| {
                        number(v).map(|n| Quantity { value: Some(n), unit: it.unit.clone(), ..Default::default() })
                    };
                    o.reference_range.push(ObservationReferenceRange {
                        low: q(it.low.as_deref()),
                        high: q(it.up.as_deref()),
                        text: it.normal.clone(),
                        ..Default::default()
                    });
                }
                if let Some(flag) = it.out.as_deref() {
                    let code = match flag {
                        "H" | "L" | "N" | "A" | "HH" | "LL" => Some(flag),
                        _ => None,
                    };
                    o.interpretation.push(match code {
                        Some(c) => CodeableConcept::coding(Coding::new(
                            "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                            c,
                        )),
                        None => CodeableConcept::text(flag),
                    });
                }
                results.push(Reference {
                    reference: o.id.as_ref().map(|id| format!("Observation/{id}")),
                    ..Default::default()
                });
                push(Resource::Observation(o), t);
            }
            let subject = self.subject(t);
            push(
                Resource::DiagnosticReport(DiagnosticReport {
                    id: self.id("DiagnosticReport", &format!("{part}.{k}")),
                    identifier: r
                        .regist_id
                        .iter()
                        .map(|id| Identifier {
                            system: Some(codes::local_system(&self.ctx.owner, "lab-order")),
                            value: Some(id.clone()),
                            ..Default::default()
                        })
                        .collect(),
                    status: if r.status.as_deref() == Some("mid") { "partial" } else { "final" }.into(),
                    category: vec![CodeableConcept::coding(Coding::new(
                        "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "LAB",
                    ))],
                    code: CodeableConcept::text(
                        lt.specimen.clone().map(|s| format!("検体検査 ({s})")).unwrap_or_else(|| "検体検査".into()),
                    ),
                    subject: Some(subject),
                    effective_date_time: effective.clone(),
                    issued: fhir_date(r.report_time.as_deref(), t, "TestModule/information/@reportTime")
                        .filter(|d| d.contains('T')),
                    // The facility that reported, its ordering department, and the
                    // laboratory that ran the tests.
                    performer: [
                        organization_ref(r.facility.as_deref(), r.facility_code.as_ref()),
                        r.department.as_deref().map(|d| Reference {
                            display: Some(match &r.facility {
                                Some(f) => format!("{f} {d}"),
                                None => d.to_string(),
                            }),
                            type_: Some("Organization".into()),
                            ..Default::default()
                        }),
                        organization_ref(r.laboratory.as_deref(), r.laboratory_code.as_ref())
                            .filter(|_| r.laboratory_code != r.facility_code || r.laboratory != r.facility),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                    result: results,
                    ..Default::default()
                }),
                t,
            );
        }
    }

    fn flow_sheet(&self, f: &mml::FlowSheet, part: &str, t: &mut Translation) {
        for (i, v) in f.vitals.iter().enumerate() {
            // A vital sign set without its own context was observed in the sheet's.
            let context = if v.context == ObservationContext::default() { &f.context } else { &v.context };
            self.vitals(v, context, &format!("{part}.{i}"), t);
        }
        let performer = observed_by(&f.context);
        let fluid = |v: Option<&str>, unit: Option<&str>, at: &str, t: &mut Translation| {
            let n = number(v);
            if n.is_none() && v.is_some() {
                t.warn(at, format!("volume `{}` is not a number", v.unwrap_or_default()));
            }
            n.map(|value| {
                let ucum = match unit {
                    Some("ml" | "mL" | "ML") => Some("mL"),
                    Some("l" | "L") => Some("L"),
                    Some("g") => Some("g"),
                    _ => None,
                };
                Quantity {
                    value: Some(value),
                    unit: unit.map(str::to_string),
                    system: ucum.map(|_| "http://unitsofmeasure.org".to_string()),
                    code: ucum.map(str::to_string),
                    ..Default::default()
                }
            })
        };
        // What an intake and an output have alike: a volume over a time, by a route.
        let observation = |category: &str,
                           label: &str,
                           kind: &Option<String>,
                           (start, end): (Option<String>, Option<String>),
                           value: Option<Quantity>,
                           pathway: &Option<String>,
                           memo: &Option<String>,
                           subject: Reference| Observation {
            status: "final".into(),
            category: vec![CodeableConcept::text(category)],
            code: CodeableConcept::text(format!("{label}: {}", kind.clone().unwrap_or_default())),
            subject: Some(subject),
            effective_date_time: if end.is_some() { None } else { start.clone() },
            effective_period: end.is_some().then_some(Period { start, end }),
            performer: performer.clone(),
            data_absent_reason: value.is_none().then(unknown),
            value_quantity: value,
            method: pathway.clone().map(CodeableConcept::text),
            note: memo.iter().map(|m| Annotation { text: m.clone(), ..Default::default() }).collect(),
            ..Default::default()
        };
        for (i, x) in f.intake.iter().enumerate() {
            let at = format!("FlowSheetModule/intake[{}]", i + 1);
            let start = fhir_date(x.start.as_deref(), t, &format!("{at}/intakeStartTime"));
            let end = fhir_date(x.end.as_deref(), t, &format!("{at}/intakeEndTime"));
            let subject = self.subject(t);
            let value = fluid(x.volume.as_deref(), x.unit.as_deref(), &format!("{at}/intakeVolume"), t);
            let o = Observation {
                id: self.id("Observation", &format!("{part}.in{i}")),
                ..observation("摂取 (intake)", "摂取", &x.kind, (start, end), value, &x.pathway, &x.memo, subject)
            };
            push(Resource::Observation(o), t);
        }
        for (i, x) in f.output.iter().enumerate() {
            let at = format!("FlowSheetModule/bodilyOutput[{}]", i + 1);
            let mut start = fhir_date(x.start.as_deref(), t, &format!("{at}/boStartTime"));
            let mut end = fhir_date(x.end.as_deref(), t, &format!("{at}/boEndTime"));
            let mut component = Vec::new();
            for (j, (times, from, to)) in x.frequency.iter().enumerate() {
                // The counting period is the observation's when it has none of its own.
                if start.is_none() && end.is_none() && j == 0 {
                    start = fhir_date(from.as_deref(), t, &format!("{at}/boFrequency/bofPeriodStartTime"));
                    end = fhir_date(to.as_deref(), t, &format!("{at}/boFrequency/bofPeriodEndTime"));
                }
                if let Some(n) = number(times.as_deref()) {
                    component.push(ObservationComponent {
                        code: CodeableConcept::text("回数 (times)"),
                        value_quantity: Some(Quantity {
                            value: Some(n),
                            unit: Some("回".into()),
                            system: Some("http://unitsofmeasure.org".into()),
                            code: Some("{times}".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
            }
            for (label, v) in [("性状 (character)", &x.status), ("色 (colour)", &x.color)] {
                if let Some(v) = v {
                    component.push(ObservationComponent {
                        code: CodeableConcept::text(label),
                        value_string: Some(v.clone()),
                        ..Default::default()
                    });
                }
            }
            let subject = self.subject(t);
            let value = fluid(x.volume.as_deref(), x.unit.as_deref(), &format!("{at}/boVolume"), t);
            let o = Observation {
                id: self.id("Observation", &format!("{part}.out{i}")),
                component,
                ..observation("排泄 (output)", "排泄", &x.kind, (start, end), value, &x.pathway, &x.memo, subject)
            };
            push(Resource::Observation(o), t);
        }
        if let Some(m) = &f.memo {
            t.warn("FlowSheetModule/fsMemo", format!("the sheet's memo is not mapped: `{m}`"));
        }
    }

    fn vitals(&self, v: &VitalSigns, context: &ObservationContext, part: &str, t: &mut Translation) {
        let performer = observed_by(context);
        let effective =
            fhir_date(v.observed.as_deref().or(self.info.confirm_date.as_deref()), t, "VitalSignModule/observedTime");
        for (i, it) in v.items.iter().enumerate() {
            let name = it.name.clone().unwrap_or_default();
            let loinc = vital_loinc(&name);
            let mut code = CodeableConcept::text(name.clone());
            if let Some((c, d)) = loinc {
                code.coding.push(Coding::new("http://loinc.org", c).with_display(d));
            }
            let (ucum, unit_text) = match it.unit.as_deref() {
                Some("mmHg") => (Some("mm[Hg]"), "mmHg"),
                Some("/min") => (Some("/min"), "/min"),
                Some("centigrade" | "℃" | "Cel") => (Some("Cel"), "℃"),
                Some("cm") => (Some("cm"), "cm"),
                Some("kg") => (Some("kg"), "kg"),
                Some("%") => (Some("%"), "%"),
                Some(other) => (None, other),
                None => (None, ""),
            };
            let mut o = Observation {
                id: self.id("Observation", &format!("{part}.v{i}")),
                status: "final".into(),
                category: vec![CodeableConcept::coding(Coding::new(OBS_CATEGORY, "vital-signs"))],
                code,
                subject: Some(self.subject(t)),
                effective_date_time: effective.clone(),
                performer: performer.clone(),
                ..Default::default()
            };
            match number(it.value.as_deref()) {
                Some(n) => {
                    o.value_quantity = Some(Quantity {
                        value: Some(n),
                        unit: (!unit_text.is_empty()).then(|| unit_text.to_string()),
                        system: ucum.map(|_| "http://unitsofmeasure.org".to_string()),
                        code: ucum.map(str::to_string),
                        ..Default::default()
                    })
                }
                None => o.value_string = it.value.clone(),
            }
            if o.value_quantity.is_none() && o.value_string.is_none() {
                o.data_absent_reason = Some(CodeableConcept::coding(Coding::new(
                    "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                    "unknown",
                )));
            }
            push(Resource::Observation(o), t);
        }
    }

    fn base(&self, b: &ClinicalBase, part: &str, t: &mut Translation) {
        for (i, a) in b.allergies.iter().enumerate() {
            let Some(factor) = &a.factor else {
                t.warn(format!("allergyItem[{i}]/factor"), "allergy without an allergen; not mapped");
                continue;
            };
            let patient = self.subject(t);
            // identifiedDate is free text: a date (to the year, month or day) is the
            // onset, anything else a note.
            let onset = a.identified.as_deref().and_then(partial_date);
            let identified = a.identified.as_ref().filter(|_| onset.is_none()).map(|d| format!("判明時期: {d}"));
            // The memo's `症状:` lines are the reactions (how Kakehashi writes them).
            let (reactions, memo) = split_reactions(a.memo.as_deref());
            let notes: Vec<Annotation> = [identified, memo]
                .into_iter()
                .flatten()
                .map(|text| Annotation { text, ..Default::default() })
                .collect();
            push(
                Resource::AllergyIntolerance(AllergyIntolerance {
                    id: self.id("AllergyIntolerance", &format!("{part}.{i}")),
                    clinical_status: Some(CodeableConcept::coding(Coding::new(
                        "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                        "active",
                    ))),
                    code: Some(CodeableConcept::text(factor.clone())),
                    criticality: match a.severity.as_deref() {
                        Some("severe" | "high") => Some("high".into()),
                        Some("mild" | "moderate" | "low") => Some("low".into()),
                        _ => None,
                    },
                    patient,
                    onset_date_time: onset,
                    reaction: (!reactions.is_empty())
                        .then(|| AllergyReaction {
                            manifestation: reactions.into_iter().map(CodeableConcept::text).collect(),
                            ..Default::default()
                        })
                        .into_iter()
                        .collect(),
                    note: notes,
                    ..Default::default()
                }),
                t,
            );
        }
        for (suffix, value, loinc, display) in
            [("abo", &b.abo, "883-9", "ABO group [Type] in Blood"), ("rh", &b.rh, "10331-7", "Rh [Type] in Blood")]
        {
            if let Some(v) = value {
                let subject = self.subject(t);
                push(
                    Resource::Observation(Observation {
                        id: self.id("Observation", &format!("{part}.{suffix}")),
                        status: "final".into(),
                        category: vec![CodeableConcept::coding(Coding::new(OBS_CATEGORY, "laboratory"))],
                        code: CodeableConcept::coding(Coding::new("http://loinc.org", loinc).with_display(display)),
                        subject: Some(subject),
                        value_string: Some(v.clone()),
                        ..Default::default()
                    }),
                    t,
                );
            }
        }
    }

    fn lifestyle(&self, l: &Lifestyle, part: &str, t: &mut Translation) {
        for (suffix, value, loinc, display) in [
            ("occupation", &l.occupation, "11341-5", "History of Occupation"),
            ("tobacco", &l.tobacco, "72166-2", "Tobacco smoking status"),
            ("alcohol", &l.alcohol, "11331-6", "History of Alcohol use"),
            ("other", &l.other, "", "生活習慣 その他"),
        ] {
            let Some(v) = value else { continue };
            let subject = self.subject(t);
            let code = if loinc.is_empty() {
                CodeableConcept::text(display)
            } else {
                CodeableConcept::coding(Coding::new("http://loinc.org", loinc).with_display(display))
            };
            push(
                Resource::Observation(Observation {
                    id: self.id("Observation", &format!("{part}.{suffix}")),
                    status: "final".into(),
                    category: vec![CodeableConcept::coding(Coding::new(OBS_CATEGORY, "social-history"))],
                    code,
                    subject: Some(subject),
                    effective_date_time: fhir_date(self.info.confirm_date.as_deref(), t, "docInfo/confirmDate"),
                    value_string: Some(v.clone()),
                    ..Default::default()
                }),
                t,
            );
        }
    }

    fn document(&self, d: &Document, part: &str, t: &mut Translation) {
        // A summary written on discharge (MML0007 purpose `discharge`, or a 退院 title)
        // is a discharge summary (JP-CLINS 18842-5).
        let discharge = self.info.purpose.as_deref() == Some("discharge")
            || self.info.title.as_deref().is_some_and(|t| t.contains("退院"));
        let (loinc, display, title) = match d.kind {
            DocumentKind::Summary if discharge => ("18842-5", "Discharge summary", "退院時サマリー"),
            DocumentKind::Summary => ("34133-9", "Summary of episode note", "サマリー"),
            DocumentKind::Referral => ("57133-1", "Referral note", "診療情報提供書"),
            DocumentKind::Report => ("11526-1", "Pathology study", "報告書"),
            DocumentKind::ProgressCourse => ("11506-3", "Progress note", "経過記録"),
            DocumentKind::FirstClinic => ("34117-2", "History and physical note", "初診時特有情報"),
            DocumentKind::Surgery => ("11504-8", "Surgical operation note", "手術記録"),
            DocumentKind::Procedure => ("28570-0", "Procedure note", "処置記録"),
            DocumentKind::HemoDialysis => ("28570-0", "Procedure note", "透析記録"),
        };
        let mut entries = Vec::new();
        for (i, m) in d.nested.iter().enumerate() {
            entries.extend(self.module(m, &format!("{part}.n{i}"), t));
        }
        if d.base != ClinicalBase::default() {
            let start = t.resources.len();
            self.base(&d.base, &format!("{part}.base"), t);
            entries.extend(t.resources[start..].iter().filter_map(|r| {
                Some(Reference { reference: Some(format!("{}/{}", r.type_name(), r.id()?)), ..Default::default() })
            }));
        }
        let written = self.info.confirm_date.as_deref().or(d.first_date.as_deref());
        let Some(date) = fhir_date(written, t, "docInfo/confirmDate") else {
            t.warn(
                "docInfo/confirmDate",
                format!("{title} without any date: its records are mapped but no Composition is made"),
            );
            return;
        };
        let mut section = Vec::new();
        for (name, text) in &d.sections {
            match name.as_str() {
                // The Referral module's own title is the Composition's title.
                "title" => continue,
                // Sections MML has no element for travel in remarks as 【title】 blocks.
                "remarks" if text.trim_start().starts_with('【') => {
                    for (title, body) in split_remarks(text) {
                        // A Summary's recipient (how Kakehashi writes it): section 910
                        // with the institution as its Organization.
                        if title == crate::export::mml::RECIPIENT_BLOCK {
                            if let Some(s) = self.recipient_section(&body, part, t) {
                                section.push(s);
                                continue;
                            }
                        }
                        section.push(CompositionSection {
                            title: Some(title),
                            text: Some(narrative(&body)),
                            ..Default::default()
                        });
                    }
                }
                _ => {
                    // Elements without text (the Summary's serviceHistory, an empty
                    // chiefComplaints the Referral schema requires) hold no section.
                    if text.trim().is_empty() {
                        continue;
                    }
                    let known = crate::export::section_of_element(name);
                    section.push(CompositionSection {
                        title: Some(known.map(|s| s.title.to_string()).unwrap_or_else(|| name.clone())),
                        code: known.map(|s| {
                            CodeableConcept::coding(
                                Coding::new(crate::document::SECTION_SYSTEM, s.code).with_display(s.title),
                            )
                        }),
                        text: Some(narrative(text)),
                        ..Default::default()
                    });
                }
            }
        }
        if d.to_facility.is_some() || d.to_facility_id.is_some() {
            let text =
                [d.to_facility.clone(), d.to_person.clone()].into_iter().flatten().collect::<Vec<_>>().join("\n");
            section.push(self.to_section(d.to_facility.clone(), d.to_facility_id.as_deref(), &text, part, t));
        }
        // The creator: the doctor (Practitioner) and the facility (Organization), which
        // is also the custodian when it is named by its institution code.
        let (authors, custodian) = self.creator_resources(part, t);
        if !entries.is_empty() {
            section.push(CompositionSection {
                title: Some(INCLUDED.into()),
                text: Some(narrative(&format!("{} records", entries.len()))),
                entry: entries,
                ..Default::default()
            });
        }
        if section.is_empty() {
            section.push(CompositionSection {
                title: Some(title.into()),
                text: Some(narrative("(empty)")),
                ..Default::default()
            });
        }
        let subject = self.subject(t);
        t.resources.insert(
            0,
            Resource::Composition(Composition {
                id: self.id("Composition", part),
                status: "final".into(),
                type_: CodeableConcept::coding(Coding::new("http://loinc.org", loinc).with_display(display)),
                subject: Some(subject),
                date,
                author: authors,
                title: d
                    .sections
                    .iter()
                    .find(|(n, _)| n == "title")
                    .map(|(_, t)| t.clone())
                    .or_else(|| self.info.title.clone())
                    .unwrap_or_else(|| title.into()),
                custodian: Some(custodian),
                section,
                ..Default::default()
            }),
        );
    }
}

/// The LOINC code of a vital sign MML names (its VitalSignModule has names, not codes).
pub fn vital_loinc(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name.to_ascii_lowercase().as_str() {
        "systolic blood pressure" | "収縮期血圧" => ("8480-6", "Systolic blood pressure"),
        "diastolic blood pressure" | "拡張期血圧" => ("8462-4", "Diastolic blood pressure"),
        "pulse rate" | "heart rate" | "脈拍" => ("8867-4", "Heart rate"),
        "body temperature" | "体温" => ("8310-5", "Body temperature"),
        "respiration rate" | "respiratory rate" | "呼吸数" => ("9279-1", "Respiratory rate"),
        "body height" | "身長" => ("8302-2", "Body height"),
        "body weight" | "体重" => ("29463-7", "Body weight"),
        "spo2" | "oxygen saturation" => ("59408-5", "Oxygen saturation"),
        _ => return None,
    })
}

/// "Unknown" as a data-absent reason.
fn unknown() -> CodeableConcept {
    CodeableConcept::coding(Coding::new("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown"))
}

/// An organisation named in MML with its code: a 10-digit 医療機関コード (table
/// `insurance`, or none) as JP Core's identifier; other codes are kept in the display.
fn organization_ref(name: Option<&str>, code: Option<&(String, Option<String>)>) -> Option<Reference> {
    let institution = code
        .filter(|(_, table)| table.as_deref().is_none_or(|t| t == "insurance" || t == "MML0027"))
        .and_then(|(c, _)| institution_identifier(Some(c)));
    if name.is_none() && institution.is_none() {
        return None;
    }
    Some(Reference {
        display: name.map(str::to_string),
        identifier: institution,
        type_: Some("Organization".into()),
        ..Default::default()
    })
}

/// Who observed (the observer) and where (the facility, its department and ward).
fn observed_by(c: &ObservationContext) -> Vec<Reference> {
    let place = [c.facility.as_deref(), c.department.as_deref(), c.ward.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let mut out: Vec<Reference> = c
        .observer
        .iter()
        .map(|o| Reference { display: Some(o.clone()), type_: Some("Practitioner".into()), ..Default::default() })
        .collect();
    out.extend(organization_ref((!place.is_empty()).then_some(place.as_str()), c.facility_code.as_ref()));
    out
}

/// A facility id that is a 10-digit 医療機関コード, as JP Core's identifier.
fn institution_identifier(id: Option<&str>) -> Option<Identifier> {
    let v = ascii_fold(id?.trim());
    (v.len() == 10 && v.bytes().all(|b| b.is_ascii_digit())).then(|| Identifier {
        system: Some(codes::INSTITUTION_NUMBER.into()),
        value: Some(v),
        ..Default::default()
    })
}

/// The prefix of a reaction line in an allergy memo.
pub const REACTION_PREFIX: &str = "症状: ";

/// An allergy memo's reaction lines (`症状: …`) and the rest of it.
fn split_reactions(memo: Option<&str>) -> (Vec<String>, Option<String>) {
    let mut reactions = Vec::new();
    let mut rest = Vec::new();
    for line in memo.unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix(REACTION_PREFIX.trim_end()) {
            Some(r) => reactions.push(r.trim().to_string()),
            None => rest.push(line),
        }
    }
    (reactions, (!rest.is_empty()).then(|| rest.join("\n")))
}

/// A FHIR date from `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, checked.
fn partial_date(v: &str) -> Option<String> {
    let v = v.trim();
    let ok = match v.len() {
        4 => v.bytes().all(|b| b.is_ascii_digit()),
        7 => v.as_bytes()[4] == b'-' && crate::datetime::date(&format!("{}{}01", &v[..4], &v[5..7])).is_ok(),
        10 => crate::datetime::date(&v.replace('-', "")).is_ok(),
        _ => false,
    };
    ok.then(|| v.to_string())
}

/// `【title】\ntext` blocks of an MML remarks element.
fn split_remarks(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(title) = l.strip_prefix('【').and_then(|x| x.strip_suffix('】')) {
            out.push((title.to_string(), String::new()));
        } else if let Some(last) = out.last_mut() {
            if !last.1.is_empty() {
                last.1.push('\n');
            }
            last.1.push_str(l);
        }
    }
    out
}

/// Push after the resource is built: building it may record warnings.
fn push(r: Resource, t: &mut Translation) {
    t.resources.push(r);
}

/// Parse MML bytes and translate them, pure.
pub fn translate_bytes(
    bytes: &[u8],
    options: &kakehashi_adapters::ParseOptions,
    ctx: &Context,
) -> Result<Translation, kakehashi_adapters::SourceError> {
    let doc = kakehashi_adapters::mml::parse(bytes, options)?;
    Ok(translate(&doc, ctx))
}
