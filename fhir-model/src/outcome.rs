//! OperationOutcome: the one shape every error takes over HTTP.

use crate::CodeableConcept;
use serde::{Deserialize, Serialize};

/// How bad an issue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssueSeverity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// The FHIR `issue-type` code (http://hl7.org/fhir/issue-type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Unknown,
    Expired,
    Forbidden,
    Suppressed,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    CodeInvalid,
    Extension,
    TooCostly,
    BusinessRule,
    Conflict,
    Transient,
    LockError,
    NoStore,
    Exception,
    Timeout,
    Incomplete,
    Throttled,
    Informational,
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationOutcomeIssue {
    pub severity: IssueSeverity,
    pub code: IssueType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<CodeableConcept>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

/// A collection of error, warning or information messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "resourceType", rename = "OperationOutcome")]
pub struct OperationOutcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<crate::Meta>,
    pub issue: Vec<OperationOutcomeIssue>,
}

impl OperationOutcome {
    /// An outcome with a single error issue.
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self::single(IssueSeverity::Error, code, diagnostics, None)
    }

    /// An outcome with one issue, optionally located by a FHIRPath expression.
    pub fn single(
        severity: IssueSeverity,
        code: IssueType,
        diagnostics: impl Into<String>,
        expression: Option<String>,
    ) -> Self {
        OperationOutcome {
            id: None,
            meta: None,
            issue: vec![OperationOutcomeIssue {
                severity,
                code,
                details: None,
                diagnostics: Some(diagnostics.into()),
                expression: expression.into_iter().collect(),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_with_resource_type_and_kebab_codes() {
        let oo =
            OperationOutcome::single(IssueSeverity::Error, IssueType::NotSupported, "no", Some("Patient.name".into()));
        let v = serde_json::to_value(&oo).unwrap();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["code"], "not-supported");
        assert_eq!(v["issue"][0]["expression"][0], "Patient.name");
        let back: OperationOutcome = serde_json::from_value(v).unwrap();
        assert_eq!(back, oo);
    }
}
