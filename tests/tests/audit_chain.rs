//! Issue 6: tamper evidence on a real database. Each kind of tampering is done to the
//! live audit tables and `audit verify` (library and CLI) must name the first bad
//! sequence number; undoing it makes verification pass again.

use kakehashi::audit::checkpoint::TrustedKeys;
use kakehashi::audit::log::chain_hash;
use kakehashi::audit::verify::{verify, VerifyError};
use kakehashi::store::Store;
use kakehashi_certs::Role;
use kakehashi_e2e::tamper::{restore, rows, AuditRow};
use kakehashi_e2e::{kakehashi_bin, Options, TestGateway, CLINIC, HUB, OUTSIDER};
use sqlx::Row;

async fn check(store: &Store, key: &[u8]) -> Result<i64, (i64, String)> {
    match verify(store, &TrustedKeys::new([key.to_vec()]), 5).await {
        Ok(r) => Ok(r.last),
        Err(VerifyError::Broken { seq, reason }) => Err((seq, reason)),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn verify_catches_every_kind_of_tampering() {
    let gw = TestGateway::start_opts(Options { checkpoint_every: 5, ..Default::default() }).await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    for _ in 0..22 {
        assert_eq!(hub.get(gw.addr, "/fhir/Patient?_count=1").await.unwrap().status, 200);
    }
    // Identity-step refusals are audited too.
    let outsider = gw.client(Some(&gw.issue("outsider", OUTSIDER, Role::ClinicTerminal)));
    assert_eq!(outsider.get(gw.addr, "/fhir/metadata").await.unwrap().status, 403);
    let clinic = gw.client(Some(&gw.issue("clinic", CLINIC, Role::ClinicTerminal)));
    assert_eq!(clinic.get(gw.addr, "/fhir/Patient").await.unwrap().status, 200);

    let pool = gw.db().await;
    let store = Store::open(&gw.db_url).await.unwrap();
    let key =
        kakehashi::audit::checkpoint::Signer::load(&gw.dir.path().join("pki/audit-signing.pk8")).unwrap().public_key();
    let saved = rows(&pool).await;
    assert_eq!(saved.len(), 24, "22 searches, one identity refusal, one clinic search");
    let refusal = saved.iter().find(|r| r.subtype == "110114").expect("identity refusal audited");
    assert_eq!((refusal.outcome.as_str(), refusal.agent.as_str()), ("4", OUTSIDER));
    assert_eq!(check(&store, &key).await, Ok(24));

    // Modified.
    sqlx::query("UPDATE audit_event SET event = replace(event, 'search-type', 'read') WHERE seq = 7")
        .execute(&pool)
        .await
        .unwrap();
    let (seq, why) = check(&store, &key).await.unwrap_err();
    assert_eq!(seq, 7, "{why}");
    assert!(why.contains("modified"));
    restore(&pool, &saved).await;

    // Deleted from the middle.
    sqlx::query("DELETE FROM audit_event WHERE seq = 8").execute(&pool).await.unwrap();
    assert_eq!(check(&store, &key).await.unwrap_err().0, 8);
    restore(&pool, &saved).await;

    // Reordered: two events' contents swapped.
    sqlx::query("UPDATE audit_event SET seq = -3 WHERE seq = 3").execute(&pool).await.unwrap();
    sqlx::query("UPDATE audit_event SET seq = 3 WHERE seq = 4").execute(&pool).await.unwrap();
    sqlx::query("UPDATE audit_event SET seq = 4 WHERE seq = -3").execute(&pool).await.unwrap();
    assert_eq!(check(&store, &key).await.unwrap_err().0, 3);
    restore(&pool, &saved).await;

    // The columns auditors query by changed (an event hidden from the reader's auditors).
    sqlx::query("UPDATE audit_event SET agent_institution = $1 WHERE seq = 9")
        .bind(CLINIC)
        .execute(&pool)
        .await
        .unwrap();
    let (seq, why) = check(&store, &key).await.unwrap_err();
    assert_eq!(seq, 9, "{why}");
    assert!(why.contains("columns"), "{why}");
    restore(&pool, &saved).await;

    // Inserted, with every later hash recomputed and columns to match: only the signed
    // checkpoint can tell.
    let mut forged: Vec<AuditRow> = saved[..10].iter().map(AuditRow::clone).collect();
    let mut prev = saved[9].hash.clone(); // seq 10
    let fake_event = saved[10].event.replace("\"purpose\":\"TREAT\"", "\"purpose\":\"ETREAT\"");
    assert_ne!(fake_event, saved[10].event);
    let events = std::iter::once(fake_event).chain(saved[10..].iter().map(|r| r.event.clone()));
    for (next_seq, event) in (11..).zip(events) {
        let h = chain_hash(next_seq, &prev, event.as_bytes()).to_vec();
        forged.push(AuditRow::forged(next_seq, event, prev, h.clone()));
        prev = h;
    }
    restore(&pool, &forged).await;
    let (seq, why) = check(&store, &key).await.unwrap_err();
    assert_eq!(seq, 15, "{why}");
    assert!(why.contains("checkpoint"), "{why}");
    restore(&pool, &saved).await;

    // A checkpoint removed.
    sqlx::query("DELETE FROM audit_checkpoint WHERE seq = 10").execute(&pool).await.unwrap();
    let (seq, why) = check(&store, &key).await.unwrap_err();
    assert_eq!(seq, 10, "{why}");
    assert!(why.contains("missing"));
    // The gateway re-signs nothing in the past; put the original back.
    let cp: (Vec<u8>, i64, String, Vec<u8>) = {
        let r = sqlx::query("SELECT hash, signed_at, key_id, signature FROM audit_checkpoint WHERE seq = 15")
            .fetch_one(&pool)
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    let signer = kakehashi::audit::checkpoint::Signer::load(&gw.dir.path().join("pki/audit-signing.pk8")).unwrap();
    let h10 = saved[9].hash.clone();
    sqlx::query("INSERT INTO audit_checkpoint (seq, hash, signed_at, key_id, signature) VALUES (10, $1, $2, $3, $4)")
        .bind(&h10)
        .bind(cp.1)
        .bind(&cp.2)
        .bind(signer.sign(10, &h10, cp.1))
        .execute(&pool)
        .await
        .unwrap();
    assert!(check(&store, &key).await.is_ok());

    // A checkpoint forged (signature altered).
    let mut bad = cp.3.clone();
    bad[0] ^= 0xff;
    sqlx::query("UPDATE audit_checkpoint SET signature = $1 WHERE seq = 15").bind(&bad).execute(&pool).await.unwrap();
    let (seq, why) = check(&store, &key).await.unwrap_err();
    assert_eq!(seq, 15);
    assert!(why.contains("forged"));
    sqlx::query("UPDATE audit_checkpoint SET signature = $1 WHERE seq = 15").bind(&cp.3).execute(&pool).await.unwrap();

    // Events removed from the end, past a checkpoint.
    sqlx::query("DELETE FROM audit_event WHERE seq >= 17").execute(&pool).await.unwrap();
    let (seq, why) = check(&store, &key).await.unwrap_err();
    assert_eq!(seq, 17, "{why}");
    restore(&pool, &saved).await;
    assert!(check(&store, &key).await.is_ok());

    // The CLI says the same, with a non-zero exit.
    sqlx::query("UPDATE audit_event SET event = replace(event, 'search-type', 'read') WHERE seq = 12")
        .execute(&pool)
        .await
        .unwrap();
    let out = std::process::Command::new(kakehashi_bin())
        .args(["audit", "verify", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sequence 12"), "{stderr}");
    restore(&pool, &saved).await;
    let out = std::process::Command::new(kakehashi_bin())
        .args(["audit", "verify", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("24 events"));
    gw.stop().await;
}

#[tokio::test]
async fn export_and_prune_keep_the_chain_verifiable() {
    // No periodic checkpoint may land between the reads and the prune: the anchor is at 10.
    let gw =
        TestGateway::start_opts(Options { checkpoint_every: 5, checkpoint_secs: 3600, ..Default::default() }).await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    for _ in 0..12 {
        hub.get(gw.addr, "/fhir/Patient?_count=1").await.unwrap();
    }
    let run = |args: &[&str]| {
        std::process::Command::new(kakehashi_bin()).args(args).arg("--config").arg(gw.config_path()).output().unwrap()
    };
    let nd = run(&["audit", "export", "--format", "ndjson"]);
    assert!(nd.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&nd.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 12);
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["event"]["resourceType"], "AuditEvent");
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    let csv = run(&["audit", "export", "--format", "csv", "--from", "2000-01-01"]);
    let text = String::from_utf8_lossy(&csv.stdout).to_string();
    assert!(text.starts_with("seq,recorded,agent_institution"));
    assert_eq!(text.lines().count(), 13);
    let none = run(&["audit", "export", "--format", "csv", "--to", "2000-01-01"]);
    assert_eq!(String::from_utf8_lossy(&none.stdout).lines().count(), 1);

    let tomorrow = (kakehashi_e2e::jst_today() + time::Duration::days(1)).to_string();
    let pruned = run(&["audit", "prune", "--before", &tomorrow]);
    assert!(pruned.status.success(), "{}", String::from_utf8_lossy(&pruned.stderr));
    assert!(
        String::from_utf8_lossy(&pruned.stdout).contains("up to 10"),
        "{}",
        String::from_utf8_lossy(&pruned.stdout)
    );
    let v = run(&["audit", "verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).contains("events 11..12"), "{}", String::from_utf8_lossy(&v.stdout));
    // New reads continue the chain after the anchor.
    hub.get(gw.addr, "/fhir/Patient?_count=1").await.unwrap();
    let v = run(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&v.stdout).contains("events 11..13"));
    let bad_date = run(&["audit", "export", "--from", "yesterday"]);
    assert!(!bad_date.status.success());
    assert!(String::from_utf8_lossy(&bad_date.stderr).contains("not a date"));
    gw.stop().await;
}

/// `audit verify --config` with the CLI: (success, stdout + stderr).
fn cli_verify(config: &std::path::Path) -> (bool, String) {
    cli_verify_with(config, &[])
}

/// `audit verify --config CONFIG ARGS...`: (success, stdout + stderr).
fn cli_verify_with(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(kakehashi_bin())
        .args(["audit", "verify", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn the_log_stays_verifiable_across_a_signing_key_rotation() {
    let gw = TestGateway::start_opts(Options { checkpoint_every: 5, ..Default::default() }).await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    for _ in 0..12 {
        assert_eq!(hub.get(gw.addr, "/fhir/Patient?_count=1").await.unwrap().status, 200);
    }
    let config = gw.config_path();
    let dir = gw.stop_keeping_dir().await;

    // Rotate: retire the old key (keep its public half), make a new one, serve again.
    let pki_dir = dir.path().join("pki");
    std::fs::rename(pki_dir.join("audit-signing.pk8"), pki_dir.join("retired.pk8")).unwrap();
    std::fs::rename(pki_dir.join("audit-signing.pub"), pki_dir.join("retired.pub")).unwrap();
    kakehashi_certs::Pki::open(&pki_dir).unwrap().write_audit_key().unwrap();
    let gw2 = kakehashi::Gateway::bind(kakehashi::Config::load(&config).unwrap()).await.unwrap();
    let addr = gw2.local_addr();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gw2.run(async {
        let _ = rx.await;
    }));
    for _ in 0..12 {
        assert_eq!(hub.get(addr, "/fhir/Patient?_count=1").await.unwrap().status, 200);
    }
    stop.send(()).unwrap();
    task.await.unwrap();

    // With only the new key, the old checkpoints (and the witness lines the old key
    // signed) are not trusted: the first is named.
    let (ok, out) = cli_verify(&config);
    assert!(!ok, "{out}");
    assert!(out.contains("line 1") && out.contains("not among the trusted keys"), "{out}");
    let (ok, out) = cli_verify_with(&config, &["--witness", "/dev/null"]);
    assert!(!ok, "{out}");
    assert!(out.contains("sequence 5") && out.contains("not among the trusted keys"), "{out}");
    // Naming the retired public key makes the whole log verify, old and new checkpoints.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("[audit]\n", "[audit]\nretired_public_keys = [\"pki/retired.pub\"]\n", 1);
    std::fs::write(&config, text).unwrap();
    let (ok, out) = cli_verify(&config);
    assert!(ok, "{out}");
    assert!(out.contains("events 1..24") && out.contains("signed checkpoints"), "{out}");
    assert!(out.contains("0 events after the last signed checkpoint"), "a clean stop signs the head: {out}");
    // A retired key file that is not a key is a clear error, not a pass.
    std::fs::write(pki_dir.join("retired.pub"), "not hex\n").unwrap();
    let (ok, out) = cli_verify(&config);
    assert!(!ok && out.contains("retired.pub") && out.contains("hex Ed25519 public key"), "{out}");
}
