//! The `switchyard` command line: argument structs in `args`, one file per command group.

mod accounts;
mod args;
mod auth;
mod serve;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::accounts::Registry;
use crate::config::{Config, Overrides};
use crate::secrets::{Cipher, KeySource, load_or_create_key, private_dir};
use crate::store::SqliteStore;
pub use args::Cli;
use args::{AccountsCommand, AuthCommand, Command};

/// Entry point of the binary: parse, run, print a one-line error on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run one parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut overrides = Overrides { config: cli.config.clone(), home: cli.home.clone(), ..Overrides::default() };
    if let Command::Serve(args) = &cli.command {
        overrides.host = args.host.clone();
        overrides.port = args.port;
    }
    let config = Config::load(&overrides)?;
    crate::telemetry::init(&config.log_level, config.log_format);
    match cli.command {
        Command::Serve(_) => serve::run(config).await,
        Command::Auth { command } => match command {
            AuthCommand::Login(args) => auth::login(&config, args).await,
            AuthCommand::Logout { account, all } => auth::logout(&config, account, all).await,
            AuthCommand::Status { json } => auth::status(&config, json).await,
        },
        Command::Accounts { command } => match command {
            AccountsCommand::Import(args) => accounts::import(&config, args).await,
            AccountsCommand::Add { name, api_key, replace } => accounts::add(&config, &name, &api_key, replace).await,
            AccountsCommand::List { json } => accounts::list(&config, json).await,
            AccountsCommand::Remove { name } => accounts::remove(&config, &name).await,
            AccountsCommand::Pause { name } => accounts::pause(&config, &name, true).await,
            AccountsCommand::Resume { name } => accounts::pause(&config, &name, false).await,
            AccountsCommand::Set { name, priority, weight } => accounts::set(&config, &name, priority, weight).await,
        },
    }
}

/// Open the data directory: create it private, load (or create) the data key, open the database.
pub(crate) async fn open_registry(config: &Config) -> anyhow::Result<(Registry, KeySource)> {
    private_dir(&config.home).with_context(|| format!("cannot create data directory {}", config.home.display()))?;
    let (key, source) = load_or_create_key(&config.home, config.encryption_key.as_ref())?;
    if let KeySource::File { path, created: true } = &source {
        eprintln!("created a new encryption key in {} (mode 0600); back it up with the database", path.display());
    }
    let store = SqliteStore::open(&config.database_path())
        .await
        .with_context(|| format!("cannot open database {}", config.database_path().display()))?;
    Ok((Registry::new(Arc::new(store), Arc::new(Cipher::new(&key))), source))
}

/// The HTTP client for the token endpoint: short timeouts, no redirects.
pub(crate) fn oauth_http(config: &Config) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// Read a secret given on the command line, or from stdin when it is `-` (keeps it out of `ps`).
pub(crate) fn secret_arg(value: &str, what: &str) -> anyhow::Result<crate::secrets::SecretString> {
    let text = if value == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).with_context(|| format!("cannot read {what} from stdin"))?;
        line.trim().to_owned()
    } else {
        value.trim().to_owned()
    };
    anyhow::ensure!(!text.is_empty(), "{what} is empty");
    Ok(crate::secrets::SecretString::from(text))
}

/// Epoch ms as a readable UTC time.
pub(crate) fn format_ms(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}
