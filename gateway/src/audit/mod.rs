//! Audit: one AuditEvent per disclosure or refusal, written durably and hash-chained
//! before the response body leaves.

pub mod checkpoint;
pub mod event;
pub mod export;
pub mod forward;
pub mod journal;
pub mod log;
pub mod refusals;
mod sqlite_writer;
pub mod verify;
pub mod witness;

pub use event::{AuditRecord, CertSummary, Disclosed, Interaction, Outcome, Requestor};
pub use log::{AuditError, AuditLog, Checkpoints, Journaling};

/// Now, in Unix microseconds.
pub fn now_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}
