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
//! serves what is indexed; afterwards passes that find nothing keep the process's CPU
//! time within `records.index_cpu_percent` of one core (see [`Budget`]). With
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
    /// Directories of cached patients under change notices.
    pub watched: Arc<AtomicU64>,
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
            "watched_directories": self.watched.load(Relaxed),
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

/// The whole process's CPU time in ns (Linux; 10 ms resolution). The budget counts
/// this, not only the indexer's thread: the database work a pass causes runs on the
/// store's threads, and while the gateway is idle nothing else uses the CPU.
fn process_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are
    // the 12th and 13th, in clock ticks of 10 ms.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum();
    ticks * 10_000_000
}

/// How often new patients are looked for when nothing changes (a stat per
/// `pid[3..6]` directory), unless the budget asks for longer.
const NEW_PATIENTS_EVERY: Duration = Duration::from_secs(5);

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
    let share = (settings.cpu_percent / 100.0).clamp(0.001, 1.0);
    let mut lock: Option<sqlx::pool::PoolConnection<sqlx::Any>> = None;
    // Each patient's demographics directory costs a stat, so that pass runs only when
    // the budget has room; new patients (a stat per `pid[3..6]` directory) are looked
    // for every few seconds, and charged to the same budget.
    let mut budget = Budget::new(share);
    let mut stop = records.stop.subscribe();
    while !records.stopping() {
        if let Some(conn) = lock.as_mut() {
            // The lock lives as long as its session: one that was cut (the database
            // restarted, say) no longer keeps other instances from walking.
            if sqlx::query("SELECT 1").execute(&mut **conn).await.is_err() {
                tracing::warn!("the records index lock's database session ended; taking the lock again");
                lock = None;
            }
        }
        if index.backend() == crate::store::Backend::Postgres && lock.is_none() {
            lock = try_lock(&index).await;
            records.status.walking.store(lock.is_some(), Relaxed);
            if lock.is_none() {
                // Another instance walks; the shared index says how far it got.
                if index.meta("complete").await.ok().flatten().as_deref() == Some("1") {
                    records.status.complete.store(true, Relaxed);
                }
                rest(&mut stop, Duration::from_secs(10)).await;
                continue;
            }
        } else {
            records.status.walking.store(true, Relaxed);
        }
        let (cpu0, wall0) = (thread_cpu_ns(), Instant::now());
        let demographics = budget.has_room();
        let mut work = 0u64;
        for site in records.sites().to_vec() {
            let done = if site.is_ss_mix2() {
                ss_mix2_pass(&records, &index, &site, settings, demographics).await
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
        if records.stopping() {
            break;
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
            // Changes are indexed at once, outside the budget (which is for looking).
            budget.forgive();
            continue;
        }
        budget.settle();
        let pause = Duration::from_nanos(cpu).div_f64(share).saturating_sub(wall).max(NEW_PATIENTS_EVERY);
        tracing::debug!(
            demographics,
            cpu_ms = cpu / 1_000_000,
            wall_ms = wall.as_millis() as u64,
            "indexing pass found nothing new"
        );
        rest(&mut stop, pause).await;
    }
    // The advisory lock belongs to the session: close it, or another instance would
    // wait for a connection that the pool keeps open.
    if let Some(conn) = lock {
        let _ = conn.close().await;
    }
    records.status.walking.store(false, Relaxed);
}

/// Sleep for `d`, or until the gateway stops.
async fn rest(stop: &mut tokio::sync::watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// The indexer's CPU budget when nothing changes: the process's CPU time is charged
/// against `share` of the time that passes, and a debt must be repaid before the next
/// costly pass. Unused allowance is not saved up, so no burst exceeds one pass.
struct Budget {
    share: f64,
    debt_ns: f64,
    cpu: u64,
    at: Instant,
}

impl Budget {
    fn new(share: f64) -> Budget {
        Budget { share, debt_ns: 0.0, cpu: process_cpu_ns(), at: Instant::now() }
    }

    /// Charge what the process used since the last settlement, less the allowance.
    fn settle(&mut self) {
        let (cpu, at) = (process_cpu_ns(), Instant::now());
        let used = cpu.saturating_sub(self.cpu) as f64;
        let allowed = self.share * at.duration_since(self.at).as_nanos() as f64;
        self.debt_ns = (self.debt_ns + used - allowed).max(0.0);
        (self.cpu, self.at) = (cpu, at);
    }

    /// Whether a costly pass may run now.
    fn has_room(&mut self) -> bool {
        self.settle();
        self.debt_ns <= 0.0
    }

    /// Start afresh after indexing changes (which the budget does not limit).
    fn forgive(&mut self) {
        (self.debt_ns, self.cpu, self.at) = (0.0, process_cpu_ns(), Instant::now());
    }
}

/// The advisory lock that makes this instance the one that walks (PostgreSQL).
async fn try_lock(index: &IndexDb) -> Option<sqlx::pool::PoolConnection<sqlx::Any>> {
    let mut conn = index.pool().acquire().await.ok()?;
    let got: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(7263011i64).fetch_one(&mut *conn).await.ok()?;
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
fn read_patient(site: &Site, local: &str) -> Result<Option<Read>, unit::SiteError> {
    let listing = unit::ss_mix2_listing(site, local)?;
    if listing.files.is_empty() {
        return Ok(None);
    }
    let t = unit::translate_ss_mix2(site, local, &listing)?;
    Ok(Some((unit::rows(site, &t), t.files.len(), t.problems)))
}

/// One patient read: its index rows, files read and files that failed.
type Read = (UnitRows, usize, usize);

/// Translate SS-MIX2 patients `locals` on every core: (rows, files, problems) each,
/// in the order given.
fn translate_many(site: &Site, locals: &[String]) -> Result<Vec<Read>, unit::SiteError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(locals.len()).max(1);
    let results: Vec<Result<Vec<(usize, Read)>, unit::SiteError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (i, local) in locals.iter().enumerate().skip(t).step_by(threads) {
                        if let Some(r) = read_patient(site, local)? {
                            out.push((i, r));
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(unit::SiteError { site: site.id.clone(), message: "a translator thread panicked".into() })
                })
            })
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// Write one directory's translated patients, then record the directory as done.
/// Returns the patients written.
async fn write_group(
    pending: &mut Pending<'_>,
    index: &IndexDb,
    site: &str,
    rows: Vec<(UnitRows, usize, usize)>,
    dir: (String, i64),
) -> Result<u64, super::RecordsError> {
    let n = rows.len() as u64;
    for (r, files, problems) in rows {
        pending.records.status.problems.fetch_add(problems as u64, Relaxed);
        pending.push(r, files).await?;
    }
    pending.flush().await?;
    index.set_dirs(site, &[dir]).await?;
    Ok(n)
}

/// One pass over an SS-MIX2 storage: new patients by changed `pid[3..6]` directories,
/// changed demographics by each indexed patient's `-/ADT-00` directory. Returns the
/// patients indexed.
async fn ss_mix2_pass(
    records: &Records,
    index: &IndexDb,
    site: &Site,
    settings: Settings,
    demographics: bool,
) -> Result<u64, super::RecordsError> {
    let root = site.root().to_path_buf();
    if !root.is_dir() {
        return Err(unit::SiteError {
            site: site.id.clone(),
            message: format!("storage root {} is not reachable", root.display()),
        }
        .into());
    }
    let known_dirs = index.dirs(&site.id).await?;
    let first = known_dirs.is_empty() && index.counts(&site.id).await?.0 == 0;
    if first {
        // A new index, or one deleted to be rebuilt: say so, it takes a while at a hub.
        tracing::info!(site = %site.id, root = %root.display(), "indexing the storage from the start");
    }
    let mut pending = Pending {
        index,
        records,
        rows: Vec::new(),
        fresh: first,
        batch: settings.batch,
        files: 0,
        started: Instant::now(),
    };
    let mut done = 0u64;
    let site_err =
        |e: kakehashi_adapters::SourceError| unit::SiteError { site: site.id.clone(), message: e.to_string() };
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
    // Each directory's patients are translated on every core while the previous
    // directory's are written: translation is most of the work of a first index.
    let total = groups.len() as u64;
    let mut written: Option<(Vec<Read>, (String, i64))> = None;
    for (i, (rel, path, mtime)) in groups.into_iter().enumerate() {
        if records.stopping() {
            // What is written stays; the next start resumes from the directories left.
            break;
        }
        let mut locals: Vec<String> =
            kakehashi_adapters::ss_mix2::subdirs(&path).map_err(site_err)?.into_iter().map(|(l, _)| l).collect();
        if !first {
            let mut new = Vec::new();
            for l in locals {
                if !index.has_local(&site.id, &l).await? {
                    new.push(l);
                }
            }
            locals = new;
        }
        let site2 = site.clone();
        let translate = tokio::task::spawn_blocking(move || translate_many(&site2, &locals));
        let write = async {
            match written.take() {
                Some((rows, dir)) => write_group(&mut pending, index, &site.id, rows, dir).await,
                None => Ok(0),
            }
        };
        let (translated, wrote) = tokio::join!(translate, write);
        done += wrote?;
        let rows = translated.map_err(|e| super::RecordsError::Task(e.to_string()))??;
        written = Some((rows, (rel, mtime)));
        records.status.backlog.store(total - i as u64 - 1, Relaxed);
    }
    if let Some((rows, dir)) = written.take() {
        done += write_group(&mut pending, index, &site.id, rows, dir).await?;
    }
    records.status.backlog.store(0, Relaxed);
    if first || !demographics {
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
        if records.stopping() {
            break;
        }
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
        return Err(unit::SiteError {
            site: site.id.clone(),
            message: format!("directory {} is not reachable", site.root().display()),
        }
        .into());
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
            None => {
                match unit::translate_flat(site, abs).ok().and_then(|(_, rs)| rs.iter().find_map(super::patient_of)) {
                    Some(patient) => {
                        touched.insert(patient.clone());
                        files.entry(patient).or_default().push(rel);
                    }
                    None => {
                        tracing::warn!(site = %site.id, "a document names no patient or cannot be read; retried when it changes")
                    }
                }
            }
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
            let t = unit::translate_flat_unit(site, &patient, &fs);
            (unit::rows(site, &t), t.files.len(), t.problems)
        })
        .collect())
}
