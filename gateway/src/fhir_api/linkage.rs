//! `/fhir/Linkage`: which Patient records of different sites are one person.
//! `GET ?item=Patient/{id}` shows the caller the links of a patient it may see;
//! `POST` lets an owner of one of two records link them (`active: true`) or declare
//! them different people (`active: false`), overriding automatic linkage. Both are
//! audited; neither discloses a record the caller's policy does not already allow.

use super::read::{absent, audit, caller, disclosure, record, Caller, NOT_VISIBLE};
use crate::app::{fhir_bytes, ApiError, AppState};
use crate::audit::{Disclosed, Interaction, Outcome};
use crate::linkage::{DecidedBy, Decision};
use crate::policy::Permit;
use crate::records::Stored;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use kakehashi_certs::Role;
use kakehashi_fhir::{Extension, Identifier, IssueType, Linkage, LinkageItem, Reference};
use kakehashi_mappings::codes::INSTITUTION_NUMBER;
use std::sync::Arc;

/// Extension on `Linkage.item` naming why the record is linked.
pub const LINK_BASIS_EXTENSION: &str = "urn:kakehashi:link-basis";

/// Linkage is for clinical roles; any other is refused, audited.
async fn require_clinical_role(state: &AppState, c: &Caller, interaction: Interaction) -> Result<(), ApiError> {
    match c.who.role {
        Role::HospitalSystem | Role::ClinicTerminal | Role::Doctor => Ok(()),
        role => {
            let why = format!("patient linkage is not for the {role} role");
            Err(super::read::refuse(state, c, interaction, why, None).await)
        }
    }
}

fn patient_id(r: &Reference, expr: &str) -> Result<String, ApiError> {
    r.reference
        .as_deref()
        .and_then(|r| r.strip_prefix("Patient/"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_string)
        .ok_or_else(|| ApiError::invalid("must reference Patient/{id}", expr))
}

/// A Patient the caller may see, with the permit that says so; or what the audit
/// event of the refusal names (the record refused, or the id asked for and absent)
/// and why.
async fn visible(
    state: &AppState,
    c: &Caller,
    id: &str,
) -> Result<Result<(Arc<Stored>, Permit), (Disclosed, Outcome, String)>, ApiError> {
    let p = state
        .records
        .patient(&state.store, id)
        .await
        .map_err(|e| ApiError::unavailable("the records cannot be read now; nothing was disclosed", e))?;
    Ok(match p {
        None => Err((absent(format!("Patient/{id}")), Outcome::NotFound, NOT_VISIBLE.to_string())),
        Some(p) => match state.policy.decide(&c.who, &p, &c.ctx) {
            Ok(permit) => Ok((p, permit)),
            Err(r) => Err((disclosure(&p, String::new()), Outcome::Denied, r.to_string())),
        },
    })
}

fn shown(p: &Stored, permit: &Permit) -> Disclosed {
    Disclosed { reference: p.key(), owner: p.owner.clone(), patient: p.patient.clone(), basis: permit.basis().code() }
}

fn item(type_: &str, id: &str, basis: Option<&str>) -> LinkageItem {
    LinkageItem {
        extension: basis
            .map(|b| Extension { url: LINK_BASIS_EXTENSION.into(), value_code: Some(b.into()), ..Default::default() })
            .into_iter()
            .collect(),
        type_: type_.into(),
        resource: Reference { reference: Some(format!("Patient/{id}")), ..Default::default() },
    }
}

/// `POST /fhir/Linkage`.
pub async fn create(State(state): State<AppState>, req: Request) -> Response {
    create_inner(state, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn create_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    require_clinical_role(&state, &c, Interaction::Create).await?;
    let body = super::body::bytes(req.into_body(), state.config.server.max_body_bytes).await?;
    let linkage: Linkage = super::body::parse(&body)?;
    if linkage.item.len() != 2 {
        return Err(ApiError::invalid("a Linkage names exactly two Patient records", "Linkage.item"));
    }
    let a = patient_id(&linkage.item[0].resource, "Linkage.item[0].resource")?;
    let b = patient_id(&linkage.item[1].resource, "Linkage.item[1].resource")?;
    if a == b {
        return Err(ApiError::invalid("the two items name the same Patient", "Linkage.item"));
    }
    // A record the caller cannot see gets the same answer as one that does not exist.
    let not_visible = |i: usize, id: &str| ApiError::BadRequest {
        code: IssueType::BusinessRule,
        diagnostics: format!("Patient/{id} is not known or not visible to you"),
        expression: Some(format!("Linkage.item[{i}].resource")),
    };
    // Asking about a record the caller may not see is audited like a refused read, so
    // that guessing ids through linkage leaves the same trace as guessing them by read.
    let mut seen = Vec::new();
    for (i, id) in [&a, &b].into_iter().enumerate() {
        match visible(&state, &c, id).await? {
            Ok(p) => seen.push(p),
            Err((asked, outcome, why)) => {
                audit(&state, record(&c, Interaction::Create, outcome, Some(why), vec![asked], None)).await?;
                return Err(not_visible(i, id));
            }
        }
    }
    let [(pa, permit_a), (pb, permit_b)]: [(Arc<Stored>, Permit); 2] =
        seen.try_into().map_err(|_| ApiError::Internal("two linkage items".into()))?;
    if pa.owner != c.who.institution && pb.owner != c.who.institution {
        return Err(ApiError::Forbidden(
            "only an institution owning one of the two records links or separates them".into(),
        ));
    }
    let linked = linkage.active.unwrap_or(true);
    let decision = Decision { a: a.clone(), b: b.clone(), linked };
    let principal = format!("{} {}", c.who.terminal, c.who.fingerprint);
    state
        .linkage
        .decide(&state.store, &decision, DecidedBy { institution: &c.who.institution, principal: &principal })
        .await
        .map_err(|e| ApiError::unavailable("the decision could not be stored", e))?;
    let desc = Some(if linked { "patients linked" } else { "patients separated" }.to_string());
    let disclosed = vec![shown(&pa, &permit_a), shown(&pb, &permit_b)];
    audit(&state, record(&c, Interaction::Create, Outcome::Success, desc, disclosed, None)).await?;

    let out = Linkage {
        active: Some(linked),
        author: Some(Reference {
            identifier: Some(Identifier {
                system: Some(INSTITUTION_NUMBER.into()),
                value: Some(c.who.institution.clone()),
                ..Default::default()
            }),
            display: Some(c.who.institution_name.clone()),
            type_: Some("Organization".into()),
            ..Default::default()
        }),
        item: vec![item("source", &a, Some("manual")), item("alternate", &b, Some("manual"))],
        ..Default::default()
    };
    let bytes = serde_json::to_vec(&out).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut resp = fhir_bytes(StatusCode::CREATED, bytes);
    if let Ok(v) = HeaderValue::from_str(&format!("{}/Linkage?item=Patient/{a}", c.base)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /fhir/Linkage?item=Patient/{id}`.
pub async fn search(State(state): State<AppState>, req: Request) -> Response {
    search_inner(state, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn search_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    require_clinical_role(&state, &c, Interaction::Search).await?;
    let query = req.uri().query().unwrap_or("").to_string();
    let mut item_of = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "item" | "source" => {
                let r = Reference { reference: Some(v.to_string()), ..Default::default() };
                item_of = Some(patient_id(&r, k.as_ref())?);
            }
            "_format" | "_count" => {}
            other if c.strict => return Err(ApiError::invalid(format!("unknown parameter `{other}`"), other)),
            _ => {}
        }
    }
    let id = item_of.ok_or_else(|| ApiError::invalid("item=Patient/{id} is required", "item"))?;
    let mut found = Vec::new();
    let mut disclosed = Vec::new();
    if let Ok((p, permit)) = visible(&state, &c, &id).await? {
        disclosed.push(shown(&p, &permit));
        let linked = state
            .linkage
            .person(&state.records, &id)
            .await
            .map_err(|e| ApiError::unavailable("the records cannot be read now; nothing was disclosed", e))?;
        let mut items = vec![item("source", &id, None)];
        for (other, basis) in linked {
            // Links to records the caller may not see are not shown: they reveal a person.
            if let Ok((o, permit)) = visible(&state, &c, &other).await? {
                disclosed.push(shown(&o, &permit));
                items.push(item("alternate", &other, Some(basis.code())));
            }
        }
        if items.len() > 1 {
            let linkage =
                Linkage { id: Some(format!("person-{id}")), active: Some(true), item: items, ..Default::default() };
            found.push((format!("{}/Linkage/person-{id}", c.base), linkage));
        }
    }
    audit(&state, record(&c, Interaction::Search, Outcome::Success, None, disclosed, Some(query))).await?;
    Ok(super::searchset(found))
}
