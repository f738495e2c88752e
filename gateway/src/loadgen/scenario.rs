//! `kakehashi bench`: a throw-away federation in a temporary directory (PKI, synthetic
//! sites, a consent so the clinic's reads cross the hub's boundary), the gateway on a
//! loopback port, and the baseline answering the gateway's own bytes; the same client
//! drives both, alternately, and the ratio is printed.

use super::{baseline, client_config, run, LoadReport, LoadSpec, Mode, RequestSpec};
use crate::demo::{CLINIC_A, HUB};
use crate::{Config, Gateway};
use bytes::Bytes;
use kakehashi_certs::{ClientCertRequest, InitOptions, Pki, Role};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// (a) audited cross-site read of one Patient (translation cached).
    PatientRead,
    /// (b) audited search returning 20 MedicationRequests.
    Search20,
    /// (c) audited `$everything` for a person with a year of records at two sites.
    Everything,
    /// (d) a discharge summary of about 50 KB pushed by the hub (a new document each time).
    Push50k,
    /// (e) `GET /fhir/metadata`, for handshake rates.
    Metadata,
}

/// Options of a bench run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workload.
    pub workload: Workload,
    /// Connection use.
    pub mode: Mode,
    /// Concurrent clients.
    pub connections: usize,
    /// Seconds per measurement.
    pub duration: Duration,
    /// Alternating rounds (gateway, baseline).
    pub rounds: usize,
    /// A first, unreported run of every contestant, this long.
    pub warmup: Duration,
    /// Requests/s per client (open loop); 0 = closed loop, as fast as possible.
    pub rate_per_client: f64,
    /// Database of the gateways (default: SQLite in the temporary directory).
    pub database_url: Option<String>,
    /// Gateway instances sharing that database; clients are spread across them.
    pub instances: usize,
    /// After the rounds, hold this many idle keep-alive connections and report memory.
    pub idle: usize,
}

pub(super) struct Federation {
    pub(super) dir: PathBuf,
}

impl Drop for Federation {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The throw-away federation the load harness and the audit benchmark run: a hub with
/// the demo's SS-MIX2 site and clinic A with its MML records, JAHIS prescriptions and
/// inbox; paths are relative to the configuration file.
fn federation_config(database_url: &str) -> String {
    format!(
        r#"[federation]
name = "bench"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[tls]
client_ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server.key"
crls = ["pki/ca.crl"]
[database]
url = "{}"
[audit]
signing_key = "pki/audit-signing.pk8"
[[institution]]
code = "{}"
name = "Hub"
kind = "hub-hospital"
[[institution]]
code = "{}"
name = "Clinic"
kind = "clinic"
[[site]]
id = "hub"
owner = "{}"
connector = {{ kind = "ss-mix2", root = "sites/hub/ss-mix2" }}
[[site]]
id = "clinic-a"
owner = "{}"
connector = {{ kind = "mml", dir = "sites/clinic-a/mml" }}
inbox = {{ dir = "sites/clinic-a/inbox", format = "mml" }}
[[site]]
id = "clinic-a-rx"
owner = "{}"
connector = {{ kind = "jahis-rx", dir = "sites/clinic-a/rx" }}
"#,
        database_url, HUB.code, CLINIC_A.code, HUB.code, CLINIC_A.code, CLINIC_A.code
    )
}

/// Write the throw-away federation of [`federation_config`] into `dir`: a fresh PKI, the
/// demo's sites and the configuration; returns the PKI (to issue client certificates)
/// and the loaded configuration.
pub fn write_federation(dir: &std::path::Path, database_url: &str) -> Result<(Pki, Config), String> {
    let pki = Pki::init(&dir.join("pki"), &InitOptions::default()).map_err(|e| e.to_string())?;
    crate::demo::write_sites(dir)?;
    std::fs::create_dir_all(dir.join("sites/clinic-a/rx")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("kakehashi.toml"), federation_config(database_url)).map_err(|e| e.to_string())?;
    let cfg = Config::load(&dir.join("kakehashi.toml")).map_err(|e| e.to_string())?;
    Ok((pki, cfg))
}

pub async fn one(spec: &LoadSpec) -> Result<(u16, Bytes), String> {
    let mut s = spec.clone();
    s.connections = 1;
    let tcp = tokio::net::TcpStream::connect(s.addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(s.tls.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b =
        http::Request::builder().method(s.request.method.clone()).uri(&s.request.path).header("host", "localhost");
    for (k, v) in &s.request.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let resp = send
        .send_request(b.body(http_body_util::Full::new(s.request.body.clone())).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// The federation of [`write_federation`] with the hub's and the clinic's client
/// certificates and the records `workload` reads.
pub fn federation(dir: &std::path::Path, database_url: &str, workload: Workload) -> Result<(Pki, Config), String> {
    let (pki, cfg) = write_federation(dir, database_url)?;
    for (name, inst, role) in [("hub", &HUB, Role::HospitalSystem), ("clinic", &CLINIC_A, Role::ClinicTerminal)] {
        pki.issue(&ClientCertRequest::new(inst.code, inst.name, role, name), name).map_err(|e| e.to_string())?;
    }
    crate::demo::write_bulk_prescriptions(dir, 0, 10)?;
    if workload == Workload::Everything {
        crate::demo::write_year_of_records(dir)?;
    }
    Ok((pki, cfg))
}

/// The workload's request and the client configuration that sends it, once the
/// gateway at `addr` is ready for it: the sample patient found and the consent that
/// lets the clinic's reads cross the hub's boundary given (a 409 from a reused
/// database is fine).
pub async fn prepare(
    pki: &Pki,
    workload: Workload,
    mode: Mode,
    addr: SocketAddr,
) -> Result<(RequestSpec, Arc<rustls::ClientConfig>), String> {
    let p = pki.dir();
    let alpn: &[&[u8]] = if mode == Mode::H2 { &[b"h2"] } else { &[b"http/1.1"] };
    let resumption = mode != Mode::NewConnection;
    let hub = client_config(&p.join("ca.pem"), &p.join("hub.pem"), &p.join("hub.key"), &[b"http/1.1"], true)?;
    let clinic = client_config(&p.join("ca.pem"), &p.join("clinic.pem"), &p.join("clinic.key"), alpn, resumption)?;
    let get = |path: String| RequestSpec {
        method: http::Method::GET,
        path,
        headers: vec![],
        body: Bytes::new(),
        expect: 200,
        unique: None,
    };
    let mut setup = LoadSpec {
        addr,
        also: vec![],
        mode: Mode::H1,
        connections: 1,
        duration: Duration::ZERO,
        request: get("/fhir/Patient?identifier=1000001".into()),
        tls: hub.clone(),
        rate_per_client: 0.0,
    };
    let (_, found) = one(&setup).await?;
    let found: serde_json::Value = serde_json::from_slice(&found).map_err(|e| e.to_string())?;
    let patient = found["entry"][0]["resource"]["id"].as_str().ok_or("sample patient not found")?.to_string();
    let consent = serde_json::json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "urn:kakehashi:grant-kind", "code": "consent"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "provision": {"period": {"end": "2099-12-31"}, "actor": [{"role": {"text": "recipient"}, "reference": {"identifier": {"system": kakehashi_mappings::codes::INSTITUTION_NUMBER, "value": CLINIC_A.code}}}]}
    });
    setup.request = RequestSpec {
        method: http::Method::POST,
        path: "/fhir/Consent".into(),
        headers: vec![("content-type".into(), "application/fhir+json".into())],
        body: Bytes::from(consent.to_string()),
        expect: 201,
        unique: None,
    };
    let (status, body) = one(&setup).await?;
    // 409: a reused database (--database-url) already holds this grant from an earlier run.
    if status != 201 && status != 409 {
        return Err(format!("consent not created: {}", String::from_utf8_lossy(&body)));
    }

    let mut tls = clinic;
    let request = match workload {
        Workload::PatientRead => get(format!("/fhir/Patient/{patient}")),
        Workload::Search20 => get(format!("/fhir/MedicationRequest?patient={patient}&_count=20")),
        Workload::Everything => {
            // The clinic asks for its own patient; the hub's records come through linkage.
            let own =
                LoadSpec { tls: tls.clone(), request: get("/fhir/Patient?identifier=A-0101".into()), ..setup.clone() };
            let (_, found) = one(&own).await?;
            let found: serde_json::Value = serde_json::from_slice(&found).map_err(|e| e.to_string())?;
            let id = found["entry"][0]["resource"]["id"].as_str().ok_or("clinic patient A-0101 not found")?;
            get(format!("/fhir/Patient/{id}/$everything?_count=200"))
        }
        Workload::Push50k => {
            tls = hub.clone();
            RequestSpec {
                method: http::Method::POST,
                path: "/fhir".into(),
                headers: vec![("content-type".into(), "application/fhir+json".into())],
                body: Bytes::from(crate::demo::large_discharge_summary(50 * 1024)?),
                expect: 201,
                unique: None,
            }
            .unique("DS-0001")?
        }
        Workload::Metadata => get("/fhir/metadata".into()),
    };
    Ok((request, tls))
}

/// The best round of each contestant.
#[derive(Debug)]
pub struct Results {
    /// The gateway.
    pub gateway: LoadReport,
    /// The bare baseline.
    pub baseline: LoadReport,
    /// The same gateway without auditing (benchmark builds only).
    pub unaudited: Option<LoadReport>,
}

/// Set up, measure, print; returns the best round of each contestant.
pub async fn bench(opts: Options) -> Result<Results, String> {
    // Unique per call: tests run several benches in one process at once.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run_no = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kakehashi-bench-{}-{run_no}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fed = Federation { dir: dir.clone() };
    let sqlite = format!("sqlite://{}/bench.db", dir.display());
    let db = opts.database_url.clone().unwrap_or(sqlite);
    let (pki, cfg) = federation(&dir, &db, opts.workload)?;
    let tls_files: crate::tls::TlsFiles = (&cfg.tls).into();
    let mut addrs = Vec::new();
    let mut admins = Vec::new();
    let mut servers = Vec::new();
    // Serve `gw` until its stop sender is used (or dropped).
    let mut serve = |gw: Gateway| {
        let addr = gw.local_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        servers.push((
            stop_tx,
            tokio::spawn(gw.run(async {
                let _ = stop_rx.await;
            })),
        ));
        addr
    };
    for _ in 0..opts.instances.max(1) {
        let gw = Gateway::bind(cfg.clone()).await.map_err(|e| e.to_string())?;
        admins.push(gw.admin_addr());
        addrs.push(serve(gw));
    }
    let addr = addrs[0];
    // Benchmark builds also serve the same federation unaudited, to price auditing.
    #[cfg(feature = "bench")]
    let unaudited_addr =
        serve(Gateway::bind(cfg.clone()).await.map_err(|e| e.to_string())?.danger_unaudited_for_benchmark());

    let (request, tls) = prepare(&pki, opts.workload, opts.mode, addr).await?;
    let spec = LoadSpec {
        addr,
        also: addrs[1..].to_vec(),
        mode: opts.mode,
        connections: opts.connections,
        duration: opts.duration,
        request,
        tls,
        rate_per_client: opts.rate_per_client,
    };
    let (status, reference) = one(&spec).await?;
    if status != spec.request.expect {
        return Err(format!("the workload's request failed: {}", String::from_utf8_lossy(&reference)));
    }
    // Other instances learn of the new grant on their next reload (every 2 s).
    for &other in &addrs[1..] {
        let probe = LoadSpec { addr: other, ..spec.clone() };
        let mut tries = 0;
        while one(&probe).await?.0 != 200 {
            tries += 1;
            if tries > 100 {
                return Err(format!("instance {other} never saw the grant"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if opts.workload == Workload::Everything {
        let v: serde_json::Value = serde_json::from_slice(&reference).map_err(|e| e.to_string())?;
        let owners: std::collections::BTreeSet<&str> = v["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                e["resource"]["meta"]["security"].as_array()?.iter().find_map(|c| {
                    (c["system"] == kakehashi_mappings::codes::OWNER_SYSTEM).then(|| c["code"].as_str()).flatten()
                })
            })
            .collect();
        println!("$everything returns {} resources from {} owner(s): {owners:?}", v["total"], owners.len());
    }
    if opts.workload == Workload::Search20 {
        let v: serde_json::Value = serde_json::from_slice(&reference).map_err(|e| e.to_string())?;
        println!(
            "search returns {} of {} MedicationRequests per page",
            v["entry"].as_array().map(|a| a.len()).unwrap_or(0),
            v["total"]
        );
    }
    let server_cfg = Arc::new(crate::tls::build_server_config(&tls_files).map_err(|e| e.to_string())?);
    let (base_addr, base_task) = baseline::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(server_cfg),
        baseline::Answer::fhir(reference.clone(), spec.request.expect),
    )
    .await
    .map_err(|e| e.to_string())?;
    let base_spec = LoadSpec { addr: base_addr, also: vec![], ..spec.clone() };
    #[cfg(feature = "bench")]
    let unaudited_spec = LoadSpec { addr: unaudited_addr, also: vec![], ..spec.clone() };
    #[cfg_attr(not(feature = "bench"), allow(unused_mut))]
    let mut best_unaudited: Option<LoadReport> = None;

    println!(
        "workload {:?}, mode {:?}, {} connections, {:?} per run, response {} bytes, {} gateway instance(s) on {}",
        opts.workload,
        opts.mode,
        opts.connections,
        opts.duration,
        reference.len(),
        addrs.len(),
        if db.starts_with("postgres") { "PostgreSQL" } else { "SQLite" }
    );
    let mut best: Option<(LoadReport, LoadReport)> = None;
    // Rounds a minute apart can differ by a third on a shared host, so each round's
    // ratio (against the baseline run next to it) is the steadier figure.
    let mut to_baseline = Vec::new();
    #[cfg_attr(not(feature = "bench"), allow(unused_mut))]
    let mut to_unaudited: Vec<f64> = Vec::new();
    // A fresh gateway's first seconds append to a new WAL, and each of those commits'
    // flushes also journals the blocks the WAL grew by (0.55 ms per group commit against
    // 0.33 ms once the WAL restarts over blocks it already holds; the first 5 s round
    // ran at three quarters of the next two). A gateway that has been up a while is in
    // the second state, so the rounds start there.
    if !opts.warmup.is_zero() {
        #[cfg_attr(not(feature = "bench"), allow(unused_mut))]
        let mut warm = vec![("gateway", LoadSpec { duration: opts.warmup, ..spec.clone() })];
        #[cfg(feature = "bench")]
        warm.push(("unaudited", LoadSpec { duration: opts.warmup, ..unaudited_spec.clone() }));
        warm.push(("baseline", LoadSpec { duration: opts.warmup, ..base_spec.clone() }));
        for (name, s) in warm {
            println!("warm-up {name} {}", run(s).await.line());
        }
    }
    for round in 0..opts.rounds.max(1) {
        let before = GroupCommits::read(&admins).await;
        let g = run(spec.clone()).await;
        println!("round {} gateway  {}", round + 1, g.line());
        if let (Some(before), Some(after)) = (before, GroupCommits::read(&admins).await) {
            println!("        audit writer {}", after.since(&before));
        }
        #[cfg(feature = "bench")]
        {
            let u = run(unaudited_spec.clone()).await;
            println!("round {} unaudited {}", round + 1, u.line());
            to_unaudited.push(g.rate() / u.rate());
            best_unaudited = Some(match best_unaudited {
                Some(b) if b.rate() >= u.rate() => b,
                _ => u,
            });
        }
        let b = run(base_spec.clone()).await;
        println!("round {} baseline {}", round + 1, b.line());
        to_baseline.push(g.rate() / b.rate());
        best = Some(match best {
            None => (g, b),
            Some((bg, bb)) => (if g.rate() > bg.rate() { g } else { bg }, if b.rate() > bb.rate() { b } else { bb }),
        });
    }
    let (g, b) = best.ok_or("no rounds")?;
    println!("best: gateway {:.0} req/s, baseline {:.0} req/s, ratio {:.2}", g.rate(), b.rate(), g.rate() / b.rate());
    #[cfg(feature = "bench")]
    if let Some(u) = &best_unaudited {
        println!(
            "audited {:.0} req/s, the same gateway unaudited {:.0} req/s (benchmark build), ratio {:.2}",
            g.rate(),
            u.rate(),
            g.rate() / u.rate()
        );
    }
    for (name, ratios) in [("gateway / baseline", &to_baseline), ("audited / unaudited", &to_unaudited)] {
        if let Some(s) = Spread::of(ratios) {
            println!("{name} within each round: {s}");
        }
    }
    println!("resident memory of this process (gateway + baseline + clients): {} MB", rss_mb());
    if opts.idle > 0 {
        let before = rss_mb();
        let idle_spec = LoadSpec { mode: Mode::H1, ..spec.clone() };
        let held = super::hold_idle(&idle_spec, opts.idle).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "{} idle keep-alive connections: resident memory {} MB (before {} MB; both ends of every connection are in this process)",
            opts.idle,
            rss_mb(),
            before
        );
        drop(held);
    }
    base_task.abort();
    for (stop_tx, server) in servers {
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    drop(fed);
    Ok(Results { gateway: g, baseline: b, unaudited: best_unaudited })
}

/// Lowest, median and highest of per-round ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Spread {
    pub(super) low: f64,
    pub(super) median: f64,
    pub(super) high: f64,
}

impl Spread {
    /// The spread of the finite `ratios` (a round against a baseline that served
    /// nothing has none), or `None` when none is.
    pub(super) fn of(ratios: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = ratios.iter().copied().filter(|r| r.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { low: v[0], median, high: v[n - 1] })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2}–{:.2}, median {:.2}", self.low, self.high, self.median)
    }
}

/// The audit writers' counters, summed over the gateways' `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct GroupCommits {
    pub(super) commits: f64,
    pub(super) events: f64,
    seconds: f64,
}

impl GroupCommits {
    /// Read every admin listener; `None` when one does not answer.
    pub(super) async fn read(admins: &[SocketAddr]) -> Option<GroupCommits> {
        let mut sum = GroupCommits::default();
        for admin in admins {
            let text = admin_metrics(*admin).await?;
            let one = GroupCommits::parse(&text);
            sum.commits += one.commits;
            sum.events += one.events;
            sum.seconds += one.seconds;
        }
        Some(sum)
    }

    fn parse(text: &str) -> GroupCommits {
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        GroupCommits {
            commits: value("kakehashi_audit_commits_total"),
            events: value("kakehashi_audit_events_total"),
            seconds: value("kakehashi_audit_commit_seconds_total"),
        }
    }

    /// What happened between `before` and now, as one line.
    pub(super) fn since(&self, before: &GroupCommits) -> String {
        let commits = (self.commits - before.commits).max(1.0);
        format!(
            "{:.0} group commits, {:.1} events each, {:.2} ms each (write turn, inserts, flush)",
            self.commits - before.commits,
            (self.events - before.events) / commits,
            (self.seconds - before.seconds) * 1000.0 / commits
        )
    }
}

/// `GET /metrics` on a gateway's plain-HTTP admin listener (loopback).
async fn admin_metrics(admin: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// Resident set size of this process in MB, from /proc.
pub fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{GroupCommits, Spread};
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn per_round_ratios_are_summarised_by_their_range_and_median() {
        let s = Spread::of(&[0.40, 0.29, 0.33]).unwrap();
        assert_eq!(s, Spread { low: 0.29, median: 0.33, high: 0.40 });
        assert_eq!(s.to_string(), "0.29–0.40, median 0.33");
        assert_eq!(Spread::of(&[0.75, 0.25]).unwrap().median, 0.5);
        assert_eq!(Spread::of(&[]), None);
        let no_baseline = [0.5, f64::NAN, f64::INFINITY];
        assert_eq!(
            Spread::of(&no_baseline),
            Some(Spread { low: 0.5, median: 0.5, high: 0.5 }),
            "rounds without a ratio are left out"
        );
        assert_eq!(Spread::of(&[f64::NAN]), None);
    }

    #[test]
    fn group_commits_are_read_from_what_metrics_renders() {
        let metrics = crate::admin::Metrics::default();
        let stats = std::sync::Arc::new(crate::audit::log::WriterStats::default());
        stats.commits.store(40, Relaxed);
        stats.events.store(1000, Relaxed);
        stats.commit_nanos.store(50_000_000, Relaxed);
        metrics.audit_writer.set(stats).unwrap();
        let now = GroupCommits::parse(&metrics.render());
        assert_eq!(now, GroupCommits { commits: 40.0, events: 1000.0, seconds: 0.05 });
        let before = GroupCommits { commits: 30.0, events: 800.0, seconds: 0.03 };
        assert_eq!(now.since(&before), "10 group commits, 20.0 events each, 2.00 ms each (write turn, inserts, flush)");
    }
}
