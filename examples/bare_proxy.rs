//! The floor for any proxy of Switchyard's design: forwards every request to one upstream and streams
//! the answer back, with nothing else (no key check, routing, log or metrics), on one single-threaded
//! event loop, listener and client pool per core, like the server. `bench/run` measures it beside
//! Switchyard so the cost of the HTTP stack and the cost of Switchyard's own work can be told apart.
//!
//!   cargo run --release --example bare_proxy -- LISTEN_PORT UPSTREAM_PORT [THREADS]
//!
//! `FLOOR_LISTEN=shared` makes the threads accept from one socket (as the server does by default)
//! instead of one `SO_REUSEPORT` listener each.

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let listen: u16 = args.next().ok_or("listen port")?.parse()?;
    let upstream: u16 = args.next().ok_or("upstream port")?.parse()?;
    let threads: usize = match args.next() {
        Some(n) => n.parse()?,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let shared = std::env::var("FLOOR_LISTEN").is_ok_and(|v| v == "shared");
    let one = if shared { Some(std::net::TcpListener::bind(("127.0.0.1", listen))?) } else { None };
    let mut handles = Vec::new();
    for _ in 0..threads {
        let socket = match &one {
            Some(listener) => Some(listener.try_clone()?),
            None => None,
        };
        handles.push(std::thread::spawn(move || -> Result<(), Error> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(serve(listen, upstream, socket))
        }));
    }
    for handle in handles {
        handle.join().map_err(|_| "a thread panicked")??;
    }
    Ok(())
}

async fn serve(listen: u16, upstream: u16, socket: Option<std::net::TcpListener>) -> Result<(), Error> {
    let listener = match socket {
        Some(std_listener) => {
            std_listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std_listener)?
        }
        None => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseport(true)?;
            socket.bind(([127, 0, 0, 1], listen).into())?;
            socket.listen(1024)?
        }
    };
    let authority = format!("127.0.0.1:{upstream}");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                let authority = authority.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    parts.uri = match format!("http://{authority}{path}").parse() {
                        Ok(uri) => uri,
                        Err(_) => {
                            return Ok::<_, Infallible>(Response::new(http_body_util::Either::Right(String::new())));
                        }
                    };
                    match client.request(Request::from_parts(parts, body)).await {
                        Ok(res) => Ok(res.map(http_body_util::Either::Left)),
                        Err(_) => Ok(Response::new(http_body_util::Either::Right(String::from("upstream failed")))),
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
