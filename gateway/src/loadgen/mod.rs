//! Load harness (`kakehashi bench`): mutual-TLS clients over HTTP/1.1 keep-alive, HTTP/2,
//! or a new connection per request (full handshakes, or with session resumption),
//! N connections for D seconds, latency in an HDR histogram and errors by kind; and a
//! bare tokio + hyper + rustls baseline server that answers the same bytes. Loopback
//! only, bounded in time, stops by itself.

pub mod baseline;
pub mod hub;
pub mod pinned;
pub mod scenario;
pub mod storage;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::ServerName;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1, one keep-alive connection per client.
    H1,
    /// HTTP/2, one connection per client.
    H2,
    /// A new TLS connection (full handshake) per request.
    NewConnection,
    /// A new TCP connection per request, resuming the TLS session.
    Resumed,
}

/// One request to repeat.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Status that counts as success.
    pub expect: u16,
    /// For requests that must differ (idempotency keys of pushed documents): the body
    /// is sent as `head`, a fresh `token-N`, then `tail` (see [`RequestSpec::unique`]).
    pub unique: Option<Unique>,
}

/// A body split around a token that every request replaces with a fresh value.
#[derive(Debug, Clone)]
pub struct Unique {
    head: Bytes,
    token: String,
    tail: Bytes,
}

impl RequestSpec {
    /// A GET of `path` expecting 200.
    pub fn get(path: &str) -> RequestSpec {
        RequestSpec {
            method: http::Method::GET,
            path: path.to_string(),
            headers: vec![],
            body: Bytes::new(),
            expect: 200,
            unique: None,
        }
    }

    /// Make every request's body differ: the first `token` in the body becomes `token-N`.
    pub fn unique(mut self, token: &str) -> Result<RequestSpec, String> {
        let at = self
            .body
            .windows(token.len().max(1))
            .position(|w| w == token.as_bytes())
            .ok_or_else(|| format!("`{token}` is not in the request body"))?;
        let tail = self.body.slice(at + token.len()..);
        self.unique = Some(Unique { head: self.body.slice(..at), token: token.to_string(), tail });
        Ok(self)
    }
}

/// Numbers for [`RequestSpec::unique`], fresh across runs of one process.
static UNIQUE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A load run.
#[derive(Clone)]
pub struct LoadSpec {
    /// Target (loopback).
    pub addr: SocketAddr,
    /// Further instances of the same service: client i uses `addr` and these in turn.
    pub also: Vec<SocketAddr>,
    /// Connection use.
    pub mode: Mode,
    /// Concurrent clients.
    pub connections: usize,
    /// How long.
    pub duration: Duration,
    /// What each client sends.
    pub request: RequestSpec,
    /// Client TLS configuration (CA, certificate, key).
    pub tls: Arc<rustls::ClientConfig>,
    /// Requests per second per client; 0 = as fast as possible.
    pub rate_per_client: f64,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadReport {
    /// Successful requests.
    pub ok: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed: Duration,
    /// Latency of successful requests, microseconds.
    pub latency: Histogram<u64>,
    /// CPU time of the whole process (server, clients and all their threads) during
    /// the run, when the platform reports it.
    pub cpu: Option<Duration>,
}

impl LoadReport {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Process CPU microseconds per successful request: on a saturated machine this
    /// steadier figure shows what each request costs where req/s swing with the host.
    pub fn cpu_per_request(&self) -> Option<f64> {
        Some(self.cpu?.as_secs_f64() * 1e6 / self.ok.max(1) as f64)
    }

    /// One line: rate, percentiles, CPU per request, errors.
    pub fn line(&self) -> String {
        let q = |p: f64| self.latency.value_at_quantile(p) as f64 / 1000.0;
        let errors: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{:>9.0} req/s  p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  cpu {} µs/req  errors: {}",
            self.rate(),
            q(0.5),
            q(0.9),
            q(0.99),
            self.latency.max() as f64 / 1000.0,
            self.cpu_per_request().map_or_else(|| "?".into(), |c| format!("{c:.0}")),
            if errors.is_empty() { "none".into() } else { errors.join(" ") }
        )
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

/// A TLS client configuration for the harness: trusts `ca`, presents `cert` and `key`.
pub fn client_config(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    alpn: &[&[u8]],
    resumption: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    crate::tls::client_config(ca, Some((cert, key)), alpn, resumption).map_err(|e| e.to_string())
}

type Sender1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type Sender2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

enum Conn {
    H1(Sender1),
    H2(Sender2),
}

async fn connect(spec: &LoadSpec, h2: bool) -> Result<Conn, String> {
    let tcp = TcpStream::connect(spec.addr).await.map_err(|_| "connect".to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(|_| "name".to_string())?;
    let tls =
        tokio_rustls::TlsConnector::from(spec.tls.clone()).connect(name, tcp).await.map_err(|_| "tls".to_string())?;
    let io = hyper_util::rt::TokioIo::new(tls);
    if h2 {
        let (send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|_| "h2-handshake".to_string())?;
        tokio::spawn(conn);
        Ok(Conn::H2(send))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|_| "h1-handshake".to_string())?;
        tokio::spawn(conn);
        Ok(Conn::H1(send))
    }
}

fn build(spec: &RequestSpec, h2: bool, close: bool) -> http::Request<Full<Bytes>> {
    let uri = if h2 { format!("https://localhost{}", spec.path) } else { spec.path.clone() };
    let mut b = http::Request::builder().method(spec.method.clone()).uri(uri);
    if !h2 {
        b = b.header(http::header::HOST, "localhost");
        if close {
            b = b.header(http::header::CONNECTION, "close");
        }
    }
    for (k, v) in &spec.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let body = match &spec.unique {
        Some(u) => {
            let n = UNIQUE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let fresh = format!("{}-{n}", u.token);
            let mut b = Vec::with_capacity(u.head.len() + fresh.len() + u.tail.len());
            b.extend_from_slice(&u.head);
            b.extend_from_slice(fresh.as_bytes());
            b.extend_from_slice(&u.tail);
            Bytes::from(b)
        }
        None => spec.body.clone(),
    };
    b.body(Full::new(body)).unwrap_or_else(|_| http::Request::new(Full::new(Bytes::new())))
}

async fn send(conn: &mut Conn, spec: &RequestSpec, close: bool) -> Result<(), String> {
    let resp = match conn {
        Conn::H1(s) => {
            s.ready().await.map_err(|_| "closed".to_string())?;
            s.send_request(build(spec, false, close)).await
        }
        Conn::H2(s) => {
            s.ready().await.map_err(|_| "closed".to_string())?;
            s.send_request(build(spec, true, false)).await
        }
    }
    .map_err(|_| "request".to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await.map_err(|_| "body".to_string())?;
    if status == spec.expect {
        Ok(())
    } else {
        Err(format!("status-{status}"))
    }
}

/// One keep-alive connection for requests one at a time (latency, not load).
pub struct Session {
    conn: Conn,
}

impl Session {
    /// Connect to `addr` with `tls` (HTTP/1.1 keep-alive).
    pub async fn open(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Session, String> {
        let spec = LoadSpec {
            addr,
            also: vec![],
            tls,
            mode: Mode::H1,
            request: RequestSpec::get("/"),
            connections: 1,
            duration: Duration::ZERO,
            rate_per_client: 0.0,
        };
        Ok(Session { conn: connect(&spec, false).await? })
    }

    /// GET `path`: status and body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Bytes), String> {
        let Conn::H1(s) = &mut self.conn else { return Err("not HTTP/1.1".into()) };
        s.ready().await.map_err(|_| "closed".to_string())?;
        let req = build(&RequestSpec::get(path), false, false);
        let resp = s.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|_| "body".to_string())?.to_bytes();
        Ok((status, body))
    }
}

/// Connections opened, each used for one request, then held open and idle.
pub struct IdleConnections {
    _held: Vec<Conn>,
}

/// Open `n` keep-alive connections (HTTP/1.1, one request each) and keep them idle.
pub async fn hold_idle(spec: &LoadSpec, n: usize) -> Result<IdleConnections, String> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = connect(spec, false).await?;
        send(&mut c, &spec.request, false).await?;
        held.push(c);
    }
    Ok(IdleConnections { _held: held })
}

/// Run one load test.
pub async fn run(spec: LoadSpec) -> LoadReport {
    let started = Instant::now();
    let cpu_before = process_cpu();
    let deadline = started + spec.duration;
    let mut tasks = Vec::new();
    for i in 0..spec.connections {
        let mut spec = spec.clone();
        let instances = 1 + spec.also.len();
        if i % instances > 0 {
            spec.addr = spec.also[i % instances - 1];
        }
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut ok = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut conn: Option<Conn> = None;
            let interval = (spec.rate_per_client > 0.0).then(|| Duration::from_secs_f64(1.0 / spec.rate_per_client));
            // Spread open-loop clients over the interval.
            let mut next =
                Instant::now() + interval.map(|d| d.mul_f64(i as f64 / spec.connections as f64)).unwrap_or_default();
            while Instant::now() < deadline {
                // Open loop: latency counts from when the request was due, so that a
                // stalled server is charged for the requests it kept waiting.
                let mut t0 = Instant::now();
                if let Some(d) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    t0 = next;
                    next += d;
                }
                let result = match spec.mode {
                    Mode::H1 | Mode::H2 => {
                        if conn.is_none() {
                            match connect(&spec, spec.mode == Mode::H2).await {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    *errors.entry(e).or_default() += 1;
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                    continue;
                                }
                            }
                        }
                        let c = conn.as_mut().expect("connected above");
                        let r = send(c, &spec.request, false).await;
                        if r.is_err() {
                            conn = None;
                        }
                        r
                    }
                    Mode::NewConnection | Mode::Resumed => match connect(&spec, false).await {
                        Ok(mut c) => send(&mut c, &spec.request, true).await,
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(()) => {
                        ok += 1;
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => *errors.entry(e).or_default() += 1,
                }
            }
            (ok, errors, hist)
        }));
    }
    let mut report =
        LoadReport { ok: 0, errors: BTreeMap::new(), elapsed: Duration::ZERO, latency: histogram(), cpu: None };
    for t in tasks {
        if let Ok((ok, errors, hist)) = t.await {
            report.ok += ok;
            for (k, v) in errors {
                *report.errors.entry(k).or_default() += v;
            }
            let _ = report.latency.add(&hist);
        }
    }
    report.elapsed = started.elapsed();
    report.cpu = process_cpu().zip(cpu_before).and_then(|(after, before)| after.checked_sub(before));
    report
}

/// User plus system CPU time of this process so far (Linux `/proc/self/stat`).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_from_stat(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/[pid]/stat` line. They count USER_HZ
/// ticks, which Linux fixes at 100 per second for this interface whatever the kernel's
/// own tick rate.
pub(crate) fn cpu_from_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces; count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat = "4242 (tokio (rt) x) R 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 4 0";
        assert_eq!(cpu_from_stat(stat), Some(Duration::from_millis(18_010)));
        assert_eq!(cpu_from_stat("4242 (truncated) R 1"), None);
    }

    #[test]
    fn this_process_reports_its_cpu_time() {
        // Spin until the reading advances by 50 ms: on a busy machine a fixed wall-clock
        // spin may get less CPU than it asks for. The advance cannot exceed what every
        // core could have done meanwhile.
        let before = process_cpu().expect("Linux reports process CPU time");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let spin = Instant::now();
        let mut x = 0u64;
        let after = loop {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            let now = process_cpu().expect("Linux reports process CPU time");
            if now >= before + Duration::from_millis(50) || spin.elapsed() > Duration::from_secs(10) {
                break now;
            }
        };
        std::hint::black_box(x);
        let wall = spin.elapsed();
        assert!(after >= before + Duration::from_millis(50), "{before:?} then {after:?} after {wall:?} of spinning");
        // One 10 ms tick of slack for the reading taken just before the spin began.
        assert!(
            after - before <= wall * cores + Duration::from_millis(10),
            "{:?} of CPU in {wall:?} on {cores} cores",
            after - before
        );
    }
}
