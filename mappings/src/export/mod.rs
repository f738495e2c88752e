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

/// A JP-CLINS section code, the element that holds it in an MML ReferralModule and in
/// a SummaryModule (empty: none, the section travels in `remarks` as a `【title】`
/// block), and its title.
pub struct Section {
    /// JP-CLINS section code.
    pub code: &'static str,
    /// ReferralModule element.
    pub referral: &'static str,
    /// SummaryModule element.
    pub summary: &'static str,
    /// Section title.
    pub title: &'static str,
}

/// The JP-CLINS sections MML has elements for.
pub const SECTIONS: &[Section] = &[
    Section { code: "950", referral: "referPurpose", summary: "", title: "紹介目的" },
    Section { code: "340", referral: "clinicalDiagnosis", summary: "chiefComplaints", title: "傷病名・主訴" },
    Section { code: "360", referral: "presentIllness", summary: "history", title: "現病歴" },
    Section { code: "370", referral: "pastHistory", summary: "", title: "既往歴" },
    Section { code: "550", referral: "familyHistory", summary: "", title: "家族歴" },
    Section { code: "330", referral: "clinicalCourse", summary: "clinicalCourse", title: "臨床経過" },
    Section { code: "610", referral: "", summary: "physicalExam", title: "身体所見" },
    Section { code: "620", referral: "testResults", summary: "testResults", title: "検査結果" },
    Section { code: "440", referral: "medication", summary: "medication", title: "投薬指示" },
    Section { code: "510", referral: "", summary: "", title: "アレルギー・不耐性反応" },
];

/// The section an MML element of a Referral or Summary module holds.
pub fn section_of_element(element: &str) -> Option<&'static Section> {
    SECTIONS.iter().find(|s| !element.is_empty() && (s.referral == element || s.summary == element))
}

/// Whether a document carries this resource as a structured entry (written as an entry
/// of CDA and as a module of MML, and read back as one).
pub fn is_structured_entry(r: &Resource) -> bool {
    matches!(
        r,
        Resource::Condition(_)
            | Resource::AllergyIntolerance(_)
            | Resource::MedicationRequest(_)
            | Resource::Observation(_)
    )
}

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
        .filter(|r| is_structured_entry(r))
        // The same resource listed in two sections is one entry (resources in a
        // document need not have ids, so identity is the resource itself).
        .filter(|r| seen.insert(std::ptr::from_ref::<Resource>(r)))
        .collect()
}

/// When a MedicationRequest's course starts (JP Core's period of use), if given.
pub fn course_start(x: &kakehashi_fhir::MedicationRequest) -> Option<String> {
    x.dosage_instruction.first()?.extension.iter().find_map(|e| e.value_period.as_ref().and_then(|p| p.start.clone()))
}

/// A MedicationRequest's days of supply: the dispense request's, else the timing's
/// bounds, when counted in days.
pub fn supply_days(x: &kakehashi_fhir::MedicationRequest) -> Option<f64> {
    x.dispense_request
        .as_ref()
        .and_then(|d| d.expected_supply_duration.as_ref())
        .or_else(|| {
            x.dosage_instruction
                .first()
                .and_then(|d| d.timing.as_ref())
                .and_then(|t| t.repeat.as_ref())
                .and_then(|r| r.bounds_duration.as_ref())
        })
        .filter(|q| q.code.as_deref().unwrap_or("d") == "d")
        .and_then(|q| q.value)
}
