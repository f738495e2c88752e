//! The admin listener (plain HTTP, loopback by default): `/healthz` and Prometheus
//! `/metrics`. It serves no patient data and needs no certificate, which is why it
//! must not be exposed beyond the host.

use crate::store::Store;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http::{header, StatusCode};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Process-wide counters exposed at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class 1xx..5xx (index 1..=5).
    pub responses: [AtomicU64; 6],
    /// TLS connections accepted (handshake completed).
    pub connections_accepted: AtomicU64,
    /// Connections currently open.
    pub connections_open: AtomicU64,
    /// Handshakes that failed (bad/missing/revoked certificate, protocol errors).
    pub handshakes_failed: AtomicU64,
    /// Handshakes that timed out.
    pub handshakes_timed_out: AtomicU64,
    /// Requests refused at the identity step.
    pub identity_refusals: AtomicU64,
    /// Successful reloads of TLS material.
    pub tls_reloads: AtomicU64,
    /// Refused or failed handshakes by reason (`revoked`, `unknown-ca`, `no-certificate`...).
    pub handshake_refusals: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Connections refused for the global limit.
    pub refused_global_limit: AtomicU64,
    /// Connections refused for the per-certificate limit.
    pub refused_certificate_limit: AtomicU64,
    /// Connections closed at once: too many handshakes in progress from their address.
    pub refused_address_limit: AtomicU64,
    /// Open connections closed because their certificate was revoked (or the CRLs lapsed).
    pub closed_revoked: AtomicU64,
    /// Outbox delivery attempts by kind (`document`, `break-glass`) and result.
    pub outbox_attempts: std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
    /// Audit forwarding counters, when `[audit.forward]` is configured.
    pub audit_forward: std::sync::OnceLock<Arc<crate::audit::forward::ForwardStats>>,
    /// The audit writer's group-commit counters, once it runs.
    pub audit_writer: std::sync::OnceLock<Arc<crate::audit::log::WriterStats>>,
    /// The records indexer's progress, once it runs.
    pub records: std::sync::OnceLock<Arc<crate::records::indexer::Status>>,
    /// The records cache's counters, once it runs.
    pub cache: std::sync::OnceLock<Arc<crate::records::cache::CacheStats>>,
}

impl Metrics {
    /// Count one response.
    pub fn response(&self, status: StatusCode) {
        let class = (status.as_u16() / 100) as usize;
        if let Some(c) = self.responses.get(class) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Count one refused or failed handshake.
    pub fn handshake_refused(&self, reason: &'static str) {
        self.handshakes_failed.fetch_add(1, Relaxed);
        *self
            .handshake_refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    /// Count one outbox delivery attempt of `kind`.
    pub fn outbox(&self, kind: &'static str, ok: bool) {
        let result = if ok { "delivered" } else { "failed" };
        *self
            .outbox_attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((kind, result))
            .or_default() += 1;
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP kakehashi_tls_handshakes_refused_total TLS handshakes refused, by reason.\n# TYPE kakehashi_tls_handshakes_refused_total counter\n");
        for (reason, n) in self.handshake_refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            let _ = writeln!(s, "kakehashi_tls_handshakes_refused_total{{reason=\"{reason}\"}} {n}");
        }
        s.push_str("# HELP kakehashi_outbox_deliveries_total Outbox delivery attempts by kind and result (failed ones are retried with backoff).\n# TYPE kakehashi_outbox_deliveries_total counter\n");
        for ((kind, result), n) in self.outbox_attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter()
        {
            let _ = writeln!(s, "kakehashi_outbox_deliveries_total{{kind=\"{kind}\",result=\"{result}\"}} {n}");
        }
        s.push_str("# HELP kakehashi_connections_refused_total Connections refused at a connection limit.\n# TYPE kakehashi_connections_refused_total counter\n");
        for (limit, v) in [
            ("global", &self.refused_global_limit),
            ("certificate", &self.refused_certificate_limit),
            ("address", &self.refused_address_limit),
        ] {
            let _ = writeln!(s, "kakehashi_connections_refused_total{{limit=\"{limit}\"}} {}", v.load(Relaxed));
        }
        s.push_str("# HELP kakehashi_http_responses_total FHIR responses by status class.\n# TYPE kakehashi_http_responses_total counter\n");
        for class in 1..=5 {
            let _ = writeln!(
                s,
                "kakehashi_http_responses_total{{class=\"{class}xx\"}} {}",
                self.responses[class].load(Relaxed)
            );
        }
        for (name, help, kind, v) in [
            (
                "kakehashi_tls_connections_accepted_total",
                "TLS connections whose handshake completed.",
                "counter",
                &self.connections_accepted,
            ),
            ("kakehashi_tls_connections_open", "TLS connections currently open.", "gauge", &self.connections_open),
            (
                "kakehashi_tls_handshakes_failed_total",
                "TLS handshakes refused or failed.",
                "counter",
                &self.handshakes_failed,
            ),
            (
                "kakehashi_tls_handshakes_timed_out_total",
                "TLS handshakes that timed out.",
                "counter",
                &self.handshakes_timed_out,
            ),
            (
                "kakehashi_identity_refusals_total",
                "Requests refused at the identity step.",
                "counter",
                &self.identity_refusals,
            ),
            (
                "kakehashi_tls_reloads_total",
                "Reloads of TLS material (CA, CRL, certificate).",
                "counter",
                &self.tls_reloads,
            ),
            (
                "kakehashi_connections_closed_revoked_total",
                "Open connections closed because their certificate was revoked or the CRLs lapsed.",
                "counter",
                &self.closed_revoked,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Relaxed));
        }
        if let Some(w) = self.audit_writer.get() {
            for (name, help, v) in [
                (
                    "kakehashi_audit_commits_total",
                    "Audit transactions (group commits) that appended events.",
                    &w.commits,
                ),
                ("kakehashi_audit_events_total", "Audit events appended.", &w.events),
            ] {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
            }
            let name = "kakehashi_audit_commit_seconds_total";
            let _ = writeln!(
                s,
                "# HELP {name} Time reads waited in audit group commits (write turn, inserts, flush).\n# TYPE {name} counter\n{name} {:.6}",
                w.commit_nanos.load(Relaxed) as f64 / 1e9
            );
        }
        if let Some(r) = self.records.get() {
            for (name, help, kind, v) in [
                (
                    "kakehashi_index_files_total",
                    "Source files indexed (translated and recorded).",
                    "counter",
                    r.files.load(Relaxed) as f64,
                ),
                ("kakehashi_index_patients_total", "Patients indexed.", "counter", r.patients.load(Relaxed) as f64),
                (
                    "kakehashi_index_problems_total",
                    "Source files that could not be used (retried when they change).",
                    "counter",
                    r.problems.load(Relaxed) as f64,
                ),
                (
                    "kakehashi_index_reindexed_on_read_total",
                    "Patients found changed by a read and indexed then.",
                    "counter",
                    r.reindexed_on_read.load(Relaxed) as f64,
                ),
                (
                    "kakehashi_records_watched_directories",
                    "Directories of cached SS-MIX2 patients under change notices (read without a stat).",
                    "gauge",
                    r.watched.load(Relaxed) as f64,
                ),
                (
                    "kakehashi_index_passes_total",
                    "Indexer passes over the sites.",
                    "counter",
                    r.passes.load(Relaxed) as f64,
                ),
                (
                    "kakehashi_index_backlog",
                    "Directories waiting in the current indexer pass.",
                    "gauge",
                    r.backlog.load(Relaxed) as f64,
                ),
                (
                    "kakehashi_index_files_per_second",
                    "Files per second over the last busy stretch.",
                    "gauge",
                    r.rate_centi.load(Relaxed) as f64 / 100.0,
                ),
                (
                    "kakehashi_index_complete",
                    "1 once every site was indexed completely.",
                    "gauge",
                    f64::from(u8::from(r.complete.load(Relaxed))),
                ),
                (
                    "kakehashi_index_cpu_seconds_total",
                    "CPU time of the indexer thread.",
                    "counter",
                    r.cpu_ns.load(Relaxed) as f64 / 1e9,
                ),
            ] {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
            }
        }
        if let Some(c) = self.cache.get() {
            for (name, help, kind, v) in [
                ("kakehashi_cache_hits_total", "Patients' records found current in the cache.", "counter", &c.hits),
                (
                    "kakehashi_cache_misses_total",
                    "Patients' records translated (absent or changed).",
                    "counter",
                    &c.misses,
                ),
                ("kakehashi_cache_evictions_total", "Patients' records evicted for room.", "counter", &c.evictions),
                ("kakehashi_cache_bytes", "Estimated bytes held by the cache.", "gauge", &c.bytes),
            ] {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Relaxed));
            }
        }
        if let Some(f) = self.audit_forward.get() {
            for (name, help, v) in [
                ("kakehashi_audit_forward_sent_total", "Audit events sent to the ATNA repository.", &f.sent),
                ("kakehashi_audit_forward_dropped_total", "Audit events not forwarded (queue full).", &f.dropped),
                ("kakehashi_audit_forward_connects_total", "Connections made to the ATNA repository.", &f.connects),
            ] {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
            }
        }
        s
    }
}

/// The admin routes. `/healthz` is 200 only while the database answers, so a load
/// balancer stops sending reads to an instance that could not audit them.
pub fn router(metrics: Arc<Metrics>, store: Store) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State((_, store)): State<(Arc<Metrics>, Store)>| async move {
                if store.ping().await {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
                }
            }),
        )
        .route(
            "/status",
            get(|State((m, _)): State<(Arc<Metrics>, Store)>| async move {
                let records = m.records.get().map(|r| r.json()).unwrap_or(serde_json::Value::Null);
                let body = serde_json::json!({ "records_index": records });
                ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
            }),
        )
        .route(
            "/metrics",
            get(|State((m, _)): State<(Arc<Metrics>, Store)>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
            }),
        )
        .with_state((metrics, store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.response(StatusCode::OK);
        m.response(StatusCode::FORBIDDEN);
        m.response(StatusCode::FORBIDDEN);
        m.handshakes_failed.fetch_add(2, Relaxed);
        m.handshake_refused("revoked");
        let t = m.render();
        assert!(t.contains("kakehashi_tls_handshakes_refused_total{reason=\"revoked\"} 1\n"), "{t}");
        assert!(t.contains("kakehashi_http_responses_total{class=\"2xx\"} 1\n"));
        assert!(t.contains("kakehashi_http_responses_total{class=\"4xx\"} 2\n"));
        assert!(t.contains("kakehashi_tls_handshakes_failed_total 3\n"));
        assert!(t.contains("# TYPE kakehashi_tls_connections_open gauge"));
    }
}
