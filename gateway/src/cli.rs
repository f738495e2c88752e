//! The command line: clap definitions and dispatch only; work happens in the modules.

use crate::config::Config;
use crate::Gateway;
use clap::{Args, Parser, Subcommand};
use kakehashi_certs::{ClientCertRequest, InitOptions, Pki, Role};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Kakehashi: secure FHIR gateway between rural clinics and hub hospitals.
#[derive(Debug, Parser)]
#[command(name = "kakehashi", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gateway described by a federation configuration file.
    Serve {
        /// The federation configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Serve without auditing, to price the audit in `bench --pin` (benchmark
        /// builds only; never in the gateway users run).
        #[cfg(feature = "bench")]
        #[arg(long, hide = true)]
        danger_unaudited_for_benchmark: bool,
    },
    /// Create (first run) or reuse a complete demo federation in DIR and serve it.
    Demo(DemoArgs),
    /// Federation PKI: CA, server and client certificates, CRL.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Translate native records to FHIR offline; prints a Bundle (JSON) on stdout.
    Translate(TranslateArgs),
    /// The audit log: verify the chain and signatures, export, prune.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Load harness: the gateway against a bare TLS baseline on loopback.
    Bench(BenchArgs),
    /// The pinned harness's fixed-answer server (the bare baseline, or nginx's upstream).
    #[command(hide = true)]
    BenchPeer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The bytes to answer with.
        #[arg(long)]
        body: PathBuf,
        /// The status to answer with.
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// PKI directory (ca.pem, ca.crl, server.pem, server.key): mutual TLS as the
        /// gateway's; plain HTTP without.
        #[arg(long)]
        tls: Option<PathBuf>,
    },
    /// Write synthetic records for benchmarks (fictional people only).
    #[command(subcommand)]
    Generate(GenerateCommand),
    /// Records at hub scale: generate an SS-MIX2 storage, serve it, and measure the first
    /// index, memory, idle CPU, $everything latency, read-your-writes, new patients, restart.
    BenchRecords(BenchRecordsArgs),
}

#[derive(Debug, Args)]
struct BenchRecordsArgs {
    /// The storage root (generated there when absent; kept for later runs).
    #[arg(long)]
    storage: PathBuf,
    /// Patients of the bulk storage.
    #[arg(long, default_value_t = 100_000)]
    patients: u64,
    /// Visits per bulk patient (each a prescription and a lab result).
    #[arg(long, default_value_t = 4)]
    visits: u64,
    /// Patients of about 50 messages each, for the $everything latency.
    #[arg(long, default_value_t = 200)]
    rich: u64,
    /// Database, e.g. postgres://127.0.0.1/kk_bench (must be empty; default a fresh SQLite file).
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds of idle CPU measurement (long enough to hold several of the indexer's
    /// demographics passes, over which its budget is kept).
    #[arg(long, default_value_t = 120)]
    idle_secs: u64,
}

#[derive(Debug, Subcommand)]
enum GenerateCommand {
    /// An SS-MIX2 storage: per patient an ADT-00 and VISITS prescriptions (OMP-01) and
    /// lab results (OML-11), ISO-2022-JP, with versioned and cancelled orders.
    SsMix2 {
        /// Storage root to write (created).
        #[arg(long)]
        out: PathBuf,
        /// Patients.
        #[arg(long, default_value_t = 1000)]
        patients: u64,
        /// Visits per patient.
        #[arg(long, default_value_t = 4)]
        visits: u64,
        /// The first patient id (10 digits, then consecutive).
        #[arg(long, default_value_t = 1_000_000_000)]
        first_id: u64,
        /// Writer threads (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// patient-read, search-20, everything, push-50k or metadata.
    #[arg(long, value_enum, default_value = "patient-read")]
    workload: BenchWorkload,
    /// h1 (keep-alive), h2, new (full handshake per request) or resume.
    #[arg(long, value_enum, default_value = "h1")]
    mode: BenchMode,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Alternating rounds of gateway and baseline.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds of an unreported first run of each contestant (default: --duration; 0: none).
    #[arg(long)]
    warmup: Option<u64>,
    /// Requests per second per client (open loop); 0 runs closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Database for the gateways, e.g. postgres://127.0.0.1/kk_bench (default: a fresh SQLite file).
    #[arg(long)]
    database_url: Option<String>,
    /// Gateway instances sharing the database; clients are spread across them.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// After the rounds, hold this many idle keep-alive connections and report memory.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Measure the servers alone: each in its own process on core 0, the load generator
    /// on core 1; reports server CPU µs and bytes written per request, with an nginx
    /// mutual-TLS proxy as a peer where nginx is installed (keep-alive HTTP/1.1, one
    /// instance).
    #[arg(long)]
    pin: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BenchWorkload {
    PatientRead,
    #[value(name = "search-20")]
    Search20,
    Everything,
    #[value(name = "push-50k")]
    Push50k,
    Metadata,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BenchMode {
    H1,
    H2,
    New,
    Resume,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Re-walk the hash chain and checkpoint signatures; non-zero exit names the first bad sequence number.
    Verify {
        /// The federation configuration (database, audit key and interval).
        #[arg(long)]
        config: PathBuf,
        /// A witness file to hold the log to (repeatable, one per gateway instance);
        /// default: the configuration's `audit.witness`, if any.
        #[arg(long)]
        witness: Vec<PathBuf>,
        /// Pass when the log is empty (a federation that has served nothing yet).
        #[arg(long)]
        allow_empty: bool,
        /// Also run SQLite's integrity check of the whole file (reads everything: slow on a large log).
        #[arg(long)]
        integrity: bool,
    },
    /// Stream events with their hashes.
    Export {
        /// The federation configuration.
        #[arg(long)]
        config: PathBuf,
        /// ndjson or csv.
        #[arg(long, value_enum, default_value = "ndjson")]
        format: ExportFormat,
        /// Only events recorded at or after this date/dateTime.
        #[arg(long)]
        from: Option<String>,
        /// Only events recorded before this date/dateTime (a date includes its whole day).
        #[arg(long)]
        to: Option<String>,
    },
    /// Delete events recorded before DATE, keeping a signed anchor so the rest still verifies.
    Prune {
        /// The federation configuration.
        #[arg(long)]
        config: PathBuf,
        /// Prune events recorded before this date/dateTime.
        #[arg(long)]
        before: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// Newline-delimited JSON.
    Ndjson,
    /// CSV with a header row.
    Csv,
}

#[derive(Debug, Args)]
struct TranslateArgs {
    /// Source format.
    #[arg(long, value_enum)]
    from: SourceKind,
    /// Target format.
    #[arg(long, value_enum, default_value = "fhir")]
    to: TargetKind,
    /// Institution code owning the records (stamped in meta.security).
    #[arg(long, default_value = "0000000000")]
    owner: String,
    /// Name of the owning institution.
    #[arg(long, default_value = "(unassigned)")]
    owner_name: String,
    /// Site id recorded in meta.source.
    #[arg(long, default_value = "offline")]
    site: String,
    /// bundle (one Bundle, for small inputs) or ndjson (one resource a line, streamed
    /// in bounded memory: for a whole storage or directory).
    #[arg(long, value_enum, default_value = "bundle")]
    format: TranslateFormat,
    /// Exit 0 when some sources could not be translated but others were (each
    /// failure is still reported on stderr and as an OperationOutcome in the output).
    #[arg(long)]
    allow_partial: bool,
    /// A file (HL7 v2: one or several messages), a directory of them, or an SS-MIX2
    /// storage root.
    path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TranslateFormat {
    /// One FHIR Bundle (collection, or document when a Composition leads).
    Bundle,
    /// Newline-delimited JSON: one resource a line.
    Ndjson,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SourceKind {
    /// SS-MIX2 storage root or one of its files.
    #[value(name = "ss-mix2")]
    SsMix2,
    /// A bare HL7 v2.5 message (charset from MSH-18, else UTF-8).
    Hl7v2,
    /// An MML 2.3 or 4.x document.
    Mml,
    /// A JAHIS 院外処方箋 2D-symbol CSV (JAHIS5-9, Shift_JIS or UTF-8).
    #[value(name = "jahis-rx")]
    JahisRx,
    /// An HL7 CDA R2 document.
    Cda,
    /// A FHIR R4 document Bundle (JSON), for `--to mml` or `--to cda`.
    Fhir,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TargetKind {
    /// FHIR R4 JSON.
    Fhir,
    /// MML 4.x XML (from a FHIR document).
    Mml,
    /// CDA R2 XML (from a FHIR document).
    Cda,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Directory holding the demo federation.
    #[arg(long, default_value = "demo")]
    dir: PathBuf,
    /// FHIR listener (mutual TLS).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Admin listener (/healthz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Create the federation and exit without serving.
    #[arg(long)]
    setup_only: bool,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create the federation CA, the gateway's server certificate and an empty CRL.
    Init {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Federation name (CA subject).
        #[arg(long, default_value = "Kakehashi Federation")]
        federation: String,
        /// DNS name or IP the server certificate covers (repeatable).
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
    },
    /// Issue a client certificate for an institution's terminal or system.
    Issue {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// 10-digit 医療機関コード.
        #[arg(long)]
        institution: String,
        /// Institution name written in the subject (default: "Institution CODE").
        #[arg(long)]
        institution_name: Option<String>,
        /// clinic-terminal, hospital-system, pharmacy, auditor or doctor.
        #[arg(long)]
        role: Role,
        /// Terminal or system id.
        #[arg(long)]
        terminal: String,
        /// Output name: writes DIR/NAME.pem and DIR/NAME.key.
        #[arg(long)]
        out: String,
        /// Validity in days.
        #[arg(long, default_value_t = 397)]
        days: i64,
    },
    /// Revoke a certificate issued as NAME and rewrite the CRL.
    Revoke {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The name given at issue.
        name: String,
    },
    /// Re-sign the CRL with a fresh validity window (schedule this daily).
    RefreshCrl {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Run the command line; the exit code is non-zero on any error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KAKEHASHI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour codes only for a terminal: a journal or a log file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("KAKEHASHI_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("cannot start runtime: {e}"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        #[cfg(not(feature = "bench"))]
        Command::Serve { config } => {
            let cfg = Config::load(&config).map_err(|e| e.to_string())?;
            runtime()?.block_on(serve(cfg, false))
        }
        #[cfg(feature = "bench")]
        Command::Serve { config, danger_unaudited_for_benchmark } => {
            let cfg = Config::load(&config).map_err(|e| e.to_string())?;
            runtime()?.block_on(serve(cfg, danger_unaudited_for_benchmark))
        }
        Command::BenchPeer { listen, body, status, tls } => {
            let body = std::fs::read(&body).map_err(|e| format!("{}: {e}", body.display()))?;
            let tls = match tls {
                Some(dir) => {
                    let files = crate::tls::TlsFiles {
                        client_ca: dir.join("ca.pem"),
                        cert: dir.join("server.pem"),
                        key: dir.join("server.key"),
                        crls: vec![dir.join("ca.crl")],
                    };
                    Some(std::sync::Arc::new(crate::tls::build_server_config(&files).map_err(|e| e.to_string())?))
                }
                None => None,
            };
            let answer = crate::loadgen::baseline::Answer::fhir(body.into(), status);
            runtime()?.block_on(async {
                let (_, task) =
                    crate::loadgen::baseline::start(listen, tls, answer).await.map_err(|e| e.to_string())?;
                tokio::select! { _ = task => {}, _ = shutdown_signal() => {} }
                Ok(())
            })
        }
        Command::Demo(a) => {
            let cfg = crate::demo::prepare(&a.dir, a.listen, a.admin_listen).map_err(|e| e.to_string())?;
            if a.setup_only {
                return Ok(());
            }
            crate::demo::print_tour(&a.dir, &cfg);
            runtime()?.block_on(serve(cfg, false))
        }
        Command::Certs(c) => certs(c).map_err(|e| e.to_string()),
        Command::Translate(a) => translate(a),
        Command::Audit(a) => runtime()?.block_on(audit(a)),
        Command::BenchRecords(b) => runtime()?.block_on(crate::loadgen::hub::run(crate::loadgen::hub::Options {
            storage: b.storage,
            patients: b.patients,
            visits: b.visits,
            rich: b.rich,
            database_url: b.database_url,
            idle_secs: b.idle_secs,
        })),
        Command::Generate(GenerateCommand::SsMix2 { out, patients, visits, first_id, threads }) => {
            use crate::loadgen::storage;
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let spec = storage::Spec { root: out, patients, visits, first_id, threads };
            let started = std::time::Instant::now();
            let w = storage::generate(&spec, &std::sync::atomic::AtomicU64::new(0))?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{} patients, {} files ({:.1} MB) in {}: {secs:.1} s, {:.0} files/s",
                patients,
                w.files,
                w.bytes as f64 / 1e6,
                spec.root.display(),
                w.files as f64 / secs.max(1e-9)
            );
            Ok(())
        }
        Command::Bench(b) if b.pin => {
            use crate::loadgen::pinned;
            if !matches!(b.mode, BenchMode::H1) || b.instances > 1 || b.rate > 0.0 || b.idle > 0 {
                return Err("--pin measures keep-alive HTTP/1.1 reads against one instance, closed loop: \
                            leave out --mode, --instances, --rate and --idle"
                    .into());
            }
            pinned::pin_load_generator()?;
            let opts = pinned::Options {
                workload: workload(b.workload),
                connections: b.connections.max(1),
                duration: std::time::Duration::from_secs(b.duration.clamp(1, 600)),
                rounds: b.rounds,
                warmup: std::time::Duration::from_secs(b.warmup.unwrap_or(b.duration).min(600)),
                database_url: b.database_url,
                exe: std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?,
            };
            runtime()?.block_on(pinned::bench(opts)).map(|_| ())
        }
        Command::Bench(b) => {
            use crate::loadgen::{scenario, Mode};
            let opts = scenario::Options {
                workload: workload(b.workload),
                mode: match b.mode {
                    BenchMode::H1 => Mode::H1,
                    BenchMode::H2 => Mode::H2,
                    BenchMode::New => Mode::NewConnection,
                    BenchMode::Resume => Mode::Resumed,
                },
                connections: b.connections.max(1),
                duration: std::time::Duration::from_secs(b.duration.clamp(1, 600)),
                rounds: b.rounds,
                warmup: std::time::Duration::from_secs(b.warmup.unwrap_or(b.duration).min(600)),
                rate_per_client: b.rate.max(0.0),
                database_url: b.database_url,
                instances: b.instances.clamp(1, 8),
                idle: b.idle.min(10_000),
            };
            runtime()?.block_on(scenario::bench(opts)).map(|_| ())
        }
    }
}

fn workload(w: BenchWorkload) -> crate::loadgen::scenario::Workload {
    use crate::loadgen::scenario::Workload;
    match w {
        BenchWorkload::PatientRead => Workload::PatientRead,
        BenchWorkload::Search20 => Workload::Search20,
        BenchWorkload::Everything => Workload::Everything,
        BenchWorkload::Push50k => Workload::Push50k,
        BenchWorkload::Metadata => Workload::Metadata,
    }
}

fn date_arg(v: &str, end: bool) -> Result<i64, String> {
    let (s, e) = crate::fhir_api::params::date_range(v)
        .ok_or_else(|| format!("`{v}` is not a date (YYYY-MM-DD) or RFC 3339 dateTime"))?;
    Ok(if end { e } else { s } * 1_000_000)
}

async fn audit(a: AuditCommand) -> Result<(), String> {
    let config = match &a {
        AuditCommand::Verify { config, .. }
        | AuditCommand::Export { config, .. }
        | AuditCommand::Prune { config, .. } => config.clone(),
    };
    let cfg = Config::load(&config).map_err(|e| e.to_string())?;
    // Never create or migrate: these commands inspect a store, they must not mend it.
    let store = crate::store::Store::open_existing(&cfg.database.url)
        .await
        .map_err(|e| format!("{}: {e}", redacted_url(&cfg.database.url)))?;
    let signer = || crate::audit::checkpoint::Signer::load(&cfg.audit.signing_key).map_err(|e| e.to_string());
    match a {
        AuditCommand::Verify { witness, allow_empty, integrity, .. } => {
            if integrity {
                crate::audit::verify::integrity(&store).await.map_err(|e| e.to_string())?;
                println!("database integrity check: ok");
            }
            let keys = crate::audit::checkpoint::TrustedKeys::load(&signer()?, &cfg.audit.retired_public_keys)
                .map_err(|e| e.to_string())?;
            let files = if witness.is_empty() { cfg.audit.witness.iter().cloned().collect() } else { witness };
            let trust = crate::audit::verify::Trust {
                keys,
                every: cfg.audit.checkpoint_every.max(1) as i64,
                witnesses: crate::audit::verify::read_witnesses(&files).map_err(|e| e.to_string())?,
                allow_empty,
            };
            let r = crate::audit::verify::verify_with(&store, &trust).await.map_err(|e| e.to_string())?;
            println!(
                "audit log verified: events {}..{} ({} events), {} signed checkpoints",
                r.first, r.last, r.events, r.checkpoints
            );
            match files.len() {
                0 => {
                    println!("no witness given: a removed tail with its checkpoints cannot be detected (use --witness)")
                }
                n => println!(
                    "witness: {} records in {n} file(s) agree with the log; witnessed up to event {}",
                    r.witness_records, r.witnessed_up_to
                ),
            }
            if r.unsigned_tail > 0 {
                println!(
                    "{} events after the last signed checkpoint ({}..{}), not yet anchored: chained, not proven",
                    r.unsigned_tail,
                    r.last - r.unsigned_tail as i64 + 1,
                    r.last
                );
            } else {
                println!("0 events after the last signed checkpoint");
            }
            Ok(())
        }
        AuditCommand::Export { format, from, to, .. } => {
            let from = from.as_deref().map(|v| date_arg(v, false)).transpose()?.unwrap_or(i64::MIN);
            let to = to.as_deref().map(|v| date_arg(v, true)).transpose()?.unwrap_or(i64::MAX);
            let format = match format {
                ExportFormat::Ndjson => crate::audit::export::Format::Ndjson,
                ExportFormat::Csv => crate::audit::export::Format::Csv,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = match crate::audit::export::export(&store, format, from, to, &mut out).await {
                Ok(n) => n,
                // The reader stopped early (`| head`): nothing more is wanted, not an error.
                Err(crate::audit::export::ExportError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(())
                }
                Err(e) => return Err(e.to_string()),
            };
            eprintln!("exported {n} events");
            Ok(())
        }
        AuditCommand::Prune { before, .. } => {
            let before = date_arg(&before, false)?;
            let signer = signer()?;
            match crate::audit::verify::prune(&store, before).await.map_err(|e| e.to_string())? {
                Some((seq, hash)) => {
                    println!("pruned events up to {seq}; the signed checkpoint at {seq} is the new anchor");
                    if let Some(path) = &cfg.audit.witness {
                        let w = crate::audit::witness::Witness::open(path, None).map_err(|e| e.to_string())?;
                        if !w.witness(&signer, crate::audit::witness::Kind::Prune, seq, &hash) {
                            return Err(format!("pruned, but the witness {} could not record it", path.display()));
                        }
                        println!("witness {} records the new anchor", path.display());
                    }
                }
                None => println!("nothing to prune: no signed checkpoint among the events before that date"),
            }
            Ok(())
        }
    }
}

/// A database URL without its password, for messages.
fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn translate(a: TranslateArgs) -> Result<(), String> {
    use crate::sites::{self, Owner};
    if let SourceKind::Fhir = a.from {
        return from_fhir(&a.path, a.to);
    }
    if !matches!(a.to, TargetKind::Fhir) {
        return Err("--to mml and --to cda take a FHIR document Bundle: translate to FHIR first (--from fhir)".into());
    }
    let owner = Owner { code: a.owner, name: a.owner_name, site: a.site };
    let input = match a.from {
        SourceKind::SsMix2 => sites::stream::Input::SsMix2,
        SourceKind::Hl7v2 => sites::stream::Input::Hl7v2,
        SourceKind::Mml => sites::stream::Input::Mml,
        SourceKind::JahisRx => sites::stream::Input::JahisRx,
        SourceKind::Cda => sites::stream::Input::Cda,
        SourceKind::Fhir => unreachable!("handled above"),
    };
    let mut report = |line: &str| eprintln!("{line}");
    let summary = match a.format {
        TranslateFormat::Ndjson => {
            let stdout = std::io::stdout();
            let mut sink = sites::stream::Ndjson(std::io::BufWriter::new(stdout.lock()));
            match sites::stream::translate(input, &a.path, &owner, &mut sink, &mut report) {
                // The reader stopped early (`| head`): nothing more is wanted, not an error.
                Err(e) if e.contains("Broken pipe") => return Ok(()),
                other => other?,
            }
        }
        TranslateFormat::Bundle => {
            let mut sink = sites::stream::Gather::default();
            let summary = sites::stream::translate(input, &a.path, &owner, &mut sink, &mut report)?;
            if summary.failed > 0 && summary.units == 0 {
                return Err(format!("nothing translated: {} source(s) failed", summary.failed));
            }
            let mut bundle = sites::collection(sink.resources);
            if bundle.type_ == "collection" {
                // Each source's warnings or failure, beside what it became.
                bundle.entry.extend(sink.outcomes.into_iter().map(|o| kakehashi_fhir::BundleEntry {
                    resource: Some(Box::new(kakehashi_fhir::Resource::OperationOutcome(o))),
                    ..Default::default()
                }));
            }
            let json =
                serde_json::to_string_pretty(&bundle).map_err(|e| format!("cannot serialise the bundle: {e}"))?;
            emit(&json)?;
            summary
        }
    };
    if summary.failed > 0 && !(a.allow_partial && summary.units > 0) {
        return Err(format!(
            "{} source(s) could not be translated (see above); the output holds the rest: {} unit(s) translated (SS-MIX2 patients, messages or documents), {} resources",
            summary.failed, summary.units, summary.resources
        ));
    }
    Ok(())
}

/// A FHIR document Bundle to MML, CDA, or checked FHIR.
fn from_fhir(path: &std::path::Path, to: TargetKind) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let resource: kakehashi_fhir::Resource =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a FHIR resource: {e}", path.display()))?;
    let kakehashi_fhir::Resource::Bundle(bundle) = resource else {
        return Err(format!("{}: expected a document Bundle", path.display()));
    };
    let view =
        kakehashi_mappings::document::DocumentView::new(&bundle).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = match to {
        TargetKind::Mml => {
            if let Some(what) = kakehashi_mappings::export::mml::missing(&view) {
                return Err(format!("{}: MML requires {what}, which the document lacks", path.display()));
            }
            kakehashi_mappings::export::mml::to_mml(&view)
        }
        TargetKind::Cda => kakehashi_mappings::export::cda::to_cda(&view),
        TargetKind::Fhir => serde_json::to_string_pretty(&kakehashi_fhir::Resource::Bundle(bundle.clone()))
            .map_err(|e| e.to_string())?,
    };
    emit(&out)
}

/// Print a document on stdout; a reader that stops early (`| head`) is not an error.
fn emit(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("stdout: {e}")),
        _ => Ok(()),
    }
}

async fn serve(cfg: Config, unaudited: bool) -> Result<(), String> {
    let gw = Gateway::bind(cfg).await.map_err(|e| e.to_string())?;
    #[cfg(feature = "bench")]
    let gw = if unaudited { gw.danger_unaudited_for_benchmark() } else { gw };
    #[cfg(not(feature = "bench"))]
    let _ = unaudited;
    gw.run(shutdown_signal()).await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested; draining in-flight requests");
}

fn certs(c: CertsCommand) -> Result<(), kakehashi_certs::CertsError> {
    match c {
        CertsCommand::Init { dir, federation, server_names } => {
            let pki = Pki::init(&dir, &InitOptions { federation_name: federation, server_names })?;
            println!(
                "federation CA: {}\nserver certificate: {}\nCRL: {}",
                pki.ca_cert_path().display(),
                pki.server_cert_path().display(),
                pki.crl_path().display()
            );
        }
        CertsCommand::Issue { dir, institution, institution_name, role, terminal, out, days } => {
            let pki = Pki::open(&dir)?;
            let name = institution_name.unwrap_or_else(|| format!("Institution {institution}"));
            let mut req = ClientCertRequest::new(&institution, &name, role, &terminal);
            req.not_after = Some(time::OffsetDateTime::now_utc() + time::Duration::days(days.max(1)));
            let issued = pki.issue(&req, &out)?;
            println!(
                "certificate: {}\nkey: {} (mode 0600)\nserial: {}",
                issued.cert_path.display(),
                issued.key_path.display(),
                issued.serial_hex
            );
        }
        CertsCommand::Revoke { dir, name } => {
            let pki = Pki::open(&dir)?;
            pki.revoke(&name)?;
            println!("revoked {name}; CRL rewritten: {}", pki.crl_path().display());
        }
        CertsCommand::RefreshCrl { dir } => {
            let pki = Pki::open(&dir)?;
            pki.refresh_crl()?;
            println!("CRL re-signed: {}", pki.crl_path().display());
        }
    }
    Ok(())
}
