//! `GET /fhir/metadata`: a CapabilityStatement listing exactly what this server does.

use crate::app::{fhir_bytes, AppState};
use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use kakehashi_fhir::capability::*;
use kakehashi_fhir::{CodeableConcept, Coding, FHIR_VERSION};

/// The statement, built once at start-up from the server's actual routes.
pub fn statement(started: &str) -> CapabilityStatement {
    CapabilityStatement {
        status: "active".into(),
        date: started.into(),
        kind: "instance".into(),
        software: Some(Software { name: "Kakehashi".into(), version: Some(env!("CARGO_PKG_VERSION").into()) }),
        implementation: Some(Implementation {
            description: "Kakehashi secure interoperability gateway (mutual TLS)".into(),
            url: None,
        }),
        fhir_version: FHIR_VERSION.into(),
        format: vec!["application/fhir+json".into(), "json".into()],
        rest: vec![Rest {
            mode: "server".into(),
            documentation: Some(
                "A hospital system pushes a JP-CLINS document Bundle (discharge summary, referral) with POST to the base \
                 (or to Bundle); \
                 it is acknowledged 201 once stored, and GET Bundle/{id}/$delivery-status reports its delivery."
                    .into(),
            ),
            security: Some(RestSecurity {
                service: vec![CodeableConcept::coding(Coding::new(
                    "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "Certificates",
                ))],
                description: Some(
                    "Mutual TLS: every client presents a certificate of the federation CA naming institution, role and terminal.".into(),
                ),
            }),
            resource: super::read::SERVED_TYPES
                .iter()
                .map(|ty| RestResource {
                    type_: (*ty).to_string(),
                    interaction: ["read", "search-type"].iter().map(|c| Interaction { code: (*c).into() }).collect(),
                    search_param: super::params::supported(ty)
                        .iter()
                        .map(|(name, kind)| SearchParam { name: (*name).into(), type_: (*kind).into(), documentation: None })
                        .chain(std::iter::once(SearchParam { name: "_id".into(), type_: "token".into(), documentation: None }))
                        .collect(),
                    operation: if *ty == "Patient" {
                        vec![Operation {
                            name: "everything".into(),
                            definition: "http://hl7.org/fhir/OperationDefinition/Patient-everything".into(),
                        }]
                    } else {
                        vec![]
                    },
                })
                .chain(managed_resources())
                .collect(),
            interaction: vec![],
            operation: vec![],
        }],
    }
}

/// Resources with their own handlers: grants (Consent), patient links (Linkage), pushed
/// documents (Bundle), break-glass notices (Communication) and the audit log (AuditEvent).
fn managed_resources() -> impl Iterator<Item = RestResource> {
    let resource = |ty: &str, interactions: &[&str], params: &[(&str, &str)]| RestResource {
        type_: ty.into(),
        interaction: interactions.iter().map(|c| Interaction { code: (*c).into() }).collect(),
        search_param: params
            .iter()
            .map(|(name, kind)| SearchParam { name: (*name).into(), type_: (*kind).into(), documentation: None })
            .collect(),
        operation: vec![],
    };
    [
        resource("Consent", &["read", "search-type", "create", "delete"], &[("patient", "reference")]),
        resource("Linkage", &["search-type", "create"], &[("item", "reference"), ("source", "reference")]),
        // A pushed document: the same as POST to the base.
        resource("Bundle", &["create"], &[]),
        // Break-glass notices to the caller's institution.
        resource("Communication", &["read", "search-type"], &[("category", "token")]),
        resource(
            "AuditEvent",
            &["search-type"],
            &[
                ("date", "date"),
                ("agent", "token"),
                ("entity", "reference"),
                ("patient", "reference"),
                ("outcome", "token"),
                ("subtype", "token"),
            ],
        ),
    ]
    .into_iter()
}

/// Handler for `GET /fhir/metadata`.
pub async fn metadata(State(state): State<AppState>) -> Response {
    fhir_bytes(StatusCode::OK, state.capability.clone())
}
