//! The embedded store's audit writer: one OS thread that appends each group of events
//! to the audit journal ([`super::journal`]) and flushes it once (`fdatasync`) before
//! any waiting read is answered, then copies the events into the `audit_event` table
//! (the index the auditor's API, `audit export` and `audit verify` read) in larger
//! transactions, with a connection of its own and statements prepared once.
//!
//! Before the journal, every group commit was a SQLite transaction: each rewrote the
//! 16 KB pages of the event table and its two indexes in the WAL and flushed it (6.8 KB
//! written per read at 64 clients, 57 KB for a read alone), and the WAL checkpointer
//! copied the same pages again. Now the hot path writes the events' bytes once and
//! waits for no database lock; the index follows within `audit.index_delay_ms` (each
//! read waits for its own index write too when that is 0), and a start replays
//! whatever the journal holds past the index's head, so a crash loses nothing that was
//! answered. Signed checkpoints and the witness follow the index, so everything they
//! vouch for is in the table `audit verify` reads.
//!
//! A second thread copies the WAL back into the database (passive checkpoints,
//! concurrent with the writer): done by the writer, as SQLite does by default, it
//! stalled every waiting read for about 6 ms every few dozen batches. When the WAL has
//! grown large it finishes the copy behind the write gate, so that the WAL restarts.

use super::checkpoint::Signer;
use super::journal::{Journal, Record};
use super::log::{
    head_unsigned, insert_events_sql, Checkpoints, Columns, Job, Journaling, Queues, WriterStats, CHECKPOINT_SQL,
    GENESIS, HEAD_SQL, LAST_CHECKPOINT_SQL, MAX_BATCH,
};
use super::witness::Kind as WitnessKind;
use rusqlite::{params, Connection, OptionalExtension, Statement};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events appended to the journal and not yet indexed, past which new ones are
/// refused: an index that cannot be written (a full disk, a conflicting row) must not
/// grow the writer's memory without bound.
const MAX_PENDING: usize = 50_000;
/// Events that make the index due before its delay has passed.
const INDEX_BATCH: usize = 4096;
/// The pause after the index could not be written.
const INDEX_RETRY: Duration = Duration::from_millis(500);

/// The journal's directory for the database `file`: `NAME-audit` beside it.
pub(super) fn journal_dir(file: &Path) -> PathBuf {
    let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-audit");
    file.with_file_name(name)
}

/// Start the writer thread for the database `file`.
pub(super) fn spawn(
    file: Arc<Path>,
    gate: Arc<tokio::sync::Mutex<()>>,
    cp: Checkpoints,
    q: Queues,
    forward: Option<super::forward::Forwarder>,
    stats: Arc<WriterStats>,
    journaling: Journaling,
) {
    let (stop, stopped) = flume::bounded(0);
    spawn_wal_checkpointer(file.clone(), gate.clone(), stopped);
    let spawned = std::thread::Builder::new().name("audit-writer".into()).spawn(move || {
        Writer {
            file,
            gate,
            cp,
            q,
            forward,
            stats,
            journaling,
            next_tick: Instant::now(),
            journal: None,
            pending: Vec::new(),
            index_at: None,
            index_failing: false,
            started: false,
            _stop: stop,
        }
        .run()
    });
    if let Err(e) = spawned {
        // The receiver is gone with the closure: every record() fails, so reads are refused.
        tracing::error!(error = %e, "could not start the audit writer thread; reads will be refused");
    }
}

/// An event in the journal, not yet in the index.
struct Pending {
    seq: i64,
    prev: [u8; 32],
    hash: [u8; 32],
    json: String,
    cols: Columns,
}

impl Pending {
    fn replayed(r: Record) -> Result<Pending, String> {
        let entry: super::event::Entry<'_> =
            serde_json::from_str(&r.entry).map_err(|e| format!("journal event {}: {e}", r.seq))?;
        let cols = Columns::of(&entry);
        Ok(Pending { seq: r.seq, prev: r.prev, hash: r.hash, json: r.entry, cols })
    }
}

struct Writer {
    file: Arc<Path>,
    gate: Arc<tokio::sync::Mutex<()>>,
    cp: Checkpoints,
    q: Queues,
    forward: Option<super::forward::Forwarder>,
    stats: Arc<WriterStats>,
    journaling: Journaling,
    next_tick: Instant,
    /// Opened at first contact with the database, whose index head it goes on from.
    journal: Option<Journal>,
    /// In the journal, not yet in the index, in order.
    pending: Vec<Pending>,
    /// When they are due in the index: the oldest one's delay after it was appended,
    /// or a while after a failed attempt.
    index_at: Option<Instant>,
    /// The last indexing failed (logged once until it succeeds again).
    index_failing: bool,
    /// The start is done: the journal's events indexed, the head signed and witnessed.
    started: bool,
    /// Dropped with the writer, which stops the WAL checkpointer.
    _stop: flume::Sender<()>,
}

/// What the writer waits for.
enum Wake {
    Batch(Vec<Job>),
    /// Pending events are due in the index.
    Index,
    Settle(tokio::sync::oneshot::Sender<()>),
    Tick,
    Stop(tokio::sync::oneshot::Sender<()>),
    Closed,
}

/// The index could not be brought up to the journal.
#[derive(Debug, thiserror::Error)]
enum IndexError {
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
    #[error(
        "the audit_event table holds event {found} where the journal's next is {next}: rows were added behind the gateway's writer"
    )]
    Foreign { found: i64, hash: Vec<u8>, next: i64 },
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
                Err(e) => {
                    // The journal still takes events while the index's database cannot
                    // be opened; only a writer without a journal must refuse.
                    wake = self.without_index(wake, &e);
                    if let Wake::Closed = wake {
                        return;
                    }
                    continue;
                }
            }
            wake = self.wait();
        }
    }

    /// Handle `wake` while the database cannot be opened: batches go to the journal
    /// (when it is open), the rest waits. Returns the next wake.
    fn without_index(&mut self, wake: Wake, error: &dyn std::fmt::Display) -> Wake {
        match wake {
            Wake::Batch(jobs) if self.journal.is_some() => {
                self.append_and_answer(jobs);
            }
            Wake::Settle(done) => {
                let _ = done.send(());
            }
            Wake::Index | Wake::Tick => {
                if !self.index_failing {
                    tracing::error!(error = %error, "the audit database cannot be opened; events wait in the journal");
                    self.index_failing = true;
                }
                self.index_at = Some(Instant::now() + INDEX_RETRY);
            }
            Wake::Stop(done) => {
                tracing::warn!(error = %error, events = self.pending.len(), "stopping with the audit database unreachable; the next start indexes the journal");
                let _ = done.send(());
                return Wake::Closed;
            }
            other => refuse(other, error),
        }
        std::thread::sleep(Duration::from_millis(50));
        self.wait()
    }

    /// Write batches, index and sign checkpoints on `conn` with statements prepared
    /// once, starting with `wake`, until the database fails (false) or the writer is
    /// to end (true).
    fn serve(&mut self, conn: &Connection, mut wake: Wake) -> bool {
        let mut st = match Statements::prepare(conn) {
            Ok(st) => st,
            Err(e) => {
                refuse(wake, &e);
                return false;
            }
        };
        if !self.started {
            // First contact: open the journal where the index ends, index what it
            // holds past that, sign the head and witness the start.
            if let Err(e) = self.first_contact(conn, &mut st) {
                refuse(wake, &e);
                return false;
            }
        }
        loop {
            match wake {
                Wake::Closed => return true,
                Wake::Batch(jobs) => {
                    let appended = self.append(jobs);
                    // With no delay the events reach the table before their reads are
                    // answered (unless the table failed just before: then they wait in
                    // the journal for its retry, like any other).
                    let mut ok = true;
                    if self.journaling.index_delay.is_zero() && !self.index_failing {
                        ok = self.index(conn, &mut st);
                    }
                    answer(appended);
                    // Otherwise after the delay, when no batch waits for the journal, or
                    // at once when many events wait.
                    let due = self.pending.len() >= INDEX_BATCH && !self.index_failing
                        || self.q.jobs.is_empty() && self.index_due();
                    if !ok || due && !self.index(conn, &mut st) {
                        return false;
                    }
                }
                Wake::Index => {
                    if !self.index(conn, &mut st) {
                        return false;
                    }
                }
                Wake::Settle(done) => {
                    let ok = self.index(conn, &mut st);
                    let _ = done.send(());
                    if !ok {
                        return false;
                    }
                }
                Wake::Tick => {
                    if !self.index(conn, &mut st) {
                        return false;
                    }
                    match self.in_turn(conn, || st.checkpoint_head(&self.cp.signer, false)) {
                        Ok(Some((seq, hash))) => self.cp.witness(WitnessKind::Checkpoint, seq, &hash),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "periodic audit checkpoint failed; retrying at the next tick");
                            return false;
                        }
                    }
                }
                Wake::Stop(done) => {
                    // Whatever was queued before the stop, indexed, then the head, signed.
                    let queued: Vec<Job> = self.q.jobs.try_iter().collect();
                    if !queued.is_empty() {
                        self.append_and_answer(queued);
                    }
                    if self.index(conn, &mut st) {
                        match self.in_turn(conn, || st.checkpoint_head(&self.cp.signer, true)) {
                            Ok(head) => {
                                let (seq, hash) = head.unwrap_or((0, GENESIS.to_vec()));
                                self.cp.witness(WitnessKind::Shutdown, seq, &hash);
                            }
                            Err(e) => tracing::warn!(error = %e, "the chain head could not be signed at shutdown"),
                        }
                    } else {
                        tracing::warn!(
                            events = self.pending.len(),
                            "stopping with audit events in the journal not yet indexed; the next start indexes them"
                        );
                    }
                    let _ = done.send(());
                    return true;
                }
            }
            wake = self.wait();
        }
    }

    /// Open the journal at the index's head (once) and index what it holds past it;
    /// then sign the head and witness the start.
    fn first_contact(&mut self, conn: &Connection, st: &mut Statements<'_>) -> Result<(), String> {
        if self.journal.is_none() {
            let head = self.in_turn(conn, || st.head()).map_err(|e| e.to_string())?;
            let (seq, hash) = head.unwrap_or((0, GENESIS.to_vec()));
            let mut at = [0u8; 32];
            if hash.len() == 32 {
                at.copy_from_slice(&hash);
            }
            let (journal, replay) = open_journal(&journal_dir(&self.file), self.journaling.segment_bytes, (seq, at))
                .map_err(|e| e.to_string())?;
            if !replay.is_empty() {
                tracing::info!(
                    events = replay.len(),
                    from = replay[0].seq,
                    "indexing audit events found in the journal"
                );
            }
            self.pending = replay.into_iter().map(Pending::replayed).collect::<Result<_, _>>()?;
            self.journal = Some(journal);
        }
        if !self.index(conn, st) {
            return Err("the journal's events could not be indexed".into());
        }
        let head = self.in_turn(conn, || st.checkpoint_head(&self.cp.signer, true)).map_err(|e| e.to_string())?;
        let (seq, hash) = head.unwrap_or((0, GENESIS.to_vec()));
        self.cp.witness(WitnessKind::Start, seq, &hash);
        self.started = true;
        Ok(())
    }

    /// Append a batch to the journal and answer it: committed when the journal's flush
    /// succeeded, refused otherwise.
    fn append_and_answer(&mut self, jobs: Vec<Job>) {
        answer(self.append(jobs));
    }

    /// Append a batch to the journal and flush it; its events move to the pending
    /// list (offered to the forwarder) and their replies are returned, each with its
    /// sequence number, for the caller to answer. A batch that cannot be appended is
    /// refused here.
    fn append(&mut self, jobs: Vec<Job>) -> Vec<Reply> {
        let began = Instant::now();
        let Some(journal) = self.journal.as_mut() else {
            Job::failed(jobs, &"the audit journal is not open");
            return Vec::new();
        };
        if self.pending.len() >= MAX_PENDING {
            Job::failed(jobs, &"the audit index is not keeping up with the journal");
            return Vec::new();
        }
        let entries: Vec<&[u8]> = jobs.iter().map(|j| j.prepared.json.as_bytes()).collect();
        let appended = match journal.append(&entries) {
            Ok(appended) => appended,
            Err(e) => {
                Job::failed(jobs, &e);
                return Vec::new();
            }
        };
        self.stats.committed(jobs.len(), began);
        if self.pending.is_empty() {
            self.index_at = Some(Instant::now() + self.journaling.index_delay);
        }
        let mut replies = Vec::with_capacity(jobs.len());
        for (job, (seq, prev, hash)) in jobs.into_iter().zip(appended) {
            let Job { prepared, reply } = job;
            if let Some(f) = &self.forward {
                f.offer(seq, prepared.json.clone());
            }
            self.pending.push(Pending { seq, prev, hash, json: prepared.json, cols: prepared.cols });
            replies.push((seq, reply));
        }
        replies
    }

    /// True when the pending events are due in the index.
    fn index_due(&self) -> bool {
        self.index_at.is_some_and(|t| t <= Instant::now())
    }

    /// Copy the pending events into the index (one transaction) and sign the
    /// checkpoints that fall in them; false when the database failed (the events stay
    /// pending, in the journal).
    fn index(&mut self, conn: &Connection, st: &mut Statements<'_>) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.in_turn(conn, || st.insert(&self.cp, &pending));
        match result {
            Ok(signed) => {
                if self.index_failing {
                    tracing::info!("the audit index is written again");
                    self.index_failing = false;
                }
                self.cp.witness_signed(&signed);
                if let (Some(j), Some(last)) = (self.journal.as_mut(), pending.last()) {
                    j.indexed(last.seq);
                }
                self.index_at = None;
                true
            }
            Err(e) => {
                if !self.index_failing {
                    tracing::error!(error = %e, events = pending.len(), "the audit index cannot be written; the events are kept in the journal");
                    if let IndexError::Foreign { found, hash, .. } = &e {
                        self.cp.witness(WitnessKind::Foreign, *found, hash);
                    }
                    self.index_failing = true;
                }
                self.pending = pending;
                // Tried again after a pause, not at every wake: batches still go to
                // the journal meanwhile.
                self.index_at = Some(Instant::now() + INDEX_RETRY);
                matches!(e, IndexError::Foreign { .. })
            }
        }
    }

    /// Run `f` in a transaction holding the store's write gate.
    fn in_turn<T, E: From<rusqlite::Error>>(
        &self,
        conn: &Connection,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let _gate = self.gate.blocking_lock();
        in_tx(conn, f)
    }

    /// The next batch (every job already queued, up to [`MAX_BATCH`]), a request to
    /// settle, the index when pending events are due, the periodic checkpoint when it
    /// is due first, or the stop request.
    fn wait(&mut self) -> Wake {
        loop {
            let now = Instant::now();
            if now >= self.next_tick {
                self.next_tick = now + self.cp.interval;
                return Wake::Tick;
            }
            let mut until = self.next_tick;
            if let Some(due) = self.index_at.filter(|_| !self.pending.is_empty()) {
                if due <= now {
                    return Wake::Index;
                }
                until = until.min(due);
            }
            let got = flume::Selector::new()
                .recv(&self.q.stop, |r| r.map(Wake::Stop).unwrap_or(Wake::Closed))
                .recv(&self.q.settle, |r| r.map(Wake::Settle).unwrap_or(Wake::Closed))
                .recv(&self.q.jobs, |r| match r {
                    Ok(first) => {
                        let mut batch = Vec::with_capacity(self.q.jobs.len().min(MAX_BATCH) + 1);
                        batch.push(first);
                        batch.extend(self.q.jobs.try_iter().take(MAX_BATCH - 1));
                        Wake::Batch(batch)
                    }
                    Err(_) => Wake::Closed,
                })
                .wait_timeout(until - now);
            if let Ok(w) = got {
                return w;
            }
        }
    }
}

/// Open the journal, waiting up to a second for a writer that is ending (a restart
/// in the same process, or a gateway finishing its shutdown) to let it go; a gateway
/// still running keeps it, and this one refuses reads.
fn open_journal(
    dir: &Path,
    segment_bytes: u64,
    head: (i64, [u8; 32]),
) -> Result<(Journal, Vec<Record>), super::journal::JournalError> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match Journal::open(dir, segment_bytes, head) {
            Err(super::journal::JournalError::Busy(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other,
        }
    }
}

/// A request waiting for its event's durability, and the sequence number it got.
type Reply = (i64, tokio::sync::oneshot::Sender<Result<i64, super::AuditError>>);

/// Answer requests whose events are durable.
fn answer(replies: Vec<Reply>) {
    for (seq, reply) in replies {
        let _ = reply.send(Ok(seq));
    }
}

/// Answer a wake that could not be served: its requests are refused.
fn refuse(wake: Wake, error: &dyn std::fmt::Display) {
    match wake {
        Wake::Batch(jobs) => Job::failed(jobs, error),
        Wake::Tick | Wake::Index => {
            tracing::warn!(error = %error, "the audit index or checkpoint could not be written; retrying")
        }
        Wake::Settle(done) => {
            let _ = done.send(());
        }
        Wake::Stop(done) => {
            tracing::warn!(error = %error, "the chain head could not be signed at shutdown");
            let _ = done.send(());
        }
        Wake::Closed => {}
    }
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
fn in_tx<T, E: From<rusqlite::Error>>(conn: &Connection, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f().and_then(|v| conn.execute_batch("COMMIT").map(|()| v).map_err(E::from)) {
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

    /// Insert journaled events (numbered and chained already) after the index's head,
    /// signing a checkpoint at each multiple of `cp.every`; returns the checkpoints
    /// signed.
    fn insert(&mut self, cp: &Checkpoints, events: &[Pending]) -> Result<Vec<(i64, Vec<u8>)>, IndexError> {
        let next = events.first().map_or(0, |e| e.seq);
        if let Some((found, hash)) = self.head()? {
            if found >= next {
                return Err(IndexError::Foreign { found, hash, next });
            }
        }
        let mut signed = Vec::new();
        for e in events {
            let c = &e.cols;
            self.insert.execute(params![
                e.seq,
                c.recorded,
                c.agent,
                c.owners,
                c.patients,
                c.outcome,
                c.subtype,
                c.cross,
                e.json,
                &e.prev[..],
                &e.hash[..],
                c.entities
            ])?;
            if e.seq % cp.every == 0 {
                self.sign(&cp.signer, e.seq, &e.hash)?;
                signed.push((e.seq, e.hash.to_vec()));
            }
        }
        Ok(signed)
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
        let log = start(&store, &signer, every, Duration::ZERO);
        (dir, store, log, signer)
    }

    /// A log on `store` signing every `every` events, indexing `delay` after appending.
    fn start(store: &Store, signer: &Arc<Signer>, every: i64, delay: Duration) -> AuditLog {
        let cp = Checkpoints { signer: signer.clone(), every, interval: Duration::from_secs(3600), witness: None };
        let journaling = crate::audit::Journaling { index_delay: delay, segment_bytes: 1 << 20 };
        AuditLog::start_with(store.clone(), "test".into(), cp, None, journaling)
    }

    async fn indexed(store: &Store) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_event").fetch_one(store.pool()).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answered_events_wait_in_the_journal_and_a_new_writer_indexes_what_the_last_left() {
        let (dir, store, first, signer) = log_in_temp_dir("lag", 100).await;
        drop(first);
        // An index delay longer than the test: events are answered from the journal.
        let log = start(&store, &signer, 100, Duration::from_secs(3600));
        for i in 0..10 {
            assert_eq!(log.record(record(i)).await.unwrap(), i as i64 + 1);
        }
        assert_eq!(indexed(&store).await, 0, "answered before they are in the table");
        log.settle().await;
        assert_eq!(indexed(&store).await, 10, "settled: all in the table");
        for i in 10..25 {
            log.record(record(i)).await.unwrap();
        }
        // The writer ends without a stop (its handles dropped, as a killed process's
        // thread ends): 15 events in the journal only.
        drop(log);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(indexed(&store).await, 10);
        let log = start(&store, &signer, 100, Duration::from_secs(3600));
        assert_eq!(log.record(record(25)).await.unwrap(), 26, "the chain goes on after the journal's events");
        log.settle().await;
        assert_eq!(indexed(&store).await, 26, "the new writer indexed what the last one left");
        let report = crate::audit::verify::verify(&store, &TrustedKeys::new([signer.public_key()]), 100).await.unwrap();
        assert_eq!((report.first, report.last), (1, 26));
        let _ = std::fs::remove_dir_all(dir);
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
        let (dir, store, first, signer) = log_in_temp_dir("upgrade", 100).await;
        // The store as a gateway before entries left it: not written to while one runs.
        drop(first);
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
        let log = start(&store, &signer, 100, Duration::ZERO);
        for i in 1..=3 {
            assert_eq!(log.record(record(i)).await.unwrap(), i as i64 + 1, "appended after the rendered event");
        }
        log.settle().await;
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
        log.settle().await;
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
        // In the table, not only in the journal: a verify of an empty table is an error.
        log.settle().await;
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
        log.settle().await;
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
