//! Identity: the client's leaf certificate becomes a [`Principal`].
//!
//! The certificate has already been chained to the federation CA and checked against
//! the CRLs by the TLS step; here we read who it names (profile in
//! `kakehashi_certs::profile` and SECURITY.md) and check that the institution is a
//! member of the federation. The result is computed once per connection.

use crate::config::{Config, InstitutionKind};
use kakehashi_certs::profile::{self, Role, INSTITUTION_URI, ROLE_URI, TERMINAL_URI};
use std::collections::HashMap;
use std::sync::Arc;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who is calling: read from the client certificate, confirmed against the federation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// 10-digit 医療機関コード.
    pub institution: String,
    /// Institution name as the certificate states it.
    pub institution_name: String,
    /// The institution's kind in the federation configuration.
    pub kind: InstitutionKind,
    /// The certificate holder's role.
    pub role: Role,
    /// Terminal or system id.
    pub terminal: String,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub fingerprint: String,
}

/// Why a verified certificate does not identify a federation member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The connection carried no client certificate.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The certificate is not parseable X.509.
    #[error("the client certificate could not be parsed")]
    Unparseable,
    /// A field of the profile is absent.
    #[error("the client certificate lacks {0}")]
    Missing(&'static str),
    /// A field of the profile appears more than once or is malformed.
    #[error("the client certificate's {field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The institution is not a member of this federation.
    #[error("institution {0} is not a member of this federation")]
    UnknownInstitution(String),
}

/// What the identity step needs to know about the federation.
#[derive(Debug, Clone, Default)]
pub struct Members {
    kinds: HashMap<String, InstitutionKind>,
}

impl Members {
    /// Members from the configuration.
    pub fn from_config(cfg: &Config) -> Arc<Self> {
        Arc::new(Members { kinds: cfg.institutions.iter().map(|i| (i.code.clone(), i.kind)).collect() })
    }
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The institution code a certificate claims, whether or not it is a member.
pub fn claimed_institution(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.strip_prefix(INSTITUTION_URI).map(str::to_string),
        _ => None,
    })
}

/// Read the principal out of a leaf certificate.
pub fn principal_from_cert(der: Option<&[u8]>, members: &Members) -> Result<Principal, IdentityError> {
    let der = der.ok_or(IdentityError::NoCertificate)?;
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
    let mut institution = None;
    let mut role = None;
    let mut terminal = None;
    let sans = cert.subject_alternative_name().map_err(|_| IdentityError::Unparseable)?;
    for name in sans.iter().flat_map(|s| s.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else { continue };
        for (prefix, slot, field) in [
            (INSTITUTION_URI, &mut institution, "institution URI"),
            (ROLE_URI, &mut role, "role URI"),
            (TERMINAL_URI, &mut terminal, "terminal URI"),
        ] {
            if let Some(v) = uri.strip_prefix(prefix) {
                if slot.replace(v.to_string()).is_some() {
                    return Err(IdentityError::Invalid { field, reason: "appears more than once".into() });
                }
            }
        }
    }
    let institution = institution.ok_or(IdentityError::Missing("an institution URI (urn:kakehashi:institution:)"))?;
    if !profile::is_institution_code(&institution) {
        return Err(IdentityError::Invalid {
            field: "institution URI",
            reason: format!("`{institution}` is not a 10-digit code"),
        });
    }
    let role: Role = role
        .ok_or(IdentityError::Missing("a role URI (urn:kakehashi:role:)"))?
        .parse()
        .map_err(|e: profile::UnknownRole| IdentityError::Invalid { field: "role URI", reason: e.to_string() })?;
    let terminal = terminal.ok_or(IdentityError::Missing("a terminal URI (urn:kakehashi:terminal:)"))?;
    if !profile::is_terminal_id(&terminal) {
        return Err(IdentityError::Invalid { field: "terminal URI", reason: "not a valid terminal id".into() });
    }
    let institution_name = cert
        .subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .map(str::to_string)
        .ok_or(IdentityError::Missing("a subject organisation (O) naming the institution"))?;
    let kind =
        *members.kinds.get(&institution).ok_or_else(|| IdentityError::UnknownInstitution(institution.clone()))?;
    Ok(Principal { institution, institution_name, kind, role, terminal, fingerprint: fingerprint(der) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn members() -> Members {
        Members { kinds: [("0110000001".to_string(), InstitutionKind::HubHospital)].into_iter().collect() }
    }

    fn cert(uris: &[&str], org: Option<&str>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        for u in uris {
            p.subject_alt_names.push(SanType::URI((*u).try_into().unwrap()));
        }
        if let Some(o) = org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    const OK: [&str; 3] =
        ["urn:kakehashi:institution:0110000001", "urn:kakehashi:role:doctor", "urn:kakehashi:terminal:t-1"];

    #[test]
    fn reads_the_profile() {
        let der = cert(&OK, Some("島の病院"));
        let p = principal_from_cert(Some(&der), &members()).unwrap();
        assert_eq!(p.institution, "0110000001");
        assert_eq!(p.institution_name, "島の病院");
        assert_eq!(p.role, Role::Doctor);
        assert_eq!(p.terminal, "t-1");
        assert_eq!(p.kind, InstitutionKind::HubHospital);
        assert_eq!(p.fingerprint.len(), 64);
    }

    #[test]
    fn refuses_incomplete_or_foreign_identities() {
        let m = members();
        assert_eq!(principal_from_cert(None, &m), Err(IdentityError::NoCertificate));
        assert!(matches!(principal_from_cert(Some(&cert(&OK[1..], Some("x"))), &m), Err(IdentityError::Missing(_))));
        assert!(matches!(principal_from_cert(Some(&cert(&OK, None)), &m), Err(IdentityError::Missing(_))));
        let bad_role = ["urn:kakehashi:institution:0110000001", "urn:kakehashi:role:root", "urn:kakehashi:terminal:t"];
        assert!(matches!(
            principal_from_cert(Some(&cert(&bad_role, Some("x"))), &m),
            Err(IdentityError::Invalid { .. })
        ));
        let twice = [OK[0], OK[0], OK[1], OK[2]];
        assert!(matches!(principal_from_cert(Some(&cert(&twice, Some("x"))), &m), Err(IdentityError::Invalid { .. })));
        let stranger = ["urn:kakehashi:institution:0990000009", OK[1], OK[2]];
        assert_eq!(
            principal_from_cert(Some(&cert(&stranger, Some("x"))), &m),
            Err(IdentityError::UnknownInstitution("0990000009".into()))
        );
        assert_eq!(principal_from_cert(Some(b"garbage"), &m), Err(IdentityError::Unparseable));
    }
}

/// What the accept loop learned about a connection; attached to each of its requests.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's socket address.
    pub peer: std::net::SocketAddr,
    /// SHA-256 of the client certificate, when one was presented.
    pub fingerprint: Option<String>,
    /// The institution the certificate claims, even when it is not a member.
    pub claimed_institution: Option<String>,
    /// The principal, or why the certificate does not name one.
    pub identity: Result<Arc<Principal>, IdentityError>,
    /// Issuer and serial of the certificate, for revocation checks after the handshake.
    pub cert: Option<Arc<crate::tls::CertId>>,
}

/// Tower layer (axum middleware): let a request through only when its connection
/// carries a federation principal, and hand the principal to what follows; otherwise
/// 403 with an OperationOutcome before anything else runs.
pub async fn layer(mut req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let conn = req.extensions().get::<ConnInfo>().cloned();
    match conn.map(|c| c.identity) {
        Some(Ok(p)) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Some(Err(e)) => {
            tracing::warn!(reason = %e, "request refused at the identity step");
            crate::app::ApiError::Forbidden(e.to_string()).into_response()
        }
        None => crate::app::ApiError::Forbidden(IdentityError::NoCertificate.to_string()).into_response(),
    }
}

#[cfg(test)]
mod layer_tests {
    use super::*;
    use axum::{routing::get, Extension, Router};
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route("/", get(|Extension(p): Extension<Arc<Principal>>| async move { p.terminal.clone() }))
            .layer(axum::middleware::from_fn(layer))
    }

    fn req(identity: Option<Result<Arc<Principal>, IdentityError>>) -> http::Request<axum::body::Body> {
        let mut r = http::Request::new(axum::body::Body::empty());
        if let Some(identity) = identity {
            r.extensions_mut().insert(ConnInfo {
                peer: "127.0.0.1:1".parse().unwrap(),
                fingerprint: None,
                claimed_institution: None,
                identity,
                cert: None,
            });
        }
        r
    }

    #[tokio::test]
    async fn passes_principal_or_refuses_with_403() {
        let p = Arc::new(Principal {
            institution: "0110000001".into(),
            institution_name: "x".into(),
            kind: InstitutionKind::Clinic,
            role: Role::ClinicTerminal,
            terminal: "t9".into(),
            fingerprint: "00".into(),
        });
        let ok = app().oneshot(req(Some(Ok(p)))).await.unwrap();
        assert_eq!(ok.status(), 200);
        let refused =
            app().oneshot(req(Some(Err(IdentityError::UnknownInstitution("0990000009".into()))))).await.unwrap();
        assert_eq!(refused.status(), 403);
        assert_eq!(app().oneshot(req(None)).await.unwrap().status(), 403);
    }
}
