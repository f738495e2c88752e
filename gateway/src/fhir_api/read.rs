//! Reads, searches and `$everything`: look up, let the policy decide per resource,
//! audit exactly what is returned, then answer. Nothing reaches the response without
//! passing through `Policy` (as [`Permitted`]) and a committed audit record.

use super::params::{self, Criterion, Search};
use super::FhirPath;
use crate::app::{fhir_bytes, ApiError, AppState};
use crate::audit::{now_micros, AuditRecord, Disclosed, Interaction, Outcome, Requestor};
use crate::identity::{ConnInfo, Principal};
use crate::policy::{break_glass, Basis, BreakGlass, BreakGlassCode, Permitted, Presentation, ReadContext, Refusal};
use crate::records::Stored;
use axum::extract::{Request, State};
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
    "Encounter",
    "Procedure",
    "Immunization",
    "ServiceRequest",
    "MedicationDispense",
    "Specimen",
    "Appointment",
    "DocumentReference",
    "Binary",
];

pub(super) struct Caller {
    pub who: Arc<Principal>,
    pub peer: String,
    pub base: String,
    pub strict: bool,
    pub ctx: ReadContext,
    /// The break-glass declaration sent with the request (its patients are set by the
    /// handler once it knows which patient is read).
    pub glass: Option<(BreakGlassCode, Option<String>)>,
}

impl Caller {
    /// The read context with break-glass reaching `patients` (one person) only.
    fn glass_for(&self, patients: Vec<String>) -> ReadContext {
        ReadContext {
            now: self.ctx.now,
            break_glass: self.glass.clone().map(|(code, text)| BreakGlass { code, text, patients }),
        }
    }
}

/// The header a doctor sets to read one patient without a grant (break-glass):
/// `<code>` or `<code>; <free text>` (UTF-8 or percent-encoded UTF-8), the code one of
/// `emergency-treatment`, `unconscious-patient`, `disaster` or `other` (text required).
pub const BREAK_GLASS_HEADER: &str = "kakehashi-break-glass";

fn break_glass_reason(headers: &HeaderMap) -> Result<Option<(BreakGlassCode, Option<String>)>, ApiError> {
    let Some(v) = headers.get(BREAK_GLASS_HEADER) else { return Ok(None) };
    let raw = std::str::from_utf8(v.as_bytes()).map_err(|_| {
        ApiError::invalid("the break-glass reason must be UTF-8 (or percent-encoded UTF-8)", BREAK_GLASS_HEADER)
    })?;
    let decoded: String = form_urlencoded::parse(format!("r={}", raw.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let (code, text) = match decoded.split_once(';') {
        Some((c, t)) => (c.trim(), Some(t.trim().to_string()).filter(|t| !t.is_empty())),
        None => (decoded.trim(), None),
    };
    let codes = || BreakGlassCode::ALL.iter().map(|c| c.code()).collect::<Vec<_>>().join(", ");
    let code = BreakGlassCode::from_code(code).ok_or_else(|| {
        ApiError::invalid(
            format!("the break-glass header starts with a reason code ({}), then `;` and free text", codes()),
            BREAK_GLASS_HEADER,
        )
    })?;
    if code == BreakGlassCode::Other && text.is_none() {
        return Err(ApiError::invalid(
            "break-glass for `other` needs free text: `other; <reason>`",
            BREAK_GLASS_HEADER,
        ));
    }
    if text.as_ref().is_some_and(|t| t.chars().count() > 500) {
        return Err(ApiError::invalid("the break-glass text is at most 500 characters", BREAK_GLASS_HEADER));
    }
    Ok(Some((code, text)))
}

pub(super) fn caller(req: &Request, state: &AppState) -> Result<Caller, ApiError> {
    let who = req
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| ApiError::Forbidden("no principal on this request".into()))?;
    let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer.to_string()).unwrap_or_default();
    let ctx = ReadContext { now: crate::audit::now_micros() / 1_000_000, break_glass: None };
    Ok(Caller { who, peer, base: state.base_url.clone(), strict: prefers_strict(req.headers()), ctx, glass: None })
}

/// The caller of a read, search or `$everything`, with its break-glass declaration; a
/// malformed declaration is audited (a probe of the emergency path leaves a trace)
/// and refused.
async fn reader(
    state: &AppState,
    (mut c, glass): Declared,
    interaction: Interaction,
    query: Option<String>,
) -> Result<Caller, ApiError> {
    match glass {
        Ok(glass) => {
            c.glass = glass;
            Ok(c)
        }
        Err(e) => Err(invalid_request(state, &c, interaction, e, query).await),
    }
}

/// A caller and its break-glass declaration (code and reason), or why it is malformed.
type Declared = (Caller, Result<Option<(BreakGlassCode, Option<String>)>, ApiError>);

/// The caller and its break-glass declaration as sent, read before anything awaits
/// (a request is not shared across threads).
fn declared(req: &Request, state: &AppState) -> Result<Declared, ApiError> {
    Ok((caller(req, state)?, break_glass_reason(req.headers())))
}

/// A malformed request of a principal: audited as such, then answered 400.
async fn invalid_request(
    state: &AppState,
    c: &Caller,
    interaction: Interaction,
    e: ApiError,
    query: Option<String>,
) -> ApiError {
    let rec = record(c, interaction, Outcome::Invalid, Some(format!("invalid request: {e}")), vec![], query);
    match audit(state, rec).await {
        Ok(()) => e,
        Err(a) => a,
    }
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

/// A read that could not reach the records (a site's storage unmounted, the index
/// down): audited as a failure, then 503; nothing is disclosed.
async fn unreadable(
    state: &AppState,
    c: &Caller,
    interaction: Interaction,
    e: crate::records::RecordsError,
    query: Option<String>,
) -> ApiError {
    let public =
        "the records cannot be read now (a site's storage or the records index is unavailable); nothing was disclosed";
    let rec = record(c, interaction, Outcome::Failed, Some(public.into()), vec![], query);
    match audit(state, rec).await {
        Ok(()) => ApiError::unavailable(public, e),
        Err(a) => a,
    }
}

/// A resource as the audit record names it; `basis` is empty for a refusal.
pub(super) fn disclosure(s: &Stored, basis: String) -> Disclosed {
    Disclosed { reference: s.key(), owner: s.owner.clone(), patient: s.patient.clone(), basis }
}

/// What was asked for and does not exist: no owner, no patient.
pub(super) fn absent(reference: String) -> Disclosed {
    Disclosed { reference, owner: String::new(), patient: None, basis: String::new() }
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
    let reason = c.glass.as_ref().map(|(code, text)| match text {
        Some(t) => format!("{}; {t}", code.code()),
        None => code.code().to_string(),
    });
    AuditRecord {
        interaction,
        outcome,
        outcome_desc: desc,
        requestor: Requestor::Principal(c.who.clone()),
        source_address: c.peer.clone(),
        disclosed,
        query,
        purpose: if glass { "ETREAT" } else { "TREAT" }.into(),
        break_glass_reason: if glass { reason } else { None },
        recorded_micros: now_micros(),
    }
}

/// Break-glass reads of `person` open (or use) a declaration per owner and patient
/// crossed, each new one stored with the owner's notice, before anything is disclosed.
async fn declare_break_glass(
    state: &AppState,
    c: &Caller,
    person: Option<&str>,
    permitted: &[&Permitted],
) -> Result<(), ApiError> {
    let mut crossed: Vec<(&str, &str)> = permitted
        .iter()
        .filter(|p| *p.permit.basis() == Basis::BreakGlass)
        .filter_map(|p| Some((p.record.owner.as_str(), p.record.patient.as_deref()?)))
        .collect();
    crossed.sort_unstable();
    crossed.dedup();
    let Some(reason) = c.glass_for(vec![]).break_glass.map(|g| g.reason()) else { return Ok(()) };
    for (owner, patient) in crossed {
        let crossing = break_glass::Crossing { owner, patient, person: person.unwrap_or(patient) };
        let declared =
            break_glass::declare(&state.store, &c.who, crossing, &reason, c.ctx.now, &state.config.policy).await;
        match declared {
            Ok(_) => {}
            Err(break_glass::BreakGlassError::TooMany(..)) => {
                let why = declared.err().map(|e| e.to_string()).unwrap_or_default();
                audit(state, record(c, Interaction::Read, Outcome::Denied, Some(why.clone()), vec![], None)).await?;
                return Err(ApiError::TooManyRequests { message: why, retry_after: 3600 });
            }
            Err(e) => {
                return Err(ApiError::unavailable(
                    "the break-glass declaration could not be stored; nothing was disclosed",
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Write the audit record or refuse: nothing is disclosed unaudited.
pub(super) async fn audit(state: &AppState, rec: AuditRecord) -> Result<(), ApiError> {
    state
        .audit
        .record(rec)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::unavailable("the audit log is unavailable; nothing was disclosed", e))
}

/// A role-level refusal: audited, then 403 (reveals nothing about existence).
async fn refuse_role(
    state: &AppState,
    c: &Caller,
    interaction: Interaction,
    r: Refusal,
    query: Option<String>,
) -> ApiError {
    refuse(state, c, interaction, r.to_string(), query).await
}

/// A request the caller's role may not make: audited as a refusal, then 403 (or the
/// audit's own error when the refusal cannot be written).
pub(super) async fn refuse(
    state: &AppState,
    c: &Caller,
    interaction: Interaction,
    why: String,
    query: Option<String>,
) -> ApiError {
    let rec = record(c, interaction, Outcome::Denied, Some(why.clone()), vec![], query);
    match audit(state, rec).await {
        Ok(()) => ApiError::Forbidden(why),
        Err(e) => e,
    }
}

/// `GET /fhir/{type}/{id}`.
pub async fn read(
    State(state): State<AppState>,
    FhirPath((ty, id)): FhirPath<(String, String)>,
    req: Request,
) -> Response {
    read_inner(state, ty, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn read_inner(state: AppState, ty: String, id: String, req: Request) -> Result<Response, ApiError> {
    check_type(&ty)?;
    let c = reader(&state, declared(&req, &state)?, Interaction::Read, None).await?;
    if let Err(e) = super::check_id(&id) {
        return Err(invalid_request(&state, &c, Interaction::Read, e, None).await);
    }
    if let Err(r) = state.policy.may_read_type(&c.who, &ty) {
        return Err(refuse_role(&state, &c, Interaction::Read, r, None).await);
    }
    let not_found = || ApiError::NotFound(format!("{ty}/{id} is not known or not visible to you"));
    let stored = match state.records.get(&state.store, &ty, &id).await {
        Ok(s) => s,
        Err(e) => return Err(unreadable(&state, &c, Interaction::Read, e, None).await),
    };
    // An absent record and a refused one take the same path: audited, then 404, so
    // neither the answer nor its timing tells whether it exists.
    let Some(stored) = stored else {
        let asked = absent(format!("{ty}/{id}"));
        audit(&state, record(&c, Interaction::Read, Outcome::NotFound, Some(NOT_VISIBLE.into()), vec![asked], None))
            .await?;
        return Err(not_found());
    };
    let ctx = c.glass_for(stored.patient.iter().cloned().collect());
    match state.policy.decide(&c.who, &stored, &ctx) {
        Ok(permit) => {
            let p = Permitted { permit, record: stored.clone() };
            declare_break_glass(&state, &c, p.record.patient.as_deref(), &[&p]).await?;
            audit(&state, record(&c, Interaction::Read, Outcome::Success, None, vec![disclosed(&p)], None)).await?;
            Ok(fhir_bytes(StatusCode::OK, p.record.json.get().to_string()))
        }
        Err(r) => {
            // Existence must not leak across a boundary: the refusal looks like absence.
            let asked = disclosure(&stored, String::new());
            audit(&state, record(&c, Interaction::Read, Outcome::Denied, Some(r.to_string()), vec![asked], None))
                .await?;
            Err(not_found())
        }
    }
}

/// What an absent record's audit event says (and what a refused one says to the
/// reader's own auditors).
pub const NOT_VISIBLE: &str = "not found, or not visible to this reader";

/// The one patient a search is about (break-glass reaches no further), if it names one.
fn one_patient(ty: &str, search: &Search) -> Option<String> {
    let mut found = search.criteria.iter().filter_map(|cr| match cr {
        Criterion::Patient(ids) if ids.len() == 1 => Some(ids[0].clone()),
        Criterion::Id(ids) if ty == "Patient" && ids.len() == 1 => Some(ids[0].clone()),
        _ => None,
    });
    let first = found.next()?;
    // Two patient criteria naming different patients is not one patient.
    found.all(|other| other == first).then_some(first)
}

/// `GET /fhir/{type}?...`.
pub async fn search(State(state): State<AppState>, FhirPath(ty): FhirPath<String>, req: Request) -> Response {
    search_inner(state, ty, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn search_inner(state: AppState, ty: String, req: Request) -> Result<Response, ApiError> {
    check_type(&ty)?;
    let query = req.uri().query().unwrap_or("").to_string();
    let c = reader(&state, declared(&req, &state)?, Interaction::Search, Some(query.clone())).await?;
    if let Err(r) = state.policy.may_read_type(&c.who, &ty) {
        return Err(refuse_role(&state, &c, Interaction::Search, r, Some(query)).await);
    }
    let search = match params::parse(&ty, &query, c.strict) {
        Ok(s) => s,
        Err(e) => return Err(invalid_request(&state, &c, Interaction::Search, e, Some(query)).await),
    };
    // Break-glass is for one patient at a time, never a search across patients.
    let glass_patient = one_patient(&ty, &search);
    if c.glass.is_some() && glass_patient.is_none() {
        let why =
            "break-glass reads one patient at a time: search with exactly one patient (patient=, or _id= for Patient)";
        audit(&state, record(&c, Interaction::Search, Outcome::Denied, Some(why.into()), vec![], Some(query))).await?;
        return Err(ApiError::Forbidden(why.into()));
    }
    let ctx = c.glass_for(glass_patient.into_iter().collect());
    // A pharmacy that presents the prescription number and the patient's exact birth
    // date may read that prescription and its Patient; a wrong birth date matches
    // nothing, which reveals nothing about whether the prescription exists.
    let presented = (c.who.role == Role::Pharmacy && ty == "MedicationRequest")
        .then(|| Presentation::from_params(&search.used))
        .flatten();
    if presented.is_some() {
        if let Err(wait) = state.prescription_lookups.take(&c.who.fingerprint) {
            let why = format!(
                "presented-prescription lookups are limited to {} a minute per certificate; retry in {wait} s",
                state.config.policy.prescription_lookups_per_minute
            );
            audit(&state, record(&c, Interaction::Search, Outcome::Denied, Some(why.clone()), vec![], Some(query)))
                .await?;
            return Err(ApiError::TooManyRequests { message: why, retry_after: wait });
        }
    }
    let found = if ty == "Patient" {
        find_patients(&state, &c, &search, &ctx).await
    } else {
        find_records(&state, &c, &ty, &search, &ctx, presented.as_ref()).await
    };
    let found = match found {
        Ok(f) => f,
        Err(Found::Refused(e)) => {
            let why = e.to_string();
            audit(&state, record(&c, Interaction::Search, Outcome::Invalid, Some(why), vec![], Some(query))).await?;
            return Err(e);
        }
        Err(Found::Unreadable(e)) => return Err(unreadable(&state, &c, Interaction::Search, e, Some(query)).await),
    };
    let asked = |query| Asked {
        interaction: Interaction::Search,
        path: &ty,
        search: &search,
        query,
        person: ctx.break_glass.as_ref().and_then(|g| g.patients.first()).map(String::as_str),
    };
    if presented.is_some() && found.total == 0 {
        // A failed lookup is audited as such: a sweep shows as a run of these.
        let why = "presented prescription: no prescription matches this number and birth date";
        audit(&state, record(&c, Interaction::Search, Outcome::NotFound, Some(why.into()), vec![], Some(query)))
            .await?;
        return respond(&state, &c, asked(None), found, false).await;
    }
    respond(&state, &c, asked(Some(query)), found, true).await
}

/// What a search found: the permitted matches of the page asked for, their total, and
/// records included with them.
struct Page {
    total: usize,
    /// The page's matches (already sliced by `_offset` and `_count`).
    matches: Vec<Permitted>,
    includes: Vec<Permitted>,
}

/// Why a search found nothing to answer with.
enum Found {
    /// Refused as asked (too costly): 400, audited.
    Refused(ApiError),
    /// The records could not be read: 503, audited.
    Unreadable(crate::records::RecordsError),
}

impl From<crate::records::RecordsError> for Found {
    fn from(e: crate::records::RecordsError) -> Found {
        Found::Unreadable(e)
    }
}

fn too_costly(msg: String) -> Found {
    Found::Refused(ApiError::BadRequest {
        code: kakehashi_fhir::IssueType::TooCostly,
        diagnostics: msg,
        expression: None,
    })
}

/// Matches to the page `search` asks for.
fn page_of(search: &Search, mut permitted: Vec<Permitted>, includes: Vec<Permitted>) -> Page {
    let total = permitted.len();
    let start = search.offset.min(total);
    let end = (start + search.count).min(total);
    permitted.truncate(end);
    let matches = permitted.split_off(start);
    Page { total, matches, includes }
}

/// Patients matching `search` the reader may see: the index answers the parameters
/// (each exactly as the parameters match a Patient) within the reader's scope; the
/// policy counts the total on what the index knows, and only the page's Patients are
/// read. An identifier search also reaches the same person's records at other sites.
async fn find_patients(state: &AppState, c: &Caller, search: &Search, ctx: &ReadContext) -> Result<Page, Found> {
    const MAX_MATCHES: i64 = 10_000;
    let records = &state.records;
    let pg = records.index().is_some_and(|i| i.backend() == crate::store::Backend::Postgres);
    let mut filter = crate::records::index::PatientFilter::default();
    for cr in &search.criteria {
        match cr {
            Criterion::Id(ids) => filter.ids(ids),
            Criterion::Str { name, values, modifier } => {
                let how = match modifier {
                    params::StrMatch::Prefix => crate::records::index::NameMatch::Prefix,
                    params::StrMatch::Exact => crate::records::index::NameMatch::Exact,
                    params::StrMatch::Contains => crate::records::index::NameMatch::Contains,
                };
                filter.name(name, values, how, pg);
            }
            Criterion::Token { name, values } if name == "identifier" => filter.identifier(values),
            Criterion::Token { name, values } if name == "gender" => {
                filter.gender(&values.iter().filter_map(|(_, c)| c.clone()).collect::<Vec<_>>())
            }
            Criterion::Date { name, prefix, start, end } if name == "birthdate" => filter.birth(*prefix, *start, *end),
            _ => {}
        }
    }
    let scope = state.policy.scope(&c.who, "Patient", ctx);
    if scope.patients.len() <= 1000 {
        filter.scope(&scope.owners, &scope.patients);
    }
    let mut rows = records.find_patients(&filter, MAX_MATCHES + 1).await?;
    if rows.len() as i64 > MAX_MATCHES {
        return Err(too_costly(format!(
            "more than {MAX_MATCHES} Patients match; narrow the search (identifier, a longer name, birthdate)"
        )));
    }
    // Patients given as resources (tests, benchmarks) are matched on the resource.
    rows.extend(
        records
            .fixed_patients()
            .filter(|s| params::matches(&s.resource, s.patient.as_deref(), None, &search.criteria))
            .map(row_of),
    );
    let visible = |r: &crate::records::index::PatientRow| {
        state.policy.basis(&c.who, "Patient", &r.owner, Some(&r.id), ctx).is_ok()
    };
    rows.retain(|r| visible(r));
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows.dedup_by(|a, b| a.id == b.id);
    if search.criteria.iter().any(|cr| matches!(cr, Criterion::Token { name, .. } if name == "identifier")) {
        // The same person at other sites, reached only from a record the caller may
        // see, each still decided by its own owner's policy; after the direct matches.
        let mut linked_rows = Vec::new();
        for direct in &rows {
            let linked: Vec<String> =
                state.linkage.person(records, &direct.id).await?.into_iter().map(|(o, _)| o).collect();
            let linked: Vec<&str> = linked.iter().map(String::as_str).collect();
            linked_rows.extend(records.patient_rows(&linked).await?.into_iter().filter(|r| visible(r)));
        }
        linked_rows.sort_by(|a, b| a.id.cmp(&b.id));
        linked_rows.dedup_by(|a, b| a.id == b.id);
        linked_rows.retain(|l| !rows.iter().any(|r| r.id == l.id));
        rows.extend(linked_rows);
    }
    // The total is decided on the index entries; only the page's Patients are read,
    // and decided again, each, on the resource.
    let total = rows.len();
    let start = search.offset.min(total);
    let end = start.saturating_add(search.count).min(total);
    let ids: Vec<&str> = rows[start..end].iter().map(|r| r.id.as_str()).collect();
    let loaded = records.of_patients(&state.store, &ids, Some("Patient"), |_| true).await?;
    let mut matches: Vec<Permitted> = Vec::new();
    for id in ids {
        let Some(s) = loaded.iter().find(|s| s.patient.as_deref() == Some(id)) else { continue };
        if let Ok(permit) = state.policy.decide(&c.who, s, ctx) {
            matches.push(Permitted { permit, record: s.clone() });
        }
    }
    Ok(Page { total, matches, includes: vec![] })
}

/// The index entry of a Patient given as a resource.
fn row_of(s: &Arc<Stored>) -> crate::records::index::PatientRow {
    let id = s.patient.clone().unwrap_or_default();
    crate::records::index::PatientRow { id: id.clone(), site: s.site.clone(), owner: s.owner.clone(), local: id }
}

/// Records of a type other than Patient: those of the patients the search names, of
/// the patients holding a presented prescription number, of the ids asked for, or of
/// every patient the reader may see at all when that is few enough.
async fn find_records(
    state: &AppState,
    c: &Caller,
    ty: &str,
    search: &Search,
    ctx: &ReadContext,
    presented: Option<&Presentation>,
) -> Result<Page, Found> {
    let records = &state.records;
    fn narrow(patients: &mut Option<Vec<String>>, ids: Vec<String>) {
        *patients = Some(match patients.take() {
            Some(before) => before.into_iter().filter(|p| ids.contains(p)).collect(),
            None => ids,
        })
    }
    let mut patients: Option<Vec<String>> = None;
    for cr in &search.criteria {
        if let Criterion::Patient(ids) = cr {
            narrow(&mut patients, ids.clone());
        }
    }
    let mut by_id: Vec<Arc<Stored>> = Vec::new();
    if patients.is_none() {
        if let Some(ids) = search.criteria.iter().find_map(|cr| match cr {
            Criterion::Id(ids) => Some(ids),
            _ => None,
        }) {
            for id in ids {
                by_id.extend(records.get(&state.store, ty, id).await?);
            }
            narrow(&mut patients, vec![]);
        } else if ty == "MedicationRequest" {
            if let Some(values) = search.criteria.iter().find_map(|cr| match cr {
                Criterion::Token { name, values } if name == "identifier" => Some(values),
                _ => None,
            }) {
                let mut ids = Vec::new();
                for (_, number) in values {
                    if let Some(n) = number {
                        ids.extend(records.prescribed(n).await?);
                    }
                }
                narrow(&mut patients, ids);
            }
        }
    }
    let patients = match patients {
        Some(p) => p,
        None => {
            let limit = state.config.records.max_search_patients as i64;
            let scope = state.policy.scope(&c.who, ty, ctx);
            records.patients_in(&scope, limit).await?.ok_or_else(|| {
                too_costly(format!(
                    "this search would read the records of more than {limit} patients: search {ty} with patient= (or identifier=)"
                ))
            })?
        }
    };
    let ids: Vec<&str> = patients.iter().map(String::as_str).collect();
    let mut all = records.of_patients(&state.store, &ids, None, |_| true).await?;
    all.extend(by_id);
    let births: std::collections::HashMap<&str, &str> = all
        .iter()
        .filter_map(|s| match &s.resource {
            kakehashi_fhir::Resource::Patient(p) => Some((p.id.as_deref()?, p.birth_date.as_deref()?)),
            _ => None,
        })
        .collect();
    let birth_of = |s: &Stored| s.patient.as_deref().and_then(|p| births.get(p).copied());
    let matching: Vec<&Arc<Stored>> = all
        .iter()
        .filter(|s| s.resource.type_name() == ty)
        .filter(|s| params::matches(&s.resource, s.patient.as_deref(), birth_of(s), &search.criteria))
        .collect();
    let mut includes: Vec<Permitted> = Vec::new();
    let permitted: Vec<Permitted> = if let Some(presented) = presented {
        let mut out = Vec::new();
        for s in matching {
            let birth = birth_of(s);
            let permit = state
                .policy
                .decide(&c.who, s, ctx)
                .or_else(|_| state.policy.presented_prescription(&c.who, s, presented, birth));
            let Ok(permit) = permit else { continue };
            out.push(Permitted { permit, record: s.clone() });
            let Some(p) = all.iter().find(|p| p.resource.type_name() == "Patient" && p.patient == s.patient) else {
                continue;
            };
            if !includes.iter().any(|i| Arc::ptr_eq(&i.record, p)) {
                if let Ok(permit) = state.policy.presented_prescription(&c.who, p, presented, birth) {
                    includes.push(Permitted { permit, record: p.clone() });
                }
            }
        }
        out
    } else {
        state.policy.filter(&c.who, matching, ctx)
    };
    Ok(page_of(search, permitted, includes))
}

/// `GET /fhir/Patient/{id}/$everything`.
pub async fn everything(State(state): State<AppState>, FhirPath(id): FhirPath<String>, req: Request) -> Response {
    everything_inner(state, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn everything_inner(state: AppState, id: String, req: Request) -> Result<Response, ApiError> {
    let query = req.uri().query().unwrap_or("").to_string();
    let c = reader(&state, declared(&req, &state)?, Interaction::Everything, Some(query.clone())).await?;
    if let Err(e) = super::check_id(&id) {
        return Err(invalid_request(&state, &c, Interaction::Everything, e, Some(query)).await);
    }
    if let Err(r) = state.policy.may_read_type(&c.who, "Patient") {
        return Err(refuse_role(&state, &c, Interaction::Everything, r, None).await);
    }
    let mut search = match params::parse("Patient", &query, c.strict) {
        Ok(s) if s.criteria.is_empty() => s,
        Ok(_) => {
            let e = ApiError::invalid("$everything takes only _count and _offset here", "Patient/$everything");
            return Err(invalid_request(&state, &c, Interaction::Everything, e, Some(query)).await);
        }
        Err(e) => return Err(invalid_request(&state, &c, Interaction::Everything, e, Some(query)).await),
    };
    search.used.clear();
    let read = async {
        let others: Vec<String> =
            state.linkage.person(&state.records, &id).await?.into_iter().map(|(o, _)| o).collect();
        let all_ids: Vec<&str> = std::iter::once(id.as_str()).chain(others.iter().map(String::as_str)).collect();
        let records = state.records.of_patients(&state.store, &all_ids, None, |_| true).await?;
        Ok::<_, crate::records::RecordsError>((others, records))
    };
    let (others, records) = match read.await {
        Ok(r) => r,
        Err(e) => return Err(unreadable(&state, &c, Interaction::Everything, e, None).await),
    };
    // Break-glass reaches this person: the patient asked for and its linked records.
    let ctx = c.glass_for(std::iter::once(id.clone()).chain(others.iter().cloned()).collect());
    // The person's records at linked sites only when the patient asked for is visible.
    let mine: Vec<&Arc<Stored>> = records.iter().filter(|s| s.patient.as_deref() == Some(id.as_str())).collect();
    let mut permitted = state.policy.filter(&c.who, mine, &ctx);
    if !permitted.is_empty() {
        let theirs = records.iter().filter(|s| s.patient.as_deref() != Some(id.as_str()));
        permitted.extend(state.policy.filter(&c.who, theirs, &ctx));
    }
    if permitted.is_empty() {
        let asked =
            records.iter().find(|s| s.resource.type_name() == "Patient" && s.patient.as_deref() == Some(id.as_str()));
        let (outcome, why, asked) = match asked {
            Some(s) => (Outcome::Denied, Refusal::NoGrant.to_string(), disclosure(s, String::new())),
            None => (Outcome::NotFound, NOT_VISIBLE.to_string(), absent(format!("Patient/{id}"))),
        };
        audit(&state, record(&c, Interaction::Everything, outcome, Some(why), vec![asked], None)).await?;
        return Err(ApiError::NotFound(format!("Patient/{id} is not known or not visible to you")));
    }
    let path = format!("Patient/{id}/$everything");
    let asked =
        Asked { interaction: Interaction::Everything, path: &path, search: &search, query: None, person: Some(&id) };
    respond(&state, &c, asked, page_of(&search, permitted, vec![]), true).await
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
    /// The one person it is about, when it is (what break-glass declares for).
    person: Option<&'a str>,
}

/// Audit the page (its matches and includes), then answer it; `audited` false when the
/// caller has audited this answer already.
async fn respond(
    state: &AppState,
    c: &Caller,
    asked: Asked<'_>,
    page: Page,
    audited: bool,
) -> Result<Response, ApiError> {
    let Asked { interaction, path, search, query, person } = asked;
    let Page { total, matches, includes } = page;
    let start = search.offset.min(total);
    let end = start + matches.len();
    let shown: Vec<&Permitted> = matches.iter().chain(includes.iter()).collect();
    declare_break_glass(state, c, person, &shown).await?;
    if audited {
        let rec = record(c, interaction, Outcome::Success, None, shown.iter().map(|p| disclosed(p)).collect(), query);
        audit(state, rec).await?;
    }
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
    let modes = matches.iter().map(|p| (p, "match")).chain(includes.iter().map(|p| (p, "include")));
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
