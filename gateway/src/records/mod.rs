//! Records: the one source of every record the gateway serves — sites' records
//! (SS-MIX2 storage, MML and JAHIS directories) and pushed documents' records — behind
//! one async interface: a record by type and id, a patient's records, Patients by
//! search parameters, and the patients a search may have to look at.
//!
//! Nothing proportional to a site is held in memory. A persistent [`index`] says, for
//! each patient, which files are theirs, their demographics, identifiers and linkage
//! keys, and which resource ids their files yield; a patient's records are translated
//! when first asked for and kept in a bounded [`cache`]; every read lists the patient's
//! files (a few directory reads) so that a new, replaced or cancelled message is in
//! the very next read. The background [`indexer`] finds new patients and changed
//! demographics without rescanning unchanged subtrees. Pushed documents' records live
//! in the database ([`pushed`]).

pub mod cache;
pub mod index;
pub mod indexer;
pub mod notify;
pub mod pushed;
pub mod unit;

use crate::config::Config;
use crate::sites::{Owner, Ownership};
use index::{IndexDb, PatientFilter, PatientRow};
use kakehashi_fhir::Resource;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use unit::{Site, Unit};

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
        Resource::Encounter(x) => x.subject.as_ref(),
        Resource::DocumentReference(x) => x.subject.as_ref(),
        Resource::Immunization(x) => Some(&x.patient),
        Resource::ServiceRequest(x) => Some(&x.subject),
        Resource::MedicationDispense(x) => Some(&x.subject),
        Resource::Procedure(x) => Some(&x.subject),
        Resource::Specimen(x) => Some(&x.subject),
        // A note's content is read under the patient it was written about.
        Resource::Binary(x) => x.security_context.as_ref(),
        Resource::Appointment(x) => x
            .participant
            .iter()
            .filter_map(|p| p.actor.as_ref())
            .find(|a| a.reference.as_deref().is_some_and(|r| r.starts_with("Patient/"))),
        _ => None,
    }?;
    reference.reference.as_deref()?.strip_prefix("Patient/").map(str::to_string)
}

/// Why records could not be read. Reads answer 503 (audited), never a partial answer.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// A site's storage is unreachable (an unmounted share, say).
    #[error(transparent)]
    Site(#[from] unit::SiteError),
    /// The index or the database failed.
    #[error("records index: {0}")]
    Index(#[from] sqlx::Error),
    /// A blocking read failed to run.
    #[error("records: {0}")]
    Task(String),
}

/// What a reader may see at all, as far as owners and patients go: every record of
/// `owners`, and the records of `patients`. The policy still decides each record;
/// this only keeps a search from looking where nothing can be permitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Owners all of whose patients may be visible (the reader's own institution, an
    /// owner's on-call delegation).
    pub owners: Vec<String>,
    /// Further patients that may be visible (consent, referral, pharmacy, break-glass).
    pub patients: Vec<String>,
}

/// Records given as resources, for tests and in-process benchmarks (no sites).
#[derive(Debug, Default)]
struct Fixed {
    all: Vec<Arc<Stored>>,
    by_key: HashMap<(String, String), usize>,
    by_patient: HashMap<String, Vec<usize>>,
}

/// Every record the gateway serves.
pub struct Records {
    sites: Vec<Site>,
    index: Option<IndexDb>,
    cache: cache::Cache,
    fixed: Fixed,
    /// Which records arrived by push (their content is in the database).
    pushed: RwLock<pushed::PushedIndex>,
    /// The indexer's progress, for `/status` and `/metrics`.
    pub status: Arc<indexer::Status>,
    /// Per directory site, the directory time last synced, under a lock so that one
    /// sync runs at a time ([`indexer::sync_flat`]).
    flat: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<i64>>>>,
    /// Set when the gateway stops: the indexer ends its pass and lets go of its lock.
    stop: tokio::sync::watch::Sender<bool>,
    /// Change notices, by the id of each SS-MIX2 site on a local file system.
    notices: HashMap<String, Arc<notify::Notices>>,
}

/// `records.cache_mb` as bytes.
fn budget(cfg: &Config) -> usize {
    usize::try_from(cfg.records.cache_mb).unwrap_or((usize::MAX / 2) >> 20).saturating_mul(1 << 20)
}

/// The sites of a configuration, as the records source reads them.
pub fn sites(cfg: &Config) -> Vec<Site> {
    cfg.sites
        .iter()
        .map(|s| Site {
            id: s.id.clone(),
            connector: s.connector.clone(),
            ownership: if s.owner == crate::config::OWNER_FROM_RECORD {
                Ownership::PerRecord { site: s.id.clone(), members: cfg.institutions.clone() }
            } else {
                Ownership::Site(Owner {
                    code: s.owner.clone(),
                    name: cfg.institution(&s.owner).map(|i| i.name.clone()).unwrap_or_default(),
                    site: s.id.clone(),
                })
            },
            prescription_system: s.prescription_number_system.clone(),
        })
        .collect()
}

impl Records {
    /// The records of `cfg`'s sites, indexed in `index`; the indexer is started separately
    /// ([`indexer::spawn`]).
    pub fn open(cfg: &Config, index: IndexDb) -> Arc<Records> {
        let sites = sites(cfg);
        let local: Vec<&Site> = sites.iter().filter(|s| s.is_ss_mix2() && notify::is_local(s.root())).collect();
        let status: Arc<indexer::Status> = Arc::default();
        let notices = match local.is_empty() || !cfg.records.change_notices {
            true => None,
            false => notify::Notices::new(status.watched.clone()),
        };
        let notices = notices.map_or_else(HashMap::new, |n| local.iter().map(|s| (s.id.clone(), n.clone())).collect());
        Arc::new(Records {
            notices,
            sites,
            index: Some(index),
            cache: cache::Cache::new(budget(cfg)),
            fixed: Fixed::default(),
            pushed: RwLock::default(),
            status,
            flat: Default::default(),
            stop: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Records from explicit resources (tests, benchmarks).
    pub fn from_resources(resources: Vec<(Resource, Owner)>) -> Arc<Records> {
        let mut fixed = Fixed::default();
        for (r, o) in resources {
            let Some(s) = Stored::new(r, &o) else { continue };
            let key = (s.resource.type_name().to_string(), s.resource.id().unwrap_or("").to_string());
            if fixed.by_key.contains_key(&key) {
                continue;
            }
            let i = fixed.all.len();
            fixed.by_key.insert(key, i);
            if let Some(p) = &s.patient {
                fixed.by_patient.entry(p.clone()).or_default().push(i);
            }
            fixed.all.push(Arc::new(s));
        }
        Arc::new(Records {
            sites: Vec::new(),
            index: None,
            cache: cache::Cache::new(0),
            fixed,
            pushed: RwLock::default(),
            status: Arc::default(),
            flat: Default::default(),
            stop: tokio::sync::watch::Sender::new(false),
            notices: HashMap::new(),
        })
    }

    /// Ask the background indexer to stop (the gateway is stopping).
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the gateway is stopping.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// The index, when there are sites.
    pub fn index(&self) -> Option<&IndexDb> {
        self.index.as_ref()
    }

    /// The sites read.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Cache counters.
    pub fn cache_stats(&self) -> Arc<cache::CacheStats> {
        self.cache.stats.clone()
    }

    fn flat_gate(&self, site: &str) -> Arc<tokio::sync::Mutex<i64>> {
        self.flat.lock().unwrap_or_else(PoisonError::into_inner).entry(site.to_string()).or_default().clone()
    }

    fn site(&self, id: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.id == id)
    }

    /// A record by type and id: a site's (found through the index) or a pushed one.
    pub async fn get(
        &self,
        store: &crate::store::Store,
        ty: &str,
        id: &str,
    ) -> Result<Option<Arc<Stored>>, RecordsError> {
        if let Some(&i) = self.fixed.by_key.get(&(ty.to_string(), id.to_string())) {
            return Ok(Some(self.fixed.all[i].clone()));
        }
        // A record of a cached patient: that patient's unit, made current, without
        // asking the index (the hint is checked against the current unit).
        if let Some(cached) = self.cache.locate(id) {
            let row = PatientRow {
                id: cached.patient.clone(),
                site: cached.site.clone(),
                owner: cached.owner.clone(),
                local: cached.local.clone(),
            };
            let unit = self.unit(&row).await?;
            if let Some(s) = unit.records.iter().find(|s| s.resource.type_name() == ty && s.resource.id() == Some(id)) {
                return Ok(Some(s.clone()));
            }
        }
        if let Some(index) = &self.index {
            // Ids are `type-<hash>`: a malformed one names nothing of a site.
            if id.starts_with(&format!("{}-", ty.to_ascii_lowercase())) {
                let mut rows = index.locate(index::key64(id)).await?;
                rows.sort_by_key(|r| self.sites.iter().position(|s| s.id == r.site));
                for row in rows {
                    let unit = self.unit(&row).await?;
                    if let Some(s) =
                        unit.records.iter().find(|s| s.resource.type_name() == ty && s.resource.id() == Some(id))
                    {
                        return Ok(Some(s.clone()));
                    }
                }
            }
        }
        let pushed = self.pushed_records(store, pushed::Wanted::Key(ty, id), |_| true).await?;
        Ok(pushed.into_iter().next())
    }

    /// Every record about `patients` (of type `ty`, or all), sites' and pushed, in site
    /// order then path order.
    pub async fn of_patients(
        &self,
        store: &crate::store::Store,
        patients: &[&str],
        ty: Option<&str>,
        mut keep: impl FnMut(&Stored) -> bool,
    ) -> Result<Vec<Arc<Stored>>, RecordsError> {
        let mut out = Vec::new();
        let wanted = |s: &Stored| ty.is_none_or(|t| s.resource.type_name() == t);
        for p in patients {
            for &i in self.fixed.by_patient.get(*p).into_iter().flatten() {
                let s = &self.fixed.all[i];
                if wanted(s) && keep(s) {
                    out.push(s.clone());
                }
            }
        }
        if let Some(index) = &self.index {
            let mut rows = index.patients(patients).await?;
            rows.sort_by_key(|r| (self.sites.iter().position(|s| s.id == r.site), r.id.clone()));
            // A patient with records at two sites of its owner has its Patient (and any
            // other record) at both: the first site listed keeps it, as ids are derived
            // from what a record is.
            // A unit holds each record once: only several units need the check.
            let several = rows.len() > 1;
            let mut seen = std::collections::HashSet::new();
            for row in rows {
                let unit = self.unit(&row).await?;
                for s in unit.records.iter() {
                    if wanted(s) && (!several || seen.insert(s.key())) && keep(s) {
                        out.push(s.clone());
                    }
                }
            }
        }
        out.extend(self.pushed_records(store, pushed::Wanted::Patients(patients.to_vec(), ty), |s| keep(s)).await?);
        Ok(out)
    }

    /// The Patient resource with this id (site or pushed).
    pub async fn patient(&self, store: &crate::store::Store, id: &str) -> Result<Option<Arc<Stored>>, RecordsError> {
        self.get(store, "Patient", id).await
    }

    /// Indexed Patients that `filter` selects, at most `limit`.
    pub async fn find_patients(&self, filter: &PatientFilter, limit: i64) -> Result<Vec<PatientRow>, RecordsError> {
        match &self.index {
            Some(index) => Ok(index.find_patients(filter, limit).await?),
            None => Ok(Vec::new()),
        }
    }

    /// Linkage facts of every Patient given as a resource (tests, benchmarks).
    pub fn fixed_facts(&self) -> Vec<crate::linkage::index::Facts> {
        self.fixed
            .all
            .iter()
            .filter_map(|s| match &s.resource {
                Resource::Patient(p) => {
                    let coverages =
                        self.fixed.by_patient.get(p.id.as_deref().unwrap_or("")).into_iter().flatten().filter_map(
                            |&i| match &self.fixed.all[i].resource {
                                Resource::Coverage(c) => Some(c),
                                _ => None,
                            },
                        );
                    crate::linkage::index::facts_of(p, coverages, format!("{}|{}", s.site, s.owner))
                }
                _ => None,
            })
            .collect()
    }

    /// The index entries of the Patients among `ids` (and of those given as resources).
    pub async fn patient_rows(&self, ids: &[&str]) -> Result<Vec<PatientRow>, RecordsError> {
        let mut out: Vec<PatientRow> = self
            .fixed_patients()
            .filter(|s| s.patient.as_deref().is_some_and(|p| ids.contains(&p)))
            .map(|s| {
                let id = s.patient.clone().unwrap_or_default();
                PatientRow { id: id.clone(), site: s.site.clone(), owner: s.owner.clone(), local: id }
            })
            .collect();
        if let Some(index) = &self.index {
            out.extend(index.patients(ids).await?);
        }
        Ok(out)
    }

    /// Every Patient record given as a resource (tests, benchmarks), for searches.
    pub fn fixed_patients(&self) -> impl Iterator<Item = &Arc<Stored>> {
        self.fixed.all.iter().filter(|s| s.resource.type_name() == "Patient")
    }

    /// The patients `scope` reaches, unless there are more than `limit`.
    pub async fn patients_in(&self, scope: &Scope, limit: i64) -> Result<Option<Vec<String>>, RecordsError> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.fixed.all {
            if s.resource.type_name() == "Patient"
                && (scope.owners.contains(&s.owner) || s.patient.as_ref().is_some_and(|p| scope.patients.contains(p)))
            {
                out.extend(s.patient.clone());
            }
        }
        if let Some(index) = &self.index {
            let mut f = PatientFilter::default();
            f.scope(&scope.owners, &scope.patients);
            let rows = index.find_patients(&f, limit + 1).await?;
            out.extend(rows.into_iter().map(|r| r.id));
        }
        let pushed = self.pushed.read().unwrap_or_else(PoisonError::into_inner);
        out.extend(scope.patients.iter().filter(|p| pushed.has_patient(p)).cloned());
        drop(pushed);
        out.sort();
        out.dedup();
        Ok((out.len() as i64 <= limit).then_some(out))
    }

    /// Patients with a prescription numbered `number` (any site).
    pub async fn prescribed(&self, number: &str) -> Result<Vec<String>, RecordsError> {
        let mut out: Vec<String> = self
            .fixed
            .all
            .iter()
            .filter(|s| match &s.resource {
                Resource::MedicationRequest(m) => m.identifier.iter().any(|i| i.value.as_deref() == Some(number)),
                _ => false,
            })
            .filter_map(|s| s.patient.clone())
            .collect();
        if let Some(index) = &self.index {
            out.extend(index.with_key("rx", number).await?.into_iter().map(|(p, _)| p));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// One patient's records at its site, current: the files are listed (every read,
    /// so that a new version is seen at once), and translated again only when they
    /// changed since the cached translation; a change also updates the index.
    async fn unit(&self, row: &PatientRow) -> Result<Arc<Unit>, RecordsError> {
        let Some(site) = self.site(&row.site).cloned() else {
            return Ok(Arc::new(empty_unit(row)));
        };
        if !site.is_ss_mix2() {
            // A new document of this patient is found by syncing the directory, which
            // costs one stat when nothing was added.
            indexer::sync_flat(self, &site).await?;
        }
        let files: Vec<String> = match (&self.index, site.is_ss_mix2()) {
            (Some(ix), false) => ix.files_of(&site.id, &row.id).await?.into_iter().map(|f| f.path).collect(),
            _ => Vec::new(),
        };
        let arrived = unit::Checked::now();
        let key = cache_key(&row.site, &row.id);
        let cached = self.cache.get(&key);
        let notices = self.notices.get(&site.id).cloned();
        if let Some(c) = cached.as_ref().filter(|_| site.is_ss_mix2()) {
            if notices.as_ref().is_some_and(|n| c.noticed_current(n)) {
                self.cache.stats.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(c.clone());
            }
            // One check at a time per patient: readers that arrived before a check
            // began take its answer (everything written before they asked is in it).
            let _turn = c.checking.lock().await;
            if c.checked.since(arrived) {
                self.cache.stats.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(c.clone());
            }
            let (began, c2, n2, k2) = (unit::Checked::now(), c.clone(), notices.clone(), key.clone());
            // Current by its directories' times: a stat each, no listing (on the
            // blocking pool: a storage on a network file system may be slow to answer).
            let unchanged = move || {
                let current = c2.unchanged();
                if let Some(n) = n2.filter(|_| current) {
                    c2.arm(&n, &k2);
                }
                current
            };
            if tokio::task::spawn_blocking(unchanged).await.unwrap_or(false) {
                c.checked.mark(began);
                self.cache.stats.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(c.clone());
            }
        }
        let row = row.clone();
        let began = unit::Checked::now();
        let (unit, changed) =
            tokio::task::spawn_blocking(move || -> Result<(Arc<Unit>, Option<index::UnitRows>), RecordsError> {
                if site.is_ss_mix2() {
                    let listing = unit::ss_mix2_listing(&site, &row.local)?;
                    if let Some(c) = cached.filter(|c| {
                        same_files(c, listing.files.iter().map(|f| (unit::relative(&site, &f.path), f.stamp)))
                    }) {
                        let unusable = c
                            .files
                            .iter()
                            .filter(|f| f.state == unit::UNUSABLE)
                            .map(|f| site.root().join(&f.rel))
                            .collect::<Vec<_>>();
                        c.rewatch(unit::Watch::of(&listing, &unusable.iter().map(|p| p.as_path()).collect()));
                        c.checked.mark(began);
                        if let Some(n) = &notices {
                            c.arm(n, &key);
                        }
                        return Ok((c, None));
                    }
                    let t = unit::translate_ss_mix2(&site, &row.local, &listing)?;
                    let rows = unit::rows(&site, &t);
                    let fresh = Arc::new(t.into_unit());
                    fresh.checked.mark(began);
                    if let Some(n) = &notices {
                        fresh.arm(n, &key);
                    }
                    Ok((fresh, Some(rows)))
                } else {
                    let stamps: Vec<(String, kakehashi_adapters::ss_mix2::Stamp)> = files
                        .iter()
                        .filter_map(|rel| {
                            let m = std::fs::metadata(site.root().join(rel)).ok()?;
                            Some((rel.clone(), kakehashi_adapters::ss_mix2::Stamp::of(&m)))
                        })
                        .collect();
                    if !site.root().is_dir() {
                        return Err(unit::SiteError {
                            site: site.id.clone(),
                            message: format!("directory {} is not reachable", site.root().display()),
                        }
                        .into());
                    }
                    if let Some(c) = cached.filter(|c| same_files(c, stamps.iter().cloned())) {
                        return Ok((c, None));
                    }
                    let t = unit::translate_flat_unit(&site, &row.id, &files);
                    let rows = unit::rows(&site, &t);
                    Ok((Arc::new(t.into_unit()), Some(rows)))
                }
            })
            .await
            .map_err(|e| RecordsError::Task(e.to_string()))??;
        self.cache.stats.hits.fetch_add(u64::from(changed.is_none()), std::sync::atomic::Ordering::Relaxed);
        if let Some(rows) = changed {
            self.cache.stats.misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(index) = &self.index {
                let indexed = index.files_of(&rows.site, &rows.patient).await?;
                let now: Vec<index::FileRow> = rows.files.clone();
                if indexed != now {
                    // The patient's files changed since they were indexed: the index
                    // follows now, so that searches find what this read found.
                    index.write_units(std::slice::from_ref(&rows), false).await?;
                    self.status.reindexed_on_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Files that became unusable since (a new one half written, say).
                    let was_broken: std::collections::HashSet<&index::FileRow> =
                        indexed.iter().filter(|f| f.state == unit::UNUSABLE).collect();
                    let broken = now.iter().filter(|f| f.state == unit::UNUSABLE && !was_broken.contains(f)).count();
                    self.status.problems.fetch_add(broken as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            self.cache.put(&cache_key(&unit.site, &unit.patient), unit.clone());
        }
        Ok(unit)
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

    /// The pushed records `wanted` that `keep` accepts, read from the database only when
    /// the index of pushed records says there are any.
    async fn pushed_records(
        &self,
        store: &crate::store::Store,
        wanted: pushed::Wanted<'_>,
        keep: impl FnMut(&Stored) -> bool,
    ) -> Result<Vec<Arc<Stored>>, RecordsError> {
        let wanted = {
            let idx = self.pushed.read().unwrap_or_else(PoisonError::into_inner);
            match wanted {
                pushed::Wanted::Key(t, id) => idx.has(t, id).then_some(wanted),
                pushed::Wanted::Type(t) => idx.has_type(t).then_some(wanted),
                pushed::Wanted::Patients(mut ps, t) => {
                    ps.retain(|p| idx.has_patient(p));
                    (!ps.is_empty() && t.is_none_or(|t| idx.has_type(t))).then_some(pushed::Wanted::Patients(ps, t))
                }
            }
        };
        let Some(wanted) = wanted else { return Ok(Vec::new()) };
        Ok(pushed::fetch(store.pool(), wanted, keep).await?)
    }
}

/// The cache's key of a patient's records at a site.
fn cache_key(site: &str, patient: &str) -> String {
    format!("{site}\n{patient}")
}

fn empty_unit(row: &PatientRow) -> Unit {
    Unit {
        site: row.site.clone(),
        patient: row.id.clone(),
        local: row.local.clone(),
        owner: row.owner.clone(),
        files: vec![],
        records: vec![],
        bytes: 0,
        watch_mtime: 0,
        problems: 0,
        watch: Default::default(),
        checked: Default::default(),
        checking: Default::default(),
        armed: Default::default(),
    }
}

/// Whether `unit` was read from exactly these files (relative path and stamp).
fn same_files(unit: &Unit, files: impl Iterator<Item = (String, kakehashi_adapters::ss_mix2::Stamp)>) -> bool {
    let mut n = 0;
    for (rel, stamp) in files {
        match unit.files.get(n) {
            Some(f) if f.rel == rel && f.stamp == stamp => n += 1,
            _ => return false,
        }
    }
    n == unit.files.len()
}
