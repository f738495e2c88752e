//! Serde types for the FHIR R4 (4.0.1) resources Kakehashi emits and accepts.
//!
//! Only the elements Kakehashi reads or writes are modelled; the types are kept in
//! their own crate so their compile is cached apart from the gateway.

pub mod capability;
pub mod datatypes;
pub mod outcome;
pub mod resources;

pub use capability::CapabilityStatement;
pub use datatypes::*;
pub use outcome::{IssueSeverity, IssueType, OperationOutcome, OperationOutcomeIssue};
pub use resources::*;

/// The FHIR version every resource Kakehashi emits conforms to.
pub const FHIR_VERSION: &str = "4.0.1";

/// The media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_round_trip_with_resource_type_and_renamed_keys() {
        let json = serde_json::json!({
            "resourceType": "Coverage",
            "id": "c1",
            "status": "active",
            "beneficiary": {"reference": "Patient/p1"},
            "class": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "group"}]}, "value": "黒島"}],
            "identifier": [{"use": "official", "system": "urn:oid:1.2.392.100495.20.3.61", "value": "67461001"}]
        });
        let r: Resource = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(r.type_name(), "Coverage");
        assert_eq!(r.id(), Some("c1"));
        assert_eq!(serde_json::to_value(&r).unwrap(), json);
    }
}
