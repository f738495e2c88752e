//! Exporting the audit log with its hashes, as NDJSON (one line per event: `seq`,
//! `prev_hash`, `hash`, the stored `entry` exactly as hashed, and the FHIR AuditEvent
//! rendered from it as `event`) or CSV (one row per event, key columns, entry and
//! event). Anyone holding an export can recompute the chain from `seq`, `prev_hash`
//! and `entry`. Rows are read in pages and written as they come, so memory stays flat.

use super::event::{render_stored, StoredEventError};
use crate::store::Store;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::Row;
use std::io::Write;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Newline-delimited JSON.
    Ndjson,
    /// RFC 4180 CSV with a header row.
    Csv,
}

/// Export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database could not be read.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The output could not be written.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    /// A stored event could not be rendered.
    #[error("{0}")]
    Event(#[from] StoredEventError),
    /// A line could not be written as JSON.
    #[error("rendering: {0}")]
    Json(#[from] serde_json::Error),
}

/// One NDJSON line.
#[derive(Serialize)]
struct Line<'a> {
    seq: i64,
    prev_hash: &'a str,
    hash: &'a str,
    entry: &'a str,
    event: &'a RawValue,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Write events recorded in [from, to) (Unix microseconds) to `out`; returns the count.
pub async fn export(
    store: &Store,
    format: Format,
    from: i64,
    to: i64,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    if format == Format::Csv {
        writeln!(
            out,
            "seq,recorded,agent_institution,owners,patients,outcome,subtype,cross_site,prev_hash,hash,entry,event"
        )?;
    }
    let mut after = 0i64;
    let mut n = 0u64;
    loop {
        let rows = sqlx::query(
            "SELECT seq, recorded, agent_institution, owners, patients, outcome, subtype, cross_site, prev_hash, hash, event \
             FROM audit_event WHERE seq > $1 AND recorded >= $2 AND recorded < $3 ORDER BY seq LIMIT 5000",
        )
        .bind(after)
        .bind(from)
        .bind(to)
        .fetch_all(store.pool())
        .await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let seq: i64 = r.try_get(0)?;
            let event: String = r.try_get(10)?;
            let rendered = render_stored(seq, &event)?;
            let prev = hex(&r.try_get::<Vec<u8>, _>(8)?);
            let hash = hex(&r.try_get::<Vec<u8>, _>(9)?);
            match format {
                Format::Ndjson => {
                    let line = Line { seq, prev_hash: &prev, hash: &hash, entry: &event, event: &rendered };
                    serde_json::to_writer(&mut *out, &line)?;
                    writeln!(out)?;
                }
                Format::Csv => {
                    let recorded: i64 = r.try_get(1)?;
                    let recorded = crate::instant::from_micros(recorded).unwrap_or_default();
                    let trim = |s: String| s.trim_matches(',').replace(',', ";");
                    let fields = [
                        seq.to_string(),
                        recorded,
                        r.try_get::<String, _>(2)?,
                        trim(r.try_get(3)?),
                        trim(r.try_get(4)?),
                        r.try_get::<String, _>(5)?,
                        r.try_get::<String, _>(6)?,
                        r.try_get::<i64, _>(7)?.to_string(),
                        prev,
                        hash,
                        event,
                        rendered.get().to_string(),
                    ];
                    writeln!(out, "{}", fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","))?;
                }
            }
            after = seq;
            n += 1;
        }
    }
    out.flush()?;
    Ok(n)
}
