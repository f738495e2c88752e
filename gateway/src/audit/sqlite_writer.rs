//! The embedded store's audit writer: one OS thread with a connection of its own and
//! statements prepared once per connection (the same SQL as the PostgreSQL writer).
//! Through sqlx every event crossed its `Any` argument layer and its connection
//! worker's channel; here a batch is one `BEGIN IMMEDIATE`, a native insert per event
//! and one `COMMIT` (WAL, `synchronous=FULL`: fsync'd before any waiting request is
//! answered). The thread takes the store's write gate for each batch, so it queues in
//! order with the gateway's other writers.
//!
//! A second thread copies the WAL back into the database (passive checkpoints,
//! concurrent with the writer): done by the writer, as SQLite does by default, it
//! stalled every waiting read for about 6 ms every few dozen batches. When the WAL has
//! grown large it finishes the copy behind the write gate, so that the WAL restarts.
//! A pipelined variant (commits without flush, a third thread flushing each group of
//! batches once) measured no faster on the 2-core reference machine and was not kept.

use super::checkpoint::Signer;
use super::log::{
    chain_hash, head_unsigned, insert_events_sql, Checkpoints, Job, Queues, WriterStats, CHECKPOINT_SQL, GENESIS,
    HEAD_SQL, LAST_CHECKPOINT_SQL, MAX_BATCH,
};
use super::witness::Kind as WitnessKind;
use rusqlite::{params, Connection, OptionalExtension, Statement};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Start the writer thread for the database `file`.
pub(super) fn spawn(
    file: Arc<Path>,
    gate: Arc<tokio::sync::Mutex<()>>,
    cp: Checkpoints,
    q: Queues,
    forward: Option<super::forward::Forwarder>,
    stats: Arc<WriterStats>,
) {
    let (stop, stopped) = flume::bounded(0);
    spawn_wal_checkpointer(file.clone(), gate.clone(), stopped);
    let spawned = std::thread::Builder::new().name("audit-writer".into()).spawn(move || {
        Writer { file, gate, cp, q, forward, stats, next_tick: Instant::now(), last: None, _stop: stop }.run()
    });
    if let Err(e) = spawned {
        // The receiver is gone with the closure: every record() fails, so reads are refused.
        tracing::error!(error = %e, "could not start the audit writer thread; reads will be refused");
    }
}

struct Writer {
    file: Arc<Path>,
    gate: Arc<tokio::sync::Mutex<()>>,
    cp: Checkpoints,
    q: Queues,
    forward: Option<super::forward::Forwarder>,
    stats: Arc<WriterStats>,
    next_tick: Instant,
    /// The head this writer last wrote or found at its start: on SQLite it is the only
    /// writer of the chain, so a head it did not write was appended behind its back.
    last: Option<(i64, Vec<u8>)>,
    /// Dropped with the writer, which stops the WAL checkpointer.
    _stop: flume::Sender<()>,
}

/// What the writer waits for.
enum Wake {
    Batch(Vec<Job>),
    Tick,
    Stop(tokio::sync::oneshot::Sender<()>),
    Closed,
}

impl Writer {
    fn run(mut self) {
        self.next_tick = Instant::now() + self.cp.interval;
        // A connection is opened on first use and again after any failure: a failed
        // batch may leave it in a state not worth reasoning about, and the next batch
        // must find the store as it is now (a table restored, a disk with room again),
        // not refuse on a stale error.
        let mut wake = Wake::Tick;
        loop {
            if let Wake::Closed = wake {
                return;
            }
            match open(&self.file) {
                Ok(conn) => {
                    if self.serve(&conn, wake) {
                        return;
                    }
                }
                Err(e) => refuse(wake, &e),
            }
            wake = self.wait();
        }
    }

    /// Write batches and checkpoints on `conn` with statements prepared once, starting
    /// with `wake`, until a write fails (false) or the writer is to end (true).
    fn serve(&mut self, conn: &Connection, mut wake: Wake) -> bool {
        let mut st = match Statements::prepare(conn) {
            Ok(st) => st,
            Err(e) => {
                refuse(wake, &e);
                return false;
            }
        };
        if self.last.is_none() {
            // First contact: sign the head as found and witness the start.
            match self.in_turn(conn, || st.checkpoint_head(&self.cp.signer, true)) {
                Ok(head) => {
                    let (seq, hash) = head.unwrap_or((0, GENESIS.to_vec()));
                    self.cp.witness(WitnessKind::Start, seq, &hash);
                    self.last = Some((seq, hash));
                }
                Err(e) => {
                    refuse(wake, &e);
                    return false;
                }
            }
        }
        loop {
            let began = Instant::now();
            let written = match &wake {
                Wake::Closed => return true,
                Wake::Batch(jobs) => {
                    let last = self.last.clone();
                    self.in_turn(conn, || st.append_after(&self.cp, jobs, last.as_ref())).map(Some)
                }
                Wake::Tick => self.in_turn(conn, || st.checkpoint_head(&self.cp.signer, false)).map(|signed| {
                    if let Some((seq, hash)) = signed {
                        self.cp.witness(WitnessKind::Checkpoint, seq, &hash);
                    }
                    None
                }),
                Wake::Stop(_) => {
                    // Whatever was queued before the stop, then the head, signed.
                    let queued: Vec<Job> = self.q.jobs.try_iter().collect();
                    if !queued.is_empty() {
                        wake = Wake::Batch(queued);
                        continue;
                    }
                    let head = self.in_turn(conn, || st.checkpoint_head(&self.cp.signer, true));
                    match head {
                        Ok(head) => {
                            let (seq, hash) = head.unwrap_or((0, GENESIS.to_vec()));
                            self.cp.witness(WitnessKind::Shutdown, seq, &hash);
                        }
                        Err(e) => tracing::warn!(error = %e, "the chain head could not be signed at shutdown"),
                    }
                    if let Wake::Stop(done) = wake {
                        let _ = done.send(());
                    }
                    return true;
                }
            };
            match (written, wake) {
                (Ok(Some(appended)), Wake::Batch(jobs)) => {
                    self.stats.committed(jobs.len(), began);
                    if let Some((seq, hash)) = &appended.foreign {
                        // Events this writer did not write sit under its new ones.
                        tracing::error!(
                            head = seq,
                            "audit events were appended to the chain behind the gateway's writer"
                        );
                        self.cp.witness(WitnessKind::Foreign, *seq, hash);
                    }
                    self.cp.witness_signed(&appended.signed);
                    self.last = Some(appended.head);
                    Job::committed(jobs, appended.first, self.forward.as_ref())
                }
                (Ok(_), _) => {}
                (Err(e), failed) => {
                    refuse(failed, &e);
                    return false;
                }
            }
            wake = self.wait();
        }
    }

    /// Run `f` in a transaction holding the store's write gate.
    fn in_turn<T>(
        &self,
        conn: &Connection,
        f: impl FnOnce() -> Result<T, rusqlite::Error>,
    ) -> Result<T, rusqlite::Error> {
        let _gate = self.gate.blocking_lock();
        in_tx(conn, f)
    }

    /// The next batch (every job already queued, up to [`MAX_BATCH`]), the periodic
    /// checkpoint when it is due first, or the stop request.
    fn wait(&mut self) -> Wake {
        loop {
            let now = Instant::now();
            if now >= self.next_tick {
                self.next_tick = now + self.cp.interval;
                return Wake::Tick;
            }
            let got = flume::Selector::new()
                .recv(&self.q.stop, |r| r.map(Wake::Stop).unwrap_or(Wake::Closed))
                .recv(&self.q.jobs, |r| match r {
                    Ok(first) => {
                        let mut batch = Vec::with_capacity(self.q.jobs.len().min(MAX_BATCH) + 1);
                        batch.push(first);
                        batch.extend(self.q.jobs.try_iter().take(MAX_BATCH - 1));
                        Wake::Batch(batch)
                    }
                    Err(_) => Wake::Closed,
                })
                .wait_timeout(self.next_tick - now);
            if let Ok(w) = got {
                return w;
            }
        }
    }
}

/// Answer a wake that could not be written: its requests are refused.
fn refuse(wake: Wake, error: &dyn std::fmt::Display) {
    match wake {
        Wake::Batch(jobs) => Job::failed(jobs, error),
        Wake::Tick => tracing::warn!(error = %error, "periodic audit checkpoint failed; retrying at the next tick"),
        Wake::Stop(done) => {
            tracing::warn!(error = %error, "the chain head could not be signed at shutdown");
            let _ = done.send(());
        }
        Wake::Closed => {}
    }
}

/// What one appended batch did.
struct Appended {
    /// Its first sequence number.
    first: i64,
    /// The head after it.
    head: (i64, Vec<u8>),
    /// Checkpoints it signed.
    signed: Vec<(i64, Vec<u8>)>,
    /// A head found that this writer did not leave (events appended behind its back).
    foreign: Option<(i64, Vec<u8>)>,
}

fn open(file: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(file)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // journal_mode is a property of the file (the store set WAL); synchronous is per
    // connection; checkpoints are the checkpointer's.
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;")?;
    Ok(conn)
}

/// How often the WAL is copied back into the database.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// A WAL longer than this is finished behind the write gate so that it restarts. The
/// finishing pass holds every writer for its two flushes (up to 26 ms under load on
/// the reference machine): at 16 MB it ran every 0.4 s at saturation and the
/// 32-client p99 rose to 20 ms; at 64 MB, every 1.3 s at half the saturating rate, the
/// p99 there rose from 8 to 10 ms. At 256 MB it runs every few seconds at most.
const WAL_RESTART_BYTES: i64 = 256 << 20;

/// Passive checkpoints on a connection of their own until `stopped` is closed. Should
/// this thread fail, the gateway's other connections still checkpoint when they write.
fn spawn_wal_checkpointer(file: Arc<Path>, gate: Arc<tokio::sync::Mutex<()>>, stopped: flume::Receiver<()>) {
    let spawned = std::thread::Builder::new().name("audit-wal".into()).spawn(move || {
        let mut conn = None;
        while let Err(flume::RecvTimeoutError::Timeout) = stopped.recv_timeout(WAL_CHECKPOINT_EVERY) {
            let (c, restart_frames) = match conn.take() {
                Some(c) => c,
                None => match open_checkpointer(&file, WAL_RESTART_BYTES) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "WAL checkpointer cannot open the database");
                        continue;
                    }
                },
            };
            match checkpoint_wal(&c, &gate, restart_frames) {
                Ok(()) => conn = Some((c, restart_frames)),
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retrying"),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the WAL checkpointer; connections checkpoint as they write");
    }
}

/// The checkpointer's connection, with the WAL length in frames past which it
/// finishes behind the write gate (`restart_bytes` in whole pages; the page size of an
/// existing database does not change).
fn open_checkpointer(file: &Path, restart_bytes: i64) -> Result<(Connection, i64), rusqlite::Error> {
    let conn = open(file)?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((conn, restart_bytes / page_size.max(1)))
}

/// Copy the WAL into the database while writers go on; when it holds more than
/// `restart_frames`, copy the frames added meanwhile with the write gate held.
/// Only a checkpoint that reaches the end of the WAL lets the next transaction restart
/// it from the beginning: under steady load passive checkpoints alone never did, and
/// the WAL grew for as long as the load lasted (25 MB/s measured), every commit
/// appending to new blocks that its flush then had to journal.
fn checkpoint_wal(
    conn: &Connection,
    gate: &tokio::sync::Mutex<()>,
    restart_frames: i64,
) -> Result<(), rusqlite::Error> {
    let passive = || conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
    if passive()? > restart_frames {
        let _gate = gate.blocking_lock();
        passive()?;
    }
    Ok(())
}

/// Run `f` in a `BEGIN IMMEDIATE` transaction: committed when it succeeds, rolled back
/// when it fails.
fn in_tx<T>(conn: &Connection, f: impl FnOnce() -> Result<T, rusqlite::Error>) -> Result<T, rusqlite::Error> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f().and_then(|v| conn.execute_batch("COMMIT").map(|()| v)) {
        Ok(v) => Ok(v),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

struct Statements<'c> {
    head: Statement<'c>,
    insert: Statement<'c>,
    checkpoint: Statement<'c>,
    last_checkpoint: Statement<'c>,
}

impl<'c> Statements<'c> {
    fn prepare(conn: &'c Connection) -> Result<Self, rusqlite::Error> {
        Ok(Statements {
            head: conn.prepare(HEAD_SQL)?,
            insert: conn.prepare(&insert_events_sql(1))?,
            checkpoint: conn.prepare(CHECKPOINT_SQL)?,
            last_checkpoint: conn.prepare(LAST_CHECKPOINT_SQL)?,
        })
    }

    fn head(&mut self) -> Result<Option<(i64, Vec<u8>)>, rusqlite::Error> {
        self.head.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional()
    }

    /// Append `batch` after the chain head; `last` is the head this writer left, to
    /// tell whether anything was appended behind its back.
    fn append_after(
        &mut self,
        cp: &Checkpoints,
        batch: &[Job],
        last: Option<&(i64, Vec<u8>)>,
    ) -> Result<Appended, rusqlite::Error> {
        let (mut seq, mut prev) = match self.head()? {
            Some((seq, hash)) => (seq, hash),
            None => (0, GENESIS.to_vec()),
        };
        let foreign = last.filter(|l| l.0 < seq).map(|_| (seq, prev.clone()));
        let first = seq + 1;
        let mut signed = Vec::new();
        for job in batch {
            seq += 1;
            let (json, c) = (&job.prepared.json, &job.prepared.cols);
            let hash = chain_hash(seq, &prev, json.as_bytes());
            self.insert.execute(params![
                seq,
                c.recorded,
                c.agent,
                c.owners,
                c.patients,
                c.outcome,
                c.subtype,
                c.cross,
                json,
                prev,
                &hash[..],
                c.entities
            ])?;
            if seq % cp.every == 0 {
                self.sign(&cp.signer, seq, &hash)?;
                signed.push((seq, hash.to_vec()));
            }
            prev.clear();
            prev.extend_from_slice(&hash);
        }
        Ok(Appended { first, head: (seq, prev), signed, foreign })
    }

    fn sign(&mut self, signer: &Signer, seq: i64, hash: &[u8]) -> Result<(), rusqlite::Error> {
        let signed_at = super::now_micros() / 1_000_000;
        self.checkpoint.execute(params![seq, hash, signed_at, signer.key_id(), signer.sign(seq, hash, signed_at)])?;
        Ok(())
    }

    /// Sign the head if events were added since the last checkpoint. Returns the head
    /// signed now, or with `always` the head whether signed now or before.
    fn checkpoint_head(&mut self, signer: &Signer, always: bool) -> Result<Option<(i64, Vec<u8>)>, rusqlite::Error> {
        let Some((seq, hash)) = self.head()? else { return Ok(None) };
        let last: Option<i64> = self.last_checkpoint.query_row([], |r| r.get(0))?;
        if head_unsigned(seq, last) {
            self.sign(signer, seq, &hash)?;
            return Ok(Some((seq, hash)));
        }
        Ok(always.then_some((seq, hash)))
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::checkpoint::{Signer, TrustedKeys};
    use crate::audit::{AuditLog, AuditRecord, Checkpoints, Disclosed, Interaction, Outcome, Requestor};
    use crate::store::Store;
    use std::sync::Arc;
    use std::time::Duration;

    /// A log in a fresh directory, signing a checkpoint every `every` events.
    async fn log_in_temp_dir(name: &str, every: i64) -> (std::path::PathBuf, Store, AuditLog, Arc<Signer>) {
        let dir = std::env::temp_dir().join(format!("kk-sqlite-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        std::fs::write(dir.join("key.pk8"), pkcs8.as_ref()).unwrap();
        let signer = Arc::new(Signer::load(&dir.join("key.pk8")).unwrap());
        let store = Store::open(&format!("sqlite://{}/audit.db", dir.display())).await.unwrap();
        let cp = Checkpoints { signer: signer.clone(), every, interval: Duration::from_secs(3600), witness: None };
        let log = AuditLog::start(store.clone(), "test".into(), cp);
        (dir, store, log, signer)
    }

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            interaction: Interaction::Read,
            outcome: Outcome::Success,
            outcome_desc: None,
            requestor: Requestor::Unidentified {
                fingerprint: None,
                institution: Some("4610200021".into()),
                certificate: None,
            },
            source_address: "127.0.0.1:1".into(),
            disclosed: vec![Disclosed {
                reference: format!("Patient/p{i}"),
                owner: "4610100011".into(),
                patient: Some(format!("p{i}")),
                basis: "consent".into(),
            }],
            query: None,
            purpose: "TREAT".into(),
            break_glass_reason: None,
            recorded_micros: crate::audit::now_micros(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_begun_with_rendered_events_goes_on_with_entries_and_verifies() {
        let (dir, store, log, signer) = log_in_temp_dir("upgrade", 100).await;
        // What a gateway before entries stored: the rendered AuditEvent, chained the same way.
        let old = serde_json::to_string(&record(0).entry("test").to_fhir(Some(1))).unwrap();
        let hash = crate::audit::log::chain_hash(1, &crate::audit::log::GENESIS, old.as_bytes());
        let q = sqlx::query(sqlx::AssertSqlSafe(crate::audit::log::insert_events_sql(1)));
        let derived = crate::audit::log::Columns::of(&record(0).entry("test"));
        // Whatever the columns say, an event stored rendered has no entry to check them by.
        let cols = crate::audit::log::Columns { agent: "not derivable from a rendered event".into(), ..derived };
        crate::audit::log::bind_event(q, 1, &old, &cols, crate::audit::log::GENESIS.to_vec(), &hash)
            .execute(store.pool())
            .await
            .unwrap();
        for i in 1..=3 {
            assert_eq!(log.record(record(i)).await.unwrap(), i as i64 + 1, "appended after the rendered event");
        }
        let report = crate::audit::verify::verify(&store, &TrustedKeys::new([signer.public_key()]), 100).await.unwrap();
        assert_eq!((report.first, report.last), (1, 4));
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT event FROM audit_event ORDER BY seq").fetch_all(store.pool()).await.unwrap();
        assert_eq!(crate::audit::event::render_stored(1, &stored[0]).unwrap().get(), old, "shown as stored");
        let rendered: serde_json::Value =
            serde_json::from_str(crate::audit::event::render_stored(2, &stored[1]).unwrap().get()).unwrap();
        assert_eq!((rendered["resourceType"].as_str(), rendered["id"].as_str()), (Some("AuditEvent"), Some("2")));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_events_form_one_chain_that_verifies() {
        let (dir, store, log, signer) = log_in_temp_dir("chain", 100).await;
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.record(record(i)).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=300).collect::<Vec<i64>>(), "every event got its own place in the chain");
        let report = crate::audit::verify::verify(&store, &TrustedKeys::new([signer.public_key()]), 100).await.unwrap();
        assert_eq!(report.events, 300);
        assert_eq!(report.checkpoints, 3, "signed at 100, 200 and 300");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_verifies_while_the_gateway_goes_on_appending() {
        // Checkpoints every 10 events, so that appends during a verification add some.
        let (dir, store, log, signer) = log_in_temp_dir("live", 10).await;
        for i in 0..50 {
            log.record(record(i)).await.unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let appender = {
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 50;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut batch = tokio::task::JoinSet::new();
                    for j in i..i + 8 {
                        let log = log.clone();
                        batch.spawn(async move { log.record(record(j)).await });
                    }
                    for r in batch.join_all().await {
                        r.unwrap();
                    }
                    i += 8;
                }
                i
            })
        };
        let keys = TrustedKeys::new([signer.public_key()]);
        let mut last = 0;
        for _ in 0..30 {
            let report = crate::audit::verify::verify(&store, &keys, 10).await.unwrap();
            assert!(report.last >= last, "each pass reaches the head it found");
            last = report.last;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let appended = appender.await.unwrap();
        assert!(
            appended > 50 && last > 50,
            "events were appended during verification ({appended}, verified to {last})"
        );
        let report = crate::audit::verify::verify(&store, &keys, 10).await.unwrap();
        assert_eq!(report.last, appended as i64, "once the appends stop, the whole log");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_while_the_writer_runs() {
        let (dir, _store, log, _) = log_in_temp_dir("wal", 100).await;
        // 20 bursts of 200 events (~10 MB of frames in all), each followed by more than
        // one checkpoint interval: a WAL nobody checkpoints would hold every frame.
        for burst in 0..20 {
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move { log.record(record(burst * 200 + i)).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            tokio::time::sleep(super::WAL_CHECKPOINT_EVERY * 2).await;
        }
        let wal = std::fs::metadata(dir.join("audit.db-wal")).unwrap().len();
        assert!(wal < 4 * 1024 * 1024, "the WAL restarts after checkpoints; it is {wal} bytes");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// WAL size after a writer that never pauses commits 4,000 transactions of 10 KB
    /// while the checkpointer runs with `restart_bytes`.
    fn wal_after_steady_writes(name: &str, restart_bytes: i64) -> u64 {
        let dir = std::env::temp_dir().join(format!("kk-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("steady.db");
        let setup = super::open(&file).unwrap();
        setup.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x BLOB NOT NULL);").unwrap();
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpointer = {
            let (file, gate, done) = (file.clone(), gate.clone(), done.clone());
            std::thread::spawn(move || {
                let (conn, restart_frames) = super::open_checkpointer(&file, restart_bytes).unwrap();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    super::checkpoint_wal(&conn, &gate, restart_frames).unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let writer = super::open(&file).unwrap();
        writer.execute_batch("PRAGMA synchronous=OFF").unwrap();
        let blob = vec![7u8; 10_000];
        for _ in 0..4000 {
            let _gate = gate.blocking_lock();
            super::in_tx(&writer, || writer.execute("INSERT INTO t (x) VALUES (?1)", [&blob]).map(|_| ())).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        checkpointer.join().unwrap();
        let wal = std::fs::metadata(dir.join("steady.db-wal")).unwrap().len();
        let _ = std::fs::remove_dir_all(dir);
        wal
    }

    #[test]
    fn the_wal_stays_bounded_under_writes_without_pauses() {
        // Passive checkpoints alone never reach the end of the WAL while the writer
        // keeps appending: the WAL keeps every frame of the 40 MB written (74 MB here).
        let unbounded = wal_after_steady_writes("passive", i64::MAX);
        assert!(unbounded > 40 << 20, "without the gated pass the WAL grows; it is {unbounded} bytes");
        // Past 1 MB plus what the writer adds between two checkpoints (6-11 MB here).
        let bounded = wal_after_steady_writes("gated", 1 << 20);
        assert!(bounded < 24 << 20, "the gated pass restarts the WAL; it is {bounded} bytes");
    }
}
