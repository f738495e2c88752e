//! Exporting the audit log with its hashes, as NDJSON (one AuditEvent per line with
//! `seq`, `hash`, `prev_hash`) or CSV (one row per event, key columns plus the event).
//! Rows are read in pages and written as they come, so memory stays flat.

use crate::store::Store;
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
            "seq,recorded,agent_institution,owners,patients,outcome,subtype,cross_site,prev_hash,hash,event"
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
            let prev = hex(&r.try_get::<Vec<u8>, _>(8)?);
            let hash = hex(&r.try_get::<Vec<u8>, _>(9)?);
            match format {
                Format::Ndjson => {
                    let ev: serde_json::Value =
                        serde_json::from_str(&event).unwrap_or(serde_json::Value::String(event.clone()));
                    let line = serde_json::json!({ "seq": seq, "prev_hash": prev, "hash": hash, "event": ev });
                    writeln!(out, "{line}")?;
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
