//! A unit: one patient's records at one site, the grain the index and the cache work
//! in. An SS-MIX2 storage keeps a patient under one directory, so a unit is read by
//! listing that directory (a few directory reads and stats tell whether anything
//! changed) and translating the newest version of each record; a directory site (MML,
//! JAHIS) keeps a patient's documents among others, and the index says which.

use super::index::{key64, FileRow, UnitRows};
use super::Stored;
use crate::config::Connector;
use crate::sites::{Owner, Ownership};
use kakehashi_adapters::ss_mix2::{self, Stamp, Storage};
use kakehashi_adapters::text::Charset;
use kakehashi_fhir::Resource;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A site as the records source reads it.
#[derive(Debug, Clone)]
pub struct Site {
    /// Site id.
    pub id: String,
    /// Where and how its records are read.
    pub connector: Connector,
    /// Who owns its records.
    pub ownership: Ownership,
    /// Identifier system of prescription numbers printed on its prescriptions (`None`:
    /// the owner's `urn:kakehashi:local:<owner>:prescription-number`).
    pub prescription_system: Option<String>,
}

impl Site {
    /// The directory the site's records live in (the SS-MIX2 root, or the directory).
    pub fn root(&self) -> &Path {
        match &self.connector {
            Connector::SsMix2 { root } => root,
            Connector::Mml { dir } | Connector::JahisRx { dir } => dir,
        }
    }

    /// True for an SS-MIX2 storage (patients by directory).
    pub fn is_ss_mix2(&self) -> bool {
        matches!(self.connector, Connector::SsMix2 { .. })
    }

    /// The Patient id of SS-MIX2 patient `local` (derived, no file needed).
    pub fn patient_id(&self, local: &str) -> Option<String> {
        match &self.ownership {
            Ownership::Site(o) => Some(kakehashi_mappings::stable_id(&o.code, "Patient", local)),
            Ownership::PerRecord { .. } => None,
        }
    }

    fn prescription_system(&self, owner: &str) -> String {
        self.prescription_system
            .clone()
            .unwrap_or_else(|| kakehashi_mappings::codes::local_system(owner, "prescription-number"))
    }
}

/// Why a site's records could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("site {site}: {message}")]
pub struct SiteError {
    /// Site id.
    pub site: String,
    /// What failed (may name a path; logged, never sent to clients).
    pub message: String,
}

/// A file of a unit and what became of it.
#[derive(Debug, Clone)]
pub struct UnitFile {
    /// Path relative to the site root.
    pub rel: String,
    /// Its stamp.
    pub stamp: Stamp,
    /// 0 translated, 1 superseded, 2 unusable.
    pub state: i64,
}

/// One patient's records at one site, translated.
#[derive(Debug)]
pub struct Unit {
    /// Site id.
    pub site: String,
    /// Patient id.
    pub patient: String,
    /// The site's own id of the patient (SS-MIX2 directory), else the Patient id.
    pub local: String,
    /// Owning institution.
    pub owner: String,
    /// Every file considered, with its outcome.
    pub files: Vec<UnitFile>,
    /// The records, each once, in path order.
    pub records: Vec<Arc<Stored>>,
    /// Approximate memory held (for the cache's budget).
    pub bytes: usize,
    /// Modification time of the SS-MIX2 `-/ADT-00` directory when read.
    pub watch_mtime: i64,
    /// Files that could not be used, for logs and metrics.
    pub problems: usize,
    /// For an SS-MIX2 patient, what tells the unit is still current without listing
    /// its files; renewed when a listing finds nothing changed.
    pub watch: std::sync::Mutex<Option<Arc<Watch>>>,
    /// When the last check that found the unit current began.
    pub checked: Checked,
    /// Held while the unit is checked: concurrent readers of one patient wait for one
    /// check rather than each making their own.
    pub checking: tokio::sync::Mutex<()>,
    /// Its directories under change notices since it was last found current (local
    /// file systems): then no stat is needed to tell it current.
    pub armed: std::sync::Mutex<Option<super::notify::Armed>>,
}

/// A moment a check began, in nanoseconds since the process's first.
#[derive(Debug, Default)]
pub struct Checked(std::sync::atomic::AtomicU64);

impl Checked {
    /// Now, as a moment to compare.
    pub fn now() -> u64 {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        // +1: moment 0 is "never checked".
        EPOCH.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64 + 1
    }

    /// Whether a check began at or after `moment`.
    pub fn since(&self, moment: u64) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) >= moment
    }

    /// A check that began at `moment` found the unit current.
    pub fn mark(&self, moment: u64) {
        self.0.fetch_max(moment, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Unit {
    /// Whether the unit is current by its watch alone (blocking: a few stat calls,
    /// made outside the lock so that readers of one patient do not queue).
    pub fn unchanged(&self) -> bool {
        let watch = self.watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        watch.is_some_and(|w| w.unchanged())
    }

    /// A listing found the unit current: watch from it from now on.
    pub fn rewatch(&self, watch: Watch) {
        *self.watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(watch));
    }

    /// Put the unit's directories under change notices, keeping the arming only if its
    /// watch still finds the unit current afterwards (blocking: a stat per directory).
    /// Called once a check or listing found it current.
    pub fn arm(&self, notices: &Arc<super::notify::Notices>, key: &str) {
        let watch = self.watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(watch) = watch else { return };
        let armed = notices.arm(key, watch.dirs.iter().map(|(d, _)| d.as_path()));
        let armed = armed.filter(|_| watch.unchanged());
        *self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = armed;
    }

    /// Whether change notices tell the unit current without a stat. Not once its
    /// listing is older than [`RELIST_AFTER`]: a file changed in place through a hard
    /// link elsewhere, or the target of a symbolic link, raises no notice in the
    /// patient's directories, and is found by listing again, as without notices.
    pub fn noticed_current(&self, notices: &super::notify::Notices) -> bool {
        let fresh = self
            .watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|w| w.listed.elapsed() < RELIST_AFTER);
        fresh
            && self
                .armed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .is_some_and(|a| notices.current(a))
    }
}

/// A file's state in the index: translated.
pub const TRANSLATED: i64 = 0;
/// A file's state in the index: an older version, or a cancelled order's.
pub const SUPERSEDED: i64 = 1;
/// A file's state in the index: could not be used (retried when it changes).
pub const UNUSABLE: i64 = 2;

/// A file still being written (or replaced) looks broken; one younger than this is
/// skipped quietly and retried when its stamp changes.
const SETTLING_NS: i64 = 10_000_000_000;

fn now_ns() -> i64 {
    crate::audit::now_micros().saturating_mul(1000)
}

/// The file name of an SS-MIX2 message (it names patient, date, type, order and version).
fn unit_file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

/// Modification time (ns) of a directory, 0 when it does not exist.
pub fn dir_mtime(p: &Path) -> i64 {
    std::fs::metadata(p).map(|m| Stamp::of(&m).mtime_ns).unwrap_or(0)
}

/// Modification time (ns) of SS-MIX2 patient `local`'s `-/ADT-00` directory, where a
/// new version of its demographics appears (0 when there is none).
pub fn watched(site: &Site, local: &str) -> i64 {
    Storage::new(site.root()).patient_dir(local).map_or(0, |d| dir_mtime(&d.join("-").join("ADT-00")))
}

/// The stamps of SS-MIX2 patient `local`'s files, without translating anything: what a
/// reader compares with the index and the cache to know whether anything changed.
pub fn ss_mix2_listing(site: &Site, local: &str) -> Result<ss_mix2::PatientFiles, SiteError> {
    let storage = Storage::new(site.root());
    if !site.root().is_dir() {
        return Err(SiteError {
            site: site.id.clone(),
            message: format!("storage root {} is not reachable", site.root().display()),
        });
    }
    storage.patient_files(local).map_err(|e| SiteError { site: site.id.clone(), message: e.to_string() })
}

/// How long a listing is trusted on the directories' times alone: after this a read
/// lists the patient's files again, so that a file rewritten in place (which SS-MIX2
/// writers do not do: a new version is a new file) is seen within it too.
const RELIST_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// What tells a cached SS-MIX2 patient is current without listing its files: its
/// directories' times (a new, renamed or removed file changes them) and the stamps of
/// the files that may still be changing in place (written in the last seconds, or
/// unusable, such as one half written).
#[derive(Debug, Clone)]
pub struct Watch {
    dirs: Vec<(PathBuf, i64)>,
    unsettled: Vec<(PathBuf, Stamp)>,
    listed: std::time::Instant,
    /// Whether every directory's time was old enough to tell: file systems stamp
    /// times from a coarse clock (a few ms), so a file added just after the listing
    /// can leave a directory that was changed just before it with the same time.
    trusted: bool,
}

/// How old a directory's time must be for the watch to rely on it (many times the
/// coarse clock's tick).
const COARSE_NS: i64 = 1_000_000_000;

impl Watch {
    /// The watch of a listing, given which files could not be used.
    pub fn of(listing: &ss_mix2::PatientFiles, unusable: &std::collections::HashSet<&Path>) -> Watch {
        let now = now_ns();
        Watch {
            dirs: listing.dirs.clone(),
            unsettled: listing
                .files
                .iter()
                .filter(|f| unusable.contains(f.path.as_path()) || now - f.stamp.mtime_ns < SETTLING_NS)
                .map(|f| (f.path.clone(), f.stamp))
                .collect(),
            listed: std::time::Instant::now(),
            trusted: !listing.dirs.is_empty() && listing.dirs.iter().all(|(_, m)| now - m > COARSE_NS),
        }
    }

    /// Whether nothing changed since the listing, by a stat per directory and per
    /// unsettled file (blocking).
    pub fn unchanged(&self) -> bool {
        self.trusted
            && self.listed.elapsed() < RELIST_AFTER
            && self.dirs.iter().all(|(d, m)| ss_mix2::mtime_ns(d) == Some(*m))
            && self.unsettled.iter().all(|(f, st)| std::fs::metadata(f).is_ok_and(|m| Stamp::of(&m) == *st))
    }
}

/// One patient's records at a site as translated, before they are serialised for
/// serving (the indexer needs only what they are, not their JSON).
#[derive(Debug)]
pub struct Translated {
    /// Site id.
    pub site: String,
    /// Patient id.
    pub patient: String,
    /// The site's own id of the patient.
    pub local: String,
    /// Owning institution.
    pub owner: Owner,
    /// Every file considered, with its outcome.
    pub files: Vec<UnitFile>,
    /// The resources, each once (ids are derived from what a record is: a later copy
    /// is the same record), in path order.
    pub resources: Vec<Resource>,
    /// Modification time of the SS-MIX2 `-/ADT-00` directory when read.
    pub watch_mtime: i64,
    /// Files that could not be used.
    pub problems: usize,
    /// How to tell later that nothing changed (SS-MIX2).
    pub watch: Option<Watch>,
}

impl Translated {
    /// Nothing yet of patient `patient` (the site's own id `local`) at `site`.
    fn new(site: &str, patient: String, local: &str, owner: Owner) -> Translated {
        Translated {
            site: site.to_string(),
            patient,
            local: local.to_string(),
            owner,
            files: Vec::new(),
            resources: Vec::new(),
            watch_mtime: 0,
            problems: 0,
            watch: None,
        }
    }

    fn add(&mut self, seen: &mut std::collections::HashSet<(&'static str, String)>, resources: Vec<Resource>) {
        for r in resources {
            if seen.insert((r.type_name(), r.id().unwrap_or("").to_string())) {
                self.resources.push(r);
            } else if let Resource::Patient(new) = &r {
                // A document naming its patient only by id (an MML file without a
                // PatientModule) must not hide the demographics another file gives.
                let known =
                    self.resources.iter_mut().find(|x| x.type_name() == "Patient" && x.id() == new.id.as_deref());
                if let Some(known) = known {
                    if matches!(known, Resource::Patient(old) if demographics(new) > demographics(old)) {
                        *known = r;
                    }
                }
            }
        }
    }

    /// The unit served: each resource with its JSON, owner and patient.
    pub fn into_unit(self) -> Unit {
        let mut unit = Unit {
            site: self.site,
            patient: self.patient,
            local: self.local,
            owner: self.owner.code.clone(),
            files: self.files,
            records: Vec::with_capacity(self.resources.len()),
            bytes: 0,
            watch_mtime: self.watch_mtime,
            problems: self.problems,
            watch: std::sync::Mutex::new(self.watch.map(Arc::new)),
            checked: Checked::default(),
            checking: Default::default(),
            armed: Default::default(),
        };
        for r in self.resources {
            if let Some(s) = Stored::new(r, &self.owner) {
                // Parsed resource and JSON: about three times the JSON.
                unit.bytes += s.json.get().len() * 3 + 256;
                unit.records.push(Arc::new(s));
            }
        }
        unit
    }
}

/// Read SS-MIX2 patient `local` from `listing` (see [`ss_mix2_listing`]): translate the
/// newest valid version of each record.
pub fn translate_ss_mix2(site: &Site, local: &str, listing: &ss_mix2::PatientFiles) -> Result<Translated, SiteError> {
    let Ownership::Site(owner) = &site.ownership else {
        return Err(SiteError { site: site.id.clone(), message: "an SS-MIX2 site names its owner".into() });
    };
    let live: std::collections::HashSet<&Path> =
        ss_mix2::live(&listing.files).into_iter().map(|f| f.path.as_path()).collect();
    let patient = kakehashi_mappings::stable_id(&owner.code, "Patient", local);
    let mut t = Translated {
        files: Vec::with_capacity(listing.files.len()),
        watch_mtime: watched(site, local),
        ..Translated::new(&site.id, patient, local, owner.clone())
    };
    let mut seen = std::collections::HashSet::new();
    let mut unusable = std::collections::HashSet::new();
    for f in &listing.files {
        let rel = rel(site.root(), &f.path);
        if !live.contains(f.path.as_path()) {
            t.files.push(UnitFile { rel, stamp: f.stamp, state: SUPERSEDED });
            continue;
        }
        match crate::sites::translate_hl7_file(&f.path, owner, Some(Charset::Iso2022Jp)) {
            Ok(tr) => {
                t.files.push(UnitFile { rel, stamp: f.stamp, state: TRANSLATED });
                t.add(&mut seen, tr.resources);
            }
            Err(e) => {
                t.problems += 1;
                t.files.push(UnitFile { rel, stamp: f.stamp, state: UNUSABLE });
                unusable.insert(f.path.as_path());
                // Named so that it can be repaired (the path holds the site's patient
                // ID, never demographics or content).
                let file = unit_file_name(&f.path);
                if now_ns() - f.stamp.mtime_ns < SETTLING_NS {
                    tracing::info!(site = %site.id, %file, reason = %e.message, "a record still being written was skipped; read again when it changes");
                } else {
                    tracing::warn!(site = %site.id, %file, reason = %e.message, "a record could not be translated; retried when it changes");
                }
            }
        }
    }
    t.watch = Some(Watch::of(listing, &unusable));
    Ok(t)
}

/// Translate one file of a directory site: its owner (by the site's rule) and
/// resources, or why not.
pub fn translate_flat(site: &Site, path: &Path) -> Result<(Owner, Vec<Resource>), String> {
    let t = match &site.connector {
        Connector::Mml { .. } => crate::sites::translate_mml_file_owned(path, &site.ownership),
        Connector::JahisRx { .. } => crate::sites::translate_jahis_file_owned(path, &site.ownership),
        Connector::SsMix2 { .. } => return Err("not a directory site".into()),
    };
    t.map(|(t, owner)| (owner, t.resources)).map_err(|e| e.message)
}

/// Read a directory site's patient from its files (paths relative to the site).
pub fn translate_flat_unit(site: &Site, patient: &str, files: &[String]) -> Translated {
    let owner = Owner { code: String::new(), name: String::new(), site: site.id.clone() };
    let mut t = Translated::new(&site.id, patient.to_string(), patient, owner);
    let mut seen = std::collections::HashSet::new();
    for rel in files {
        let path = site.root().join(rel);
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let stamp = Stamp::of(&meta);
        match translate_flat(site, &path) {
            Ok((owner, resources)) => {
                t.owner = owner;
                // Only this patient's records: a file is about one patient.
                let mine: Vec<Resource> =
                    resources.into_iter().filter(|r| super::patient_of(r).is_none_or(|p| p == patient)).collect();
                t.files.push(UnitFile { rel: rel.clone(), stamp, state: TRANSLATED });
                t.add(&mut seen, mine);
            }
            Err(reason) => {
                t.problems += 1;
                t.files.push(UnitFile { rel: rel.clone(), stamp, state: UNUSABLE });
                tracing::warn!(site = %site.id, file = %rel, %reason, "a record could not be translated; retried when it changes");
            }
        }
    }
    t
}

/// How much a Patient says about the person (names, birth date, sex, addresses,
/// telecoms, identifiers).
fn demographics(p: &kakehashi_fhir::Patient) -> usize {
    p.name.len()
        + usize::from(p.birth_date.is_some())
        + usize::from(p.gender.is_some())
        + p.address.len()
        + p.telecom.len()
        + p.identifier.len()
}

/// What the index keeps of a translated unit.
pub fn rows(site: &Site, unit: &Translated) -> UnitRows {
    let mut rows = UnitRows {
        site: unit.site.clone(),
        patient: unit.patient.clone(),
        owner: unit.owner.code.clone(),
        local: unit.local.clone(),
        files: unit
            .files
            .iter()
            .map(|f| FileRow { path: f.rel.clone(), mtime_ns: f.stamp.mtime_ns, size: f.stamp.size, state: f.state })
            .collect(),
        watch_mtime: unit.watch_mtime,
        ..Default::default()
    };
    let rx_system = site.prescription_system(&unit.owner.code);
    let mut coverages = Vec::new();
    let mut patient = None;
    for r in &unit.resources {
        if let Some(id) = r.id() {
            rows.resources.push(key64(id));
        }
        match r {
            Resource::Patient(p) if p.id.as_deref() == Some(unit.patient.as_str()) && patient.is_none() => {
                patient = Some(p);
            }
            Resource::Coverage(c) => coverages.push(c),
            Resource::MedicationRequest(m) => {
                for i in &m.identifier {
                    if i.system.as_deref() == Some(rx_system.as_str()) {
                        if let Some(v) = &i.value {
                            rows.keys.push(("rx", v.clone(), i.system.clone()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let Some(p) = patient else { return rows };
    rows.has_patient = true;
    rows.gender = p.gender.clone();
    rows.birth = p.birth_date.as_ref().and_then(|b| {
        let (s, e) = crate::fhir_api::params::date_range(b)?;
        Some((b.clone(), s, e))
    });
    for n in &p.name {
        rows.names.extend(n.family.iter().map(|f| ("family", crate::fhir_api::params::fold(f))));
        rows.names.extend(n.given.iter().map(|g| ("given", crate::fhir_api::params::fold(g))));
        rows.names.extend(n.text.iter().map(|t| ("text", crate::fhir_api::params::fold(t))));
    }
    rows.identifiers = p.identifier.iter().filter_map(|i| Some((i.system.clone(), i.value.clone()?))).collect();
    let site_key = format!("{}|{}", unit.site, unit.owner.code);
    if let Some(f) = crate::linkage::index::facts_of(p, coverages.into_iter(), site_key) {
        rows.keys.extend(f.identifiers.iter().map(|k| ("id", k.clone(), None)));
        rows.keys.extend(f.insurance.iter().map(|(k, branch)| ("ins", k.clone(), branch.clone())));
        rows.keys.extend(crate::linkage::index::demographics_key(&f).map(|k| ("demo", k, None)));
    }
    rows
}

/// The files of a directory site with their stamps, sorted by path.
pub fn flat_listing(site: &Site) -> Result<Vec<(PathBuf, Stamp)>, SiteError> {
    let files = crate::sites::files_with(site.root(), site.connector.extension())
        .map_err(|e| SiteError { site: site.id.clone(), message: e.to_string() })?;
    Ok(files
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, Stamp::of(&m)))
        })
        .collect())
}

/// The path of `abs` relative to the site root.
pub fn relative(site: &Site, abs: &Path) -> String {
    rel(site.root(), abs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// A file that names the patient only by id does not hide the demographics
    /// another file of the same patient gives, whichever is read first.
    #[test]
    fn the_patient_with_demographics_wins() {
        let bare = Resource::Patient(kakehashi_fhir::Patient { id: Some("p".into()), ..Default::default() });
        let full = Resource::Patient(kakehashi_fhir::Patient {
            id: Some("p".into()),
            birth_date: Some("1952-03-14".into()),
            gender: Some("female".into()),
            ..Default::default()
        });
        for order in [[bare.clone(), full.clone()], [full.clone(), bare.clone()]] {
            let owner = Owner { code: "4610200021".into(), name: "c".into(), site: "s".into() };
            let mut t = Translated::new("s", "p".into(), "p", owner);
            let mut seen = std::collections::HashSet::new();
            for r in order {
                t.add(&mut seen, vec![r]);
            }
            assert_eq!(t.resources, vec![full.clone()]);
        }
    }

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

    /// Set a file's or directory's modification time an hour back.
    fn age(path: &Path) {
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::open(path).unwrap().set_modified(hour_ago).unwrap();
    }

    #[test]
    fn a_watch_tells_a_current_listing_by_directory_times_and_unsettled_files() {
        let root = tempfile::tempdir().unwrap();
        let types = root.path().join("100/000/1000001/20260410");
        let (omp, oml) = (types.join("OMP-01"), types.join("OML-11"));
        std::fs::create_dir_all(&omp).unwrap();
        std::fs::create_dir_all(&oml).unwrap();
        let settled = omp.join("1000001_20260410_OMP-01_000000000001000_20260410103100000_01_1");
        let half = oml.join("1000001_20260410_OML-11_000000000001000_20260410150000000_01_1");
        std::fs::write(&settled, "MSH|^~\\&|A").unwrap();
        std::fs::write(&half, "MSH|^~\\&|").unwrap();
        let storage = Storage::new(root.path());
        let age_all = || {
            for p in [&settled, &half, &omp, &oml, &types, &root.path().join("100/000/1000001")] {
                age(p);
            }
        };

        // Just written: directory times too recent to rely on; a read lists again.
        let listing = storage.patient_files("1000001").unwrap();
        assert_eq!(listing.dirs.len(), 4, "patient, date and two type directories");
        assert!(!Watch::of(&listing, &Default::default()).unchanged());

        age_all();
        let listing = storage.patient_files("1000001").unwrap();
        let unusable: std::collections::HashSet<&Path> = [half.as_path()].into();
        let watch = Watch::of(&listing, &unusable);
        assert!(watch.unchanged(), "settled: a stat per directory says current");

        // The unusable file completed in place (its directory's time does not change).
        std::fs::write(&half, "MSH|^~\\&|A|B|C|D|2026||OML^O33|1|P|2.5").unwrap();
        assert!(!watch.unchanged());

        // A new version beside a settled file changes its directory.
        age_all();
        let listing = storage.patient_files("1000001").unwrap();
        let watch = Watch::of(&listing, &Default::default());
        assert!(watch.unchanged());
        std::fs::write(omp.join("1000001_20260410_OMP-01_000000000001000_20260410113100000_01_1"), "x").unwrap();
        assert!(!watch.unchanged());

        // A patient whose directory is gone is never current by its watch.
        let gone = Watch::of(&storage.patient_files("1000009").unwrap(), &Default::default());
        assert!(!gone.unchanged());
    }

    #[test]
    fn a_shared_ehr_site_takes_each_records_owner_from_the_record() {
        let dir = tempfile::tempdir().unwrap();
        crate::demo::write_sites(dir.path()).unwrap();
        let shared = dir.path().join("sites/shared/mml");
        std::fs::create_dir_all(&shared).unwrap();
        let a = std::fs::read_to_string(dir.path().join("sites/clinic-a/mml/A-0101-patient.xml")).unwrap();
        let b = std::fs::read_to_string(dir.path().join("sites/clinic-b/mml/B-0201-patient.xml")).unwrap();
        std::fs::write(shared.join("a.xml"), &a).unwrap();
        // Clinic B's record names its facility by an alias listed in facility_ids.
        std::fs::write(shared.join("b.xml"), b.replace(">4610200032<", ">JPN-CLINIC-B<")).unwrap();
        // A record naming a non-member has no owner and is not served.
        std::fs::write(shared.join("x.xml"), a.replace(">4610200021<", ">4699999999<")).unwrap();
        let cfg = Config::parse(CONFIG, &dir.path().join("kakehashi.toml")).unwrap();
        let sites = super::super::sites(&cfg);
        let (ehr, rx) = (&sites[0], &sites[1]);

        let owner = |site: &Site, file: &str| translate_flat(site, &site.root().join(file)).map(|(o, _)| o.code);
        assert_eq!(owner(ehr, "a.xml").unwrap(), "4610200021");
        assert_eq!(owner(ehr, "b.xml").unwrap(), "4610200032");
        assert!(owner(ehr, "x.xml").is_err(), "a non-member's record is refused");
        // The prescription's owner comes from its record 1 (prefecture, table, code).
        assert_eq!(owner(rx, "RX-YAMABE-0001.csv").unwrap(), "4610200032");

        // As served: every record carries its owner, on the index entry and the resource.
        let (_, resources) = translate_flat(ehr, &shared.join("b.xml")).unwrap();
        let patient = resources.iter().find_map(|r| r.id().filter(|_| r.type_name() == "Patient")).unwrap().to_string();
        let unit = translate_flat_unit(ehr, &patient, &["b.xml".to_string()]).into_unit();
        assert!(!unit.records.is_empty());
        for s in &unit.records {
            assert_eq!(s.owner, "4610200032");
            assert!(s.json.get().contains("\"code\":\"4610200032\""), "{}", s.json.get());
        }
    }
}
