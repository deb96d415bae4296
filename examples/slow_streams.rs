//! The many-slow-streams phase of `bench/run`: an upstream whose SSE answers stay open for a set time,
//! and a client that holds N such streams through a proxy at once and counts how many complete.
//!
//!   cargo run --release --example slow_streams -- upstream PORT HOLD_SECS [TLS_DIR]
//!   cargo run --release --example slow_streams -- client PORT COUNT [PATH] [API_KEY]
//!
//! With TLS_DIR the upstream speaks TLS with a certificate for 127.0.0.1 from its own CA (written to
//! TLS_DIR/ca.pem) and offers HTTP/2 and HTTP/1.1 by ALPN, as the real API does, so a proxy can carry
//! many streams over one upstream connection.
//! The client prints `STREAMS opened completed failed seconds` when every stream has ended; it raises its
//! own open-file limit to the hard one first.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_slow\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-bench\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n";
const PING: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
const END: &str = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn raise_nofile() {
    if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit { current: Some(limit), maximum: Some(limit) },
        );
    }
}

/// A CA and a certificate for 127.0.0.1 it signed; the CA goes to `dir/ca.pem`.
fn tls_acceptor(dir: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, Box<dyn std::error::Error>> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?.signed_by(&key, &ca)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn upstream(
    port: u16,
    hold: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                let stream = futures_util::stream::unfold(0u32, move |step| async move {
                    let frame = match step {
                        0 => START,
                        1 => {
                            // Pings every 5 s keep the stream alive like the real API does.
                            let started = Instant::now();
                            while started.elapsed() + Duration::from_secs(5) < hold {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                            tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;
                            PING
                        }
                        2 => END,
                        _ => return None,
                    };
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(frame.as_bytes()))), step + 1))
                });
                let mut response = Response::new(StreamBody::new(stream));
                response
                    .headers_mut()
                    .insert("content-type", hyper::header::HeaderValue::from_static("text/event-stream"));
                Ok::<_, Infallible>(response)
            });
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let mut builder =
                            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                        builder.http2().max_concurrent_streams(20_000);
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        });
    }
}

async fn one_stream(port: u16, path: Arc<str>, key: Arc<str>) -> Result<(), std::io::Error> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let body = r#"{"model":"claude-bench","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\nx-api-key: {key}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut seen = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    if text.starts_with("HTTP/1.1 200") && text.contains("message_stop") {
        Ok(())
    } else {
        Err(std::io::Error::other(text.lines().next().unwrap_or("empty answer").to_owned()))
    }
}

async fn client(port: u16, count: usize, path: String, key: String) {
    raise_nofile();
    let path: Arc<str> = path.into();
    let key: Arc<str> = key.into();
    let completed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (path, key, completed, failed) = (path.clone(), key.clone(), completed.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            match one_stream(port, path, key).await {
                Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("stream failed: {e}");
                    }
                    0
                }
            };
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    println!(
        "STREAMS {count} {} {} {:.1}",
        completed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("upstream") => {
            raise_nofile();
            let port = args.get(1).ok_or("port")?.parse()?;
            let hold = Duration::from_secs(args.get(2).ok_or("hold seconds")?.parse()?);
            let tls = match args.get(3) {
                Some(dir) => Some(tls_acceptor(std::path::Path::new(dir))?),
                None => None,
            };
            upstream(port, hold, tls).await
        }
        Some("client") => {
            let port = args.get(1).ok_or("port")?.parse()?;
            let count = args.get(2).ok_or("count")?.parse()?;
            let path = args.get(3).cloned().unwrap_or_else(|| "/v1/messages".into());
            let key = args.get(4).cloned().unwrap_or_default();
            client(port, count, path, key).await;
            Ok(())
        }
        _ => Err("usage: slow_streams upstream PORT HOLD_SECS | client PORT COUNT [PATH] [API_KEY]".into()),
    }
}
