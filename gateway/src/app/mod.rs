//! The one place the request stack is assembled, and where errors are rescued into
//! OperationOutcomes. Layers, outermost first:
//!
//! 1. `observe`   — metrics per request, and a log line at debug level (no patient data);
//! 2. `deadline`  — the whole request must finish within `server.request_timeout_secs`;
//! 3. `identity`  — the connection's certificate must name a federation member (403);
//! 4. `negotiate` — FHIR JSON in and out (406/415/400);
//! 5. the FHIR routes (404/405 fallbacks).

pub mod connections;
mod rescue;
pub mod server;

pub use rescue::{fhir_bytes, fhir_json, ApiError, FHIR_JSON_UTF8};

use crate::admin::Metrics;
use crate::config::Config;
use axum::extract::{Request, State};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// State shared by every handler: one pointer, so the per-request clones made by each
/// layer cost a single reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points to.
pub struct Shared {
    /// The loaded configuration.
    pub config: Arc<Config>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The serialised CapabilityStatement.
    pub capability: Bytes,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// The database.
    pub store: crate::store::Store,
    /// Every site's records.
    pub records: Arc<crate::records::Records>,
    /// The policy decision point.
    pub policy: Arc<crate::policy::Policy>,
    /// Presented-prescription lookups per pharmacy certificate.
    pub prescription_lookups: crate::policy::rate::RateLimiter,
    /// Cross-site patient linkage.
    pub linkage: Arc<crate::linkage::Linkage>,
    /// The audit log writer.
    pub audit: crate::audit::AuditLog,
    /// The FHIR base URL for links and `Location` (configured, never from a request).
    pub base_url: String,
    /// The TLS material in force, for per-request revocation checks (absent in
    /// in-process benchmarks, which have no TLS).
    pub tls: Option<Arc<crate::tls::ReloadingConfig>>,
}

impl AppState {
    /// State for a configuration.
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        store: crate::store::Store,
        records: Arc<crate::records::Records>,
        audit: crate::audit::AuditLog,
        listening: std::net::SocketAddr,
        tls: Option<Arc<crate::tls::ReloadingConfig>>,
    ) -> Self {
        let started = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
        let capability =
            serde_json::to_vec(&crate::fhir_api::capability::statement(&started)).map(Bytes::from).unwrap_or_default();
        let request_timeout = Duration::from_secs(config.server.request_timeout_secs);
        let policy = crate::policy::Policy::for_config(&config);
        let prescription_lookups = crate::policy::rate::RateLimiter::new(config.policy.prescription_lookups_per_minute);
        let linkage = Arc::default();
        let base_url = match &config.server.public_base_url {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => format!("https://{listening}/fhir"),
        };
        AppState(Arc::new(Shared {
            config,
            metrics,
            capability,
            request_timeout,
            store,
            records,
            prescription_lookups,
            policy,
            linkage,
            audit,
            base_url,
            tls,
        }))
    }
}

/// Assemble the full stack.
pub fn build(state: AppState) -> Router {
    crate::fhir_api::router()
        .layer(from_fn(crate::fhir_api::negotiate::layer))
        .layer(from_fn_with_state(state.clone(), body_first))
        .layer(from_fn_with_state(state.clone(), identity))
        .layer(from_fn_with_state(state.clone(), deadline))
        .layer(from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Read a request's body (up to the size limit) before any handler can refuse the
/// request: over HTTP/2 a response sent while the client is still sending its body
/// ends the stream with a reset, and clients (curl: "(92) Stream error in the HTTP/2
/// framing layer") lose the 4xx that says why.
async fn body_first(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), http::Method::GET | http::Method::HEAD | http::Method::OPTIONS) {
        return next.run(req).await;
    }
    let (parts, mut body) = req.into_parts();
    let limit = state.config.server.max_body_bytes;
    let mut buf = bytes::BytesMut::new();
    loop {
        match http_body_util::BodyExt::frame(&mut body).await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        // Too large: read (and drop) a bounded remainder, within two
                        // seconds, so that the 413 is delivered rather than reset.
                        let rest = http_body_util::Limited::new(body, limit.max(DRAIN_BYTES));
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), http_body_util::BodyExt::collect(rest)).await;
                        return ApiError::PayloadTooLarge(limit).into_response();
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => {
                return ApiError::BadRequest {
                    code: kakehashi_fhir::IssueType::Incomplete,
                    diagnostics: "the request body could not be read".into(),
                    expression: None,
                }
                .into_response()
            }
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(buf.freeze()))).await
}

/// What is read past the body limit (at most, within two seconds) before answering 413.
const DRAIN_BYTES: usize = 32 << 20;

/// Read and discard what is left of a refused request's body (bounded in size and
/// time), so that its 4xx is delivered rather than reset (see [`body_first`]).
async fn discard_body(req: Request, limit: usize) -> Request {
    let (parts, body) = req.into_parts();
    let limited = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit));
    let _ = tokio::time::timeout(Duration::from_secs(2), limited).await;
    Request::from_parts(parts, axum::body::Body::empty())
}

async fn identity(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let conn = req.extensions().get::<crate::identity::ConnInfo>().cloned();
    // Revocation is checked on every request, not only in the handshake: a CRL
    // reloaded since this connection opened may name its certificate (or have lapsed).
    let revoked = match (&state.tls, conn.as_ref().and_then(|c| c.cert.as_deref())) {
        (Some(tls), Some(cert)) => tls.revocation().refuses(cert, crate::audit::now_micros() / 1_000_000),
        _ => None,
    };
    let mut req = req;
    if conn.as_ref().is_none_or(|c| c.identity.is_err()) || revoked.is_some() {
        req = discard_body(req, state.config.server.max_body_bytes).await;
        state.metrics.identity_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reason = revoked.map(str::to_string).unwrap_or_else(|| e_reason(conn.as_ref()));
        let rec = crate::audit::AuditRecord {
            interaction: crate::audit::Interaction::Connect,
            outcome: crate::audit::Outcome::Denied,
            outcome_desc: Some(reason.clone()),
            requestor: crate::audit::Requestor::Unidentified {
                fingerprint: conn.as_ref().and_then(|c| c.fingerprint.clone()),
                institution: conn.as_ref().and_then(|c| c.claimed_institution.clone()),
                certificate: None,
            },
            source_address: conn.as_ref().map(|c| c.peer.to_string()).unwrap_or_default(),
            disclosed: vec![],
            query: None,
            purpose: "TREAT".into(),
            break_glass_reason: None,
            recorded_micros: crate::audit::now_micros(),
        };
        if let Err(e) = state.audit.record(rec).await {
            return ApiError::unavailable("the audit log is unavailable; the request was not served", e)
                .into_response();
        }
        if let Some(why) = revoked {
            let mut resp = ApiError::Forbidden(why.into()).into_response();
            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            return resp;
        }
    }
    crate::identity::layer(req, next).await
}

fn e_reason(conn: Option<&crate::identity::ConnInfo>) -> String {
    match conn.map(|c| &c.identity) {
        Some(Err(e)) => e.to_string(),
        _ => crate::identity::IdentityError::NoCertificate.to_string(),
    }
}

async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let secs = state.request_timeout.as_secs();
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout(secs).into_response(),
    }
}

async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // Log the path only: query strings may carry patient identifiers.
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    state.metrics.response(resp.status());
    // Debug, not info: the audit log is the record of every access, and a line per request
    // on stderr took 40% of the throughput of a cheap request. Warnings and errors remain.
    tracing::debug!(%method, %path, status = resp.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    resp
}
