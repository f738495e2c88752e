//! `/fhir/Consent`: grants across an owner's boundary, managed by the owner's own
//! hospital-system certificate. `POST` creates (validated in full, stored atomically),
//! `GET` lists or reads the caller's own grants, `DELETE` revokes (the row is kept).
//! See SECURITY.md for the grant kinds and their defaults.

use super::read::{audit, caller, record, Caller, SERVED_TYPES};
use super::FhirPath;
use crate::app::{fhir_bytes, fhir_json, ApiError, AppState};
use crate::audit::{Disclosed, Interaction, Outcome};
use crate::config::InstitutionKind;
use crate::policy::grants::{Grant, GrantKind, GrantStoreError, ALL_MEMBERS, GRANT_KIND_SYSTEM, NETWORK_SYSTEM};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use kakehashi_certs::Role;
use kakehashi_fhir::{Coding, Consent, IssueType, Resource};
use kakehashi_mappings::codes::{INSTITUTION_NUMBER, OWNER_SYSTEM};

/// Only the owner's hospital system manages grants; any other role is refused, audited.
async fn require_owner_system(state: &AppState, c: &Caller, interaction: Interaction) -> Result<(), ApiError> {
    if c.who.role == Role::HospitalSystem {
        return Ok(());
    }
    let why = format!("grants are managed by the owner's hospital-system certificate, not the {} role", c.who.role);
    Err(super::read::refuse(state, c, interaction, why, None).await)
}

fn bad(expr: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid(msg, expr)
}

fn rule(expr: &str, msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest { code: IssueType::BusinessRule, diagnostics: msg.into(), expression: Some(expr.into()) }
}

fn instant(v: &str, expr: &str) -> Result<i64, ApiError> {
    super::params::date_range(v)
        .map(|(s, _)| s)
        .ok_or_else(|| bad(expr, format!("`{v}` is not a FHIR date or dateTime")))
}

fn random_id() -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| ApiError::Internal("no randomness for an id".into()))?;
    Ok(format!("grant-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()))
}

/// Turn a posted Consent into a grant, checking everything before anything is stored.
async fn validate(state: &AppState, c: &Caller, mut consent: Consent) -> Result<Grant, ApiError> {
    if consent.status != "active" {
        return Err(bad("Consent.status", "a new grant must have status `active`; revoke one with DELETE"));
    }
    let kind_code = consent
        .category
        .iter()
        .flat_map(|cc| cc.coding.iter())
        .find(|k| k.system.as_deref() == Some(GRANT_KIND_SYSTEM))
        .and_then(|k| k.code.clone())
        .ok_or_else(|| {
            bad(
                "Consent.category",
                format!(
                    "a category coding from {GRANT_KIND_SYSTEM} (consent, referral, delegation, pharmacy) is required"
                ),
            )
        })?;
    let kind = GrantKind::from_code(&kind_code)
        .ok_or_else(|| bad("Consent.category", format!("grant kind `{kind_code}` is unknown")))?;

    // The grant belongs to the caller's institution; a Consent claiming another owner is forged.
    for (i, org) in consent.organization.iter().enumerate() {
        let code = org.identifier.as_ref().and_then(|id| id.value.as_deref());
        if code != Some(c.who.institution.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "Consent.organization[{i}] names another institution; an institution grants only across its own boundary"
            )));
        }
    }
    if let Some(meta) = &consent.meta {
        if meta
            .security
            .iter()
            .any(|s| s.system.as_deref() == Some(OWNER_SYSTEM) && s.code.as_deref() != Some(&c.who.institution))
        {
            return Err(ApiError::Forbidden("Consent.meta.security claims another owner".into()));
        }
    }

    let patient = match consent.patient.as_ref().and_then(|r| r.reference.as_deref()) {
        Some(r) => {
            let id = r.strip_prefix("Patient/").ok_or_else(|| bad("Consent.patient", "must reference Patient/{id}"))?;
            let found = state
                .records
                .patient(&state.store, id)
                .await
                .map_err(|e| ApiError::unavailable("the records cannot be read now; nothing was stored", e))?;
            // Absent and foreign patients get the same answer: no hint across boundaries.
            match found {
                Some(p) if p.owner == c.who.institution => id.to_string(),
                _ => {
                    return Err(rule(
                        "Consent.patient",
                        format!("Patient/{id} is not a patient of institution {}", c.who.institution),
                    ))
                }
            }
        }
        None if kind == GrantKind::Delegation => String::new(),
        None => return Err(bad("Consent.patient", format!("a {} grant names the patient", kind.code()))),
    };

    let provision = consent
        .provision
        .as_ref()
        .ok_or_else(|| bad("Consent.provision", "a provision with period and actor is required"))?;
    if provision.type_.as_deref().is_some_and(|t| t != "permit") {
        return Err(bad("Consent.provision.type", "only `permit` provisions are supported"));
    }
    let period =
        provision.period.as_ref().ok_or_else(|| bad("Consent.provision.period", "a validity period is required"))?;
    let from = match period.start.as_deref() {
        Some(s) => instant(s, "Consent.provision.period.start")?,
        None => c.ctx.now,
    };
    let to = period
        .end
        .as_deref()
        .map(|e| {
            super::params::date_range(e)
                .map(|(_, end)| end)
                .ok_or_else(|| bad("Consent.provision.period.end", format!("`{e}` is not a FHIR date or dateTime")))
        })
        .transpose()?
        .ok_or_else(|| bad("Consent.provision.period.end", "a grant must end: give provision.period.end"))?;
    if from >= to {
        return Err(bad("Consent.provision.period", "the period ends before it starts"));
    }
    if to <= c.ctx.now {
        return Err(bad("Consent.provision.period.end", "the period has already ended"));
    }

    let mut grantees = Vec::new();
    for (i, actor) in provision.actor.iter().enumerate() {
        let expr = format!("Consent.provision.actor[{i}].reference");
        let id = actor.reference.identifier.as_ref().ok_or_else(|| bad(&expr, "name the institution by identifier"))?;
        match (id.system.as_deref(), id.value.as_deref()) {
            (Some(NETWORK_SYSTEM), Some(ALL_MEMBERS)) if kind == GrantKind::Consent => {
                grantees.push(ALL_MEMBERS.to_string())
            }
            (Some(NETWORK_SYSTEM), _) => return Err(bad(&expr, "only patient consent may name every network member")),
            (Some(system), Some(code)) if kakehashi_mappings::codes::is_institution_system(system) => {
                let inst = state
                    .config
                    .institution(code)
                    .ok_or_else(|| bad(&expr, format!("institution {code} is not a member of this federation")))?;
                if code == c.who.institution {
                    return Err(bad(&expr, "an institution needs no grant for its own records"));
                }
                match (kind, inst.kind) {
                    (GrantKind::Pharmacy, InstitutionKind::Pharmacy) => {}
                    (GrantKind::Pharmacy, _) => return Err(bad(&expr, format!("{code} is not a pharmacy"))),
                    (_, InstitutionKind::Pharmacy | InstitutionKind::AuditBody) => {
                        return Err(bad(&expr, format!("a {} grant cannot name {code} ({:?})", kind.code(), inst.kind)))
                    }
                    _ => {}
                }
                grantees.push(code.to_string());
            }
            _ => {
                return Err(bad(&expr, format!("identifier system must be {INSTITUTION_NUMBER} (or {NETWORK_SYSTEM})")))
            }
        }
    }
    if grantees.is_empty() {
        return Err(bad("Consent.provision.actor", "name at least one institution the grant is for"));
    }
    let mut resource_types = Vec::new();
    for (i, class) in provision.class_.iter().enumerate() {
        let ty = class.code.clone().unwrap_or_default();
        if !SERVED_TYPES.contains(&ty.as_str()) {
            return Err(bad(
                &format!("Consent.provision.class[{i}]"),
                format!("`{ty}` is not a resource type served here"),
            ));
        }
        if kind == GrantKind::Pharmacy && !matches!(ty.as_str(), "MedicationRequest" | "Patient") {
            return Err(bad(
                &format!("Consent.provision.class[{i}]"),
                "a pharmacy grant covers MedicationRequest and Patient only",
            ));
        }
        resource_types.push(ty);
    }

    let id = random_id()?;
    consent.id = Some(id.clone());
    // Echo the effective start, so what the owner reviews is what is enforced.
    if let Some(p) = consent.provision.as_mut().and_then(|p| p.period.as_mut()) {
        if p.start.is_none() {
            p.start = crate::instant::from_secs(from);
        }
    }
    consent.organization = vec![kakehashi_fhir::Reference {
        identifier: Some(kakehashi_fhir::Identifier {
            system: Some(INSTITUTION_NUMBER.into()),
            value: Some(c.who.institution.clone()),
            ..Default::default()
        }),
        display: Some(c.who.institution_name.clone()),
        ..Default::default()
    }];
    let meta = consent.meta.get_or_insert_with(Default::default);
    meta.security.retain(|s| s.system.as_deref() != Some(OWNER_SYSTEM));
    meta.security.push(Coding::new(OWNER_SYSTEM, &c.who.institution));
    let resource = serde_json::to_string(&Resource::Consent(consent)).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Grant {
        id,
        owner: c.who.institution.clone(),
        kind,
        patient,
        grantees,
        resource_types,
        valid_from: from,
        valid_to: to,
        revoked_at: None,
        resource,
    })
}

fn grant_disclosed(g: &Grant) -> Disclosed {
    Disclosed {
        reference: format!("Consent/{}", g.id),
        owner: g.owner.clone(),
        patient: (!g.patient.is_empty()).then(|| g.patient.clone()),
        basis: "same-site".into(),
    }
}

/// `POST /fhir/Consent`.
pub async fn create(State(state): State<AppState>, req: Request) -> Response {
    create_inner(state, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn create_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    require_owner_system(&state, &c, Interaction::Create).await?;
    let body = super::body::bytes(req.into_body(), state.config.server.max_body_bytes).await?;
    let Resource::Consent(consent) = super::body::resource(&body)? else {
        return Err(bad("Consent", "POST /fhir/Consent takes a Consent resource"));
    };
    let grant = validate(&state, &c, consent).await?;
    match state.policy.grants.insert(&state.store, &grant, &c.who.fingerprint).await {
        Ok(()) => {}
        Err(e @ GrantStoreError::Overlap(_)) => return Err(ApiError::Conflict(e.to_string())),
        Err(e) => return Err(ApiError::unavailable("the grant could not be stored", e)),
    }
    audit(&state, record(&c, Interaction::Create, Outcome::Success, None, vec![grant_disclosed(&grant)], None)).await?;
    let mut resp = fhir_bytes(StatusCode::CREATED, grant.resource.clone());
    if let Ok(v) = HeaderValue::from_str(&format!("{}/Consent/{}", c.base, grant.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn with_status(g: &Grant, now: i64) -> Option<Consent> {
    let mut consent = g.consent()?;
    consent.status = if g.revoked_at.is_some() || g.valid_to <= now { "inactive" } else { "active" }.into();
    Some(consent)
}

/// `GET /fhir/Consent?patient=&kind=` — the caller's institution's own grants.
pub async fn search(State(state): State<AppState>, req: Request) -> Response {
    search_inner(state, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn search_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    require_owner_system(&state, &c, Interaction::Search).await?;
    let mut patient = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "patient" => patient = Some(v.trim_start_matches("Patient/").to_string()),
            "_format" | "_count" => {}
            other if c.strict => {
                return Err(bad(other, format!("search parameter `{other}` is not supported for Consent")))
            }
            _ => {}
        }
    }
    let grants =
        state.policy.grants.find(|g| g.owner == c.who.institution && patient.as_ref().is_none_or(|p| &g.patient == p));
    audit(
        &state,
        record(&c, Interaction::Search, Outcome::Success, None, grants.iter().map(grant_disclosed).collect(), None),
    )
    .await?;
    Ok(super::searchset(
        grants
            .iter()
            .filter_map(|g| with_status(g, c.ctx.now))
            .map(|consent| (format!("{}/Consent/{}", c.base, consent.id.clone().unwrap_or_default()), consent)),
    ))
}

/// `GET /fhir/Consent/{id}`.
pub async fn read(State(state): State<AppState>, FhirPath(id): FhirPath<String>, req: Request) -> Response {
    read_inner(state, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn read_inner(state: AppState, id: String, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    require_owner_system(&state, &c, Interaction::Read).await?;
    let g = state
        .policy
        .grants
        .by_id(&id)
        .filter(|g| g.owner == c.who.institution)
        .ok_or_else(|| ApiError::NotFound(format!("Consent/{id} is not a grant of your institution")))?;
    audit(&state, record(&c, Interaction::Read, Outcome::Success, None, vec![grant_disclosed(&g)], None)).await?;
    let consent = with_status(&g, c.ctx.now).ok_or_else(|| ApiError::Internal("stored grant is unreadable".into()))?;
    Ok(fhir_json(StatusCode::OK, &Resource::Consent(consent)))
}

/// `DELETE /fhir/Consent/{id}`: revoke now.
pub async fn revoke(State(state): State<AppState>, FhirPath(id): FhirPath<String>, req: Request) -> Response {
    revoke_inner(state, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn revoke_inner(state: AppState, id: String, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    require_owner_system(&state, &c, Interaction::Delete).await?;
    match state.policy.grants.revoke(&state.store, &c.who.institution, &id, c.ctx.now).await {
        Ok(()) => {}
        Err(GrantStoreError::NotFound(_)) => {
            return Err(ApiError::NotFound(format!("Consent/{id} is not an active grant of your institution")))
        }
        Err(e) => return Err(ApiError::unavailable("the grant could not be revoked", e)),
    }
    let g = state.policy.grants.by_id(&id);
    let disclosed = g.as_ref().map(grant_disclosed).into_iter().collect();
    audit(&state, record(&c, Interaction::Delete, Outcome::Success, None, disclosed, None)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
