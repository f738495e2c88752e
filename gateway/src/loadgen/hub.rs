//! `kakehashi bench-records`: a hub hospital's SS-MIX2 storage at scale, measured from
//! outside the gateway process. It generates the storage (unless it is there), starts
//! `kakehashi serve` on it with an empty index, and reports what issue 20 asks of the
//! records source: time to the first answer while indexing and after a restart, the
//! first index's files per second, resident memory (peak while indexing, and after),
//! CPU while idle, `$everything` of a 50-message patient first read and cached,
//! read-your-writes of a new file, and how soon a new patient is findable.

use super::storage::{self, Spec};
use super::Session;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the storage is (generated there when absent).
    pub storage: PathBuf,
    /// Patients of the bulk storage.
    pub patients: u64,
    /// Visits per bulk patient.
    pub visits: u64,
    /// Further patients with 24 visits (about 50 messages each), for `$everything`.
    pub rich: u64,
    /// The database (default: a fresh SQLite file in a temporary directory). A
    /// PostgreSQL database must be empty.
    pub database_url: Option<String>,
    /// Seconds of idle CPU measurement.
    pub idle_secs: u64,
}

const OWNER: &str = "4610100011";
const FIRST_RICH: u64 = 3_000_000_000;

fn federation(dir: &Path, storage: &Path, db: &str) -> Result<PathBuf, String> {
    let pki = kakehashi_certs::Pki::init(&dir.join("pki"), &kakehashi_certs::InitOptions::default())
        .map_err(|e| e.to_string())?;
    let req = kakehashi_certs::ClientCertRequest::new(OWNER, "Hub", kakehashi_certs::Role::HospitalSystem, "bench");
    pki.issue(&req, "hub").map_err(|e| e.to_string())?;
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "[federation]\nname = \"bench-records\"\n[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\
         [tls]\nclient_ca = \"pki/ca.pem\"\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\ncrls = [\"pki/ca.crl\"]\n\
         [database]\nurl = \"{db}\"\n[audit]\nsigning_key = \"pki/audit-signing.pk8\"\n\
         [[institution]]\ncode = \"{OWNER}\"\nname = \"Hub\"\nkind = \"hub-hospital\"\n\
         [[site]]\nid = \"hub\"\nowner = \"{OWNER}\"\nconnector = {{ kind = \"ss-mix2\", root = \"{}\" }}\n",
        ports[0],
        ports[1],
        storage.display()
    );
    let path = dir.join("kakehashi.toml");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

/// The running gateway process.
struct Serve {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Serve {
    fn start(config: &Path) -> Result<Serve, String> {
        let cfg = crate::Config::load(config).map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = std::process::Command::new(exe)
            .args(["serve", "--config"])
            .arg(config)
            .env("KAKEHASHI_LOG", "warn")
            .spawn()
            .map_err(|e| format!("cannot start kakehashi serve: {e}"))?;
        Ok(Serve { child, addr: cfg.server.listen, admin: cfg.server.admin_listen })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, MB.
    fn rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                })
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// CPU seconds used so far.
    fn cpu(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| super::cpu_from_stat(&s))
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// Stop it (SIGTERM, as an operator would) and wait.
    fn stop(mut self) {
        let _ = std::process::Command::new("kill").arg(self.pid().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn status(admin: std::net::SocketAddr) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let body = out.split("\r\n\r\n").nth(1)?;
    serde_json::from_str::<serde_json::Value>(body).ok().map(|v| v["records_index"].clone())
}

/// The first time `path` answers 200, polled every 20 ms for up to `limit`.
async fn first_answer(
    tls: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    path: &str,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(mut s) = Session::open(addr, tls.clone()).await {
            if let Ok((200, _)) = s.get(path).await {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn patient_id(local: &str) -> String {
    kakehashi_mappings::stable_id(OWNER, "Patient", local)
}

/// Run the measurements, printing each as it is known.
pub async fn run(o: Options) -> Result<(), String> {
    if !o.storage.join("done").exists() {
        let started = Instant::now();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let bulk =
            Spec { root: o.storage.clone(), patients: o.patients, visits: o.visits, first_id: 1_000_000_000, threads };
        let rich = Spec { root: o.storage.clone(), patients: o.rich, visits: 24, first_id: FIRST_RICH, threads };
        let (a, b) = tokio::task::spawn_blocking(move || {
            let p = std::sync::atomic::AtomicU64::new(0);
            Ok::<_, String>((storage::generate(&bulk, &p)?, storage::generate(&rich, &p)?))
        })
        .await
        .map_err(|e| e.to_string())??;
        std::fs::write(o.storage.join("done"), b"").map_err(|e| e.to_string())?;
        println!(
            "storage: {} + {} patients, {} files, generated in {:.0} s",
            o.patients,
            o.rich,
            a.files + b.files,
            started.elapsed().as_secs_f64()
        );
    }
    let work = tempfile::Builder::new().prefix("kk-bench-records-").tempdir().map_err(|e| e.to_string())?;
    let db = o.database_url.clone().unwrap_or_else(|| format!("sqlite://{}/kakehashi.db", work.path().display()));
    let config = federation(work.path(), &o.storage, &db)?;
    let pki = work.path().join("pki");
    let tls =
        super::client_config(&pki.join("ca.pem"), &pki.join("hub.pem"), &pki.join("hub.key"), &[b"http/1.1"], false)?;
    let backend = if db.starts_with("postgres") { "PostgreSQL" } else { "SQLite" };
    println!("database: {backend}");

    // First start: an empty index.
    let serve = Serve::start(&config)?;
    let started = Instant::now();
    let metadata = first_answer(&tls, serve.addr, "/fhir/metadata", Duration::from_secs(60)).await;
    println!(
        "first start: first answer after {:.2} s (the index is built in the background)",
        metadata.map_or(f64::NAN, |d| d.as_secs_f64())
    );
    let mut peak = 0f64;
    let complete = loop {
        peak = peak.max(serve.rss_mb());
        if let Some(s) = status(serve.admin).await {
            if s["complete"] == true {
                break s;
            }
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return Err("the index did not complete within an hour".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let files = complete["files_indexed"].as_f64().unwrap_or(0.0);
    println!(
        "first index: {files:.0} files of {} patients in {secs:.1} s = {:.0} files/s over the whole run ({} files/s reported by the indexer); resident memory peak {peak:.0} MB",
        complete["patients_indexed"],
        files / secs,
        complete["files_per_second"]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = serve.cpu();
    let idle_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    let idle = (serve.cpu() - cpu0) / idle_from.elapsed().as_secs_f64() * 100.0;
    println!("idle: {idle:.2}% of a core over {} s; resident memory {:.0} MB", o.idle_secs, serve.rss_mb());

    // $everything of 50-message patients, first read (translated) then cached.
    let mut s = Session::open(serve.addr, tls.clone()).await?;
    let (mut first, mut cached, mut resources) = (Vec::new(), Vec::new(), 0usize);
    for n in 0..o.rich {
        let path = format!("/fhir/Patient/{}/$everything?_count=200", patient_id(&format!("{:010}", FIRST_RICH + n)));
        for read in 0..3 {
            let t = Instant::now();
            let (status, body) = s.get(&path).await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if read == 0 {
                first.push(ms)
            } else {
                cached.push(ms)
            }
            if status != 200 {
                return Err(format!("$everything answered {status}: {}", String::from_utf8_lossy(&body)));
            }
            resources =
                serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["total"].as_u64()).unwrap_or(0)
                    as usize;
        }
    }
    first.sort_by(f64::total_cmp);
    cached.sort_by(f64::total_cmp);
    println!(
        "$everything of a 50-message patient ({resources} resources; {} patients): first read p50 {:.1} ms, p99 {:.1} ms; cached p50 {:.1} ms, p99 {:.1} ms",
        o.rich,
        percentile(&first, 0.5),
        percentile(&first, 0.99),
        percentile(&cached, 0.5),
        percentile(&cached, 0.99)
    );

    // Read-your-writes: a new prescription written into a known patient's directory.
    // A kept storage serves several runs: each writes a visit and a patient of its own.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let local = format!("{:010}", FIRST_RICH);
    let before = s.get(&format!("/fhir/MedicationRequest?patient={}&_count=200", patient_id(&local))).await?;
    let count = |b: &bytes::Bytes| {
        serde_json::from_slice::<serde_json::Value>(b).ok().and_then(|v| v["total"].as_u64()).unwrap_or(0)
    };
    // Visits numbered 7 modulo 25 end with their order cancelled (a `_0` version):
    // this one must add prescriptions.
    let v = 100 + run % 399;
    storage::write_visit(&o.storage, &local, if v % 25 == 7 { v + 1 } else { v })?;
    let t = Instant::now();
    let after = s.get(&format!("/fhir/MedicationRequest?patient={}&_count=200", patient_id(&local))).await?;
    println!(
        "read-your-writes: MedicationRequests of the patient {} before, {} in the very next read ({:.1} ms)",
        count(&before.1),
        count(&after.1),
        t.elapsed().as_secs_f64() * 1000.0
    );

    // A new patient: its ADT written, then searched for by identifier.
    let new_local = format!("{:010}", FIRST_RICH + o.rich + 1 + run % 1_000_000);
    storage::write_patient_only(&o.storage, &new_local)?;
    let t = Instant::now();
    let mut found = None;
    while t.elapsed() < Duration::from_secs(180) {
        let (_, b) = s.get(&format!("/fhir/Patient?identifier={new_local}")).await?;
        if count(&b) == 1 {
            found = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "new patient: findable by Patient?identifier= {} after its ADT was written",
        found.map_or("not within 180 s".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    drop(s);
    serve.stop();

    // Restart with the complete index.
    let serve = Serve::start(&config)?;
    let path = format!("/fhir/Patient?identifier={:010}", 1_000_000_000u64 + o.patients.saturating_sub(1));
    let again = first_answer(&tls, serve.addr, &path, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = status(serve.admin).await.unwrap_or_default();
    println!(
        "restart: first answer after {:.2} s; files translated again at start: {}",
        again.map_or(f64::NAN, |d| d.as_secs_f64()),
        st["files_indexed"]
    );
    serve.stop();
    Ok(())
}
