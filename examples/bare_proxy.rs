//! The floor for any proxy built on hyper: forwards every request to one upstream and streams the answer
//! back, with nothing else (no routing, no log, no metrics). `bench/run` measures it beside Switchyard so
//! the cost of the stack and the cost of Switchyard's own work can be told apart.
//!
//!   cargo run --release --example bare_proxy -- LISTEN_PORT UPSTREAM_PORT

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: u16 = args.next().ok_or("listen port")?.parse()?;
    let upstream: u16 = args.next().ok_or("upstream port")?.parse()?;
    let authority = format!("127.0.0.1:{upstream}");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await?;
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
