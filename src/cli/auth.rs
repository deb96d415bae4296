//! `switchyard auth …`: OAuth login (browser with loopback callback, or paste, or a pending login finished
//! later with `--code`), logout and status.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use axum::extract::{Query, State};
use axum::response::Html;
use tokio::sync::mpsc;

use super::args::LoginArgs;
use super::{oauth_http, open_registry};
use crate::accounts::Registry;
use crate::accounts::login::{self, PENDING_TTL};
use crate::config::Config;
use crate::oauth::{OAuthClient, Pkce, authorize_url, new_state, split_pasted};

/// Open `url` in the user's browser: `$BROWSER` when set (as in `sensible-browser`: `%s` stands for
/// the URL, else it is the last argument), else the platform's opener. The child gets none of our
/// settings (the data key and passphrase stay with us) and is reaped in the background.
fn open_browser(url: &str) -> std::io::Result<()> {
    let (program, args): (String, Vec<String>) = match std::env::var("BROWSER").ok().filter(|b| !b.trim().is_empty()) {
        Some(browser) => {
            let first = browser.split(':').next().unwrap_or_default();
            let mut words = first.split_whitespace().map(str::to_owned);
            let program = words.next().unwrap_or_default();
            let mut args: Vec<String> = words.collect();
            if args.iter().any(|a| a.contains("%s")) {
                args.iter_mut().for_each(|a| *a = a.replace("%s", url));
            } else {
                args.push(url.to_owned());
            }
            (program, args)
        }
        None if cfg!(target_os = "macos") => ("open".to_owned(), vec![url.to_owned()]),
        None if cfg!(windows) => {
            ("rundll32".to_owned(), vec!["url.dll,FileProtocolHandler".to_owned(), url.to_owned()])
        }
        None => ("xdg-open".to_owned(), vec![url.to_owned()]),
    };
    let mut child = crate::secrets::child_command(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// How long the browser flow waits for the callback.
const BROWSER_WAIT: Duration = Duration::from_secs(600);

pub async fn login(config: &Config, args: LoginArgs) -> anyhow::Result<()> {
    let (registry, _) = open_registry(config).await?;
    let oauth = OAuthClient::new(oauth_http(config)?, config.oauth.clone());
    if let Some(pasted) = &args.code {
        let (code, state) = split_pasted(pasted)?;
        let result = login::finish_pending(&registry, &oauth, &code, &state, args.account).await;
        if let Err(login::LoginError::OAuth(e)) = &result
            && e.retryable()
        {
            bail!("{e}; the login is still pending: run the same `switchyard auth login --code …` again");
        }
        return report(&registry, result?).await;
    }

    let pkce = Pkce::generate();
    let state = new_state();
    let browser = !args.no_browser && display_available();
    let callback = if browser {
        match tokio::net::TcpListener::bind(("127.0.0.1", 0)).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprintln!("cannot listen for the browser callback ({e}); falling back to pasting the code");
                None
            }
        }
    } else {
        None
    };
    let redirect_uri = match &callback {
        Some(listener) => format!("http://localhost:{}/callback", listener.local_addr()?.port()),
        None => config.oauth.redirect_uri.to_string(),
    };
    let url = authorize_url(&config.oauth, args.console, &redirect_uri, &pkce.challenge, &state);
    if callback.is_none() {
        let expires = crate::now_ms() + i64::try_from(PENDING_TTL.as_millis()).unwrap_or(600_000);
        registry
            .put_pending(&state, &pkce.verifier, &redirect_uri, args.console, args.account.as_deref(), expires)
            .await?;
    }

    let mut out = std::io::stdout();
    writeln!(out, "Open this URL in a browser to log in:")?;
    writeln!(out, "{url}")?;
    out.flush()?;

    let code = match callback {
        Some(listener) => {
            if let Err(e) = open_browser(url.as_str()) {
                eprintln!("could not open a browser ({e}); open the URL above yourself");
            }
            eprintln!("waiting for the browser to finish the login…");
            wait_for_callback(listener, state.clone()).await?
        }
        None => {
            eprint!("Paste the code shown after login (CODE#STATE): ");
            let _ = std::io::stderr().flush();
            match read_stdin_line().await? {
                Some(line) => {
                    let (code, pasted_state) = split_pasted(&line)?;
                    if pasted_state != state {
                        bail!("state mismatch: this code belongs to a different login; nothing was saved");
                    }
                    // Used now: it must not be usable again with --code.
                    let _ = registry.take_pending(&state).await;
                    code
                }
                None => {
                    println!(
                        "No code was read. The login stays pending for 10 minutes; finish it with:\n  \
                         switchyard auth login --code 'CODE#STATE'"
                    );
                    return Ok(());
                }
            }
        }
    };
    let grant = login::CodeGrant {
        code: &code,
        state: &state,
        verifier: &pkce.verifier,
        redirect_uri: &redirect_uri,
        console: args.console,
    };
    finish(&registry, &oauth, grant, args.account).await
}

/// Exchange the code and save the account; nothing is saved when any step fails.
async fn finish(
    registry: &Registry,
    oauth: &OAuthClient,
    grant: login::CodeGrant<'_>,
    account: Option<String>,
) -> anyhow::Result<()> {
    let saved = login::complete(registry, oauth, grant, account).await?;
    report(registry, saved).await
}

/// Audit a saved login and say what was saved.
async fn report(registry: &Registry, saved: login::LoggedIn) -> anyhow::Result<()> {
    let detail = if saved.kind == "api-key" { "console" } else { "oauth" };
    let name = &saved.name;
    super::audit_cli(registry.store().as_ref(), "auth.login", name, detail).await;
    match (saved.kind, &saved.email) {
        ("api-key", _) => println!("logged in; saved API-key account {name}"),
        (_, Some(email)) => println!("logged in as {email}; saved OAuth account {name}"),
        (_, None) => println!("logged in; saved OAuth account {name}"),
    }
    Ok(())
}

/// Whether a browser can plausibly open here.
fn display_available() -> bool {
    if cfg!(any(target_os = "macos", target_os = "windows")) {
        return true;
    }
    ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// One line from stdin, or `None` at end of input.
async fn read_stdin_line() -> anyhow::Result<Option<String>> {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) if line.trim().is_empty() => Ok(None),
            Ok(_) => Ok(Some(line)),
            Err(e) => Err(anyhow::anyhow!("cannot read stdin: {e}")),
        }
    })
    .await?
}

#[derive(Clone)]
struct CallbackState {
    state: String,
    done: mpsc::Sender<Result<String, String>>,
}

#[derive(serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(cb): State<CallbackState>,
    Query(q): Query<CallbackQuery>,
) -> (axum::http::StatusCode, Html<&'static str>) {
    use axum::http::StatusCode;
    if let Some(error) = q.error {
        let description = q.error_description.unwrap_or_default();
        let _ = cb.done.send(Err(format!("{error} {description}").trim().to_owned())).await;
        return (StatusCode::BAD_REQUEST, Html("<h1>Login failed</h1><p>Return to the terminal.</p>"));
    }
    match (q.code, q.state) {
        (Some(code), Some(state)) if state == cb.state => {
            let _ = cb.done.send(Ok(code)).await;
            (StatusCode::OK, Html("<h1>Switchyard login complete</h1><p>You can close this tab.</p>"))
        }
        _ => (StatusCode::BAD_REQUEST, Html("<h1>Unexpected callback</h1><p>The state does not match this login.</p>")),
    }
}

/// Serve `/callback` on the loopback listener until the login comes back (or times out).
async fn wait_for_callback(listener: tokio::net::TcpListener, state: String) -> anyhow::Result<String> {
    let (tx, mut rx) = mpsc::channel(1);
    let app = axum::Router::new()
        .route("/callback", axum::routing::get(callback))
        .with_state(CallbackState { state, done: tx });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let result = tokio::time::timeout(BROWSER_WAIT, rx.recv()).await;
    // Let the success page reach the browser before the listener goes away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.abort();
    match result {
        Ok(Some(Ok(code))) => Ok(code),
        Ok(Some(Err(reason))) => bail!("login failed: the authorization server answered {reason}"),
        Ok(None) => bail!("login failed: the callback listener stopped"),
        Err(_) => bail!("login timed out after {} minutes", BROWSER_WAIT.as_secs() / 60),
    }
}

pub async fn logout(config: &Config, account: Option<String>, all: bool) -> anyhow::Result<()> {
    let (registry, _) = open_registry(config).await?;
    let names: Vec<String> = match account {
        Some(name) => vec![name],
        None => {
            let all_names: Vec<String> = registry.list().await?.into_iter().map(|r| r.name).collect();
            if all || all_names.len() <= 1 {
                all_names
            } else {
                bail!("there are {} accounts; pass --account NAME or --all", all_names.len());
            }
        }
    };
    if names.is_empty() {
        println!("no accounts to log out");
    }
    for name in names {
        registry.remove(&name).await?;
        super::audit_cli(registry.store().as_ref(), "auth.logout", &name, "").await;
        println!("logged out {name}; its tokens are deleted");
    }
    Ok(())
}

pub async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let (views, key_source) = match super::open_existing(config).await? {
        Some(opened) => (opened.registry.views().await?, Some(opened.keystore.backend().to_string())),
        None => (Vec::new(), None),
    };
    if json {
        let out = serde_json::json!({
            "home": config.home,
            "key_source": key_source,
            "accounts": views,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("data directory: {}", config.home.display());
    println!(
        "encryption key: {}",
        key_source.as_deref().unwrap_or("none yet (created by the first command that adds data)")
    );
    super::accounts::print_logins(&views);
    Ok(())
}
