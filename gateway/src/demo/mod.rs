//! `kakehashi demo`: a complete synthetic federation in one directory — PKI, config,
//! a hub hospital (SS-MIX2 storage), two rural clinics (MML), a pharmacy and an
//! auditor — created on first run and reused afterwards. Every record is synthetic.

pub(crate) mod samples;

use crate::config::{Config, ConfigError};
use kakehashi_certs::{CertsError, ClientCertRequest, InitOptions, Pki, Role};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use samples::{large_discharge_summary, write_bulk_prescriptions, write_sites, write_year_of_records};

/// Why the demo could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// PKI generation failed.
    #[error(transparent)]
    Certs(#[from] CertsError),
    /// The written configuration did not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A sample record could not be encoded.
    #[error("sample data: {0}")]
    Sample(String),
}

/// A demo member institution (fictional codes and names).
pub struct DemoInstitution {
    /// 10-digit code.
    pub code: &'static str,
    /// Name.
    pub name: &'static str,
    /// Kind as written in the configuration.
    pub kind: &'static str,
}

/// The demo's institutions.
pub const HUB: DemoInstitution =
    DemoInstitution { code: "4610100011", name: "県立南海島嶼中央病院", kind: "hub-hospital" };
/// Rural clinic A (MML records).
pub const CLINIC_A: DemoInstitution =
    DemoInstitution { code: "4610200021", name: "黒潮村立黒島診療所", kind: "clinic" };
/// Rural clinic B (MML records).
pub const CLINIC_B: DemoInstitution =
    DemoInstitution { code: "4610200032", name: "青波町立山辺診療所", kind: "clinic" };
/// The pharmacy.
pub const PHARMACY: DemoInstitution = DemoInstitution { code: "4640300043", name: "みなと薬局", kind: "pharmacy" };
/// The federation audit body.
pub const AUDITOR: DemoInstitution =
    DemoInstitution { code: "4690000054", name: "南海地域医療連携監査委員会", kind: "audit-body" };

/// Client certificates the demo issues: (file name, institution, role, terminal).
pub const DEMO_CERTS: [(&str, &DemoInstitution, Role, &str); 7] = [
    ("hub-system", &HUB, Role::HospitalSystem, "hub-his-01"),
    ("clinic-a-terminal", &CLINIC_A, Role::ClinicTerminal, "kuroshima-01"),
    ("clinic-b-terminal", &CLINIC_B, Role::ClinicTerminal, "yamabe-01"),
    ("pharmacy", &PHARMACY, Role::Pharmacy, "minato-rx-01"),
    ("auditor", &AUDITOR, Role::Auditor, "audit-01"),
    ("doctor-oncall", &CLINIC_B, Role::Doctor, "yamabe-dr-oncall"),
    ("revoked-terminal", &CLINIC_A, Role::ClinicTerminal, "kuroshima-lost-02"),
];

/// Create the federation in `dir` on first run (or reuse it), refresh the CRL, and
/// return its configuration with the listeners overridden.
pub fn prepare(dir: &Path, listen: SocketAddr, admin: SocketAddr) -> Result<Config, DemoError> {
    let cfg_path = dir.join("kakehashi.toml");
    let pki_dir = dir.join("pki");
    if !cfg_path.exists() {
        let pki = match Pki::open(&pki_dir) {
            Ok(p) => p,
            Err(_) => Pki::init(
                &pki_dir,
                &InitOptions { federation_name: "Kakehashi Demo Federation".into(), ..Default::default() },
            )?,
        };
        for (name, inst, role, terminal) in DEMO_CERTS {
            if !pki_dir.join(format!("{name}.pem")).exists() {
                pki.issue(&ClientCertRequest::new(inst.code, inst.name, role, terminal), name)?;
            }
        }
        pki.revoke("revoked-terminal")?;
        // Chains correctly to nothing we trust: the stranger's CA is thrown away.
        if !pki_dir.join("stranger.pem").exists() {
            pki.issue_from_foreign_ca(
                &ClientCertRequest::new(CLINIC_A.code, CLINIC_A.name, Role::ClinicTerminal, "stranger-01"),
                "stranger",
            )?;
        }
        write_sites(dir).map_err(DemoError::Sample)?;
        write(&cfg_path, &config_text())?;
    } else {
        // A reused demo may be older than the CRL's validity; stale CRLs fail closed.
        let pki = Pki::open(&pki_dir)?;
        pki.refresh_crl()?;
        if !pki.audit_key_path().exists() {
            pki.write_audit_key()?;
        }
    }
    let mut cfg = Config::load(&cfg_path)?;
    cfg.server.listen = listen;
    cfg.server.admin_listen = admin;
    Ok(cfg)
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(|source| DemoError::Io { path: path.to_path_buf(), source })
}

fn config_text() -> String {
    let mut s = String::from(
        r#"# Kakehashi demo federation: every institution, person and record here is fictional.
[federation]
name = "Kakehashi Demo Federation"

[server]
listen = "127.0.0.1:8443"
admin_listen = "127.0.0.1:9090"

[tls]
client_ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server.key"
crls = ["pki/ca.crl"]

[database]
url = "sqlite://kakehashi.db"

[audit]
signing_key = "pki/audit-signing.pk8"
checkpoint_every = 1000
checkpoint_secs = 5
# Every signed checkpoint, start and clean stop is also written here; in production
# put it on another volume (or host) than the database. `kakehashi audit verify`
# holds the database to it.
witness = "witness/audit-witness.log"
"#,
    );
    for i in [&HUB, &CLINIC_A, &CLINIC_B, &PHARMACY, &AUDITOR] {
        s.push_str(&format!(
            "\n[[institution]]\ncode = \"{}\"\nname = \"{}\"\nkind = \"{}\"\n",
            i.code, i.name, i.kind
        ));
    }
    for (id, owner, connector, inbox) in [
        ("hub", HUB.code, r#"{ kind = "ss-mix2", root = "sites/hub/ss-mix2" }"#, None),
        (
            "clinic-a",
            CLINIC_A.code,
            r#"{ kind = "mml", dir = "sites/clinic-a/mml" }"#,
            Some(r#"{ dir = "sites/clinic-a/inbox", format = "mml" }"#),
        ),
        (
            "clinic-b",
            CLINIC_B.code,
            r#"{ kind = "mml", dir = "sites/clinic-b/mml" }"#,
            Some(r#"{ dir = "sites/clinic-b/inbox", format = "cda" }"#),
        ),
    ] {
        s.push_str(&format!("\n[[site]]\nid = \"{id}\"\nowner = \"{owner}\"\nconnector = {connector}\n"));
        if let Some(inbox) = inbox {
            s.push_str(&format!("inbox = {inbox}\n"));
        }
    }
    s.push_str(&format!("\n[[site]]\nid = \"clinic-b-rx\"\nowner = \"{}\"\nconnector = {{ kind = \"jahis-rx\", dir = \"sites/clinic-b/rx\" }}\n", CLINIC_B.code));
    s
}

/// Print, for a newcomer, what is running and a curl command that works.
pub fn print_tour(dir: &Path, cfg: &Config) {
    let d = dir.display();
    let addr = cfg.server.listen;
    println!(
        "Kakehashi demo federation in {d}\n\
         FHIR (mutual TLS): https://{addr}/fhir   admin: http://{}/healthz\n\n\
         Try, from another terminal:\n  \
         curl --cacert {d}/pki/ca.pem --cert {d}/pki/clinic-a-terminal.pem --key {d}/pki/clinic-a-terminal.key https://{addr}/fhir/metadata\n\n\
         Certificates in {d}/pki: hub-system, clinic-a-terminal, clinic-b-terminal, pharmacy, auditor, doctor-oncall,\n\
         revoked-terminal (on the CRL: refused) and stranger (another CA: refused). Ctrl-C stops the demo.",
        cfg.server.admin_listen
    );
}
