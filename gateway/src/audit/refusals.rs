//! Refused TLS handshakes in the audit log: a revoked or stolen terminal knocking must
//! leave a trace an auditor can find, not only a counter. Each refusal is noted here as
//! it happens; once a minute the notes become AuditEvents (DICOM 110114 User
//! Authentication, outcome 4), one per certificate and reason, with the number of
//! attempts, so that a flood of handshakes writes a bounded number of events.

use super::event::{AuditRecord, CertSummary, Interaction, Outcome, Requestor};
use super::AuditLog;
use crate::tls::Presented;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Distinct (certificate, reason) pairs kept per interval for certificates that did
/// not chain to the federation CA (anybody can make those); beyond it, their refusals
/// are counted into one overflow event, so memory and events stay bounded under a
/// flood. Federation certificates (revoked ones, say) are always kept apart, so a
/// flood of home-made certificates cannot hide a revoked terminal's knock; there are
/// only as many of those as the CA issued (bounded all the same by `MAX_CHAINED`).
const MAX_KEYS: usize = 1024;
const MAX_CHAINED: usize = 16 * MAX_KEYS;

/// One (certificate, reason) pair's refusals in the current interval.
#[derive(Debug, Clone)]
struct Tally {
    presented: Option<Presented>,
    reason: &'static str,
    attempts: u64,
    first_peer: SocketAddr,
    first_at: i64,
}

/// Refusals noted since the last flush.
#[derive(Debug, Default)]
pub struct Refusals {
    tallies: Mutex<HashMap<(String, &'static str), Tally>>,
}

impl Refusals {
    /// Note one refused handshake from `peer`; `presented` when a certificate was
    /// judged, `reason` always.
    pub fn note(&self, peer: SocketAddr, presented: Option<Presented>, reason: &'static str) {
        let mut t = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let chained = presented.as_ref().is_some_and(Presented::chained);
        let mut key = (presented.as_ref().map(|p| p.fingerprint.clone()).unwrap_or_default(), reason);
        if !t.contains_key(&key) {
            let (kept, max) = if chained {
                (t.values().filter(|v| v.presented.as_ref().is_some_and(Presented::chained)).count(), MAX_CHAINED)
            } else {
                (t.values().filter(|v| !v.presented.as_ref().is_some_and(Presented::chained)).count(), MAX_KEYS)
            };
            if kept >= max {
                key = ("*".into(), "overflow");
            }
        }
        let now = super::now_micros();
        let tally = t.entry(key.clone()).or_insert_with(|| Tally {
            presented: if key.1 == "overflow" { None } else { presented },
            reason: key.1,
            attempts: 0,
            first_peer: peer,
            first_at: now,
        });
        tally.attempts += 1;
    }

    /// The audit records of everything noted since the last call.
    pub fn drain(&self) -> Vec<AuditRecord> {
        let tallies: Vec<Tally> =
            self.tallies.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, v)| v).collect();
        tallies.into_iter().map(record).collect()
    }

    /// Write the noted refusals to `log` every `every`, until the log refuses.
    pub async fn run(self: std::sync::Arc<Self>, log: AuditLog, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            for rec in self.drain() {
                if let Err(e) = log.record(rec).await {
                    tracing::warn!(error = %e, "refused handshakes could not be audited");
                }
            }
        }
    }
}

fn record(t: Tally) -> AuditRecord {
    let desc = match t.reason {
        "overflow" => format!(
            "TLS handshakes refused: {} further attempts from more than {MAX_KEYS} distinct certificates in this interval",
            t.attempts
        ),
        reason => format!("TLS handshake refused ({reason}): {} attempt(s) in this interval", t.attempts),
    };
    AuditRecord {
        interaction: Interaction::Connect,
        outcome: Outcome::Denied,
        outcome_desc: Some(desc),
        // A certificate that did not chain to the federation says whatever its maker
        // wrote: it is attributed to no institution (so it lands in no institution's
        // audit view) and its subject is marked as unverified.
        requestor: Requestor::Unidentified {
            fingerprint: t.presented.as_ref().map(|p| p.fingerprint.clone()),
            institution: t.presented.as_ref().filter(|p| p.chained()).and_then(|p| p.institution.clone()),
            certificate: t.presented.map(|p| CertSummary {
                subject: if p.chained() { p.subject } else { format!("(unverified) {}", p.subject) },
                issuer: p.issuer,
                serial: p.serial,
            }),
        },
        source_address: t.first_peer.to_string(),
        disclosed: vec![],
        query: None,
        purpose: "TREAT".into(),
        break_glass_reason: None,
        recorded_micros: t.first_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(fp: &str, reason: &'static str) -> Presented {
        Presented {
            subject: "CN=t1, O=Clinic".into(),
            issuer: "CN=Federation CA".into(),
            serial: "0a1b".into(),
            fingerprint: fp.into(),
            institution: Some("4610200021".into()),
            reason,
        }
    }

    #[test]
    fn refusals_are_one_event_per_certificate_and_reason_with_the_count() {
        let r = Refusals::default();
        let peer: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        for _ in 0..50 {
            r.note(peer, Some(presented("aa", "revoked")), "revoked");
        }
        r.note(peer, Some(presented("bb", "unknown-ca")), "unknown-ca");
        r.note(peer, None, "no-certificate");
        let mut events = r.drain();
        events.sort_by_key(|e| e.outcome_desc.clone());
        assert_eq!(events.len(), 3);
        let revoked = events.iter().find(|e| e.outcome_desc.as_deref().unwrap().contains("(revoked)")).unwrap();
        assert!(revoked.outcome_desc.as_deref().unwrap().contains("50 attempt"));
        assert_eq!(revoked.source_address, "10.0.0.9:4000");
        let entry = revoked.entry("gw");
        assert_eq!(entry.agent.serial.as_deref(), Some("0a1b"));
        assert!(r.drain().is_empty(), "drained");
    }

    #[test]
    fn a_flood_of_home_made_certificates_stays_bounded_and_hides_no_revoked_terminal() {
        let r = Refusals::default();
        let peer: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        for i in 0..5000 {
            r.note(peer, Some(presented(&format!("{i:064x}"), "unknown-ca")), "unknown-ca");
        }
        r.note(peer, Some(presented("revoked-one", "revoked")), "revoked");
        let events = r.drain();
        assert_eq!(events.len(), MAX_KEYS + 2);
        let overflow = events.iter().find(|e| e.outcome_desc.as_deref().unwrap().contains("further attempts")).unwrap();
        assert!(overflow.outcome_desc.as_deref().unwrap().contains(&format!("{}", 5000 - MAX_KEYS)));
        let revoked = events.iter().find(|e| e.outcome_desc.as_deref().unwrap().contains("(revoked)")).unwrap();
        assert_eq!(revoked.entry("gw").agent.institution.as_deref(), Some("4610200021"));
        // A home-made certificate names no institution in the log, and says it is unverified.
        let home_made = events.iter().find(|e| e.outcome_desc.as_deref().unwrap().contains("(unknown-ca)")).unwrap();
        let entry = home_made.entry("gw");
        assert_eq!(entry.agent.institution, None);
        assert!(entry.agent.subject.as_deref().unwrap().starts_with("(unverified)"));
    }
}
