//! CDA R2 to a FHIR document Bundle: Composition (type, title, date, author,
//! custodian, one section per CDA section with its narrative), Patient, Practitioner
//! and Organization, and the structured entries mapped by section: problems →
//! Condition, allergies → AllergyIntolerance, medications → MedicationRequest, results,
//! vital signs and social history → Observation.

use crate::codes;
use crate::document::narrative;
use crate::{Context, Translation};
use kakehashi_adapters::cda::{CdaDocument, CdaOrganization, Code, Entry, Value};
use kakehashi_fhir::*;

/// CDA code system OID → FHIR system URI.
pub fn system_of(oid: &str) -> String {
    match oid {
        "2.16.840.1.113883.6.1" => "http://loinc.org".into(),
        "2.16.840.1.113883.6.96" => "http://snomed.info/sct".into(),
        "2.16.840.1.113883.6.88" => "http://www.nlm.nih.gov/research/umls/rxnorm".into(),
        "2.16.840.1.113883.6.90" => "http://hl7.org/fhir/sid/icd-10-cm".into(),
        "2.16.840.1.113883.6.103" => "http://hl7.org/fhir/sid/icd-9-cm".into(),
        "2.16.840.1.113883.6.8" => "http://unitsofmeasure.org".into(),
        "2.16.840.1.113883.5.4" => "http://terminology.hl7.org/CodeSystem/v3-ActCode".into(),
        "1.2.392.200119.4.504" => "urn:oid:1.2.392.200119.4.504".into(),
        "1.2.392.200119.4.403.1" => "urn:oid:1.2.392.200119.4.403.1".into(),
        uri if uri.contains("://") || uri.starts_with("urn:") => uri.to_string(),
        other => format!("urn:oid:{other}"),
    }
}

fn concept(c: &Code) -> CodeableConcept {
    let mut cc = CodeableConcept { coding: vec![], text: c.display.clone() };
    if let (Some(code), Some(system)) = (&c.code, &c.system) {
        let mut coding = Coding::new(system_of(system), code.clone());
        coding.display = c.display.clone();
        cc.coding.push(coding);
    } else if let Some(code) = &c.code {
        cc.text = Some(cc.text.unwrap_or_else(|| code.clone()));
    }
    cc
}

/// A CDA id as a FHIR Identifier: a 10-digit institution code under the MHLW OID
/// arc on JP Core's system, any other root as its `urn:oid:`.
fn identifier((root, ext): &(String, String)) -> Identifier {
    let institution = format!("urn:oid:{root}");
    let system = if let Some(known) = crate::export::cda::system_of_root(root) {
        known.to_string()
    } else if codes::is_institution_system(&institution) && ext.len() == 10 {
        codes::INSTITUTION_NUMBER.to_string()
    } else {
        institution
    };
    Identifier { system: Some(system), value: Some(ext.clone()), ..Default::default() }
}

fn organization(o: &CdaOrganization, id: Option<String>) -> Organization {
    Organization { id, identifier: o.ids.iter().map(identifier).collect(), name: o.name.clone(), ..Default::default() }
}

/// A problem's clinical status from its C-CDA status value (SNOMED CT) or the FHIR
/// code Kakehashi writes.
fn clinical_status(status: Option<&Code>) -> &'static str {
    match status.and_then(|c| c.code.as_deref()) {
        Some("73425007" | "inactive") => "inactive",
        Some("413322009" | "resolved") => "resolved",
        Some("recurrence") => "recurrence",
        Some("relapse") => "relapse",
        Some("remission") => "remission",
        _ => "active",
    }
}

/// A substanceAdministration as a MedicationRequest (without id and subject): every
/// code of the drug, the RP number among its ids, the sig, the dose, how often ("n
/// times a day" is written as every 24/n hours, set by the institution) and for how
/// many days, from `start`.
fn medication_request(e: &Entry, start: Option<String>) -> MedicationRequest {
    let Entry::Medication { ids, drug, translations, period, width, dose, route, text, .. } = e else {
        return MedicationRequest::default();
    };
    let mut code = concept(drug);
    for tr in translations {
        code.coding.extend(concept(tr).coding);
    }
    let days = width.as_ref().filter(|(_, u)| u == "d").map(|(v, _)| Quantity {
        value: Some(*v),
        unit: Some("日".into()),
        system: Some("http://unitsofmeasure.org".into()),
        code: Some("d".into()),
        ..Default::default()
    });
    let mut repeat = TimingRepeat { bounds_duration: days.clone(), ..Default::default() };
    if let Some((value, unit, institution)) = period {
        let per_day = (24.0 / value).round();
        if *institution && unit == "h" && per_day >= 1.0 && (per_day * value - 24.0).abs() < 1e-6 {
            repeat.frequency = Some(per_day as u32);
            repeat.period = Some(1.0);
            repeat.period_unit = Some("d".into());
        } else {
            repeat.frequency = Some(1);
            repeat.period = Some(*value);
            repeat.period_unit = Some(unit.clone());
        }
    }
    let dosage = Dosage {
        text: text.clone(),
        route: route.as_ref().map(concept),
        timing: (repeat != TimingRepeat::default()).then(|| Timing { repeat: Some(repeat), ..Default::default() }),
        dose_and_rate: dose
            .iter()
            .map(|(v, u)| DoseAndRate {
                dose_quantity: Some(Quantity { value: Some(*v), unit: u.clone(), ..Default::default() }),
                ..Default::default()
            })
            .collect(),
        extension: start
            .map(|s| Extension {
                url: "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_MedicationDosage_PeriodOfUse".into(),
                value_period: Some(Period { start: Some(s), end: None }),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    };
    MedicationRequest {
        identifier: ids.iter().map(identifier).collect(),
        status: "active".into(),
        intent: "order".into(),
        medication_codeable_concept: Some(code),
        dosage_instruction: vec![dosage],
        dispense_request: days.map(|d| DispenseRequest { expected_supply_duration: Some(d), ..Default::default() }),
        ..Default::default()
    }
}

/// C-CDA problem observation codes (SNOMED CT Problem, Condition, Diagnosis...).
fn is_problem_code(c: &Code) -> bool {
    matches!(
        c.code.as_deref(),
        Some("55607006" | "64572001" | "282291009" | "404684003" | "409586006" | "418799008" | "248536006")
    ) && c.system.as_deref() == Some("2.16.840.1.113883.6.96")
}

fn when(v: Option<&str>, at: &str, t: &mut Translation) -> Option<String> {
    let v = v?;
    match crate::datetime::date_time(v) {
        Ok(d) => Some(d),
        Err(e) => {
            t.warn(at, e.to_string());
            None
        }
    }
}

fn push(r: Resource, t: &mut Translation) -> Reference {
    let reference =
        Reference { reference: Some(format!("{}/{}", r.type_name(), r.id().unwrap_or(""))), ..Default::default() };
    t.resources.push(r);
    reference
}

/// Translate a CDA document.
pub fn translate(doc: &CdaDocument, ctx: &Context) -> Translation {
    let mut t = Translation::default();
    let doc_key = doc
        .id
        .as_ref()
        .map(|(r, e)| format!("{r}^{}", e.clone().unwrap_or_default()))
        .unwrap_or_else(|| ctx.source_key.clone());
    let id = |ty: &str, part: &str| Some(ctx.id_for(ty, &format!("{doc_key}:{part}")));

    let patient_ref = match &doc.patient {
        Some(p) => {
            let (root, ext) = p.ids.first().cloned().unwrap_or_default();
            let pid = ctx.id_for("Patient", &format!("{root}^{ext}"));
            let patient = Patient {
                id: Some(pid.clone()),
                identifier: p
                    .ids
                    .iter()
                    .map(|(r, e)| Identifier {
                        system: Some(format!("urn:oid:{r}")),
                        value: Some(e.clone()),
                        ..Default::default()
                    })
                    .collect(),
                name: p
                    .names
                    .iter()
                    .map(|(given, family, use_)| {
                        // Japanese names (IDE/SYL/ABC representation) are written family first.
                        let repr = use_.as_deref().filter(|u| matches!(*u, "IDE" | "SYL" | "ABC"));
                        let parts = if repr.is_some() {
                            [family.clone().unwrap_or_default(), given.join(" ")]
                        } else {
                            [given.join(" "), family.clone().unwrap_or_default()]
                        };
                        HumanName {
                            extension: repr.map(codes::name_representation).into_iter().collect(),
                            text: Some(parts.join(" ").trim().to_string()),
                            family: family.clone(),
                            given: given.clone(),
                            ..Default::default()
                        }
                    })
                    .collect(),
                gender: p.gender.as_deref().map(|g| {
                    match g {
                        "M" => "male",
                        "F" => "female",
                        "UN" => "other",
                        _ => "unknown",
                    }
                    .to_string()
                }),
                birth_date: p.birth.as_deref().and_then(|b| crate::datetime::date(&b[..b.len().min(8)]).ok()),
                address: p
                    .addresses
                    .iter()
                    .map(|a| kakehashi_fhir::Address {
                        use_: match a.use_.as_deref() {
                            Some("H" | "HP" | "HV") => Some("home".into()),
                            Some("WP" | "DIR" | "PUB") => Some("work".into()),
                            Some("TMP") => Some("temp".into()),
                            _ => None,
                        },
                        text: a.text.clone(),
                        line: a.lines.clone(),
                        city: a.city.clone(),
                        state: a.state.clone(),
                        postal_code: a.postal_code.clone(),
                        country: a.country.clone(),
                        ..Default::default()
                    })
                    .collect(),
                telecom: p
                    .telecoms
                    .iter()
                    .map(|(v, use_)| {
                        let (system, value) = match v.split_once(':') {
                            Some(("tel", n)) => ("phone", n.trim()),
                            Some(("mailto", m)) => ("email", m.trim()),
                            Some(("fax", n)) => ("fax", n.trim()),
                            _ => ("other", v.as_str()),
                        };
                        ContactPoint {
                            system: Some(system.into()),
                            value: Some(value.to_string()),
                            use_: match use_.as_deref() {
                                Some("H" | "HP" | "HV") => Some("home".into()),
                                Some("WP" | "DIR" | "PUB") => Some("work".into()),
                                Some("MC") => Some("mobile".into()),
                                Some("TMP") => Some("temp".into()),
                                _ => None,
                            },
                            rank: None,
                        }
                    })
                    .collect(),
                ..Default::default()
            };
            push(Resource::Patient(patient), &mut t)
        }
        None => {
            t.warn("recordTarget", "the document has no patient (recordTarget/patientRole)");
            Reference { display: Some("patient not given in the document".into()), ..Default::default() }
        }
    };

    // Authors: the person (Practitioner) and the organisation they write for.
    let mut authors = Vec::new();
    for (i, a) in doc.authors.iter().enumerate() {
        if let Some(name) = &a.name {
            let pr = Practitioner {
                id: id("Practitioner", &format!("author{i}")),
                identifier: a.ids.iter().map(identifier).collect(),
                name: vec![HumanName { text: Some(name.clone()), ..Default::default() }],
                ..Default::default()
            };
            authors.push(push(Resource::Practitioner(pr), &mut t));
        }
        if let Some(o) = &a.organization {
            let org = organization(o, id("Organization", &format!("author{i}")));
            authors.push(push(Resource::Organization(org), &mut t));
        }
    }
    let custodian = doc
        .custodian
        .as_ref()
        .map(|o| push(Resource::Organization(organization(o, id("Organization", "custodian"))), &mut t));
    if authors.is_empty() {
        authors.push(
            custodian
                .clone()
                .unwrap_or_else(|| Reference { display: Some(ctx.owner_name.clone()), ..Default::default() }),
        );
    }
    // The recipient (informationRecipient) is JP-CLINS section 910's Organization.
    let recipient = doc.recipient.as_ref().map(|o| {
        (push(Resource::Organization(organization(o, id("Organization", "recipient"))), &mut t), o.name.clone())
    });

    let mut section = Vec::new();
    for (si, s) in doc.sections.iter().enumerate() {
        let sec_code = s.code.as_ref().and_then(|c| c.code.clone()).unwrap_or_default();
        let mut entry_refs = Vec::new();
        for (ei, e) in s.entries.iter().enumerate() {
            let part = format!("s{si}e{ei}");
            let at = format!("section {} entry {}", si + 1, ei + 1);
            let r = match e {
                Entry::Allergy { substance, reaction, time } => Resource::AllergyIntolerance(AllergyIntolerance {
                    id: id("AllergyIntolerance", &part),
                    clinical_status: Some(CodeableConcept::coding(Coding::new(
                        "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                        "active",
                    ))),
                    code: Some(concept(substance)),
                    patient: patient_ref.clone(),
                    onset_date_time: when(time.as_deref(), &at, &mut t),
                    reaction: (!reaction.is_empty())
                        .then(|| AllergyReaction {
                            manifestation: reaction.iter().map(concept).collect(),
                            ..Default::default()
                        })
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                Entry::Medication { start, .. } => Resource::MedicationRequest(MedicationRequest {
                    id: id("MedicationRequest", &part),
                    subject: patient_ref.clone(),
                    ..medication_request(e, when(start.as_deref(), &at, &mut t))
                }),
                Entry::Observation { code, value, time, interpretation, status } => {
                    if is_problem_code(code)
                        || matches!(
                            sec_code.as_str(),
                            "11450-4" | "11535-2" | "46241-6" | "29548-5" | "11348-0" | "10164-2" | "340" | "370"
                        )
                    {
                        let problem = match value {
                            Value::Coded(c) => concept(c),
                            _ => concept(code),
                        };
                        Resource::Condition(Condition {
                            id: id("Condition", &part),
                            clinical_status: Some(CodeableConcept::coding(Coding::new(
                                "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                clinical_status(status.as_ref()),
                            ))),
                            category: vec![CodeableConcept::coding(Coding::new(
                                "http://terminology.hl7.org/CodeSystem/condition-category",
                                if sec_code == "11450-4" || sec_code == "11348-0" {
                                    "problem-list-item"
                                } else {
                                    "encounter-diagnosis"
                                },
                            ))],
                            code: Some(problem),
                            subject: patient_ref.clone(),
                            onset_date_time: when(time.as_deref(), &at, &mut t),
                            ..Default::default()
                        })
                    } else {
                        let category = match sec_code.as_str() {
                            "8716-3" => "vital-signs",
                            "29762-2" => "social-history",
                            "30954-2" | "620" => "laboratory",
                            _ => "exam",
                        };
                        let mut o = Observation {
                            id: id("Observation", &part),
                            status: "final".into(),
                            category: vec![CodeableConcept::coding(Coding::new(
                                "http://terminology.hl7.org/CodeSystem/observation-category",
                                category,
                            ))],
                            code: if code.is_empty() {
                                CodeableConcept::text("(uncoded observation)")
                            } else {
                                concept(code)
                            },
                            subject: Some(patient_ref.clone()),
                            effective_date_time: when(time.as_deref(), &at, &mut t),
                            interpretation: interpretation
                                .iter()
                                .map(|i| {
                                    CodeableConcept::coding(Coding::new(
                                        "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                        i.clone(),
                                    ))
                                })
                                .collect(),
                            ..Default::default()
                        };
                        match value {
                            Value::Quantity(v, u) => {
                                o.value_quantity = Some(Quantity {
                                    value: Some(*v),
                                    unit: u.clone(),
                                    system: u.as_ref().map(|_| "http://unitsofmeasure.org".to_string()),
                                    code: u.clone(),
                                    ..Default::default()
                                })
                            }
                            Value::Coded(c) => o.value_codeable_concept = Some(concept(c)),
                            Value::Text(s) => o.value_string = Some(s.clone()),
                            Value::None => {
                                o.data_absent_reason = Some(CodeableConcept::coding(Coding::new(
                                    "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                    "unknown",
                                )))
                            }
                        }
                        Resource::Observation(o)
                    }
                }
            };
            entry_refs.push(push(r, &mut t));
        }
        if sec_code == crate::document::RECIPIENT_SECTION {
            entry_refs.extend(recipient.as_ref().map(|(r, _)| r.clone()));
        }
        let text = if s.text.trim().is_empty() { "(no narrative)".to_string() } else { s.text.clone() };
        section.push(CompositionSection {
            title: s.title.clone(),
            code: s.code.as_ref().map(concept),
            text: Some(narrative(&text)),
            entry: entry_refs,
            ..Default::default()
        });
    }

    let date = when(doc.effective.as_deref(), "ClinicalDocument/effectiveTime", &mut t).unwrap_or_else(|| {
        t.warn(
            "ClinicalDocument/effectiveTime",
            "no usable effectiveTime; the Composition's date falls back to 1970-01-01",
        );
        "1970-01-01".into()
    });
    let mut composition = Composition {
        id: id("Composition", "document"),
        identifier: doc.id.as_ref().map(|(r, e)| Identifier {
            system: Some(format!("urn:oid:{r}")),
            value: Some(e.clone().unwrap_or_else(|| r.clone())),
            ..Default::default()
        }),
        status: "final".into(),
        type_: concept(&doc.code),
        subject: Some(patient_ref),
        date,
        author: authors,
        title: doc.title.clone().unwrap_or_else(|| "Clinical document".into()),
        confidentiality: doc
            .confidentiality
            .clone()
            .filter(|c| matches!(c.as_str(), "U" | "L" | "M" | "N" | "R" | "V")),
        custodian: Some(custodian.unwrap_or_else(|| ctx.owner_ref())),
        section,
        ..Default::default()
    };
    // A recipient the document has no 910 section for gets one.
    if let Some((r, name)) = recipient {
        let has_910 = composition.section.iter().any(|s| s.entry.contains(&r));
        if !has_910 {
            composition.section.push(CompositionSection {
                title: Some("紹介先情報".into()),
                code: Some(CodeableConcept::coding(
                    Coding::new(crate::document::SECTION_SYSTEM, crate::document::RECIPIENT_SECTION)
                        .with_display("紹介先情報"),
                )),
                text: Some(narrative(
                    &[name, doc.recipient_person.clone()].into_iter().flatten().collect::<Vec<_>>().join("\n"),
                )),
                entry: vec![r],
                ..Default::default()
            });
        }
    }
    t.resources.insert(0, Resource::Composition(composition));
    t.resources = t.resources.into_iter().map(|r| ctx.own(r)).collect();
    t
}

/// Parse CDA bytes and translate them, pure.
pub fn translate_bytes(
    bytes: &[u8],
    options: &kakehashi_adapters::ParseOptions,
    ctx: &Context,
) -> Result<Translation, kakehashi_adapters::SourceError> {
    let doc = kakehashi_adapters::cda::parse(bytes, options)?;
    Ok(translate(&doc, ctx))
}
