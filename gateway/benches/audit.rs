//! What auditing costs, and how fast the log verifies.
//!
//! `cargo bench -p kakehashi --features bench --bench audit [-- VERIFY_EVENTS [CONCURRENCY]]`
//!
//! 0. Audited reads per second at the front door (one Patient, cross-site, translation
//!    cached; mutual TLS, HTTP/1.1 keep-alive, 64 connections, the load harness's
//!    client) against the same reads from the same gateway with auditing switched off
//!    (a benchmark-build-only switch), alternating in one run, embedded SQLite.
//! 1. The same comparison in-process: CONCURRENCY (default 256) requests through the
//!    tower stack minus TLS and HTTP, where a read costs only a few microseconds, so
//!    this ratio shows the audit writer's own ceiling.
//! 2. `audit verify` speed over a log of VERIFY_EVENTS (default 1,000,000) events.
//! 3. Audited reads per second again, appending to that grown log: throughput must not
//!    fall as the log grows (issue 9 asks for 0 and 10 million events).

use axum::body::Body;
use kakehashi::app::{build, AppState};
use kakehashi::audit::checkpoint::TrustedKeys;
use kakehashi::audit::{AuditLog, Checkpoints};
use kakehashi::identity::{ConnInfo, Principal};
use kakehashi::records::Records;
use kakehashi::store::Store;
use kakehashi_certs::Role;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

async fn rate(
    app: &axum::Router,
    path: &str,
    conn: &ConnInfo,
    who: &Arc<Principal>,
    dur: Duration,
    concurrency: usize,
) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (app, path, conn, who) = (app.clone(), path.to_string(), conn.clone(), who.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < dur {
                let mut req = http::Request::get(&path).header("host", "bench").body(Body::empty()).unwrap();
                req.extensions_mut().insert(conn.clone());
                req.extensions_mut().insert(who.clone());
                let resp = app.clone().oneshot(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn verify_speed(events: i64, store: &Store, signer: &kakehashi::audit::checkpoint::Signer) {
    use kakehashi::audit::log::{bind_event, chain_hash, insert_events_sql, Columns};
    use kakehashi::audit::{AuditRecord, Disclosed, Interaction, Outcome, Requestor};
    // A cross-site read of one Patient, as the gateway stores it.
    let record = AuditRecord {
        interaction: Interaction::Read,
        outcome: Outcome::Success,
        outcome_desc: None,
        requestor: Requestor::Principal(Arc::new(Principal {
            institution: "4610200021".into(),
            institution_name: "黒島診療所".into(),
            kind: kakehashi::config::InstitutionKind::Clinic,
            role: Role::ClinicTerminal,
            terminal: "kuroshima-01".into(),
            fingerprint: "ab".repeat(32),
        })),
        source_address: "10.0.0.1:5000".into(),
        disclosed: vec![Disclosed {
            reference: "Patient/patient-c18f07549e960059f1f6d75c".into(),
            owner: "4610100011".into(),
            patient: Some("patient-c18f07549e960059f1f6d75c".into()),
            basis: "consent".into(),
        }],
        query: None,
        purpose: "TREAT".into(),
        break_glass_reason: None,
        recorded_micros: 1_795_000_000_000_000,
    };
    let entry = record.entry("kakehashi");
    let event = serde_json::to_string(&entry).unwrap();
    let c = Columns::of(&entry);
    let started = Instant::now();
    let mut prev = kakehashi::audit::log::GENESIS.to_vec();
    let mut seq = 0i64;
    while seq < events {
        let mut tx = store.pool().begin().await.unwrap();
        for _ in 0..10_000.min(events - seq) {
            seq += 1;
            let h = chain_hash(seq, &prev, event.as_bytes());
            let q = sqlx::query(sqlx::AssertSqlSafe(insert_events_sql(1)));
            bind_event(q, seq, &event, &c, prev.clone(), &h).execute(&mut *tx).await.unwrap();
            if seq % 1000 == 0 {
                sqlx::query(
                    "INSERT INTO audit_checkpoint (seq, hash, signed_at, key_id, signature) VALUES ($1, $2, 0, $3, $4)",
                )
                .bind(seq)
                .bind(h.to_vec())
                .bind(signer.key_id().to_string())
                .bind(signer.sign(seq, &h, 0))
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            prev = h.to_vec();
        }
        tx.commit().await.unwrap();
    }
    println!("wrote {events} events in {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let r = kakehashi::audit::verify::verify(store, &TrustedKeys::new([signer.public_key()]), 1000).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "audit verify: {} events, {} checkpoints in {secs:.1} s = {:.0} events/s",
        r.events,
        r.checkpoints,
        r.events as f64 / secs
    );
}

#[tokio::main]
async fn main() {
    let front = kakehashi::loadgen::scenario::bench(kakehashi::loadgen::scenario::Options {
        workload: kakehashi::loadgen::scenario::Workload::PatientRead,
        mode: kakehashi::loadgen::Mode::H1,
        connections: 64,
        duration: Duration::from_secs(5),
        rounds: 3,
        warmup: Duration::from_secs(5),
        rate_per_client: 0.0,
        database_url: None,
        instances: 1,
        idle: 0,
    })
    .await
    .unwrap();
    let unaudited = front.unaudited.expect("benchmark builds run the unaudited gateway");
    println!(
        "front door: audited reads {:.0}/s, unaudited {:.0}/s, ratio {:.2} (mutual TLS, HTTP/1.1, 64 connections, SQLite synchronous=FULL)",
        front.gateway.rate(),
        unaudited.rate(),
        front.gateway.rate() / unaudited.rate()
    );
    let nums: Vec<i64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let verify_events = nums.first().copied().unwrap_or(1_000_000);
    let concurrency = nums.get(1).copied().unwrap_or(256) as usize;
    let dir = std::env::temp_dir().join(format!("kk-bench-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, cfg) =
        kakehashi::loadgen::scenario::write_federation(&dir, &format!("sqlite://{}/bench.db", dir.display())).unwrap();
    let store = Store::open(&cfg.database.url).await.unwrap();
    let index = kakehashi::records::index::IndexDb::open(&cfg.records.index_url_for(&cfg.database.url)).await.unwrap();
    let records = Records::open(&cfg, index);
    let cfg = Arc::new(cfg);
    let signer = Arc::new(kakehashi::audit::checkpoint::Signer::load(&cfg.audit.signing_key).unwrap());
    // The same stack over `store`, audited into it, or with `log` when given.
    let stack = |store: &Store, log: Option<AuditLog>| {
        let cp = Checkpoints { signer: signer.clone(), every: 1000, interval: Duration::from_secs(60), witness: None };
        let log = log.unwrap_or_else(|| AuditLog::start(store.clone(), "bench".into(), cp));
        let addr = cfg.server.listen;
        build(AppState::new(cfg.clone(), Arc::default(), store.clone(), records.clone(), log, addr, None))
    };
    let audited = stack(&store, None);
    let unaudited = stack(&store, Some(AuditLog::danger_disabled_for_benchmark()));
    let who = Arc::new(Principal {
        institution: "4610100011".into(),
        institution_name: "Hub".into(),
        kind: kakehashi::config::InstitutionKind::HubHospital,
        role: Role::HospitalSystem,
        terminal: "bench".into(),
        fingerprint: "00".into(),
    });
    let conn = ConnInfo {
        peer: "127.0.0.1:1".parse().unwrap(),
        fingerprint: None,
        claimed_institution: None,
        identity: Ok(who.clone()),
        cert: None,
    };
    // The hub's patient 1000001 (derived id: nothing to look up).
    let patient = kakehashi_mappings::stable_id("4610100011", "Patient", "1000001");
    let path = format!("/fhir/Patient/{patient}");
    let d = Duration::from_secs(3);
    rate(&audited, &path, &conn, &who, Duration::from_secs(1), concurrency).await; // warm up
    let mut best = (0f64, 0f64);
    for _ in 0..3 {
        best.0 = best.0.max(rate(&audited, &path, &conn, &who, d, concurrency).await);
        best.1 = best.1.max(rate(&unaudited, &path, &conn, &who, d, concurrency).await);
    }
    println!(
        "audited reads: {:.0}/s, unaudited: {:.0}/s, ratio {:.2} (in-process stack without TLS, SQLite synchronous=FULL, {concurrency} concurrent)",
        best.0, best.1, best.0 / best.1
    );
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_event").fetch_one(store.pool()).await.unwrap();
    println!("({events} events written during the audited runs)");

    let vdir = dir.join("verify");
    std::fs::create_dir_all(&vdir).unwrap();
    let vstore = Store::open(&format!("sqlite://{}/verify.db", vdir.display())).await.unwrap();
    verify_speed(verify_events, &vstore, &signer).await;
    let grown = stack(&vstore, None);
    let mut on_grown = 0f64;
    for _ in 0..3 {
        on_grown = on_grown.max(rate(&grown, &path, &conn, &who, d, concurrency).await);
    }
    println!(
        "audited reads appending to a log of {verify_events} events: {on_grown:.0}/s (to a fresh log: {:.0}/s, ratio {:.2})",
        best.0,
        on_grown / best.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
