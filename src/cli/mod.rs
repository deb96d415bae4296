//! The `switchyard` command line: argument structs in `args`, one file per command group.

mod accounts;
mod args;
mod auth;
mod keys;
mod ledger;
mod prompt;
mod serve;
mod storage;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::accounts::{PlainAccount, Registry};
use crate::config::{Config, Overrides};
use crate::secrets::{Backend, Cipher, KeySet, KeyStore, fix_permissions, loose_permissions, private_dir, shred};
use crate::store::SqliteStore;
pub use args::Cli;
use args::{AccountsCommand, AuthCommand, Command};

/// Entry point of the binary: parse, run, print a one-line error on failure.
pub fn main() -> ExitCode {
    no_core_dumps();
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
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes as one line: a cause the message above it already quotes is not repeated
/// (`login failed: X` over `X`), and line breaks inside a message become spaces.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Epoch ms a `--FLAG` duration (`30m`, `24h`, `7d`) ago, or an error naming the flag.
pub(crate) fn window_start(flag: &str, value: &str) -> anyhow::Result<i64> {
    crate::since_ms(value).map_err(|_| {
        anyhow::anyhow!("{flag} {value:?} is not a duration; use a number and a unit, like 30m, 24h or 7d")
    })
}

/// The process holds the data key and decrypted tokens: a core dump would write them to disk, so the core
/// size limit is zero, and on Linux the process is not dumpable. (Profiling it then needs root, as
/// `bench/run` has.) Best effort: a failure here is not worth refusing to run.
fn no_core_dumps() {
    #[cfg(unix)]
    {
        let none = rustix::process::Rlimit { current: Some(0), maximum: Some(0) };
        let _ = rustix::process::setrlimit(rustix::process::Resource::Core, none);
    }
    // Not dumpable (as ssh-agent does): other processes of the same user can neither attach a debugger
    // nor read /proc/PID/environ and /proc/PID/mem, where the data key given in SWITCHYARD_ENCRYPTION_KEY
    // would otherwise stay readable for the life of the process.
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
}

/// Run one parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut overrides = Overrides {
        config: cli.config.clone(),
        home: cli.home.clone(),
        strict_permissions: cli.strict_permissions,
        database_url: cli.database_url.clone(),
        ..Overrides::default()
    };
    if let Command::Serve(args) = &cli.command {
        overrides.host = args.host.clone();
        overrides.port = args.port;
        overrides.allow_unauthenticated = args.allow_unauthenticated;
        overrides.tls_cert = args.tls_cert.clone();
        overrides.tls_key = args.tls_key.clone();
    }
    let config = Config::load(&overrides)?;
    crate::telemetry::init(&config.log_level, config.log_format, config.log_file.clone());
    match cli.command {
        Command::Serve(_) => serve::run(config).await,
        Command::Auth { command } => match command {
            AuthCommand::Login(args) => auth::login(&config, args).await,
            AuthCommand::Logout { account, all } => auth::logout(&config, account, all).await,
            AuthCommand::Status { json } => auth::status(&config, json).await,
            AuthCommand::Storage { command } => storage::run(&config, command).await,
        },
        Command::Accounts { command } => match command {
            AccountsCommand::Import(args) => accounts::import(&config, args).await,
            AccountsCommand::Add { name, api_key, replace, force } => {
                accounts::add(&config, &name, &api_key, replace, force).await
            }
            AccountsCommand::List { json } => accounts::list(&config, json).await,
            AccountsCommand::Remove { name } => accounts::remove(&config, &name).await,
            AccountsCommand::Pause { name } => accounts::pause(&config, &name, true).await,
            AccountsCommand::Resume { name } => accounts::pause(&config, &name, false).await,
            AccountsCommand::Set { name, priority, weight } => accounts::set(&config, &name, priority, weight).await,
        },
        Command::Keys { command } => keys::run(&config, command).await,
        Command::Audit { since, json } => keys::audit(&config, &since, json).await,
        Command::Instances { json } => serve::instances(&config, json).await,
        Command::Store { command: args::StoreCommand::Copy { to, from, with_requests } } => {
            storage::copy(&config, to, from, with_requests).await
        }
        Command::Requests { id: Some(id), .. } => ledger::one_request(&config, &id).await,
        Command::Requests { since, account, status, limit, json, id: None } => {
            ledger::requests(&config, &since, account, status, limit, json).await
        }
        Command::Stats { since, by, json } => ledger::stats(&config, &since, &by, json).await,
        Command::Cleanup { older_than, kind, dry_run } => ledger::cleanup(&config, &older_than, &kind, dry_run).await,
        Command::Admin { command: args::AdminCommand::SetPassword { totp } } => keys::set_password(&config, totp).await,
        Command::Admin { command: args::AdminCommand::LogoutAll } => keys::logout_all(&config).await,
        Command::DashboardLink { host, port } => keys::dashboard_link(&config, host, port).await,
    }
}

/// The data directory, opened: its registry and where its key lives.
pub(crate) struct Opened {
    pub registry: Registry,
    pub keystore: KeyStore,
    pub keys: KeySet,
}

/// Open the data directory for a command that writes: create it private when missing (an existing one is
/// only checked), find or create the data key, open the database, and fold in a plaintext store left by
/// an earlier version.
pub(crate) async fn open_data(config: &Config) -> anyhow::Result<Opened> {
    if private_dir(&config.home).with_context(|| format!("cannot create data directory {}", config.home.display()))? {
        eprintln!("created data directory {} (mode 0700)", config.home.display());
    }
    check_permissions(config, true)?;
    let store = connect_store(config).await?;
    let (keystore, keys, created) = open_keys_with(config, &store, true).await?;
    if created {
        eprintln!(
            "created a new encryption key in the {}; back it up (`switchyard auth storage backup`)",
            keystore.backend()
        );
    }
    let registry = Registry::new(store, Arc::new(Cipher::with_keys(keys.clone())));
    registry.verify_data_key(true).await?;
    migrate_plaintext(config, &registry).await?;
    Ok(Opened { registry, keystore, keys })
}

/// Open the data directory for a command that only reads: nothing on disk is created or changed, and
/// `None` when there is no data yet (the caller says so).
pub(crate) async fn open_existing(config: &Config) -> anyhow::Result<Option<Opened>> {
    let plaintext = config.home.join("accounts.json");
    if plaintext.exists() {
        eprintln!(
            "{} will be moved into encrypted storage by the next command that writes (or `switchyard serve`)",
            plaintext.display()
        );
    }
    if config.database.is_none() && !config.database_path().exists() {
        eprintln!(
            "nothing here yet: {} holds no Switchyard data; add an account with `switchyard accounts add NAME \
             --api-key -` or `switchyard auth login`",
            config.home.display()
        );
        return Ok(None);
    }
    check_permissions(config, false)?;
    let store = connect_store(config).await?;
    let (keystore, keys, _) = open_keys_with(config, &store, false).await?;
    let registry = Registry::new(store, Arc::new(Cipher::with_keys(keys.clone())));
    registry.verify_data_key(false).await?;
    Ok(Some(Opened { registry, keystore, keys }))
}

async fn open_keys(config: &Config, create: bool) -> anyhow::Result<(KeyStore, KeySet, bool)> {
    let settings = config.secret_settings();
    // Keychain calls block (D-Bus): keep them off the async workers.
    Ok(tokio::task::spawn_blocking(move || KeyStore::open(settings, create)).await??)
}

/// The data key for this configuration. On PostgreSQL with `SWITCHYARD_PASSPHRASE` (and no
/// `SWITCHYARD_ENCRYPTION_KEY`) the key set lives in the database, wrapped: the first instance of a new
/// database makes it, an install moved there by `store copy` publishes the key its data was written with,
/// and every other instance takes it from there. Elsewhere: the environment, the keychain or the key file.
async fn open_keys_with(
    config: &Config,
    store: &Arc<dyn crate::store::Store>,
    create: bool,
) -> anyhow::Result<(KeyStore, KeySet, bool)> {
    use crate::accounts::shared_keys;
    let Some(passphrase) = config.keys_in_database().then_some(config.passphrase.as_ref()).flatten() else {
        return open_keys(config, create).await;
    };
    let keystore = KeyStore::in_database(config.secret_settings());
    // Instances starting together race to publish the first key set; the losers take the winner's.
    for _ in 0..3 {
        if let Some(text) = shared_keys::read(store.as_ref()).await? {
            return Ok((keystore, shared_keys::unwrap(text, passphrase).await?, false));
        }
        let has_data = Registry::has_key_check(store.as_ref()).await?;
        anyhow::ensure!(
            create || has_data,
            "no data key in the database yet; start `switchyard serve` (or any command that writes) first"
        );
        let (keys, created) = if has_data {
            let (_, keys, _) = open_keys(config, false).await.context(
                "the database holds data but no key set; run the first instance where the key it was written \
                 with is (its key file or keychain), or set SWITCHYARD_ENCRYPTION_KEY",
            )?;
            Registry::new(store.clone(), Arc::new(Cipher::with_keys(keys.clone())))
                .verify_data_key(false)
                .await
                .context("this machine's key is not the one the database was written with")?;
            (keys, false)
        } else {
            (KeySet::generate(), true)
        };
        if shared_keys::publish(store.as_ref(), &keys, passphrase, None).await?.is_some() {
            if !created {
                eprintln!("the data key is now kept in the database, wrapped under SWITCHYARD_PASSPHRASE");
            }
            return Ok((keystore, keys, created));
        }
    }
    anyhow::bail!("could not agree on a data key with the other instances starting now; try again")
}

/// The store this configuration names: PostgreSQL, or SQLite in the data directory.
async fn connect_store(config: &Config) -> anyhow::Result<Arc<dyn crate::store::Store>> {
    Ok(match &config.database {
        // The error names host and port already, never the password.
        Some(pg) => Arc::new(crate::store::PgStore::open(pg).await?),
        None => Arc::new(
            SqliteStore::open(&config.database_path())
                .await
                .with_context(|| format!("cannot open database {}", config.database_path().display()))?,
        ),
    })
}

pub(crate) async fn open_registry(config: &Config) -> anyhow::Result<(Registry, Backend)> {
    let opened = open_data(config).await?;
    Ok((opened.registry, opened.keystore.backend().clone()))
}

/// Switchyard's files in the data directory must be the owner's alone: a command that writes tightens
/// them (saying so), one that reads only reports; a directory holding other files is reported and left
/// as it is. `--strict-permissions` refuses instead of either.
fn check_permissions(config: &Config, fix: bool) -> anyhow::Result<()> {
    let loose = loose_permissions(&config.home)?;
    if loose.is_empty() {
        return Ok(());
    }
    let list = loose.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    anyhow::ensure!(!config.strict_permissions, "refusing to run with open permissions (--strict-permissions): {list}");
    for l in &loose {
        if !l.ours {
            eprintln!(
                "warning: {l}; run `chmod 700 {}` yourself, or give Switchyard a directory of its own",
                l.path.display()
            );
        } else if fix {
            eprintln!("tightened open permissions: {l}");
        } else {
            eprintln!("warning: {l} (the next command that writes tightens it)");
        }
    }
    if fix {
        fix_permissions(&loose)?;
    }
    Ok(())
}

/// `accounts.json` in the data directory (an earlier version's plaintext store, or a file dropped there to
/// import): moved into encrypted storage, then overwritten and removed.
async fn migrate_plaintext(config: &Config, registry: &Registry) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct PlainStore {
        accounts: Vec<PlainAccount>,
    }
    let path = config.home.join("accounts.json");
    if !path.exists() {
        return Ok(());
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path)?);
    let plain: PlainStore = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a plaintext account store: {e}", path.display()))?;
    let n = registry.import(&plain.accounts).await?;
    shred(&path).with_context(|| format!("moved the accounts but could not remove {}", path.display()))?;
    eprintln!("moved {n} account(s) from plaintext {} into encrypted storage and removed the file", path.display());
    Ok(())
}

/// Record an administrative action taken from the command line.
pub(crate) async fn audit_cli(store: &dyn crate::store::Store, action: &str, target: &str, detail: &str) {
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".into());
    crate::access::audit(store, &format!("cli:{user}"), None, action, target, "ok", detail).await;
}

/// The HTTP client for the token endpoint and the OAuth calls on the API host (usage, profile, API-key
/// creation): short timeouts, no redirects, and every host pin.
pub(crate) fn oauth_http(config: &Config) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(tls) = crate::forward::tls::client_tls(&config.pins, config.upstream_ca.as_deref())? {
        builder = builder.tls_backend_preconfigured(tls);
    }
    Ok(builder
        .connect_timeout(config.connect_timeout)
        .timeout(config.token_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// Read a secret given on the command line, or, when it is `-`, from stdin (keeps it out of `ps` and the
/// shell history): a hidden prompt on a terminal, one line from a pipe.
pub(crate) fn secret_arg(value: &str, what: &str) -> anyhow::Result<crate::secrets::SecretString> {
    if value == "-" {
        return prompt::existing_secret(what);
    }
    let text = value.trim();
    anyhow::ensure!(!text.is_empty(), "the {what} is empty");
    Ok(crate::secrets::SecretString::from(text.to_owned()))
}

/// Epoch ms as a readable UTC time.
pub(crate) fn format_ms(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}
