//! Serde types for the FHIR R4 (4.0.1) resources Kakehashi emits and accepts.
//!
//! Only the elements Kakehashi reads or writes are modelled; the types are kept in
//! their own crate so their compile is cached apart from the gateway.

pub mod capability;
pub mod datatypes;
pub mod outcome;

pub use capability::CapabilityStatement;
pub use datatypes::*;
pub use outcome::{IssueSeverity, IssueType, OperationOutcome, OperationOutcomeIssue};

/// The FHIR version every resource Kakehashi emits conforms to.
pub const FHIR_VERSION: &str = "4.0.1";

/// The media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";
