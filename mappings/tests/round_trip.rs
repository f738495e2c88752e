//! FHIR document → MML 4 → FHIR and FHIR → CDA R2 → FHIR keep every mapped element:
//! the patient's name, birth date and sex; the document's title and date; every
//! narrative section (title and text); and the problems, allergies and medications.

use kakehashi_adapters::ParseOptions;
use kakehashi_fhir::{Bundle, Resource};
use kakehashi_mappings::document::DocumentView;
use kakehashi_mappings::export::{self, concept_text};
use kakehashi_mappings::Context;
use std::collections::BTreeSet;

#[derive(Debug, PartialEq)]
struct Mapped {
    patient: (Option<String>, Option<String>, BTreeSet<String>),
    document: (String, String),
    sections: BTreeSet<(String, String)>,
    problems: BTreeSet<String>,
    allergies: BTreeSet<String>,
    medications: BTreeSet<String>,
}

fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn project(resources: &[&Resource], sections_of: &[(Option<String>, String, Option<String>)]) -> Mapped {
    let mut m = Mapped {
        patient: (None, None, BTreeSet::new()),
        document: (String::new(), String::new()),
        sections: BTreeSet::new(),
        problems: BTreeSet::new(),
        allergies: BTreeSet::new(),
        medications: BTreeSet::new(),
    };
    for r in resources {
        match r {
            Resource::Patient(p) => {
                let names = p
                    .name
                    .iter()
                    .map(|n| {
                        norm(&n.text.clone().unwrap_or_else(|| {
                            format!("{} {}", n.family.clone().unwrap_or_default(), n.given.join(" "))
                        }))
                    })
                    .collect();
                m.patient = (p.birth_date.clone(), p.gender.clone(), names);
            }
            Resource::Composition(c) => m.document = (c.title.clone(), c.date[..10].to_string()),
            Resource::Condition(c) => {
                m.problems.insert(norm(&c.code.as_ref().map(concept_text).unwrap_or_default()));
            }
            Resource::AllergyIntolerance(a) => {
                m.allergies.insert(norm(&a.code.as_ref().map(concept_text).unwrap_or_default()));
            }
            Resource::MedicationRequest(x) => {
                m.medications
                    .insert(norm(&x.medication_codeable_concept.as_ref().map(concept_text).unwrap_or_default()));
            }
            _ => {}
        }
    }
    for (code, text, title) in sections_of {
        let skip = matches!(code.as_deref(), Some("910" | "920" | "300"));
        if !skip && !text.is_empty() && title.as_deref() != Some("含まれる記録") {
            m.sections.insert((title.clone().unwrap_or_default(), norm(text)));
        }
    }
    m
}

fn sections(bundle: &Bundle) -> Vec<(Option<String>, String, Option<String>)> {
    let view = DocumentView::new(bundle).expect("document");
    view.sections().into_iter().map(|s| (s.code, s.text, s.title)).collect()
}

fn resources(bundle: &Bundle) -> Vec<&Resource> {
    bundle.entry.iter().filter_map(|e| e.resource.as_deref()).collect()
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

fn round_trip(original: &Bundle) {
    let view = DocumentView::new(original).expect("original is a document");
    let before = project(&resources(original), &sections(original));
    let ctx =
        Context { owner: "4610100011".into(), owner_name: "hub".into(), site: "rt".into(), source_key: "rt".into() };

    let mml = export::mml::to_mml(&view);
    let label = view.composition.id.clone().unwrap_or_default();
    schema_valid(&format!("{label}.mml.xml"), &mml, "mml/schema/mml.xsd");
    let back = kakehashi_mappings::mml::translate_bytes(mml.as_bytes(), &ParseOptions::default(), &ctx)
        .expect("MML reads back");
    // Modules come back in document order; the Referral/Summary Composition is inside.
    let mut resources_back = back.resources.clone();
    let comp_at = resources_back.iter().position(|r| matches!(r, Resource::Composition(_))).expect("composition");
    let comp = resources_back.remove(comp_at);
    resources_back.insert(0, comp);
    let mml_doc = as_document(kakehashi_mappings::Translation { resources: resources_back, warnings: back.warnings });
    let after_mml = project(&resources(&mml_doc), &sections(&mml_doc));
    assert_eq!(after_mml, before, "MML round trip\n{mml}");

    let cda = export::cda::to_cda(&view);
    schema_valid(&format!("{label}.cda.xml"), &cda, "cda/schema/infrastructure/cda/CDA_SDTC.xsd");
    let back = kakehashi_mappings::cda::translate_bytes(cda.as_bytes(), &ParseOptions::default(), &ctx)
        .expect("CDA reads back");
    let cda_doc = as_document(back);
    let after_cda = project(&resources(&cda_doc), &sections(&cda_doc));
    assert_eq!(after_cda, before, "CDA round trip\n{cda}");
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
