//! Command-line arguments (clap derive). Names here are public interface: keep them stable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  switchyard accounts add work --api-key -     add an API-key account (the key typed at a hidden prompt)
  switchyard auth login                        log a Claude Pro/Max account in with OAuth
  switchyard serve                             run the gateway on 127.0.0.1:8080
  ANTHROPIC_BASE_URL=http://127.0.0.1:8080 ANTHROPIC_API_KEY=switchyard claude
  switchyard dashboard-link                    a single-use login link for the dashboard
  switchyard requests --since 1h --status 429  what was rate-limited in the last hour";

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A gateway for the Anthropic Claude API over many accounts",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Configuration file (TOML). Default: <home>/config.toml when it exists. Env: SWITCHYARD_CONFIG.
    #[arg(long, global = true, value_name = "FILE", help_heading = "Global options")]
    pub config: Option<PathBuf>,
    /// Data directory (database, key file). Default: ~/.local/share/switchyard. Env: SWITCHYARD_HOME.
    #[arg(long, global = true, value_name = "DIR", help_heading = "Global options")]
    pub home: Option<PathBuf>,
    /// Refuse to run when Switchyard's files are open to others (default: a command that writes tightens
    /// them, one that reads warns). Env: SWITCHYARD_STRICT_PERMISSIONS.
    #[arg(long, global = true, help_heading = "Global options")]
    pub strict_permissions: bool,
    /// PostgreSQL for all state, shared by several instances (postgres://USER:PASSWORD@HOST:PORT/DB;
    /// `sslmode=require` or `verify-full` for TLS). Default: SQLite in the data directory.
    /// Env: SWITCHYARD_DATABASE_URL.
    #[arg(long, global = true, value_name = "URL", help_heading = "Global options")]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: the Anthropic API on /v1, the dashboard on /dashboard.
    #[command(after_help = "\
Prints `switchyard listening on URL`, then the dashboard's address and, while no admin key or password
exists, a single-use dashboard login link. Ctrl-C or SIGTERM stops it after running requests finish.

Examples:
  switchyard serve
  switchyard serve --host 0.0.0.0 --port 8443 --tls-cert cert.pem --tls-key key.pem")]
    Serve(ServeArgs),
    /// Log accounts in and out.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Manage accounts.
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Client API keys: who may use the gateway.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print a fresh single-use login link for the dashboard (for the running server, or the next one).
    ///
    /// Works while `serve` runs: the link is kept (hashed) in the data directory, valid for 24 hours, and
    /// replaces any earlier link. The address comes from the configuration, or --host/--port.
    DashboardLink {
        /// Host in the link. Default: the configured bind address (127.0.0.1).
        #[arg(long)]
        host: Option<String>,
        /// Port in the link. Default: the configured port (8080).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Administrator credentials for the admin API and dashboard.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The request log, newest first.
    #[command(
        after_help = "Examples:\n  switchyard requests --since 24h --account work\n  switchyard requests --status 429 --json\n  switchyard requests --id 01J…"
    )]
    Requests {
        /// How far back, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_name = "DURATION")]
        since: String,
        /// Only requests answered by (or, when failed, last tried on) this account.
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
        /// Only requests answered with this HTTP status, e.g. 429.
        #[arg(long, value_name = "CODE")]
        status: Option<i64>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: i64,
        /// Show one request, with its kept payload (decrypted, redacted) if any.
        #[arg(long)]
        id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Requests, tokens, cost, error rate and latency, grouped.
    Stats {
        /// How far back, e.g. 1h, 24h, 30d.
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        since: String,
        /// Group by account, model, client key or dialect, or everything in one row.
        #[arg(long, default_value = "all", value_parser = ["all", "account", "model", "key", "dialect"])]
        by: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete request-log rows older than a duration and compact the database.
    Cleanup {
        /// Delete what is older than this, e.g. 7d, 30d.
        #[arg(long, default_value = "30d", value_name = "DURATION")]
        older_than: String,
        /// What to delete: request rows, kept payloads, or both.
        #[arg(long = "type", default_value = "all", value_parser = ["requests", "payloads", "all"])]
        kind: String,
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Move state between backends: the data directory's SQLite and a PostgreSQL database.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Show the instances serving from this data (their heartbeats), most recently seen first.
    Instances {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the audit log of administrative actions, newest first.
    Audit {
        /// How far back, e.g. 1d, 12h, 30m.
        #[arg(long, default_value = "1d", value_name = "DURATION")]
        since: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy accounts (sealed tokens as they are), client keys, settings (admin password, TOTP), routing
    /// state and the audit log, optionally the request log, from one store into another. Safe to run
    /// again; nothing is deleted from the source.
    #[command(
        after_help = "Examples:\n  switchyard store copy --to 'postgres://switchyard:PASSWORD@db:5432/switchyard'\n  switchyard store copy --from 'postgres://…' --with-requests"
    )]
    Copy {
        /// Copy from this data directory's SQLite into this PostgreSQL database.
        #[arg(long, value_name = "URL", conflicts_with = "from", required_unless_present = "from")]
        to: Option<String>,
        /// Copy from this PostgreSQL database into this data directory's SQLite.
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// Copy the request log and its payloads too.
        #[arg(long)]
        with_requests: bool,
    },
}

/// Spend limits of a client key (estimated cost, UTC days and months).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BudgetArgs {
    /// USD per day.
    #[arg(long, value_name = "USD")]
    pub budget_usd_day: Option<f64>,
    /// USD per month.
    #[arg(long, value_name = "USD")]
    pub budget_usd_month: Option<f64>,
    /// Tokens (input + output + cache) per day.
    #[arg(long, value_name = "N")]
    pub budget_tokens_day: Option<i64>,
}

impl BudgetArgs {
    pub fn budgets(self) -> crate::store::Budgets {
        crate::store::Budgets {
            usd_day: self.budget_usd_day,
            usd_month: self.budget_usd_month,
            tokens_day: self.budget_tokens_day,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Set the administrator password (read from stdin, or SWITCHYARD_ADMIN_PASSWORD).
    SetPassword {
        /// Also require a TOTP code; prints the otpauth:// URL for an authenticator app.
        #[arg(long)]
        totp: bool,
    },
    /// End every dashboard and admin API session, on every server using this data, within a second.
    LogoutAll,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once (stdout) and only its hash is stored.
    #[command(after_help = "\
Roles:
  user    send API requests (/v1): for Claude Code, SDKs and apps
  viewer  look at the dashboard's overview and accounts, and /metrics; no API requests, no changes
  admin   everything: API requests, the dashboard, the request and audit logs, managing accounts and keys

Examples:
  switchyard keys create laptop
  switchyard keys create ci --rpm 60 --budget-usd-day 5 --expires 30d
  switchyard keys create ops --role admin")]
    Create {
        /// Name of the key, shown in listings and the request log.
        name: String,
        /// What the key may do (see Roles below).
        #[arg(long, default_value = "user", value_parser = ["admin", "user", "viewer"])]
        role: String,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<i64>,
        /// Input tokens per minute (estimated from the request size).
        #[arg(long)]
        tpm: Option<i64>,
        /// Requests in flight at once.
        #[arg(long)]
        concurrency: Option<i64>,
        /// Only these accounts (comma-separated names).
        #[arg(long, value_name = "a,b")]
        accounts: Option<String>,
        /// Lifetime, e.g. 30d, 12h.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[command(flatten)]
        budgets: BudgetArgs,
    },
    /// Change a key's budgets.
    Set {
        /// Name of the key.
        name: String,
        #[command(flatten)]
        budgets: BudgetArgs,
    },
    /// List keys (no secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; a running server refuses it within a second.
    Revoke {
        /// Name of the key.
        name: String,
    },
    /// Replace a key's secret (same name and settings); prints the new key once.
    Rotate {
        /// Name of the key.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind. Default 127.0.0.1. Env: SWITCHYARD_HOST.
    #[arg(long)]
    pub host: Option<String>,
    /// Port to bind (0 picks a free one). Default 8080. Env: SWITCHYARD_PORT.
    #[arg(long)]
    pub port: Option<u16>,
    /// Serve a non-loopback address without client keys (anyone who reaches it can use your accounts).
    /// Env: SWITCHYARD_ALLOW_UNAUTHENTICATED.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Serve HTTPS with this PEM certificate (chain). Env: SWITCHYARD_TLS_CERT.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert. Env: SWITCHYARD_TLS_KEY.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Log a Claude account in with OAuth (PKCE).
    Login(LoginArgs),
    /// Remove an account and its tokens.
    Logout {
        /// Account to log out; may be left out when there is only one.
        #[arg(long)]
        account: Option<String>,
        /// Log every account out.
        #[arg(long, conflicts_with = "account")]
        all: bool,
    },
    /// Show every account's login state (tokens masked).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Where secrets are kept, and moving, backing up and rotating them.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Backend in use, key source, number of secrets, permission check.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write, read back and delete a test entry on the active backend.
    Test,
    /// Move the encryption key to another backend (verified before the old copy is deleted).
    Migrate {
        /// Where the key goes: the OS keychain, or the key file in the data directory.
        #[arg(long, value_parser = ["keyring", "file"])]
        to: String,
    },
    /// Write one passphrase-protected archive of every account and its tokens.
    Backup {
        /// Default: <home>/backups/switchyard-<time>.backup
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Restore accounts from a backup (accounts of the same name are replaced).
    Restore {
        /// The backup file written by `auth storage backup`.
        file: PathBuf,
    },
    /// Re-encrypt every secret under a new key, atomically.
    RotateKey,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Name to save the account under. Default: the account's email address.
    #[arg(long)]
    pub account: Option<String>,
    /// Console login: create an API key and save it as an API-key account.
    #[arg(long)]
    pub console: bool,
    /// Do not open a browser; paste the code instead.
    #[arg(long)]
    pub no_browser: bool,
    /// Finish a pending login with the CODE#STATE shown after logging in.
    #[arg(long, value_name = "CODE#STATE")]
    pub code: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Import an OAuth account from its tokens or from Claude Code's credentials file.
    Import(ImportArgs),
    /// Add an Anthropic API-key account.
    #[command(
        after_help = "Examples:\n  switchyard accounts add work --api-key -\n  echo \"$KEY\" | switchyard accounts add work --api-key -"
    )]
    Add {
        /// Name of the account, as routing, listings and x-switchyard-account know it.
        name: String,
        /// The API key (`-` reads it: a hidden prompt at a terminal, one line from a pipe).
        #[arg(long, value_name = "KEY")]
        api_key: String,
        /// Overwrite an existing account of that name.
        #[arg(long)]
        replace: bool,
        /// Add the key even though it does not look like an Anthropic API key (`sk-ant-…`).
        #[arg(long)]
        force: bool,
    },
    /// List accounts (no secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an account and its tokens.
    Remove {
        /// Name of the account.
        name: String,
    },
    /// Take an account out of rotation (a running server follows within a second).
    Pause {
        /// Name of the account.
        name: String,
    },
    /// Put a paused account back into rotation.
    Resume {
        /// Name of the account.
        name: String,
    },
    /// Change an account's routing priority (lower first) and weight (share under `weighted`).
    Set {
        /// Name of the account.
        name: String,
        /// Routing priority: lower is preferred (default 0).
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i64>,
        /// Share of requests under the `weighted` strategy, 1 to 1000 (default 1).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=1000))]
        weight: Option<i64>,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Name to save the account under.
    pub name: String,
    /// OAuth refresh token (`-` reads it from stdin).
    #[arg(long, value_name = "RT", required_unless_present = "from_claude_code")]
    pub refresh_token: Option<String>,
    /// Current access token, if you have one.
    #[arg(long, value_name = "AT", requires = "refresh_token", requires = "expires_at")]
    pub access_token: Option<String>,
    /// When the access token expires, epoch milliseconds.
    #[arg(long, value_name = "EPOCH_MS", requires = "access_token")]
    pub expires_at: Option<i64>,
    /// Read Claude Code's credentials (default ~/.claude/.credentials.json).
    #[arg(long, value_name = "PATH", num_args = 0..=1, conflicts_with = "refresh_token")]
    pub from_claude_code: Option<Option<PathBuf>>,
    /// Overwrite an existing account of that name.
    #[arg(long)]
    pub replace: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::CommandFactory;

    use super::Cli;

    /// Every flag and positional argument of every command says what it is for.
    #[test]
    fn every_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "switchyard", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:#?}");
    }

    #[test]
    fn help_groups_global_options_and_explains_roles_and_the_dashboard() {
        let mut cli = Cli::command();
        cli.build();
        let top = cli.render_help().to_string();
        assert!(top.contains("Global options") && top.contains("Examples:"), "{top}");
        let sub = |name: &str| cli.find_subcommand(name).unwrap().clone();
        let mut serve = sub("serve");
        assert!(serve.render_help().to_string().contains("dashboard"));
        let mut create = sub("keys").find_subcommand("create").unwrap().clone();
        let text = create.render_long_help().to_string();
        assert!(text.contains("viewer") && text.contains("look at the dashboard"), "{text}");
        let mut list = sub("accounts").find_subcommand("list").unwrap().clone();
        let text = list.render_help().to_string();
        assert!(text.find("--json") < text.find("Global options"), "own flags before the global ones: {text}");
    }
}
