//! The accept loops (one per connection thread): TLS (rustls) when configured, a cap on open connections that sheds load with a 503,
//! an IP allow-list answered with 403 before anything else, slow-client and idle timeouts, header size
//! limits, and graceful draining on shutdown.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::error::ApiError;

/// How connections are accepted.
#[derive(Clone)]
pub struct ListenOptions {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_connections: usize,
    /// Open connections from one source at most (loopback counts as one source, IPv6 by its /64).
    pub max_connections_per_ip: usize,
    /// Threads serving connections (1: the caller's runtime serves them).
    pub workers: usize,
    /// A client must finish sending request headers within this time (also ends idle keep-alive).
    pub header_timeout: Duration,
    /// A connection this old is asked to close once its running requests end (GOAWAY on HTTP/2), so a
    /// client cannot hold one slot forever and reconnects land on fresh connections.
    pub max_connection_age: Duration,
    pub allowed_ips: Option<Vec<IpNet>>,
    /// Running requests get this long to finish after shutdown is asked for.
    pub drain: Duration,
}

impl std::fmt::Debug for ListenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenOptions")
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("workers", &self.workers)
            .field("header_timeout", &self.header_timeout)
            .field("max_connection_age", &self.max_connection_age)
            .field("allowed_ips", &self.allowed_ips)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {message}")]
    Cert { path: String, message: String },
    #[error("cannot read TLS private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// A rustls server configuration from PEM files (certificate chain, private key), offering h2 and http/1.1.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: cert.display().to_string(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: cert.display().to_string(), message: "no certificate found".into() });
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), message: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn allowed(list: Option<&[IpNet]>, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    list.is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)))
}

/// Answer every request on a connection turned away (not allowed, over the cap) with `error`, then close.
/// The request is read first, so clients see a proper answer rather than a reset.
async fn turn_away<I>(io: I, error: ApiError)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let error = error.clone();
        async move {
            let mut response = axum::response::IntoResponse::into_response(error);
            // HTTP/2 has no Connection header (the connection ends with the timeout below instead).
            if req.version() < hyper::Version::HTTP_2 {
                let close = hyper::header::HeaderValue::from_static("close");
                response.headers_mut().insert(hyper::header::CONNECTION, close);
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    // Either protocol: over TLS a client that negotiated h2 must hear its answer in h2, not a broken
    // connection.
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(false).timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(5));
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(4);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
}

/// Serve `front` on `listener` until `shutdown` resolves.
///
/// Connections are served by `options.workers` threads, each with its own single-threaded event loop
/// accepting from the same socket: a connection, its requests, its upstream connection and its body
/// frames then stay on one core, with no task handed between threads and no cross-core wake-ups.
pub async fn serve(
    listener: TcpListener,
    front: super::Front,
    options: ListenOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(options.max_connections.max(1))),
        per_source: Arc::default(),
        acceptor: options.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        front,
        options,
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = spawn_workers(&listener, &shared, &stopped);
    if workers.is_empty() {
        accept_loop(listener, shared, shutdown).await;
        return;
    }
    drop(listener);
    shutdown.await;
    let _ = stop.send(true);
    for worker in workers {
        let _ = worker.await;
    }
}

/// What every connection thread shares.
struct Shared {
    slots: Arc<Semaphore>,
    per_source: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    front: super::Front,
    options: ListenOptions,
}

/// Start the connection threads (none when one would do: then the caller's runtime serves); each
/// answers on the returned channel once its connections are drained. Threads that cannot start are
/// logged and left out: fewer threads still serve, and with none the caller's runtime does.
fn spawn_workers(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::sync::oneshot::Receiver<()>> {
    let count = shared.options.workers;
    let mut workers = Vec::with_capacity(count);
    if count <= 1 {
        return workers;
    }
    let socket = socket2::SockRef::from(listener);
    for n in 0..count {
        match spawn_worker(n, &socket, shared, stopped) {
            Ok(finished) => workers.push(finished),
            Err(e) => tracing::warn!(error = %e, thread = n, "cannot start a connection thread; serving with fewer"),
        }
    }
    workers
}

fn spawn_worker(
    n: usize,
    socket: &socket2::SockRef<'_>,
    shared: &Arc<Shared>,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let std_listener: std::net::TcpListener = socket.try_clone()?.into();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    let shared = shared.clone();
    let mut stopped = stopped.clone();
    std::thread::Builder::new().name(format!("switchyard-io-{n}")).spawn(move || {
        runtime.block_on(async move {
            match TcpListener::from_std(std_listener) {
                Ok(listener) => {
                    accept_loop(listener, shared, async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await;
                }
                Err(e) => tracing::error!(error = %e, "connection thread cannot use the listening socket"),
            }
        });
        let _ = done.send(());
    })?;
    Ok(finished)
}

/// One open connection counted against its source; the count drops with it.
struct SourceSlot {
    map: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl SourceSlot {
    fn take(
        map: &Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max: usize,
    ) -> Option<Self> {
        let source = crate::access::source(ip);
        let mut counts = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counts.entry(source).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(Self { map: map.clone(), source })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// Concurrent HTTP/2 streams one connection may hold open.
const H2_MAX_STREAMS: u32 = 128;

/// Request headers above this are refused (HTTP/1 and HTTP/2 alike).
const HEADER_LIMIT: usize = 256 * 1024;

/// Accept and serve connections until `shutdown`, then give running requests `drain` to finish.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    let options = &shared.options;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // HTTP/1.1 connections (nearly all) are served by hyper's own HTTP/1 server, chosen by a peek at the
    // first bytes or by ALPN: the auto-detecting builder replays its detection read, which makes hyper
    // grow every connection's read buffer to 16 KiB, and detects on every connection.
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(HEADER_LIMIT)
        .max_header_size(HEADER_LIMIT);
    let h1 = Arc::new(h1);
    let mut builder = Builder::new(TokioExecutor::new());
    // HTTP/1 connections hyper's detection serves (first bytes too few to tell) meet the same limit
    // through the buffer bound; hyper's own HTTP/1 server above needs it said as a header limit too.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(options.header_timeout).max_buf_size(HEADER_LIMIT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HEADER_LIMIT as u32)
        // One connection may not open more streams than a client needs: each holds memory and a request.
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(Duration::from_secs(30))
        // A peer that stops answering pings is gone: its connection (and slot) is freed.
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        if !allowed(options.allowed_ips.as_deref(), peer.ip()) {
            tracing::info!(%peer, "connection from an address outside SWITCHYARD_ALLOWED_IPS");
            let error = ApiError::forbidden("your address is not allowed to use this gateway");
            match shared.acceptor.clone() {
                Some(acceptor) => {
                    tokio::spawn(async move {
                        if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await {
                            turn_away(tls, error).await;
                        }
                    });
                }
                None => {
                    tokio::spawn(turn_away(tcp, error));
                }
            }
            continue;
        }
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = options.max_connections, "connection limit reached; shedding load");
            let error = ApiError::no_account("the gateway is at its connection limit; try again shortly");
            tokio::spawn(turn_away(tcp, error));
            continue;
        };
        let Some(source_slot) = SourceSlot::take(&shared.per_source, peer.ip(), options.max_connections_per_ip) else {
            tracing::warn!(%peer, max = options.max_connections_per_ip, "per-address connection limit reached");
            let error = ApiError::no_account("too many connections from your address; close some and try again");
            tokio::spawn(turn_away(tcp, error));
            continue;
        };
        let front = shared.front.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let front = front.clone();
            // Boxed: hyper keeps room for the service's future for the connection's whole life, and
            // this one is kilobytes; boxed, it is freed as soon as the answer's head is out.
            let answer: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                if super::is_api(req.method(), req.uri().path()) {
                    return Ok(front.api.serve(req, peer.ip()).await);
                }
                req.extensions_mut().insert(ConnectInfo(peer));
                front.router.oneshot(req.map(axum::body::Body::new)).await
            });
            answer
        });
        let builder = builder.clone();
        let h1 = h1.clone();
        let watcher = graceful.watcher();
        let acceptor = shared.acceptor.clone();
        let header_timeout = options.header_timeout;
        let max_age = options.max_connection_age;
        let mut stopping = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = (slot, source_slot);
            match acceptor {
                // Boxed: a TLS connection's state (the handshake, rustls' buffers) is kilobytes that a
                // plain connection's task would otherwise reserve too.
                Some(acceptor) => {
                    Box::pin(async move {
                        match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                                let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                                drive(watcher, stopping, max_age, conn, |c| c.graceful_shutdown()).await;
                            }
                            Ok(Ok(tls)) => {
                                let conn = h1.serve_connection(TokioIo::new(tls), service);
                                drive(watcher, stopping, max_age, conn, |c| c.graceful_shutdown()).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    })
                    .await;
                }
                None => {
                    // A connection that sends nothing at all is closed like one that stops mid-headers
                    // (hyper's header timer starts only with the first byte).
                    // Shutdown does not wait for a connection that has sent nothing yet (its watcher would
                    // hold the drain open until the timeout).
                    let mut first = [0u8; 3];
                    let waited = tokio::select! {
                        waited = tokio::time::timeout(header_timeout, tcp.peek(&mut first)) => waited,
                        _ = stopping.wait_for(|stop| *stop) => return,
                    };
                    match waited {
                        // No HTTP/1 request starts like HTTP/2's preface (`PRI * HTTP/2.0`).
                        Ok(Ok(n)) if n > 0 && !b"PRI".starts_with(&first[..n]) => {
                            let conn = h1.serve_connection(TokioIo::new(tcp), service);
                            drive(watcher, stopping, max_age, conn, |c| c.graceful_shutdown()).await;
                        }
                        // HTTP/2 with prior knowledge, or too few bytes yet to tell: hyper's detection.
                        Ok(Ok(n)) if n > 0 => {
                            let conn = builder.serve_connection(TokioIo::new(tcp), service).into_owned();
                            Box::pin(drive(watcher, stopping, max_age, conn, |c| c.graceful_shutdown())).await;
                        }
                        Ok(_) => {}
                        Err(_) => tracing::debug!(%peer, "connection sent nothing; closed"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(options.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after {}s; stopping anyway", options.drain.as_secs());
    }
}

/// Drive one connection until it ends. Shutdown and old age both ask it to finish gracefully (running
/// requests complete; HTTP/2 gets a GOAWAY); the watcher keeps the drain waiting until it is gone.
async fn drive<C, E>(
    watcher: hyper_util::server::graceful::Watcher,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    max_age: Duration,
    conn: C,
    finish: impl Fn(std::pin::Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let _counted = watcher;
    tokio::pin!(conn);
    let old = tokio::time::sleep(max_age);
    tokio::pin!(old);
    let mut asked = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut old, if !asked => {
                asked = true;
                finish(conn.as_mut());
            }
            _ = stopping.wait_for(|stop| *stop), if !asked => {
                asked = true;
                finish(conn.as_mut());
            }
        }
    }
}

/// Parse `SWITCHYARD_ALLOWED_IPS`: comma-separated CIDRs or single addresses.
pub fn parse_allowed_ips(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn allow_list_matches_cidrs_and_mapped_addresses() {
        let list = parse_allowed_ips("127.0.0.1, 10.0.0.0/8,::1").unwrap();
        assert!(allowed(Some(&list), "10.2.3.4".parse().unwrap()));
        assert!(allowed(Some(&list), "::ffff:127.0.0.1".parse().unwrap()));
        assert!(allowed(Some(&list), "::1".parse().unwrap()));
        assert!(!allowed(Some(&list), "192.168.1.1".parse().unwrap()));
        assert!(allowed(None, "192.168.1.1".parse().unwrap()));
        assert!(parse_allowed_ips("10.0.0.0/99").is_err());
    }
}
