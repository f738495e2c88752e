//! The gateway process: binds the FHIR (mutual TLS) and admin listeners, runs the
//! accept loop, serves HTTP/1.1 and HTTP/2 with bounded headers and timeouts, and
//! drains in-flight requests on shutdown.

use crate::admin::Metrics;
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
        let checkpoints = checkpoints(&config, &store).await?;
        let forward = config.audit.forward.as_ref().map(crate::audit::forward::Forwarder::start).transpose()?;
        Ok(Gateway {
            config: Arc::new(config),
            listener,
            admin,
            tls,
            members,
            metrics: Arc::default(),
            store,
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
        let Gateway { config, listener, admin, tls, members, metrics, store, checkpoints, forward, .. } = self;
        let limits = &config.server;
        let records = crate::records::Records::load(&config);
        let refresh = tokio::spawn(records.clone().watch(Duration::from_millis(limits.records_refresh_ms.max(100))));
        if let Some(f) = &forward {
            let _ = metrics.audit_forward.set(f.stats.clone());
        }
        let audit = crate::audit::AuditLog::start_forwarding(
            store.clone(),
            format!("kakehashi {}", config.federation.name),
            checkpoints,
            forward,
        );
        #[cfg(feature = "bench")]
        let audit = if unaudited { crate::audit::AuditLog::danger_disabled_for_benchmark() } else { audit };
        let _ = metrics.audit_writer.set(audit.stats());
        let state = AppState::new(config.clone(), metrics.clone(), store.clone(), records, audit);
        if let Err(e) = state.policy.grants.reload(&store).await {
            tracing::error!(error = %e, "grants could not be loaded; cross-site reads are refused until they are");
        }
        if let Err(e) = state.linkage.reload(&store).await {
            tracing::error!(error = %e, "manual patient links could not be loaded; automatic links only until they are");
        }
        if let Err(e) = crate::fhir_api::push::load_pushed(&store, &config, &state.records).await {
            tracing::error!(error = %e, "pushed documents could not be loaded; they are served once the database answers");
        }
        let delivery = tokio::spawn(crate::outbox::run(store.clone(), config.clone()));
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
            let _ = tcp.set_nodelay(true);
            let (tls_cfg, members, metrics, app, http) =
                (tls.current(), members.clone(), metrics.clone(), app.clone(), http.clone());
            let watch = graceful.watcher();
            tokio::spawn(async move {
                let (stream, leaf) = match handshake(tls_cfg, tcp, handshake_timeout).await {
                    Ok(s) => s,
                    Err(HandshakeError::Timeout) => {
                        metrics.handshakes_timed_out.fetch_add(1, Relaxed);
                        return;
                    }
                    Err(e) => {
                        metrics.handshakes_failed.fetch_add(1, Relaxed);
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                };
                metrics.connections_accepted.fetch_add(1, Relaxed);
                metrics.connections_open.fetch_add(1, Relaxed);
                let identity = principal_from_cert(leaf.as_deref(), &members).map(Arc::new);
                let conn = ConnInfo {
                    peer,
                    fingerprint: leaf.as_deref().map(crate::identity::fingerprint),
                    claimed_institution: leaf.as_deref().and_then(crate::identity::claimed_institution),
                    identity,
                };
                let svc = app.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(conn.clone());
                    req.map(axum::body::Body::new)
                });
                let served = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
                if let Err(e) = watch.watch(served.into_owned()).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                metrics.connections_open.fetch_sub(1, Relaxed);
            });
        }
        drop(listener);
        watcher.abort();
        refresh.abort();
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
        tracing::info!("gateway stopped");
    }
}

/// The audit checkpoint settings in force: the key from the configuration, and the
/// interval fixed for this database at its first start.
pub async fn checkpoints(config: &Config, store: &Store) -> Result<crate::audit::Checkpoints, StartError> {
    let signer = Arc::new(crate::audit::checkpoint::Signer::load(&config.audit.signing_key)?);
    let every = store.meta_init("audit.checkpoint_every", &config.audit.checkpoint_every.to_string()).await?;
    let every: i64 = every.parse().unwrap_or(1000).max(1);
    if every as u64 != config.audit.checkpoint_every {
        tracing::warn!(
            in_force = every,
            configured = config.audit.checkpoint_every,
            "audit.checkpoint_every is fixed per database; the configured value is ignored"
        );
    }
    Ok(crate::audit::Checkpoints { signer, every, interval: Duration::from_secs(config.audit.checkpoint_secs) })
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
