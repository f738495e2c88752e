//! Mutual TLS: the rustls server configuration, the client-certificate verifier with
//! CRLs, hot reload of TLS material, and the accept loop's handshake step.
//!
//! Secure by default: a client certificate chained to the federation CA is required,
//! revocation status must be known (a certificate absent from a CRL of its issuer is
//! refused), and stale CRLs fail closed (`enforce_revocation_expiration`).

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    /// rustls rejected the assembled configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (bad CA or CRL).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The files that make up the server's TLS identity and trust.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Federation CA certificates client certificates must chain to.
    pub client_ca: PathBuf,
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// CRLs of the federation CA.
    pub crls: Vec<PathBuf>,
}

impl From<&crate::config::Tls> for TlsFiles {
    fn from(t: &crate::config::Tls) -> Self {
        TlsFiles { client_ca: t.client_ca.clone(), cert: t.cert.clone(), key: t.key.clone(), crls: t.crls.clone() }
    }
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.to_path_buf(), message: e.to_string() }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

fn load_crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for path in paths {
        let before = out.len();
        for crl in CertificateRevocationListDer::pem_file_iter(path).map_err(|e| pem_err(path, e))? {
            out.push(crl.map_err(|e| pem_err(path, e))?);
        }
        if out.len() == before {
            return Err(pem_err(path, "no X509 CRL block found"));
        }
    }
    Ok(out)
}

/// What identifies a certificate to its CRL: the issuer's name (DER) and the serial
/// number's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertId {
    /// DER of the issuer Name.
    pub issuer: Vec<u8>,
    /// The serial number as encoded (big-endian bytes).
    pub serial: Vec<u8>,
}

/// The [`CertId`] of a DER certificate.
pub fn cert_id(der: &[u8]) -> Option<CertId> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(CertId { issuer: cert.issuer().as_raw().to_vec(), serial: cert.raw_serial().to_vec() })
}

/// The revocation facts of the CRLs in force, for checks after the handshake: every
/// request, and every open connection when the CRLs change or lapse.
#[derive(Debug, Default)]
pub struct Revocation {
    revoked: HashSet<CertId>,
    /// The earliest `nextUpdate` of the CRLs (Unix seconds): past it, revocation status
    /// is unknown and every certificate is refused (fail closed).
    next_update: Option<i64>,
}

impl Revocation {
    fn from_crls(crls: &[CertificateRevocationListDer<'_>]) -> Revocation {
        let mut r = Revocation::default();
        for der in crls {
            // rustls accepted these CRLs already; one it cannot parse here would only
            // make this second check weaker, never the handshake's.
            let Ok((_, crl)) = x509_parser::revocation_list::CertificateRevocationList::from_der(der) else { continue };
            let issuer = crl.issuer().as_raw().to_vec();
            for rc in crl.iter_revoked_certificates() {
                r.revoked.insert(CertId { issuer: issuer.clone(), serial: rc.raw_serial().to_vec() });
            }
            if let Some(next) = crl.next_update() {
                let t = next.timestamp();
                r.next_update = Some(r.next_update.map_or(t, |n| n.min(t)));
            }
        }
        r
    }

    /// Why a connection with this certificate may no longer be served, if it may not.
    pub fn refuses(&self, cert: &CertId, now: i64) -> Option<&'static str> {
        if self.revoked.contains(cert) {
            Some("the client certificate has been revoked")
        } else if self.next_update.is_some_and(|n| now > n) {
            Some("the certificate revocation list has expired; revocation status is unknown")
        } else {
            None
        }
    }

    /// Whether the CRLs in force have lapsed at `now`.
    fn lapsed(&self, now: i64) -> bool {
        self.next_update.is_some_and(|n| now > n)
    }
}

/// Why a client certificate was refused in the handshake, as recorded by the verifier
/// for the connection being accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// Subject DN, as text.
    pub subject: String,
    /// Issuer DN, as text.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
    /// The institution it claims, if readable.
    pub institution: Option<String>,
    /// Why it was refused: `revoked`, `unknown-ca`, `expired`, `not-client-auth`,
    /// `crl-expired`, `revocation-unknown` or `invalid-certificate`.
    pub reason: &'static str,
}

impl Presented {
    /// Whether the certificate chained to the federation CA (it was refused for its
    /// revocation status or usage, after the chain was built): only then are its
    /// subject and institution the federation's word rather than whatever anybody wrote
    /// into a certificate of their own.
    pub fn chained(&self) -> bool {
        matches!(self.reason, "revoked" | "not-client-auth" | "crl-expired" | "revocation-unknown")
    }
}

tokio::task_local! {
    /// Where the verifier leaves what it refused, for the connection being accepted:
    /// the accept future runs inside this scope, and rustls calls the verifier from it.
    static REFUSED: Arc<Mutex<Option<Presented>>>;
}

fn reason_of(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown-ca",
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "expired",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => "not-client-auth",
            CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. } => {
                "crl-expired"
            }
            CertificateError::UnknownRevocationStatus => "revocation-unknown",
            _ => "invalid-certificate",
        },
        rustls::Error::NoCertificatesPresented => "no-certificate",
        _ => "invalid-certificate",
    }
}

/// Whether a certificate carries the extended key usage `clientAuth`. webpki accepts a
/// certificate with no EKU extension for any purpose; the federation's profile
/// requires the extension and `clientAuth` in it.
fn has_client_auth(der: &[u8]) -> bool {
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| c.extended_key_usage().ok().flatten().map(|e| e.value.client_auth))
        .unwrap_or(false)
}

/// The federation's client verifier: webpki's chain, validity and CRL checks, then the
/// profile's `clientAuth` EKU; what it refuses is recorded for the refused-handshake
/// audit of the connection.
#[derive(Debug)]
struct FederationVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for FederationVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now).and_then(|v| {
            if has_client_auth(end_entity) {
                Ok(v)
            } else {
                Err(rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose))
            }
        });
        if let Err(e) = &verified {
            let presented = describe(end_entity, reason_of(e));
            let _ = REFUSED.try_with(|slot| *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(presented));
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn describe(der: &[u8], reason: &'static str) -> Presented {
    let parsed = X509Certificate::from_der(der).ok().map(|(_, c)| c);
    let text = |n: Option<String>| n.unwrap_or_else(|| "(unreadable)".into());
    Presented {
        subject: text(parsed.as_ref().map(|c| c.subject().to_string())),
        issuer: text(parsed.as_ref().map(|c| c.issuer().to_string())),
        serial: parsed
            .as_ref()
            .map(|c| c.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default(),
        fingerprint: crate::identity::fingerprint(der),
        institution: crate::identity::claimed_institution(der),
        reason,
    }
}

/// The process's crypto provider: ring, passed explicitly so no process default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build a server configuration from files. Session resumption (tickets for TLS 1.3
/// and 1.2, plus a session-id cache) is on; a fresh cache and ticket key are made on
/// every build so that a reload (e.g. a new CRL) also ends resumption of sessions
/// whose client certificate was checked against the old material.
pub fn build_server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    Ok(build(files)?.0)
}

/// The server configuration and the revocation facts of its CRLs.
fn build(files: &TlsFiles) -> Result<(ServerConfig, Revocation), TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&files.client_ca)? {
        roots.add(ca).map_err(|e| pem_err(&files.client_ca, e))?;
    }
    let crls = load_crls(&files.crls)?;
    let revocation = Revocation::from_crls(&crls);
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .enforce_revocation_expiration()
        .build()?;
    let verifier = Arc::new(FederationVerifier { inner });
    let chain = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_err(&files.key, e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = ServerSessionMemoryCache::new(8192);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok((cfg, revocation))
}

/// A client configuration trusting the CAs in `ca` and presenting `identity`
/// (certificate chain, key) when given: the load harness's clients and the audit
/// forwarder's connection to a repository.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
    resumption: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| pem_err(ca, e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => {
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
            builder.with_client_auth_cert(load_certs(cert)?, key_der)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    if !resumption {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// The current TLS configuration, rebuilt when any of its files changes.
pub struct ReloadingConfig {
    files: TlsFiles,
    current: RwLock<(u64, Arc<ServerConfig>, Arc<Revocation>)>,
    /// Bumped when the revocation facts change (a reload, or CRLs lapsing): open
    /// connections then check their certificate again.
    generation: tokio::sync::watch::Sender<u64>,
    /// Whether the CRLs in force were found lapsed at the last check.
    lapsed: std::sync::atomic::AtomicBool,
}

impl ReloadingConfig {
    /// Load the files once; fails when they are unusable.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = files_stamp(&files);
        let (cfg, revocation) = build(&files)?;
        Ok(Arc::new(ReloadingConfig {
            files,
            current: RwLock::new((stamp, Arc::new(cfg), Arc::new(revocation))),
            generation: tokio::sync::watch::Sender::new(0),
            lapsed: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).1.clone()
    }

    /// The revocation facts in force.
    pub fn revocation(&self) -> Arc<Revocation> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).2.clone()
    }

    /// Notified whenever open connections must check their certificate again.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Rebuild when the files changed. Returns Ok(true) after a reload. When the new
    /// files are unusable the previous configuration stays in force and the error is
    /// returned for logging: a half-written CRL must not open the door.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = files_stamp(&self.files);
        let old = self.current.read().unwrap_or_else(PoisonError::into_inner).0;
        if stamp == old {
            return Ok(false);
        }
        let (cfg, revocation) = build(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (stamp, Arc::new(cfg), Arc::new(revocation));
        self.generation.send_modify(|g| *g += 1);
        Ok(true)
    }

    /// Tell open connections to check again when the CRLs in force lapse at `now`;
    /// returns true when they just did.
    pub fn check_lapse(&self, now: i64) -> bool {
        let lapsed = self.revocation().lapsed(now);
        let was = self.lapsed.swap(lapsed, std::sync::atomic::Ordering::Relaxed);
        if lapsed && !was {
            self.generation.send_modify(|g| *g += 1);
        }
        lapsed && !was
    }
}

/// A content stamp over all TLS files: contents, not mtimes, because rename-into-place
/// within the same second must still be noticed.
fn files_stamp(f: &TlsFiles) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in [&f.client_ca, &f.cert, &f.key].into_iter().chain(f.crls.iter()) {
        std::fs::read(p).ok().hash(&mut h);
    }
    h.finish()
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client took longer than the handshake timeout.
    #[error("handshake timed out")]
    Timeout,
    /// rustls or the transport refused the handshake (bad or missing certificate...).
    #[error("handshake failed: {error}")]
    Failed {
        /// What failed.
        error: std::io::Error,
        /// The client certificate refused, when one was presented and judged.
        presented: Option<Presented>,
    },
}

impl HandshakeError {
    /// Why, as a metric label: a certificate refusal's reason, `no-certificate`,
    /// `timeout`, or `protocol` for anything else (not TLS, no common version...).
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::Failed { presented: Some(p), .. } => p.reason,
            HandshakeError::Failed { error, .. } => {
                match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::NoCertificatesPresented) => "no-certificate",
                    _ => "protocol",
                }
            }
        }
    }
}

/// Run the server side of a handshake within `timeout`, returning the stream and the
/// client's leaf certificate.
pub async fn handshake(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, Option<CertificateDer<'static>>), HandshakeError> {
    let acceptor = TlsAcceptor::from(config);
    let slot = Arc::new(Mutex::new(None));
    let accept = REFUSED.scope(slot.clone(), acceptor.accept(tcp));
    let stream = match tokio::time::timeout(timeout, accept).await {
        Err(_) => return Err(HandshakeError::Timeout),
        Ok(Err(error)) => {
            let presented = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            return Err(HandshakeError::Failed { error, presented });
        }
        Ok(Ok(s)) => s,
    };
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
    Ok((stream, leaf))
}
