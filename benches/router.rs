//! Cost of choosing an account: `Pool::candidates` over 10 accounts, per strategy, in nanoseconds.
//! Run with `cargo bench --bench router` (bench/run does, and relates it to a request's time).

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::accounts::{Pool, Registry, Router, Strategy, Want};
use switchyard::oauth::{OAuthClient, OAuthConfig};
use switchyard::secrets::{Cipher, SecretString};
use switchyard::store::SqliteStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(SqliteStore::open(&dir.join("bench.db")).await?);
    let cipher = Arc::new(Cipher::new(&zeroize::Zeroizing::new([7u8; 32])));
    let registry = Registry::new(store, cipher);
    for i in 0..10 {
        registry
            .add_api_key(&format!("acct-{i}"), &SecretString::from(format!("sk-ant-api03-bench-{i}")), true)
            .await?;
    }
    let url = url::Url::parse("http://127.0.0.1:9")?;
    let oauth_config = OAuthConfig {
        client_id: "bench".into(),
        authorize_url: url.clone(),
        console_authorize_url: url.clone(),
        token_url: url.clone(),
        redirect_uri: url.clone(),
        scopes: vec![],
        api_base: url,
        account_user_agent: "bench".into(),
    };
    let oauth = OAuthClient::new(reqwest::Client::new(), oauth_config);
    let iterations: u32 = 200_000;
    for (name, strategy) in [
        ("session", Strategy::Session),
        ("round-robin", Strategy::RoundRobin),
        ("weighted", Strategy::Weighted),
        ("least-used", Strategy::LeastUsed),
    ] {
        let router = Router::new(strategy, 5 * 3600 * 1000);
        let pool =
            Pool::load(registry.clone(), oauth.clone(), Duration::from_secs(300), router, "local".to_owned()).await?;
        let want = Want { family: Some("sonnet".into()), affinity: Some("conversation".into()), ..Want::default() };
        let started = Instant::now();
        for _ in 0..iterations {
            let chosen = pool.candidates(&want, &[]).map_err(|e| e.message())?;
            pool.served(&chosen[0], &want);
        }
        let per_call = started.elapsed().as_nanos() / u128::from(iterations);
        println!("ROUTER {name} {per_call}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
