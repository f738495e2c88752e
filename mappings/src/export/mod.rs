//! FHIR document Bundles back to the clinics' native formats: MML 4.x (a PatientInfo
//! module, then a Referral or Summary module with the narrative sections, plus
//! RegisteredDiagnosis, Prescription and BaseClinic modules for the structured entries)
//! and CDA R2 (header, one section per section, entries for problems, allergies and
//! medications). Reading either back gives the same mapped elements.

pub mod cda;
pub mod mml;

use crate::document::FlatSection;
use kakehashi_fhir::{CodeableConcept, Resource};

/// XML-escape text and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The display text of a concept.
pub fn concept_text(c: &CodeableConcept) -> String {
    c.text
        .clone()
        .or_else(|| c.coding.iter().find_map(|x| x.display.clone()))
        .or_else(|| c.coding.first().and_then(|x| x.code.clone()))
        .unwrap_or_default()
}

/// JP-CLINS section codes and their MML Referral/Summary elements and titles.
pub const SECTIONS: &[(&str, &str, &str)] = &[
    ("950", "referPurpose", "紹介目的"),
    ("340", "clinicalDiagnosis", "傷病名・主訴"),
    ("360", "presentIllness", "現病歴"),
    ("370", "pastHistory", "既往歴"),
    ("550", "familyHistory", "家族歴"),
    ("330", "clinicalCourse", "臨床経過"),
    ("610", "physicalExam", "身体所見"),
    ("620", "testResults", "検査結果"),
    ("440", "medication", "投薬指示"),
    ("510", "allergy", "アレルギー・不耐性反応"),
];

/// Structured entries of the document's sections, deduplicated, in order.
pub fn entries<'a>(sections: &[FlatSection<'a>]) -> Vec<&'a Resource> {
    let mut seen = std::collections::HashSet::new();
    sections
        .iter()
        .filter(|s| {
            s.code.as_deref() != Some(crate::document::RECIPIENT_SECTION)
                && s.code.as_deref() != Some(crate::document::SENDER_SECTION)
        })
        .flat_map(|s| s.entries.iter().copied())
        .filter(|r| {
            matches!(r, Resource::Condition(_) | Resource::AllergyIntolerance(_) | Resource::MedicationRequest(_))
        })
        .filter(|r| seen.insert(format!("{}/{}", r.type_name(), r.id().unwrap_or(""))))
        .collect()
}
