//! CapabilityStatement: what the server actually implements.

use crate::CodeableConcept;
use serde::{Deserialize, Serialize};

/// A FHIR CapabilityStatement (kind `instance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "resourceType", rename = "CapabilityStatement", rename_all = "camelCase")]
pub struct CapabilityStatement {
    pub status: String,
    pub date: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software: Option<Software>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub implementation: Option<Implementation>,
    pub fhir_version: String,
    pub format: Vec<String>,
    pub rest: Vec<Rest>,
}

/// The software that provides the capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Software {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The specific instance described.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Implementation {
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One RESTful endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rest {
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub documentation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<RestSecurity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource: Vec<RestResource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interaction: Vec<Interaction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operation: Vec<Operation>,
}

/// How the endpoint is secured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestSecurity {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service: Vec<CodeableConcept>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A resource type served, with its interactions and search parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestResource {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interaction: Vec<Interaction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_param: Vec<SearchParam>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operation: Vec<Operation>,
}

/// A RESTful interaction (`read`, `search-type`, `transaction` ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub code: String,
}

/// A search parameter the server supports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchParam {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub documentation: Option<String>,
}

/// An operation the server supports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub name: String,
    pub definition: String,
}
