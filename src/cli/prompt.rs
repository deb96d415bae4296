//! Reading secrets the user types: on a terminal, a prompt with echo off (and a confirmation for a new
//! password or passphrase); from a pipe, one line read silently, so scripts work as before.

use std::io::IsTerminal;

use anyhow::Context;
use zeroize::Zeroizing;

use crate::secrets::SecretString;

/// Whether stdin is a person at a terminal rather than a pipe or a file.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// One line from a pipe, without its line ending.
fn piped_line(what: &str) -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin().read_line(&mut line).with_context(|| format!("cannot read the {what} from stdin"))?;
    let trimmed = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(trimmed);
    Ok(line)
}

/// The terminal's answer to `prompt`, typed without echo.
fn hidden(prompt: &str, what: &str) -> anyhow::Result<Zeroizing<String>> {
    rpassword::prompt_password(prompt).map(Zeroizing::new).with_context(|| format!("cannot read the {what}"))
}

/// A secret that already exists somewhere (an API key, a refresh token): asked once.
pub fn existing_secret(what: &str) -> anyhow::Result<SecretString> {
    let line = if interactive() { hidden(&format!("{what} (input hidden): "), what)? } else { piped_line(what)? };
    let text = line.trim();
    anyhow::ensure!(!text.is_empty(), "the {what} is empty");
    Ok(SecretString::from(text.to_owned()))
}

/// A new password or passphrase of at least `min_chars` characters: on a terminal asked twice, and both
/// must match.
pub fn new_secret(what: &str, min_chars: usize) -> anyhow::Result<SecretString> {
    let first = if interactive() {
        hidden(&format!("new {what} (at least {min_chars} characters, input hidden): "), what)?
    } else {
        piped_line(what)?
    };
    anyhow::ensure!(first.chars().count() >= min_chars, "the {what} must have at least {min_chars} characters");
    if interactive() {
        let again = hidden(&format!("repeat the {what}: "), what)?;
        anyhow::ensure!(*again == *first, "the two entries differ; nothing was changed");
    }
    Ok(SecretString::from(first.to_string()))
}

/// A passphrase that protects something that exists already (a backup being restored): asked once.
pub fn passphrase(what: &str) -> anyhow::Result<SecretString> {
    let line = if interactive() { hidden(&format!("{what} (input hidden): "), what)? } else { piped_line(what)? };
    Ok(SecretString::from(line.to_string()))
}
