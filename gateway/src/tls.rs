//! Mutual TLS: the rustls server configuration, the client-certificate verifier with
//! CRLs, hot reload of TLS material, and the accept loop's handshake step.
//!
//! Secure by default: a client certificate chained to the federation CA is required,
//! revocation status must be known (a certificate absent from a CRL of its issuer is
//! refused), and stale CRLs fail closed (`enforce_revocation_expiration`).

use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

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

/// The process's crypto provider: ring, passed explicitly so no process default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build a server configuration from files. Session resumption (tickets for TLS 1.3
/// and 1.2, plus a session-id cache) is on; a fresh cache and ticket key are made on
/// every build so that a reload (e.g. a new CRL) also ends resumption of sessions
/// whose client certificate was checked against the old material.
pub fn build_server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&files.client_ca)? {
        roots.add(ca).map_err(|e| pem_err(&files.client_ca, e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(load_crls(&files.crls)?)
        .enforce_revocation_expiration()
        .build()?;
    let chain = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_err(&files.key, e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = ServerSessionMemoryCache::new(8192);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(cfg)
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
    current: RwLock<(u64, Arc<ServerConfig>)>,
}

impl ReloadingConfig {
    /// Load the files once; fails when they are unusable.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = files_stamp(&files);
        let cfg = Arc::new(build_server_config(&files)?);
        Ok(Arc::new(ReloadingConfig { files, current: RwLock::new((stamp, cfg)) }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).1.clone()
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
        let cfg = Arc::new(build_server_config(&self.files)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (stamp, cfg);
        Ok(true)
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
    #[error("handshake failed: {0}")]
    Failed(std::io::Error),
}

/// Run the server side of a handshake within `timeout`, returning the stream and the
/// client's leaf certificate.
pub async fn handshake(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, Option<CertificateDer<'static>>), HandshakeError> {
    let acceptor = TlsAcceptor::from(config);
    let stream = tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Failed)?;
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
    Ok((stream, leaf))
}
