//! Pure mappings from native source models to FHIR R4 resources shaped by JP Core
//! (and back). No I/O: a mapping takes a parsed model and a [`Context`] and returns a
//! [`Translation`]; conformance cases check each rule.

pub mod cda;
pub mod codes;
pub mod datetime;
pub mod document;
pub mod export;
pub mod hl7v2;
pub mod jahis_rx;
pub mod mml;

use kakehashi_fhir::{
    Coding, Identifier, IssueSeverity, IssueType, Meta, OperationOutcome, OperationOutcomeIssue, Reference, Resource,
};

/// Who owns what is being translated, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// 10-digit code of the owning institution (the boundary owner).
    pub owner: String,
    /// Owner's name.
    pub owner_name: String,
    /// Site id the records came from.
    pub site: String,
    /// Stable key of the source within the site (file name, document id ...).
    pub source_key: String,
}

impl Context {
    /// A stable resource id: same owner, type and key give the same id.
    pub fn id_for(&self, resource_type: &str, key: &str) -> String {
        stable_id(&self.owner, resource_type, key)
    }

    /// The owning institution as a logical Organization reference (by 医療機関コード).
    pub fn owner_ref(&self) -> Reference {
        Reference {
            identifier: Some(Identifier {
                system: Some(codes::INSTITUTION_NUMBER.into()),
                value: Some(self.owner.clone()),
                ..Default::default()
            }),
            display: Some(self.owner_name.clone()),
            type_: Some("Organization".into()),
            ..Default::default()
        }
    }

    /// Stamp ownership and provenance on a resource, and drop the empty dosage
    /// instructions a source without dose or timing would leave (`[{}]` is not FHIR).
    pub fn own(&self, mut r: Resource) -> Resource {
        match &mut r {
            Resource::MedicationRequest(m) => m.dosage_instruction.retain(|d| *d != kakehashi_fhir::Dosage::default()),
            Resource::MedicationDispense(m) => m.dosage_instruction.retain(|d| *d != kakehashi_fhir::Dosage::default()),
            _ => {}
        }
        let meta: &mut Meta = r.meta_mut();
        meta.source = Some(format!("urn:kakehashi:site:{}", self.site));
        meta.security.retain(|c| c.system.as_deref() != Some(codes::OWNER_SYSTEM));
        meta.security.push(Coding::new(codes::OWNER_SYSTEM, &self.owner).with_display(&self.owner_name));
        r
    }
}

/// `<type-prefix>-<24 hex of SHA-256(owner|type|key)>`: at most 64 characters of
/// `[A-Za-z0-9-]`, as FHIR ids require, stable across runs and machines.
pub fn stable_id(owner: &str, resource_type: &str, key: &str) -> String {
    let mut input = Vec::with_capacity(owner.len() + resource_type.len() + key.len() + 2);
    input.extend_from_slice(owner.as_bytes());
    input.push(0);
    input.extend_from_slice(resource_type.as_bytes());
    input.push(0);
    input.extend_from_slice(key.as_bytes());
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = resource_type.to_ascii_lowercase();
    id.push('-');
    for b in &d.as_ref()[..12] {
        id.push(HEX[usize::from(b >> 4)] as char);
        id.push(HEX[usize::from(b & 15)] as char);
    }
    id
}

/// The institution owning a resource, as stamped by [`Context::own`].
pub fn owner_of(r: &Resource) -> Option<&str> {
    r.meta()?.security.iter().find(|c| c.system.as_deref() == Some(codes::OWNER_SYSTEM))?.code.as_deref()
}

/// A problem that did not stop the translation.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    /// Where (FHIRPath-like or source location).
    pub location: String,
    /// What.
    pub message: String,
}

/// Resources translated from one source, with warnings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    /// The resources, in a stable order.
    pub resources: Vec<Resource>,
    /// Warnings (unknown code systems, unusable values ...).
    pub warnings: Vec<Warning>,
}

impl Translation {
    /// Record a warning.
    pub fn warn(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning { location: location.into(), message: message.into() });
    }

    /// Warnings as an OperationOutcome, if any.
    pub fn outcome(&self) -> Option<OperationOutcome> {
        (!self.warnings.is_empty()).then(|| OperationOutcome {
            id: None,
            meta: None,
            issue: self
                .warnings
                .iter()
                .map(|w| OperationOutcomeIssue {
                    severity: IssueSeverity::Warning,
                    code: IssueType::Processing,
                    details: None,
                    diagnostics: Some(format!("{}: {}", w.location, w.message)),
                    expression: vec![],
                })
                .collect(),
        })
    }

    /// Append another translation.
    pub fn extend(&mut self, other: Translation) {
        self.resources.extend(other.resources);
        self.warnings.extend(other.warnings);
    }
}

/// Mark what a deleted source became (an SS-MIX2 file whose deletion flag is 0: the
/// order or record was withdrawn) with the status FHIR gives a withdrawn record of its
/// type, and say so in a warning. The patient and insurance are not withdrawn.
pub fn mark_deleted(t: &mut Translation) {
    use kakehashi_fhir::CodeableConcept;
    let error = |system: &str| Some(CodeableConcept::coding(Coding::new(system, "entered-in-error")));
    for r in &mut t.resources {
        match r {
            Resource::MedicationRequest(x) => x.status = "cancelled".into(),
            Resource::MedicationAdministration(x) => x.status = "entered-in-error".into(),
            Resource::MedicationDispense(x) => x.status = "cancelled".into(),
            Resource::ServiceRequest(x) => x.status = "revoked".into(),
            Resource::Observation(x) => x.status = "cancelled".into(),
            Resource::DiagnosticReport(x) => x.status = "cancelled".into(),
            Resource::Immunization(x) => x.status = "entered-in-error".into(),
            Resource::Procedure(x) => x.status = "entered-in-error".into(),
            Resource::Appointment(x) => x.status = "cancelled".into(),
            Resource::Encounter(x) => x.status = "cancelled".into(),
            Resource::DocumentReference(x) => x.status = "entered-in-error".into(),
            Resource::Specimen(x) => x.status = Some("entered-in-error".into()),
            Resource::Condition(x) => {
                x.clinical_status = None;
                x.verification_status = error("http://terminology.hl7.org/CodeSystem/condition-ver-status");
            }
            Resource::AllergyIntolerance(x) => {
                x.clinical_status = None;
                x.verification_status = error("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification");
            }
            _ => {}
        }
    }
    t.warn("file name", "the deletion flag is 0 (取消): the record was withdrawn, and its resources say so");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_dosage_instruction_is_not_written() {
        let ctx =
            Context { owner: "4610100011".into(), owner_name: "x".into(), site: "s".into(), source_key: "k".into() };
        let m = kakehashi_fhir::MedicationRequest {
            dosage_instruction: vec![kakehashi_fhir::Dosage::default()],
            ..Default::default()
        };
        let Resource::MedicationRequest(m) = ctx.own(Resource::MedicationRequest(m)) else { unreachable!() };
        assert!(m.dosage_instruction.is_empty());
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("dosageInstruction"), "{json}");
    }

    #[test]
    fn ids_are_stable_valid_and_distinct() {
        let a = stable_id("0110000001", "Patient", "123");
        assert_eq!(a, stable_id("0110000001", "Patient", "123"));
        assert_ne!(a, stable_id("0110000002", "Patient", "123"));
        assert_ne!(a, stable_id("0110000001", "Patient", "1230"));
        assert!(a.len() <= 64 && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
