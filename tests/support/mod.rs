//! Test harness: the fake upstream plus helpers that run the real `switchyard` binary against it.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

pub mod fake;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub use fake::{Fake, Script};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A data directory plus the environment that points the binary at a fake upstream.
pub struct Env {
    /// Shared by the clones of an environment (`clone_with`): one data directory, other settings.
    pub home: std::sync::Arc<tempfile::TempDir>,
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new(fake: &Fake) -> Env {
        let home = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let url = fake.url();
        let vars = vec![
            ("SWITCHYARD_UPSTREAM_URL".into(), url.clone()),
            ("SWITCHYARD_OAUTH_TOKEN_URL".into(), format!("{url}/v1/oauth/token")),
            ("SWITCHYARD_OAUTH_AUTHORIZE_URL".into(), format!("{url}/oauth/authorize")),
            ("SWITCHYARD_OAUTH_CONSOLE_AUTHORIZE_URL".into(), format!("{url}/console/oauth/authorize")),
            ("SWITCHYARD_OAUTH_REDIRECT_URI".into(), format!("{url}/oauth/code/callback")),
            ("SWITCHYARD_CLIENT_ID".into(), fake::CLIENT_ID.into()),
            ("SWITCHYARD_LOG_LEVEL".into(), "debug".into()),
            // The key file unless a test asks for the keychain: a keyring daemon may run in the test session.
            ("SWITCHYARD_SECRET_STORE".into(), "file".into()),
        ];
        Env { home, vars }
    }

    /// The same data directory with one more setting.
    pub fn clone_with(&self, key: &str, value: &str) -> Env {
        let mut env = Env { home: self.home.clone(), vars: self.vars.clone() };
        env.set(key, value);
        env
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.into(), value.into()));
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        cmd.env("SWITCHYARD_HOME", self.home.path()).env("HOME", self.home.path());
        // The session bus, where the test command started a keyring daemon.
        for var in ["DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"] {
            if let Ok(value) = std::env::var(var) {
                cmd.env(var, value);
            }
        }
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd.kill_on_drop(true);
        cmd
    }

    /// Run a CLI command to completion with `stdin` as input.
    pub async fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child =
            self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("command hung")
            .unwrap();
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run a CLI command that must succeed.
    pub async fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args, "").await;
        assert_eq!(out.code, Some(0), "switchyard {args:?} failed:\n{}\n{}", out.stdout, out.stderr);
        out
    }

    /// Import an OAuth account with both tokens and an expiry (epoch ms).
    pub async fn import_oauth(&self, name: &str, refresh: &str, access: &str, expires_at: &str) {
        let args = [
            "accounts",
            "import",
            name,
            "--refresh-token",
            refresh,
            "--access-token",
            access,
            "--expires-at",
            expires_at,
        ];
        self.ok(&args).await;
    }

    /// Start `switchyard serve --port 0` and wait for its listening line.
    pub async fn serve(&self) -> Gateway {
        let log = self.home.path().join("serve.log");
        let mut child = self
            .command(&["serve", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("gateway did not start in time")
            .unwrap()
            .unwrap_or_else(|| panic!("gateway exited: {}", std::fs::read_to_string(&log).unwrap_or_default()));
        let url = line.strip_prefix("switchyard listening on ").expect("listening line").trim().to_owned();
        // The reader stays open: the server may print more (the admin login link).
        Gateway { child, url, log, client: reqwest::Client::new(), stdout: lines }
    }
}

/// A running CLI command that has printed a URL and may want input.
pub struct Interactive {
    pub child: Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pub printed: String,
    pub url: url::Url,
}

impl Env {
    /// Start a command (e.g. `auth login`) and wait until it prints a URL.
    pub async fn start_interactive(&self, args: &[&str], extra: &[(&str, &str)]) -> Interactive {
        let mut cmd = self.command(args);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = String::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
                .await
                .expect("no URL printed")
                .unwrap()
                .expect("command ended before printing a URL");
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("http") {
                let url = url::Url::parse(line.trim()).unwrap();
                return Interactive { child, stdin, stdout, printed, url };
            }
        }
    }
}

impl Interactive {
    pub fn param(&self, key: &str) -> String {
        self.url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned()).unwrap_or_default()
    }

    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Close stdin and wait for the command to end.
    pub async fn finish(mut self) -> Output {
        drop(self.stdin.take());
        let mut stdout = self.printed.clone();
        let rest = async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                stdout.push_str(&line);
                stdout.push('\n');
            }
            let mut stderr = String::new();
            tokio::io::AsyncReadExt::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).await.unwrap();
            let status = self.child.wait().await.unwrap();
            (status, stderr)
        };
        let (status, stderr) = tokio::time::timeout(Duration::from_secs(60), rest).await.expect("command hung");
        Output { code: status.code(), stdout, stderr }
    }
}

#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub struct Gateway {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
    pub client: reqwest::Client,
    pub stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Drop for Gateway {
    /// Kill the server and wait until it is gone, so the next one on this data directory can take its lock.
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for _ in 0..500 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Gateway {
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.url))
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.url))
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(format!("{}{path}", self.url))
    }

    /// Wait until the server has picked up everything written to its store until now (a CLI change to
    /// accounts or keys): `/health` says when its last reload round started.
    pub async fn settle(&self) {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        eventually("the server to pick up the store's changes", Duration::from_secs(10), async || {
            let health: serde_json::Value = self.get("/health").send().await.ok()?.json().await.ok()?;
            (health["synced_at_ms"].as_i64()? > since).then_some(())
        })
        .await;
    }

    /// The next line the server prints on stdout.
    pub async fn next_line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line())
            .await
            .expect("no further output")
            .unwrap()
            .expect("stdout closed")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `http://127.0.0.1:PORT` of a port nothing listens on (bound, then released): connections are refused.
pub fn closed_port_url() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", closed.local_addr().unwrap())
}

/// Resident memory of a process, in MiB (Linux).
pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every readable file under `dir`, recursively, with its bytes (to search data directories for secrets).
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

/// A minimal Messages request body.
pub fn message_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "claude-fake",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    })
}

/// Assert an Anthropic-shaped error and return its `error.type`.
pub async fn error_type(response: reqwest::Response, status: u16) -> (String, String) {
    assert_eq!(response.status().as_u16(), status);
    let body: serde_json::Value = response.json().await.expect("error body must be JSON");
    assert_eq!(body["type"], "error", "{body}");
    (body["error"]["type"].as_str().unwrap().to_owned(), body["error"]["message"].as_str().unwrap().to_owned())
}

/// Poll `check` until it yields a value, for at most `deadline`; the one way tests wait for state.
pub async fn eventually<T>(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CLI command run on a real pseudo-terminal (util-linux `script`), for what a person sees while typing.
pub struct Terminal {
    child: Child,
    stdin: tokio::process::ChildStdin,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Env {
    pub fn terminal(&self, args: &[&str]) -> Terminal {
        let quoted: Vec<String> = std::iter::once(BIN)
            .chain(args.iter().copied())
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let std = self
            .command(&[])
            .as_std()
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
            .collect::<Vec<_>>();
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-f", "-c", &quoted.join(" "), "/dev/null"]).env_clear();
        for (k, v) in std {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.env("TERM", "dumb").kill_on_drop(true);
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = screen.clone();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stdout, &mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { child, stdin, screen, reader }
    }
}

impl Terminal {
    /// Everything the terminal has shown so far.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Wait until the terminal shows `text` (counting from the `nth` occurrence, 1-based).
    pub async fn expect(&self, text: &str, nth: usize) {
        eventually(&format!("{text:?} on the terminal"), Duration::from_secs(20), async || {
            (self.screen().matches(text).count() >= nth).then_some(())
        })
        .await;
    }

    /// The pseudo-terminal the command (script's child) reads from.
    fn tty(&self) -> Option<String> {
        let pid = self.child.id()?;
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let child = children.split_whitespace().next()?;
        let link = std::fs::read_link(format!("/proc/{child}/fd/0")).ok()?;
        Some(link.display().to_string())
    }

    /// Whether the terminal echoes what is typed (`stty` on the command's pseudo-terminal).
    fn echoing(&self) -> Option<bool> {
        let out = std::process::Command::new("stty").args(["-F", &self.tty()?, "-a"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let words: Vec<&str> = text.split([' ', ';', '\n']).collect();
        if words.contains(&"-echo") {
            Some(false)
        } else if words.contains(&"echo") {
            Some(true)
        } else {
            None
        }
    }

    /// Type a line once the command has turned echo off (as it must for a secret).
    pub async fn type_secret(&mut self, line: &str) {
        eventually("echo turned off", Duration::from_secs(20), async || (self.echoing() == Some(false)).then_some(()))
            .await;
        self.stdin.write_all(format!("{line}\r").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Wait for the command to end; its exit code and the whole screen.
    pub async fn finish(mut self) -> (Option<i32>, String) {
        let status =
            tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.expect("command hung").unwrap();
        // The reader ends when script's stdout closes, after the last byte.
        tokio::time::timeout(Duration::from_secs(10), &mut self.reader).await.expect("output did not end").unwrap();
        (status.code(), self.screen())
    }
}

/// A new, empty database on the PostgreSQL server `scripts/test` starts; its URL.
pub async fn fresh_database() -> String {
    let admin = std::env::var("SWITCHYARD_TEST_DATABASE_URL").expect(
        "the PostgreSQL tests need SWITCHYARD_TEST_DATABASE_URL: run ./scripts/test, which starts a private server",
    );
    let name = format!("sy_{:016x}", rand::random::<u64>());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// What a webhook receiver got, in order.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A webhook receiver on a free loopback port that records every JSON body POSTed to it: its URL and
/// what it has received.
pub async fn webhook() -> (String, Received) {
    let received: Received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hook, received)
}
