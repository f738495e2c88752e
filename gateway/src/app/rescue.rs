//! Rescue: the one place where errors become HTTP responses (an OperationOutcome in
//! `application/fhir+json`). Handlers and layers return [`ApiError`]; nothing else
//! writes an error body, so no internal detail can leak by accident.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use kakehashi_fhir::{IssueSeverity, IssueType, OperationOutcome};
use serde::Serialize;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with a located issue.
    #[error("{diagnostics}")]
    BadRequest { code: IssueType, diagnostics: String, expression: Option<String> },
    /// 403: the principal may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such path or resource.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists but not with this method.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// 406: the requested format is not one we produce.
    #[error("{0}")]
    NotAcceptable(String),
    /// 409: the request conflicts with stored state.
    #[error("{0}")]
    Conflict(String),
    /// 413: body larger than the limit.
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: the request body's media type is not accepted.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503: a dependency (audit store, database) is unavailable; fail closed. The text
    /// is sent: build it with [`ApiError::unavailable`], which logs the cause instead.
    #[error("{0}")]
    Unavailable(String),
    /// 429: the principal asked too often; retry after the given seconds.
    #[error("{message}")]
    TooManyRequests {
        /// What was limited.
        message: String,
        /// Seconds until a retry can succeed.
        retry_after: u64,
    },
    /// 504/408-like: the request ran out of time.
    #[error("the request took longer than {0} seconds")]
    Timeout(u64),
    /// 500: a fault of ours. The message is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 400 for an invalid value at `expression`.
    pub fn invalid(diagnostics: impl Into<String>, expression: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: IssueType::Invalid,
            diagnostics: diagnostics.into(),
            expression: Some(expression.into()),
        }
    }

    /// A 503 saying `public`; the cause (a database message, say) is logged, never sent.
    pub fn unavailable(public: &str, cause: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "{public}");
        ApiError::Unavailable(public.to_string())
    }

    fn parts(&self) -> (StatusCode, IssueType, Option<String>) {
        match self {
            ApiError::BadRequest { code, expression, .. } => (StatusCode::BAD_REQUEST, *code, expression.clone()),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, IssueType::Forbidden, None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, IssueType::NotFound, None),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, IssueType::NotSupported, None),
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, IssueType::NotSupported, None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, IssueType::Conflict, None),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, IssueType::TooCostly, None),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, IssueType::NotSupported, None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, IssueType::Transient, None),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, IssueType::Throttled, None),
            ApiError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, IssueType::Timeout, None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, None),
        }
    }

    /// The OperationOutcome sent for this error.
    pub fn outcome(&self) -> OperationOutcome {
        let (_, code, expression) = self.parts();
        let diagnostics = match self {
            ApiError::BadRequest { diagnostics, .. } => diagnostics.clone(),
            other => other.to_string(),
        };
        OperationOutcome::single(IssueSeverity::Error, code, diagnostics, expression)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let (status, _, _) = self.parts();
        let mut resp = fhir_json(status, &self.outcome());
        if status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        }
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        resp
    }
}

/// The media type we answer with.
pub const FHIR_JSON_UTF8: &str = "application/fhir+json; charset=utf-8";

/// Serialise a FHIR resource as the body of a response.
pub fn fhir_json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => fhir_bytes(status, bytes),
        // Our own types always serialise; if one does not, say so without detail.
        Err(e) => {
            tracing::error!(error = %e, "response serialisation failed");
            let mut r = Response::new(Body::from(
                "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"fatal\",\"code\":\"exception\"}]}",
            ));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON_UTF8));
            r
        }
    }
}

/// A response whose body is already-serialised FHIR JSON.
pub fn fhir_bytes(status: StatusCode, bytes: impl Into<Body>) -> Response {
    let mut r = Response::new(bytes.into());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON_UTF8));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_error_is_an_operation_outcome_without_internals() {
        let cases = [
            (ApiError::NotFound("no route /x".into()), 404, "not-found"),
            (ApiError::MethodNotAllowed("DELETE".into()), 405, "not-supported"),
            (ApiError::NotAcceptable("xml".into()), 406, "not-supported"),
            (ApiError::UnsupportedMediaType("text/plain".into()), 415, "not-supported"),
            (ApiError::Unavailable("audit store down".into()), 503, "transient"),
            (ApiError::Internal("db password is hunter2".into()), 500, "exception"),
            (ApiError::invalid("bad date", "AuditEvent.date"), 400, "invalid"),
        ];
        for (err, status, code) in cases {
            let r = err.into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[header::CONTENT_TYPE], FHIR_JSON_UTF8);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["resourceType"], "OperationOutcome");
            assert_eq!(v["issue"][0]["code"], code);
            assert!(!String::from_utf8_lossy(&body).contains("hunter2"));
        }
    }
}
