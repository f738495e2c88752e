//! Cross-site patient linkage: the same person has a local Patient at the hub, the
//! clinic and the pharmacy. [`index`] links them deterministically; owners' manual
//! decisions live in the database and override it. Linking never discloses anything
//! by itself: every linked record still passes the policy of its own owner.

pub mod index;

pub use index::{Decision, LinkBasis, Links};

use crate::records::Snapshot;
use crate::store::Store;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Owners' decisions (mirrored from the database) and the index built from them.
#[derive(Default)]
pub struct Linkage {
    decisions: RwLock<Arc<Vec<Decision>>>,
    /// The index, with the snapshot and decisions it was built from.
    cache: Mutex<Option<Built>>,
}

/// An index and what it was built from.
type Built = (Arc<Snapshot>, Arc<Vec<Decision>>, Arc<Links>);

/// Who made a manual decision.
pub struct DecidedBy<'a> {
    /// Institution code (an owner of one of the two records).
    pub institution: &'a str,
    /// Certificate fingerprint and terminal, for the record.
    pub principal: &'a str,
}

impl Linkage {
    /// The link index for this snapshot, rebuilt only when the records or the
    /// decisions changed since the last call.
    pub fn links(&self, snap: &Arc<Snapshot>) -> Arc<Links> {
        let decisions = self.decisions.read().unwrap_or_else(PoisonError::into_inner).clone();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((s, d, links)) = cache.as_ref() {
            if Arc::ptr_eq(s, snap) && Arc::ptr_eq(d, &decisions) {
                return links.clone();
            }
        }
        let links = Arc::new(Links::from_snapshot(snap, &decisions));
        *cache = Some((snap.clone(), decisions, links.clone()));
        links
    }

    /// Reload the decisions from the database (other instances decide too).
    pub async fn reload(&self, store: &Store) -> Result<(), sqlx::Error> {
        let rows = sqlx::query("SELECT patient_a, patient_b, linked FROM patient_link ORDER BY seq")
            .fetch_all(store.pool())
            .await?;
        // The latest decision per pair is in force (rows come oldest first).
        let mut decisions: Vec<Decision> = Vec::new();
        let mut at: HashMap<(String, String), usize> = HashMap::new();
        for r in rows {
            let (a, b): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            let linked = r.try_get::<i64, _>(2)? != 0;
            match at.get(&(a.clone(), b.clone())) {
                Some(&i) => decisions[i].linked = linked,
                None => {
                    at.insert((a.clone(), b.clone()), decisions.len());
                    decisions.push(Decision { a, b, linked });
                }
            }
        }
        let mut current = self.decisions.write().unwrap_or_else(PoisonError::into_inner);
        if **current != decisions {
            *current = Arc::new(decisions);
        }
        Ok(())
    }

    /// Record an owner's decision durably, then reload.
    pub async fn decide(&self, store: &Store, d: &Decision, by: DecidedBy<'_>) -> Result<(), sqlx::Error> {
        let (a, b) = if d.a <= d.b { (&d.a, &d.b) } else { (&d.b, &d.a) };
        let mut tx = store.begin_row_write().await?;
        sqlx::query(
            "INSERT INTO patient_link (patient_a, patient_b, linked, institution, decided_by, decided_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(a)
        .bind(b)
        .bind(i64::from(d.linked))
        .bind(by.institution)
        .bind(by.principal)
        .bind(crate::audit::now_micros() / 1_000_000)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.reload(store).await
    }
}
