//! Forwarding to an IHE ATNA Audit Record Repository: every committed event also goes
//! out as an RFC 5424 syslog message over TLS (RFC 5425 octet-counting framing).
//!
//! The database stays the record of truth, so forwarding is best effort and never
//! delays a read: events wait in a bounded queue while the repository is unreachable
//! and are sent, in order, after reconnecting; when the queue is full, further events
//! are not queued and are counted as dropped (reconcile with `kakehashi audit export`).
//! Syslog over TLS has no acknowledgement: a message written just before the
//! repository fails can be lost, which is another reason the database is the record.

use crate::config::AuditForward;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Syslog PRI: facility 10 (security/authorisation, as DICOM PS3.15 and IHE ATNA use)
/// and severity 5 (notice).
const PRI: u8 = 10 * 8 + 5;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Messages written to the repository.
    pub sent: AtomicU64,
    /// Events not queued because the queue was full.
    pub dropped: AtomicU64,
    /// Connections (re)established.
    pub connects: AtomicU64,
}

/// Why forwarding could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// TLS material for the repository connection is unusable.
    #[error("audit.forward: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The repository's name is not a valid TLS server name.
    #[error("audit.forward.server_name `{0}` is not a DNS name or IP address")]
    ServerName(String),
}

/// What goes to the repository.
enum Outgoing {
    /// A stored event (sequence number and entry); the connection task renders it.
    Event(i64, String),
    /// Another message under its own MSGID (a witness line, a break-glass notice).
    Message(&'static str, String),
}

/// The sending side, held by the audit writer.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Outgoing>,
    /// Counters.
    pub stats: Arc<ForwardStats>,
}

impl Forwarder {
    /// Start the connection task for `settings`.
    pub fn start(settings: &AuditForward) -> Result<Forwarder, ForwardError> {
        let identity = settings.cert.as_deref().zip(settings.key.as_deref());
        let tls = crate::tls::client_config(&settings.ca, identity, &[], true)?;
        let name = rustls::pki_types::ServerName::try_from(settings.server_name.clone())
            .map_err(|_| ForwardError::ServerName(settings.server_name.clone()))?;
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let stats = Arc::new(ForwardStats::default());
        let header = Header { hostname: settings.hostname.clone(), app: settings.app_name.clone() };
        tokio::spawn(run(settings.address.clone(), tls, name, header, rx, stats.clone()));
        Ok(Forwarder { tx, stats })
    }

    /// Queue stored event `seq` (its entry) without waiting.
    pub fn offer(&self, seq: i64, entry: String) {
        self.queue(Outgoing::Event(seq, entry));
    }

    /// Queue a message with syslog MSGID `msgid` (JSON body) without waiting.
    pub fn offer_message(&self, msgid: &'static str, body: String) {
        self.queue(Outgoing::Message(msgid, body));
    }

    fn queue(&self, out: Outgoing) {
        if self.tx.try_send(out).is_err() {
            let n = self.stats.dropped.fetch_add(1, Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "audit forwarding queue full; events are in the database only");
            }
        }
    }
}

struct Header {
    hostname: String,
    app: String,
}

/// One RFC 5425 frame: `MSG-LEN SP SYSLOG-MSG`, the message being RFC 5424 with
/// MSGID `msgid` and a JSON body (a FHIR AuditEvent, say) as its UTF-8 (BOM-prefixed) body.
fn frame(h: &Header, msgid: &str, body: &str) -> Vec<u8> {
    let now = crate::instant::from_micros(crate::audit::now_micros()).unwrap_or_else(|| "-".into());
    let msg = format!("<{PRI}>1 {now} {} {} {} {msgid} - \u{FEFF}{body}", h.hostname, h.app, std::process::id());
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

async fn run(
    address: String,
    tls: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    header: Header,
    mut rx: mpsc::Receiver<Outgoing>,
    stats: Arc<ForwardStats>,
) {
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut pending: Option<Vec<u8>> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        let connected = async {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            connector.connect(name.clone(), tcp).await
        };
        let stream = match tokio::time::timeout(Duration::from_secs(10), connected).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(%address, error = %e, "audit repository unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tracing::warn!(%address, "audit repository connection timed out; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        stats.connects.fetch_add(1, Relaxed);
        let opened = tokio::time::Instant::now();
        if serve_connection(stream, &header, &mut rx, &mut pending, &stats).await.is_none() {
            return;
        }
        // Syslog over TLS has no acknowledgement, so a connection that ended soon after
        // it opened (a repository that completes the handshake and closes at once) may
        // have delivered nothing: back off as after a refused connect, or this loop
        // makes thousands of handshakes a second. One that stayed up was healthy.
        if opened.elapsed() >= HEALTHY_CONNECTION {
            backoff = Duration::from_millis(200);
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// A connection that stays up this long counts as healthy (the backoff restarts).
const HEALTHY_CONNECTION: Duration = Duration::from_secs(2);

/// Send queued messages on one connection until it ends; returns how many were
/// written, or None when the queue closed (the gateway is stopping).
async fn serve_connection(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    header: &Header,
    rx: &mut mpsc::Receiver<Outgoing>,
    pending: &mut Option<Vec<u8>>,
    stats: &ForwardStats,
) -> Option<u64> {
    let mut sent = 0u64;
    {
        let (mut read, mut write) = tokio::io::split(stream);
        let mut scratch = [0u8; 256];
        loop {
            let frame_bytes = match pending.take() {
                Some(f) => f,
                None => {
                    tokio::select! {
                        biased;
                        // A repository sends nothing: anything readable is its close.
                        _ = read.read(&mut scratch) => break,
                        event = rx.recv() => match event {
                            Some(Outgoing::Message(msgid, body)) => frame(header, msgid, &body),
                            Some(Outgoing::Event(seq, entry)) => match super::event::render_stored(seq, &entry) {
                                Ok(e) => frame(header, "AuditEvent", e.get()),
                                // Cannot happen for an entry this gateway wrote; the
                                // database keeps it either way.
                                Err(e) => {
                                    tracing::error!(error = %e, "audit event not forwarded");
                                    continue;
                                }
                            },
                            None => return None,
                        },
                    }
                }
            };
            if let Err(e) = write.write_all(&frame_bytes).await.and(write.flush().await) {
                tracing::warn!(error = %e, "audit repository connection lost; resending after reconnecting");
                *pending = Some(frame_bytes);
                break;
            }
            stats.sent.fetch_add(1, Relaxed);
            sent += 1;
        }
    }
    Some(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_octet_counted_rfc5424_messages() {
        let h = Header { hostname: "gw1".into(), app: "kakehashi".into() };
        let f = frame(&h, "AuditEvent", r#"{"resourceType":"AuditEvent","id":"7"}"#);
        let text = String::from_utf8(f).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<85>1 "), "{msg}");
        let fields: Vec<&str> = msg.splitn(8, ' ').collect();
        assert_eq!(&fields[2..4], ["gw1", "kakehashi"]);
        assert_eq!(fields[5], "AuditEvent");
        assert_eq!(fields[6], "-");
        assert_eq!(fields[7], "\u{FEFF}{\"resourceType\":\"AuditEvent\",\"id\":\"7\"}");
    }
}
