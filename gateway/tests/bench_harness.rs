//! The load harness end to end, in a test binary of its own: its rounds load both
//! cores for seconds, which would starve the timing-sensitive unit tests running beside
//! them in the library's test binary.

use kakehashi::loadgen::scenario::{bench, Options, Workload};
use kakehashi::loadgen::Mode;
use std::time::Duration;

/// Every workload and connection mode the harness offers, briefly: each stops by
/// itself, every request of the gateway and of the baseline answers as expected, and
/// the idle connections are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_against_gateway_and_baseline_without_errors() {
    let cases = [
        (Workload::PatientRead, Mode::H1, 0),
        (Workload::PatientRead, Mode::H2, 0),
        (Workload::Search20, Mode::H1, 0),
        (Workload::Everything, Mode::H1, 0),
        (Workload::Push50k, Mode::H1, 0),
        (Workload::Metadata, Mode::NewConnection, 0),
        (Workload::Metadata, Mode::Resumed, 0),
        (Workload::PatientRead, Mode::H1, 50),
    ];
    for (workload, mode, idle) in cases {
        let opts = Options {
            workload,
            mode,
            connections: 4,
            duration: Duration::from_millis(400),
            rounds: 1,
            warmup: Duration::from_millis(100),
            rate_per_client: 0.0,
            database_url: None,
            instances: 1,
            idle,
        };
        let started = std::time::Instant::now();
        let r = bench(opts).await.unwrap_or_else(|e| panic!("{workload:?} {mode:?}: {e}"));
        let mut reports = vec![("gateway", &r.gateway), ("baseline", &r.baseline)];
        reports.extend(r.unaudited.as_ref().map(|u| ("unaudited", u)));
        for (who, report) in reports {
            assert!(report.ok > 0, "{workload:?} {mode:?}: the {who} answered nothing");
            assert!(report.errors.is_empty(), "{workload:?} {mode:?}: the {who} failed: {:?}", report.errors);
            assert!(report.elapsed < Duration::from_secs(5), "{workload:?} {mode:?}: the {who} ran on");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{workload:?} {mode:?}: the bench did not stop");
    }
}

/// The pinned harness: every server in a process of its own, each contestant answers
/// the workload without errors, and what it reports tells them apart: the audited
/// gateway spends CPU and writes to disk for each read, the bare baseline writes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_harness_measures_each_server_process() {
    use kakehashi::loadgen::pinned;
    let opts = pinned::Options {
        workload: Workload::PatientRead,
        connections: 4,
        duration: Duration::from_millis(500),
        rounds: 1,
        warmup: Duration::ZERO,
        database_url: None,
        exe: env!("CARGO_BIN_EXE_kakehashi").into(),
    };
    let rows = pinned::bench(opts).await.expect("the pinned harness runs");
    let row = |name: &str| rows.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no {name} row: {rows:?}"));
    for r in &rows {
        assert!(r.rate > 0.0 && r.errors == 0, "{r:?}");
    }
    let (gateway, baseline) = (row("gateway"), row("baseline"));
    assert!(gateway.cpu_us > 0.0, "{gateway:?}");
    assert!(gateway.written > 0.0, "an audited read is written to disk before it is answered: {gateway:?}");
    assert_eq!(baseline.written, 0.0, "{baseline:?}");
}
