//! The outbox: events for other institutions (break-glass notices, pushed documents)
//! stored durably in the same database and delivered by a worker with retries.

use crate::store::Store;
use sqlx::Row;

/// Store one event for `destination`; returns its id.
pub async fn enqueue(
    store: &Store,
    kind: &str,
    destination: &str,
    payload: &serde_json::Value,
) -> Result<i64, sqlx::Error> {
    let now = crate::audit::now_micros() / 1_000_000;
    let mut tx = store.begin_row_write().await?;
    let row = sqlx::query(
        "INSERT INTO outbox (kind, destination, payload, created_at, state, attempts, next_attempt) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $5) RETURNING id",
    )
    .bind(kind)
    .bind(destination)
    .bind(payload.to_string())
    .bind(now)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let id = row.try_get(0)?;
    tx.commit().await?;
    Ok(id)
}

/// Events of a kind for a destination, oldest first (for owners reviewing notices).
pub async fn list(
    store: &Store,
    kind: &str,
    destination: &str,
) -> Result<Vec<(i64, serde_json::Value, String)>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, payload, state FROM outbox WHERE kind = $1 AND destination = $2 ORDER BY id")
        .bind(kind)
        .bind(destination)
        .fetch_all(store.pool())
        .await?;
    rows.into_iter()
        .map(|r| {
            let payload: String = r.try_get(1)?;
            Ok((r.try_get(0)?, serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null), r.try_get(2)?))
        })
        .collect()
}

/// Delivery state of one outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    /// pending, claimed, delivered.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// When delivered (Unix seconds).
    pub delivered_at: Option<i64>,
}

/// The delivery state of a pushed document.
pub async fn delivery_of(store: &Store, push_id: &str) -> Result<Option<DeliveryState>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT state, attempts, last_error, delivered_at FROM outbox WHERE kind = 'deliver' AND payload = $1",
    )
    .bind(serde_json::json!({ "push": push_id }).to_string())
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| {
        Ok(DeliveryState {
            state: r.try_get(0)?,
            attempts: r.try_get(1)?,
            last_error: r.try_get(2)?,
            delivered_at: r.try_get(3)?,
        })
    })
    .transpose()
}

fn now() -> i64 {
    crate::audit::now_micros() / 1_000_000
}

/// Deliveries due at `$1`: pending and past their next attempt, or claimed by an
/// instance whose claim lapsed. One predicate for the idle check and both claims.
macro_rules! due_deliveries {
    () => {
        "SELECT id FROM outbox WHERE kind = 'deliver' AND \
         ((state = 'pending' AND next_attempt <= $1) OR (state = 'claimed' AND claim_until < $1))"
    };
}

/// Claim up to `limit` due deliveries for `seconds`. Claims are atomic per row, so
/// several gateway instances never deliver the same row at once; a claim that lapses
/// (its instance died) is claimed again.
async fn claim(store: &Store, limit: i64, seconds: i64) -> Result<Vec<(i64, String, String)>, sqlx::Error> {
    let t = now();
    // Most polls find nothing due: ask first with a read, so that an idle gateway takes
    // no write turn every poll (on SQLite such turns, every 100 ms in the tests, starved
    // another process's writer whose busy retries fell in step with them).
    let due: Option<i64> =
        sqlx::query_scalar(concat!(due_deliveries!(), " LIMIT 1")).bind(t).fetch_optional(store.pool()).await?;
    if due.is_none() {
        return Ok(Vec::new());
    }
    macro_rules! claim_due {
        ($lock:literal) => {
            concat!(
                "UPDATE outbox SET state = 'claimed', claim_until = $2, attempts = attempts + 1 WHERE id IN (",
                due_deliveries!(),
                " ORDER BY id LIMIT $3",
                $lock,
                ") RETURNING id, destination, payload"
            )
        };
    }
    let sql = match store.backend() {
        // Instances claiming at once skip each other's rows instead of waiting on them.
        crate::store::Backend::Postgres => claim_due!(" FOR UPDATE SKIP LOCKED"),
        // One writer at a time already.
        crate::store::Backend::Sqlite => claim_due!(""),
    };
    let mut tx = store.begin_row_write().await?;
    let rows = sqlx::query(sql).bind(t).bind(t + seconds).bind(limit).fetch_all(&mut *tx).await?;
    let claimed = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    tx.commit().await?;
    Ok(claimed)
}

async fn finish(store: &Store, id: i64, result: Result<(), String>, attempts_backoff: bool) -> Result<(), sqlx::Error> {
    let mut tx = store.begin_row_write().await?;
    match result {
        Ok(()) => {
            sqlx::query("UPDATE outbox SET state = 'delivered', delivered_at = $1, last_error = NULL WHERE id = $2")
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        Err(e) => {
            let attempts: i64 =
                sqlx::query_scalar("SELECT attempts FROM outbox WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
            let wait = if attempts_backoff { (1i64 << attempts.clamp(0, 8)).min(300) } else { 1 };
            sqlx::query("UPDATE outbox SET state = 'pending', next_attempt = $1, last_error = $2 WHERE id = $3")
                .bind(now() + wait)
                .bind(e)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}

/// Write a file atomically and durably: temp file, fsync, rename, fsync the directory.
fn write_durably(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Deliver one pushed document to its recipient's inbox in the inbox's format. The
/// file is named after the push, so a repeated delivery replaces, never duplicates.
async fn deliver(
    store: &Store,
    config: &crate::config::Config,
    destination: &str,
    payload: &str,
) -> Result<(), String> {
    let push_id = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["push"].as_str().map(str::to_string))
        .ok_or("malformed delivery payload")?;
    let inbox =
        config.inbox_of(destination).ok_or_else(|| format!("institution {destination} has no delivery inbox"))?;
    let bundle: String = sqlx::query_scalar("SELECT bundle FROM pushed_document WHERE id = $1")
        .bind(&push_id)
        .fetch_one(store.pool())
        .await
        .map_err(|e| format!("pushed document {push_id}: {e}"))?;
    let resource: kakehashi_fhir::Resource =
        serde_json::from_str(&bundle).map_err(|e| format!("stored document unreadable: {e}"))?;
    let kakehashi_fhir::Resource::Bundle(b) = resource else { return Err("stored document is not a Bundle".into()) };
    let view = kakehashi_mappings::document::DocumentView::new(&b).map_err(|e| e.to_string())?;
    let (name, bytes) = match inbox.format {
        crate::config::InboxFormat::Mml => {
            (format!("{push_id}.xml"), kakehashi_mappings::export::mml::to_mml(&view).into_bytes())
        }
        crate::config::InboxFormat::Cda => {
            (format!("{push_id}.xml"), kakehashi_mappings::export::cda::to_cda(&view).into_bytes())
        }
        crate::config::InboxFormat::Fhir => (format!("{push_id}.json"), bundle.into_bytes()),
    };
    let dir = inbox.dir.clone();
    tokio::task::spawn_blocking(move || write_durably(&dir, &name, &bytes)).await.map_err(|e| e.to_string())?
}

/// The delivery worker: poll, claim, deliver, record; forever.
pub async fn run(store: Store, config: std::sync::Arc<crate::config::Config>) {
    let every = std::time::Duration::from_millis(config.server.outbox_poll_ms.max(50));
    loop {
        tokio::time::sleep(every).await;
        let claimed = match claim(&store, 16, 60).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "outbox unavailable; retrying");
                continue;
            }
        };
        for (id, destination, payload) in claimed {
            let result = deliver(&store, &config, &destination, &payload).await;
            if let Err(e) = &result {
                tracing::warn!(outbox = id, reason = %e, "delivery failed; will retry with backoff");
            }
            if let Err(e) = finish(&store, id, result, true).await {
                tracing::warn!(outbox = id, error = %e, "delivery result not recorded; the claim will lapse and retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// An outbox event is stored and claimed while another writer (as the
    /// audit log does under load) holds the database in back-to-back turns. Sent
    /// straight to the pool they waited in SQLite's busy handler, which never found
    /// the lock free, and failed with "database is locked" after its 5 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_get_their_turn_while_another_writer_is_busy() {
        let dir = std::env::temp_dir().join(format!("kk-outbox-turn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&format!("sqlite://{}/o.db", dir.display())).await.unwrap();
        let (file, gate) = store.sqlite_writer_parts().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let conn = rusqlite::Connection::open(&*file).unwrap();
                let mut turns = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let _turn = gate.blocking_lock();
                    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                    conn.execute_batch("COMMIT").unwrap();
                    turns += 1;
                }
                turns
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let payload = serde_json::json!({ "push": "p1" });
        let stored = enqueue(&store, "deliver", "4610100011", &payload).await;
        let claimed = claim(&store, 16, 60).await;
        stop.store(true, Ordering::Relaxed);
        assert!(busy.join().unwrap() > 0, "the other writer ran");
        let id = stored.expect("the notice is stored in its turn");
        let claimed = claimed.expect("the claim runs in its turn");
        assert_eq!(claimed.iter().map(|c| c.0).collect::<Vec<_>>(), vec![id]);
        finish(&store, id, Ok(()), true).await.unwrap();
        assert_eq!(delivery_of(&store, "p1").await.unwrap().unwrap().state, "delivered");
        let _ = std::fs::remove_dir_all(dir);
    }
}
