//! The portal's HTTP server: an accept loop that bounds what one client can
//! hold. `axum::serve` has no header or body timeout and no connection
//! limit, so a client that opens connections and never finishes a request
//! would hold the coordinator's sockets and tasks for ever.
//!
//! - At most `max_connections` connections are served; further ones wait in
//!   the kernel's listen queue (not accepted) until one ends.
//! - A connection's request headers (also: the next request on a kept-alive
//!   connection, and the TLS handshake) must arrive within
//!   `header_timeout_s`, else it is closed.
//! - A request body must arrive within `body_timeout_s` (and be at most
//!   [`MAX_BODY`]), else 408 (413) and the connection is closed.
//! - With `tls_cert`/`tls_key` it serves HTTPS (rustls, HTTP/1.1).

use crate::config::PortalConfig;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use tower::ServiceExt;

/// The largest request body: the portal's forms are a few fields.
pub const MAX_BODY: usize = 64 * 1024;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s.max(1))
}

/// Reads the whole request body within the configured time before the
/// handler runs, so no handler ever waits on a slow client.
pub async fn body_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let close = [(header::CONNECTION, "close")];
    match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            close,
            format!("request body refused: {e} (at most {MAX_BODY} bytes)"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            close,
            format!("request body not received within {} s", limit.as_secs_f64()),
        )
            .into_response(),
    }
}

/// The TLS acceptor of a PEM certificate chain and private key.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("portal TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "portal TLS certificate {}: no certificate in it",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("portal TLS key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("portal TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("portal TLS certificate and key: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The TLS acceptor of the config, `None` for plain HTTP; an error names
/// what is wrong with the certificate or key.
pub fn tls_of(cfg: &PortalConfig) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Ok(Some(tls_acceptor(c, k)?)),
        (None, None) => Ok(None),
        _ => anyhow::bail!("portal: tls_cert and tls_key go together (one is missing)"),
    }
}

/// Serves `app` on `listener` with the limits and TLS of `cfg` until the
/// process ends.
pub async fn serve(
    app: Router,
    listener: tokio::net::TcpListener,
    cfg: &PortalConfig,
) -> anyhow::Result<()> {
    let tls = tls_of(cfg)?;
    serve_with(app, listener, cfg, tls).await
}

/// [`serve`] with the TLS acceptor already made.
pub async fn serve_with(
    app: Router,
    listener: tokio::net::TcpListener,
    cfg: &PortalConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("operator portal on {scheme}://{addr}/");
    let header_timeout = secs(cfg.header_timeout_s);
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    loop {
        // Not accepting while full: the kernel queues (and, with a full
        // backlog, refuses) the rest.
        let slot = slots.clone().acquire_owned().await?;
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, retry.
                tracing::warn!(error = %e, "portal: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => connection(app, stream, peer, header_timeout).await,
                Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                    Ok(Ok(s)) => connection(app, s, peer, header_timeout).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "portal: TLS handshake"),
                    Err(_) => tracing::debug!(%peer, "portal: TLS handshake timed out"),
                },
            }
        });
    }
}

/// One HTTP/1.1 connection, its requests tagged with the client's address.
async fn connection<IO>(app: Router, io: IO, peer: SocketAddr, header_timeout: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    if let Err(e) = b.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(%peer, error = %e, "portal connection ended");
    }
}
