//! Verifying the audit log: re-walk the chain from the start (or from the signed
//! anchor left by pruning), recompute every hash, check that the columns auditors query
//! by say what each hashed entry says, require a valid checkpoint at every
//! multiple of `checkpoint_every`, and check every checkpoint's signature and the
//! order of the keys that signed them. With witness files ([`super::witness`]) the
//! database is also held to what was recorded outside it: every witnessed head must be
//! there with the same hash, the chain may start only at a witnessed pruning anchor,
//! and nothing may be appended while the gateway was stopped. The first problem is
//! reported with its sequence number. Nothing verification relies on is read from the
//! database it checks: the interval and keys come from the configuration, the rest
//! from signatures. Pruning lives here too, because it must leave exactly what
//! verification starts from.

use super::checkpoint::TrustedKeys;
use super::event::Entry;
use super::log::{chain_hash, Columns, GENESIS};
use super::witness::{self, Kind as WitnessKind};
use crate::store::{Backend, Store};
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What verification trusts: all from outside the database being verified.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The public keys, oldest first (retired keys, then the current one).
    pub keys: TrustedKeys,
    /// A signed checkpoint must exist at every multiple of this sequence number.
    pub every: i64,
    /// Witness files, each with its records (see [`read_witnesses`]).
    pub witnesses: Vec<(PathBuf, Vec<witness::Record>)>,
    /// Whether an empty log (no events, no anchor) passes.
    pub allow_empty: bool,
}

impl Trust {
    /// Trust `keys` and the interval `every`, with no witness; an empty log fails.
    pub fn new(keys: TrustedKeys, every: i64) -> Trust {
        Trust { keys, every, witnesses: Vec::new(), allow_empty: false }
    }
}

/// Read witness files for [`Trust::witnesses`].
pub fn read_witnesses(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<witness::Record>)>, VerifyError> {
    paths.iter().map(|p| Ok((p.clone(), witness::read(p)?))).collect()
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Events checked.
    pub events: u64,
    /// Checkpoints whose signature was checked.
    pub checkpoints: u64,
    /// First sequence number checked (after the anchor, if any).
    pub first: i64,
    /// Last sequence number checked.
    pub last: i64,
    /// Events after the last signed checkpoint or witnessed head: chained, but not yet
    /// anchored by a signature, so not proven.
    pub unsigned_tail: u64,
    /// Witness records checked.
    pub witness_records: u64,
    /// The newest sequence number a witness recorded (0 when none).
    pub witnessed_up_to: i64,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The database could not be read.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The SQLite log could not be read.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The thread reading the SQLite log failed.
    #[error("reading the log: {0}")]
    Thread(String),
    /// The database file fails SQLite's integrity check.
    #[error("the database file is damaged (its indexes or pages disagree with its tables): {0}")]
    Damaged(String),
    /// The log has no events at all.
    #[error("the audit log is empty (no events and no pruning anchor); pass --allow-empty if that is expected")]
    Empty,
    /// A witness file could not be read, or a line of it is not a witness record.
    #[error(transparent)]
    Witness(#[from] witness::WitnessError),
    /// A witness line's signature does not hold.
    #[error("witness {path} line {line}: {why}")]
    WitnessForged {
        /// The file.
        path: String,
        /// 1-based record number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The log is not what the gateway wrote.
    #[error("audit log broken at sequence {seq}: {reason}")]
    Broken {
        /// First bad sequence number.
        seq: i64,
        /// What is wrong there.
        reason: String,
    },
}

fn broken(seq: i64, reason: impl Into<String>) -> VerifyError {
    VerifyError::Broken { seq, reason: reason.into() }
}

struct Cp {
    hash: Vec<u8>,
    signed_at: i64,
    key_id: String,
    signature: Vec<u8>,
}

impl Cp {
    /// Why this signature is not acceptable, if it is not.
    fn refused(&self, seq: i64, keys: &TrustedKeys) -> Option<String> {
        if !keys.knows(&self.key_id) {
            return Some(format!("signed by key {}, which is not among the trusted keys", self.key_id));
        }
        (!keys.verify(&self.key_id, seq, &self.hash, self.signed_at, &self.signature))
            .then(|| "the signature is forged or does not match its key".to_string())
    }
}

/// The newest sequence number stored, or 0.
async fn stored_head(store: &Store) -> Result<i64, VerifyError> {
    Ok(sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_event").fetch_one(store.pool()).await?)
}

fn when(at: i64) -> String {
    crate::instant::from_secs(at).unwrap_or_else(|| at.to_string())
}

/// A witnessed head: what the database must hold at its sequence number.
struct Witnessed {
    hash: Vec<u8>,
    at: i64,
    kind: WitnessKind,
}

/// What the witness files say, checked for signatures and internal consistency.
#[derive(Default)]
struct WitnessView {
    heads: BTreeMap<i64, Witnessed>,
    /// The newest pruning anchor recorded (seq, hash, time).
    prune: Option<(i64, Vec<u8>, i64)>,
    records: u64,
}

impl WitnessView {
    /// Check every witness line, then the lifecycle of a single-writer (SQLite) log:
    /// between a clean shutdown and the next start the head must not move, and after
    /// a final shutdown the database may hold nothing newer.
    fn build(trust: &Trust, single_writer: bool, head: i64) -> Result<WitnessView, VerifyError> {
        let mut v = WitnessView::default();
        for (path, records) in &trust.witnesses {
            let p = path.display().to_string();
            let forged = |line: usize, why: String| VerifyError::WitnessForged { path: p.clone(), line, why };
            let mut newest_rank = 0usize;
            let mut stopped: Option<&witness::Record> = None;
            for (i, r) in records.iter().enumerate() {
                if let Some(why) = r.refused(&trust.keys) {
                    return Err(forged(i + 1, why));
                }
                let rank = trust.keys.rank(&r.key_id).unwrap_or(0);
                if rank < newest_rank {
                    return Err(forged(
                        i + 1,
                        format!("signed by retired key {} after a newer key had signed", r.key_id),
                    ));
                }
                newest_rank = rank;
                let hash = r.hash_bytes().unwrap_or_default();
                v.records += 1;
                match r.kind {
                    WitnessKind::Foreign => {
                        return Err(broken(
                            r.seq,
                            format!(
                                "events up to {} were appended behind the gateway's writer (witnessed {})",
                                r.seq,
                                when(r.at)
                            ),
                        ))
                    }
                    WitnessKind::Prune => {
                        if v.prune.as_ref().is_none_or(|(s, _, _)| *s <= r.seq) {
                            v.prune = Some((r.seq, hash.clone(), r.at));
                        }
                        continue;
                    }
                    WitnessKind::Start if single_writer => {
                        if let Some(s) = stopped.take() {
                            if r.seq != s.seq || r.hash != s.hash {
                                return Err(broken(
                                    s.seq + 1,
                                    format!(
                                        "the head moved from {} to {} while the gateway was stopped (clean shutdown {}, next start {}): events were added or removed outside it",
                                        s.seq, r.seq, when(s.at), when(r.at)
                                    ),
                                ));
                            }
                        }
                    }
                    WitnessKind::Shutdown if single_writer => stopped = Some(r),
                    _ => {}
                }
                if r.seq > 0 {
                    v.heads.insert(r.seq, Witnessed { hash, at: r.at, kind: r.kind });
                }
            }
            if let Some(s) = stopped {
                if head > s.seq {
                    return Err(broken(
                        s.seq + 1,
                        format!(
                            "events {}..{} were appended after the gateway's clean shutdown at {} ({}), with no start since",
                            s.seq + 1,
                            head,
                            s.seq,
                            when(s.at)
                        ),
                    ));
                }
            }
        }
        Ok(v)
    }
}

/// SQLite's own integrity check of the whole database file (every index against its
/// table): slow on a large log (it reads everything), so `audit verify --integrity`
/// asks for it. An index edited to disagree with its table would hide events from
/// auditors' filtered queries while the chain itself still verifies. PostgreSQL keeps
/// its indexes consistent itself.
pub async fn integrity(store: &Store) -> Result<(), VerifyError> {
    let Some((file, _)) = store.sqlite_writer_parts() else { return Ok(()) };
    let problems = tokio::task::spawn_blocking(move || -> Result<Vec<String>, rusqlite::Error> {
        let c = open_sqlite(&file)?;
        let mut st = c.prepare("PRAGMA integrity_check(20)")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })
    .await
    .map_err(|e| VerifyError::Thread(e.to_string()))??;
    if problems.len() == 1 && problems[0] == "ok" {
        Ok(())
    } else {
        Err(VerifyError::Damaged(problems.join("; ")))
    }
}

/// Verify the whole log with the trusted public keys and interval, up to the head it
/// has when verification starts: a running gateway goes on appending, and the
/// checkpoints it signs meanwhile must not look missing.
pub async fn verify(store: &Store, keys: &TrustedKeys, every: i64) -> Result<Report, VerifyError> {
    verify_with(store, &Trust::new(keys.clone(), every)).await
}

/// Verify the log against `trust` (keys, interval, witnesses).
pub async fn verify_with(store: &Store, trust: &Trust) -> Result<Report, VerifyError> {
    let every = trust.every.max(1);
    let keys = &trust.keys;
    // The head first, then the checkpoints: a checkpoint due at or below the head was
    // committed in the same transaction as its event, so it is among those read (the
    // periodic ones signed later at other heads are not required).
    let head = stored_head(store).await?;
    let mut checkpoints: BTreeMap<i64, Cp> = BTreeMap::new();
    for r in sqlx::query("SELECT seq, hash, signed_at, key_id, signature FROM audit_checkpoint")
        .fetch_all(store.pool())
        .await?
    {
        let cp = Cp { hash: r.try_get(1)?, signed_at: r.try_get(2)?, key_id: r.try_get(3)?, signature: r.try_get(4)? };
        checkpoints.insert(r.try_get(0)?, cp);
    }
    let witnessed = WitnessView::build(trust, store.backend() == Backend::Sqlite, head)?;
    let witnessed_up_to = witnessed.heads.keys().next_back().copied().unwrap_or(0);
    let anchor = match sqlx::query("SELECT seq, hash, signed_at, key_id, signature FROM audit_anchor WHERE id = 1")
        .fetch_optional(store.pool())
        .await?
    {
        Some(r) => {
            let seq: i64 = r.try_get(0)?;
            let a =
                Cp { hash: r.try_get(1)?, signed_at: r.try_get(2)?, key_id: r.try_get(3)?, signature: r.try_get(4)? };
            if let Some(why) = a.refused(seq, keys) {
                return Err(broken(seq, format!("the pruning anchor: {why}")));
            }
            Some((seq, a))
        }
        None => None,
    };
    if head == 0 && anchor.is_none() {
        if witnessed_up_to > 0 {
            return Err(broken(
                1,
                format!("the log is empty but the witness records events up to {witnessed_up_to}: it was deleted or emptied"),
            ));
        }
        if !trust.allow_empty {
            return Err(VerifyError::Empty);
        }
    }
    // Where the chain may start: at 1, or after a pruning anchor; with a witness, only
    // after the anchor it recorded (otherwise "pruning" is a way to delete history).
    if !trust.witnesses.is_empty() {
        match (&anchor, &witnessed.prune) {
            (None, None) => {}
            (Some((seq, _)), None) => {
                return Err(broken(
                    1,
                    format!("events 1..{seq} were removed: the log starts after an anchor at {seq} that no witness records as pruned"),
                ))
            }
            (None, Some((p, _, at))) => {
                return Err(broken(1, format!("the witness records pruning up to {p} ({}), but the database has no anchor", when(*at))))
            }
            (Some((seq, a)), Some((p, hash, at))) => {
                if seq != p || a.hash != *hash {
                    return Err(broken(
                        (*seq).min(*p) + 1,
                        format!("the log starts after an anchor at {seq}, but the witness records pruning up to {p} ({})", when(*at)),
                    ));
                }
            }
        }
    }
    let (mut expect, mut prev) = match &anchor {
        Some((seq, a)) => (seq + 1, a.hash.clone()),
        None => (1, GENESIS.to_vec()),
    };
    // Once a newer key has signed, an older (retired) one may sign nothing later.
    let mut newest_rank = anchor.as_ref().and_then(|(_, a)| keys.rank(&a.key_id)).unwrap_or(0);
    let mut newest_signer: Option<(i64, String)> = None;
    let first = expect;
    // Rows below the chain's start (a seq of 0 or less, or under the pruning anchor)
    // are on no chain: the walk would pass them by while auditors were shown them.
    let outside: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM audit_event WHERE seq < $1")
        .bind(first)
        .fetch_one(store.pool())
        .await?;
    if let Some(seq) = outside {
        return Err(broken(
            seq,
            format!(
                "an event stored outside the chain (before its start at {first}): inserted, not written by the gateway"
            ),
        ));
    }
    let mut events = 0u64;
    let mut checked = 0u64;
    let mut last_anchored = expect - 1;
    const PAGE: i64 = 10_000;
    let mut pages = Pages::of(store);
    while expect <= head {
        let rows = pages.next(expect, head, PAGE).await?;
        if rows.is_empty() {
            return Err(broken(expect, format!("event missing (removed while being verified; the head was {head})")));
        }
        for r in rows {
            let seq = r.seq;
            if seq != expect {
                return Err(broken(expect, format!("event missing (the next stored event is {seq})")));
            }
            if r.prev != prev {
                return Err(broken(seq, "does not link to the previous event (inserted, removed or reordered)"));
            }
            let h = chain_hash(seq, &prev, r.event.as_bytes());
            if h.as_slice() != r.hash.as_slice() {
                return Err(broken(seq, "content does not match its hash (modified)"));
            }
            if !columns_agree(&r)? {
                return Err(broken(seq, "its query columns do not say what its hashed entry says (modified)"));
            }
            match checkpoints.get(&seq) {
                Some(cp) => {
                    if cp.hash != r.hash {
                        return Err(broken(seq, "the checkpoint here signs a different chain"));
                    }
                    if let Some(why) = cp.refused(seq, keys) {
                        return Err(broken(seq, format!("checkpoint: {why}")));
                    }
                    let rank = keys.rank(&cp.key_id).unwrap_or(0);
                    if rank < newest_rank {
                        let (at, by) = newest_signer.clone().unwrap_or_default();
                        return Err(broken(
                            seq,
                            format!(
                                "checkpoint signed by retired key {} after its successor {by} had signed at {at}",
                                cp.key_id
                            ),
                        ));
                    }
                    if rank > newest_rank || newest_signer.is_none() {
                        newest_signer = Some((seq, cp.key_id.clone()));
                    }
                    newest_rank = rank;
                    checked += 1;
                    last_anchored = seq;
                }
                None if seq % every == 0 => return Err(broken(seq, "the signed checkpoint due here is missing")),
                None => {}
            }
            if let Some(w) = witnessed.heads.get(&seq) {
                if w.hash != r.hash {
                    return Err(broken(
                        seq,
                        format!(
                            "does not match the witness ({} recorded {}): the chain was rewritten from here or earlier",
                            kind_name(w.kind),
                            when(w.at)
                        ),
                    ));
                }
                last_anchored = seq;
            }
            prev = r.hash;
            expect = seq + 1;
            events += 1;
        }
    }
    // A checkpoint or witnessed head beyond the last event means the events it signed
    // were removed. One past the head read at the start may sign an event appended
    // since: asking for the head again tells which.
    let beyond_cp = checkpoints.range(expect..).next().map(|(s, _)| *s);
    let beyond_w = witnessed.heads.range(expect..).next_back().map(|(s, w)| (*s, w.at));
    if beyond_cp.is_some() || beyond_w.is_some() {
        let now_head = stored_head(store).await?;
        if let Some((seq, at)) = beyond_w.filter(|(s, _)| *s > now_head) {
            return Err(broken(
                expect,
                format!("events up to {seq}, witnessed {}, are missing (removed from the end)", when(at)),
            ));
        }
        if let Some(seq) = beyond_cp.filter(|s| *s > now_head) {
            return Err(broken(
                expect,
                format!("events up to the checkpoint at {seq} are missing (removed from the end)"),
            ));
        }
    }
    Ok(Report {
        events,
        checkpoints: checked,
        first,
        last: expect - 1,
        unsigned_tail: (expect - 1 - last_anchored).max(0) as u64,
        witness_records: witnessed.records,
        witnessed_up_to,
    })
}

fn kind_name(k: WitnessKind) -> &'static str {
    match k {
        WitnessKind::Checkpoint => "a checkpoint",
        WitnessKind::Start => "a start",
        WitnessKind::Shutdown => "a clean shutdown",
        WitnessKind::Prune => "a prune",
        WitnessKind::Foreign => "a foreign append",
    }
}

/// One stored event as verification reads it.
struct StoredRow {
    seq: i64,
    event: String,
    prev: Vec<u8>,
    hash: Vec<u8>,
    recorded: i64,
    agent: String,
    owners: String,
    patients: String,
    outcome: String,
    subtype: String,
    cross: i64,
    entities: String,
}

/// A [`StoredRow`] from the columns of [`EVENTS_SQL`], read with `$r.$get(index)?`
/// (sqlx and rusqlite name their getters differently).
macro_rules! stored_row {
    ($r:expr, $get:ident) => {
        StoredRow {
            seq: $r.$get(0)?,
            event: $r.$get(1)?,
            prev: $r.$get(2)?,
            hash: $r.$get(3)?,
            recorded: $r.$get(4)?,
            agent: $r.$get(5)?,
            owners: $r.$get(6)?,
            patients: $r.$get(7)?,
            outcome: $r.$get(8)?,
            subtype: $r.$get(9)?,
            cross: $r.$get(10)?,
            entities: $r.$get(11)?,
        }
    };
}

/// The first event in a range whose columns are not of the types the writers store.
const TYPE_SQL: &str = "SELECT MIN(seq) FROM audit_event WHERE seq >= ?1 AND seq <= ?2 AND (typeof(event) != 'text' \
     OR typeof(prev_hash) != 'blob' OR typeof(hash) != 'blob' OR typeof(recorded) != 'integer' \
     OR typeof(agent_institution) != 'text' OR typeof(owners) != 'text' OR typeof(patients) != 'text' \
     OR typeof(outcome) != 'text' OR typeof(subtype) != 'text' OR typeof(cross_site) != 'integer' OR typeof(entities) != 'text')";

const EVENTS_SQL: &str = "SELECT seq, event, prev_hash, hash, recorded, agent_institution, owners, patients, outcome, subtype, cross_site, entities FROM audit_event WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3";

/// The log read a page at a time. On SQLite natively, in a blocking thread, on one
/// connection kept from page to page: through sqlx every row crossed its SQLite
/// worker's channel and was converted twice, which took more CPU than verifying it.
enum Pages<'s> {
    Sqlite { file: Arc<Path>, conn: Option<rusqlite::Connection> },
    Pool(&'s Store),
}

impl<'s> Pages<'s> {
    fn of(store: &'s Store) -> Pages<'s> {
        match store.sqlite_writer_parts() {
            Some((file, _)) => Pages::Sqlite { file, conn: None },
            None => Pages::Pool(store),
        }
    }

    /// Up to `limit` events from sequence number `from` to `to`; a row whose columns do
    /// not hold the types the gateway writes is named by its sequence number.
    async fn next(&mut self, from: i64, to: i64, limit: i64) -> Result<Vec<StoredRow>, VerifyError> {
        match self.page(from, to, limit).await {
            Err(VerifyError::Sqlite(e))
                if matches!(
                    e,
                    rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..)
                ) =>
            {
                let Pages::Sqlite { file, .. } = self else { return Err(VerifyError::Sqlite(e)) };
                let c = open_sqlite(file)?;
                let seq: Option<i64> = c.query_row(TYPE_SQL, [from, to], |r| r.get(0)).map_err(VerifyError::Sqlite)?;
                Err(broken(seq.unwrap_or(from), format!("a column holds a value of the wrong type ({e}): modified")))
            }
            other => other,
        }
    }

    async fn page(&mut self, from: i64, to: i64, limit: i64) -> Result<Vec<StoredRow>, VerifyError> {
        match self {
            Pages::Sqlite { file, conn } => {
                let (file, open) = (file.clone(), conn.take());
                let (c, rows) = tokio::task::spawn_blocking(move || {
                    let c = match open {
                        Some(c) => c,
                        None => open_sqlite(&file)?,
                    };
                    let rows = sqlite_page(&c, from, to, limit)?;
                    Ok::<_, VerifyError>((c, rows))
                })
                .await
                .map_err(|e| VerifyError::Thread(e.to_string()))??;
                *conn = Some(c);
                Ok(rows)
            }
            Pages::Pool(store) => {
                let rows = sqlx::query(EVENTS_SQL).bind(from).bind(to).bind(limit).fetch_all(store.pool()).await?;
                let row = |r: &sqlx::any::AnyRow| -> Result<StoredRow, sqlx::Error> { Ok(stored_row!(r, try_get)) };
                Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
            }
        }
    }
}

fn open_sqlite(file: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    // Read and write without create: the log must already be there.
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(file, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn sqlite_page(conn: &rusqlite::Connection, from: i64, to: i64, limit: i64) -> Result<Vec<StoredRow>, rusqlite::Error> {
    let mut stmt = conn.prepare(EVENTS_SQL)?;
    let rows = stmt.query_map([from, to, limit], |r| Ok(stored_row!(r, get)))?;
    rows.collect()
}

/// Whether the columns auditors query by are those derived from the hashed entry:
/// they are not hashed themselves, so an edited agent or owner could otherwise hide an
/// event from the auditors it concerns. Events stored rendered (older logs) have
/// nothing to compare with.
fn columns_agree(r: &StoredRow) -> Result<bool, VerifyError> {
    let entry = match Entry::parse(r.seq, &r.event) {
        Ok(Some(entry)) => entry,
        Ok(None) => return Ok(true),
        Err(e) => return Err(broken(r.seq, e.why)),
    };
    let c = Columns::of(&entry);
    Ok(r.recorded == c.recorded
        && r.agent == c.agent
        && r.owners == c.owners
        && r.patients == c.patients
        && r.outcome == c.outcome
        && r.subtype == c.subtype
        && r.cross == c.cross
        && r.entities == c.entities)
}

/// Delete events recorded before `before_micros` up to the last checkpoint among them,
/// keeping that checkpoint as the signed anchor the remaining chain verifies from.
/// Returns the anchor (sequence number and hash), or None when nothing could be pruned.
pub async fn prune(store: &Store, before_micros: i64) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
    let mut tx = store.begin_write(crate::store::Lock::AuditChain).await?;
    let anchor = sqlx::query(
        "SELECT c.seq, c.hash, c.signed_at, c.key_id, c.signature FROM audit_checkpoint c \
         JOIN audit_event e ON e.seq = c.seq WHERE e.recorded < $1 ORDER BY c.seq DESC LIMIT 1",
    )
    .bind(before_micros)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(a) = anchor else { return Ok(None) };
    let seq: i64 = a.try_get(0)?;
    let hash: Vec<u8> = a.try_get(1)?;
    sqlx::query("DELETE FROM audit_anchor WHERE id = 1").execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO audit_anchor (id, seq, hash, signed_at, key_id, signature) VALUES (1, $1, $2, $3, $4, $5)",
    )
    .bind(seq)
    .bind(a.try_get::<Vec<u8>, _>(1)?)
    .bind(a.try_get::<i64, _>(2)?)
    .bind(a.try_get::<String, _>(3)?)
    .bind(a.try_get::<Vec<u8>, _>(4)?)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM audit_event WHERE seq <= $1").bind(seq).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM audit_checkpoint WHERE seq <= $1").bind(seq).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Some((seq, hash)))
}
