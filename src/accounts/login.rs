//! Finishing an OAuth login: the code exchanged for tokens (or, for a Console login, an API key) and the
//! account saved. Shared by `switchyard auth login` and the dashboard's "add account".

use std::time::Duration;

use secrecy::SecretString;

use super::{AccountError, NewOAuth, Registry};
use crate::oauth::{OAuthClient, OAuthError, Pkce, authorize_url, new_state};

/// How long a pending login (its PKCE verifier) waits for its code.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("login failed: {0}")]
    OAuth(#[from] OAuthError),
    #[error("login failed: the token answer carried no refresh token")]
    NoRefreshToken,
    #[error(
        "no pending login for this code: it expired after 10 minutes, was used, or belongs to another login; \
         start the login again"
    )]
    NoPending,
    #[error(transparent)]
    Account(#[from] AccountError),
}

/// Finish a pending login with its pasted `CODE#STATE` parts. The pending login is kept while finishing
/// it may still succeed: it is gone only once the account is saved, the server refuses the code, or it
/// expires; a network failure or a busy token endpoint leaves it for another try.
pub async fn finish_pending(
    registry: &Registry,
    oauth: &OAuthClient,
    code: &str,
    state: &str,
    account: Option<String>,
) -> Result<LoggedIn, LoginError> {
    let Some((verifier, pending)) = registry.take_pending(state).await? else { return Err(LoginError::NoPending) };
    let grant =
        CodeGrant { code, state, verifier: &verifier, redirect_uri: &pending.redirect_uri, console: pending.console };
    let result = complete(registry, oauth, grant, account.or_else(|| pending.account.clone())).await;
    if let Err(LoginError::OAuth(e)) = &result
        && e.retryable()
    {
        registry
            .put_pending(
                state,
                &verifier,
                &pending.redirect_uri,
                pending.console,
                pending.account.as_deref(),
                pending.expires_at_ms,
            )
            .await?;
    }
    result
}

/// A login saved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoggedIn {
    pub name: String,
    /// `oauth`, or `api-key` for a Console login.
    pub kind: &'static str,
    pub email: Option<String>,
}

/// A login waiting for its code: open `url`, sign in, paste the `CODE#STATE` shown.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingStart {
    pub authorize_url: String,
    pub state: String,
    pub expires_at_ms: i64,
}

/// Start a login finished by pasting the code (the PKCE verifier is kept sealed in the store).
pub async fn begin(
    registry: &Registry,
    oauth: &OAuthClient,
    console: bool,
    account: Option<&str>,
) -> Result<PendingStart, AccountError> {
    let pkce = Pkce::generate();
    let state = new_state();
    let redirect_uri = oauth.config().redirect_uri.to_string();
    let url = authorize_url(oauth.config(), console, &redirect_uri, &pkce.challenge, &state);
    let expires_at_ms = crate::now_ms() + i64::try_from(PENDING_TTL.as_millis()).unwrap_or(600_000);
    registry.put_pending(&state, &pkce.verifier, &redirect_uri, console, account, expires_at_ms).await?;
    Ok(PendingStart { authorize_url: url.to_string(), state, expires_at_ms })
}

/// An authorization code with what its login started with.
#[derive(Debug)]
pub struct CodeGrant<'a> {
    pub code: &'a str,
    pub state: &'a str,
    pub verifier: &'a SecretString,
    pub redirect_uri: &'a str,
    /// A Console login: the tokens only serve to create an API key.
    pub console: bool,
}

/// Exchange the code and save the account (replacing one of the same name); nothing is saved when any
/// step fails. The name is `account`, else the login's e-mail address, else `default` / `console`.
pub async fn complete(
    registry: &Registry,
    oauth: &OAuthClient,
    grant: CodeGrant<'_>,
    account: Option<String>,
) -> Result<LoggedIn, LoginError> {
    let console = grant.console;
    let tokens = oauth.exchange_code(grant.code, grant.state, grant.verifier, grant.redirect_uri).await?;
    let email = tokens.account.as_ref().and_then(|a| a.email_address.clone());
    let name = account
        .or_else(|| email.clone())
        .unwrap_or_else(|| if console { "console".to_owned() } else { "default".to_owned() });
    if console {
        let key = oauth.create_api_key(&tokens.access_token).await?;
        registry.add_api_key(&name, &key, true).await?;
        return Ok(LoggedIn { name, kind: "api-key", email });
    }
    let expires_at_ms = tokens.expires_at_ms(crate::now_ms());
    let refresh_token = tokens.refresh_token.ok_or(LoginError::NoRefreshToken)?;
    let login = NewOAuth {
        expires_at_ms,
        access_token: Some(tokens.access_token),
        refresh_token,
        email: email.clone(),
        account_uuid: tokens.account.as_ref().and_then(|a| a.uuid.clone()),
        org_uuid: tokens.organization.as_ref().and_then(|o| o.uuid.clone()),
        org_name: tokens.organization.as_ref().and_then(|o| o.name.clone()),
    };
    registry.save_oauth(&name, login, true).await?;
    Ok(LoggedIn { name, kind: "oauth", email })
}
