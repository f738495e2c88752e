//! The federation configuration: one TOML file describing institutions, sites,
//! listeners, TLS material and the database. Relative paths are resolved against the
//! directory holding the file. Every error names the file and the key at fault.

use kakehashi_certs::profile;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration error, naming file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    /// TOML syntax or shape error (toml's message names line, column and key).
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    /// A value is present but wrong.
    #[error("{file}: key `{key}`: {message}")]
    Invalid { file: PathBuf, key: String, message: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Federation-wide settings.
    pub federation: Federation,
    /// Listeners and HTTP limits.
    #[serde(default)]
    pub server: Server,
    /// TLS material.
    pub tls: Tls,
    /// Database connection.
    pub database: Database,
    /// Audit log settings.
    pub audit: AuditSettings,
    /// Member institutions.
    #[serde(default, rename = "institution")]
    pub institutions: Vec<Institution>,
    /// Record sources and their owners.
    #[serde(default, rename = "site")]
    pub sites: Vec<Site>,
    /// Limits of the policy's exceptional paths (break-glass, presented prescriptions).
    #[serde(default)]
    pub policy: PolicySettings,
    /// The records index and cache.
    #[serde(default)]
    pub records: RecordsSettings,
    /// Where the file was read from (set by [`Config::load`]).
    #[serde(skip)]
    pub source: PathBuf,
}

/// Federation-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Federation {
    /// Human-readable federation name.
    pub name: String,
}

/// Listener addresses, timeouts and size limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// The mutual-TLS FHIR listener.
    pub listen: SocketAddr,
    /// The plain-HTTP admin listener (/healthz, /metrics); keep it on loopback.
    pub admin_listen: SocketAddr,
    /// Seconds a client has to complete the TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Seconds a client has to send a request's headers (HTTP/1.1).
    pub header_read_timeout_secs: u64,
    /// Seconds a request may take end to end.
    pub request_timeout_secs: u64,
    /// Largest request header block accepted, in bytes.
    pub max_header_bytes: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds in-flight requests get to finish on SIGTERM.
    pub shutdown_grace_secs: u64,
    /// How often CRL files are checked for changes, in seconds.
    pub crl_check_secs: u64,
    /// How often the outbox is polled for deliveries, in milliseconds.
    pub outbox_poll_ms: u64,
    /// How long a new delivery waits before its first attempt, in milliseconds.
    pub outbox_delay_ms: u64,
    /// Days a pushed referral or discharge summary gives its recipient access.
    pub referral_days: u64,
    /// The base URL clients reach the FHIR API at (`https://gw.example.jp/fhir`), for
    /// `fullUrl`, paging links and `Location`. Never taken from the request's Host
    /// header; default `https://<listen address>/fhir`.
    pub public_base_url: Option<String>,
    /// Most TLS connections open at once; further clients are refused (503).
    pub max_connections: usize,
    /// Most TLS connections open at once with one client certificate (503 beyond).
    pub max_connections_per_certificate: usize,
    /// Refused TLS handshakes are written to the audit log, aggregated per certificate
    /// and reason over this many seconds.
    pub refused_handshake_audit_secs: u64,
    /// TLS handshakes in progress at once from one client address; further connections
    /// from it are closed at once (a host cannot fill the connection limit with
    /// handshakes it never finishes).
    pub max_handshakes_per_address: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            handshake_timeout_secs: 10,
            header_read_timeout_secs: 10,
            request_timeout_secs: 30,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 8 * 1024 * 1024,
            shutdown_grace_secs: 30,
            crl_check_secs: 2,
            outbox_poll_ms: 500,
            outbox_delay_ms: 0,
            referral_days: 180,
            public_base_url: None,
            max_connections: 10_000,
            max_connections_per_certificate: 256,
            refused_handshake_audit_secs: 60,
            max_handshakes_per_address: 64,
        }
    }
}

/// `[records]`: the index of the sites' records and the cache of translations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsSettings {
    /// Translated patients kept in memory, in MB (least recently used go first).
    pub cache_mb: u64,
    /// Percent of one core the gateway may spend looking for changes while nothing
    /// changes (the background indexer's budget; default 1.5, under the 2 % promise).
    pub index_cpu_percent: f64,
    /// Where the index lives: default, beside an SQLite store as `<name>-records.db`
    /// (deleting it makes the gateway rebuild it), or in the PostgreSQL store itself.
    pub index_url: Option<String>,
    /// Patients a search without a patient (or identifier) may have to read; beyond it
    /// the search is refused as too costly and asked to name a patient.
    pub max_search_patients: u64,
    /// At start, how long to wait for the first index pass before serving (a small
    /// federation is then complete; a large storage goes on indexing while serving).
    pub startup_wait_ms: u64,
    /// Tell a cached SS-MIX2 patient current by the kernel's change notices (inotify)
    /// when its storage is on a local file system (default); `false` checks its
    /// directories' times on every read instead. Storage on a network file system is
    /// always checked by stat: other hosts' writes raise no notice here.
    pub change_notices: bool,
}

impl Default for RecordsSettings {
    fn default() -> Self {
        RecordsSettings {
            cache_mb: 64,
            index_cpu_percent: 1.5,
            index_url: None,
            max_search_patients: 200,
            startup_wait_ms: 2000,
            change_notices: true,
        }
    }
}

impl RecordsSettings {
    /// The index URL for a store at `database_url`.
    pub fn index_url_for(&self, database_url: &str) -> String {
        if let Some(u) = &self.index_url {
            return u.clone();
        }
        match database_url.strip_prefix("sqlite://") {
            Some(rest) => {
                let file = rest.split('?').next().unwrap_or(rest);
                let stem = file.strip_suffix(".db").unwrap_or(file);
                format!("sqlite://{stem}-records.db")
            }
            None => database_url.to_string(),
        }
    }
}

/// `[policy]`: limits of the exceptional ways across a boundary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    /// Hours a break-glass declaration lets one reader (terminal) read one patient.
    pub break_glass_hours: u64,
    /// Patients one terminal may hold open break-glass declarations for at once.
    pub break_glass_max_patients: u64,
    /// Presented-prescription lookups one pharmacy certificate may make per minute
    /// (429 beyond), so that a sweep of numbers and birth dates is slow and visible.
    pub prescription_lookups_per_minute: u32,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings { break_glass_hours: 24, break_glass_max_patients: 10, prescription_lookups_per_minute: 30 }
    }
}

/// TLS material (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Federation CA certificate(s) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// The gateway's certificate chain.
    pub cert: PathBuf,
    /// The gateway's PKCS#8 private key.
    pub key: PathBuf,
    /// CRL files from the federation CA; reloaded when they change.
    pub crls: Vec<PathBuf>,
}

/// Database connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// `sqlite://path` (embedded) or `postgres://...`.
    pub url: String,
}

/// Audit log settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// The gateway's Ed25519 key for checkpoints (PKCS#8 DER, from `certs init`).
    pub signing_key: PathBuf,
    /// A signed checkpoint at every multiple of this sequence number. Fixed for a
    /// database at its first start (kept in `kk_meta`).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Also sign the chain head when this many seconds passed since the last checkpoint.
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_secs: u64,
    /// Public halves (hex) of retired signing keys, oldest first, so checkpoints they
    /// signed before their successor took over still verify.
    #[serde(default)]
    pub retired_public_keys: Vec<PathBuf>,
    /// An append-only file outside the database where every signed checkpoint, start
    /// and clean stop is also written (put it on another volume); `audit verify
    /// --witness` checks the database against it.
    #[serde(default)]
    pub witness: Option<PathBuf>,
    /// Also send every event to an ATNA audit record repository (syslog over TLS).
    #[serde(default)]
    pub forward: Option<AuditForward>,
    /// SQLite only: milliseconds an event may wait in the audit journal (where it is
    /// durable before its read is answered) before it is copied into the
    /// `audit_event` table; 0 copies it before the read is answered.
    #[serde(default = "default_index_delay_ms")]
    pub index_delay_ms: u64,
    /// SQLite only: size of an audit journal segment file, in MB.
    #[serde(default = "default_journal_segment_mb")]
    pub journal_segment_mb: u64,
}

impl AuditSettings {
    /// The embedded store's journal settings.
    pub fn journaling(&self) -> crate::audit::Journaling {
        crate::audit::Journaling {
            segment_bytes: self.journal_segment_mb.max(1) << 20,
            index_delay: std::time::Duration::from_millis(self.index_delay_ms),
        }
    }
}

fn default_index_delay_ms() -> u64 {
    crate::audit::Journaling::default().index_delay.as_millis() as u64
}

fn default_journal_segment_mb() -> u64 {
    crate::audit::Journaling::default().segment_bytes >> 20
}

/// `[audit.forward]`: an IHE ATNA audit record repository reached by RFC 5425 syslog over TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditForward {
    /// `host:port` of the repository (6514 is syslog over TLS).
    pub address: String,
    /// The name its certificate is checked against.
    pub server_name: String,
    /// CA certificates trusted for the repository's certificate.
    pub ca: PathBuf,
    /// Client certificate, when the repository requires mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Events held while the repository is unreachable; beyond this they are counted as dropped.
    #[serde(default = "default_forward_queue")]
    pub queue: usize,
    /// HOSTNAME field of the syslog messages.
    #[serde(default = "default_forward_name")]
    pub hostname: String,
    /// APP-NAME field of the syslog messages.
    #[serde(default = "default_forward_name")]
    pub app_name: String,
}

fn default_forward_queue() -> usize {
    10_000
}

fn default_forward_name() -> String {
    "kakehashi".into()
}

fn default_checkpoint_every() -> u64 {
    1000
}

fn default_checkpoint_secs() -> u64 {
    5
}

/// What kind of member an institution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstitutionKind {
    /// A hub hospital (へき地医療拠点病院).
    HubHospital,
    /// A rural clinic.
    Clinic,
    /// A pharmacy.
    Pharmacy,
    /// A municipality.
    Municipality,
    /// A federation audit body (sees the whole audit log).
    AuditBody,
}

/// A member institution.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Institution {
    /// 10-digit 医療機関コード.
    pub code: String,
    /// Name.
    pub name: String,
    /// Kind of member.
    pub kind: InstitutionKind,
    /// Other ids by which records name this institution (an MML facility id, say), for
    /// sites whose owner is taken from each record.
    #[serde(default)]
    pub facility_ids: Vec<String>,
}

/// `site.owner` value for shared cloud EHRs hosting several clinics: each record's
/// owner is the member institution the record itself names.
impl Institution {
    /// Whether a record naming `id` (a code or one of `facility_ids`) means this institution.
    pub fn is_named(&self, id: &str) -> bool {
        let id = id.trim();
        self.code == id || self.facility_ids.iter().any(|f| f == id)
    }
}

/// A site's `owner` for a shared cloud EHR hosting several clinics: each MML document or
/// JAHIS prescription belongs to the member institution it names.
pub const OWNER_FROM_RECORD: &str = "from-record";

/// A source of records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Short id of the site, unique in the file.
    pub id: String,
    /// Institution code owning every record of this site.
    pub owner: String,
    /// How records are reached.
    pub connector: Connector,
    /// Where documents pushed to this site's owner are delivered, and in which format.
    #[serde(default)]
    pub inbox: Option<Inbox>,
    /// The identifier system of the prescription number printed on this site's
    /// prescriptions, the only identifier a pharmacy's presented-prescription lookup
    /// matches (default `urn:kakehashi:local:<owner>:prescription-number`, which the
    /// gateway gives the JAHIS prescription number and the HL7 order number).
    #[serde(default)]
    pub prescription_number_system: Option<String>,
}

/// A delivery inbox: a directory the site's system picks documents up from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbox {
    /// Directory.
    pub dir: PathBuf,
    /// Native format written there.
    pub format: InboxFormat,
}

/// Format of delivered documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InboxFormat {
    /// MML 4.x XML.
    Mml,
    /// CDA R2 XML.
    Cda,
    /// The FHIR document Bundle as JSON.
    Fhir,
}

/// How a site's records are reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Connector {
    /// An SS-MIX2 standardized storage root.
    SsMix2 {
        /// Storage root directory.
        root: PathBuf,
    },
    /// A directory of MML XML documents.
    Mml {
        /// Directory of `.xml` files.
        dir: PathBuf,
    },
    /// A directory of JAHIS prescription CSV files (院外処方箋 2D-symbol data).
    JahisRx {
        /// Directory of `.csv` files.
        dir: PathBuf,
    },
}

impl Connector {
    /// The file extension of the records a directory connector reads (SS-MIX2 storage
    /// is walked by its own layout instead).
    pub fn extension(&self) -> &'static str {
        match self {
            Connector::SsMix2 { .. } => "",
            Connector::Mml { .. } => "xml",
            Connector::JahisRx { .. } => "csv",
        }
    }
}

impl Config {
    /// Read, parse and check a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(file).map_err(|e| ConfigError::Read { file: file.to_path_buf(), source: e })?;
        Self::parse(&text, file)
    }

    /// Parse and check configuration text read from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { file: file.to_path_buf(), message: e.to_string() })?;
        cfg.source = file.to_path_buf();
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        cfg.resolve_paths(&base);
        cfg.check()?;
        Ok(cfg)
    }

    /// The delivery inbox of an institution, if one of its sites has one.
    pub fn inbox_of(&self, institution: &str) -> Option<&Inbox> {
        self.sites.iter().filter(|s| s.owner == institution).find_map(|s| s.inbox.as_ref())
    }

    /// The institution with this code, if it is a member.
    pub fn institution(&self, code: &str) -> Option<&Institution> {
        self.institutions.iter().find(|i| i.code == code)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.client_ca);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.audit.signing_key);
        self.audit.retired_public_keys.iter_mut().for_each(fix);
        self.audit.witness.iter_mut().for_each(fix);
        if let Some(f) = &mut self.audit.forward {
            fix(&mut f.ca);
            f.cert.iter_mut().chain(f.key.iter_mut()).for_each(fix);
        }
        self.tls.crls.iter_mut().for_each(fix);
        for s in &mut self.sites {
            if let Some(inbox) = &mut s.inbox {
                fix(&mut inbox.dir);
            }
            match &mut s.connector {
                Connector::SsMix2 { root } => fix(root),
                Connector::Mml { dir } | Connector::JahisRx { dir } => fix(dir),
            }
        }
        if let Some(rest) = self.records.index_url.clone().as_deref().and_then(|u| u.strip_prefix("sqlite://")) {
            let p = Path::new(rest.split('?').next().unwrap_or(rest));
            if p.is_relative() {
                self.records.index_url = Some(format!("sqlite://{}", base.join(p).display()));
            }
        }
        if let Some(rest) = self.database.url.strip_prefix("sqlite://") {
            let p = Path::new(rest.split('?').next().unwrap_or(rest));
            if p.is_relative() && !rest.starts_with(':') {
                let q = rest.find('?').map(|i| &rest[i..]).unwrap_or("");
                self.database.url = format!("sqlite://{}{q}", base.join(p).display());
            }
        }
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.source.clone(), key: key.into(), message: message.into() }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.tls.crls.is_empty() {
            return Err(self.invalid("tls.crls", "at least one CRL file is required: revocation is never optional"));
        }
        let mut seen = HashMap::new();
        for (i, inst) in self.institutions.iter().enumerate() {
            if !profile::is_institution_code(&inst.code) {
                return Err(self.invalid(
                    format!("institution[{i}].code"),
                    format!("`{}` is not a 10-digit 医療機関コード", inst.code),
                ));
            }
            if let Some(j) = seen.insert(inst.code.as_str(), i) {
                return Err(self.invalid(
                    format!("institution[{i}].code"),
                    format!("`{}` is already used by institution[{j}]", inst.code),
                ));
            }
        }
        let mut ids = HashMap::new();
        for (i, site) in self.sites.iter().enumerate() {
            if site.owner == OWNER_FROM_RECORD {
                if !matches!(site.connector, Connector::Mml { .. } | Connector::JahisRx { .. }) {
                    return Err(self.invalid(
                        format!("site[{i}].owner"),
                        "`from-record` needs a connector whose records name their institution (mml, jahis-rx)",
                    ));
                }
                if site.inbox.is_some() {
                    return Err(self.invalid(
                        format!("site[{i}].inbox"),
                        "a site with owner `from-record` has no single recipient for an inbox",
                    ));
                }
            } else if self.institution(&site.owner).is_none() {
                return Err(self.invalid(
                    format!("site[{i}].owner"),
                    format!("`{}` is not an institution of this federation", site.owner),
                ));
            }
            if ids.insert(site.id.as_str(), i).is_some() {
                return Err(self.invalid(format!("site[{i}].id"), format!("`{}` is used twice", site.id)));
            }
        }
        if self.audit.checkpoint_every == 0 || self.audit.checkpoint_secs == 0 {
            return Err(self.invalid("audit.checkpoint_every", "checkpoint_every and checkpoint_secs must be positive"));
        }
        if let Some(base) = &self.server.public_base_url {
            let ok = base
                .strip_prefix("https://")
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && !rest.contains(['?', '#', ' ']));
            if !ok {
                return Err(self.invalid(
                    "server.public_base_url",
                    format!(
                        "`{base}` is not an https:// URL without query or fragment (e.g. https://gw.example.jp/fhir)"
                    ),
                ));
            }
        }
        if !(self.records.index_cpu_percent > 0.0 && self.records.index_cpu_percent <= 100.0) {
            return Err(self.invalid("records.index_cpu_percent", "must be more than 0 and at most 100"));
        }
        if self.server.max_connections == 0
            || self.server.max_connections_per_certificate == 0
            || self.server.max_handshakes_per_address == 0
        {
            return Err(self.invalid("server.max_connections", "connection limits must be positive"));
        }
        if self.server.max_header_bytes < 8192 {
            return Err(self.invalid("server.max_header_bytes", "must be at least 8192"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[federation]
name = "test"
[tls]
client_ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server.key"
crls = ["pki/ca.crl"]
[database]
url = "sqlite://kakehashi.db"
[audit]
signing_key = "pki/audit-signing.pk8"
[[institution]]
code = "0110000001"
name = "Hub"
kind = "hub-hospital"
[[site]]
id = "hub"
owner = "0110000001"
connector = { kind = "ss-mix2", root = "sites/hub" }
"#;

    #[test]
    fn resolves_relative_paths_against_the_file() {
        let c = Config::parse(GOOD, Path::new("/etc/kk/kakehashi.toml")).unwrap();
        assert_eq!(c.tls.client_ca, PathBuf::from("/etc/kk/pki/ca.pem"));
        assert_eq!(c.database.url, "sqlite:///etc/kk/kakehashi.db");
        assert!(matches!(&c.sites[0].connector, Connector::SsMix2 { root } if root == Path::new("/etc/kk/sites/hub")));
        assert_eq!(c.server.listen.port(), 8443);
    }

    #[test]
    fn errors_name_file_and_key() {
        let bad = GOOD.replace("code = \"0110000001\"", "code = \"11\"");
        let e = Config::parse(&bad, Path::new("f.toml")).unwrap_err().to_string();
        assert!(e.contains("f.toml") && e.contains("institution[0].code"), "{e}");

        let bad = GOOD.replace("owner = \"0110000001\"", "owner = \"0220000002\"");
        let e = Config::parse(&bad, Path::new("f.toml")).unwrap_err().to_string();
        assert!(e.contains("site[0].owner"), "{e}");

        let bad = GOOD.replace("[database]", "[database]\nurll = 1");
        let e = Config::parse(&bad, Path::new("f.toml")).unwrap_err().to_string();
        assert!(e.contains("f.toml") && e.contains("urll"), "{e}");

        let bad = GOOD.replace("crls = [\"pki/ca.crl\"]", "crls = []");
        let e = Config::parse(&bad, Path::new("f.toml")).unwrap_err().to_string();
        assert!(e.contains("tls.crls"), "{e}");
    }
}
