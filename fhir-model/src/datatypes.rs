//! FHIR R4 general-purpose data types.

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// A reference to a code defined by a terminology system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coding {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub user_selected: bool,
}

impl Coding {
    /// A coding with a system and code only.
    pub fn new(system: impl Into<String>, code: impl Into<String>) -> Self {
        Coding { system: Some(system.into()), code: Some(code.into()), ..Default::default() }
    }

    /// This coding with a display text.
    pub fn with_display(mut self, display: impl Into<String>) -> Self {
        self.display = Some(display.into());
        self
    }
}

/// A concept given by codings and/or text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CodeableConcept {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coding: Vec<Coding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl CodeableConcept {
    /// A concept of one coding.
    pub fn coding(c: Coding) -> Self {
        CodeableConcept { coding: vec![c], text: None }
    }

    /// A concept given by text alone.
    pub fn text(t: impl Into<String>) -> Self {
        CodeableConcept { coding: vec![], text: Some(t.into()) }
    }
}
