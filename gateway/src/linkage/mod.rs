//! Cross-site patient linkage: the same person has a local Patient at the hub, the
//! clinic and the pharmacy. [`index`] links them deterministically; owners' manual
//! decisions live in the database and override it. Linking never discloses anything
//! by itself: every linked record still passes the policy of its own owner.

pub mod index;

pub use index::{Decision, LinkBasis, Links};

use crate::records::{Records, RecordsError};
use crate::store::Store;
use index::Facts;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

/// Owners' decisions (mirrored from the database); the links themselves are worked out
/// per person from the records index when asked for.
#[derive(Default)]
pub struct Linkage {
    decisions: RwLock<Arc<Vec<Decision>>>,
    /// People worked out, kept while the index and the decisions they were worked out
    /// from are unchanged (a read of a person asks the index half a dozen questions).
    known: std::sync::Mutex<HashMap<String, Known>>,
}

/// A person's links as worked out from one state of the index and of the decisions.
struct Known {
    generation: u64,
    decisions: Arc<Vec<Decision>>,
    links: Vec<(String, LinkBasis)>,
}

/// People kept at most; past it the memory is started afresh.
const MAX_KNOWN: usize = 50_000;

/// Who made a manual decision.
pub struct DecidedBy<'a> {
    /// Institution code (an owner of one of the two records).
    pub institution: &'a str,
    /// Certificate fingerprint and terminal, for the record.
    pub principal: &'a str,
}

/// A person's records examined at most: beyond it the rules link nobody further (a
/// person has a handful of records; a runaway means keys shared by unrelated people).
const MAX_PERSON: usize = 200;

impl Linkage {
    /// The Patient records linked to `patient` (itself excluded), with how. Worked out
    /// from the index around `patient` only: the records sharing a key with it, then
    /// with those linked to it, until nothing new joins; the rules (and owners'
    /// decisions) are applied to that neighbourhood exactly as to the whole federation,
    /// since every rule looks only at the records sharing one key.
    pub async fn person(&self, records: &Records, patient: &str) -> Result<Vec<(String, LinkBasis)>, RecordsError> {
        let decisions = self.decisions.read().unwrap_or_else(PoisonError::into_inner).clone();
        // Read before the work: a change of the index during it makes the result stale
        // at once.
        let Some(generation) = records.index().and_then(|i| i.generation()) else {
            return self.work_out(records, patient, &decisions).await;
        };
        if let Some(k) = self.known.lock().unwrap_or_else(PoisonError::into_inner).get(patient) {
            if k.generation == generation && Arc::ptr_eq(&k.decisions, &decisions) {
                return Ok(k.links.clone());
            }
        }
        let links = self.work_out(records, patient, &decisions).await?;
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(patient.to_string(), Known { generation, decisions, links: links.clone() });
        Ok(links)
    }

    async fn work_out(
        &self,
        records: &Records,
        patient: &str,
        decisions: &Arc<Vec<Decision>>,
    ) -> Result<Vec<(String, LinkBasis)>, RecordsError> {
        if records.index().is_none() {
            // Records given as resources (tests, benchmarks): few enough to link at once.
            let links = Links::build(&records.fixed_facts(), decisions);
            return Ok(links.linked(patient).map(|(id, b)| (id.to_string(), b)).collect());
        }
        let mut facts: HashMap<String, Facts> = HashMap::new();
        let mut expanded: HashSet<String> = HashSet::new();
        let mut frontier = vec![patient.to_string()];
        self.load(records, &frontier, &mut facts).await?;
        loop {
            let mut neighbours: Vec<String> = Vec::new();
            for p in std::mem::take(&mut frontier) {
                if !expanded.insert(p.clone()) || facts.len() > MAX_PERSON {
                    continue;
                }
                let Some(f) = facts.get(&p).cloned() else { continue };
                if let Some(index) = records.index() {
                    let mut keys: Vec<(&str, String)> = f.identifiers.iter().map(|k| ("id", k.clone())).collect();
                    keys.extend(f.insurance.iter().map(|(k, _)| ("ins", k.clone())));
                    keys.extend(index::demographics_key(&f).map(|k| ("demo", k)));
                    for (kind, key) in keys {
                        let bucket = index.with_key(kind, &key).await?;
                        // Every rule links records of different sites: a bucket at one site
                        // links nobody, whatever its size.
                        let first_site = bucket.first().map(|(_, s)| s.clone());
                        if bucket.iter().all(|(_, s)| Some(s) == first_site.as_ref()) {
                            continue;
                        }
                        neighbours.extend(bucket.into_iter().map(|(p, _)| p));
                    }
                }
                neighbours.extend(decisions.iter().filter(|d| d.a == p || d.b == p).map(|d| {
                    if d.a == p {
                        d.b.clone()
                    } else {
                        d.a.clone()
                    }
                }));
            }
            neighbours.retain(|n| !facts.contains_key(n));
            neighbours.sort();
            neighbours.dedup();
            self.load(records, &neighbours, &mut facts).await?;
            let people: Vec<Facts> = facts.values().cloned().collect();
            let local: Vec<Decision> =
                decisions.iter().filter(|d| facts.contains_key(&d.a) && facts.contains_key(&d.b)).cloned().collect();
            let links = Links::build(&people, &local);
            frontier = links.person(patient).into_iter().filter(|p| !expanded.contains(p)).collect();
            if frontier.is_empty() || facts.len() > MAX_PERSON {
                return Ok(links.linked(patient).map(|(id, b)| (id.to_string(), b)).collect());
            }
        }
    }

    /// Load the facts of `patients` from the index into `facts` (two queries for all).
    async fn load(
        &self,
        records: &Records,
        patients: &[String],
        facts: &mut HashMap<String, Facts>,
    ) -> Result<(), RecordsError> {
        let Some(index) = records.index() else { return Ok(()) };
        let ids: Vec<&str> = patients.iter().map(String::as_str).filter(|p| !facts.contains_key(*p)).collect();
        if ids.is_empty() {
            return Ok(());
        }
        // The first site listed holds the Patient as the rules see it; keys come from
        // every site holding records of it (its insurance at another).
        let mut rows = index.demographics(&ids).await?;
        rows.sort_by_key(|(_, site, ..)| records.sites().iter().position(|s| &s.id == site));
        let mut found: HashMap<String, Facts> = HashMap::new();
        for (id, site, owner, birth, gender) in rows {
            found.entry(id.clone()).or_insert_with(|| Facts {
                id,
                site: format!("{site}|{owner}"),
                birth_date: birth.filter(|b| b.len() == 10),
                gender: gender.filter(|g| matches!(g.as_str(), "male" | "female" | "other")),
                ..Default::default()
            });
        }
        for (patient, kind, key, extra) in index.keys_of(&ids).await? {
            let Some(f) = found.get_mut(&patient) else { continue };
            match kind.as_str() {
                "id" => f.identifiers.push(key),
                "ins" => f.insurance.push((key, extra)),
                "demo" => f.kana = key.split('|').next().map(str::to_string),
                _ => {}
            }
        }
        facts.extend(found);
        Ok(())
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
