//! Reading request bodies: bounded in size, parsed as FHIR JSON with the location of
//! the first syntax error.

use crate::app::ApiError;
use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use kakehashi_fhir::{IssueType, Resource};

/// Read at most `limit` bytes of body.
pub async fn bytes(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Err(_) => Err(ApiError::BadRequest {
            code: IssueType::Incomplete,
            diagnostics: "the request body could not be read".into(),
            expression: None,
        }),
    }
}

/// Parse a FHIR resource; syntax and shape errors name line and column.
pub fn resource(bytes: &[u8]) -> Result<Resource, ApiError> {
    parse(bytes)
}

/// Parse a FHIR resource of one kind; syntax and shape errors name line and column.
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<T>(bytes).map_err(|e| ApiError::BadRequest {
        code: IssueType::Structure,
        diagnostics: format!("the body is not a FHIR resource this server accepts: {e}"),
        expression: None,
    })
}
