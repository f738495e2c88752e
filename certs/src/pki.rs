//! The on-disk federation PKI: `ca.pem`/`ca.key`, `server.pem`/`server.key`, `ca.crl`,
//! issued client certificates `NAME.pem`/`NAME.key`, and `index.json` recording every
//! serial issued and revoked (the CRL is regenerated from it).

use crate::profile::{self, Role, INSTITUTION_URI, ROLE_URI, TERMINAL_URI};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Errors from PKI operations, each naming the file or the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// rcgen refused to build or sign something.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// `init` found an existing federation CA.
    #[error("{} already holds a federation CA (ca.pem); refusing to overwrite it", .0.display())]
    AlreadyInitialised(PathBuf),
    /// The directory has no federation CA.
    #[error("{} holds no federation CA (ca.pem); run `kakehashi certs init --dir {}` first", .0.display(), .0.display())]
    NotInitialised(PathBuf),
    /// A request value does not fit the certificate profile.
    #[error("{0}")]
    Invalid(String),
    /// `revoke` was asked for a name never issued.
    #[error("no certificate named `{0}` was issued from this CA (see index.json)")]
    UnknownName(String),
    /// `index.json` is unreadable.
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },
}

type Result<T> = std::result::Result<T, CertsError>;

/// Options for a new federation PKI.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Name of the federation, written into the CA subject.
    pub federation_name: String,
    /// DNS names and IP addresses the gateway's server certificate covers.
    pub server_names: Vec<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            federation_name: "Kakehashi Federation".into(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
        }
    }
}

/// What a client certificate should say.
#[derive(Debug, Clone)]
pub struct ClientCertRequest {
    /// 10-digit 医療機関コード.
    pub institution_code: String,
    /// Institution name (subject O).
    pub institution_name: String,
    /// The holder's role.
    pub role: Role,
    /// Terminal or system id.
    pub terminal: String,
    /// Start of validity (default: now minus five minutes for clock skew).
    pub not_before: Option<OffsetDateTime>,
    /// End of validity (default: 397 days from now).
    pub not_after: Option<OffsetDateTime>,
}

impl ClientCertRequest {
    /// A request with default validity.
    pub fn new(code: &str, name: &str, role: Role, terminal: &str) -> Self {
        ClientCertRequest {
            institution_code: code.into(),
            institution_name: name.into(),
            role,
            terminal: terminal.into(),
            not_before: None,
            not_after: None,
        }
    }

    fn check(&self) -> Result<()> {
        if !profile::is_institution_code(&self.institution_code) {
            return Err(CertsError::Invalid(format!(
                "institution code `{}` is not a 10-digit 医療機関コード",
                self.institution_code
            )));
        }
        if !profile::is_terminal_id(&self.terminal) {
            return Err(CertsError::Invalid(format!(
                "terminal id `{}` must be 1-64 characters of A-Z a-z 0-9 . _ -",
                self.terminal
            )));
        }
        if self.institution_name.trim().is_empty() {
            return Err(CertsError::Invalid("institution name must not be empty".into()));
        }
        Ok(())
    }
}

/// A certificate just issued, with where it was written.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Path of the PEM certificate.
    pub cert_path: PathBuf,
    /// Path of the PKCS#8 PEM key (mode 0600).
    pub key_path: PathBuf,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// The certificate in PEM.
    pub cert_pem: String,
    /// The key in PKCS#8 PEM.
    pub key_pem: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    crl_number: u64,
    issued: BTreeMap<String, IndexEntry>,
    revoked: Vec<RevokedEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexEntry {
    serial: String,
    subject: String,
    not_after: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct RevokedEntry {
    name: String,
    serial: String,
    revoked_at: i64,
}

/// A federation PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

const CRL_VALIDITY_DAYS: i64 = 7;

impl Pki {
    /// Create a new federation CA, server certificate and empty CRL in `dir`.
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<Pki> {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let pki = Pki { dir: dir.to_path_buf() };
        if pki.ca_cert_path().exists() {
            return Err(CertsError::AlreadyInitialised(dir.to_path_buf()));
        }
        let ca_key = KeyPair::generate()?;
        let ca_params = ca_params(&opts.federation_name, Duration::days(3650))?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        write_private(&pki.path("ca.key"), &ca_key.serialize_pem())?;
        write_public(&pki.ca_cert_path(), &ca_cert.pem())?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut sp = leaf_params(Duration::days(397))?;
        sp.distinguished_name.push(DnType::CommonName, "kakehashi gateway");
        sp.distinguished_name.push(DnType::OrganizationName, opts.federation_name.as_str());
        for n in &opts.server_names {
            sp.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.as_str().try_into()?),
            });
        }
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = sp.signed_by(&server_key, &issuer)?;
        write_private(&pki.server_key_path(), &server_key.serialize_pem())?;
        write_public(&pki.server_cert_path(), &server.pem())?;

        pki.write_index(&Index::default())?;
        pki.write_crl(&issuer, &mut Index::default())?;
        pki.write_audit_key()?;
        Ok(pki)
    }

    /// Open an existing federation PKI directory.
    pub fn open(dir: &Path) -> Result<Pki> {
        let pki = Pki { dir: dir.to_path_buf() };
        if !pki.ca_cert_path().exists() {
            return Err(CertsError::NotInitialised(dir.to_path_buf()));
        }
        Ok(pki)
    }

    /// The directory this PKI lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/ca.pem`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.path("ca.pem")
    }
    /// `DIR/ca.crl` (PEM).
    pub fn crl_path(&self) -> PathBuf {
        self.path("ca.crl")
    }
    /// `DIR/server.pem`.
    pub fn server_cert_path(&self) -> PathBuf {
        self.path("server.pem")
    }
    /// `DIR/server.key`.
    pub fn server_key_path(&self) -> PathBuf {
        self.path("server.key")
    }

    /// `DIR/audit-signing.pk8`: the gateway's Ed25519 key for audit checkpoints
    /// (PKCS#8 DER, mode 0600).
    pub fn audit_key_path(&self) -> PathBuf {
        self.path("audit-signing.pk8")
    }

    /// Generate the audit checkpoint key (and `audit-signing.pub`, its public key in
    /// hex, for verifiers that must not hold the private key).
    pub fn write_audit_key(&self) -> Result<()> {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| CertsError::Invalid("could not generate the audit signing key".into()))?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| CertsError::Invalid("generated audit key is unusable".into()))?;
        write_atomic_bytes(&self.audit_key_path(), pkcs8.as_ref(), 0o600)?;
        write_public(&self.path("audit-signing.pub"), &(hex(pair.public_key().as_ref()) + "\n"))
    }

    /// Issue a client certificate, written as `DIR/<out>.pem` and `DIR/<out>.key`.
    pub fn issue(&self, req: &ClientCertRequest, out: &str) -> Result<IssuedCert> {
        req.check()?;
        check_out_name(out)?;
        let issuer = self.issuer()?;
        let mut index = self.read_index()?;
        if index.issued.contains_key(out) {
            return Err(CertsError::Invalid(format!(
                "a certificate named `{out}` was already issued; choose another --out or revoke it first"
            )));
        }
        let key = KeyPair::generate()?;
        let params = client_params(req)?;
        let cert = params.signed_by(&key, &issuer)?;
        let serial_hex = hex(&params.serial_number.as_ref().map(|s| s.to_bytes()).unwrap_or_default());
        let issued = self.write_pair(out, &cert.pem(), &key.serialize_pem(), &serial_hex)?;
        index.issued.insert(
            out.to_string(),
            IndexEntry {
                serial: serial_hex,
                subject: format!("{} {} {}", req.institution_code, req.role, req.terminal),
                not_after: params.not_after.unix_timestamp(),
            },
        );
        self.write_index(&index)?;
        Ok(issued)
    }

    /// Issue a client certificate from a freshly generated CA outside the federation
    /// (for demos and tests of refusal); the foreign CA's key is discarded.
    pub fn issue_from_foreign_ca(&self, req: &ClientCertRequest, out: &str) -> Result<IssuedCert> {
        req.check()?;
        check_out_name(out)?;
        let foreign_key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params("Not The Federation", Duration::days(3650))?, foreign_key);
        let key = KeyPair::generate()?;
        let params = client_params(req)?;
        let cert = params.signed_by(&key, &issuer)?;
        let serial_hex = hex(&params.serial_number.as_ref().map(|s| s.to_bytes()).unwrap_or_default());
        self.write_pair(out, &cert.pem(), &key.serialize_pem(), &serial_hex)
    }

    /// Revoke the certificate issued as `name` and rewrite the CRL atomically.
    pub fn revoke(&self, name: &str) -> Result<()> {
        let issuer = self.issuer()?;
        let mut index = self.read_index()?;
        let entry = index.issued.get(name).ok_or_else(|| CertsError::UnknownName(name.into()))?;
        if !index.revoked.iter().any(|r| r.serial == entry.serial) {
            index.revoked.push(RevokedEntry {
                name: name.into(),
                serial: entry.serial.clone(),
                revoked_at: OffsetDateTime::now_utc().unix_timestamp(),
            });
        }
        self.write_crl(&issuer, &mut index)?;
        self.write_index(&index)
    }

    /// Re-sign the CRL with a fresh validity window (run before `next_update`).
    pub fn refresh_crl(&self) -> Result<()> {
        let issuer = self.issuer()?;
        let mut index = self.read_index()?;
        self.write_crl(&issuer, &mut index)?;
        self.write_index(&index)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let ca_pem = read(&self.ca_cert_path())?;
        let key = KeyPair::from_pem(&read(&self.path("ca.key"))?)?;
        Ok(Issuer::from_ca_cert_pem(&ca_pem, key)?)
    }

    fn write_crl(&self, issuer: &Issuer<'_, KeyPair>, index: &mut Index) -> Result<()> {
        index.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let mut revoked = Vec::with_capacity(index.revoked.len());
        for r in &index.revoked {
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&unhex(&r.serial).ok_or_else(|| CertsError::Index {
                    path: self.path("index.json"),
                    message: format!("bad serial {}", r.serial),
                })?),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at).unwrap_or(now),
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            });
        }
        let crl = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(CRL_VALIDITY_DAYS),
            crl_number: SerialNumber::from(index.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)?;
        write_public(&self.crl_path(), &crl.pem()?)
    }

    fn write_pair(&self, out: &str, cert_pem: &str, key_pem: &str, serial_hex: &str) -> Result<IssuedCert> {
        let cert_path = self.path(&format!("{out}.pem"));
        let key_path = self.path(&format!("{out}.key"));
        write_private(&key_path, key_pem)?;
        write_public(&cert_path, cert_pem)?;
        Ok(IssuedCert {
            cert_path,
            key_path,
            serial_hex: serial_hex.to_string(),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    fn read_index(&self) -> Result<Index> {
        let p = self.path("index.json");
        serde_json::from_str(&read(&p)?).map_err(|e| CertsError::Index { path: p, message: e.to_string() })
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let p = self.path("index.json");
        let text = serde_json::to_string_pretty(index)
            .map_err(|e| CertsError::Index { path: p.clone(), message: e.to_string() })?;
        write_public(&p, &text)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn ca_params(name: &str, validity: Duration) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + validity;
    p.serial_number = Some(random_serial()?);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{name} CA"));
    dn.push(DnType::OrganizationName, name);
    p.distinguished_name = dn;
    Ok(p)
}

fn leaf_params(validity: Duration) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + validity;
    p.serial_number = Some(random_serial()?);
    p.distinguished_name = DistinguishedName::new();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn client_params(req: &ClientCertRequest) -> Result<CertificateParams> {
    let mut p = leaf_params(Duration::days(397))?;
    if let Some(nb) = req.not_before {
        p.not_before = nb;
    }
    if let Some(na) = req.not_after {
        p.not_after = na;
    }
    p.distinguished_name.push(DnType::CommonName, req.terminal.as_str());
    p.distinguished_name.push(DnType::OrganizationName, req.institution_name.as_str());
    for uri in [
        format!("{INSTITUTION_URI}{}", req.institution_code),
        format!("{ROLE_URI}{}", req.role),
        format!("{TERMINAL_URI}{}", req.terminal),
    ] {
        p.subject_alt_names.push(SanType::URI(uri.try_into()?));
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(p)
}

fn random_serial() -> Result<SerialNumber> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // Serials must be unpredictable (CA/B BR 7.1); without OS randomness we stop.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CertsError::Invalid("the operating system gave no randomness for a serial".into()))?;
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&b))
}

fn check_out_name(out: &str) -> Result<()> {
    let ok = profile::is_terminal_id(out) && !matches!(out, "ca" | "server");
    if ok {
        Ok(())
    } else {
        Err(CertsError::Invalid(format!(
            "output name `{out}` must be 1-64 characters of A-Z a-z 0-9 . _ - and not `ca` or `server`"
        )))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn io(p: &Path, e: std::io::Error) -> CertsError {
    CertsError::Io { path: p.to_path_buf(), source: e }
}

fn read(p: &Path) -> Result<String> {
    fs::read_to_string(p).map_err(|e| io(p, e))
}

/// Write atomically (temp file + rename) so a watcher never sees half a file.
fn write_atomic(p: &Path, content: &str, mode: u32) -> Result<()> {
    write_atomic_bytes(p, content.as_bytes(), mode)
}

fn write_atomic_bytes(p: &Path, content: &[u8], mode: u32) -> Result<()> {
    let tmp = p.with_extension(format!("{}.tmp", p.extension().and_then(|e| e.to_str()).unwrap_or("")));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(content).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, p).map_err(|e| io(p, e))
}

fn write_private(p: &Path, content: &str) -> Result<()> {
    write_atomic(p, content, 0o600)
}

fn write_public(p: &Path, content: &str) -> Result<()> {
    write_atomic(p, content, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kk-certs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_issue_revoke_writes_profile_and_crl() {
        let d = tmpdir("full");
        let pki = Pki::init(&d, &InitOptions::default()).unwrap();
        assert!(matches!(Pki::init(&d, &InitOptions::default()), Err(CertsError::AlreadyInitialised(_))));
        let req = ClientCertRequest::new("0110000001", "架け橋病院", Role::HospitalSystem, "hub-01");
        let issued = pki.issue(&req, "hub").unwrap();
        let mode = fs::metadata(&issued.key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::metadata(d.join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(issued.key_pem.contains("BEGIN PRIVATE KEY"), "PKCS#8 expected");

        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|g| format!("{g}"))
            .collect();
        assert!(sans.iter().any(|s| s.contains("urn:kakehashi:institution:0110000001")), "{sans:?}");
        assert!(sans.iter().any(|s| s.contains("urn:kakehashi:role:hospital-system")));

        let crl_before = fs::read_to_string(pki.crl_path()).unwrap();
        pki.revoke("hub").unwrap();
        let crl_after = fs::read_to_string(pki.crl_path()).unwrap();
        assert_ne!(crl_before, crl_after);
        let (_, crl_pem) = x509_parser::pem::parse_x509_pem(crl_after.as_bytes()).unwrap();
        let (_, crl) =
            <x509_parser::revocation_list::CertificateRevocationList as x509_parser::prelude::FromDer<_>>::from_der(
                &crl_pem.contents,
            )
            .unwrap();
        let serials: Vec<String> = crl.iter_revoked_certificates().map(|r| hex(r.raw_serial())).collect();
        assert_eq!(serials, vec![issued.serial_hex.clone()]);
        assert!(matches!(pki.revoke("nobody"), Err(CertsError::UnknownName(_))));
        assert!(pki.issue(&req, "hub").is_err(), "names are not reused");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_requests_are_refused_with_reason() {
        let d = tmpdir("bad");
        let pki = Pki::init(&d, &InitOptions::default()).unwrap();
        let mut req = ClientCertRequest::new("12345", "x", Role::Doctor, "t1");
        assert!(pki.issue(&req, "a").unwrap_err().to_string().contains("10-digit"));
        req.institution_code = "0110000001".into();
        req.terminal = "bad terminal".into();
        assert!(pki.issue(&req, "a").unwrap_err().to_string().contains("terminal id"));
        req.terminal = "t1".into();
        assert!(pki.issue(&req, "../escape").is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
