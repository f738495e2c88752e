//! Records: each site's resources, translated once and kept in memory, refreshed when
//! the site's files change. Requests read an immutable [`Snapshot`]; a background task
//! re-scans the sites and swaps in a new snapshot, re-translating only changed files.
//! Pushed documents' records are kept in the database instead ([`pushed`]).

pub mod pushed;

use crate::config::{Config, Connector};
use crate::sites::{Owner, Ownership};
use kakehashi_adapters::ss_mix2::Storage;
use kakehashi_adapters::text::Charset;
use kakehashi_fhir::Resource;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

/// One resource as served: parsed, pre-serialised, with its owner and patient.
#[derive(Debug)]
pub struct Stored {
    /// The resource.
    pub resource: Resource,
    /// Its JSON, serialised once.
    pub json: Box<RawValue>,
    /// The institution owning it (the boundary it sits behind).
    pub owner: String,
    /// The site it came from.
    pub site: String,
    /// The id of the Patient it is about (or its own id for a Patient).
    pub patient: Option<String>,
}

impl Stored {
    fn new(resource: Resource, owner: &Owner) -> Option<Stored> {
        let json = serde_json::value::to_raw_value(&resource).ok()?;
        let patient = patient_of(&resource);
        Some(Stored { resource, json, owner: owner.code.clone(), site: owner.site.clone(), patient })
    }

    /// `Type/id`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.resource.type_name(), self.resource.id().unwrap_or(""))
    }
}

/// The patient a resource is about.
fn patient_of(r: &Resource) -> Option<String> {
    let reference = match r {
        Resource::Patient(p) => return p.id.clone(),
        Resource::MedicationRequest(x) => Some(&x.subject),
        Resource::MedicationAdministration(x) => Some(&x.subject),
        Resource::AllergyIntolerance(x) => Some(&x.patient),
        Resource::Condition(x) => Some(&x.subject),
        Resource::Coverage(x) => Some(&x.beneficiary),
        Resource::Observation(x) => x.subject.as_ref(),
        Resource::DiagnosticReport(x) => x.subject.as_ref(),
        Resource::Composition(x) => x.subject.as_ref(),
        Resource::Consent(x) => x.patient.as_ref(),
        _ => None,
    }?;
    reference.reference.as_deref()?.strip_prefix("Patient/").map(str::to_string)
}

/// An immutable view of every site's records.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// All resources.
    pub all: Vec<Arc<Stored>>,
    /// Type, then id: looked up without allocating on every read.
    by_key: HashMap<&'static str, HashMap<String, usize>>,
    /// Per type, in `all` order, so searches do not scan every resource.
    by_type: HashMap<&'static str, Vec<usize>>,
    by_patient: HashMap<String, Vec<usize>>,
}

impl Snapshot {
    fn build(all: Vec<Arc<Stored>>) -> Snapshot {
        let mut by_key: HashMap<&'static str, HashMap<String, usize>> = HashMap::new();
        let mut by_type: HashMap<&'static str, Vec<usize>> = HashMap::new();
        let mut by_patient: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in all.iter().enumerate() {
            let ty = s.resource.type_name();
            by_key.entry(ty).or_default().insert(s.resource.id().unwrap_or("").to_string(), i);
            by_type.entry(ty).or_default().push(i);
            if let Some(p) = &s.patient {
                by_patient.entry(p.clone()).or_default().push(i);
            }
        }
        Snapshot { all, by_key, by_type, by_patient }
    }

    /// A resource by type and id.
    pub fn get(&self, ty: &str, id: &str) -> Option<&Arc<Stored>> {
        self.by_key.get(ty)?.get(id).map(|&i| &self.all[i])
    }

    /// Every resource about a patient.
    pub fn for_patient<'a>(&'a self, patient: &str) -> impl Iterator<Item = &'a Arc<Stored>> + 'a {
        self.by_patient.get(patient).into_iter().flatten().map(move |&i| &self.all[i])
    }

    /// Every resource of a type.
    pub fn of_type<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a Arc<Stored>> + 'a {
        self.by_type.get(ty).into_iter().flatten().map(move |&i| &self.all[i])
    }
}

type Stamp = (SystemTime, u64);

struct SiteState {
    ownership: Ownership,
    connector: Connector,
    /// Per source file: its stamp and what it translated to.
    files: HashMap<PathBuf, (Stamp, Vec<Arc<Stored>>)>,
    /// Problems of the last scan, for logs (never sent to clients).
    problems: usize,
}

/// All sites' records, refreshed in the background.
pub struct Records {
    sites: Mutex<Vec<SiteState>>,
    /// Which records arrived by push (their content is in the database).
    pushed: RwLock<pushed::PushedIndex>,
    current: RwLock<Arc<Snapshot>>,
}

impl Records {
    /// Index the configured sites once.
    pub fn load(cfg: &Config) -> Arc<Records> {
        let sites = cfg
            .sites
            .iter()
            .map(|s| SiteState {
                ownership: if s.owner == crate::config::OWNER_FROM_RECORD {
                    Ownership::PerRecord { site: s.id.clone(), members: cfg.institutions.clone() }
                } else {
                    Ownership::Site(Owner {
                        code: s.owner.clone(),
                        name: cfg.institution(&s.owner).map(|i| i.name.clone()).unwrap_or_default(),
                        site: s.id.clone(),
                    })
                },
                connector: s.connector.clone(),
                files: HashMap::new(),
                problems: 0,
            })
            .collect();
        let r = Records::with(sites, Snapshot::default());
        r.refresh();
        r
    }

    /// Records from explicit resources (tests, benchmarks).
    pub fn from_resources(resources: Vec<(Resource, Owner)>) -> Arc<Records> {
        let all = resources.into_iter().filter_map(|(r, o)| Stored::new(r, &o)).map(Arc::new).collect();
        Records::with(Vec::new(), Snapshot::build(all))
    }

    fn with(sites: Vec<SiteState>, snapshot: Snapshot) -> Arc<Records> {
        Arc::new(Records {
            sites: Mutex::new(sites),
            pushed: RwLock::default(),
            current: RwLock::new(Arc::new(snapshot)),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        // Every writer replaces whole values, so a panic elsewhere never leaves them half-done.
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Note the records of pushed document `id` (received at `received_at`, Unix
    /// seconds, and stored already) unless it is here: this instance's own push and the
    /// periodic load of other instances' pushes may both offer it. Served from now on.
    pub fn add_pushed_document(&self, id: &str, received_at: i64, keys: Vec<pushed::PushedKey>) {
        self.pushed.write().unwrap_or_else(PoisonError::into_inner).add(id, received_at, keys);
    }

    /// Whether pushed document `id` is here.
    pub fn has_pushed_document(&self, id: &str) -> bool {
        self.pushed.read().unwrap_or_else(PoisonError::into_inner).has_document(id)
    }

    /// The newest receive time of the pushed documents here (0 when none).
    pub fn pushed_watermark(&self) -> i64 {
        self.pushed.read().unwrap_or_else(PoisonError::into_inner).newest()
    }

    /// What of `wanted` to ask the database for, if anything: only patients with pushed
    /// records are named (a search may list many, each a bound parameter).
    pub fn pushed_wanted<'a>(&self, wanted: pushed::Wanted<'a>) -> Option<pushed::Wanted<'a>> {
        let idx = self.pushed.read().unwrap_or_else(PoisonError::into_inner);
        match wanted {
            pushed::Wanted::Key(t, id) => idx.has(t, id).then_some(wanted),
            pushed::Wanted::Type(t) => idx.has_type(t).then_some(wanted),
            pushed::Wanted::Patients(mut ps, t) => {
                ps.retain(|p| idx.has_patient(p));
                (!ps.is_empty() && t.is_none_or(|t| idx.has_type(t))).then_some(pushed::Wanted::Patients(ps, t))
            }
        }
    }

    /// Re-scan every site; re-translate changed files; swap the snapshot if anything
    /// changed. Returns whether it did.
    pub fn refresh(&self) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = false;
        for site in sites.iter_mut() {
            changed |= refresh_site(site);
        }
        if changed {
            let mut all: Vec<Arc<Stored>> = Vec::new();
            {
                // Borrowed (type, id) keys: no allocation per record.
                let mut seen: std::collections::HashSet<(&str, &str)> = std::collections::HashSet::new();
                // Sites in configuration order, each site's files in path order.
                let site_records = sites.iter().flat_map(|site| {
                    let mut paths: Vec<&PathBuf> = site.files.keys().collect();
                    paths.sort();
                    paths.into_iter().flat_map(move |p| site.files[p].1.iter())
                });
                for s in site_records {
                    if seen.insert((s.resource.type_name(), s.resource.id().unwrap_or(""))) {
                        all.push(s.clone());
                    }
                }
            }
            let snap = Arc::new(Snapshot::build(all));
            *self.current.write().unwrap_or_else(PoisonError::into_inner) = snap;
        }
        changed
    }

    /// Refresh every `every` until dropped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            // Directory walks and translation are blocking work.
            let _ = tokio::task::spawn_blocking(move || me.refresh()).await;
        }
    }
}

fn stamp(p: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn refresh_site(site: &mut SiteState) -> bool {
    let (current, problems): (Vec<PathBuf>, usize) = match &site.connector {
        Connector::SsMix2 { root } => match Storage::new(root).scan_all() {
            Ok(scan) => (scan.files.into_iter().map(|f| f.path).collect(), scan.problems.len()),
            Err(e) => {
                tracing::error!(site = %site.ownership.site(), reason = %e.message, "site storage unreadable; keeping its last records");
                return false;
            }
        },
        Connector::Mml { dir } | Connector::JahisRx { dir } => {
            match crate::sites::files_with(dir, site.connector.extension()) {
                Ok(files) => (files, 0),
                Err(e) => {
                    tracing::error!(site = %site.ownership.site(), reason = %e.message, "site directory unreadable; keeping its last records");
                    return false;
                }
            }
        }
    };
    if problems != site.problems {
        tracing::warn!(site = %site.ownership.site(), problems, "site storage has files that cannot be used");
        site.problems = problems;
    }
    let mut changed = false;
    let keep: std::collections::HashSet<&PathBuf> = current.iter().collect();
    let before = site.files.len();
    site.files.retain(|p, _| keep.contains(p));
    changed |= site.files.len() != before;
    for path in &current {
        let Some(st) = stamp(path) else { continue };
        if site.files.get(path).is_some_and(|(s, _)| *s == st) {
            continue;
        }
        changed = true;
        let translated = match (&site.connector, &site.ownership) {
            (Connector::SsMix2 { .. }, Ownership::Site(owner)) => {
                crate::sites::translate_hl7_file(path, owner, Some(Charset::Iso2022Jp)).map(|t| (t, owner.clone()))
            }
            (Connector::Mml { .. }, o) => crate::sites::translate_mml_file_owned(path, o),
            (Connector::JahisRx { .. }, o) => crate::sites::translate_jahis_file_owned(path, o),
            // Configuration checking allows `from-record` only for formats that name their owner.
            (Connector::SsMix2 { .. }, Ownership::PerRecord { .. }) => continue,
        };
        let resources = match translated {
            Ok((t, owner)) => t.resources.into_iter().filter_map(|r| Stored::new(r, &owner)).map(Arc::new).collect(),
            Err(e) => {
                // The path names the patient: log the reason only.
                tracing::warn!(site = %site.ownership.site(), reason = %e.message, "record not translated");
                Vec::new()
            }
        };
        site.files.insert(path.clone(), (st, resources));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[federation]
name = "t"
[tls]
client_ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server.key"
crls = ["pki/ca.crl"]
[database]
url = "sqlite://t.db"
[audit]
signing_key = "pki/audit-signing.pk8"
[[institution]]
code = "4610200021"
name = "Clinic A"
kind = "clinic"
[[institution]]
code = "4610200032"
name = "Clinic B"
kind = "clinic"
facility_ids = ["JPN-CLINIC-B"]
[[site]]
id = "shared-ehr"
owner = "from-record"
connector = { kind = "mml", dir = "sites/shared/mml" }
[[site]]
id = "shared-rx"
owner = "from-record"
connector = { kind = "jahis-rx", dir = "sites/clinic-b/rx" }
"#;

    #[test]
    fn a_shared_ehr_site_takes_each_records_owner_from_the_record() {
        let dir = std::env::temp_dir().join(format!("kk-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::demo::write_sites(&dir).unwrap();
        let shared = dir.join("sites/shared/mml");
        std::fs::create_dir_all(&shared).unwrap();
        let a = std::fs::read_to_string(dir.join("sites/clinic-a/mml/A-0101-patient.xml")).unwrap();
        let b = std::fs::read_to_string(dir.join("sites/clinic-b/mml/B-0201-patient.xml")).unwrap();
        std::fs::write(shared.join("a.xml"), &a).unwrap();
        // Clinic B's record names its facility by an alias listed in facility_ids.
        std::fs::write(shared.join("b.xml"), b.replace(">4610200032<", ">JPN-CLINIC-B<")).unwrap();
        // A record naming a non-member is not served.
        std::fs::write(shared.join("x.xml"), a.replace(">4610200021<", ">4699999999<")).unwrap();
        let cfg = Config::parse(CONFIG, &dir.join("kakehashi.toml")).unwrap();

        let records = Records::load(&cfg);
        let snap = records.snapshot();
        let mut owners: Vec<(String, String)> =
            snap.of_type("Patient").map(|s| (s.owner.clone(), s.site.clone())).collect();
        owners.sort();
        assert_eq!(
            owners,
            [
                ("4610200021".to_string(), "shared-ehr".to_string()),
                ("4610200032".to_string(), "shared-ehr".to_string()),
            ]
        );
        // The prescription's owner comes from its record 1 (prefecture, table, code).
        let rx: Vec<(String, String)> =
            snap.of_type("MedicationRequest").map(|s| (s.owner.clone(), s.site.clone())).collect();
        assert_eq!(rx, [("4610200032".to_string(), "shared-rx".to_string())]);
        // The owner is stamped on the resource as well, not only on the index.
        for s in snap.of_type("Patient") {
            assert!(s.json.get().contains(&format!("\"code\":\"{}\"", s.owner)), "{}", s.json.get());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn from_record_is_refused_where_records_do_not_name_an_owner() {
        let bad =
            CONFIG.replace(r#"{ kind = "mml", dir = "sites/shared/mml" }"#, r#"{ kind = "ss-mix2", root = "s" }"#);
        let e = Config::parse(&bad, std::path::Path::new("f.toml")).unwrap_err().to_string();
        assert!(e.contains("site[0].owner") && e.contains("from-record"), "{e}");
        let bad = CONFIG.replace(
            r#"connector = { kind = "mml", dir = "sites/shared/mml" }"#,
            "connector = { kind = \"mml\", dir = \"m\" }\ninbox = { dir = \"i\", format = \"mml\" }",
        );
        let e = Config::parse(&bad, std::path::Path::new("f.toml")).unwrap_err().to_string();
        assert!(e.contains("site[0].inbox"), "{e}");
    }
}
