//! `GET /fhir/AuditEvent`: the auditor's view of the log, newest first. An auditor of
//! an institution sees the events where its institution read or was the owner crossed;
//! a federation audit body sees every event; nobody else reads the log. Reading it is
//! itself audited. Every parameter is validated and bound, never spliced into SQL.

use super::is_fhir_id;
use super::params::{date_range, DEFAULT_COUNT, MAX_COUNT};
use super::read::{audit, caller, record, Caller};
use crate::app::{fhir_bytes, ApiError, AppState};
use crate::audit::{Disclosed, Interaction, Outcome};
use crate::config::InstitutionKind;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use kakehashi_certs::Role;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::Row;

/// Largest `_offset`: deeper pages are reached by the `_before` cursor of `next` links,
/// which an index answers without counting past every skipped event.
const MAX_OFFSET: usize = 10_000;

fn invalid(name: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid(msg, name)
}

/// A value bound to a placeholder.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
}

/// WHERE clauses with their bound values, numbered `$1..` in order.
#[derive(Debug, Default)]
struct Filter {
    clauses: Vec<String>,
    binds: Vec<Bind>,
}

impl Filter {
    fn add(&mut self, clause: &str, values: Vec<Bind>) {
        let mut c = clause.to_string();
        for v in values {
            self.binds.push(v);
            c = c.replacen('?', &format!("${}", self.binds.len()), 1);
        }
        self.clauses.push(c);
    }

    fn sql_where(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

fn bind<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s.as_str()),
            Bind::Int(i) => q.bind(*i),
        };
    }
    q
}

struct Parsed {
    filter: Filter,
    count: usize,
    offset: usize,
    used: Vec<(String, String)>,
    ignored: Vec<String>,
}

/// Parse an auditor's query; `viewer` is the institution whose auditor asks, None for
/// an audit body (which sees every event whole).
fn parse(c: &Caller, query: &str, viewer: Option<&str>) -> Result<Parsed, ApiError> {
    let mut p = Parsed { filter: Filter::default(), count: DEFAULT_COUNT, offset: 0, used: vec![], ignored: vec![] };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.trim().to_string();
        match k.as_ref() {
            "_count" => {
                p.count = v
                    .parse::<usize>()
                    .map_err(|_| invalid("_count", format!("_count `{v}` is not a non-negative integer")))?
                    .min(MAX_COUNT);
                continue;
            }
            "_offset" => {
                p.offset = v
                    .parse::<usize>()
                    .ok()
                    .filter(|o| *o <= MAX_OFFSET)
                    .ok_or_else(|| invalid("_offset", format!("_offset `{v}` is not an integer from 0 to {MAX_OFFSET}; page further with the `next` link (_before)")))?;
                continue;
            }
            // Paging cursor: events older than this sequence number. The log grows at
            // the head while an auditor pages, so offsets would shift; a cursor does not.
            "_before" => {
                let b: i64 = v
                    .parse()
                    .ok()
                    .filter(|b| *b > 0)
                    .ok_or_else(|| invalid("_before", format!("_before `{v}` is not a sequence number")))?;
                p.filter.add("seq < ?", vec![Bind::Int(b)]);
                continue;
            }
            "_format" => continue,
            "date" => {
                let (prefix, rest) = match v.get(..2) {
                    Some(x @ ("eq" | "ge" | "gt" | "le" | "lt")) => (x, &v[2..]),
                    _ => ("eq", v.as_str()),
                };
                let (s, e) = date_range(rest).ok_or_else(|| {
                    invalid(
                        "date",
                        format!("`{v}` is not a FHIR date or dateTime (optionally prefixed eq/ge/gt/le/lt)"),
                    )
                })?;
                let (s, e) = (s * 1_000_000, e * 1_000_000);
                match prefix {
                    "ge" => p.filter.add("recorded >= ?", vec![Bind::Int(s)]),
                    "gt" => p.filter.add("recorded >= ?", vec![Bind::Int(e)]),
                    "lt" => p.filter.add("recorded < ?", vec![Bind::Int(s)]),
                    "le" => p.filter.add("recorded < ?", vec![Bind::Int(e)]),
                    _ => p.filter.add("recorded >= ? AND recorded < ?", vec![Bind::Int(s), Bind::Int(e)]),
                }
            }
            "agent" => {
                let code = v.rsplit('|').next().unwrap_or("").to_string();
                if !kakehashi_certs::profile::is_institution_code(&code) {
                    return Err(invalid("agent", format!("`{v}` is not a 10-digit institution code")));
                }
                p.filter.add("agent_institution = ?", vec![Bind::Text(code)]);
            }
            "entity" => {
                let (ty, id) =
                    v.split_once('/').ok_or_else(|| invalid("entity", format!("`{v}` is not a reference Type/id")))?;
                if !ty.bytes().all(|b| b.is_ascii_alphabetic()) || !is_fhir_id(id) {
                    return Err(invalid("entity", format!("`{v}` is not a reference Type/id")));
                }
                p.filter.add("entities LIKE ?", vec![Bind::Text(format!("%,{ty}/{id},%"))]);
            }
            "patient" => {
                let id = v.strip_prefix("Patient/").unwrap_or(&v).to_string();
                if !is_fhir_id(&id) {
                    return Err(invalid("patient", format!("`{v}` is not a Patient id")));
                }
                let pattern = Bind::Text(format!("%,{id},%"));
                match viewer {
                    // A refusal's patient is known to the owner crossed, not to the
                    // reader's auditors (it would tell them what the refusal hid).
                    Some(me) => p.filter.add(
                        "patients LIKE ? AND (outcome = '0' OR owners LIKE ?)",
                        vec![pattern, Bind::Text(format!("%,{me},%"))],
                    ),
                    None => p.filter.add("patients LIKE ?", vec![pattern]),
                }
            }
            "outcome" => {
                if !matches!(v.as_str(), "0" | "4" | "8" | "12") {
                    return Err(invalid("outcome", format!("`{v}` is not an AuditEvent outcome (0, 4, 8, 12)")));
                }
                let stored = crate::audit::Outcome::columns_for(&v);
                let placeholders = vec!["?"; stored.len().max(1)].join(", ");
                let mut binds: Vec<Bind> = stored.iter().map(|s| Bind::Text(s.to_string())).collect();
                if binds.is_empty() {
                    // 12 (major failure) is a valid code this gateway never records.
                    binds.push(Bind::Text("12".into()));
                }
                p.filter.add(&format!("outcome IN ({placeholders})"), binds);
            }
            "subtype" => {
                let code = v.rsplit('|').next().unwrap_or("").to_string();
                if code.is_empty() || code.len() > 32 || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(invalid("subtype", format!("`{v}` is not an interaction code")));
                }
                p.filter.add("subtype = ?", vec![Bind::Text(code)]);
            }
            other => {
                if c.strict {
                    return Err(invalid(
                        other,
                        format!("search parameter `{other}` is not supported for AuditEvent (Prefer: handling=strict)"),
                    ));
                }
                p.ignored.push(other.to_string());
                continue;
            }
        }
        p.used.push((k.to_string(), v));
    }
    Ok(p)
}

#[derive(Serialize)]
struct Page<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    type_: &'static str,
    total: i64,
    link: Vec<serde_json::Value>,
    entry: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    full_url: Option<String>,
    resource: &'a RawValue,
    search: serde_json::Value,
}

/// `GET /fhir/AuditEvent`.
pub async fn search(State(state): State<AppState>, req: Request) -> Response {
    search_inner(state, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn search_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let c = caller(&req, &state)?;
    let query = req.uri().query().unwrap_or("").to_string();
    if c.who.role != Role::Auditor {
        let why = format!("the {} role does not read the audit log", c.who.role);
        audit(&state, record(&c, Interaction::Search, Outcome::Denied, Some(why.clone()), vec![], Some(query))).await?;
        return Err(ApiError::Forbidden(why));
    }
    let viewer = (c.who.kind != InstitutionKind::AuditBody).then(|| c.who.institution.clone());
    let mut p = match parse(&c, &query, viewer.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            // A malformed query is audited too: probing the log leaves a trace.
            let why = format!("invalid query: {e}");
            audit(&state, record(&c, Interaction::Search, Outcome::Invalid, Some(why), vec![], Some(query))).await?;
            return Err(e);
        }
    };
    if c.who.kind != InstitutionKind::AuditBody {
        let me = c.who.institution.clone();
        p.filter.add(
            "(agent_institution = ? OR owners LIKE ?)",
            vec![Bind::Text(me.clone()), Bind::Text(format!("%,{me},%"))],
        );
    }
    let where_ = p.filter.sql_where();
    // Events are durable in the journal before they are in the table: the auditor
    // sees every one recorded so far, this query's own denial included.
    state.audit.settle().await;
    let db = |e: sqlx::Error| ApiError::unavailable("the audit store cannot be read", e);
    let count_sql = format!("SELECT COUNT(*) FROM audit_event{where_}");
    // Only fixed clause text and integers are in the SQL; every value is bound.
    let total: i64 = bind(sqlx::query(sqlx::AssertSqlSafe(count_sql)), &p.filter.binds)
        .fetch_one(state.store.pool())
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    let page_sql = format!(
        "SELECT seq, event, agent_institution FROM audit_event{where_} ORDER BY seq DESC LIMIT {} OFFSET {}",
        p.count, p.offset
    );
    let rows = bind(sqlx::query(sqlx::AssertSqlSafe(page_sql)), &p.filter.binds)
        .fetch_all(state.store.pool())
        .await
        .map_err(db)?;
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        let seq: i64 = r.try_get(0).map_err(db)?;
        let event: String = r.try_get(1).map_err(db)?;
        let agent: String = r.try_get(2).map_err(db)?;
        let raw = crate::audit::event::render_for(seq, &event, viewer.as_deref())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        events.push((seq, raw, agent));
    }
    let shown: Vec<Disclosed> = events
        .iter()
        .map(|(seq, _, agent)| Disclosed {
            reference: format!("AuditEvent/{seq}"),
            owner: agent.clone(),
            patient: None,
            basis: "auditor".into(),
        })
        .collect();
    audit(&state, record(&c, Interaction::Search, Outcome::Success, None, shown, Some(query))).await?;

    let url = |before: Option<i64>| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &p.used {
            q.append_pair(k, v);
        }
        q.append_pair("_count", &p.count.to_string());
        if let Some(b) = before {
            q.append_pair("_before", &b.to_string());
        }
        format!("{}/AuditEvent?{}", c.base, q.finish())
    };
    let mut link = vec![serde_json::json!({"relation": "self", "url": url(None)})];
    if ((p.offset + events.len()) as i64) < total && p.count > 0 {
        if let Some((last, _, _)) = events.last() {
            link.push(serde_json::json!({"relation": "next", "url": url(Some(*last))}));
        }
    }
    let outcome = (!p.ignored.is_empty())
        .then(|| {
            let oo = kakehashi_fhir::OperationOutcome::single(
                kakehashi_fhir::IssueSeverity::Warning,
                kakehashi_fhir::IssueType::NotSupported,
                format!("search parameters ignored: {}", p.ignored.join(", ")),
                None,
            );
            serde_json::value::to_raw_value(&oo).ok()
        })
        .flatten();
    let mut entry: Vec<Entry<'_>> = events
        .iter()
        .map(|(seq, raw, _)| Entry {
            full_url: Some(format!("{}/AuditEvent/{seq}", c.base)),
            resource: raw,
            search: serde_json::json!({"mode": "match"}),
        })
        .collect();
    if let Some(oo) = &outcome {
        entry.push(Entry { full_url: None, resource: oo, search: serde_json::json!({"mode": "outcome"}) });
    }
    let page = Page { resource_type: "Bundle", type_: "searchset", total, link, entry };
    let bytes = serde_json::to_vec(&page).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(fhir_bytes(StatusCode::OK, bytes))
}
