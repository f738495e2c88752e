//! Reads, searches and `$everything`: look up, let the policy decide per resource,
//! audit exactly what is returned, then answer. Nothing reaches the response without
//! passing through `Policy` (as [`Permitted`]) and a committed audit record.

use super::params::{self, Criterion, Search};
use crate::app::{fhir_bytes, ApiError, AppState};
use crate::audit::{now_micros, AuditRecord, Disclosed, Interaction, Outcome, Requestor};
use crate::identity::{ConnInfo, Principal};
use crate::policy::{Basis, Permitted, Presentation, ReadContext, Refusal};
use crate::records::pushed::{self, Wanted};
use crate::records::Stored;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use kakehashi_certs::Role;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// Resource types served under `/fhir/{type}`.
pub const SERVED_TYPES: &[&str] = &[
    "Patient",
    "MedicationRequest",
    "MedicationAdministration",
    "Observation",
    "Condition",
    "AllergyIntolerance",
    "Coverage",
    "DiagnosticReport",
    "Composition",
];

pub(super) struct Caller {
    pub who: Arc<Principal>,
    pub peer: String,
    pub base: String,
    pub strict: bool,
    pub ctx: ReadContext,
}

/// The header a doctor sets to read without a grant (break-glass); the value is the
/// reason, in UTF-8 or percent-encoded UTF-8.
pub const BREAK_GLASS_HEADER: &str = "kakehashi-break-glass";

fn break_glass_reason(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(BREAK_GLASS_HEADER) else { return Ok(None) };
    let raw = std::str::from_utf8(v.as_bytes()).map_err(|_| {
        ApiError::invalid("the break-glass reason must be UTF-8 (or percent-encoded UTF-8)", BREAK_GLASS_HEADER)
    })?;
    let reason: String = form_urlencoded::parse(format!("r={}", raw.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let reason = reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::invalid("a break-glass reason of 1 to 500 characters is required", BREAK_GLASS_HEADER));
    }
    Ok(Some(reason))
}

pub(super) fn caller(req: &Request, state: &AppState) -> Result<Caller, ApiError> {
    let who = req
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| ApiError::Forbidden("no principal on this request".into()))?;
    let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer.to_string()).unwrap_or_default();
    let ctx =
        ReadContext { now: crate::audit::now_micros() / 1_000_000, break_glass: break_glass_reason(req.headers())? };
    Ok(Caller {
        who,
        peer,
        base: base_url(req.headers(), req.uri(), state),
        strict: prefers_strict(req.headers()),
        ctx,
    })
}

/// `https://host/fhir`, from the request's authority when it is a plain host name.
fn base_url(headers: &HeaderMap, uri: &http::Uri, state: &AppState) -> String {
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .filter(|h| {
            !h.is_empty() && h.len() < 256 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or_else(|| state.config.server.listen.to_string());
    format!("https://{host}/fhir")
}

fn prefers_strict(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=strict"))
}

fn check_type(ty: &str) -> Result<(), ApiError> {
    if SERVED_TYPES.contains(&ty) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("resource type `{ty}` is not served here")))
    }
}

/// The pushed records `wanted` that `keep` accepts, read from the database when there
/// are any.
async fn pushed_records(
    state: &AppState,
    wanted: Wanted<'_>,
    keep: impl FnMut(&Stored) -> bool,
) -> Result<Vec<Arc<Stored>>, ApiError> {
    let Some(wanted) = state.records.pushed_wanted(wanted) else { return Ok(Vec::new()) };
    pushed::fetch(state.store.pool(), wanted, keep)
        .await
        .map_err(|e| ApiError::Unavailable(format!("pushed documents cannot be read now: {e}")))
}

/// A resource as the audit record names it; `basis` is empty for a refusal.
fn disclosure(s: &Stored, basis: String) -> Disclosed {
    Disclosed { reference: s.key(), owner: s.owner.clone(), patient: s.patient.clone(), basis }
}

fn disclosed(p: &Permitted) -> Disclosed {
    disclosure(&p.record, p.permit.basis().code())
}

pub(super) fn record(
    c: &Caller,
    interaction: Interaction,
    outcome: Outcome,
    desc: Option<String>,
    disclosed: Vec<Disclosed>,
    query: Option<String>,
) -> AuditRecord {
    let glass = disclosed.iter().any(|d| d.basis == Basis::BreakGlass.code());
    AuditRecord {
        interaction,
        outcome,
        outcome_desc: desc,
        requestor: Requestor::Principal(c.who.clone()),
        source_address: c.peer.clone(),
        disclosed,
        query,
        purpose: if glass { "ETREAT" } else { "TREAT" }.into(),
        break_glass_reason: if glass { c.ctx.break_glass.clone() } else { None },
        recorded_micros: now_micros(),
    }
}

/// Break-glass reads notify each owner crossed through the outbox, before disclosure.
async fn notify_break_glass(state: &AppState, c: &Caller, permitted: &[&Permitted]) -> Result<(), ApiError> {
    let mut owners: Vec<&str> =
        permitted.iter().filter(|p| *p.permit.basis() == Basis::BreakGlass).map(|p| p.record.owner.as_str()).collect();
    owners.sort_unstable();
    owners.dedup();
    for owner in owners {
        let resources: Vec<String> =
            permitted.iter().filter(|p| p.record.owner == owner).map(|p| p.record.key()).collect();
        let payload = serde_json::json!({
            "reader": { "institution": c.who.institution, "name": c.who.institution_name, "terminal": c.who.terminal, "certificate": c.who.fingerprint },
            "reason": c.ctx.break_glass,
            "resources": resources,
            "at": c.ctx.now,
        });
        crate::outbox::enqueue(&state.store, "break-glass", owner, &payload).await.map_err(|e| {
            ApiError::Unavailable(format!("the break-glass notice could not be stored ({e}); nothing was disclosed"))
        })?;
    }
    Ok(())
}

/// Write the audit record or refuse: nothing is disclosed unaudited.
pub(super) async fn audit(state: &AppState, rec: AuditRecord) -> Result<(), ApiError> {
    state.audit.record(rec).await.map(|_| ()).map_err(|e| ApiError::Unavailable(format!("{e}; nothing was disclosed")))
}

/// A role-level refusal: audited, then 403 (reveals nothing about existence).
async fn refuse_role(
    state: &AppState,
    c: &Caller,
    interaction: Interaction,
    r: Refusal,
    query: Option<String>,
) -> ApiError {
    let rec = record(c, interaction, Outcome::Denied, Some(r.to_string()), vec![], query);
    match audit(state, rec).await {
        Ok(()) => ApiError::Forbidden(r.to_string()),
        Err(e) => e,
    }
}

/// `GET /fhir/{type}/{id}`.
pub async fn read(State(state): State<AppState>, Path((ty, id)): Path<(String, String)>, req: Request) -> Response {
    read_inner(state, ty, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn read_inner(state: AppState, ty: String, id: String, req: Request) -> Result<Response, ApiError> {
    check_type(&ty)?;
    let c = caller(&req, &state)?;
    if let Err(r) = state.policy.may_read_type(&c.who, &ty) {
        return Err(refuse_role(&state, &c, Interaction::Read, r, None).await);
    }
    let snap = state.records.snapshot();
    let not_found = || ApiError::NotFound(format!("{ty}/{id} is not known or not visible to you"));
    let pushed;
    let stored = match snap.get(&ty, &id) {
        Some(s) => s,
        None => {
            pushed = pushed_records(&state, Wanted::Key(&ty, &id), |_| true).await?;
            pushed.first().ok_or_else(not_found)?
        }
    };
    match state.policy.decide(&c.who, stored, &c.ctx) {
        Ok(permit) => {
            let p = Permitted { permit, record: stored.clone() };
            notify_break_glass(&state, &c, &[&p]).await?;
            audit(&state, record(&c, Interaction::Read, Outcome::Success, None, vec![disclosed(&p)], None)).await?;
            Ok(fhir_bytes(StatusCode::OK, p.record.json.get().to_string()))
        }
        Err(r) => {
            // Existence must not leak across a boundary: the refusal looks like absence.
            let asked = disclosure(stored, String::new());
            audit(&state, record(&c, Interaction::Read, Outcome::Denied, Some(r.to_string()), vec![asked], None))
                .await?;
            Err(not_found())
        }
    }
}

/// `GET /fhir/{type}?...`.
pub async fn search(State(state): State<AppState>, Path(ty): Path<String>, req: Request) -> Response {
    search_inner(state, ty, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn search_inner(state: AppState, ty: String, req: Request) -> Result<Response, ApiError> {
    check_type(&ty)?;
    let c = caller(&req, &state)?;
    let query = req.uri().query().unwrap_or("").to_string();
    if let Err(r) = state.policy.may_read_type(&c.who, &ty) {
        return Err(refuse_role(&state, &c, Interaction::Search, r, Some(query)).await);
    }
    let search = params::parse(&ty, &query, c.strict)?;
    let snap = state.records.snapshot();
    let patient_filter = search.criteria.iter().find_map(|cr| match cr {
        Criterion::Patient(ids) => Some(ids.clone()),
        _ => None,
    });
    let candidates: Vec<&Arc<Stored>> = match &patient_filter {
        Some(ids) => ids.iter().flat_map(|id| snap.for_patient(id)).filter(|s| s.resource.type_name() == ty).collect(),
        None => snap.of_type(&ty).collect(),
    };
    let birth_of = |s: &Stored| -> Option<String> {
        let p = snap.get("Patient", s.patient.as_deref()?)?;
        match &p.resource {
            kakehashi_fhir::Resource::Patient(p) => p.birth_date.clone(),
            _ => None,
        }
    };
    let matches =
        |s: &Stored| params::matches(&s.resource, s.patient.as_deref(), birth_of(s).as_deref(), &search.criteria);
    let pushed = match &patient_filter {
        Some(ids) => {
            let ids = ids.iter().map(String::as_str).collect();
            pushed_records(&state, Wanted::Patients(ids, Some(&ty)), matches).await?
        }
        None => pushed_records(&state, Wanted::Type(&ty), matches).await?,
    };
    let matching: Vec<&Arc<Stored>> = candidates.into_iter().filter(|s| matches(s)).chain(&pushed).collect();
    // A pharmacy that presents the prescription number and the patient's exact birth
    // date may read that prescription and its Patient; a wrong birth date matches
    // nothing, which reveals nothing about whether the prescription exists.
    let presented = (c.who.role == Role::Pharmacy && ty == "MedicationRequest")
        .then(|| Presentation::from_params(&search.used))
        .flatten();
    let mut includes: Vec<Permitted> = Vec::new();
    let permitted: Vec<Permitted> = if let Some(presented) = &presented {
        let mut out = Vec::new();
        for s in matching {
            let birth = birth_of(s);
            let permit = state
                .policy
                .decide(&c.who, s, &c.ctx)
                .or_else(|_| state.policy.presented_prescription(&c.who, s, presented, birth.as_deref()));
            let Ok(permit) = permit else { continue };
            out.push(Permitted { permit, record: s.clone() });
            let Some(p) = s.patient.as_deref().and_then(|id| snap.get("Patient", id)) else { continue };
            if !includes.iter().any(|i| Arc::ptr_eq(&i.record, p)) {
                if let Ok(permit) = state.policy.presented_prescription(&c.who, p, presented, birth.as_deref()) {
                    includes.push(Permitted { permit, record: p.clone() });
                }
            }
        }
        out
    } else {
        let mut permitted = state.policy.filter(&c.who, matching, &c.ctx);
        if ty == "Patient"
            && search.criteria.iter().any(|cr| matches!(cr, Criterion::Token { name, .. } if name == "identifier"))
        {
            // The same person at other sites, reached only from a record the caller
            // may see, each still decided by its own owner's policy.
            let links = state.linkage.links(&snap);
            let mut linked: Vec<&Arc<Stored>> = Vec::new();
            for p in &permitted {
                for (id, _) in links.linked(p.record.resource.id().unwrap_or("")) {
                    if let Some(s) = snap.get("Patient", id) {
                        if !permitted.iter().any(|q| Arc::ptr_eq(&q.record, s))
                            && !linked.iter().any(|l| Arc::ptr_eq(l, s))
                        {
                            linked.push(s);
                        }
                    }
                }
            }
            permitted.extend(state.policy.filter(&c.who, linked, &c.ctx));
        }
        permitted
    };
    let asked = Asked { interaction: Interaction::Search, path: &ty, search: &search, query: Some(query) };
    respond_page(&state, &c, asked, permitted, includes).await
}

/// `GET /fhir/Patient/{id}/$everything`.
pub async fn everything(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    everything_inner(state, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn everything_inner(state: AppState, id: String, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    let query = req.uri().query().unwrap_or("").to_string();
    if let Err(r) = state.policy.may_read_type(&c.who, "Patient") {
        return Err(refuse_role(&state, &c, Interaction::Everything, r, None).await);
    }
    let mut search = params::parse("Patient", &query, c.strict)?;
    if !search.criteria.is_empty() {
        return Err(ApiError::invalid("$everything takes only _count and _offset here", "Patient/$everything"));
    }
    search.used.clear();
    let snap = state.records.snapshot();
    let pushed = pushed_records(&state, Wanted::Patients(vec![&id], None), |_| true).await?;
    let mut permitted = state.policy.filter(&c.who, snap.for_patient(&id).chain(&pushed), &c.ctx);
    if !permitted.is_empty() {
        // The person's records at every linked site, each under its own owner's policy.
        let links = state.linkage.links(&snap);
        let others: Vec<&str> = links.linked(&id).map(|(other, _)| other).collect();
        let pushed = pushed_records(&state, Wanted::Patients(others.clone(), None), |_| true).await?;
        for other in &others {
            permitted.extend(state.policy.filter(&c.who, snap.for_patient(other), &c.ctx));
        }
        permitted.extend(state.policy.filter(&c.who, &pushed, &c.ctx));
    }
    if permitted.is_empty() {
        let asked: Vec<Disclosed> =
            snap.get("Patient", &id).map(|s| disclosure(s, String::new())).into_iter().collect();
        audit(
            &state,
            record(&c, Interaction::Everything, Outcome::Denied, Some(Refusal::NoGrant.to_string()), asked, None),
        )
        .await?;
        return Err(ApiError::NotFound(format!("Patient/{id} is not known or not visible to you")));
    }
    let path = format!("Patient/{id}/$everything");
    let asked = Asked { interaction: Interaction::Everything, path: &path, search: &search, query: None };
    respond_page(&state, &c, asked, permitted, vec![]).await
}

#[derive(Serialize)]
struct BundleOut<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    type_: &'static str,
    total: usize,
    link: Vec<LinkOut>,
    entry: Vec<EntryOut<'a>>,
}

#[derive(Serialize)]
struct LinkOut {
    relation: &'static str,
    url: String,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    full_url: Option<String>,
    resource: &'a RawValue,
    search: SearchOut,
}

#[derive(Serialize)]
struct SearchOut {
    mode: &'static str,
}

fn page_url(base: &str, path: &str, used: &[(String, String)], count: usize, offset: usize) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in used {
        q.append_pair(k, v);
    }
    q.append_pair("_count", &count.to_string());
    if offset > 0 {
        q.append_pair("_offset", &offset.to_string());
    }
    format!("{base}/{path}?{}", q.finish())
}

/// What a search or `$everything` asked for, as its page links and audit record name it.
struct Asked<'a> {
    interaction: Interaction,
    /// The path under the base, for page links.
    path: &'a str,
    search: &'a Search,
    /// The query string, for the audit record.
    query: Option<String>,
}

/// Audit the page of `permitted` (and its `includes`) that `asked` selects, then answer it.
async fn respond_page(
    state: &AppState,
    c: &Caller,
    asked: Asked<'_>,
    permitted: Vec<Permitted>,
    includes: Vec<Permitted>,
) -> Result<Response, ApiError> {
    let Asked { interaction, path, search, query } = asked;
    let total = permitted.len();
    let start = search.offset.min(total);
    let end = (start + search.count).min(total);
    let page = &permitted[start..end];
    let shown: Vec<&Permitted> = page.iter().chain(includes.iter()).collect();
    notify_break_glass(state, c, &shown).await?;
    audit(state, record(c, interaction, Outcome::Success, None, shown.iter().map(|p| disclosed(p)).collect(), query))
        .await?;

    let mut link = vec![LinkOut { relation: "self", url: page_url(&c.base, path, &search.used, search.count, start) }];
    if end < total && search.count > 0 {
        link.push(LinkOut { relation: "next", url: page_url(&c.base, path, &search.used, search.count, end) });
    }
    if start > 0 {
        link.push(LinkOut {
            relation: "previous",
            url: page_url(&c.base, path, &search.used, search.count, start.saturating_sub(search.count)),
        });
    }
    let outcome = (!search.ignored.is_empty()).then(|| {
        let oo = kakehashi_fhir::OperationOutcome::single(
            kakehashi_fhir::IssueSeverity::Warning,
            kakehashi_fhir::IssueType::NotSupported,
            format!("search parameters ignored: {}", search.ignored.join(", ")),
            None,
        );
        serde_json::value::to_raw_value(&oo).ok()
    });
    let modes = page.iter().map(|p| (p, "match")).chain(includes.iter().map(|p| (p, "include")));
    let mut entry: Vec<EntryOut<'_>> = modes
        .map(|(p, mode)| EntryOut {
            full_url: Some(format!("{}/{}", c.base, p.record.key())),
            resource: &p.record.json,
            search: SearchOut { mode },
        })
        .collect();
    if let Some(Some(oo)) = &outcome {
        entry.push(EntryOut { full_url: None, resource: oo, search: SearchOut { mode: "outcome" } });
    }
    let body = BundleOut { resource_type: "Bundle", type_: "searchset", total, link, entry };
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(fhir_bytes(StatusCode::OK, bytes))
}
