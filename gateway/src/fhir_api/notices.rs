//! `GET /fhir/Communication[/{id}]`: the break-glass notices addressed to the caller's
//! institution, for its hospital-system certificate: who read which of its patients
//! without a grant, why, and whether the notice reached its inbox. Reading them is
//! audited like any read of the institution's own records.

use super::read::{audit, caller, record};
use super::FhirPath;
use crate::app::{fhir_json, ApiError, AppState};
use crate::audit::{Disclosed, Interaction, Outcome};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use kakehashi_certs::Role;

fn disclosure(c: &super::read::Caller, id: i64, payload: &serde_json::Value) -> Disclosed {
    Disclosed {
        reference: format!("Communication/break-glass-{id}"),
        owner: c.who.institution.clone(),
        patient: payload["patient"].as_str().map(str::to_string),
        basis: "same-site".into(),
    }
}

/// Only the institution's hospital system reads its notices; any other role is
/// refused, audited.
async fn require_hospital_system(
    state: &AppState,
    c: &super::read::Caller,
    interaction: Interaction,
) -> Result<(), ApiError> {
    if c.who.role == Role::HospitalSystem {
        return Ok(());
    }
    let why = format!(
        "break-glass notices are read by the institution's hospital-system certificate, not the {} role",
        c.who.role
    );
    Err(super::read::refuse(state, c, interaction, why, None).await)
}

/// `GET /fhir/Communication`: the newest notices first (`_count`, default 50).
pub async fn search(State(state): State<AppState>, req: Request) -> Response {
    search_inner(state, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn search_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    require_hospital_system(&state, &c, Interaction::Search).await?;
    let query = req.uri().query().unwrap_or("").to_string();
    let mut count = super::params::DEFAULT_COUNT as i64;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "_count" => {
                count = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| ApiError::invalid(format!("_count `{v}` is not a non-negative integer"), "_count"))?
                    .min(super::params::MAX_COUNT as i64);
            }
            "category" if v.rsplit('|').next() == Some("break-glass") => {}
            "_format" => {}
            other if c.strict => {
                return Err(ApiError::invalid(format!("search parameter `{other}` is not supported here"), other))
            }
            _ => {}
        }
    }
    let rows = crate::outbox::notices(&state.store, &c.who.institution, None, count)
        .await
        .map_err(|e| ApiError::unavailable("the notices cannot be read now", e))?;
    let shown = rows.iter().map(|(id, p, _)| disclosure(&c, *id, p)).collect();
    audit(&state, record(&c, Interaction::Search, Outcome::Success, None, shown, Some(query))).await?;
    Ok(super::searchset(
        rows.iter().map(|(id, p, st)| {
            (format!("{}/Communication/break-glass-{id}", c.base), crate::outbox::notice(*id, p, st))
        }),
    ))
}

/// `GET /fhir/Communication/{id}`.
pub async fn read(State(state): State<AppState>, FhirPath(id): FhirPath<String>, req: Request) -> Response {
    read_inner(state, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn read_inner(state: AppState, id: String, req: Request) -> Result<Response, ApiError> {
    super::check_id(&id)?;
    let c = caller(&req, &state)?;
    require_hospital_system(&state, &c, Interaction::Read).await?;
    let not_found = || ApiError::NotFound(format!("Communication/{id} is not a notice to your institution"));
    let Some(n) = id.strip_prefix("break-glass-").and_then(|n| n.parse::<i64>().ok()) else {
        return Err(not_found());
    };
    let rows = crate::outbox::notices(&state.store, &c.who.institution, Some(n), 1)
        .await
        .map_err(|e| ApiError::unavailable("the notices cannot be read now", e))?;
    let Some((id, payload, st)) = rows.into_iter().next() else { return Err(not_found()) };
    audit(&state, record(&c, Interaction::Read, Outcome::Success, None, vec![disclosure(&c, id, &payload)], None))
        .await?;
    Ok(fhir_json(StatusCode::OK, &crate::outbox::notice(id, &payload, &st)))
}
