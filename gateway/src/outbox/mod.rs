//! The outbox: events for other institutions (break-glass notices, pushed documents)
//! stored durably in the same database and delivered by a worker with retries.

use crate::store::Store;
use sqlx::Row;

/// A break-glass notice as the owner sees it: a FHIR Communication from the reader's
/// institution to the owner about the patient, with the reason and the declaration.
pub fn notice(id: i64, payload: &serde_json::Value, state: &str) -> serde_json::Value {
    let inst = |code: &serde_json::Value, name: Option<&serde_json::Value>| {
        let mut r = serde_json::json!({
            "type": "Organization",
            "identifier": {"system": kakehashi_mappings::codes::INSTITUTION_NUMBER, "value": code},
        });
        if let Some(n) = name.and_then(|n| n.as_str()).filter(|n| !n.is_empty()) {
            r["display"] = n.into();
        }
        r
    };
    let reader = &payload["reader"];
    let at = |k: &str| payload[k].as_i64().and_then(crate::instant::from_secs).unwrap_or_default();
    let text = format!(
        "Break-glass access (緊急時アクセス) to patient {} by {} terminal {} (certificate SHA-256 {}), reason: {}; declaration {} valid until {}.",
        payload["patient"].as_str().unwrap_or(""),
        reader["institution"].as_str().unwrap_or(""),
        reader["terminal"].as_str().unwrap_or(""),
        reader["certificate"].as_str().unwrap_or(""),
        payload["reason"].as_str().unwrap_or(""),
        payload["declaration"].as_str().unwrap_or(""),
        at("expires"),
    );
    serde_json::json!({
        "resourceType": "Communication",
        "id": format!("break-glass-{id}"),
        "identifier": [{"system": "urn:kakehashi:break-glass", "value": payload["declaration"]}],
        "status": if state == "delivered" || state == "held" { "completed" } else { "in-progress" },
        "category": [{"coding": [{"system": NOTICE_SYSTEM, "code": "break-glass", "display": "Break-glass access notice"}]}],
        "priority": "urgent",
        "subject": {"reference": format!("Patient/{}", payload["patient"].as_str().unwrap_or(""))},
        "sent": at("at"),
        "recipient": [inst(&payload["owner"], None)],
        "sender": inst(&reader["institution"], reader.get("name")),
        "reasonCode": [{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"}],
            "text": payload["reason"],
        }],
        "payload": [{"contentString": text}],
    })
}

/// Code system of the notices' `Communication.category`.
pub const NOTICE_SYSTEM: &str = "urn:kakehashi:notice";

/// Break-glass notices for `destination`, newest first, `limit` of them: (id, payload, state).
pub async fn notices(
    store: &Store,
    destination: &str,
    only: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, serde_json::Value, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, payload, state FROM outbox WHERE kind = $1 AND destination = $2 AND ($3 = 0 OR id = $3) ORDER BY id DESC LIMIT $4",
    )
    .bind(crate::policy::break_glass::NOTICE_KIND)
    .bind(destination)
    .bind(only.unwrap_or(0))
    .bind(limit)
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
        "SELECT id FROM outbox WHERE kind IN ('deliver', 'break-glass') AND \
         ((state = 'pending' AND next_attempt <= $1) OR (state = 'claimed' AND claim_until < $1))"
    };
}

/// Claim up to `limit` due deliveries for `seconds`. Claims are atomic per row, so
/// several gateway instances never deliver the same row at once; a claim that lapses
/// (its instance died) is claimed again.
async fn claim(store: &Store, limit: i64, seconds: i64) -> Result<Vec<Claimed>, sqlx::Error> {
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
                ") RETURNING id, kind, destination, payload"
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
        .map(|r| {
            Ok(Claimed { id: r.try_get(0)?, kind: r.try_get(1)?, destination: r.try_get(2)?, payload: r.try_get(3)? })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    tx.commit().await?;
    Ok(claimed)
}

/// A claimed outbox row.
struct Claimed {
    id: i64,
    kind: String,
    destination: String,
    payload: String,
}

/// Where a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// Written to the destination's inbox.
    Inbox,
    /// The destination has no inbox: the row is kept for its API (a notice).
    Held,
}

async fn finish(
    store: &Store,
    id: i64,
    result: Result<Delivered, String>,
    attempts_backoff: bool,
) -> Result<(), sqlx::Error> {
    let mut tx = store.begin_row_write().await?;
    match result {
        Ok(done) => {
            let state = if done == Delivered::Inbox { "delivered" } else { "held" };
            sqlx::query("UPDATE outbox SET state = $1, delivered_at = $2, last_error = NULL WHERE id = $3")
                .bind(state)
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
/// Patient documents: the file is created 0600 and a directory made here 0700.
pub(crate) fn write_durably(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
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

/// Deliver a break-glass notice: into the owner's inbox as a FHIR Communication (JSON)
/// when it has one, and to the ATNA repository when forwarding is configured; held for
/// the owner's API otherwise.
async fn deliver_notice(
    config: &crate::config::Config,
    forward: Option<&crate::audit::forward::Forwarder>,
    id: i64,
    destination: &str,
    payload: &str,
) -> Result<Delivered, String> {
    let payload: serde_json::Value = serde_json::from_str(payload).map_err(|e| format!("malformed notice: {e}"))?;
    let communication = notice(id, &payload, "delivered");
    if let Some(f) = forward {
        f.offer_message("BreakGlassNotice", communication.to_string());
    }
    let Some(inbox) = config.inbox_of(destination) else { return Ok(Delivered::Held) };
    let (dir, name, bytes) = (inbox.dir.clone(), format!("break-glass-{id}.json"), communication.to_string());
    tokio::task::spawn_blocking(move || write_durably(&dir, &name, bytes.as_bytes()))
        .await
        .map_err(|e| e.to_string())??;
    Ok(Delivered::Inbox)
}

/// The delivery worker: poll, claim, deliver, record; forever.
pub async fn run(
    store: Store,
    config: std::sync::Arc<crate::config::Config>,
    metrics: std::sync::Arc<crate::admin::Metrics>,
    forward: Option<crate::audit::forward::Forwarder>,
) {
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
        for c in claimed {
            let (kind, result) = if c.kind == crate::policy::break_glass::NOTICE_KIND {
                ("break-glass", deliver_notice(&config, forward.as_ref(), c.id, &c.destination, &c.payload).await)
            } else {
                ("document", deliver(&store, &config, &c.destination, &c.payload).await.map(|()| Delivered::Inbox))
            };
            metrics.outbox(kind, result.is_ok());
            if let Err(e) = &result {
                tracing::warn!(outbox = c.id, kind, reason = %e, "delivery failed; will retry with backoff");
            }
            if let Err(e) = finish(&store, c.id, result, true).await {
                tracing::warn!(outbox = c.id, error = %e, "delivery result not recorded; the claim will lapse and retry");
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
        let stored = async {
            let mut tx = store.begin_row_write().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO outbox (kind, destination, payload, created_at, state, attempts, next_attempt) \
                 VALUES ('deliver', $1, $2, 0, 'pending', 0, 0) RETURNING id",
            )
            .bind("4610100011")
            .bind(payload.to_string())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await.map(|()| id)
        }
        .await;
        let claimed = claim(&store, 16, 60).await;
        stop.store(true, Ordering::Relaxed);
        assert!(busy.join().unwrap() > 0, "the other writer ran");
        let id = stored.expect("the notice is stored in its turn");
        let claimed = claimed.expect("the claim runs in its turn");
        assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id]);
        finish(&store, id, Ok(Delivered::Inbox), true).await.unwrap();
        assert_eq!(delivery_of(&store, "p1").await.unwrap().unwrap().state, "delivered");
        let _ = std::fs::remove_dir_all(dir);
    }
}
