//! FHIR document → MML 4 → FHIR and FHIR → CDA R2 → FHIR keep every mapped element:
//! the patient's name, birth date and sex; the document's title and date; every
//! narrative section (title and text); and the problems, allergies and medications.

use kakehashi_adapters::ParseOptions;
use kakehashi_fhir::{Bundle, Resource};
use kakehashi_mappings::document::DocumentView;
use kakehashi_mappings::export::{self, concept_text};
use kakehashi_mappings::Context;
use std::collections::BTreeSet;

/// What a document carries, field by field, as comparable values. Each field names a
/// promise of issue 21 item 10; a round trip must give back an equal value.
#[derive(Debug, Clone, PartialEq, Default)]
struct Mapped {
    /// Composition.type (the code: JP-CLINS document type codes are LOINC codes).
    document_type: Option<String>,
    /// Title and date.
    document: (String, String),
    /// Patient: birth date, sex, names.
    patient: (Option<String>, Option<String>, BTreeSet<String>),
    /// Patient: the first identifier's value (the hospital's patient id).
    patient_id: Option<String>,
    /// Patient addresses: text (or the parts), postal code, prefecture, city.
    addresses: BTreeSet<Address>,
    /// Patient telecoms: system and value.
    telecoms: BTreeSet<(String, String)>,
    /// Author people (Practitioner names) and organisations (institution codes).
    author_people: BTreeSet<String>,
    author_organisations: BTreeSet<String>,
    /// Custodian and recipient (JP-CLINS 910) institution codes.
    custodian: Option<String>,
    recipient: Option<String>,
    /// Narrative sections.
    sections: BTreeSet<(String, String)>,
    /// Conditions: text, clinical status, onset.
    problems: BTreeSet<(String, String, Option<String>)>,
    /// Allergies: substance, reactions, onset.
    allergies: BTreeSet<(String, Vec<String>, Option<String>)>,
    /// MedicationRequests, one line each.
    medications: BTreeSet<Medication>,
    /// Results: name, codings, value, unit, time.
    results: BTreeSet<ResultRow>,
}

/// An address: text (or the lines), postal code, prefecture, city.
type Address = (String, Option<String>, Option<String>, Option<String>);
/// A result: name, codings, value, unit, time to the minute.
type ResultRow = (String, Vec<(String, String)>, String, Option<String>, Option<String>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Medication {
    name: String,
    /// Every coding (system, code): HOT9 and YJ both.
    codes: Vec<(String, String)>,
    dose: Option<(String, Option<String>)>,
    /// frequency per period and unit.
    frequency: Option<(u32, String, String)>,
    days: Option<String>,
    rp: Option<String>,
    sig: Option<String>,
}

fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn codings(c: &kakehashi_fhir::CodeableConcept) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> =
        c.coding.iter().filter_map(|x| Some((x.system.clone().unwrap_or_default(), x.code.clone()?))).collect();
    v.sort();
    v
}

fn name_text(n: &kakehashi_fhir::HumanName) -> String {
    norm(&n.text.clone().unwrap_or_else(|| format!("{} {}", n.family.clone().unwrap_or_default(), n.given.join(" "))))
}

/// A date-time to the minute in its written form (time zones are written the same way
/// in and out).
fn minute(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|s| s.chars().take(16).collect())
}

/// The institution code of a reference: the Organization it resolves to, or its
/// logical identifier.
fn institution(doc: &DocumentView<'_>, r: &kakehashi_fhir::Reference) -> Option<String> {
    match doc.resolve(r) {
        Some(Resource::Organization(o)) => kakehashi_mappings::document::institution_code(o),
        _ => r.identifier.as_ref().and_then(|i| i.value.clone()),
    }
}

fn project(bundle: &Bundle) -> Mapped {
    let doc = DocumentView::new(bundle).expect("a document");
    let c = doc.composition;
    let mut m = Mapped {
        document_type: c.type_.coding.first().and_then(|x| x.code.clone()),
        document: (c.title.clone(), c.date[..10].to_string()),
        custodian: c.custodian.as_ref().and_then(|r| institution(&doc, r)),
        recipient: doc.institution_in_section(kakehashi_mappings::document::RECIPIENT_SECTION),
        ..Default::default()
    };
    for a in &c.author {
        match doc.resolve(a) {
            Some(Resource::Practitioner(p)) => {
                m.author_people.extend(p.name.first().map(name_text));
            }
            Some(Resource::Organization(_)) => {
                m.author_organisations.extend(institution(&doc, a));
            }
            _ => {}
        }
    }
    if let Some(p) = doc.patient() {
        m.patient = (p.birth_date.clone(), p.gender.clone(), p.name.iter().map(name_text).collect());
        m.patient_id = p.identifier.first().and_then(|i| i.value.clone());
        m.addresses = p
            .address
            .iter()
            .map(|a| {
                let text = a.text.clone().unwrap_or_else(|| a.line.join(" "));
                (norm(&text), a.postal_code.clone(), a.state.clone(), a.city.clone())
            })
            .collect();
        m.telecoms = p
            .telecom
            .iter()
            .map(|t| (t.system.clone().unwrap_or_default(), t.value.clone().unwrap_or_default()))
            .collect();
    }
    for r in bundle.entry.iter().filter_map(|e| e.resource.as_deref()) {
        match r {
            Resource::Condition(x) => {
                m.problems.insert((
                    norm(&x.code.as_ref().map(concept_text).unwrap_or_default()),
                    x.clinical_status
                        .as_ref()
                        .and_then(|s| s.coding.first())
                        .and_then(|c| c.code.clone())
                        .unwrap_or_default(),
                    x.onset_date_time.clone(),
                ));
            }
            Resource::AllergyIntolerance(a) => {
                m.allergies.insert((
                    norm(&a.code.as_ref().map(concept_text).unwrap_or_default()),
                    // A manifestation of no information (nullFlavor NI) carries nothing.
                    a.reaction
                        .iter()
                        .flat_map(|r| r.manifestation.iter().map(concept_text))
                        .filter(|t| !t.is_empty())
                        .collect(),
                    a.onset_date_time.clone(),
                ));
            }
            Resource::MedicationRequest(x) => {
                let d = x.dosage_instruction.first();
                let repeat = d.and_then(|d| d.timing.as_ref()).and_then(|t| t.repeat.as_ref());
                let concept = x.medication_codeable_concept.as_ref();
                m.medications.insert(Medication {
                    name: norm(&concept.map(concept_text).unwrap_or_default()),
                    codes: concept.map(codings).unwrap_or_default(),
                    dose: d
                        .and_then(|d| d.dose_and_rate.first())
                        .and_then(|q| q.dose_quantity.as_ref())
                        .map(|q| (format!("{}", q.value.unwrap_or_default()), q.unit.clone())),
                    frequency: repeat.and_then(|r| {
                        Some((r.frequency?, format!("{}", r.period?), r.period_unit.clone().unwrap_or_default()))
                    }),
                    days: x
                        .dispense_request
                        .as_ref()
                        .and_then(|d| d.expected_supply_duration.as_ref())
                        .and_then(|q| q.value)
                        .map(|v| format!("{v}")),
                    rp: x
                        .identifier
                        .iter()
                        .find(|i| i.system.as_deref() == Some(kakehashi_mappings::codes::RP_NUMBER))
                        .and_then(|i| i.value.clone()),
                    sig: d.and_then(|d| d.text.clone()),
                });
            }
            Resource::Observation(o) => {
                let value = match (&o.value_quantity, &o.value_codeable_concept, &o.value_string) {
                    (Some(q), _, _) => format!("{}", q.value.unwrap_or_default()),
                    (_, Some(c), _) => concept_text(c),
                    (_, _, Some(s)) => s.clone(),
                    _ => String::new(),
                };
                let unit = o.value_quantity.as_ref().and_then(|q| q.code.clone().or_else(|| q.unit.clone()));
                m.results.insert((
                    norm(&concept_text(&o.code)),
                    codings(&o.code),
                    value,
                    unit,
                    minute(&o.effective_date_time),
                ));
            }
            _ => {}
        }
    }
    for s in doc.sections() {
        let skip = matches!(s.code.as_deref(), Some("910" | "920" | "300"));
        if !skip && !s.text.is_empty() && s.title.as_deref() != Some("含まれる記録") {
            m.sections.insert((s.title.clone().unwrap_or_default(), norm(&s.text)));
        }
    }
    m
}

fn as_document(t: kakehashi_mappings::Translation) -> Bundle {
    // The same shape the CLI and gateway give translated documents.
    let comp_first = matches!(t.resources.first(), Some(Resource::Composition(_)));
    assert!(comp_first, "translation leads with a Composition");
    Bundle {
        type_: "document".into(),
        entry: t
            .resources
            .into_iter()
            .map(|r| kakehashi_fhir::BundleEntry { resource: Some(Box::new(r)), ..Default::default() })
            .collect(),
        ..Default::default()
    }
}

/// An MML translation as a document: modules come back in document order, the
/// Referral/Summary Composition among them.
fn mml_document(back: kakehashi_mappings::Translation) -> Bundle {
    let mut resources = back.resources;
    let at = resources.iter().position(|r| matches!(r, Resource::Composition(_))).expect("composition");
    let comp = resources.remove(at);
    resources.insert(0, comp);
    as_document(kakehashi_mappings::Translation { resources, warnings: back.warnings })
}

/// Validate a document the gateway writes against the real schema with xmllint
/// (libxml2-utils; `scripts/test` installs it when missing).
fn schema_valid(name: &str, xml: &str, schema: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("schema-check");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, xml).unwrap();
    let xsd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus").join(schema);
    let out = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--nonet")
        .arg("--schema")
        .arg(&xsd)
        .arg(&file)
        .output()
        .expect("xmllint (Debian's libxml2-utils) must be installed: scripts/test installs it");
    let err = String::from_utf8_lossy(&out.stderr);
    // The MML schemas import XHTML from the network; without it only the import is skipped.
    let errors: Vec<&str> =
        err.lines().filter(|l| l.contains("validity error") || l.contains("parser error")).collect();
    assert!(out.status.success() && errors.is_empty(), "{name} fails {schema}:\n{}\n{xml}", errors.join("\n"));
}

/// The institution translating in these tests.
const OWNER: &str = "4610100011";

/// What MML 4 can carry of a document, by its schema: diagnosis dates are whole days
/// (`xs:date`), so an onset known to the year or month is not written, and result
/// times are date-times, so a result known to the day is written without; facilities
/// are named by institution code; a document is
/// a referral, a discharge summary or another summary; a prescription has a dose.
/// Everything else must come back.
fn what_mml_carries(m: &Mapped) -> Mapped {
    Mapped {
        problems: m
            .problems
            .iter()
            .map(|(name, status, onset)| (name.clone(), status.clone(), onset.clone().filter(|o| o.len() >= 10)))
            .collect(),
        // A result's time is a date-time in MML: one known to the day or less is not written.
        results: m
            .results
            .iter()
            .map(|(n, c, v, u, t)| (n.clone(), c.clone(), v.clone(), u.clone(), t.clone().filter(|t| t.len() >= 16)))
            .collect(),
        // A module says a referral, a discharge summary or any other summary.
        document_type: m.document_type.clone().map(|t| match t.as_str() {
            "57133-1" | "18842-5" => t,
            _ => "34133-9".to_string(),
        }),
        // A prescription module requires a dose: one without stays in the narrative.
        medications: m.medications.iter().filter(|x| x.dose.is_some()).cloned().collect(),
        // MML names facilities by institution code (MML0027); a document whose custodian
        // has none is read back as held by its owner.
        custodian: m.custodian.clone().or_else(|| Some(OWNER.to_string())),
        ..m.clone()
    }
}

fn round_trip(original: &Bundle) {
    let view = DocumentView::new(original).expect("original is a document");
    let before = project(original);
    let ctx =
        Context { owner: "4610100011".into(), owner_name: "hub".into(), site: "rt".into(), source_key: "rt".into() };

    let label = view.composition.id.clone().unwrap_or_default();
    let cda = export::cda::to_cda(&view);
    schema_valid(&format!("{label}.cda.xml"), &cda, "cda/schema/infrastructure/cda/CDA_SDTC.xsd");
    let back = kakehashi_mappings::cda::translate_bytes(cda.as_bytes(), &ParseOptions::default(), &ctx)
        .expect("CDA reads back");
    let cda_doc = as_document(back);
    let after_cda = project(&cda_doc);
    assert_eq!(after_cda, before, "CDA round trip\n{cda}");
    let mml = export::mml::to_mml(&view);
    schema_valid(&format!("{label}.mml.xml"), &mml, "mml/schema/mml.xsd");
    let back = kakehashi_mappings::mml::translate_bytes(mml.as_bytes(), &ParseOptions::default(), &ctx)
        .expect("MML reads back");
    let mml_doc = mml_document(back);
    let after_mml = project(&mml_doc);
    assert_eq!(after_mml, what_mml_carries(&before), "MML round trip\n{mml}");

    // A third pass changes nothing more, and never writes an empty dosage (`[{}]`).
    for (label, doc, to, back) in [("CDA", &cda_doc, "cda", &after_cda), ("MML", &mml_doc, "mml", &after_mml)] {
        let view = DocumentView::new(doc).expect("a document");
        let again = if to == "cda" {
            let xml = export::cda::to_cda(&view);
            as_document(
                kakehashi_mappings::cda::translate_bytes(xml.as_bytes(), &ParseOptions::default(), &ctx).unwrap(),
            )
        } else {
            let xml = export::mml::to_mml(&view);
            mml_document(
                kakehashi_mappings::mml::translate_bytes(xml.as_bytes(), &ParseOptions::default(), &ctx).unwrap(),
            )
        };
        assert_eq!(&project(&again), back, "{label}: third pass");
        let json = serde_json::to_string(&again).unwrap();
        assert!(!json.contains("\"dosageInstruction\":[{}]"), "{label}: an empty dosage");
    }

    // The document keeps its business identifier: the value as the id extension, under
    // a root derived from the identifier system, the same on every export.
    let id_start = cda.find("<id root=\"2.25.").expect("a ClinicalDocument id under 2.25");
    let id_elem = &cda[id_start..id_start + cda[id_start..].find("/>").unwrap()];
    let business = view.composition.identifier.as_ref().or(view.bundle.identifier.as_ref());
    let value = business.and_then(|i| i.value.as_deref()).expect("the fixture has a business identifier");
    assert!(id_elem.ends_with(&format!("extension=\"{value}\"")), "{id_elem}");
    assert_eq!(export::cda::to_cda(&view), cda);
}

#[test]
fn jp_clins_referral_round_trips_through_mml_and_cda() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/jp-clins-examples/Bundle-Bundle-CLINS-Referral-Example-01.json");
    let text = std::fs::read_to_string(&path).expect("corpus referral example");
    let Resource::Bundle(b) = serde_json::from_str::<Resource>(&text).expect("parses") else { panic!("not a Bundle") };
    round_trip(&b);
}

#[test]
fn discharge_summary_round_trips_through_mml_and_cda() {
    let text = include_str!("fixtures/discharge-summary.json");
    let Resource::Bundle(b) = serde_json::from_str::<Resource>(text).expect("parses") else { panic!("not a Bundle") };
    round_trip(&b);
}

/// C-CDA documents from the corpus read into FHIR, written back as CDA and read again
/// keep every mapped element, results (12-44 Observations a document) included.
#[test]
fn corpus_cda_documents_round_trip_through_fhir() {
    let ctx =
        Context { owner: "4610100011".into(), owner_name: "hub".into(), site: "rt".into(), source_key: "rt".into() };
    for name in ["CCD.xml", "Discharge_Summary.xml", "Referral_Note.xml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/cda").join(name);
        let bytes = std::fs::read(&path).expect("corpus CDA");
        let first = kakehashi_mappings::cda::translate_bytes(&bytes, &ParseOptions::default(), &ctx).expect("reads");
        let bundle = as_document(first);
        let before = project(&bundle);
        assert!(before.results.len() >= 10, "{name}: {} results", before.results.len());
        let view = DocumentView::new(&bundle).expect("a document");
        let cda = export::cda::to_cda(&view);
        schema_valid(name, &cda, "cda/schema/infrastructure/cda/CDA_SDTC.xsd");
        let back = kakehashi_mappings::cda::translate_bytes(cda.as_bytes(), &ParseOptions::default(), &ctx)
            .expect("reads back");
        assert_eq!(project(&as_document(back)), before, "{name}");
        let mml = export::mml::to_mml(&view);
        schema_valid(&format!("{name}.mml.xml"), &mml, "mml/schema/mml.xsd");
        let back = kakehashi_mappings::mml::translate_bytes(mml.as_bytes(), &ParseOptions::default(), &ctx)
            .expect("MML reads back");
        assert_eq!(project(&mml_document(back)), what_mml_carries(&before), "{name} through MML");
    }
}
