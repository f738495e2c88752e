//! `POST /fhir` (or `POST /fhir/Bundle`, the plain FHIR create that generic clients
//! use for a document): a hospital system pushes a FHIR document Bundle (discharge
//! summary, referral; JP-CLINS shape) for a recipient institution. The document is checked in
//! full, stored durably with its idempotency key (`Bundle.identifier`), a referral
//! grant and a delivery in the outbox — one transaction — and only then acknowledged
//! `201`. The outbox worker delivers it to the recipient's inbox in its native format.

use super::read::{audit, caller, record, Caller};
use super::FhirPath;
use crate::app::{fhir_json, ApiError, AppState};
use crate::audit::{Disclosed, Interaction, Outcome};
use crate::policy::grants::{Grant, GrantKind};
use crate::records::pushed;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use kakehashi_certs::Role;
use kakehashi_fhir::{IssueSeverity, IssueType, OperationOutcome, Resource};
use kakehashi_mappings::document::{institution_code, DocumentView, RECIPIENT_SECTION, SENDER_SECTION};
use kakehashi_mappings::Context;
use sqlx::Row;

fn invalid(expr: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid(msg, expr)
}

fn rule(expr: &str, msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest { code: IssueType::BusinessRule, diagnostics: msg.into(), expression: Some(expr.into()) }
}

/// What a checked push holds.
struct Checked {
    key: String,
    recipient: String,
    patient_local: String,
    hash: String,
    canonical: String,
}

fn check(state: &AppState, c: &Caller, bundle: &kakehashi_fhir::Bundle) -> Result<Checked, ApiError> {
    let identifier = bundle.identifier.as_ref().ok_or_else(|| {
        invalid(
            "Bundle.identifier",
            "a pushed document needs Bundle.identifier (system and value): it is the idempotency key",
        )
    })?;
    let (Some(system), Some(value)) = (&identifier.system, &identifier.value) else {
        return Err(invalid("Bundle.identifier", "Bundle.identifier needs both system and value"));
    };
    let view = DocumentView::new(bundle).map_err(|e| invalid(&e.expression, e.message))?;
    let comp = view.composition;
    let patient = view.patient().ok_or_else(|| {
        invalid("Composition.subject", "the Composition's subject must be a Patient inside the Bundle")
    })?;
    if comp.author.is_empty() {
        return Err(invalid("Composition.author", "the document needs an author"));
    }
    // A Binary is read under the patient its securityContext names; one that names
    // something else would be stored where nobody could read it, so it is refused.
    for (i, e) in bundle.entry.iter().enumerate() {
        if let Some(Resource::Binary(b)) = e.resource.as_deref() {
            let context = b.security_context.as_ref().and_then(|r| view.resolve(r));
            if !matches!(context, Some(Resource::Patient(p)) if std::ptr::eq(p, patient)) {
                return Err(invalid(
                    &format!("Bundle.entry[{i}].resource.securityContext"),
                    "a Binary's securityContext must reference the document's Patient: access to a Binary is decided by its patient",
                ));
            }
        }
    }
    // JP-CLINS requires them, and the recipients' MML (birthday, sex) cannot do without.
    if let Some(what) = kakehashi_mappings::export::mml::missing(&view) {
        return Err(invalid(what, format!("the document's patient needs {what} (JP-CLINS requires it)")));
    }
    let custodian = comp.custodian.as_ref().and_then(|r| view.resolve(r));
    match custodian {
        Some(Resource::Organization(o)) if institution_code(o).as_deref() == Some(c.who.institution.as_str()) => {}
        Some(Resource::Organization(_)) => {
            return Err(ApiError::Forbidden(
                "Composition.custodian names another institution: a hospital pushes only documents it is custodian of"
                    .into(),
            ))
        }
        _ => {
            return Err(invalid(
                "Composition.custodian",
                "the custodian must be an Organization inside the Bundle, identified by its 10-digit institution code",
            ))
        }
    }
    if let Some(sender) = view.institution_in_section(SENDER_SECTION) {
        if sender != c.who.institution {
            return Err(ApiError::Forbidden(format!(
                "section {SENDER_SECTION} (紹介元) names {sender}, not the pushing institution"
            )));
        }
    }
    let recipient = view
        .institution_in_section(RECIPIENT_SECTION)
        .ok_or_else(|| rule("Composition.section", format!("no recipient: section {RECIPIENT_SECTION} (紹介先情報) must reference the recipient Organization by its 10-digit institution code")))?;
    if state.config.institution(&recipient).is_none() {
        return Err(rule("Composition.section", format!("recipient {recipient} is not a member of this federation")));
    }
    if recipient == c.who.institution {
        return Err(rule("Composition.section", "the recipient is the sender"));
    }
    if state.config.inbox_of(&recipient).is_none() {
        return Err(rule("Composition.section", format!("recipient {recipient} has no delivery inbox configured")));
    }
    let patient_local = patient
        .identifier
        .iter()
        .find(|i| {
            i.system.as_deref() == Some(kakehashi_mappings::codes::patient_id_system(&c.who.institution).as_str())
        })
        .and_then(|i| i.value.clone())
        .ok_or_else(|| {
            invalid(
                "Patient.identifier",
                format!(
                    "the Patient needs the sender's patient id ({})",
                    kakehashi_mappings::codes::patient_id_system(&c.who.institution)
                ),
            )
        })?;
    let canonical =
        serde_json::to_string(&Resource::Bundle(bundle.clone())).map_err(|e| ApiError::Internal(e.to_string()))?;
    let hash: String = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Checked { key: format!("{system}|{value}"), recipient, patient_local, hash, canonical })
}

/// Resources of a pushed document as records of the sender: ids derived from the push,
/// references rewritten to them, the Patient mapped onto the sender's own Patient id.
pub fn records_of(bundle: &kakehashi_fhir::Bundle, push_id: &str, ctx: &Context, patient_local: &str) -> Vec<Resource> {
    let patient_id = ctx.id_for("Patient", patient_local);
    let mut map = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (i, e) in bundle.entry.iter().enumerate() {
        let Some(r) = e.resource.as_deref() else { continue };
        let new_id = if matches!(r, Resource::Patient(_)) {
            patient_id.clone()
        } else {
            ctx.id_for(r.type_name(), &format!("{push_id}:{i}"))
        };
        let new_ref = format!("{}/{new_id}", r.type_name());
        if let Some(u) = &e.full_url {
            map.insert(u.clone(), new_ref.clone());
        }
        if let Some(id) = r.id() {
            map.insert(format!("{}/{id}", r.type_name()), new_ref.clone());
        }
        out.push((new_id, r.clone()));
    }
    out.into_iter()
        .filter(|(_, r)| !matches!(r, Resource::Patient(_)))
        .filter_map(|(id, r)| {
            let mut v = serde_json::to_value(&r).ok()?;
            v["id"] = serde_json::Value::String(id);
            rewrite(&mut v, &map);
            let r: Resource = serde_json::from_value(v).ok()?;
            Some(ctx.own(r))
        })
        .collect()
}

fn rewrite(v: &mut serde_json::Value, map: &std::collections::HashMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match (k.as_str(), x.as_str().and_then(|s| map.get(s))) {
                    ("reference", Some(new)) => *x = serde_json::Value::String(new.clone()),
                    _ => rewrite(x, map),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, map)),
        _ => {}
    }
}

/// `POST /fhir` with a document Bundle.
pub async fn push(State(state): State<AppState>, req: Request) -> Response {
    push_inner(state, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn push_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    if c.who.role != Role::HospitalSystem {
        let why = format!("documents are pushed by a hospital-system certificate, not the {} role", c.who.role);
        return Err(super::read::refuse(&state, &c, Interaction::Create, why, None).await);
    }
    let body = super::body::bytes(req.into_body(), state.config.server.max_body_bytes).await?;
    let Resource::Bundle(bundle) = super::body::resource(&body)? else {
        return Err(invalid("Bundle", "POST /fhir takes a document Bundle"));
    };
    let checked = match check(&state, &c, &bundle) {
        Ok(x) => x,
        Err(e) => {
            // Refused pushes are audited too; nothing was stored or delivered.
            audit(&state, record(&c, Interaction::Create, Outcome::Denied, Some(e.to_string()), vec![], None)).await?;
            return Err(e);
        }
    };
    let now = crate::audit::now_micros() / 1_000_000;
    let store = &state.store;
    let mut tx = store
        .begin_write(crate::store::Lock::Push)
        .await
        .map_err(|e| ApiError::unavailable("the document store is unavailable", e))?;
    let db = |e: sqlx::Error| ApiError::unavailable("the document could not be stored", e);
    let existing = sqlx::query("SELECT id, content_hash FROM pushed_document WHERE identifier = $1")
        .bind(&checked.key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    let (push_id, status) = match existing {
        Some(row) => {
            let (id, hash): (String, String) = (row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
            // Nothing to write: let the next writer (the audit log among them) in now.
            drop(tx);
            if hash != checked.hash {
                return Err(ApiError::Conflict(format!(
                    "a different document was already pushed with identifier {}",
                    checked.key
                )));
            }
            (id, StatusCode::OK)
        }
        None => {
            let id = kakehashi_mappings::stable_id(&c.who.institution, "Bundle", &checked.key);
            sqlx::query("INSERT INTO pushed_document (id, identifier, sender, recipient, patient, content_hash, bundle, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&id)
                .bind(&checked.key)
                .bind(&c.who.institution)
                .bind(&checked.recipient)
                .bind(&checked.patient_local)
                .bind(&checked.hash)
                .bind(&checked.canonical)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            let delay = (state.config.server.outbox_delay_ms / 1000) as i64;
            sqlx::query("INSERT INTO outbox (kind, destination, payload, created_at, state, attempts, next_attempt) VALUES ('deliver', $1, $2, $3, 'pending', 0, $4)")
                .bind(&checked.recipient)
                .bind(serde_json::json!({ "push": id }).to_string())
                .bind(now)
                .bind(now + delay)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            // The referral gives the recipient access to this patient at the sender.
            let ctx = Context {
                owner: c.who.institution.clone(),
                owner_name: c.who.institution_name.clone(),
                site: pushed::PUSH_SITE.into(),
                source_key: id.clone(),
            };
            let patient_id = ctx.id_for("Patient", &checked.patient_local);
            let days = state.config.server.referral_days.max(1) as i64;
            let grant = Grant {
                id: format!("referral-{id}"),
                owner: c.who.institution.clone(),
                kind: GrantKind::Referral,
                patient: patient_id.clone(),
                grantees: vec![checked.recipient.clone()],
                resource_types: vec![],
                valid_from: now,
                valid_to: now + days * 86_400,
                revoked_at: None,
                resource: referral_consent(&id, &patient_id, &c.who.institution, &checked.recipient, now, days),
            };
            let changed = crate::policy::grants::write_row(&mut tx, &grant, &c.who.fingerprint).await.map_err(db)?;
            let records = records_of(&bundle, &id, &ctx, &checked.patient_local);
            let keys = pushed::insert(&mut tx, &id, now, &c.who.institution, &records).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            // Durable from here on; the mirrors follow.
            state.policy.grants.remember(grant, changed);
            state.records.add_pushed_document(&id, now, keys);
            (id, StatusCode::CREATED)
        }
    };
    let disclosed = Disclosed {
        reference: format!("Bundle/{push_id}"),
        owner: c.who.institution.clone(),
        patient: None,
        basis: "same-site".into(),
    };
    audit(&state, record(&c, Interaction::Create, Outcome::Success, None, vec![disclosed], None)).await?;
    let oo = OperationOutcome::single(
        IssueSeverity::Information,
        IssueType::Informational,
        if status == StatusCode::CREATED {
            "document stored; delivery to the recipient is queued"
        } else {
            "this document was already received; nothing was stored again"
        },
        None,
    );
    let mut resp = fhir_json(status, &oo);
    if let Ok(v) = HeaderValue::from_str(&format!("{}/Bundle/{push_id}", c.base)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn referral_consent(push_id: &str, patient_id: &str, sender: &str, recipient: &str, from: i64, days: i64) -> String {
    let fmt = |t: i64| crate::instant::from_secs(t).unwrap_or_default();
    serde_json::json!({
        "resourceType": "Consent",
        "id": format!("referral-{push_id}"),
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": crate::policy::grants::GRANT_KIND_SYSTEM, "code": "referral"}]}],
        "patient": {"reference": format!("Patient/{patient_id}")},
        "organization": [{"identifier": {"system": kakehashi_mappings::codes::INSTITUTION_NUMBER, "value": sender}}],
        "provision": {"type": "permit", "period": {"start": fmt(from), "end": fmt(from + days * 86_400)},
            "actor": [{"role": {"text": "recipient"}, "reference": {"identifier": {"system": kakehashi_mappings::codes::INSTITUTION_NUMBER, "value": recipient}}}]}
    })
    .to_string()
}

/// `GET /fhir/Bundle/{id}/$delivery-status`: for the sender and the recipient.
pub async fn delivery_status(State(state): State<AppState>, FhirPath(id): FhirPath<String>, req: Request) -> Response {
    status_inner(state, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn status_inner(state: AppState, id: String, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    let db = |e: sqlx::Error| ApiError::unavailable("the document store is unavailable", e);
    let row = sqlx::query("SELECT sender, recipient, received_at FROM pushed_document WHERE id = $1")
        .bind(&id)
        .fetch_optional(state.store.pool())
        .await
        .map_err(db)?;
    let not_found = || ApiError::NotFound(format!("Bundle/{id} is not a document you pushed or received"));
    let reference = format!("Bundle/{id}");
    // Another institution's document answers as an absent one does, and both leave the
    // trace a refused read leaves (asking about documents by id is audited).
    let parties = match row {
        Some(row) => Some((row.try_get::<String, _>(0).map_err(db)?, row.try_get::<String, _>(1).map_err(db)?)),
        None => None,
    };
    let Some((sender, recipient)) = parties.filter(|(s, r)| c.who.institution == *s || c.who.institution == *r) else {
        let asked = super::read::absent(reference);
        let why = Some(super::read::NOT_VISIBLE.to_string());
        audit(&state, record(&c, Interaction::Read, Outcome::NotFound, why, vec![asked], None)).await?;
        return Err(not_found());
    };
    let d = crate::outbox::delivery_of(&state.store, &id).await.map_err(db)?.ok_or_else(not_found)?;
    // The sender owns the document; its recipient reads the status as a party to it.
    let basis = if c.who.institution == sender { "same-site" } else { "recipient" };
    let shown = Disclosed { reference, owner: sender.clone(), patient: None, basis: basis.into() };
    audit(&state, record(&c, Interaction::Read, Outcome::Success, Some("delivery status".into()), vec![shown], None))
        .await?;
    let mut parameter = vec![
        serde_json::json!({"name": "state", "valueCode": d.state}),
        serde_json::json!({"name": "attempts", "valueInteger": d.attempts}),
        serde_json::json!({"name": "recipient", "valueString": recipient}),
    ];
    if let Some(e) = d.last_error {
        parameter.push(serde_json::json!({"name": "lastError", "valueString": e}));
    }
    if let Some(t) = d.delivered_at.and_then(crate::instant::from_secs) {
        parameter.push(serde_json::json!({"name": "deliveredAt", "valueDateTime": t}));
    }
    Ok(fhir_json(StatusCode::OK, &serde_json::json!({"resourceType": "Parameters", "parameter": parameter})))
}

/// How far before the newest known push the periodic load looks again, in seconds.
const PUSH_LOOKBACK_SECS: i64 = 300;

/// Note the stored pushed documents not yet known here: all of them at start-up, then
/// (every few seconds) those other instances sharing the database received. A document
/// stored before its records were kept apart gets them now. Returns how many were added.
pub async fn load_pushed(
    store: &crate::store::Store,
    config: &crate::config::Config,
    records: &crate::records::Records,
) -> Result<usize, sqlx::Error> {
    // A push is stamped before it waits for the lock and commits, and instances stamp
    // their own: a document can become visible with a time older than the newest one
    // seen here. Look back well past any request's lifetime; known ids are skipped.
    let watermark = records.pushed_watermark();
    let since = watermark - PUSH_LOOKBACK_SECS;
    let docs = sqlx::query("SELECT id, received_at FROM pushed_document WHERE received_at >= $1")
        .bind(since)
        .fetch_all(store.pool())
        .await?;
    // At start-up every document is new here: all their keys in one query. Afterwards
    // only other instances' latest documents are, each asked for alone.
    let mut all_keys = match watermark {
        0 => Some(pushed::keys_since(store.pool(), since).await?),
        _ => None,
    };
    let mut added = 0;
    for row in &docs {
        let (id, received_at): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        if records.has_pushed_document(&id) {
            continue;
        }
        let mut keys = match &mut all_keys {
            Some(all) => all.remove(&id).unwrap_or_default(),
            None => pushed::keys_of_document(store.pool(), &id).await?,
        };
        if keys.is_empty() {
            let Some((sender, resources)) = records_of_stored(store, config, &id).await? else { continue };
            let mut tx = store.begin_row_write().await?;
            keys = pushed::insert(&mut tx, &id, received_at, &sender, &resources).await?;
            tx.commit().await?;
        }
        records.add_pushed_document(&id, received_at, keys);
        added += 1;
    }
    Ok(added)
}

/// The sender and the records of stored document `id`, derived from its Bundle as the
/// push derived them.
async fn records_of_stored(
    store: &crate::store::Store,
    config: &crate::config::Config,
    id: &str,
) -> Result<Option<(String, Vec<Resource>)>, sqlx::Error> {
    let Some(row) = sqlx::query("SELECT sender, patient, bundle FROM pushed_document WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
    else {
        return Ok(None);
    };
    let (sender, patient, bundle): (String, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let Ok(Resource::Bundle(b)) = serde_json::from_str::<Resource>(&bundle) else {
        tracing::error!(document = %id, "a stored pushed document is not a Bundle; its records are not served");
        return Ok(None);
    };
    let owner_name = config.institution(&sender).map(|i| i.name.clone()).unwrap_or_default();
    let ctx = Context { owner: sender.clone(), owner_name, site: pushed::PUSH_SITE.into(), source_key: id.to_string() };
    let records = records_of(&b, id, &ctx, &patient);
    Ok(Some((sender, records)))
}
