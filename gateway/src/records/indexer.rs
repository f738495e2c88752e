//! The background indexer: finds new patients and changed demographics and records
//! them in the [`super::index`], without rescanning what did not change.
//!
//! SS-MIX2 keeps a patient under `root/pid[0..3]/pid[3..6]/pid/`. A new patient changes
//! the modification time of its `pid[3..6]` directory, so a pass stats those (and
//! lists only the changed ones); a new version of a patient's demographics changes its
//! `pid/-/ADT-00` directory, so a pass stats that once per indexed patient, paging
//! through the index rather than holding the list. Other new files of a known patient
//! are found when the patient is read (see [`super::Records`]). A directory site (MML,
//! JAHIS) is listed again only when its directory's time changed.
//!
//! The first index of a storage runs as fast as it can while the gateway already
//! serves what is indexed; afterwards a pass that finds nothing sleeps long enough to
//! keep the indexer's CPU time within `records.index_cpu_percent` of one core. With
//! several instances on PostgreSQL, one holds an advisory lock and walks; the others
//! serve from the shared index (and index what their reads find changed).

use super::index::{IndexDb, UnitRows};
use super::unit::{self, Site};
use super::Records;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The indexer's progress, for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct Status {
    /// Files indexed (translated and recorded) since start.
    pub files: AtomicU64,
    /// Patients indexed since start.
    pub patients: AtomicU64,
    /// Files that could not be used (retried when they change).
    pub problems: AtomicU64,
    /// Patients found changed by a read and indexed then.
    pub reindexed_on_read: AtomicU64,
    /// Passes completed.
    pub passes: AtomicU64,
    /// Patients known to be waiting in the current pass.
    pub backlog: AtomicU64,
    /// Files per second over the last busy stretch (×100).
    pub rate_centi: AtomicU64,
    /// True once every site has been indexed completely at least once.
    pub complete: AtomicBool,
    /// True while this instance walks (another instance may hold the lock).
    pub walking: AtomicBool,
    /// CPU time the indexer thread used, ns.
    pub cpu_ns: AtomicU64,
    /// Sites whose storage is unreachable now.
    pub unreachable: Mutex<Vec<String>>,
}

impl Status {
    /// A JSON summary.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "complete": self.complete.load(Relaxed),
            "walking": self.walking.load(Relaxed),
            "files_indexed": self.files.load(Relaxed),
            "patients_indexed": self.patients.load(Relaxed),
            "problems": self.problems.load(Relaxed),
            "reindexed_on_read": self.reindexed_on_read.load(Relaxed),
            "passes": self.passes.load(Relaxed),
            "backlog_patients": self.backlog.load(Relaxed),
            "files_per_second": self.rate_centi.load(Relaxed) as f64 / 100.0,
            "cpu_seconds": self.cpu_ns.load(Relaxed) as f64 / 1e9,
            "unreachable_sites": *self.unreachable.lock().unwrap_or_else(PoisonError::into_inner),
        })
    }

    fn reachable(&self, site: &str, ok: bool) {
        let mut u = self.unreachable.lock().unwrap_or_else(PoisonError::into_inner);
        let was = u.iter().any(|s| s == site);
        if ok && was {
            u.retain(|s| s != site);
            tracing::info!(%site, "site storage reachable again");
        } else if !ok && !was {
            u.push(site.to_string());
            tracing::error!(%site, "site storage unreachable; its records answer 503 until it returns (the index is kept)");
        }
    }
}

/// How the indexer behaves.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Percent of one core a pass that finds nothing may use.
    pub cpu_percent: f64,
    /// Units written per transaction.
    pub batch: usize,
}

/// This thread's CPU time in ns (Linux), for the budget.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Start the indexer on a thread of its own.
pub fn spawn(records: Arc<Records>, settings: Settings) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("records-indexer".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "the records indexer could not start; only reads index what they find");
                    return;
                }
            };
            rt.block_on(run(records, settings));
        })
        .unwrap_or_else(|_| std::thread::spawn(|| tracing::error!("the records indexer thread could not start")))
}

async fn run(records: Arc<Records>, settings: Settings) {
    let Some(index) = records.index().cloned() else { return };
    let mut lock = None;
    loop {
        if index.backend() == crate::store::Backend::Postgres && lock.is_none() {
            lock = try_lock(&index).await;
            records.status.walking.store(lock.is_some(), Relaxed);
            if lock.is_none() {
                tokio::time::sleep(Duration::from_secs(10)).await;
                continue;
            }
        } else {
            records.status.walking.store(true, Relaxed);
        }
        let (cpu0, wall0) = (thread_cpu_ns(), Instant::now());
        let mut work = 0u64;
        for site in records.sites().to_vec() {
            let done = if site.is_ss_mix2() {
                ss_mix2_pass(&records, &index, &site, settings).await
            } else {
                sync_flat(&records, &site).await.map(|n| n as u64)
            };
            match done {
                Ok(n) => {
                    work += n;
                    records.status.reachable(&site.id, true);
                }
                Err(super::RecordsError::Site(_)) => records.status.reachable(&site.id, false),
                Err(e) => tracing::warn!(site = %site.id, error = %e, "indexing pass failed; retrying"),
            }
        }
        records.status.passes.fetch_add(1, Relaxed);
        if !records.status.complete.load(Relaxed) {
            records.status.complete.store(true, Relaxed);
            let _ = index.set_meta("complete", "1").await;
            tracing::info!(
                files = records.status.files.load(Relaxed),
                patients = records.status.patients.load(Relaxed),
                "records index complete"
            );
        }
        let cpu = thread_cpu_ns().saturating_sub(cpu0);
        records.status.cpu_ns.fetch_add(cpu, Relaxed);
        let wall = wall0.elapsed();
        if work > 0 {
            continue;
        }
        // Nothing changed: rest so that this pass's CPU is the budget's share.
        let share = (settings.cpu_percent / 100.0).clamp(0.001, 1.0);
        let rest = Duration::from_nanos((cpu as f64 / share) as u64).saturating_sub(wall);
        tokio::time::sleep(rest.max(Duration::from_millis(500)).min(Duration::from_secs(300))).await;
    }
}

/// The advisory lock that makes this instance the one that walks (PostgreSQL).
async fn try_lock(index: &IndexDb) -> Option<sqlx::pool::PoolConnection<sqlx::Any>> {
    let mut conn = index.pool().acquire().await.ok()?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(7263011i64)
        .fetch_one(&mut *conn)
        .await
        .ok()?;
    got.then_some(conn)
}

/// Units waiting to be written, flushed a batch at a time.
struct Pending<'a> {
    index: &'a IndexDb,
    records: &'a Records,
    rows: Vec<UnitRows>,
    fresh: bool,
    batch: usize,
    files: u64,
    started: Instant,
}

impl Pending<'_> {
    async fn push(&mut self, rows: UnitRows, files: usize) -> Result<(), sqlx::Error> {
        self.files += files as u64;
        self.rows.push(rows);
        if self.rows.len() >= self.batch {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), sqlx::Error> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let files: u64 = self.rows.iter().map(|r| r.files.len() as u64).sum();
        self.index.write_units(&self.rows, self.fresh).await?;
        let s = &self.records.status;
        s.patients.fetch_add(self.rows.len() as u64, Relaxed);
        s.files.fetch_add(files, Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        s.rate_centi.store((self.files as f64 / secs * 100.0) as u64, Relaxed);
        self.rows.clear();
        Ok(())
    }
}

/// Read and index SS-MIX2 patient `local`; returns its rows and file count.
fn read_patient(site: &Site, local: &str) -> Result<Option<(UnitRows, usize, usize)>, unit::SiteError> {
    let listing = unit::ss_mix2_listing(site, local)?;
    if listing.is_empty() {
        return Ok(None);
    }
    let u = unit::read_ss_mix2(site, local, &listing)?;
    Ok(Some((unit::rows(site, &u), u.files.len(), u.problems)))
}

/// One pass over an SS-MIX2 storage: new patients by changed `pid[3..6]` directories,
/// changed demographics by each indexed patient's `-/ADT-00` directory. Returns the
/// patients indexed.
async fn ss_mix2_pass(records: &Records, index: &IndexDb, site: &Site, settings: Settings) -> Result<u64, super::RecordsError> {
    let root = site.root().to_path_buf();
    if !root.is_dir() {
        return Err(unit::SiteError { site: site.id.clone(), message: format!("storage root {} is not reachable", root.display()) }.into());
    }
    let known_dirs = index.dirs(&site.id).await?;
    let first = known_dirs.is_empty() && index.counts(&site.id).await?.0 == 0;
    let mut pending =
        Pending { index, records, rows: Vec::new(), fresh: first, batch: settings.batch, files: 0, started: Instant::now() };
    let mut changed_dirs: Vec<(String, i64)> = Vec::new();
    let mut done = 0u64;
    let site_err = |e: kakehashi_adapters::SourceError| unit::SiteError { site: site.id.clone(), message: e.to_string() };
    // New patients: every pid[3..6] directory whose time changed.
    let mut groups = Vec::new();
    for (a, a_path) in kakehashi_adapters::ss_mix2::subdirs(&root).map_err(site_err)? {
        for (b, b_path) in kakehashi_adapters::ss_mix2::subdirs(&a_path).map_err(site_err)? {
            let rel = format!("{a}/{b}");
            let mtime = unit::dir_mtime(&b_path);
            if known_dirs.get(&rel) != Some(&mtime) {
                groups.push((rel, b_path, mtime));
            }
        }
    }
    records.status.backlog.store(groups.len() as u64 * 100, Relaxed);
    for (i, (rel, path, mtime)) in groups.into_iter().enumerate() {
        for (local, _) in kakehashi_adapters::ss_mix2::subdirs(&path).map_err(site_err)? {
            if !first && index.has_local(&site.id, &local).await? {
                continue;
            }
            if let Some((rows, files, problems)) = read_patient(site, &local)? {
                records.status.problems.fetch_add(problems as u64, Relaxed);
                pending.push(rows, files).await?;
                done += 1;
            }
        }
        changed_dirs.push((rel, mtime));
        records.status.backlog.store(((i + 1) as u64).saturating_sub(0), Relaxed);
        if changed_dirs.len() >= 64 {
            pending.flush().await?;
            index.set_dirs(&site.id, &changed_dirs).await?;
            changed_dirs.clear();
        }
    }
    pending.flush().await?;
    index.set_dirs(&site.id, &changed_dirs).await?;
    records.status.backlog.store(0, Relaxed);
    if first {
        // Everything just indexed is current: no need to look at each patient again.
        return Ok(done);
    }
    // Changed demographics (and patients whose directory went away).
    pending.fresh = false;
    let mut after = String::new();
    loop {
        let page = index.patients_page(&site.id, &after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.0.clone();
        for (local, patient, watched) in page {
            let now = unit::watched(site, &local);
            if now == watched {
                continue;
            }
            match read_patient(site, &local)? {
                Some((rows, files, problems)) => {
                    records.status.problems.fetch_add(problems as u64, Relaxed);
                    records.cache.remove(&super::cache_key(&site.id, &patient));
                    pending.push(rows, files).await?;
                }
                None => {
                    pending.flush().await?;
                    index.remove_patient(&site.id, &patient).await?;
                    records.cache.remove(&super::cache_key(&site.id, &patient));
                }
            }
            done += 1;
        }
    }
    pending.flush().await?;
    Ok(done)
}

/// Bring a directory site's index up to date when its directory changed (one stat
/// when it did not): new and changed files are translated to learn their patient, and
/// those patients indexed again; removed files leave their patients. Returns the
/// patients indexed.
pub async fn sync_flat(records: &Records, site: &Site) -> Result<usize, super::RecordsError> {
    let Some(index) = records.index() else { return Ok(0) };
    let gate = records.flat_gate(&site.id);
    let mut last = gate.lock().await;
    let mtime = unit::dir_mtime(site.root());
    if !site.root().is_dir() {
        return Err(unit::SiteError { site: site.id.clone(), message: format!("directory {} is not reachable", site.root().display()) }.into());
    }
    if *last == mtime {
        return Ok(0);
    }
    let (site2, indexed) = (site.clone(), index.site_files(&site.id).await?);
    let rows = tokio::task::spawn_blocking(move || flat_changes(&site2, &indexed))
        .await
        .map_err(|e| super::RecordsError::Task(e.to_string()))??;
    let s = &records.status;
    for (r, files, problems) in &rows {
        s.problems.fetch_add(*problems as u64, Relaxed);
        s.files.fetch_add(*files as u64, Relaxed);
        records.cache.remove(&super::cache_key(&site.id, &r.patient));
    }
    s.patients.fetch_add(rows.len() as u64, Relaxed);
    let rows: Vec<UnitRows> = rows.into_iter().map(|(r, _, _)| r).collect();
    for chunk in rows.chunks(200) {
        index.write_units(chunk, false).await?;
    }
    index.set_dirs(&site.id, &[(String::new(), mtime)]).await?;
    *last = mtime;
    Ok(rows.len())
}

/// The patients of a directory site whose files changed since `indexed` (path,
/// patient, mtime, size), read again: (rows, files, problems) per patient.
fn flat_changes(
    site: &Site,
    indexed: &[(String, String, i64, i64)],
) -> Result<Vec<(UnitRows, usize, usize)>, unit::SiteError> {
    let listing = unit::flat_listing(site)?;
    let known: HashMap<&str, (&str, i64, i64)> =
        indexed.iter().map(|(p, patient, m, s)| (p.as_str(), (patient.as_str(), *m, *s))).collect();
    let present: std::collections::HashSet<String> = listing.iter().map(|(abs, _)| unit::relative(site, abs)).collect();
    // Patients touched by a change, and the files each has now.
    let mut files: HashMap<String, Vec<String>> = HashMap::new();
    let mut touched: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (abs, stamp) in &listing {
        let rel = unit::relative(site, abs);
        match known.get(rel.as_str()) {
            Some((patient, m, s)) => {
                if *m != stamp.mtime_ns || *s != stamp.size {
                    touched.insert(patient.to_string());
                }
                files.entry(patient.to_string()).or_default().push(rel);
            }
            // Which patient a new document is about is in the document.
            None => match unit::translate_flat(site, abs).ok().and_then(|(_, rs)| rs.iter().find_map(super::patient_of)) {
                Some(patient) => {
                    touched.insert(patient.clone());
                    files.entry(patient).or_default().push(rel);
                }
                None => tracing::warn!(site = %site.id, "a document names no patient or cannot be read; retried when it changes"),
            },
        }
    }
    for (rel, (patient, _, _)) in &known {
        if !present.contains(*rel) {
            touched.insert(patient.to_string());
        }
    }
    Ok(touched
        .into_iter()
        .map(|patient| {
            let mut fs = files.remove(&patient).unwrap_or_default();
            fs.sort();
            let u = unit::read_flat(site, &patient, &fs);
            (unit::rows(site, &u), u.files.len(), u.problems)
        })
        .collect())
}
