//! Request and response bodies kept for inspection when `SWITCHYARD_PAYLOADS` asks for it: capped,
//! redacted (keys, bearer tokens, `sk-ant-…`, configured patterns), and sealed like tokens. The work
//! happens in the log writer, never on the request path.

use std::sync::Arc;

use bytes::Bytes;
use regex::Regex;

use crate::secrets::Cipher;

/// `SWITCHYARD_PAYLOADS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    Off,
    /// Only requests that failed (status ≥ 400 or an error event).
    Errors,
    Full,
}

impl std::str::FromStr for PayloadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" => Ok(Self::Off),
            "errors" => Ok(Self::Errors),
            "full" => Ok(Self::Full),
            other => Err(format!("expected off, errors or full, got {other:?}")),
        }
    }
}

/// Bodies captured for one request, before redaction.
#[derive(Debug, Clone, Default)]
pub struct RawPayload {
    pub request: Bytes,
    pub response: Vec<u8>,
}

/// What the writer needs to keep payloads.
#[derive(Debug)]
pub struct PayloadPolicy {
    pub mode: PayloadMode,
    pub max_bytes: usize,
    redact: Vec<Regex>,
    cipher: Arc<Cipher>,
}

const MARK: &str = "[REDACTED]";

impl PayloadPolicy {
    /// `extra` are additional regexes whose matches are replaced too.
    pub fn new(mode: PayloadMode, max_bytes: usize, extra: &[String], cipher: Arc<Cipher>) -> Result<Self, String> {
        let mut redact = Vec::new();
        for pattern in [
            r"sk-ant-[A-Za-z0-9_\-]+",
            r"sy-[A-Za-z0-9_\-]{20,}",
            r"(?i)bearer\s+[A-Za-z0-9._~+/=\-]+",
            r#"(?i)"(x-api-key|api[_-]?key|authorization|access_token|refresh_token|password|secret)"\s*:\s*"[^"]*""#,
        ]
        .iter()
        .map(|p| (*p).to_owned())
        .chain(extra.iter().cloned())
        {
            redact.push(Regex::new(&pattern).map_err(|e| format!("bad redaction pattern {pattern:?}: {e}"))?);
        }
        Ok(Self { mode, max_bytes, redact, cipher })
    }

    /// Whether a request that ended with `status` / `error` keeps its bodies.
    pub fn keeps(&self, status: i64, error: bool) -> bool {
        match self.mode {
            PayloadMode::Off => false,
            PayloadMode::Errors => status >= 400 || error,
            PayloadMode::Full => true,
        }
    }

    /// Redact text: matches become `[REDACTED]` (a JSON key keeps its name).
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (i, re) in self.redact.iter().enumerate() {
            out = if i == 3 {
                re.replace_all(&out, |c: &regex::Captures<'_>| format!("\"{}\": \"{MARK}\"", &c[1])).into_owned()
            } else {
                re.replace_all(&out, MARK).into_owned()
            };
        }
        out
    }

    fn capped<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[..bytes.len().min(self.max_bytes)]
    }

    /// Redact and seal both bodies of request `id`.
    pub fn seal(&self, id: &str, raw: &RawPayload) -> (Option<String>, Option<String>) {
        let seal = |what: &str, bytes: &[u8]| -> Option<String> {
            if bytes.is_empty() {
                return None;
            }
            let text = self.redact(&String::from_utf8_lossy(self.capped(bytes)));
            self.cipher.seal(&text, &format!("payload/{id}/{what}")).ok()
        };
        (seal("request", &raw.request), seal("response", &raw.response))
    }

    /// Open a sealed body of request `id`.
    pub fn open(cipher: &Cipher, id: &str, what: &str, sealed: &str) -> Option<String> {
        use secrecy::ExposeSecret;
        cipher.open(sealed, &format!("payload/{id}/{what}")).ok().map(|s| s.expose_secret().to_owned())
    }
}

/// Every kept payload re-sealed from `old` to `new` (not written), and how many bodies that is. A body that
/// does not open is an error: retiring its key would lose it silently.
pub fn reseal_payloads(
    payloads: Vec<crate::store::SealedPayload>,
    old: &Cipher,
    new: &Cipher,
) -> Result<(Vec<crate::store::SealedPayload>, usize), crate::secrets::CryptoError> {
    use secrecy::ExposeSecret;
    let mut count = 0;
    let mut out = Vec::with_capacity(payloads.len());
    for p in payloads {
        let mut reseal = |what: &str, sealed: Option<String>| -> Result<Option<String>, crate::secrets::CryptoError> {
            let Some(sealed) = sealed else { return Ok(None) };
            count += 1;
            let aad = format!("payload/{}/{what}", p.request_id);
            let plain = old.open(&sealed, &aad)?;
            Ok(Some(new.seal(plain.expose_secret(), &aad)?))
        };
        let request = reseal("request", p.request)?;
        let response = reseal("response", p.response)?;
        out.push(crate::store::SealedPayload { request_id: p.request_id, request, response });
    }
    Ok((out, count))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secrets_are_redacted_and_bodies_sealed() {
        let cipher = Arc::new(Cipher::new(&zeroize::Zeroizing::new([3u8; 32])));
        let policy = PayloadPolicy::new(PayloadMode::Full, 1000, &["card-\\d{4}".to_owned()], cipher.clone()).unwrap();
        let text = r#"{"x-api-key": "abc", "note": "use sk-ant-api03-XYZ and Bearer tok.en and sy-aaaaaaaaaaaaaaaaaaaaaaaa card-1234"}"#;
        let red = policy.redact(text);
        for gone in ["abc", "sk-ant-api03-XYZ", "tok.en", "sy-aaaa", "card-1234"] {
            assert!(!red.contains(gone), "{gone} left in {red}");
        }
        assert!(red.contains(r#""x-api-key": "[REDACTED]""#), "{red}");
        let raw = RawPayload { request: Bytes::from_static(b"hello sk-ant-secret"), response: b"world".to_vec() };
        let (req, resp) = policy.seal("id1", &raw);
        let req = req.unwrap();
        assert!(!req.contains("hello"));
        assert_eq!(PayloadPolicy::open(&cipher, "id1", "request", &req).unwrap(), "hello [REDACTED]");
        assert_eq!(PayloadPolicy::open(&cipher, "id1", "response", &resp.unwrap()).unwrap(), "world");
        assert!(PayloadPolicy::open(&cipher, "id2", "request", &req).is_none(), "bound to its request");
        assert!(policy.keeps(200, false));
        let errors = PayloadPolicy::new(PayloadMode::Errors, 10, &[], cipher).unwrap();
        assert!(!errors.keeps(200, false) && errors.keeps(429, false) && errors.keeps(200, true));
        assert_eq!(errors.capped(&[0u8; 50]).len(), 10);
    }
}
