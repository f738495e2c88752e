//! Content negotiation (FHIR R4 http.html#mime-type): we speak FHIR JSON only.
//! `_format` overrides `Accept`; request bodies must be FHIR JSON; GET/HEAD/DELETE
//! carry no body.

use crate::app::ApiError;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, Method};

const JSON_TYPES: [&str; 4] = ["application/fhir+json", "application/json", "application/json+fhir", "json"];

fn media_type(v: &str) -> &str {
    v.split(';').next().unwrap_or("").trim()
}

fn accepts_json(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mt = media_type(item).to_ascii_lowercase();
        let q_zero = item.split(';').skip(1).any(|p| {
            let p = p.trim();
            p.strip_prefix("q=").map(|q| q.trim().parse::<f32>().map(|q| q == 0.0).unwrap_or(false)).unwrap_or(false)
        });
        !q_zero && (JSON_TYPES.contains(&mt.as_str()) || mt == "*/*" || mt == "application/*")
    })
}

fn format_param(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "_format").map(|(_, v)| v.into_owned())
}

fn has_body(req: &Request) -> bool {
    let len =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    matches!(len, Some(n) if n > 0) || req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// Check the request's formats before it reaches a handler.
pub fn check(req: &Request) -> Result<(), ApiError> {
    if let Some(f) = req.uri().query().and_then(format_param) {
        if !JSON_TYPES.contains(&media_type(&f).to_ascii_lowercase().as_str()) {
            return Err(ApiError::NotAcceptable(format!(
                "_format `{f}` is not supported; this server speaks application/fhir+json only"
            )));
        }
    } else if let Some(accept) = req.headers().get(header::ACCEPT) {
        let accept = accept.to_str().map_err(|_| ApiError::NotAcceptable("Accept header is not ASCII".into()))?;
        if !accept.trim().is_empty() && !accepts_json(accept) {
            return Err(ApiError::NotAcceptable(format!(
                "cannot answer in `{accept}`; this server speaks application/fhir+json only"
            )));
        }
    }
    let bodyless = matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS);
    if bodyless && has_body(req) {
        return Err(ApiError::BadRequest {
            code: kakehashi_fhir::IssueType::Invalid,
            diagnostics: format!("a {} request must not carry a body", req.method()),
            expression: None,
        });
    }
    if !bodyless && has_body(req) {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mt = media_type(ct).to_ascii_lowercase();
        if !JSON_TYPES[..3].contains(&mt.as_str()) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "request body of type `{ct}` is not accepted; send application/fhir+json"
            )));
        }
    }
    Ok(())
}

/// Tower layer (axum middleware) applying [`check`].
pub async fn layer(req: Request, next: Next) -> Response {
    match check(&req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)], body: &'static str) -> Request {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if !body.is_empty() {
            b = b.header("content-length", body.len().to_string());
        }
        b.body(Body::from(body)).unwrap()
    }

    fn status(r: Request) -> u16 {
        match check(&r) {
            Ok(()) => 200,
            Err(e) => e.into_response().status().as_u16(),
        }
    }

    /// Method, URI, headers, body, expected status.
    type Case = (&'static str, &'static str, &'static [(&'static str, &'static str)], &'static str, u16);

    #[test]
    fn negotiation_table() {
        let cases: &[Case] = &[
            ("GET", "/fhir/metadata", &[], "", 200),
            ("GET", "/fhir/metadata", &[("accept", "application/fhir+json")], "", 200),
            ("GET", "/fhir/metadata", &[("accept", "application/json, text/html;q=0.9")], "", 200),
            ("GET", "/fhir/metadata", &[("accept", "*/*")], "", 200),
            ("GET", "/fhir/metadata", &[("accept", "application/fhir+xml")], "", 406),
            ("GET", "/fhir/metadata", &[("accept", "application/fhir+json;q=0")], "", 406),
            ("GET", "/fhir/metadata?_format=xml", &[], "", 406),
            ("GET", "/fhir/metadata?_format=json", &[("accept", "application/xml")], "", 200),
            ("GET", "/fhir/metadata", &[], "{}", 400),
            ("POST", "/fhir", &[("content-type", "application/fhir+json; charset=utf-8")], "{}", 200),
            ("POST", "/fhir", &[("content-type", "application/xml")], "<a/>", 415),
            ("POST", "/fhir", &[], "{}", 415),
        ];
        for (m, u, h, b, want) in cases {
            assert_eq!(status(req(m, u, h, b)), *want, "{m} {u} {h:?} {b:?}");
        }
    }
}
