//! Records of pushed documents: written with the document, in the push's own
//! transaction, and read from the database when a request needs them. Memory holds only
//! which types, ids and patients have any (a few hundred bytes per document). Held in
//! memory with the sites' records, every pushed document stayed there for the life of
//! the process (about 100 KB for a 50 KB discharge summary, in every instance), and
//! every push rebuilt a snapshot that held them all.

use super::Stored;
use futures_util::TryStreamExt;
use kakehashi_fhir::Resource;
use serde_json::value::RawValue;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The site name pushed records are served under.
pub const PUSH_SITE: &str = "push";

/// What the index knows of one pushed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedKey {
    /// Resource type.
    pub rtype: String,
    /// Resource id.
    pub id: String,
    /// The Patient it is about.
    pub patient: Option<String>,
}

/// Which pushed records exist: enough to know when the database must be asked.
#[derive(Debug, Default)]
pub(super) struct PushedIndex {
    by_type: HashMap<String, HashSet<String>>,
    patients: HashSet<String>,
    documents: HashSet<String>,
    /// The newest receive time among `documents` (Unix seconds).
    newest: i64,
}

impl PushedIndex {
    /// Add document `id`'s records; false when it was already here.
    pub(super) fn add(&mut self, id: &str, received_at: i64, keys: Vec<PushedKey>) -> bool {
        if !self.documents.insert(id.to_string()) {
            return false;
        }
        self.newest = self.newest.max(received_at);
        for k in keys {
            self.patients.extend(k.patient);
            self.by_type.entry(k.rtype).or_default().insert(k.id);
        }
        true
    }

    pub(super) fn has_document(&self, id: &str) -> bool {
        self.documents.contains(id)
    }

    pub(super) fn newest(&self) -> i64 {
        self.newest
    }

    pub(super) fn has(&self, rtype: &str, id: &str) -> bool {
        self.by_type.get(rtype).is_some_and(|ids| ids.contains(id))
    }

    pub(super) fn has_type(&self, rtype: &str) -> bool {
        self.by_type.contains_key(rtype)
    }

    pub(super) fn has_patient(&self, patient: &str) -> bool {
        self.patients.contains(patient)
    }
}

/// Which pushed records a request wants.
#[derive(Debug, Clone)]
pub enum Wanted<'a> {
    /// One record.
    Key(&'a str, &'a str),
    /// Every record about these patients, of one type or all.
    Patients(Vec<&'a str>, Option<&'a str>),
    /// Every record of a type.
    Type(&'a str),
}

/// The index keys of `records`.
fn keys_of(records: &[Resource]) -> Vec<PushedKey> {
    records
        .iter()
        .map(|r| PushedKey {
            rtype: r.type_name().to_string(),
            id: r.id().unwrap_or("").to_string(),
            patient: super::patient_of(r),
        })
        .collect()
}

/// Store the records of pushed document `document` (from `owner`, received at
/// `received_at`) on `conn`, normally the push's own transaction, and return their index
/// keys. A record already stored (another instance filling in the same older document)
/// is left as it is.
pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    document: &str,
    received_at: i64,
    owner: &str,
    records: &[Resource],
) -> Result<Vec<PushedKey>, sqlx::Error> {
    let keys = keys_of(records);
    for (i, (r, key)) in records.iter().zip(&keys).enumerate() {
        let body = serde_json::to_string(r).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO pushed_record (rtype, id, document, entry_index, received_at, owner, patient, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (rtype, id) DO NOTHING",
        )
        .bind(&key.rtype)
        .bind(&key.id)
        .bind(document)
        .bind(i as i64)
        .bind(received_at)
        .bind(owner)
        .bind(&key.patient)
        .bind(body)
        .execute(&mut *conn)
        .await?;
    }
    Ok(keys)
}

/// The pushed records `wanted` that `keep` accepts, in the order the documents arrived.
/// Each row is decoded and judged in turn, so a search without a patient holds only
/// what matches it, not every pushed record of the type.
pub async fn fetch(
    pool: &sqlx::AnyPool,
    wanted: Wanted<'_>,
    mut keep: impl FnMut(&Stored) -> bool,
) -> Result<Vec<Arc<Stored>>, sqlx::Error> {
    let (clause, binds): (String, Vec<&str>) = match wanted {
        Wanted::Key(rtype, id) => ("rtype = $1 AND id = $2".into(), vec![rtype, id]),
        Wanted::Type(rtype) => ("rtype = $1".into(), vec![rtype]),
        Wanted::Patients(patients, _) if patients.is_empty() => return Ok(Vec::new()),
        Wanted::Patients(patients, rtype) => {
            let list: Vec<String> = (1..=patients.len()).map(|i| format!("${i}")).collect();
            let mut clause = format!("patient IN ({})", list.join(", "));
            if rtype.is_some() {
                clause.push_str(&format!(" AND rtype = ${}", patients.len() + 1));
            }
            (clause, patients.into_iter().chain(rtype).collect())
        }
    };
    // Only column names and numbered placeholders are written into the text; every
    // value is bound.
    let sql = format!(
        "SELECT owner, patient, body FROM pushed_record WHERE {clause} ORDER BY received_at, document, entry_index"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        q = q.bind(b);
    }
    let mut rows = q.fetch(pool);
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let (owner, patient, body): (String, Option<String>, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let resource: Resource = serde_json::from_str(&body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let json = RawValue::from_string(body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let stored = Stored { resource, json, owner, site: PUSH_SITE.into(), patient };
        if keep(&stored) {
            out.push(Arc::new(stored));
        }
    }
    Ok(out)
}

/// The keys of the records of every document received at or after `since`, by
/// document: one query where a start-up would otherwise ask once per document.
pub async fn keys_since(pool: &sqlx::AnyPool, since: i64) -> Result<HashMap<String, Vec<PushedKey>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT r.document, r.rtype, r.id, r.patient FROM pushed_record r \
         JOIN pushed_document d ON d.id = r.document WHERE d.received_at >= $1",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<String, Vec<PushedKey>> = HashMap::new();
    for r in rows {
        out.entry(r.try_get(0)?).or_default().push(key_at(&r, 1)?);
    }
    Ok(out)
}

/// The keys of the records stored for document `document` (none for a document stored
/// before records were kept apart: [`insert`] them first).
pub async fn keys_of_document(pool: &sqlx::AnyPool, document: &str) -> Result<Vec<PushedKey>, sqlx::Error> {
    let rows = sqlx::query("SELECT rtype, id, patient FROM pushed_record WHERE document = $1")
        .bind(document)
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| key_at(r, 0)).collect()
}

/// The key in `row`'s columns `first` (type), `first + 1` (id) and `first + 2` (patient).
fn key_at(row: &sqlx::any::AnyRow, first: usize) -> Result<PushedKey, sqlx::Error> {
    Ok(PushedKey { rtype: row.try_get(first)?, id: row.try_get(first + 1)?, patient: row.try_get(first + 2)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rtype: &str, id: &str, patient: Option<&str>) -> PushedKey {
        PushedKey { rtype: rtype.into(), id: id.into(), patient: patient.map(Into::into) }
    }

    #[test]
    fn the_index_answers_by_key_type_and_patient_and_takes_a_document_once() {
        let mut idx = PushedIndex::default();
        let keys = vec![key("Composition", "c1", Some("p1")), key("Organization", "o1", None)];
        assert!(idx.add("doc-1", 100, keys.clone()));
        assert!(!idx.add("doc-1", 500, keys), "the same document twice");
        assert_eq!(idx.newest(), 100);
        assert!(idx.add("doc-2", 90, vec![key("Composition", "c2", Some("p2"))]));
        assert_eq!(idx.newest(), 100, "an older document does not move the watermark back");
        assert!(idx.has_document("doc-2") && !idx.has_document("doc-3"));
        assert!(idx.has("Composition", "c2") && idx.has("Organization", "o1"));
        assert!(!idx.has("Composition", "o1") && !idx.has("Encounter", "c1"));
        assert!(idx.has_type("Composition") && !idx.has_type("Patient"));
        assert!(idx.has_patient("p1") && idx.has_patient("p2") && !idx.has_patient("o1"));
    }
}
