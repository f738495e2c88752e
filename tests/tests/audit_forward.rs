//! Issue 6.6: every committed audit event also goes to an ATNA audit record repository
//! as RFC 5424 syslog over TLS (RFC 5425 framing). The repository here is a real TLS
//! listener with its own CA; it is stopped while reads go on (they must not wait) and
//! started again, and every event still arrives, in order.

use kakehashi_certs::Role;
use kakehashi_e2e::{admin_get, Options, TestGateway, HUB};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A repository's TLS identity: its CA (PEM) and a server configuration for `localhost`.
fn repository_tls() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(leaf.pem().as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    (ca.pem(), Arc::new(cfg))
}

/// Accept connections on `listener` and send every octet-counted message received.
fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    out: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        // Dropped with this task when it is aborted: every connection closes with it.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, out) = (acceptor.clone(), out.clone());
            conns.spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // MSG-LEN SP SYSLOG-MSG, repeated.
                    while let Some(sp) = buf.iter().position(|&b| b == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        buf.drain(..sp + 1 + len);
                        let _ = out.send(msg);
                    }
                }
            });
        }
    })
}

/// The AuditEvent ids (sequence numbers) of messages received within `wait`, until
/// `want` arrived; witness lines (MSGID AuditWitness) are counted in `witnessed`.
async fn receive(
    rx: &mut mpsc::UnboundedReceiver<String>,
    want: usize,
    wait: Duration,
    witnessed: &mut usize,
) -> Vec<i64> {
    let deadline = Instant::now() + wait;
    let mut seqs = Vec::new();
    while seqs.len() < want {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else { break };
        assert!(msg.starts_with("<85>1 "), "{msg}");
        let msgid = msg.split(' ').nth(5).unwrap_or("");
        let json = msg.split_once('\u{FEFF}').map(|x| x.1).expect("BOM-prefixed body");
        let body: serde_json::Value = serde_json::from_str(json).unwrap();
        match msgid {
            "AuditWitness" => {
                assert!(body["signature"].is_string() && body["kind"].is_string(), "{body}");
                *witnessed += 1;
            }
            "AuditEvent" => {
                assert_eq!(body["resourceType"], "AuditEvent");
                seqs.push(body["id"].as_str().unwrap().parse().unwrap());
            }
            other => panic!("unexpected MSGID {other}: {msg}"),
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_repository_and_reads_never_wait_for_it() {
    let (ca_pem, tls) = repository_tls();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &ca_pem).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let repo = serve(listener, tls.clone(), tx.clone());

    let audit_extra = format!(
        "[audit.forward]\naddress = \"{addr}\"\nserver_name = \"localhost\"\nca = \"{}\"\nhostname = \"gw-test\"\n",
        ca_file.path().display()
    );
    let gw = TestGateway::start_opts(Options { audit_extra, ..Default::default() }).await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    for _ in 0..5 {
        assert_eq!(hub.get(gw.addr, "/fhir/Patient?identifier=1000001").await.unwrap().status, 200);
    }
    let mut witnessed = 0;
    let first = receive(&mut rx, 5, Duration::from_secs(20), &mut witnessed).await;
    assert_eq!(first.len(), 5, "{first:?}");

    // The repository goes away; reads go on, audited in the database, without waiting.
    repo.abort();
    let _ = repo.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(hub.get(gw.addr, "/fhir/Patient?identifier=1000003").await.unwrap().status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "reads waited for the repository");

    // It comes back on the same address: the queued events arrive, after the first ones.
    let listener = TcpListener::bind(addr).await.unwrap();
    let repo = serve(listener, tls, tx);
    let later = receive(&mut rx, 3, Duration::from_secs(30), &mut witnessed).await;
    assert_eq!(later.len(), 3, "queued events not delivered after reconnecting: {later:?}");
    let mut all = first.clone();
    all.extend(&later);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "out of order: {all:?}");

    // What arrived is what the database holds for those reads.
    let pool = gw.db().await;
    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM audit_event ORDER BY seq").fetch_all(&pool).await.unwrap();
    for s in &all {
        assert!(stored.contains(s), "forwarded event {s} is not in the database");
    }
    // The witness goes to the repository too: at least the writer's start.
    assert!(witnessed >= 1, "no witness line was forwarded");
    let metrics = admin_get(gw.admin, "/metrics").await;
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kakehashi_audit_forward_sent_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(sent >= 8 + witnessed as u64, "{metrics}");
    assert!(metrics.contains("kakehashi_audit_forward_connects_total 2"), "reconnected once: {metrics}");
    repo.abort();
    gw.stop().await;
}

/// A repository that completes every TLS handshake and closes at once: the forwarder
/// must back off as after a refused connection, not reconnect thousands of times a
/// second (an outside probe counted about 10,000 handshakes in a few seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_closes_at_once_is_retried_with_backoff() {
    let (ca_pem, tls) = repository_tls();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let handshakes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let repo = {
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                if let Ok(s) = acceptor.accept(tcp).await {
                    handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(s);
                }
            }
        })
    };
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &ca_pem).unwrap();
    let audit_extra = format!(
        "[audit.forward]\naddress = \"{addr}\"\nserver_name = \"localhost\"\nca = \"{}\"\n",
        ca_file.path().display()
    );
    let gw = TestGateway::start_opts(Options { audit_extra, ..Default::default() }).await;
    let hub = gw.client(Some(&gw.issue("hub", HUB, Role::HospitalSystem)));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert_eq!(hub.get(gw.addr, "/fhir/Patient?identifier=1000001").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = handshakes.load(std::sync::atomic::Ordering::Relaxed);
    // 200 ms, 400, 800, 1.6 s, 3.2 s: about five in four seconds.
    assert!((1..=10).contains(&n), "{n} handshakes in 4 s");
    repo.abort();
    gw.stop().await;
}
