//! Building FHIR AuditEvents (IHE Basic Audit Log Patterns for RESTful operations)
//! from what a request disclosed or refused.

use crate::identity::Principal;
use kakehashi_fhir::*;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// How a disclosure relates to the boundary of what was read.
pub const BOUNDARY_SAME_SITE: &str = "same-site";
/// A read across an owner's boundary.
pub const BOUNDARY_CROSS_SITE: &str = "cross-site";

/// The RESTful interaction audited (stored as its [`Interaction::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interaction {
    /// `GET [type]/[id]`.
    #[serde(rename = "read")]
    Read,
    /// `GET [type]?...`.
    #[serde(rename = "search-type")]
    Search,
    /// `GET Patient/[id]/$everything`.
    #[serde(rename = "operation")]
    Everything,
    /// `POST` (a pushed document, a grant).
    #[serde(rename = "create")]
    Create,
    /// `DELETE` (a grant revoked).
    #[serde(rename = "delete")]
    Delete,
    /// Refused before any handler ran (identity step).
    #[serde(rename = "110114")]
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

/// Outcome of the audited request (AuditEvent.outcome; stored as its code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Data disclosed or stored.
    #[serde(rename = "0")]
    Success,
    /// Refused (policy or identity).
    #[serde(rename = "4")]
    Denied,
    /// Failed on our side.
    #[serde(rename = "8")]
    Failed,
    /// Asked for something that does not exist (a read of an absent id).
    #[serde(rename = "not-found")]
    NotFound,
    /// The request itself was malformed (a search parameter out of range, say).
    #[serde(rename = "invalid")]
    Invalid,
}

impl Outcome {
    /// The AuditEvent outcome code (a minor failure, `4`, for refusals, absent records
    /// and malformed requests alike; `outcomeDesc` says which).
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::Denied | Outcome::NotFound | Outcome::Invalid => "4",
            Outcome::Failed => "8",
        }
    }

    /// The code stored in the `outcome` column and the entry: the FHIR code, or a
    /// name for the kinds of minor failure FHIR does not tell apart.
    pub fn column(self) -> &'static str {
        match self {
            Outcome::NotFound => "not-found",
            Outcome::Invalid => "invalid",
            other => other.code(),
        }
    }

    /// The stored codes whose FHIR outcome is `fhir_code`.
    pub fn columns_for(fhir_code: &str) -> &'static [&'static str] {
        match fhir_code {
            "0" => &["0"],
            "4" => &["4", "not-found", "invalid"],
            "8" => &["8"],
            _ => &[],
        }
    }
}

/// Who asked, as far as it is known (identity refusals know only the certificate).
#[derive(Debug, Clone)]
pub enum Requestor {
    /// A federation principal.
    Principal(Arc<Principal>),
    /// A connection whose certificate named no principal (or was refused in the handshake).
    Unidentified {
        /// Certificate fingerprint, when a certificate was presented.
        fingerprint: Option<String>,
        /// Claimed institution, when readable.
        institution: Option<String>,
        /// Subject, issuer and serial of the certificate, when one was presented.
        certificate: Option<CertSummary>,
    },
}

/// What identifies a presented certificate to people and CRLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
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
    /// The record as stored and chained, naming `observer` (this gateway).
    pub fn entry<'a>(&'a self, observer: &'a str) -> Entry<'a> {
        let b = |s: &'a str| Some(Cow::Borrowed(s));
        let agent = match &self.requestor {
            Requestor::Principal(p) => Agent {
                institution: b(&p.institution),
                name: b(&p.institution_name),
                role: b(p.role.as_str()),
                terminal: b(&p.terminal),
                fingerprint: b(&p.fingerprint),
                ..Agent::default()
            },
            Requestor::Unidentified { fingerprint, institution, certificate } => Agent {
                institution: institution.as_deref().and_then(b),
                fingerprint: fingerprint.as_deref().and_then(b),
                subject: certificate.as_ref().and_then(|c| b(&c.subject)),
                issuer: certificate.as_ref().and_then(|c| b(&c.issuer)),
                serial: certificate.as_ref().and_then(|c| b(&c.serial)),
                ..Agent::default()
            },
        };
        Entry {
            v: ENTRY_FORMAT,
            interaction: self.interaction,
            outcome: self.outcome,
            outcome_desc: self.outcome_desc.as_deref().and_then(b),
            agent,
            source: Cow::Borrowed(&self.source_address),
            observer: Cow::Borrowed(observer),
            purpose: Cow::Borrowed(&self.purpose),
            break_glass_reason: self.break_glass_reason.as_deref().and_then(b),
            query: self.query.as_deref().and_then(b),
            recorded: self.recorded_micros,
            disclosed: self
                .disclosed
                .iter()
                .map(|d| Item {
                    reference: Cow::Borrowed(&d.reference),
                    owner: Cow::Borrowed(&d.owner),
                    patient: d.patient.as_deref().and_then(b),
                    basis: Cow::Borrowed(&d.basis),
                })
                .collect(),
        }
    }
}

/// The format number of [`Entry`] written now.
pub const ENTRY_FORMAT: u8 = 1;

/// The stored, hash-chained form of an audit record: the facts alone, fields in a fixed
/// order, so that its serde_json text is the canonical encoding the chain hashes. The
/// FHIR AuditEvent an auditor, an export or a repository sees is rendered from it
/// ([`Entry::to_fhir`]). Stored rendered, an event was about 1.9 KB instead of 0.4 KB,
/// and writing those bytes twice (WAL, then database) cost more than a fifth of an
/// audited read's throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry<'a> {
    /// Format number ([`ENTRY_FORMAT`]).
    pub v: u8,
    /// The interaction.
    pub interaction: Interaction,
    /// The outcome.
    pub outcome: Outcome,
    /// Why it failed or was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_desc: Option<Cow<'a, str>>,
    /// Who asked.
    pub agent: Agent<'a>,
    /// From where (address and port).
    pub source: Cow<'a, str>,
    /// The gateway that recorded it.
    pub observer: Cow<'a, str>,
    /// Purpose of use (v3-ActReason).
    pub purpose: Cow<'a, str>,
    /// Break-glass reason as stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<Cow<'a, str>>,
    /// The query string of a search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Cow<'a, str>>,
    /// When, Unix microseconds.
    pub recorded: i64,
    /// What was returned, or asked for when refused.
    pub disclosed: Vec<Item<'a>>,
}

/// The requesting principal as far as it is known (an identity refusal may know only
/// the certificate).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent<'a> {
    /// 10-digit institution number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution: Option<Cow<'a, str>>,
    /// Institution name from the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    /// Role from the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Cow<'a, str>>,
    /// Terminal or system id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<Cow<'a, str>>,
    /// SHA-256 of the certificate, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Cow<'a, str>>,
    /// Subject DN of a certificate that named no principal (a refused handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Cow<'a, str>>,
    /// Its issuer DN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Cow<'a, str>>,
    /// Its serial number, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<Cow<'a, str>>,
}

/// One resource of an [`Entry`] with the boundary it sits behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item<'a> {
    /// `Type/id`.
    pub reference: Cow<'a, str>,
    /// Owning institution.
    pub owner: Cow<'a, str>,
    /// Patient id it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<Cow<'a, str>>,
    /// Policy basis, empty when refused.
    pub basis: Cow<'a, str>,
}

/// A stored event that cannot be shown.
#[derive(Debug, thiserror::Error)]
#[error("audit event {seq} is not a readable entry: {why}")]
pub struct StoredEventError {
    /// Its sequence number.
    pub seq: i64,
    /// What is wrong.
    pub why: String,
}

/// Events written before entries were stored (the rendered AuditEvent itself) start so.
const RENDERED_PREFIX: &str = "{\"resourceType\":\"AuditEvent\"";

impl<'a> Entry<'a> {
    /// Parse a stored entry; `Ok(None)` for an event stored already rendered (older logs).
    pub fn parse(seq: i64, stored: &'a str) -> Result<Option<Entry<'a>>, StoredEventError> {
        if stored.starts_with(RENDERED_PREFIX) {
            return Ok(None);
        }
        let entry: Entry = serde_json::from_str(stored).map_err(|e| StoredEventError { seq, why: e.to_string() })?;
        if entry.v != ENTRY_FORMAT {
            return Err(StoredEventError { seq, why: format!("unknown entry format {}", entry.v) });
        }
        Ok(Some(entry))
    }

    /// The requesting institution, if known.
    pub fn agent_institution(&self) -> Option<&str> {
        self.agent.institution.as_deref()
    }

    /// Distinct owners of what was disclosed (an absent record has none).
    pub fn owners(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.disclosed.iter().map(|d| &*d.owner).filter(|o| !o.is_empty()).collect();
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
        self.disclosed.iter().any(|d| !d.owner.is_empty() && Some(&*d.owner) != reader)
    }

    /// The entry as an auditor of institution `viewer` may see it. A read refused at
    /// another institution's boundary is shown to the reader's own auditors exactly as
    /// a read of an absent record: what was asked for, not whose it is nor whose
    /// patient, so the audit trail does not tell them what the refusal hid. The
    /// owners crossed (and audit bodies, `viewer` None) see it whole.
    pub fn as_seen_by(&self, viewer: Option<&str>) -> Entry<'a> {
        let mut e = self.clone();
        let Some(viewer) = viewer else { return e };
        let refused = matches!(self.outcome, Outcome::Denied | Outcome::NotFound);
        if !refused || self.owners().contains(&viewer) {
            return e;
        }
        let hidden = e.disclosed.iter().any(|d| !d.owner.is_empty() && d.basis.is_empty());
        if hidden {
            for d in e.disclosed.iter_mut().filter(|d| d.basis.is_empty()) {
                d.owner = Cow::Borrowed("");
                d.patient = None;
            }
            e.outcome = Outcome::NotFound;
            e.outcome_desc = Some(Cow::Borrowed(crate::fhir_api::read::NOT_VISIBLE));
        }
        e
    }

    /// The FHIR AuditEvent (id = sequence number in the log, when known).
    pub fn to_fhir(&self, seq: Option<i64>) -> AuditEvent {
        let recorded = crate::instant::from_micros(self.recorded).unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
        let a = &self.agent;
        let mut extension: Vec<Extension> = a.fingerprint.iter().map(|f| ext_string(FINGERPRINT_EXT, f)).collect();
        extension.extend(a.serial.iter().map(|v| ext_string(SERIAL_EXT, v)));
        extension.extend(a.issuer.iter().map(|v| ext_string(ISSUER_EXT, v)));
        let agent = AuditEventAgent {
            extension,
            type_: Some(dcm("110153", "Source Role ID")),
            role: a.role.iter().map(|r| CodeableConcept::coding(Coding::new(ROLE_SYSTEM, &**r))).collect(),
            who: a.institution.as_deref().map(|i| institution_ref(i, a.name.as_deref())),
            alt_id: a.terminal.as_deref().map(str::to_string),
            name: a.name.as_deref().or(a.subject.as_deref()).map(str::to_string),
            requestor: true,
            network: Some(AuditEventNetwork { address: Some(self.source.to_string()), type_: Some("2".into()) }),
            purpose_of_use: vec![CodeableConcept::coding(Coding::new(
                "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                &*self.purpose,
            ))],
            ..Default::default()
        };
        let gateway = AuditEventAgent {
            type_: Some(dcm("110152", "Destination Role ID")),
            who: Some(Reference { display: Some(self.observer.to_string()), ..Default::default() }),
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
            let boundary = if Some(&*d.owner) == reader { BOUNDARY_SAME_SITE } else { BOUNDARY_CROSS_SITE };
            // An absent record (or one shown as such) has no owner and no boundary.
            let mut detail =
                if d.owner.is_empty() { vec![] } else { vec![detail("owner", &d.owner), detail("boundary", boundary)] };
            if !d.basis.is_empty() {
                detail.push(self::detail("basis", &d.basis));
            }
            entity.push(AuditEventEntity {
                what: Some(Reference { reference: Some(d.reference.to_string()), ..Default::default() }),
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
            outcome_desc: self.outcome_desc.as_deref().map(str::to_string),
            agent: vec![agent, gateway],
            source: AuditEventSource {
                site: None,
                observer: Reference { display: Some(self.observer.to_string()), ..Default::default() },
                type_: vec![Coding::new("http://terminology.hl7.org/CodeSystem/security-source-type", "4")
                    .with_display("Application Server")],
            },
            entity,
            ..Default::default()
        }
    }
}

/// The FHIR AuditEvent JSON of stored event `seq`, as exports and audit repositories
/// see it (ready to embed: callers need not parse it again).
pub fn render_stored(seq: i64, stored: &str) -> Result<Box<RawValue>, StoredEventError> {
    render_for(seq, stored, None)
}

/// The FHIR AuditEvent JSON of stored event `seq` as an auditor of institution
/// `viewer` may see it ([`Entry::as_seen_by`]); `None` for the whole event.
pub fn render_for(seq: i64, stored: &str, viewer: Option<&str>) -> Result<Box<RawValue>, StoredEventError> {
    let fail = |e: serde_json::Error| StoredEventError { seq, why: e.to_string() };
    match Entry::parse(seq, stored)? {
        Some(entry) => serde_json::value::to_raw_value(&entry.as_seen_by(viewer).to_fhir(Some(seq))).map_err(fail),
        // Written by an older gateway: checked to be JSON, shown as stored.
        None => RawValue::from_string(stored.to_string()).map_err(fail),
    }
}

/// Extension carrying the client certificate's SHA-256 fingerprint.
pub const FINGERPRINT_EXT: &str = "urn:kakehashi:audit:certificate-sha256";
/// Extension carrying a refused certificate's serial number (hex).
pub const SERIAL_EXT: &str = "urn:kakehashi:audit:certificate-serial";
/// Extension carrying a refused certificate's issuer DN.
pub const ISSUER_EXT: &str = "urn:kakehashi:audit:certificate-issuer";
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

/// Standard base64 (RFC 4648) with padding: FHIR's base64Binary.
pub use kakehashi_fhir::base64;

#[cfg(test)]
mod tests {
    use super::*;

    fn principal_read() -> AuditRecord {
        AuditRecord {
            interaction: Interaction::Read,
            outcome: Outcome::Success,
            outcome_desc: None,
            requestor: Requestor::Principal(Arc::new(Principal {
                institution: "4610200021".into(),
                institution_name: "黒島診療所 \"本院\"".into(),
                kind: crate::config::InstitutionKind::Clinic,
                role: kakehashi_certs::Role::ClinicTerminal,
                terminal: "kuroshima-01".into(),
                fingerprint: "ab".repeat(32),
            })),
            source_address: "10.0.0.1:5000".into(),
            disclosed: vec![
                Disclosed {
                    reference: "Patient/p1".into(),
                    owner: "4610100011".into(),
                    patient: Some("p1".into()),
                    basis: "consent".into(),
                },
                Disclosed {
                    reference: "Observation/o1".into(),
                    owner: "4610200021".into(),
                    patient: Some("p1".into()),
                    basis: "same-site".into(),
                },
            ],
            query: Some("patient=p1&_count=5".into()),
            purpose: "ETREAT".into(),
            break_glass_reason: Some("急変".into()),
            recorded_micros: 1_795_000_000_123_456,
        }
    }

    #[test]
    fn a_stored_entry_renders_the_auditevent_of_its_record() {
        let unidentified = AuditRecord {
            interaction: Interaction::Connect,
            outcome: Outcome::Denied,
            outcome_desc: Some("unknown institution".into()),
            requestor: Requestor::Unidentified {
                fingerprint: Some("cd".repeat(32)),
                institution: None,
                certificate: Some(CertSummary { subject: "CN=x".into(), issuer: "CN=ca".into(), serial: "01".into() }),
            },
            disclosed: vec![],
            query: None,
            break_glass_reason: None,
            ..principal_read()
        };
        for record in [principal_read(), unidentified] {
            let stored = serde_json::to_string(&record.entry("gw-1")).unwrap();
            let rendered = render_stored(42, &stored).unwrap();
            assert_eq!(rendered.get(), serde_json::to_string(&record.entry("gw-1").to_fhir(Some(42))).unwrap());
            let back = Entry::parse(42, &stored).unwrap().unwrap();
            assert_eq!(back, record.entry("gw-1"), "the entry reads back as written");
        }
    }

    #[test]
    fn the_rendered_event_names_the_boundary_crossed_and_the_reader() {
        let ev = serde_json::to_value(principal_read().entry("gw-1").to_fhir(Some(7))).unwrap();
        assert_eq!(ev["id"], "7");
        assert_eq!(ev["subtype"][0]["code"], "read");
        assert_eq!(ev["agent"][0]["who"]["identifier"]["value"], "4610200021");
        assert_eq!(ev["agent"][0]["altId"], "kuroshima-01");
        assert_eq!(ev["agent"][0]["purposeOfUse"][0]["coding"][0]["code"], "ETREAT");
        let details = |i: usize| ev["entity"][i]["detail"].as_array().unwrap().clone();
        assert_eq!(ev["entity"][0]["what"]["reference"], "Patient/p1");
        assert!(details(1).contains(&serde_json::json!({"type": "boundary", "valueString": "cross-site"})));
        assert!(details(2).contains(&serde_json::json!({"type": "boundary", "valueString": "same-site"})));
        assert_eq!(ev["entity"][3]["query"], base64(b"patient=p1&_count=5"));
        assert_eq!(ev["entity"][4]["detail"][0]["valueString"], "急変");
    }

    #[test]
    fn an_entry_is_under_a_third_of_its_rendered_size() {
        let r = principal_read();
        let entry = serde_json::to_string(&r.entry("gw-1")).unwrap().len();
        let rendered = serde_json::to_string(&r.entry("gw-1").to_fhir(None)).unwrap().len();
        assert!(entry * 3 < rendered, "entry {entry} bytes, rendered {rendered}");
    }

    #[test]
    fn older_events_stored_rendered_are_shown_as_stored_and_bad_entries_are_refused() {
        let old = r#"{"resourceType":"AuditEvent","id":"3","recorded":"2026-11-22T00:00:00Z"}"#;
        assert_eq!(render_stored(3, old).unwrap().get(), old);
        let stored = serde_json::to_string(&principal_read().entry("gw-1")).unwrap();
        let future = stored.replacen("\"v\":1", "\"v\":2", 1);
        assert!(render_stored(5, &future).unwrap_err().to_string().contains("unknown entry format 2"));
        let extra = stored.replacen("\"v\":1", "\"v\":1,\"x\":0", 1);
        assert_eq!(render_stored(6, &extra).unwrap_err().seq, 6);
        assert!(render_stored(8, "not json").is_err());
        assert!(render_stored(9, "{\"resourceType\":\"AuditEvent\",").is_err(), "a truncated old event");
    }

    #[test]
    fn entries_store_interactions_and_outcomes_by_the_codes_the_columns_use() {
        use Interaction::*;
        // The serde names and `code()` are two lists; the columns and the rendered event
        // take `code()`, the entry the serde name.
        for i in [Read, Search, Everything, Create, Delete, Connect] {
            assert_eq!(serde_json::to_value(i).unwrap(), i.code(), "{i:?}");
            assert_eq!(serde_json::from_value::<Interaction>(i.code().into()).unwrap(), i);
        }
        for o in [Outcome::Success, Outcome::Denied, Outcome::Failed, Outcome::NotFound, Outcome::Invalid] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.column(), "{o:?}");
            assert_eq!(serde_json::from_value::<Outcome>(o.column().into()).unwrap(), o);
            assert!(Outcome::columns_for(o.code()).contains(&o.column()), "{o:?}");
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
