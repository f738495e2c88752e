//! The FHIR REST surface under `/fhir`: capability statement, reads, searches and
//! pushes. Every route here is behind the identity layer; routes that return patient
//! data take a `policy::Permit`.

pub mod audit_events;
pub mod body;
pub mod capability;
pub mod consent;
pub mod linkage;
pub mod negotiate;
pub mod notices;
pub mod params;
pub mod push;
pub mod read;

use crate::app::{ApiError, AppState};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Path parameters of a FHIR route; a path that cannot be decoded (`Patient/%ff` is not
/// UTF-8) is a 400 OperationOutcome like every other malformed request, not axum's text.
pub struct FhirPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S> for FhirPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(FhirPath(v)),
            Err(e) => Err(ApiError::invalid(format!("the request path cannot be read: {}", e.body_text()), "path")),
        }
    }
}

/// Whether `id` is a FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
pub fn is_fhir_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A 400 unless `id` is a FHIR id: nothing is looked up for a malformed one.
pub fn check_id(id: &str) -> Result<(), ApiError> {
    if is_fhir_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("`{id}` is not a FHIR id (1-64 of A-Z a-z 0-9 - .)"), "id"))
    }
}

/// The `/fhir` routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/fhir/metadata", get(capability::metadata))
        .route("/fhir", axum::routing::post(push::push))
        .route("/fhir/Bundle", axum::routing::post(push::push))
        .route("/fhir/Bundle/{id}/$delivery-status", get(push::delivery_status))
        .route("/fhir/AuditEvent", get(audit_events::search))
        .route("/fhir/Consent", get(consent::search).post(consent::create))
        .route("/fhir/Consent/{id}", get(consent::read).delete(consent::revoke))
        .route("/fhir/Linkage", get(linkage::search).post(linkage::create))
        .route("/fhir/Communication", get(notices::search))
        .route("/fhir/Communication/{id}", get(notices::read))
        .route("/fhir/Patient/{id}/$everything", get(read::everything))
        .route("/fhir/{type}", get(read::search))
        .route("/fhir/{type}/{id}", get(read::read))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// A `searchset` Bundle of `(fullUrl, resource)` matches, every one on this page.
pub(crate) fn searchset<T: serde::Serialize>(matches: impl IntoIterator<Item = (String, T)>) -> Response {
    let entry: Vec<serde_json::Value> = matches
        .into_iter()
        .map(|(url, resource)| serde_json::json!({ "fullUrl": url, "resource": resource, "search": { "mode": "match" } }))
        .collect();
    crate::app::fhir_json(
        http::StatusCode::OK,
        &serde_json::json!({ "resourceType": "Bundle", "type": "searchset", "total": entry.len(), "entry": entry }),
    )
}

async fn not_found(req: Request) -> Response {
    ApiError::NotFound(format!("no FHIR endpoint at {}", req.uri().path())).into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::MethodNotAllowed(req.method().to_string()).into_response()
}
