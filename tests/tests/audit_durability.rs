//! What the audit trail guarantees when the gateway dies or its disk fills: a real
//! `kakehashi serve` process under concurrent reads, SIGKILLed a hundred times, loses no
//! event it answered for, writes none twice and discloses nothing unaudited; with the
//! disk full, reads are refused (503, nothing disclosed) until there is room again; and
//! `audit verify`, with the witness, passes over what is left.

use kakehashi_certs::Role;
use kakehashi_e2e::{backend_is_postgres, free_ports, kakehashi_bin, Client, Options, ServeProcess, TestGateway, HUB};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The federation's configuration in `dir`, rewritten to listen on fixed ports so that
/// each restarted process is found where the last one was.
fn fixed_ports(dir: &Path) -> (std::path::PathBuf, SocketAddr) {
    let config = dir.join("kakehashi.toml");
    let ports = free_ports(2);
    let text = std::fs::read_to_string(&config).unwrap();
    // admin_listen first: `listen = ` is a suffix of it.
    let text = text
        .replace("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"127.0.0.1:{}\"", ports[1]))
        .replace("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"127.0.0.1:{}\"", ports[0]));
    std::fs::write(&config, text).unwrap();
    (config, format!("127.0.0.1:{}", ports[0]).parse().unwrap())
}

async fn ready(c: &Client, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if c.get(addr, "/fhir/metadata").await.is_ok_and(|r| r.status == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the gateway did not come up on {addr}");
}

/// A search whose query string names request `n` alone: patients born before a date
/// unique to it (every sample patient is), so each answer discloses patients and its
/// audit event can be told apart from every other.
fn marked_search(n: u64) -> (String, String) {
    let day = time::Date::from_calendar_date(2100, time::Month::January, 1).unwrap() + time::Duration::days(n as i64);
    let marker = format!("birthdate=lt{day}");
    (format!("/fhir/Patient?{marker}"), marker)
}

/// Every audit event's entry, as stored.
async fn entries(db_url: &str) -> Vec<serde_json::Value> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db_url).await.unwrap();
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT event FROM audit_event ORDER BY seq").fetch_all(&pool).await.unwrap();
    pool.close().await;
    stored.iter().map(|s| serde_json::from_str(s).unwrap()).collect()
}

/// The markers of the successful searches the log holds, with how often each is there.
fn audited_markers(entries: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for e in entries {
        if e["outcome"] == "0" {
            let marker = e["query"].as_str().and_then(|q| q.find("birthdate=lt").map(|at| &q[at..]));
            if let Some(m) = marker {
                let m = m.split('&').next().unwrap_or(m);
                *seen.entry(m.to_string()).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// `audit verify --config CONFIG` (the configuration names the witness): (success, output).
fn cli_verify(config: &Path) -> (bool, String) {
    let out =
        std::process::Command::new(kakehashi_bin()).args(["audit", "verify", "--config"]).arg(config).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sigkills_under_load_lose_no_event_and_disclose_nothing_unaudited() {
    const KILLS: u64 = 100;
    const CLIENTS: u64 = 8;
    // The gateway's default index delay: at each kill up to 100 ms of answered reads
    // are in the journal only, and the next start must index them.
    let gw = TestGateway::start_opts(Options { checkpoint_every: 50, index_delay_ms: 100, ..Default::default() }).await;
    let hub = gw.issue("hub", HUB, Role::HospitalSystem);
    let (ca, db_url) = (gw.pki.ca_cert_path(), gw.db_url.clone());
    let kept = gw.stop_keeping_dir().await;
    let (config, addr) = fixed_ports(kept.path());
    let client = Client::new(&ca, Some(&hub), &[b"http/1.1"], None);

    let mut sent = HashSet::new();
    let mut answered = HashSet::new();
    let mut next = 0u64;
    for kill in 0..KILLS {
        let mut child = ServeProcess::spawn(&config);
        ready(&client, addr).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = Vec::new();
        for c in 0..CLIENTS {
            let (client, stop) = (client.clone(), stop.clone());
            // Each client numbers its requests apart from every other's.
            let first = next + c * 1_000;
            load.push(tokio::spawn(async move {
                let (mut sent, mut answered) = (Vec::new(), Vec::new());
                let Ok(mut conn) = client.keep_alive(addr).await else { return (sent, answered) };
                let mut n = first;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < first + 1_000 {
                    let (path, marker) = marked_search(n);
                    n += 1;
                    sent.push(marker.clone());
                    match conn.get(&path).await {
                        Ok(r) if r.status == 200 => {
                            assert!(r.json()["total"].as_u64().unwrap_or(0) > 0, "an answer that discloses patients");
                            answered.push(marker);
                        }
                        Ok(r) => panic!("only a dying gateway ends a read, not {}: {}", r.status, r.text()),
                        Err(_) => break,
                    }
                }
                (sent, answered)
            }));
        }
        // Killed at a different moment in every round, mid-stream.
        tokio::time::sleep(Duration::from_millis(40 + (kill * 37) % 160)).await;
        child.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in load {
            let (s, a) = t.await.unwrap();
            sent.extend(s);
            answered.extend(a);
        }
        next += CLIENTS * 1_000;
    }
    // And it comes up once more on the log the last kill left, as after a power cut:
    // an audited read is answered only after its start has indexed what the journal
    // held (and signed and witnessed the head it found).
    let mut child = ServeProcess::spawn(&config);
    ready(&client, addr).await;
    let (path, marker) = marked_search(next);
    sent.insert(marker);
    assert_eq!(client.get(addr, &path).await.unwrap().status, 200);
    child.kill();

    let audited = audited_markers(&entries(&db_url).await);
    let twice: Vec<_> = audited.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events written twice: {twice:?}");
    let unaudited: Vec<_> = answered.iter().filter(|m| !audited.contains_key(*m)).collect();
    assert!(
        unaudited.is_empty(),
        "{} answered reads have no audit event, e.g. {:?}",
        unaudited.len(),
        unaudited.first()
    );
    let unsent: Vec<_> = audited.keys().filter(|m| !sent.contains(*m)).collect();
    assert!(unsent.is_empty(), "events for requests never sent: {unsent:?}");
    assert!(answered.len() as u64 > KILLS * 5, "the load was real: {} answered reads", answered.len());
    let (ok, out) = cli_verify(&config);
    assert!(ok, "audit verify after {KILLS} kills: {out}");
    println!(
        "{KILLS} SIGKILLs: {} reads sent, {} answered, {} audited; {out}",
        sent.len(),
        answered.len(),
        audited.len()
    );
}

/// A tmpfs of `mb` megabytes at `dir`, unmounted when dropped (root only).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, mb: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the filesystem holding `dir` until a write fails for want of space.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x55u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(28), "filled until ENOSPC: {e}");
            break;
        }
    }
    // A last small remainder, so that not even a page is left.
    while f.write_all(&[0x55u8; 512]).is_ok() {}
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_disk_full_reads_are_refused_until_there_is_room_again() {
    if backend_is_postgres() {
        // PostgreSQL's disk is the database server's: this is the embedded store's test.
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&scratch.path().join("disk"), 24) else {
        // Mounting takes root; CI runs as root, so this path is for a developer's laptop.
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    };
    let db_url = format!("sqlite://{}", disk.0.join("kakehashi.db").display());
    // Small journal segments, so that once the disk is full the journal runs out of
    // room within a few thousand reads; the default index delay.
    let gw = TestGateway::start_opts(Options {
        db_url: Some(db_url.clone()),
        index_delay_ms: 100,
        audit_extra: "journal_segment_mb = 1".into(),
        ..Default::default()
    })
    .await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let mut conn = hub.keep_alive(gw.addr).await.unwrap();
    let (path, first) = marked_search(0);
    assert_eq!(conn.get(&path).await.unwrap().status, 200, "served before the disk fills");
    let mut answered = vec![first];

    let filler = fill(&disk.0);
    // Reads go on while the journal has room in the segments it already holds (its
    // events durable there; the index cannot be written meanwhile); each is audited.
    // Then the journal needs a new segment, and there is no room for one.
    let mut refused = 0u64;
    for n in 1..20_000 {
        let (path, marker) = marked_search(n);
        let r = conn.get(&path).await.unwrap();
        match r.status {
            200 => answered.push(marker),
            503 => {
                let v = r.json();
                assert_eq!(v["resourceType"], "OperationOutcome", "a refusal, not data: {v}");
                assert!(!r.text().contains("Patient/") && !r.text().contains(&marker), "nothing disclosed: {v}");
                refused += 1;
                if refused >= 20 {
                    break;
                }
            }
            s => panic!("only 200 or 503 while the disk is full, not {s}: {}", r.text()),
        }
    }
    assert!(refused >= 20, "reads are refused once the audit store cannot write ({} answered)", answered.len());

    // Room again: service resumes without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 30_000;
    let resumed = loop {
        let (path, marker) = marked_search(n);
        n += 1;
        let status = conn.get(&path).await.unwrap().status;
        if status == 200 {
            answered.push(marker);
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(resumed, "reads are answered again once there is room");
    let config = gw.config_path();
    let kept = gw.stop_keeping_dir().await;
    let audited = audited_markers(&entries(&db_url).await);
    let unaudited: Vec<_> = answered.iter().filter(|m| !audited.contains_key(*m)).collect();
    assert!(unaudited.is_empty(), "answered reads without an audit event: {unaudited:?}");
    let (verified, out) = cli_verify(&config);
    assert!(verified, "audit verify after the disk filled: {out}");
    drop(kept);
    drop(disk);
    drop(scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_sqlite_store_refuses_reads_instead_of_losing_their_events() {
    if backend_is_postgres() {
        // Several instances on one PostgreSQL database is the supported way to run more.
        return;
    }
    // Found by an outside probe: a second `serve` on the same data directory (a restart
    // overlapping the old process's drain, or two by mistake) appended to the same
    // journal segments, and its answered reads never reached the table.
    let gw = TestGateway::start_opts(Options { index_delay_ms: 100, ..Default::default() }).await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let (config, second) = fixed_ports(gw.dir.path());
    let mut other = ServeProcess::spawn(&config);
    ready(&hub, second).await;
    let (path, marker) = marked_search(0);
    let r = hub.get(second, &path).await.unwrap();
    assert_eq!(r.status, 503, "the second gateway cannot make events durable: {}", r.text());
    assert!(!r.text().contains("Patient/"), "nothing disclosed: {}", r.text());
    let (path, first) = marked_search(1);
    assert_eq!(hub.get(gw.addr, &path).await.unwrap().status, 200, "the first goes on serving");
    other.kill();
    let kept = gw.stop_keeping_dir().await;
    let audited = audited_markers(&entries(&format!("sqlite://{}", kept.path().join("kakehashi.db").display())).await);
    assert!(audited.contains_key(&first) && !audited.contains_key(&marker), "{audited:?}");
    let (ok, out) = cli_verify(&config);
    assert!(ok, "audit verify: {out}");
}
