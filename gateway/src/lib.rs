//! Kakehashi (架け橋): a secure interoperability gateway between rural clinics and the
//! hub hospitals that support them. The request path, in order: [`tls`] → [`identity`]
//! → [`fhir_api`] (policy, audit) — assembled in [`app`].

pub mod admin;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fhir_api;
pub mod identity;
pub mod instant;
pub mod linkage;
pub mod loadgen;
pub mod outbox;
pub mod policy;
pub mod records;
pub mod sites;
pub mod store;
pub mod tls;

pub use app::server::Gateway;
pub use config::Config;

/// Every binary linking the gateway allocates with mimalloc: request tasks allocate
/// audit events that the audit writer thread frees, and glibc's arenas turned those
/// cross-thread frees into lock contention (a third of the CPU of an audited read).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
