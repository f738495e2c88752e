//! Connection admission: how many TLS connections may be open at once, in all and per
//! client certificate, and the clear refusal (a 503 OperationOutcome, then close) that
//! a client over a limit gets instead of a silent reset.

use crate::app::ApiError;
use axum::response::IntoResponse;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Refusals answered over TLS at once when the gateway is full; beyond this, further
/// connections are closed unanswered (answering costs a handshake each).
const MAX_REFUSING: usize = 64;

/// The limits and the connections counted against them.
#[derive(Debug)]
pub struct Limits {
    max: usize,
    max_per_certificate: usize,
    max_handshakes_per_address: usize,
    open: AtomicUsize,
    refusing: AtomicUsize,
    per_certificate: Mutex<HashMap<String, usize>>,
    /// Handshakes in progress per client address: before a certificate is presented the
    /// address is all there is to limit, and connections that never finish a handshake
    /// (one byte every few seconds) must not fill the global limit from one host.
    handshaking: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// A place among the open connections; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    counter: Counter,
}

#[derive(Debug)]
enum Counter {
    Open,
    Refusing,
    Certificate(String),
    Handshake(std::net::IpAddr),
}

impl Drop for Slot {
    fn drop(&mut self) {
        match &self.counter {
            Counter::Open => {
                self.limits.open.fetch_sub(1, Relaxed);
            }
            Counter::Refusing => {
                self.limits.refusing.fetch_sub(1, Relaxed);
            }
            Counter::Certificate(fp) => {
                let mut m = self.limits.per_certificate.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(n) = m.get_mut(fp) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(fp);
                    }
                }
            }
            Counter::Handshake(ip) => {
                let mut m = self.limits.handshaking.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(n) = m.get_mut(ip) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(ip);
                    }
                }
            }
        }
    }
}

/// What to do with a newly accepted TCP connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it.
    Serve(Slot),
    /// Complete the handshake only to answer 503 and close.
    Refuse(Slot),
    /// Close it at once (the gateway is full and already refusing many).
    Drop,
}

impl Limits {
    /// Limits of `max` connections in all, `max_per_certificate` per certificate and
    /// `max_handshakes_per_address` handshakes in progress per client address.
    pub fn new(max: usize, max_per_certificate: usize, max_handshakes_per_address: usize) -> Arc<Limits> {
        Arc::new(Limits {
            max,
            max_per_certificate,
            max_handshakes_per_address,
            open: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            per_certificate: Mutex::default(),
            handshaking: Mutex::default(),
        })
    }

    /// A place for one more handshake from `ip`, if it has fewer than the limit going.
    pub fn admit_handshake(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        let mut m = self.handshaking.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max_handshakes_per_address {
            return None;
        }
        *n += 1;
        Some(Slot { limits: self.clone(), counter: Counter::Handshake(ip) })
    }

    fn take(counter: &AtomicUsize, max: usize) -> bool {
        counter.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Admit a new TCP connection against the global limit.
    pub fn admit(self: &Arc<Self>) -> Admission {
        if Self::take(&self.open, self.max) {
            Admission::Serve(Slot { limits: self.clone(), counter: Counter::Open })
        } else if Self::take(&self.refusing, MAX_REFUSING) {
            Admission::Refuse(Slot { limits: self.clone(), counter: Counter::Refusing })
        } else {
            Admission::Drop
        }
    }

    /// A place for one more connection with the certificate `fingerprint`, if it has
    /// fewer than the limit open.
    pub fn admit_certificate(self: &Arc<Self>, fingerprint: &str) -> Option<Slot> {
        let mut m = self.per_certificate.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(fingerprint.to_string()).or_insert(0);
        if *n >= self.max_per_certificate {
            return None;
        }
        *n += 1;
        Some(Slot { limits: self.clone(), counter: Counter::Certificate(fingerprint.to_string()) })
    }
}

/// Answer every request on `stream` with 503 and `why`, closing the connection after
/// the first response (HTTP/1.1) or within a few seconds (HTTP/2).
pub async fn refuse<S>(stream: S, why: &'static str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| async move {
        let mut resp = ApiError::Unavailable(why.to_string()).into_response();
        resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
        Ok::<_, std::convert::Infallible>(resp)
    });
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let _ = tokio::time::timeout(Duration::from_secs(5), http.serve_connection(TokioIo::new(stream), svc)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_limited_per_address() {
        let l = Limits::new(100, 10, 2);
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = l.admit_handshake(a);
        let _second = l.admit_handshake(a);
        assert!(first.is_some() && l.admit_handshake(a).is_none(), "two at once from one address");
        assert!(l.admit_handshake(b).is_some(), "another address is not affected");
        drop(first);
        assert!(l.admit_handshake(a).is_some());
    }

    #[test]
    fn global_and_per_certificate_limits_hold_and_free_on_drop() {
        let l = Limits::new(2, 1, 64);
        let a = l.admit();
        let b = l.admit();
        assert!(matches!((&a, &b), (Admission::Serve(_), Admission::Serve(_))));
        assert!(matches!(l.admit(), Admission::Refuse(_)), "over the limit: answered 503");
        drop(a);
        assert!(matches!(l.admit(), Admission::Serve(_)), "a place freed");
        let one = l.admit_certificate("fp");
        assert!(one.is_some());
        assert!(l.admit_certificate("fp").is_none(), "one per certificate");
        assert!(l.admit_certificate("other").is_some());
        drop(one);
        assert!(l.admit_certificate("fp").is_some());
        let refusing: Vec<Admission> = (0..MAX_REFUSING + 5).map(|_| l.admit()).collect();
        assert!(matches!(refusing.last(), Some(Admission::Drop)), "refusals themselves are bounded");
    }
}
