//! Grants: what an owner institution allows across its boundary. Every grant is a
//! FHIR Consent posted by the owner's hospital system; its `category` names the kind.
//! Grants live in the database and are mirrored in memory for the per-resource
//! decisions; the mirror is reloaded after every change and periodically (other
//! gateway instances may change grants too).

use crate::store::Store;
use kakehashi_fhir::{Consent, Resource};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};

/// Code system of grant kinds in `Consent.category`.
pub const GRANT_KIND_SYSTEM: &str = "urn:kakehashi:grant-kind";
/// Identifier system naming "every member of the regional network" as a grantee.
pub const NETWORK_SYSTEM: &str = "urn:kakehashi:network";
/// The grantee value meaning every member institution.
pub const ALL_MEMBERS: &str = "all-members";

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// Patient consent to share with named institutions (or the whole network).
    Consent,
    /// A referral or discharge summary gives the receiving institution access.
    Referral,
    /// On-call delegation: the grantee's doctors read the owner's patients.
    Delegation,
    /// A pharmacy designated for a patient's prescriptions.
    Pharmacy,
}

impl GrantKind {
    /// The code in `urn:kakehashi:grant-kind`.
    pub fn code(self) -> &'static str {
        match self {
            GrantKind::Consent => "consent",
            GrantKind::Referral => "referral",
            GrantKind::Delegation => "delegation",
            GrantKind::Pharmacy => "pharmacy",
        }
    }

    /// From the code.
    pub fn from_code(c: &str) -> Option<GrantKind> {
        [GrantKind::Consent, GrantKind::Referral, GrantKind::Delegation, GrantKind::Pharmacy]
            .into_iter()
            .find(|k| k.code() == c)
    }
}

/// One grant, as decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Id (also the Consent id).
    pub id: String,
    /// Granting (owning) institution.
    pub owner: String,
    /// Kind.
    pub kind: GrantKind,
    /// Patient id at the owner, or empty for all the owner's patients (delegation).
    pub patient: String,
    /// Institutions allowed (or [`ALL_MEMBERS`]).
    pub grantees: Vec<String>,
    /// Resource types allowed; empty means all.
    pub resource_types: Vec<String>,
    /// Validity start, Unix seconds (inclusive).
    pub valid_from: i64,
    /// Validity end, Unix seconds (exclusive).
    pub valid_to: i64,
    /// When revoked, if it was.
    pub revoked_at: Option<i64>,
    /// The Consent as stored.
    pub resource: String,
}

impl Grant {
    /// True when in force at `now`.
    pub fn active_at(&self, now: i64) -> bool {
        self.revoked_at.is_none_or(|r| r > now) && self.valid_from <= now && now < self.valid_to
    }

    /// True when it names `institution` (directly or as a network member).
    pub fn names(&self, institution: &str) -> bool {
        self.grantees.iter().any(|g| g == institution || g == ALL_MEMBERS)
    }

    /// True when it covers this resource type.
    pub fn covers(&self, resource_type: &str) -> bool {
        self.resource_types.is_empty() || self.resource_types.iter().any(|t| t == resource_type)
    }

    /// The stored Consent.
    pub fn consent(&self) -> Option<Consent> {
        match serde_json::from_str::<Resource>(&self.resource) {
            Ok(Resource::Consent(c)) => Some(c),
            _ => None,
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(",{},", items.join(","))
    }
}

fn unlist(s: &str) -> Vec<String> {
    s.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect()
}

/// A grant conflicts with another for the same owner, kind, patient and a shared grantee.
#[derive(Debug, thiserror::Error)]
pub enum GrantStoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// An active grant overlaps this one.
    #[error("grant {0} already covers an overlapping period for the same patient and institution; revoke it first")]
    Overlap(String),
    /// No such grant of this owner.
    #[error("no grant {0} of this institution")]
    NotFound(String),
}

/// All grants, mirrored in memory.
#[derive(Debug)]
pub struct Grants {
    all: RwLock<GrantSet>,
    /// The newest change number the mirror holds (-1: nothing loaded yet).
    seen: AtomicI64,
}

impl Default for Grants {
    fn default() -> Self {
        Grants { all: RwLock::default(), seen: AtomicI64::new(-1) }
    }
}

/// Grants with the indexes a decision looks them up by. Every pushed document brings a
/// referral grant, so a federation gathers tens of thousands: scanning them all for
/// every record a search decides on grew with each push.
#[derive(Debug, Default)]
struct GrantSet {
    list: Vec<Grant>,
    /// The change number each grant of `list` was read or written at.
    changed: Vec<i64>,
    /// Positions in `list` by owner, then patient ("" for all the owner's patients).
    by_owner: HashMap<String, HashMap<String, Vec<usize>>>,
    by_id: HashMap<String, usize>,
}

impl GrantSet {
    fn new(list: Vec<(Grant, i64)>) -> GrantSet {
        let mut set = GrantSet { list: Vec::with_capacity(list.len()), ..GrantSet::default() };
        for (g, changed) in list {
            set.upsert(g, changed);
        }
        set
    }

    /// Add `g` as of change `changed`, or replace the grant with its id unless the one
    /// here is newer: a reload that read a row just before this gateway revoked it must
    /// not bring the grant back.
    fn upsert(&mut self, g: Grant, changed: i64) {
        if let Some(&i) = self.by_id.get(&g.id) {
            if self.changed[i] > changed {
                return;
            }
            if self.list[i].owner == g.owner && self.list[i].patient == g.patient {
                (self.list[i], self.changed[i]) = (g, changed);
                return;
            }
            // Another owner or patient under the same id: rebuild the positions.
            let mut list: Vec<(Grant, i64)> =
                std::mem::take(&mut self.list).into_iter().zip(std::mem::take(&mut self.changed)).collect();
            list.remove(i);
            list.push((g, changed));
            *self = GrantSet::new(list);
            return;
        }
        let i = self.list.len();
        self.by_id.insert(g.id.clone(), i);
        self.by_owner.entry(g.owner.clone()).or_default().entry(g.patient.clone()).or_default().push(i);
        self.list.push(g);
        self.changed.push(changed);
    }

    /// The grants of `owner` for `patient` or for all its patients, in `list` order: the
    /// two ascending position lists merged as they are walked (this runs for every record
    /// a read decides on, so it allocates nothing).
    fn of(&self, owner: &str, patient: &str) -> impl Iterator<Item = &Grant> {
        let patients = self.by_owner.get(owner);
        let at = |p: &str| patients.and_then(|m| m.get(p)).map(Vec::as_slice).unwrap_or_default();
        let (mine, all) = (at(patient), if patient.is_empty() { &[][..] } else { at("") });
        let (mut a, mut b) = (mine.iter().peekable(), all.iter().peekable());
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y < x => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        })
        .map(|&i| &self.list[i])
    }
}

impl Grants {
    /// Bring the mirror up to date: every grant the first time, then only those changed
    /// since (each change takes the next number under one row lock, so a change is
    /// visible only after every earlier one). Returns how many grants were read.
    pub async fn reload(&self, store: &Store) -> Result<usize, sqlx::Error> {
        let seen = self.seen.load(Ordering::SeqCst);
        let rows = sqlx::query(
            "SELECT id, owner, kind, patient, grantees, resource_types, valid_from, valid_to, revoked_at, resource, changed \
             FROM policy_grant WHERE changed > $1 ORDER BY changed",
        )
        .bind(seen)
        .fetch_all(store.pool())
        .await?;
        let read = rows.len();
        let mut newest = seen;
        let mut all = Vec::with_capacity(rows.len());
        for r in rows {
            let changed: i64 = r.try_get(10)?;
            newest = newest.max(changed);
            let kind: String = r.try_get(2)?;
            let Some(kind) = GrantKind::from_code(&kind) else { continue };
            let grant = Grant {
                id: r.try_get(0)?,
                owner: r.try_get(1)?,
                kind,
                patient: r.try_get(3)?,
                grantees: unlist(&r.try_get::<String, _>(4)?),
                resource_types: unlist(&r.try_get::<String, _>(5)?),
                valid_from: r.try_get(6)?,
                valid_to: r.try_get(7)?,
                revoked_at: r.try_get(8)?,
                resource: r.try_get(9)?,
            };
            all.push((grant, changed));
        }
        let mut set = self.all.write().unwrap_or_else(PoisonError::into_inner);
        all.into_iter().for_each(|(g, changed)| set.upsert(g, changed));
        self.seen.fetch_max(newest, Ordering::SeqCst);
        Ok(read)
    }

    /// Mirror a grant this instance just committed as change `changed` (the number
    /// [`write_row`] returned), without waiting for the periodic reload.
    pub fn remember(&self, g: Grant, changed: i64) {
        self.all.write().unwrap_or_else(PoisonError::into_inner).upsert(g, changed);
    }

    /// Visit every grant (under the read lock: `f` must not call back into grants).
    pub fn for_each(&self, mut f: impl FnMut(&Grant)) {
        let g = self.all.read().unwrap_or_else(PoisonError::into_inner);
        g.list.iter().for_each(&mut f);
    }

    /// Grants matching a predicate (cloned out of the lock).
    pub fn find(&self, mut pred: impl FnMut(&Grant) -> bool) -> Vec<Grant> {
        let g = self.all.read().unwrap_or_else(PoisonError::into_inner);
        g.list.iter().filter(|x| pred(x)).cloned().collect()
    }

    /// The grant with this id.
    pub fn by_id(&self, id: &str) -> Option<Grant> {
        let g = self.all.read().unwrap_or_else(PoisonError::into_inner);
        g.by_id.get(id).map(|&i| g.list[i].clone())
    }

    /// Kind and id of the first grant of `owner` about `patient` (or about all its
    /// patients) that satisfies `pred`.
    pub fn first_of(
        &self,
        owner: &str,
        patient: &str,
        mut pred: impl FnMut(&Grant) -> bool,
    ) -> Option<(GrantKind, String)> {
        let g = self.all.read().unwrap_or_else(PoisonError::into_inner);
        let found = g.of(owner, patient).find(|x| pred(x)).map(|x| (x.kind, x.id.clone()));
        found
    }

    /// Store a new grant, refusing overlaps, atomically; then mirror it.
    pub async fn insert(&self, store: &Store, g: &Grant, created_by: &str) -> Result<(), GrantStoreError> {
        let mut tx = store.begin_write(crate::store::Lock::Grants).await?;
        let rows = sqlx::query(
            "SELECT id, grantees FROM policy_grant WHERE owner = $1 AND kind = $2 AND patient = $3 \
             AND revoked_at IS NULL AND valid_from < $4 AND valid_to > $5",
        )
        .bind(&g.owner)
        .bind(g.kind.code())
        .bind(&g.patient)
        .bind(g.valid_to)
        .bind(g.valid_from)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            let other: Vec<String> = unlist(&r.try_get::<String, _>(1)?);
            if other.iter().any(|o| g.grantees.contains(o)) {
                return Err(GrantStoreError::Overlap(r.try_get(0)?));
            }
        }
        let changed = write_row(&mut tx, g, created_by).await?;
        tx.commit().await?;
        self.remember(g.clone(), changed);
        Ok(())
    }

    /// Revoke a grant of `owner` (kept, with its revocation time); then mirror it.
    pub async fn revoke(&self, store: &Store, owner: &str, id: &str, now: i64) -> Result<(), GrantStoreError> {
        let mut tx = store.begin_row_write().await?;
        let change = next_change(&mut tx).await?;
        let done = sqlx::query(
            "UPDATE policy_grant SET revoked_at = $1, changed = $2 WHERE id = $3 AND owner = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(change)
        .bind(id)
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if done == 0 {
            return Err(GrantStoreError::NotFound(id.to_string()));
        }
        let mut all = self.all.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&i) = all.by_id.get(id) {
            all.list[i].revoked_at = Some(now);
            all.changed[i] = all.changed[i].max(change);
        }
        Ok(())
    }
}

/// Insert one grant row within the caller's transaction (a Consent, or the referral a
/// pushed document brings with it); returns its change number. The caller mirrors it
/// with [`Grants::remember`] once committed.
pub async fn write_row(conn: &mut sqlx::AnyConnection, g: &Grant, created_by: &str) -> Result<i64, sqlx::Error> {
    let change = next_change(conn).await?;
    sqlx::query(
        "INSERT INTO policy_grant (id, owner, kind, patient, grantees, resource_types, valid_from, valid_to, revoked_at, created_at, created_by, resource, changed) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&g.id)
    .bind(&g.owner)
    .bind(g.kind.code())
    .bind(&g.patient)
    .bind(list(&g.grantees))
    .bind(list(&g.resource_types))
    .bind(g.valid_from)
    .bind(g.valid_to)
    .bind(g.revoked_at)
    .bind(crate::audit::now_micros() / 1_000_000)
    .bind(created_by)
    .bind(&g.resource)
    .bind(change)
    .execute(conn)
    .await?;
    Ok(change)
}

/// The next grant change number, taken within the caller's transaction: the counter's
/// row stays locked until it ends, so changes commit in the order of their numbers.
async fn next_change(conn: &mut sqlx::AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("UPDATE grant_change SET seq = seq + 1 WHERE id = 1 RETURNING seq").fetch_one(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, owner: &str, patient: &str) -> Grant {
        Grant {
            id: id.into(),
            owner: owner.into(),
            kind: GrantKind::Consent,
            patient: patient.into(),
            grantees: vec!["4610200021".into()],
            resource_types: vec![],
            valid_from: 0,
            valid_to: 100,
            revoked_at: None,
            resource: String::new(),
        }
    }

    fn ids(set: &GrantSet, owner: &str, patient: &str) -> Vec<String> {
        set.of(owner, patient).map(|g| g.id.clone()).collect()
    }

    #[test]
    fn a_decision_sees_the_owners_grants_for_that_patient_and_for_all_its_patients_in_order() {
        let set = GrantSet::new(
            [
                grant("a", "hub", "p1"),
                grant("delegation", "hub", ""),
                grant("b", "hub", "p2"),
                grant("c", "hub", "p1"),
                grant("other-owner", "clinic", "p1"),
            ]
            .into_iter()
            .zip(1..)
            .collect(),
        );
        assert_eq!(ids(&set, "hub", "p1"), ["a", "delegation", "c"]);
        assert_eq!(ids(&set, "hub", "p2"), ["delegation", "b"]);
        assert_eq!(ids(&set, "hub", "p3"), ["delegation"]);
        assert_eq!(ids(&set, "hub", ""), ["delegation"], "a record about no patient");
        assert_eq!(ids(&set, "clinic", "p1"), ["other-owner"]);
        assert!(ids(&set, "pharmacy", "p1").is_empty());
    }

    #[test]
    fn the_mirror_replaces_by_id_and_marks_revocations() {
        let grants = Grants::default();
        grants.remember(grant("a", "hub", "p1"), 1);
        grants.remember(grant("b", "hub", "p1"), 2);
        let mut changed = grant("a", "hub", "p1");
        changed.valid_to = 50;
        grants.remember(changed, 3);
        assert_eq!(grants.find(|_| true).len(), 2);
        assert_eq!(grants.by_id("a").map(|g| g.valid_to), Some(50));
        // The same id now about another patient (a reload after a correction).
        // An older copy (a reload that read the row before the change) is ignored.
        grants.remember(grant("a", "hub", "p1"), 1);
        assert_eq!(grants.by_id("a").map(|g| g.valid_to), Some(50));
        grants.remember(grant("a", "hub", "p9"), 4);
        assert_eq!(grants.first_of("hub", "p1", |_| true), Some((GrantKind::Consent, "b".into())));
        assert_eq!(grants.first_of("hub", "p9", |_| true), Some((GrantKind::Consent, "a".into())));
        let b = grants.all.read().unwrap().by_id["b"];
        grants.all.write().unwrap().list[b].revoked_at = Some(10);
        let active = |g: &Grant| g.active_at(20);
        assert_eq!(grants.first_of("hub", "p1", active), None, "b was revoked at 10");
        assert_eq!(grants.by_id("zzz"), None);
    }
}
