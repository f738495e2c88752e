//! The baseline: the fastest thing that could sit where the gateway sits — tokio +
//! hyper + rustls, client certificates required and checked against the same CA and
//! CRLs, answering fixed bytes. Its rate is the practical limit on this machine.

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serve `body` (with `content_type`) to every request on a loopback port until the
/// task is dropped; returns the address.
pub async fn start(
    tls: Arc<rustls::ServerConfig>,
    body: Bytes,
    content_type: &'static str,
    status: u16,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let (acceptor, body, http) = (acceptor.clone(), body.clone(), http.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        // Read what was sent (a pushed document), as the gateway does.
                        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                        let mut r = http::Response::new(http_body_util::Full::new(body));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                        r.headers_mut()
                            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok((addr, task))
}
