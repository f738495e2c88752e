//! Break-glass declarations: a doctor reading without a grant does so for one person,
//! for a limited time, for a stated reason, and every owner crossed is told. The first
//! break-glass read of a person's record at an owner by a terminal opens a declaration
//! (stored with that owner's notice in the outbox, one transaction, before anything is
//! disclosed); later reads within `policy.break_glass_hours` use it, each still audited
//! with its reason. A terminal holds declarations for at most
//! `policy.break_glass_max_patients` people at once, so break-glass cannot become a way
//! to read patient after patient.

use crate::identity::Principal;
use crate::store::Store;
use sqlx::Row;

/// Why a break-glass read could not go ahead.
#[derive(Debug, thiserror::Error)]
pub enum BreakGlassError {
    /// The terminal already holds the most open declarations allowed.
    #[error("this terminal already holds {0} open break-glass declarations, the most allowed; each lasts {1} hours")]
    TooMany(u64, u64),
    /// The declaration or its notice could not be stored.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The notice kind in the outbox.
pub const NOTICE_KIND: &str = "break-glass";

/// What a break-glass read crosses: the owner, its patient record, and the person
/// (the patient the doctor asked for; the same for the person's records elsewhere).
#[derive(Debug, Clone, Copy)]
pub struct Crossing<'a> {
    /// The owning institution.
    pub owner: &'a str,
    /// Its patient record.
    pub patient: &'a str,
    /// The person read.
    pub person: &'a str,
}

/// Use the open declaration of `who` for `crossing`, or open one with `reason`,
/// storing the owner's notice with it. Returns the declaration's id and whether it
/// was opened now.
pub async fn declare(
    store: &Store,
    who: &Principal,
    crossing: Crossing<'_>,
    reason: &str,
    now: i64,
    settings: &crate::config::PolicySettings,
) -> Result<(String, bool), BreakGlassError> {
    let Crossing { owner, patient, person } = crossing;
    let open = sqlx::query(
        "SELECT id, owner, patient, person FROM break_glass WHERE reader_institution = $1 AND reader_terminal = $2 AND expires_at > $3",
    )
    .bind(&who.institution)
    .bind(&who.terminal)
    .bind(now)
    .fetch_all(store.pool())
    .await?;
    let mut people = std::collections::HashSet::new();
    for r in &open {
        let (id, o, p): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        if o == owner && p == patient {
            return Ok((id, false));
        }
        people.insert(r.try_get::<String, _>(3)?);
    }
    if !people.contains(person) && people.len() as u64 >= settings.break_glass_max_patients {
        return Err(BreakGlassError::TooMany(settings.break_glass_max_patients, settings.break_glass_hours));
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}\n{}\n{owner}\n{patient}\n{now}", who.institution, who.terminal).as_bytes(),
    );
    let id = format!("bg-{}", digest.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect::<String>());
    let expires = now + settings.break_glass_hours.max(1) as i64 * 3600;
    let mut tx = store.begin_row_write().await?;
    sqlx::query(
        "INSERT INTO break_glass (id, reader_institution, reader_terminal, fingerprint, owner, patient, person, reason, opened_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&id)
    .bind(&who.institution)
    .bind(&who.terminal)
    .bind(&who.fingerprint)
    .bind(owner)
    .bind(patient)
    .bind(person)
    .bind(reason)
    .bind(now)
    .bind(expires)
    .execute(&mut *tx)
    .await?;
    let notice = serde_json::json!({
        "declaration": id,
        "reader": { "institution": who.institution, "name": who.institution_name, "terminal": who.terminal, "certificate": who.fingerprint },
        "owner": owner,
        "patient": patient,
        "reason": reason,
        "at": now,
        "expires": expires,
    });
    sqlx::query(
        "INSERT INTO outbox (kind, destination, payload, created_at, state, attempts, next_attempt) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $4)",
    )
    .bind(NOTICE_KIND)
    .bind(owner)
    .bind(notice.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((id, true))
}
