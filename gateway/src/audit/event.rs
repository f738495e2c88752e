//! Building FHIR AuditEvents (IHE Basic Audit Log Patterns for RESTful operations)
//! from what a request disclosed or refused.

use crate::identity::Principal;
use kakehashi_fhir::*;
use std::sync::Arc;

/// How a disclosure relates to the boundary of what was read.
pub const BOUNDARY_SAME_SITE: &str = "same-site";
/// A read across an owner's boundary.
pub const BOUNDARY_CROSS_SITE: &str = "cross-site";

/// The RESTful interaction audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// `GET [type]/[id]`.
    Read,
    /// `GET [type]?...`.
    Search,
    /// `GET Patient/[id]/$everything`.
    Everything,
    /// `POST` (a pushed document, a grant).
    Create,
    /// `DELETE` (a grant revoked).
    Delete,
    /// Refused before any handler ran (identity step).
    Connect,
}

impl Interaction {
    /// Code in `http://hl7.org/fhir/restful-interaction` (or DICOM for connect).
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Search => "search-type",
            Interaction::Everything => "operation",
            Interaction::Create => "create",
            Interaction::Delete => "delete",
            Interaction::Connect => "110114",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Interaction::Create => "C",
            Interaction::Delete => "D",
            Interaction::Connect => "E",
            _ => "R",
        }
    }
}

/// Outcome of the audited request (AuditEvent.outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Data disclosed or stored.
    Success,
    /// Refused (policy or identity).
    Denied,
    /// Failed on our side.
    Failed,
}

impl Outcome {
    /// The AuditEvent outcome code.
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::Denied => "4",
            Outcome::Failed => "8",
        }
    }
}

/// Who asked, as far as it is known (identity refusals know only the certificate).
#[derive(Debug, Clone)]
pub enum Requestor {
    /// A federation principal.
    Principal(Arc<Principal>),
    /// A connection whose certificate named no principal.
    Unidentified {
        /// Certificate fingerprint, when a certificate was presented.
        fingerprint: Option<String>,
        /// Claimed institution, when readable.
        institution: Option<String>,
    },
}

/// One resource disclosed (or refused), with the boundary it sits behind.
#[derive(Debug, Clone)]
pub struct Disclosed {
    /// `Type/id`.
    pub reference: String,
    /// Owning institution.
    pub owner: String,
    /// Patient id it is about.
    pub patient: Option<String>,
    /// The policy basis (`same-site`, `consent` ...), empty when refused.
    pub basis: String,
}

/// Everything an audit record says.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// The interaction.
    pub interaction: Interaction,
    /// The outcome.
    pub outcome: Outcome,
    /// Why it failed or was refused.
    pub outcome_desc: Option<String>,
    /// Who.
    pub requestor: Requestor,
    /// From where.
    pub source_address: String,
    /// What was returned (every resource id), or what was asked for when refused.
    pub disclosed: Vec<Disclosed>,
    /// The query string of a search, if any.
    pub query: Option<String>,
    /// Purpose of use (v3-ActReason), e.g. TREAT or ETREAT for break-glass.
    pub purpose: String,
    /// Break-glass reason as stated.
    pub break_glass_reason: Option<String>,
    /// When, Unix microseconds.
    pub recorded_micros: i64,
}

impl AuditRecord {
    /// The requesting institution, if known.
    pub fn agent_institution(&self) -> Option<&str> {
        match &self.requestor {
            Requestor::Principal(p) => Some(&p.institution),
            Requestor::Unidentified { institution, .. } => institution.as_deref(),
        }
    }

    /// Distinct owners of what was disclosed.
    pub fn owners(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.disclosed.iter().map(|d| d.owner.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Distinct patients disclosed about.
    pub fn patients(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.disclosed.iter().filter_map(|d| d.patient.as_deref()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// True when any owner differs from the reader's institution.
    pub fn crosses_boundary(&self) -> bool {
        let reader = self.agent_institution();
        self.disclosed.iter().any(|d| Some(d.owner.as_str()) != reader)
    }

    /// The FHIR AuditEvent (id = sequence number in the log, when known).
    pub fn to_fhir(&self, seq: Option<i64>, observer: &str) -> AuditEvent {
        let recorded =
            crate::instant::from_micros(self.recorded_micros).unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
        let mut agent = match &self.requestor {
            Requestor::Principal(p) => AuditEventAgent {
                extension: vec![ext_string(FINGERPRINT_EXT, &p.fingerprint)],
                type_: Some(dcm("110153", "Source Role ID")),
                role: vec![CodeableConcept::coding(Coding::new(ROLE_SYSTEM, p.role.as_str()))],
                who: Some(institution_ref(&p.institution, Some(&p.institution_name))),
                alt_id: Some(p.terminal.clone()),
                name: Some(p.institution_name.clone()),
                requestor: true,
                ..Default::default()
            },
            Requestor::Unidentified { fingerprint, institution } => AuditEventAgent {
                extension: fingerprint.iter().map(|f| ext_string(FINGERPRINT_EXT, f)).collect(),
                type_: Some(dcm("110153", "Source Role ID")),
                who: institution.as_deref().map(|i| institution_ref(i, None)),
                requestor: true,
                ..Default::default()
            },
        };
        agent.network = Some(AuditEventNetwork { address: Some(self.source_address.clone()), type_: Some("2".into()) });
        agent.purpose_of_use = vec![CodeableConcept::coding(Coding::new(
            "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            &self.purpose,
        ))];
        let gateway = AuditEventAgent {
            type_: Some(dcm("110152", "Destination Role ID")),
            who: Some(Reference { display: Some(observer.to_string()), ..Default::default() }),
            requestor: false,
            ..Default::default()
        };
        let reader = self.agent_institution();
        let mut entity: Vec<AuditEventEntity> = self
            .patients()
            .into_iter()
            .map(|p| AuditEventEntity {
                what: Some(Reference { reference: Some(format!("Patient/{p}")), ..Default::default() }),
                type_: Some(Coding::new("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1")),
                role: Some(Coding::new("http://terminology.hl7.org/CodeSystem/object-role", "1")),
                ..Default::default()
            })
            .collect();
        for d in &self.disclosed {
            let boundary = if Some(d.owner.as_str()) == reader { BOUNDARY_SAME_SITE } else { BOUNDARY_CROSS_SITE };
            let mut detail = vec![detail("owner", &d.owner), detail("boundary", boundary)];
            if !d.basis.is_empty() {
                detail.push(self::detail("basis", &d.basis));
            }
            entity.push(AuditEventEntity {
                what: Some(Reference { reference: Some(d.reference.clone()), ..Default::default() }),
                type_: Some(Coding::new("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2")),
                role: Some(Coding::new("http://terminology.hl7.org/CodeSystem/object-role", "4")),
                detail,
                ..Default::default()
            });
        }
        if let Some(q) = &self.query {
            entity.push(AuditEventEntity {
                type_: Some(Coding::new("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2")),
                role: Some(Coding::new("http://terminology.hl7.org/CodeSystem/object-role", "24")),
                query: Some(base64(q.as_bytes())),
                ..Default::default()
            });
        }
        if let Some(reason) = &self.break_glass_reason {
            entity.push(AuditEventEntity {
                description: Some("break-glass".into()),
                detail: vec![detail("break-glass-reason", reason)],
                ..Default::default()
            });
        }
        let subtype_system = if self.interaction == Interaction::Connect {
            "http://dicom.nema.org/resources/ontology/DCM"
        } else {
            "http://hl7.org/fhir/restful-interaction"
        };
        AuditEvent {
            id: seq.map(|s| s.to_string()),
            type_: if self.interaction == Interaction::Connect {
                Coding::new("http://dicom.nema.org/resources/ontology/DCM", "110114")
                    .with_display("User Authentication")
            } else {
                Coding::new("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest")
                    .with_display("RESTful Operation")
            },
            subtype: vec![Coding::new(subtype_system, self.interaction.code())],
            action: Some(self.interaction.action().into()),
            recorded,
            outcome: Some(self.outcome.code().into()),
            outcome_desc: self.outcome_desc.clone(),
            agent: vec![agent, gateway],
            source: AuditEventSource {
                site: None,
                observer: Reference { display: Some(observer.to_string()), ..Default::default() },
                type_: vec![Coding::new("http://terminology.hl7.org/CodeSystem/security-source-type", "4")
                    .with_display("Application Server")],
            },
            entity,
            ..Default::default()
        }
    }
}

/// Extension carrying the client certificate's SHA-256 fingerprint.
pub const FINGERPRINT_EXT: &str = "urn:kakehashi:audit:certificate-sha256";
/// Code system of Kakehashi roles.
pub const ROLE_SYSTEM: &str = "urn:kakehashi:role";

fn ext_string(url: &str, v: &str) -> Extension {
    Extension { url: url.into(), value_string: Some(v.into()), ..Default::default() }
}

fn dcm(code: &str, display: &str) -> CodeableConcept {
    CodeableConcept::coding(Coding::new("http://dicom.nema.org/resources/ontology/DCM", code).with_display(display))
}

fn institution_ref(code: &str, name: Option<&str>) -> Reference {
    Reference {
        identifier: Some(Identifier {
            system: Some(kakehashi_mappings::codes::INSTITUTION_NUMBER.into()),
            value: Some(code.into()),
            ..Default::default()
        }),
        display: name.map(str::to_string),
        type_: Some("Organization".into()),
        ..Default::default()
    }
}

fn detail(ty: &str, v: &str) -> AuditEventDetail {
    AuditEventDetail { type_: ty.into(), value_string: Some(v.into()), value_base64_binary: None }
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
