//! JAHIS prescription CSV to FHIR R4 / JP Core, shaped like the JP e-prescription
//! document: a Composition (処方箋) first, then Patient, Coverage (insurance and public
//! funding), Organization (issuer), Practitioner (prescriber) and one MedicationRequest
//! per drug with dosageInstruction and dispenseRequest.

use crate::codes;
use crate::hl7v2::ascii_fold;
use crate::{Context, Translation};
use kakehashi_adapters::jahis_rx::{Drug, Prescription, Rp};
use kakehashi_fhir::*;

const YJ: &str = "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code";
const GENERIC: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationGeneralOrderCode";
/// レセプト電算処理システム医薬品コード (MHLW e-prescription CDA table 15; JP Core
/// lists no URL form yet).
const RECEIPT: &str = "urn:oid:1.2.392.100495.20.2.71";
/// 薬価基準収載医薬品コード (MHLW table, no URL form yet).
const DRUG_PRICE_LIST: &str = "urn:oid:1.2.392.100495.20.2.72";
/// 保険種別コード (JP Core).
const INSURANCE_KIND: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/InsuranceMajorCategory";
/// 剤形区分コード (JP Core; MHLW table 3, the same codes as JAHIS).
const MEDICATION_FORM: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationForm";
/// 診療科コード (MHLW table 10, as the JP e-prescription profiles name it).
const DEPARTMENT: &str = "urn:oid:1.2.392.100495.20.2.51";
const USAGE_EPRESCRIPTION: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUsage_ePrescription";
const SUBSTITUTION: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationSubstitutionProhibittedCategory";
const JP_COVERAGE_EXT: &str = "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPerson";

fn reference(ty: &str, id: &Option<String>) -> Reference {
    Reference { reference: id.as_ref().map(|i| format!("{ty}/{i}")), ..Default::default() }
}

fn date(v: &str, at: &str, t: &mut Translation) -> Option<String> {
    match crate::datetime::date(v) {
        Ok(d) => Some(d),
        Err(e) => {
            if !v.is_empty() {
                t.warn(at, e.to_string());
            }
            None
        }
    }
}

fn number(v: &str) -> Option<f64> {
    ascii_fold(v).parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Translate one prescription.
pub fn translate(p: &Prescription, ctx: &Context) -> Translation {
    let mut t = Translation::default();
    let issuer = p.institution.code10();
    if issuer != ctx.owner {
        t.warn(
            "record 1",
            format!("the prescription names institution {issuer}; the record's boundary owner is {}", ctx.owner),
        );
    }
    for (line, rec) in &p.unknown_records {
        t.warn(format!("line {line}"), format!("record {rec} is not mapped"));
    }
    let key = p
        .number
        .clone()
        .unwrap_or_else(|| format!("{}:{}:{}", p.issued, p.patient.code.clone().unwrap_or_default(), p.patient.kanji));
    let id = |ty: &str, part: &str| Some(ctx.id_for(ty, &format!("{key}:{part}")));
    let patient_key = p
        .patient
        .code
        .clone()
        .unwrap_or_else(|| format!("{}:{}", p.patient.kanji, p.patient.birth.clone().unwrap_or_default()));
    let patient_id = Some(ctx.id_for("Patient", &patient_key));
    let org_id = Some(ctx.id_for("Organization", &issuer));
    let pract_id = p.doctor.as_ref().map(|d| {
        ctx.id_for("Practitioner", &format!("{issuer}:{}", d.code.clone().unwrap_or_else(|| d.kanji.clone())))
    });

    // Patient.
    let mut patient = Patient {
        id: patient_id.clone(),
        identifier: p
            .patient
            .code
            .iter()
            .map(|c| Identifier {
                system: Some(codes::patient_id_system(&issuer)),
                value: Some(c.clone()),
                ..Default::default()
            })
            .collect(),
        gender: p.patient.sex.as_deref().map(|s| {
            match s {
                "1" => "male",
                "2" => "female",
                _ => "unknown",
            }
            .to_string()
        }),
        birth_date: p.patient.birth.as_deref().and_then(|b| date(b, "record 13", &mut t)),
        ..Default::default()
    };
    for (name, repr) in [(Some(p.patient.kanji.clone()), "IDE"), (p.patient.kana.clone(), "SYL")] {
        let Some(name) = name.filter(|n| !n.trim().is_empty()) else { continue };
        let (family, given) = match name.split_once(['　', ' ']) {
            Some((f, g)) => (Some(f.trim().to_string()), vec![g.trim().to_string()]),
            None => (None, vec![]),
        };
        patient.name.push(HumanName {
            extension: vec![codes::name_representation(repr)],
            use_: Some("official".into()),
            text: Some(name.clone()),
            family,
            given,
            ..Default::default()
        });
    }

    // Issuer and prescriber.
    let org = Organization {
        id: org_id.clone(),
        identifier: vec![Identifier {
            system: Some(codes::INSTITUTION_NUMBER.into()),
            value: Some(issuer.clone()),
            ..Default::default()
        }],
        name: Some(p.institution.name.clone()),
        telecom: [("phone", &p.institution.phone), ("fax", &p.institution.fax)]
            .iter()
            .filter_map(|(s, v)| {
                v.as_ref().map(|v| ContactPoint {
                    system: Some((*s).into()),
                    value: Some(v.clone()),
                    use_: Some("work".into()),
                    rank: None,
                })
            })
            .collect(),
        address: p
            .institution
            .address
            .iter()
            .map(|a| kakehashi_fhir::Address {
                text: Some(a.clone()),
                postal_code: p.institution.zip.clone(),
                country: Some("JPN".into()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    // Record 4: the prescribing department, an Organization within the issuer (as the
    // JP e-prescription and eReferral profiles model it).
    let department = (p.institution.department.is_some() || p.institution.department_code.is_some()).then(|| {
        let mut type_ = vec![CodeableConcept::coding(
            Coding::new("http://terminology.hl7.org/CodeSystem/organization-type", "dept")
                .with_display("Hospital Department"),
        )];
        match &p.institution.department_code {
            Some((kind, code)) if kind == "1" => type_.push(CodeableConcept::coding(
                Coding::new(DEPARTMENT, code.clone())
                    .with_display(p.institution.department.clone().unwrap_or_default()),
            )),
            Some((kind, code)) => {
                t.warn(
                    "record 4",
                    format!("department code kind `{kind}` is not the MHLW table; code `{code}` kept as local"),
                );
                type_.push(CodeableConcept::coding(Coding::new(
                    codes::local_system(&ctx.owner, &format!("jahis-department-{kind}")),
                    code.clone(),
                )));
            }
            None => {}
        }
        Organization {
            id: Some(ctx.id_for(
                "Organization",
                &format!(
                        "{issuer}:dept:{}",
                        p.institution
                            .department_code
                            .as_ref()
                            .map(|(_, c)| c.clone())
                            .or_else(|| p.institution.department.clone())
                            .unwrap_or_default()
                    ),
            )),
            type_,
            name: p.institution.department.clone(),
            part_of: Some(reference("Organization", &org_id)),
            ..Default::default()
        }
    });
    let practitioner = p.doctor.as_ref().map(|d| Practitioner {
        id: pract_id.clone(),
        identifier: d
            .code
            .iter()
            .map(|c| Identifier {
                system: Some(format!("urn:oid:1.2.392.100495.20.3.41.1{issuer}")),
                value: Some(c.clone()),
                ..Default::default()
            })
            .collect(),
        name: [(Some(d.kanji.clone()), "IDE"), (d.kana.clone(), "SYL")]
            .into_iter()
            .filter_map(|(n, r)| {
                let n = n.filter(|n| !n.trim().is_empty())?;
                Some(HumanName { extension: vec![codes::name_representation(r)], text: Some(n), ..Default::default() })
            })
            .collect(),
        ..Default::default()
    });

    // Insurance and public funding.
    let mut coverages = Vec::new();
    if let Some(insurer) = &p.insurance.insurer {
        let ins = &p.insurance;
        let member = format!(
            "{}:{}:{}:{}",
            ascii_fold(insurer),
            ascii_fold(ins.symbol.as_deref().unwrap_or("")),
            ascii_fold(ins.number.as_deref().unwrap_or("")),
            ascii_fold(ins.branch.as_deref().unwrap_or(""))
        );
        coverages.push(Coverage {
            id: id("Coverage", "insurance"),
            extension: [("Symbol", &ins.symbol), ("Number", &ins.number), ("SubNumber", &ins.branch)]
                .iter()
                .filter_map(|(s, v)| {
                    v.as_ref().map(|v| Extension {
                        url: format!("{JP_COVERAGE_EXT}{s}"),
                        value_string: Some(v.clone()),
                        ..Default::default()
                    })
                })
                .collect(),
            identifier: vec![Identifier {
                system: Some(codes::INSURANCE_MEMBER_ID.into()),
                value: Some(member.trim_end_matches(':').to_string()),
                ..Default::default()
            }],
            status: "active".into(),
            type_: ins.kind.as_ref().map(|k| CodeableConcept::coding(Coding::new(INSURANCE_KIND, k.clone()))),
            subscriber_id: ins.number.as_deref().map(ascii_fold),
            beneficiary: reference("Patient", &patient_id),
            relationship: ins.insured_class.as_deref().map(|c| {
                let (code, d) = if c == "1" { ("self", "被保険者") } else { ("other", "被扶養者") };
                CodeableConcept::coding(
                    Coding::new("http://terminology.hl7.org/CodeSystem/subscriber-relationship", code).with_display(d),
                )
            }),
            payor: vec![Reference {
                identifier: Some(Identifier {
                    system: Some(codes::INSURER_NUMBER.into()),
                    value: Some(ascii_fold(insurer)),
                    ..Default::default()
                }),
                type_: Some("Organization".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    for f in &p.public {
        coverages.push(Coverage {
            id: id("Coverage", &format!("public{}", f.record)),
            status: "active".into(),
            type_: Some(CodeableConcept::text(match f.record {
                27 => "第一公費",
                28 => "第二公費",
                29 => "第三公費",
                _ => "特殊公費",
            })),
            subscriber_id: f.recipient.clone(),
            beneficiary: reference("Patient", &patient_id),
            payor: vec![Reference {
                identifier: Some(Identifier {
                    system: Some("urn:oid:1.2.392.100495.20.3.71".into()),
                    value: Some(f.payer.clone()),
                    ..Default::default()
                }),
                type_: Some("Organization".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
    }

    // One MedicationRequest per drug.
    let authored = date(&p.issued, "record 51", &mut t);
    let mut requests = Vec::new();
    for rp in &p.rps {
        for d in &rp.drugs {
            requests.push(request(p, rp, d, &key, ctx, &patient_id, &pract_id, &coverages, authored.clone(), &mut t));
        }
    }

    let mut composition = Composition {
        id: id("Composition", "document"),
        identifier: p.number.as_ref().map(|n| Identifier {
            system: Some(codes::local_system(&ctx.owner, "prescription-number")),
            value: Some(n.clone()),
            ..Default::default()
        }),
        status: "final".into(),
        type_: CodeableConcept::coding(
            Coding::new("http://loinc.org", "57833-6").with_display("Prescription for medication"),
        ),
        subject: Some(reference("Patient", &patient_id)),
        date: authored.clone().unwrap_or_else(|| "1970-01-01".into()),
        // The prescriber and the department they prescribe for (within the issuer),
        // else the issuer.
        author: pract_id
            .as_ref()
            .map(|_| reference("Practitioner", &pract_id))
            .into_iter()
            .chain(std::iter::once(match &department {
                Some(d) => reference("Organization", &d.id),
                None => reference("Organization", &org_id),
            }))
            .collect(),
        title: "処方箋".into(),
        custodian: Some(reference("Organization", &org_id)),
        section: vec![CompositionSection {
            title: Some("処方指示".into()),
            code: Some(CodeableConcept::coding(
                Coding::new("http://jpfhir.jp/fhir/ePrescription/CodeSystem/document-section", "01")
                    .with_display("処方指示ヘッダ"),
            )),
            text: Some(Narrative {
                status: "generated".into(),
                div: format!(
                    "<div xmlns=\"http://www.w3.org/1999/xhtml\">{} drugs in {} RPs</div>",
                    requests.len(),
                    p.rps.len()
                ),
            }),
            entry: requests.iter().map(|r: &MedicationRequest| reference("MedicationRequest", &r.id)).collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    if authored.is_none() {
        t.warn("record 51", "issue date unusable; the Composition's date falls back to 1970-01-01");
    }
    // 備考 (record 81) is the prescription's remarks section (e-prescription section 101).
    if !p.remarks.is_empty() {
        composition.section.push(CompositionSection {
            title: Some("備考".into()),
            code: Some(CodeableConcept::coding(
                Coding::new("http://jpfhir.jp/fhir/ePrescription/CodeSystem/document-section", "101")
                    .with_display("備考情報"),
            )),
            text: Some(crate::document::narrative(&p.remarks.join("\n"))),
            ..Default::default()
        });
    }
    // What the FHIR document has no element for is named, never dropped silently.
    for (record, what, value) in [
        ("record 14", "一部負担区分", p.patient.burden.as_ref()),
        ("record 24", "患者負担率", p.insurance.patient_rate.as_ref()),
        ("records 60-61", "麻薬施用者免許番号", p.narcotic_license.as_ref()),
    ] {
        if let Some(v) = value {
            t.warn(record, format!("{what} `{v}` is not mapped"));
        }
    }
    for d in p.rps.iter().flat_map(|rp| rp.drugs.iter()) {
        if let Some(c) = &d.conversion {
            t.warn(format!("line {}", d.line), format!("単位変換係数 (record 211) `{c}` is not mapped"));
        }
    }
    t.resources.push(Resource::Composition(composition));
    t.resources.push(Resource::Patient(patient));
    t.resources.push(Resource::Organization(org));
    if let Some(d) = department {
        t.resources.push(Resource::Organization(d));
    }
    if let Some(pr) = practitioner {
        t.resources.push(Resource::Practitioner(pr));
    }
    t.resources.extend(coverages.into_iter().map(Resource::Coverage));
    t.resources.extend(requests.into_iter().map(Resource::MedicationRequest));
    t.resources = t.resources.into_iter().map(|r| ctx.own(r)).collect();
    t
}

#[allow(clippy::too_many_arguments)]
fn request(
    p: &Prescription,
    rp: &Rp,
    d: &Drug,
    key: &str,
    ctx: &Context,
    patient_id: &Option<String>,
    pract_id: &Option<String>,
    coverages: &[Coverage],
    authored: Option<String>,
    t: &mut Translation,
) -> MedicationRequest {
    let at = format!("line {}", d.line);
    let mut medication = CodeableConcept::text(d.name.clone());
    if let Some(code) = &d.code {
        let system = match d.code_type.as_deref() {
            Some("2") => RECEIPT.to_string(),
            Some("3") => DRUG_PRICE_LIST.into(),
            Some("4") => YJ.into(),
            Some("6") => "urn:oid:1.2.392.200119.4.403.1".into(),
            Some("7") => GENERIC.into(),
            other => {
                t.warn(&at, format!("drug code type `{}` is unknown; code kept as local", other.unwrap_or("")));
                codes::local_system(&ctx.owner, "jahis-drug")
            }
        };
        medication.coding.push(Coding::new(system, code.clone()).with_display(d.name.clone()));
    }
    let amount = number(&d.amount);
    if amount.is_none() {
        t.warn(&at, format!("分量 `{}` is not a number", d.amount));
    }
    let unit = d.unit.clone();
    let form = rp.form.as_str();
    let mut dosage = Dosage { text: rp.usage.as_ref().map(|u| u.name.clone()), ..Default::default() };
    if let Some(u) = &rp.usage {
        let mut cc = CodeableConcept::text(u.name.clone());
        if let Some(code) = &u.code {
            let system = if code.len() == 16 {
                USAGE_EPRESCRIPTION.to_string()
            } else {
                codes::local_system(&ctx.owner, "jahis-usage")
            };
            cc.coding.push(Coding::new(system, code.clone()).with_display(u.name.clone()));
        }
        let times = u.times_per_day.as_deref().and_then(|x| x.parse::<u32>().ok()).filter(|n| *n > 0);
        dosage.timing = Some(Timing {
            code: Some(cc),
            repeat: times.map(|n| TimingRepeat {
                frequency: Some(n),
                period: Some(1.0),
                period_unit: Some("d".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    dosage.additional_instruction =
        rp.usage_notes.iter().map(|(_, text)| CodeableConcept::text(text.clone())).collect();
    let q = |v: f64| Quantity { value: Some(v), unit: unit.clone(), ..Default::default() };
    if let Some(v) = amount {
        // 内服 (1) and 内服滴剤 (4) give the daily amount; the others one dose.
        let dr = if matches!(form, "1" | "4") {
            DoseAndRate {
                type_: Some(CodeableConcept::coding(
                    // 力価フラグ: 1 製剤量 (the default), 2 原薬量.
                    {
                        let potency =
                            if d.potency.as_deref() == Some("2") { ("2", "原薬量") } else { ("1", "製剤量") };
                        Coding::new(
                            "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationIngredientStrengthStrengthType",
                            potency.0,
                        )
                        .with_display(potency.1)
                    },
                )),
                rate_ratio: Some(Ratio {
                    numerator: Some(q(v)),
                    denominator: Some(Quantity {
                        value: Some(1.0),
                        unit: Some("日".into()),
                        system: Some("http://unitsofmeasure.org".into()),
                        code: Some("d".into()),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }
        } else {
            DoseAndRate { dose_quantity: Some(q(v)), ..Default::default() }
        };
        dosage.dose_and_rate.push(dr);
    }
    if let Some((single, times)) = &d.single_dose {
        dosage.additional_instruction.push(CodeableConcept::text(format!(
            "1回量 {single}{} {}",
            unit.clone().unwrap_or_default(),
            times.as_ref().map(|t| format!("1日{t}回")).unwrap_or_default()
        )));
    }
    if !d.uneven.is_empty() {
        let parts: Vec<String> = d
            .uneven
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{}回目 {v}{}", i + 1, unit.clone().unwrap_or_default()))
            .collect();
        dosage.additional_instruction.push(CodeableConcept::text(format!("不均等: {}", parts.join("、"))));
    }
    let days = number(&rp.quantity);
    let dispense = DispenseRequest {
        validity_period: p
            .expires
            .as_deref()
            .and_then(|e| crate::datetime::date(e).ok())
            .map(|end| Period { start: authored.clone(), end: Some(end) }),
        quantity: match (amount, days) {
            (Some(a), Some(n)) if matches!(form, "1" | "4") => Some(q(a * n)),
            (Some(a), Some(n)) if form == "2" => Some(q(a * n)),
            (Some(a), _) => Some(q(a)),
            _ => None,
        },
        expected_supply_duration: days.filter(|_| matches!(form, "1" | "4")).map(|n| Quantity {
            value: Some(n),
            unit: Some("日".into()),
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("d".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let no_substitution =
        d.notes.iter().find(|(class, text)| class.as_deref() == Some("3") || text.contains("後発品変更不可"));
    let mut identifier = vec![
        Identifier { system: Some(codes::RP_NUMBER.into()), value: Some(rp.no.clone()), ..Default::default() },
        Identifier {
            system: Some("http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicationAdministrationIndex".into()),
            value: Some(d.seq.clone()),
            ..Default::default()
        },
    ];
    if let Some(n) = &p.number {
        identifier.insert(
            0,
            Identifier {
                system: Some(codes::local_system(&ctx.owner, "prescription-number")),
                value: Some(n.clone()),
                ..Default::default()
            },
        );
    }
    MedicationRequest {
        id: Some(ctx.id_for("MedicationRequest", &format!("{key}:{}:{}", rp.no, d.seq))),
        identifier,
        status: "active".into(),
        intent: "order".into(),
        category: vec![{
            let display = match form {
                "1" => "内服",
                "2" => "頓服",
                "3" => "外用",
                "4" => "内服滴剤",
                "5" => "注射",
                "6" => "医療材料",
                "9" => "その他",
                _ => "不明",
            };
            // The form on its public code system when it is one of the table's codes.
            let mut cc = CodeableConcept::text(rp.form_name.clone().unwrap_or_else(|| display.into()));
            if matches!(form, "1" | "2" | "3" | "4" | "5" | "6" | "9") {
                cc.coding.push(Coding::new(MEDICATION_FORM, form).with_display(display));
            } else {
                t.warn(&at, format!("剤形区分 `{form}` is not a code of the MHLW table; kept as text"));
            }
            cc
        }],
        medication_codeable_concept: Some(medication),
        subject: reference("Patient", patient_id),
        authored_on: authored,
        requester: pract_id.as_ref().map(|_| reference("Practitioner", pract_id)),
        dosage_instruction: vec![dosage],
        dispense_request: Some(dispense),
        substitution: no_substitution.map(|_| MedicationRequestSubstitution {
            allowed_boolean: Some(false),
            reason: Some(CodeableConcept::coding(Coding::new(SUBSTITUTION, "1").with_display("後発品変更不可"))),
            ..Default::default()
        }),
        note: d
            .notes
            .iter()
            .filter(|(class, _)| class.as_deref() != Some("3"))
            .map(|(_, text)| Annotation { text: text.clone(), ..Default::default() })
            .collect(),
        insurance: coverages.iter().map(|c| reference("Coverage", &c.id)).collect(),
        ..Default::default()
    }
}

/// Parse JAHIS bytes and translate them, pure.
pub fn translate_bytes(
    bytes: &[u8],
    options: &kakehashi_adapters::ParseOptions,
    ctx: &Context,
) -> Result<Translation, kakehashi_adapters::SourceError> {
    let p = kakehashi_adapters::jahis_rx::parse(bytes, options)?;
    Ok(translate(&p, ctx))
}
