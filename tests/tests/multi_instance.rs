//! Issue 8: two `kakehashi serve` processes on one PostgreSQL database. Concurrent
//! audited reads and pushes through both; one instance killed mid-load and restarted;
//! then: `audit verify` passes over the combined log, no audit event is missing, and
//! every push is delivered exactly once. And: with the database gone, reads fail closed
//! with 503 and service resumes by itself.

use kakehashi_certs::Role;
use kakehashi_e2e::{
    free_ports, fresh_postgres_database, kakehashi_bin, Client, Options, ServeProcess, TestGateway, HUB,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const SUMMARY: &str = include_str!("../../mappings/tests/fixtures/discharge-summary.json");

fn spawn(config: &std::path::Path) -> ServeProcess {
    ServeProcess::spawn(config)
}

async fn ready(c: &Client, addr: SocketAddr) {
    for _ in 0..150 {
        if c.get(addr, "/fhir/metadata").await.is_ok_and(|r| r.status == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("instance on {addr} did not come up");
}

async fn push(c: &Client, addr: SocketAddr, n: usize) -> Result<u16, String> {
    let mut doc: Value = serde_json::from_str(SUMMARY).unwrap();
    doc["identifier"]["value"] = json!(format!("4610100011^2026^MULTI-{n}"));
    c.post_json(addr, "/fhir", &doc).await.map(|r| r.status)
}

#[tokio::test]
async fn two_instances_share_one_trustworthy_store() {
    let db_url = fresh_postgres_database().await;
    let gw =
        TestGateway::start_opts(Options { db_url: Some(db_url.clone()), checkpoint_every: 10, ..Default::default() })
            .await;
    let hub = gw.issue("hub", HUB, Role::HospitalSystem);
    let ca = gw.pki.ca_cert_path();
    let kept = gw.stop_keeping_dir().await;
    let dir = kept.path().to_path_buf();
    let (configs, addrs, _) = two_instances(&dir);
    let client = Client::new(&ca, Some(&hub), &[b"http/1.1"], None);
    let mut a = spawn(&configs[0]);
    let mut b = spawn(&configs[1]);
    ready(&client, addrs[0]).await;
    ready(&client, addrs[1]).await;

    // Concurrent load through both: reads and pushes, instance B killed half-way.
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let (client, addrs) = (client.clone(), addrs.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok_reads = 0u64;
            let mut pushes = Vec::new();
            for i in 0..15usize {
                let addr = addrs[(w + i) % 2];
                if i % 5 == 0 {
                    let n = w * 100 + i;
                    if let Ok(201) = push(&client, addr, n).await {
                        pushes.push(n);
                    }
                } else if client.get(addr, "/fhir/Patient?_count=1").await.is_ok_and(|r| r.status == 200) {
                    ok_reads += 1;
                }
            }
            (ok_reads, pushes)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.kill();
    let mut ok_reads = 0;
    let mut pushed = Vec::new();
    for t in tasks {
        let (r, p) = t.await.unwrap();
        ok_reads += r;
        pushed.extend(p);
    }
    // B comes back; a push the client saw fail may be retried: idempotency keeps it single.
    let mut b = spawn(&configs[1]);
    ready(&client, addrs[1]).await;
    assert!(ok_reads > 20, "{ok_reads} reads succeeded");

    // Every acknowledged push is delivered exactly once (one file per push in the inbox).
    let inbox = dir.join("sites/clinic-a/inbox");
    let count_files = || {
        std::fs::read_dir(&inbox)
            .map(|r| r.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
            .unwrap_or(0)
    };
    let mut files = count_files();
    for _ in 0..150 {
        if files >= pushed.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        files = count_files();
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db_url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pushed_document").fetch_one(&pool).await.unwrap();
    assert!(stored as usize >= pushed.len());
    let delivered: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE kind = 'deliver' AND state = 'delivered'")
            .fetch_one(&pool)
            .await
            .unwrap();
    // A delivery claimed by the killed instance waits for its lease to lapse and then
    // for its retry backoff; on two busy cores that can take a while.
    let mut pending = -1i64;
    for _ in 0..600 {
        pending = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE kind = 'deliver' AND state <> 'delivered'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending, 0, "deliveries still pending after 60 s");
    let files = std::fs::read_dir(&inbox)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(files as i64, stored, "one delivered file per stored push (delivered so far: {delivered})");

    // No successful read went unaudited.
    let reads: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_event WHERE subtype = 'search-type' AND outcome = '0'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(reads as u64 >= ok_reads, "audited {reads} < answered {ok_reads}");

    // One chain across both instances.
    let out = std::process::Command::new(kakehashi_bin())
        .args(["audit", "verify", "--config"])
        .arg(&configs[0])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Documents pushed through one instance are served by the other, which has not
    // restarted (B was restarted above; A learns of B's pushes from the database).
    let compositions = |v: Value| v["total"].as_u64().unwrap_or(0);
    assert_eq!(push(&client, addrs[1], 9999).await, Ok(201));
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pushed_document").fetch_one(&pool).await.unwrap();
    let mut served = false;
    for _ in 0..100 {
        let now = compositions(client.get(addrs[0], "/fhir/Composition?_count=200").await.unwrap().json());
        if now == stored as u64 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "instance A does not serve every document pushed through instance B");

    // Database unreachable: reads fail closed; service resumes by itself.
    let name = db_url.rsplit('/').next().unwrap().to_string();
    let admin = sqlx::AnyPool::connect(&kakehashi_e2e::postgres_base()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )))
    .execute(&admin)
    .await
    .unwrap();
    pool.close().await;
    let mut saw_503 = false;
    for _ in 0..20 {
        let r = client.get(addrs[0], "/fhir/Patient?_count=1").await.unwrap();
        assert_ne!(r.status, 200, "no disclosure without the audit store");
        if r.status == 503 {
            saw_503 = true;
            assert!(!String::from_utf8_lossy(&r.body).contains("Patient/"), "nothing disclosed");
            break;
        }
    }
    assert!(saw_503);
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")))
        .execute(&admin)
        .await
        .unwrap();
    let mut back = false;
    for _ in 0..100 {
        if client.get(addrs[0], "/fhir/Patient?_count=1").await.is_ok_and(|r| r.status == 200) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "service resumes when the database is back");
    a.kill();
    b.kill();
}

/// `/status` of an instance's admin listener: the records index part.
async fn records_status(admin: SocketAddr) -> Value {
    let body = kakehashi_e2e::admin_get(admin, "/status").await;
    serde_json::from_str::<Value>(&body).map(|v| v["records_index"].clone()).unwrap_or(Value::Null)
}

/// Issue 20 on PostgreSQL: two instances share one records index; one walks the
/// storage, the other serves from the shared index, and takes over when the walker
/// stops. What the hospital writes is found through either.
#[tokio::test]
async fn two_instances_share_one_records_index_and_one_walks() {
    use kakehashi_e2e::storage::{admission, path, prescription, write};
    let db_url = fresh_postgres_database().await;
    let gw = TestGateway::start_opts(Options { db_url: Some(db_url.clone()), ..Default::default() }).await;
    let hub = gw.issue("hub", HUB, Role::HospitalSystem);
    let ca = gw.pki.ca_cert_path();
    let kept = gw.stop_keeping_dir().await;
    let dir = kept.path().to_path_buf();
    let root = dir.join("sites/hub/ss-mix2");
    let (configs, addrs, admins) = two_instances(&dir);
    let client = Client::new(&ca, Some(&hub), &[b"http/1.1"], None);
    let mut instances = [spawn(&configs[0]), spawn(&configs[1])];
    ready(&client, addrs[0]).await;
    ready(&client, addrs[1]).await;

    // Exactly one walks (PostgreSQL advisory lock).
    let mut walking = Vec::new();
    for _ in 0..100 {
        walking.clear();
        for (i, admin) in admins.iter().enumerate() {
            if records_status(*admin).await["walking"] == true {
                walking.push(i);
            }
        }
        if walking.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(walking.len(), 1, "one walker: {walking:?}");
    let (walker, other) = (walking[0], 1 - walking[0]);

    // A new patient is indexed by the walker and found through the other instance.
    write(
        &path(&root, "2000007", "-", "ADT-00", "999999999999999", "20260501090000000", true),
        &admission("2000007", ("新島", "太郎"), ("ニイジマ", "タロウ"), "19700101", "M"),
    );
    let mut found = false;
    for _ in 0..600 {
        let v = client.get(addrs[other], "/fhir/Patient?name=ニイジマ").await.unwrap().json();
        if v["total"] == 1 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the new patient is not found through the instance that does not walk");

    // Read-your-writes through the instance that does not walk.
    let pt = client.first_id(addrs[other], "/fhir/Patient?identifier=1000001").await;
    let order = "000000000009101";
    write(
        &path(&root, "1000001", "20260420", "OMP-01", order, "20260420103100000", true),
        &prescription("1000001", order, ("620000001", "共有錠")),
    );
    let v = client.get(addrs[other], &format!("/fhir/MedicationRequest?patient={pt}")).await.unwrap();
    assert!(String::from_utf8_lossy(&v.body).contains("共有錠"), "in the very next read");
    // ... and the walker's searches find it from the shared index.
    let v = client.get(addrs[walker], "/fhir/MedicationRequest?_count=500").await.unwrap();
    assert!(String::from_utf8_lossy(&v.body).contains("共有錠"));

    // The walker stops: the other takes the lock over.
    instances[walker].kill();
    let mut took_over = false;
    for _ in 0..300 {
        if records_status(admins[other]).await["walking"] == true {
            took_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(took_over, "the remaining instance did not start walking within 30 s");
    instances[other].kill();
}

/// Two configurations of the kept gateway directory `dir`, each on its own free ports:
/// (config files, FHIR addresses, admin addresses).
fn two_instances(dir: &std::path::Path) -> (Vec<std::path::PathBuf>, Vec<SocketAddr>, Vec<SocketAddr>) {
    let base = std::fs::read_to_string(dir.join("kakehashi.toml")).unwrap();
    let ports = free_ports(4);
    let mut configs = Vec::new();
    for i in 0..2 {
        let text = base
            .replace("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"127.0.0.1:{}\"", ports[2 * i + 1]))
            .replace("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"127.0.0.1:{}\"", ports[2 * i]));
        let path = dir.join(format!("instance-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        configs.push(path);
    }
    let at = |offset: usize| -> Vec<SocketAddr> {
        (0..2).map(|i| format!("127.0.0.1:{}", ports[2 * i + offset]).parse().unwrap()).collect()
    };
    (configs, at(0), at(1))
}
