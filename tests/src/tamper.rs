//! Tampering with a gateway's audit tables as an insider with database access would,
//! for the tests that `audit verify` catches it.

use kakehashi::audit::event::Entry;
use kakehashi::audit::log::Columns;
use sqlx::{AnyPool, Row};

/// One stored audit event, every column.
#[derive(Clone, Debug)]
pub struct AuditRow {
    /// Column `seq`.
    pub seq: i64,
    /// Column `recorded`.
    pub recorded: i64,
    /// Column `agent`.
    pub agent: String,
    /// Column `owners`.
    pub owners: String,
    /// Column `patients`.
    pub patients: String,
    /// Column `outcome`.
    pub outcome: String,
    /// Column `subtype`.
    pub subtype: String,
    /// Column `cross`.
    pub cross: i64,
    /// Column `event`.
    pub event: String,
    /// Column `prev`.
    pub prev: Vec<u8>,
    /// Column `hash`.
    pub hash: Vec<u8>,
    /// Column `entities`.
    pub entities: String,
}

impl AuditRow {
    /// A row for `event` at `seq` whose columns say what the event says.
    pub fn forged(seq: i64, event: String, prev: Vec<u8>, hash: Vec<u8>) -> AuditRow {
        let entry = Entry::parse(seq, &event).unwrap().expect("an entry");
        let c = Columns::of(&entry);
        AuditRow {
            seq,
            recorded: c.recorded,
            agent: c.agent,
            owners: c.owners,
            patients: c.patients,
            outcome: c.outcome.into(),
            subtype: c.subtype.into(),
            cross: c.cross,
            event,
            prev,
            hash,
            entities: c.entities,
        }
    }
}

/// Every stored event, in order.
pub async fn rows(pool: &AnyPool) -> Vec<AuditRow> {
    sqlx::query("SELECT seq, recorded, agent_institution, owners, patients, outcome, subtype, cross_site, event, prev_hash, hash, entities FROM audit_event ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| AuditRow {
            seq: r.get(0),
            recorded: r.get(1),
            agent: r.get(2),
            owners: r.get(3),
            patients: r.get(4),
            outcome: r.get(5),
            subtype: r.get(6),
            cross: r.get(7),
            event: r.get(8),
            prev: r.get(9),
            hash: r.get(10),
            entities: r.get(11),
        })
        .collect()
}

/// Store one row as it is.
pub async fn put(pool: &AnyPool, r: &AuditRow) {
    sqlx::query("INSERT INTO audit_event (seq, recorded, agent_institution, owners, patients, outcome, subtype, cross_site, event, prev_hash, hash, entities) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)")
        .bind(r.seq).bind(r.recorded).bind(&r.agent).bind(&r.owners).bind(&r.patients).bind(&r.outcome).bind(&r.subtype)
        .bind(r.cross).bind(&r.event).bind(&r.prev).bind(&r.hash).bind(&r.entities)
        .execute(pool)
        .await
        .unwrap();
}

/// Replace every stored event with `saved`.
pub async fn restore(pool: &AnyPool, saved: &[AuditRow]) {
    sqlx::query("DELETE FROM audit_event").execute(pool).await.unwrap();
    for r in saved {
        put(pool, r).await;
    }
}
