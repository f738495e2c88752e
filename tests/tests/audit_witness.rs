//! Issue 19.3: `audit verify` no longer trusts the database it checks. Each way an
//! insider with database access defeated it (the probe's list) is its own case here,
//! run through the CLI an auditor uses: the interval and keys come from the
//! configuration, and the chain is held to the witness file written outside the store.

use kakehashi::audit::log::chain_hash;
use kakehashi_certs::Role;
use kakehashi_e2e::tamper::{put, restore, rows, AuditRow};
use kakehashi_e2e::{backend_is_postgres, kakehashi_bin, Options, TestGateway, HUB};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A gateway (checkpoints every 5 events, periodic ones rarely) that served `reads`
/// audited reads and stopped cleanly; its directory and configuration are kept.
async fn stopped_after(reads: usize) -> (tempfile::TempDir, PathBuf, String) {
    let gw =
        TestGateway::start_opts(Options { checkpoint_every: 5, checkpoint_secs: 3600, ..Default::default() }).await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    for _ in 0..reads {
        assert_eq!(hub.get(gw.addr, "/fhir/Patient?_count=1").await.unwrap().status, 200);
    }
    let (config, url) = (gw.config_path(), gw.db_url.clone());
    (gw.stop_keeping_dir().await, config, url)
}

/// `kakehashi audit verify --config CONFIG ARGS`: (success, stdout + stderr, seconds).
async fn verify(config: &Path, args: &[&str]) -> (bool, String, f64) {
    let bin = kakehashi_bin();
    let started = Instant::now();
    let out = tokio::process::Command::new(bin)
        .args(["audit", "verify", "--config"])
        .arg(config)
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text, started.elapsed().as_secs_f64())
}

/// A copy of `config` without the witness (what an auditor without it would run).
fn without_witness(config: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let copy = config.with_file_name("no-witness.toml");
    std::fs::write(&copy, text.lines().filter(|l| !l.starts_with("witness =")).collect::<Vec<_>>().join("\n")).unwrap();
    copy
}

async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

async fn exec(pool: &sqlx::AnyPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).execute(pool).await.unwrap();
}

/// Rows `saved` with every event from `from` on re-chained after its predecessor,
/// `edit` applied to event `from`'s entry: a rewrite whose hashes all hold.
fn rechained(saved: &[AuditRow], from: usize, edit: impl Fn(&str) -> String) -> Vec<AuditRow> {
    let mut out: Vec<AuditRow> = saved[..from].to_vec();
    let mut prev = if from == 0 { vec![0; 32] } else { saved[from - 1].hash.clone() };
    for (i, r) in saved[from..].iter().enumerate() {
        let event = if i == 0 { edit(&r.event) } else { r.event.clone() };
        let h = chain_hash(r.seq, &prev, event.as_bytes()).to_vec();
        out.push(AuditRow::forged(r.seq, event, prev, h.clone()));
        prev = h;
    }
    out
}

#[tokio::test]
async fn a_whole_log_verifies_against_its_witness_and_says_what_is_anchored() {
    let (_dir, config, _) = stopped_after(12).await;
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("events 1..12 (12 events)"), "{out}");
    assert!(out.contains("records in 1 file(s) agree with the log; witnessed up to event 12"), "{out}");
    assert!(out.contains("0 events after the last signed checkpoint"), "a clean stop signs the head: {out}");
}

#[tokio::test]
async fn a_deleted_database_is_an_error_and_verify_creates_nothing() {
    if backend_is_postgres() {
        return;
    }
    let (dir, config, _) = stopped_after(3).await;
    let db = dir.path().join("kakehashi.db");
    for f in ["kakehashi.db", "kakehashi.db-wal", "kakehashi.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(!ok && out.contains("does not exist"), "{out}");
    assert!(!db.exists(), "verify created a database");
    for cmd in ["export", "prune"] {
        let mut c = tokio::process::Command::new(kakehashi_bin());
        c.args(["audit", cmd, "--config"]).arg(&config);
        if cmd == "prune" {
            c.args(["--before", "2000-01-01"]);
        }
        let out = c.output().await.unwrap();
        assert!(!out.status.success(), "{cmd}");
        assert!(!db.exists(), "audit {cmd} created a database");
    }
}

#[tokio::test]
async fn a_database_emptied_or_cut_short_is_a_clear_error_not_a_timeout() {
    if backend_is_postgres() {
        return;
    }
    let (dir, config, _) = stopped_after(3).await;
    // A copy, so that no connection of the stopped gateway still in this process writes
    // the original back while it is cut.
    let db = dir.path().join("copy.db");
    std::fs::copy(dir.path().join("kakehashi.db"), &db).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace("sqlite://kakehashi.db", "sqlite://copy.db");
    let config = dir.path().join("copy.toml");
    std::fs::write(&config, text).unwrap();
    let bytes = std::fs::read(&db).unwrap();
    std::fs::write(&db, &bytes[..4096.min(bytes.len())]).unwrap();
    let (ok, out, secs) = verify(&config, &[]).await;
    assert!(!ok, "{out}");
    assert!(!out.contains("timed out"), "{out}");
    assert!(secs < 4.0, "{secs} s: a truncated file must fail at once, not after a pool timeout: {out}");
    std::fs::write(&db, b"").unwrap();
    let (ok, out, secs) = verify(&config, &[]).await;
    assert!(!ok && out.contains("no Kakehashi schema"), "{out}");
    assert!(secs < 4.0, "{secs} s");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "verify migrated the emptied file");
}

#[tokio::test]
async fn an_emptied_log_fails_and_the_witness_says_it_was_emptied() {
    let (_dir, config, url) = stopped_after(6).await;
    let db = pool(&url).await;
    exec(&db, "DELETE FROM audit_event").await;
    exec(&db, "DELETE FROM audit_checkpoint").await;
    let (ok, out, _) = verify(&without_witness(&config), &[]).await;
    assert!(!ok && out.contains("empty"), "{out}");
    let (ok, out, _) = verify(&config, &["--allow-empty"]).await;
    assert!(!ok && out.contains("sequence 1") && out.contains("deleted or emptied"), "{out}");
}

#[tokio::test]
async fn the_newest_events_removed_with_their_checkpoints_are_missed_only_without_the_witness() {
    let (_dir, config, url) = stopped_after(12).await;
    let db = pool(&url).await;
    exec(&db, "DELETE FROM audit_event WHERE seq > 7").await;
    exec(&db, "DELETE FROM audit_checkpoint WHERE seq > 7").await;
    // From the database alone the shorter log is consistent (this is why the witness exists).
    let (ok, out, _) = verify(&without_witness(&config), &[]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("sequence 8") && out.contains("removed from the end"), "{out}");
}

#[tokio::test]
async fn a_forged_event_appended_while_the_gateway_is_stopped_is_caught() {
    let (_dir, config, url) = stopped_after(6).await;
    let db = pool(&url).await;
    let saved = rows(&db).await;
    let last = saved.last().unwrap();
    let event = last.event.replace("\"purpose\":\"TREAT\"", "\"purpose\":\"ETREAT\"");
    let hash = chain_hash(last.seq + 1, &last.hash, event.as_bytes()).to_vec();
    put(&db, &AuditRow::forged(last.seq + 1, event, last.hash.clone(), hash)).await;
    // Without the witness: chained, but reported as not anchored rather than verified.
    let (ok, out, _) = verify(&without_witness(&config), &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("1 events after the last signed checkpoint (7..7), not yet anchored"), "{out}");
    if backend_is_postgres() {
        return; // Several instances share one chain: a stop is not the chain's stop.
    }
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(!ok && out.contains("sequence 7") && out.contains("after the gateway's clean shutdown"), "{out}");
}

#[tokio::test]
async fn a_rewritten_chain_with_checkpoints_dropped_and_interval_raised_is_caught() {
    let (_dir, config, url) = stopped_after(12).await;
    let db = pool(&url).await;
    let saved = rows(&db).await;
    let forged = rechained(&saved, 2, |e| e.replace("\"purpose\":\"TREAT\"", "\"purpose\":\"ETREAT\""));
    restore(&db, &forged).await;
    exec(&db, "DELETE FROM audit_checkpoint").await;
    exec(&db, "UPDATE kk_meta SET value = '1000000' WHERE key = 'audit.checkpoint_every'").await;
    // The interval is the configuration's, not the database's: the first due checkpoint is missing.
    let (ok, out, _) = verify(&without_witness(&config), &[]).await;
    assert!(!ok && out.contains("sequence 5") && out.contains("checkpoint due here is missing"), "{out}");
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(!ok && out.contains("sequence 5"), "{out}");
    // And the gateway refuses to start on the doctored metadata rather than follow it.
    let cfg = kakehashi::Config::load(&config).unwrap();
    let e = kakehashi::Gateway::bind(cfg).await.err().expect("refused").to_string();
    assert!(e.contains("checkpoint_every") && e.contains("1000000"), "{e}");
}

#[tokio::test]
async fn a_tail_re_signed_with_a_retired_key_after_rotation_is_caught() {
    let (dir, config, url) = stopped_after(6).await;
    let pki = dir.path().join("pki");
    std::fs::rename(pki.join("audit-signing.pk8"), pki.join("retired.pk8")).unwrap();
    std::fs::rename(pki.join("audit-signing.pub"), pki.join("retired.pub")).unwrap();
    kakehashi_certs::Pki::open(&pki).unwrap().write_audit_key().unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("[audit]\n", "[audit]\nretired_public_keys = [\"pki/retired.pub\"]\n", 1))
        .unwrap();
    // Serve again under the new key.
    let gw = kakehashi::Gateway::bind(kakehashi::Config::load(&config).unwrap()).await.unwrap();
    let addr = gw.local_addr();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gw.run(async {
        let _ = rx.await;
    }));
    let hub = kakehashi_e2e::Client::new(
        &pki.join("ca.pem"),
        Some(&kakehashi_e2e::Identity::from_files(&pki.join("hub.pem"), &pki.join("hub.key"))),
        &[b"http/1.1"],
        None,
    );
    for _ in 0..9 {
        assert_eq!(hub.get(addr, "/fhir/Patient?_count=1").await.unwrap().status, 200);
    }
    stop.send(()).unwrap();
    task.await.unwrap();
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(ok, "{out}");

    // Someone who kept the retired private key rewrites an event signed under the new
    // key and re-signs every checkpoint from there with the old one.
    let db = pool(&url).await;
    let saved = rows(&db).await;
    let forged = rechained(&saved, 11, |e| e.replace("\"purpose\":\"TREAT\"", "\"purpose\":\"ETREAT\""));
    restore(&db, &forged).await;
    let old = kakehashi::audit::checkpoint::Signer::load(&pki.join("retired.pk8")).unwrap();
    for r in forged.iter().filter(|r| r.seq >= 12) {
        sqlx::query("UPDATE audit_checkpoint SET hash = $1, key_id = $2, signature = $3 WHERE seq = $4")
            .bind(&r.hash)
            .bind(old.key_id())
            .bind(old.sign(r.seq, &r.hash, 1_800_000_000))
            .bind(r.seq)
            .execute(&db)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_checkpoint SET signed_at = 1800000000 WHERE seq = $1")
            .bind(r.seq)
            .execute(&db)
            .await
            .unwrap();
    }
    let (ok, out, _) = verify(&without_witness(&config), &[]).await;
    assert!(!ok && out.contains("retired key") && out.contains(old.key_id()), "{out}");
}

#[tokio::test]
async fn pruning_is_witnessed_and_a_pretended_prune_is_caught() {
    let (_dir, config, url) = stopped_after(12).await;
    let db = pool(&url).await;
    let saved = rows(&db).await;
    // A pretended prune: events 1..10 deleted and the checkpoint at 10 made the anchor.
    let cp = sqlx::query_as::<_, (Vec<u8>, i64, String, Vec<u8>)>(
        "SELECT hash, signed_at, key_id, signature FROM audit_checkpoint WHERE seq = 10",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    exec(&db, "DELETE FROM audit_event WHERE seq <= 10").await;
    sqlx::query(
        "INSERT INTO audit_anchor (id, seq, hash, signed_at, key_id, signature) VALUES (1, 10, $1, $2, $3, $4)",
    )
    .bind(&cp.0)
    .bind(cp.1)
    .bind(&cp.2)
    .bind(&cp.3)
    .execute(&db)
    .await
    .unwrap();
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(!ok && out.contains("no witness records as pruned"), "{out}");
    // A real prune records its anchor in the witness, and the log verifies after it.
    exec(&db, "DELETE FROM audit_anchor").await;
    restore(&db, &saved).await;
    let tomorrow = (kakehashi_e2e::jst_today() + time::Duration::days(1)).to_string();
    let out = tokio::process::Command::new(kakehashi_bin())
        .args(["audit", "prune", "--config"])
        .arg(&config)
        .args(["--before", &tomorrow])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("witness"), "{text}");
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(ok, "{out}");
}

#[tokio::test]
async fn events_appended_behind_the_running_writer_are_witnessed_as_foreign() {
    if backend_is_postgres() {
        return; // Instances share the chain; only a single writer knows its own head.
    }
    let gw =
        TestGateway::start_opts(Options { checkpoint_every: 5, checkpoint_secs: 3600, ..Default::default() }).await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    for _ in 0..3 {
        hub.get(gw.addr, "/fhir/Patient?_count=1").await.unwrap();
    }
    let db = gw.db().await;
    let saved = rows(&db).await;
    let last = saved.last().unwrap();
    let hash = chain_hash(last.seq + 1, &last.hash, last.event.as_bytes()).to_vec();
    put(&db, &AuditRow::forged(last.seq + 1, last.event.clone(), last.hash.clone(), hash)).await;
    hub.get(gw.addr, "/fhir/Patient?_count=1").await.unwrap();
    let config = gw.config_path();
    let _dir = gw.stop_keeping_dir().await;
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(!ok && out.contains("appended behind the gateway's writer"), "{out}");
}

#[tokio::test]
async fn a_forged_witness_line_is_refused() {
    let (dir, config, _) = stopped_after(6).await;
    let w = dir.path().join("witness/audit.log");
    let text = std::fs::read_to_string(&w).unwrap();
    let first = text.lines().next().unwrap().to_string();
    std::fs::write(&w, text.replacen(&first, &first.replacen("\"seq\":0", "\"seq\":3", 1), 1)).unwrap();
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(!ok && out.contains("line 1") && out.contains("forged"), "{out}");
}

#[tokio::test]
async fn events_inserted_outside_the_chain_are_caught() {
    // Found by an outside probe: rows at seq 0 or below (or under a pruning anchor)
    // were passed by the walk while the auditor API showed them.
    let (_dir, config, url) = stopped_after(6).await;
    let db = pool(&url).await;
    let saved = rows(&db).await;
    for seq in [-1i64, 0] {
        let mut forged = saved[1].clone();
        forged.seq = seq;
        forged.event = forged.event.replace("\"purpose\":\"TREAT\"", "\"purpose\":\"ETREAT\"");
        put(&db, &forged).await;
        let (ok, out, _) = verify(&config, &[]).await;
        assert!(!ok && out.contains(&format!("sequence {seq}")) && out.contains("outside the chain"), "{out}");
        sqlx::query("DELETE FROM audit_event WHERE seq = $1").bind(seq).execute(&db).await.unwrap();
    }
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(ok, "{out}");
    if backend_is_postgres() {
        return; // Column types are enforced there.
    }
    // A column given another type is named by its sequence number, not a decoding error.
    exec(&db, "UPDATE audit_event SET agent_institution = CAST(agent_institution AS BLOB) WHERE seq = 4").await;
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(!ok && out.contains("sequence 4") && out.contains("wrong type"), "{out}");
}

#[tokio::test]
async fn an_index_edited_to_hide_an_event_fails_the_integrity_check() {
    if backend_is_postgres() {
        return; // PostgreSQL keeps its indexes consistent itself.
    }
    // The outside probe's trick: make the agent index disagree with the table, so that
    // AuditEvent?agent= misses an event while the chain still verifies.
    let (_dir, config, url) = stopped_after(6).await;
    let (ok, out, _) = verify(&config, &["--integrity"]).await;
    assert!(ok && out.contains("integrity check: ok"), "{out}");
    let one = |sql: &'static str| {
        let url = url.clone();
        async move {
            let p = pool(&url).await;
            exec(&p, sql).await;
            p.close().await;
        }
    };
    one("UPDATE audit_event SET agent_institution = '0000000000' WHERE seq = 2").await;
    let entry: (String, String, String, i64, String) = {
        let p = pool(&url).await;
        let row = sqlx::query_as(
            "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master WHERE name = 'audit_event_agent'",
        )
        .fetch_one(&p)
        .await
        .unwrap();
        p.close().await;
        row
    };
    one("PRAGMA writable_schema=ON; DELETE FROM sqlite_master WHERE name = 'audit_event_agent'").await;
    let p = pool(&url).await;
    let original: String =
        sqlx::query_scalar("SELECT agent_institution FROM audit_event WHERE seq = 3").fetch_one(&p).await.unwrap();
    sqlx::query("UPDATE audit_event SET agent_institution = $1 WHERE seq = 2")
        .bind(&original)
        .execute(&p)
        .await
        .unwrap();
    p.close().await;
    let p = pool(&url).await;
    let mut conn = p.acquire().await.unwrap();
    sqlx::query("PRAGMA writable_schema=ON").execute(&mut *conn).await.unwrap();
    sqlx::query("INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES ($1, $2, $3, $4, $5)")
        .bind(&entry.0)
        .bind(&entry.1)
        .bind(&entry.2)
        .bind(entry.3)
        .bind(&entry.4)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    p.close().await;
    // The chain itself still verifies; the integrity check finds the lie.
    let (ok, out, _) = verify(&config, &[]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = verify(&config, &["--integrity"]).await;
    assert!(!ok && out.contains("damaged"), "{out}");
}
