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
    let row = sqlx::query(
        "INSERT INTO outbox (kind, destination, payload, created_at, state, attempts, next_attempt) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $5) RETURNING id",
    )
    .bind(kind)
    .bind(destination)
    .bind(payload.to_string())
    .bind(now)
    .bind(now)
    .fetch_one(store.pool())
    .await?;
    row.try_get(0)
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
