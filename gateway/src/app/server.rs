//! The gateway process: binds the FHIR (mutual TLS) and admin listeners, runs the
//! accept loop, serves HTTP/1.1 and HTTP/2 with bounded headers and timeouts, and
//! drains in-flight requests on shutdown.

use crate::admin::Metrics;
use crate::app::connections::{self, Admission, Limits};
use crate::app::{build, AppState};
use crate::config::Config;
use crate::identity::{principal_from_cert, ConnInfo, Members};
use crate::store::Store;
use crate::tls::{handshake, HandshakeError, ReloadingConfig, TlsError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The audit signing key is unusable.
    #[error(transparent)]
    AuditKey(#[from] crate::audit::checkpoint::KeyError),
    /// The audit witness file cannot be opened.
    #[error(transparent)]
    Witness(#[from] crate::audit::witness::WitnessError),
    /// The configuration disagrees with what the database was created with.
    #[error("{0}")]
    Mismatch(String),
    /// `[audit.forward]` is unusable.
    #[error(transparent)]
    AuditForward(#[from] crate::audit::forward::ForwardError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A bound, not yet running gateway.
pub struct Gateway {
    config: Arc<Config>,
    listener: TcpListener,
    admin: TcpListener,
    tls: Arc<ReloadingConfig>,
    members: Arc<Members>,
    metrics: Arc<Metrics>,
    store: Store,
    index: crate::records::index::IndexDb,
    checkpoints: crate::audit::Checkpoints,
    forward: Option<crate::audit::forward::Forwarder>,
    /// Benchmark builds only: serve without auditing, to measure what auditing costs.
    #[cfg(feature = "bench")]
    danger_unaudited: bool,
}

impl Gateway {
    /// Load TLS material and bind both listeners.
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        let tls = ReloadingConfig::new((&config.tls).into())?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
        };
        let listener = bind(config.server.listen).await?;
        let admin = bind(config.server.admin_listen).await?;
        let members = Members::from_config(&config);
        let store = Store::open(&config.database.url).await?;
        let index = crate::records::index::IndexDb::open(&config.records.index_url_for(&config.database.url)).await?;
        let forward = config.audit.forward.as_ref().map(crate::audit::forward::Forwarder::start).transpose()?;
        let checkpoints = checkpoints(&config, &store, forward.clone()).await?;
        Ok(Gateway {
            config: Arc::new(config),
            listener,
            admin,
            tls,
            members,
            metrics: Arc::default(),
            store,
            index,
            checkpoints,
            forward,
            #[cfg(feature = "bench")]
            danger_unaudited: false,
        })
    }

    /// DANGER, benchmark builds only: this gateway records no audit events, so the load
    /// harness can measure audited reads against the same reads unaudited. Not compiled
    /// into the gateway users run.
    #[cfg(feature = "bench")]
    pub fn danger_unaudited_for_benchmark(mut self) -> Gateway {
        self.danger_unaudited = true;
        self
    }

    /// The FHIR listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.server.listen)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.server.admin_listen)
    }

    /// Serve until `shutdown` resolves, then stop accepting and give in-flight
    /// requests `server.shutdown_grace_secs` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        #[cfg(feature = "bench")]
        let unaudited = self.danger_unaudited;
        let Gateway { config, listener, admin, tls, members, metrics, store, index, checkpoints, forward, .. } = self;
        let limits = &config.server;
        let records = crate::records::Records::open(&config, index);
        let _ = metrics.records.set(records.status.clone());
        let _ = metrics.cache.set(records.cache_stats());
        let indexer = crate::records::indexer::spawn(
            records.clone(),
            crate::records::indexer::Settings { cpu_percent: config.records.index_cpu_percent, batch: 200 },
        );
        // A small federation is indexed in moments: wait for it, so that the first
        // requests see every record; a large storage goes on indexing while serving.
        let wait = Duration::from_millis(config.records.startup_wait_ms);
        let waited = tokio::time::Instant::now();
        while !records.status.complete.load(Relaxed) && waited.elapsed() < wait {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !records.status.complete.load(Relaxed) {
            tracing::info!(
                patients = records.status.patients.load(Relaxed),
                "serving while the records index is built; records not yet indexed are found as it proceeds"
            );
        }
        if let Some(f) = &forward {
            let _ = metrics.audit_forward.set(f.stats.clone());
        }
        let forwarder = forward.clone();
        let audit = crate::audit::AuditLog::start_with(
            store.clone(),
            format!("kakehashi {}", config.federation.name),
            checkpoints,
            forward,
            config.audit.journaling(),
        );
        #[cfg(feature = "bench")]
        let audit = if unaudited { crate::audit::AuditLog::danger_disabled_for_benchmark() } else { audit };
        let _ = metrics.audit_writer.set(audit.stats());
        let audit_log = audit.clone();
        let listening = listener.local_addr().unwrap_or(config.server.listen);
        let state = AppState::new(
            config.clone(),
            metrics.clone(),
            store.clone(),
            records.clone(),
            audit,
            listening,
            Some(tls.clone()),
        );
        if let Err(e) = state.policy.grants.reload(&store).await {
            tracing::error!(error = %e, "grants could not be loaded; cross-site reads are refused until they are");
        }
        if let Err(e) = state.linkage.reload(&store).await {
            tracing::error!(error = %e, "manual patient links could not be loaded; automatic links only until they are");
        }
        if let Err(e) = crate::fhir_api::push::load_pushed(&store, &config, &state.records).await {
            tracing::error!(error = %e, "pushed documents could not be loaded; they are served once the database answers");
        }
        let delivery = tokio::spawn(crate::outbox::run(store.clone(), config.clone(), metrics.clone(), forwarder));
        // Other instances sharing the database change grants and links and receive pushes.
        let grants_task = {
            let (policy, linkage, store) = (state.policy.clone(), state.linkage.clone(), store.clone());
            let (records, config) = (state.records.clone(), config.clone());
            tokio::spawn(async move {
                // Loaded just above: the first reload is due in 2 s, not now.
                let every = Duration::from_secs(2);
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    if let Err(e) = policy.grants.reload(&store).await {
                        tracing::warn!(error = %e, "grants reload failed; keeping the last ones");
                    }
                    if let Err(e) = linkage.reload(&store).await {
                        tracing::warn!(error = %e, "patient links reload failed; keeping the last ones");
                    }
                    if let Err(e) = crate::fhir_api::push::load_pushed(&store, &config, &records).await {
                        tracing::warn!(error = %e, "pushed documents of other instances not loaded; retrying");
                    }
                }
            })
        };
        let app = build(state);
        let http = Arc::new(http_builder(limits.header_read_timeout_secs, limits.max_header_bytes));
        let graceful = GracefulShutdown::new();
        let handshake_timeout = Duration::from_secs(limits.handshake_timeout_secs);

        let watcher =
            tokio::spawn(watch_tls(tls.clone(), metrics.clone(), Duration::from_secs(limits.crl_check_secs.max(1))));
        let admin_task = tokio::spawn(serve_admin(admin, metrics.clone(), store));
        let refusals = Arc::new(crate::audit::refusals::Refusals::default());
        let refusals_task = tokio::spawn(
            refusals.clone().run(audit_log.clone(), Duration::from_secs(limits.refused_handshake_audit_secs.max(1))),
        );
        let admission = Limits::new(
            limits.max_connections,
            limits.max_connections_per_certificate,
            limits.max_handshakes_per_address,
        );
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "gateway listening");

        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(handshaking) = admission.admit_handshake(peer.ip()) else {
                metrics.refused_address_limit.fetch_add(1, Relaxed);
                continue;
            };
            let slot = match admission.admit() {
                Admission::Drop => {
                    metrics.refused_global_limit.fetch_add(1, Relaxed);
                    continue;
                }
                a => a,
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                tls: tls.clone(),
                members: members.clone(),
                metrics: metrics.clone(),
                app: app.clone(),
                http: http.clone(),
                refusals: refusals.clone(),
                admission: admission.clone(),
            };
            let watch = graceful.watcher();
            tokio::spawn(conn.serve(tcp, peer, (slot, handshaking), handshake_timeout, watch));
        }
        drop(listener);
        watcher.abort();
        refusals_task.abort();
        grants_task.abort();
        delivery.abort();
        admin_task.abort();
        let grace = Duration::from_secs(config.server.shutdown_grace_secs);
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!(
                seconds = grace.as_secs(),
                "in-flight requests did not finish within the shutdown grace period"
            );
        }
        // The indexer finishes the directory it is on and lets go of its lock.
        records.shutdown();
        let _ = tokio::task::spawn_blocking(move || indexer.join()).await;
        // Every request has ended: sign the chain head and witness the clean stop.
        audit_log.close(Duration::from_secs(10)).await;
        tracing::info!("gateway stopped");
    }
}

/// What serving one connection needs.
struct Connection {
    tls: Arc<ReloadingConfig>,
    members: Arc<Members>,
    metrics: Arc<Metrics>,
    app: axum::Router,
    http: Arc<auto::Builder<TokioExecutor>>,
    refusals: Arc<crate::audit::refusals::Refusals>,
    admission: Arc<Limits>,
}

impl Connection {
    /// Handshake, admit, then serve until the client goes, the gateway drains, or the
    /// certificate is revoked (the connection is then closed at once).
    async fn serve(
        self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        (admission, handshaking): (Admission, connections::Slot),
        handshake_timeout: Duration,
        watch: hyper_util::server::graceful::Watcher,
    ) {
        let Connection { tls, members, metrics, app, http, refusals, admission: limits } = self;
        let shaken = handshake(tls.current(), tcp, handshake_timeout).await;
        drop(handshaking);
        let (stream, leaf) = match shaken {
            Ok(s) => s,
            Err(e) => {
                let reason = e.reason();
                metrics.handshake_refused(reason);
                if let HandshakeError::Timeout = e {
                    metrics.handshakes_timed_out.fetch_add(1, Relaxed);
                }
                tracing::debug!(%peer, error = %e, "TLS handshake refused");
                // A certificate refused, or none presented: the audit log shows who knocked.
                if let HandshakeError::Failed { presented, .. } = e {
                    if presented.is_some() || reason == "no-certificate" {
                        refusals.note(peer, presented, reason);
                    }
                }
                return;
            }
        };
        let _global = match admission {
            Admission::Serve(slot) => slot,
            Admission::Refuse(_slot) => {
                metrics.refused_global_limit.fetch_add(1, Relaxed);
                return connections::refuse(stream, "the gateway is at its connection limit; retry shortly").await;
            }
            Admission::Drop => return,
        };
        let fingerprint = leaf.as_deref().map(crate::identity::fingerprint);
        let _per_certificate = match fingerprint.as_deref().map(|fp| limits.admit_certificate(fp)) {
            Some(None) => {
                metrics.refused_certificate_limit.fetch_add(1, Relaxed);
                return connections::refuse(stream, "too many connections are open with this client certificate").await;
            }
            Some(Some(slot)) => Some(slot),
            None => None,
        };
        metrics.connections_accepted.fetch_add(1, Relaxed);
        metrics.connections_open.fetch_add(1, Relaxed);
        let cert = leaf.as_deref().and_then(crate::tls::cert_id).map(Arc::new);
        let conn = ConnInfo {
            peer,
            fingerprint,
            claimed_institution: leaf.as_deref().and_then(crate::identity::claimed_institution),
            identity: principal_from_cert(leaf.as_deref(), &members).map(Arc::new),
            cert: cert.clone(),
        };
        let svc = app.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(conn.clone());
            req.map(axum::body::Body::new)
        });
        let mut revocations = tls.subscribe();
        let served =
            watch.watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc)).into_owned());
        tokio::pin!(served);
        loop {
            tokio::select! {
                ended = &mut served => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                changed = revocations.changed() => {
                    if changed.is_err() {
                        // The TLS material is gone with the gateway: just serve to the end.
                        let _ = (&mut served).await;
                        break;
                    }
                    let now = crate::audit::now_micros() / 1_000_000;
                    if let Some(why) = cert.as_deref().and_then(|c| tls.revocation().refuses(c, now)) {
                        // Dropping the connection closes it, whatever it was doing.
                        metrics.closed_revoked.fetch_add(1, Relaxed);
                        tracing::info!(%peer, reason = why, "closed an open connection: its certificate may no longer be served");
                        break;
                    }
                }
            }
        }
        metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// The audit checkpoint settings in force: the key and interval from the
/// configuration, which must be the interval the database was created with (`audit
/// verify` takes it from the configuration, never from the database it checks), and
/// the witness file.
pub async fn checkpoints(
    config: &Config,
    store: &Store,
    forward: Option<crate::audit::forward::Forwarder>,
) -> Result<crate::audit::Checkpoints, StartError> {
    let signer = Arc::new(crate::audit::checkpoint::Signer::load(&config.audit.signing_key)?);
    let configured = config.audit.checkpoint_every.to_string();
    let every = store.meta_init("audit.checkpoint_every", &configured).await?;
    if every != configured {
        return Err(StartError::Mismatch(format!(
            "audit.checkpoint_every is {configured} in {} but this database's log was written with {every}: \
             set it back to {every} (it cannot change for a log; `audit verify` checks against the configured value)",
            config.source.display()
        )));
    }
    let witness = match &config.audit.witness {
        Some(path) => Some(Arc::new(crate::audit::witness::Witness::open(path, forward)?)),
        None => None,
    };
    Ok(crate::audit::Checkpoints {
        signer,
        every: config.audit.checkpoint_every.max(1) as i64,
        interval: Duration::from_secs(config.audit.checkpoint_secs),
        witness,
    })
}

fn http_builder(header_read_timeout: u64, max_header_bytes: usize) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(header_read_timeout))
        .max_buf_size(max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

async fn watch_tls(tls: Arc<ReloadingConfig>, metrics: Arc<Metrics>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tls.check_lapse(crate::audit::now_micros() / 1_000_000) {
            tracing::error!("the certificate revocation lists have expired: every client is refused until they are refreshed (kakehashi certs refresh-crl)");
        }
        match tls.reload_if_changed() {
            Ok(true) => {
                metrics.tls_reloads.fetch_add(1, Relaxed);
                tracing::info!("TLS material changed; new connections use the reloaded CA, CRLs and certificate");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "TLS material changed but is unusable; keeping the previous configuration")
            }
        }
    }
}

async fn serve_admin(listener: TcpListener, metrics: Arc<Metrics>, store: Store) {
    let app = crate::admin::router(metrics, store);
    let http = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let svc = app.clone().map_request(|req: http::Request<hyper::body::Incoming>| req.map(axum::body::Body::new));
        let http = http.clone();
        tokio::spawn(async move {
            let _ = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc)).await;
        });
    }
}
