//! The baseline: the fastest thing that could sit where the gateway sits — tokio +
//! hyper + rustls, client certificates required and checked against the same CA and
//! CRLs, answering fixed bytes. Its rate is the practical limit on this machine. Without
//! TLS it is the plain upstream behind the nginx peer of the pinned harness.

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What the baseline answers to every request.
#[derive(Clone)]
pub struct Answer {
    /// The body.
    pub body: Bytes,
    /// Its content type.
    pub content_type: &'static str,
    /// The status.
    pub status: u16,
}

impl Answer {
    /// FHIR JSON `body` with `status`: what the gateway answered, replayed.
    pub fn fhir(body: Bytes, status: u16) -> Answer {
        Answer { body, content_type: "application/fhir+json; charset=utf-8", status }
    }
}

/// Serve `answer` to every request on `listen` (port 0: any loopback port) until the
/// task is dropped, over mutual TLS with `tls`, or plain HTTP without; returns the
/// address.
pub async fn start(
    listen: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    answer: Answer,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(async move {
        let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let (acceptor, answer, http) = (acceptor.clone(), answer.clone(), http.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        // Read what was sent (a pushed document), as the gateway does.
                        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                        let mut r = http::Response::new(http_body_util::Full::new(answer.body));
                        *r.status_mut() = http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::OK);
                        r.headers_mut()
                            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(answer.content_type));
                        Ok::<_, Infallible>(r)
                    }
                });
                match acceptor {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(tcp).await else { return };
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    Ok((addr, task))
}
