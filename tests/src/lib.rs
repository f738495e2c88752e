//! Shared helpers for Kakehashi's end-to-end tests: a throw-away federation (PKI and
//! configuration in a temporary directory), an in-process gateway on ephemeral ports,
//! and a real rustls + hyper client that presents a certificate.

pub mod storage;
pub mod tamper;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kakehashi::{Config, Gateway};
use kakehashi_certs::{ClientCertRequest, InitOptions, Pki, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Institutions of the test federation (the demo's codes, so the demo's sample sites fit).
pub const HUB: &str = "4610100011";
/// A clinic (owner of the demo's clinic-a MML site).
pub const CLINIC: &str = "4610200021";
/// A second clinic.
pub const CLINIC_B: &str = "4610200032";
/// A pharmacy.
pub const PHARMACY: &str = "4640300043";
/// The federation audit body.
pub const AUDIT_BODY: &str = "4690000054";
/// An institution with valid certificates that is not in the configuration.
pub const OUTSIDER: &str = "0990000009";

/// A federation in a temp dir with a running gateway.
pub struct TestGateway {
    /// Temp dir holding PKI and config (removed on drop).
    pub dir: tempfile::TempDir,
    /// The PKI.
    pub pki: Pki,
    /// FHIR listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The gateway's database URL.
    pub db_url: String,
}

/// Today's date in Japan: the gateway reads a date without a zone (`date=2026-12-02`,
/// `--before 2026-12-03`) as Japan Standard Time, so a test that names "today" by the
/// UTC calendar asks for the wrong day from 15:00 to 24:00 UTC.
pub fn jst_today() -> time::Date {
    let jst = time::UtcOffset::from_hms(9, 0, 0).expect("a valid offset");
    time::OffsetDateTime::now_utc().to_offset(jst).date()
}

/// True when the tests run against PostgreSQL (`KAKEHASHI_TEST_BACKEND=postgres`).
pub fn backend_is_postgres() -> bool {
    std::env::var("KAKEHASHI_TEST_BACKEND").is_ok_and(|v| v == "postgres")
}

/// The PostgreSQL server tests use (`KAKEHASHI_TEST_PG`, default the local one).
pub fn postgres_base() -> String {
    std::env::var("KAKEHASHI_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Create a new, empty PostgreSQL database and return its URL.
pub async fn fresh_postgres_database() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    sqlx::any::install_default_drivers();
    let base = postgres_base();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let name = format!("kk_test_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos);
    let pool = sqlx::AnyPool::connect(&base).await.expect("PostgreSQL for tests (start it with scripts/test)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create test database");
    pool.close().await;
    match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => format!("{base}/{name}"),
    }
}

/// How to start a test gateway.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lines appended to `[server]`.
    pub server_extra: String,
    /// Database URL (default: SQLite in the temp dir).
    pub db_url: Option<String>,
    /// `audit.checkpoint_every`.
    pub checkpoint_every: u64,
    /// `audit.checkpoint_secs`.
    pub checkpoint_secs: u64,
    /// `audit.index_delay_ms`: 0 by default, so that a test reading `audit_event`
    /// right after its requests finds their events (a gateway's default is 100 ms;
    /// the durability tests run with it).
    pub index_delay_ms: u64,
    /// Lines appended to `[audit]` (sub-tables such as `[audit.forward]` included).
    pub audit_extra: String,
    /// Lines of a `[policy]` table.
    pub policy_extra: String,
    /// Lines of a `[records]` table.
    pub records_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server_extra: String::new(),
            db_url: None,
            checkpoint_every: 1000,
            checkpoint_secs: 2,
            index_delay_ms: 0,
            audit_extra: String::new(),
            policy_extra: String::new(),
            records_extra: String::new(),
        }
    }
}

/// Write the test federation's configuration.
pub fn write_config(dir: &Path, opts: &Options) -> PathBuf {
    let server_extra = &opts.server_extra;
    let audit_extra = &opts.audit_extra;
    let policy_extra = &opts.policy_extra;
    let records_extra = &opts.records_extra;
    let every = opts.checkpoint_every;
    let secs = opts.checkpoint_secs;
    let delay = opts.index_delay_ms;
    let db = opts.db_url.clone().unwrap_or_else(|| "sqlite://kakehashi.db".into());
    let text = format!(
        r#"[federation]
name = "test"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
crl_check_secs = 1
outbox_poll_ms = 100
{server_extra}
[tls]
client_ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server.key"
crls = ["pki/ca.crl"]
[database]
url = "{db}"
[audit]
signing_key = "pki/audit-signing.pk8"
checkpoint_every = {every}
checkpoint_secs = {secs}
index_delay_ms = {delay}
witness = "witness/audit.log"
{audit_extra}
[policy]
{policy_extra}
[records]
{records_extra}
[[institution]]
code = "{HUB}"
name = "Hub"
kind = "hub-hospital"
[[institution]]
code = "{CLINIC}"
name = "Clinic"
kind = "clinic"
[[institution]]
code = "{CLINIC_B}"
name = "Clinic B"
kind = "clinic"
[[institution]]
code = "{PHARMACY}"
name = "Pharmacy"
kind = "pharmacy"
[[institution]]
code = "{AUDIT_BODY}"
name = "Audit body"
kind = "audit-body"
[[site]]
id = "hub"
owner = "{HUB}"
connector = {{ kind = "ss-mix2", root = "sites/hub/ss-mix2" }}
[[site]]
id = "clinic-a"
owner = "{CLINIC}"
connector = {{ kind = "mml", dir = "sites/clinic-a/mml" }}
inbox = {{ dir = "sites/clinic-a/inbox", format = "mml" }}
[[site]]
id = "clinic-b"
owner = "{CLINIC_B}"
connector = {{ kind = "mml", dir = "sites/clinic-b/mml" }}
inbox = {{ dir = "sites/clinic-b/inbox", format = "cda" }}
[[site]]
id = "clinic-b-rx"
owner = "{CLINIC_B}"
connector = {{ kind = "jahis-rx", dir = "sites/clinic-b/rx" }}
"#
    );
    let p = dir.join("kakehashi.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

impl TestGateway {
    /// Start a gateway with default limits.
    pub async fn start() -> TestGateway {
        Self::start_with("").await
    }

    /// Start a gateway with extra `[server]` settings.
    pub async fn start_with(server_extra: &str) -> TestGateway {
        Self::start_opts(Options { server_extra: server_extra.into(), ..Default::default() }).await
    }

    /// Start a gateway with options. With `KAKEHASHI_TEST_BACKEND=postgres` every
    /// gateway gets a fresh PostgreSQL database of its own.
    pub async fn start_opts(mut opts: Options) -> TestGateway {
        if opts.db_url.is_none() && backend_is_postgres() {
            opts.db_url = Some(fresh_postgres_database().await);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(&dir.path().join("pki"), &InitOptions::default()).expect("pki");
        kakehashi::demo::write_sites(dir.path()).expect("sample sites");
        write_config(dir.path(), &opts);
        let db_url =
            opts.db_url.clone().unwrap_or_else(|| format!("sqlite://{}", dir.path().join("kakehashi.db").display()));
        Self::launch(dir, pki, db_url).await
    }

    /// Run a gateway on the federation in `dir` (its `kakehashi.toml`).
    async fn launch(dir: tempfile::TempDir, pki: Pki, db_url: String) -> TestGateway {
        let cfg = Config::load(&dir.path().join("kakehashi.toml")).expect("config");
        let gw = Gateway::bind(cfg).await.expect("bind");
        let (addr, admin) = (gw.local_addr(), gw.admin_addr());
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(gw.run(async {
            let _ = rx.await;
        }));
        TestGateway { dir, pki, addr, admin, stop: Some(stop), task: Some(task), db_url }
    }

    /// Stop the gateway and start it again on the same federation, database and sites
    /// (new ports).
    pub async fn restart(self) -> TestGateway {
        self.restart_after(|| ()).await
    }

    /// Stop the gateway, run `between` (on a stopped gateway's files), and start it again.
    pub async fn restart_after(mut self, between: impl FnOnce()) -> TestGateway {
        let (pki, db_url) = (Pki::open(&self.dir.path().join("pki")).expect("pki"), self.db_url.clone());
        self.halt().await;
        between();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        Self::launch(dir, pki, db_url).await
    }

    /// The records index's progress (`/status` of the admin listener).
    pub async fn records_status(&self) -> serde_json::Value {
        let body = admin_get(self.admin, "/status").await;
        serde_json::from_str::<serde_json::Value>(&body).expect("status JSON")["records_index"].clone()
    }

    /// Issue a client certificate from the federation CA.
    pub fn issue(&self, name: &str, institution: &str, role: Role) -> Identity {
        let issued = self
            .pki
            .issue(&ClientCertRequest::new(institution, "テスト医療機関", role, &format!("{name}-term")), name)
            .expect("issue");
        Identity::from_pem(&issued.cert_pem, &issued.key_pem)
    }

    /// A client trusting the federation CA and presenting `id`.
    pub fn client(&self, id: Option<&Identity>) -> Client {
        Client::new(&self.pki.ca_cert_path(), id, &[b"http/1.1"], None)
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("kakehashi.toml")
    }

    /// The gateway's audit witness file.
    pub fn witness_path(&self) -> PathBuf {
        self.dir.path().join("witness/audit.log")
    }

    /// The gateway's SQLite database file (SQLite backend only).
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("kakehashi.db")
    }

    /// A connection pool to the gateway's database, whichever the backend.
    pub async fn db(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.db_url).await.expect("test database")
    }

    /// Stop the gateway and keep its directory (PKI, configuration, sites, database).
    pub async fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        self.halt().await;
        self.dir
    }

    /// Stop the gateway and wait for it to drain.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    async fn halt(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// A client certificate and key.
#[derive(Clone)]
pub struct Identity {
    /// Certificate chain.
    pub certs: Vec<CertificateDer<'static>>,
    /// PKCS#8 key.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    /// From PEM text.
    pub fn from_pem(cert: &str, key: &str) -> Identity {
        let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().expect("cert pem");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key pem");
        Identity { certs, key: Arc::new(key) }
    }

    /// From `NAME.pem` / `NAME.key` files.
    pub fn from_files(cert: &Path, key: &Path) -> Identity {
        Identity::from_pem(&std::fs::read_to_string(cert).expect("cert"), &std::fs::read_to_string(key).expect("key"))
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body bytes.
    pub body: Bytes,
    /// Whether the TLS session was resumed.
    pub resumed: bool,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text (lossy), for messages and for looking for what must not be there.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A mutual-TLS HTTP client making one connection per request (so each request
/// exercises the handshake and the identity step afresh).
#[derive(Clone)]
pub struct Client {
    config: Arc<rustls::ClientConfig>,
}

impl Client {
    /// Build a client; `versions` restricts TLS versions when given.
    pub fn new(
        ca: &Path,
        id: Option<&Identity>,
        alpn: &[&[u8]],
        versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
    ) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("ca").map(|c| c.expect("ca pem")) {
            roots.add(c).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions.unwrap_or(rustls::DEFAULT_VERSIONS))
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match id {
            Some(id) => builder.with_client_auth_cert(id.certs.clone(), id.key.clone_key()).expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Client { config: Arc::new(config) }
    }

    /// Open a TLS connection (handshake only).
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await
    }

    /// Open one connection (HTTP/2 when the client offers `h2` and the server takes it,
    /// else HTTP/1.1 keep-alive) for several requests.
    pub async fn keep_alive(&self, addr: SocketAddr) -> Result<KeepAlive, String> {
        let tls = self.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = hyper_util::rt::TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(KeepAlive::H2(send))
        } else {
            let (send, conn) =
                hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(KeepAlive::H1(send))
        }
    }

    /// GET a path.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Reply, String> {
        self.send(addr, http::Request::get(path).body(Full::new(Bytes::new())).expect("request")).await
    }

    /// POST a FHIR JSON body to a path.
    pub async fn post_json(&self, addr: SocketAddr, path: &str, body: &serde_json::Value) -> Result<Reply, String> {
        let req = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/fhir+json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        self.send(addr, req).await
    }

    /// The id of the first resource a search returns (panics when there is none).
    pub async fn first_id(&self, addr: SocketAddr, search: &str) -> String {
        let v = self.get(addr, search).await.expect("search").json();
        v["entry"][0]["resource"]["id"].as_str().unwrap_or_else(|| panic!("{search} found nothing: {v}")).to_string()
    }

    /// Send a request over a new connection. TLS 1.3 refusals of a client certificate
    /// arrive after `connect()` returns, so failures show here, on the first request.
    pub async fn send(&self, addr: SocketAddr, mut req: http::Request<Full<Bytes>>) -> Result<Reply, String> {
        let tls = self.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let io = hyper_util::rt::TokioIo::new(tls);
        let h2 = alpn.as_deref() == Some(b"h2");
        if !req.headers().contains_key(http::header::HOST) && !h2 {
            req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("localhost"));
        }
        if h2 {
            *req.uri_mut() = format!("https://localhost{}", req.uri()).parse().map_err(|e| format!("uri: {e}"))?;
            let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            return read(resp, resumed, alpn).await;
        }
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        read(resp, resumed, alpn).await
    }
}

/// One open connection carrying several requests in turn.
pub enum KeepAlive {
    /// HTTP/1.1 keep-alive.
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl KeepAlive {
    /// GET a path on this connection; an error when the connection was closed.
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send(http::Request::get(path).body(Full::new(Bytes::new())).expect("request")).await
    }

    /// Send a request on this connection.
    pub async fn send(&mut self, mut req: http::Request<Full<Bytes>>) -> Result<Reply, String> {
        let resp = match self {
            KeepAlive::H1(s) => {
                req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("localhost"));
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(req).await
            }
            KeepAlive::H2(s) => {
                *req.uri_mut() = format!("https://localhost{}", req.uri()).parse().map_err(|e| format!("uri: {e}"))?;
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(req).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        read(resp, false, None).await
    }
}

async fn read(
    resp: http::Response<hyper::body::Incoming>,
    resumed: bool,
    alpn: Option<Vec<u8>>,
) -> Result<Reply, String> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok(Reply { status, headers, body, resumed, alpn })
}

/// A patient-consent grant (as the owner posts it to `/fhir/Consent`) letting
/// `institution` read `patient` until 2099.
pub fn patient_consent(patient: &str, institution: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "urn:kakehashi:grant-kind", "code": "consent"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "provision": {"period": {"end": "2099-12-31"}, "actor": [{"role": {"text": "recipient"}, "reference": {"identifier": {
            "system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": institution}}}]}
    })
}

/// A GET on an admin listener (plain HTTP on loopback): the response body.
pub async fn admin_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("admin listener");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("admin request");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("admin response");
    buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

/// `n` loopback ports free at the time of the call.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    held.iter().map(|l| l.local_addr().expect("port").port()).collect()
}

/// A `kakehashi serve` process, killed (SIGKILL) when dropped so that a failing test
/// leaves no gateway running behind it.
pub struct ServeProcess(std::process::Child);

impl ServeProcess {
    /// Start `kakehashi serve --config CONFIG` with logging at `error`.
    pub fn spawn(config: &Path) -> ServeProcess {
        let child = std::process::Command::new(kakehashi_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("KAKEHASHI_LOG", "error")
            .spawn()
            .expect("start kakehashi serve");
        ServeProcess(child)
    }

    /// SIGKILL the process now and reap it: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `kakehashi` binary of this workspace, built (or confirmed up to date) once per
/// test process so tests never run a stale binary.
pub fn kakehashi_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test exe");
            // target/<profile>/deps/<test> → target/<profile>/kakehashi
            let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "kakehashi", "--bin", "kakehashi"])
                .status()
                .expect("cargo build");
            assert!(status.success(), "building the kakehashi binary failed");
            dir.join("kakehashi")
        })
        .clone()
}
