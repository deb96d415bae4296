//! Request and response bodies kept for inspection when `SWITCHYARD_PAYLOADS` asks for it: capped,
//! redacted (keys, bearer tokens, `sk-ant-…`, configured patterns), and sealed like tokens. The work
//! happens in the log writer, never on the request path.

use std::sync::Arc;

use bytes::Bytes;

use crate::secrets::Cipher;
use crate::secrets::redact::Redactor;

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
    redactor: Redactor,
    cipher: Arc<Cipher>,
}

/// Bytes captured past the cap, so that a secret the cap cuts is still seen whole when it is redacted
/// (redaction runs before the cap).
const CAPTURE_MARGIN: usize = 4096;

impl PayloadPolicy {
    /// `extra` are additional regexes whose matches are replaced too.
    pub fn new(mode: PayloadMode, max_bytes: usize, extra: &[String], cipher: Arc<Cipher>) -> Result<Self, String> {
        Ok(Self { mode, max_bytes, redactor: Redactor::new(extra)?, cipher })
    }

    /// Redact `text` with this policy's patterns.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// How much of a response the request path keeps for this policy (the cap and a margin).
    pub fn capture_bytes(&self) -> usize {
        self.max_bytes.saturating_add(CAPTURE_MARGIN)
    }

    /// Whether a request that ended with `status` / `error` keeps its bodies.
    pub fn keeps(&self, status: i64, error: bool) -> bool {
        match self.mode {
            PayloadMode::Off => false,
            PayloadMode::Errors => status >= 400 || error,
            PayloadMode::Full => true,
        }
    }

    /// At most `max_bytes` of `text`, cut on a character boundary.
    fn capped(&self, text: String) -> String {
        if text.len() <= self.max_bytes {
            return text;
        }
        let mut end = self.max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    }

    /// Redact, then cap, and seal both bodies of request `id` (redacting first: a cut secret would no
    /// longer match its pattern).
    pub fn seal(&self, id: &str, raw: &RawPayload) -> (Option<String>, Option<String>) {
        let seal = |what: &str, bytes: &[u8]| -> Option<String> {
            if bytes.is_empty() {
                return None;
            }
            let seen = &bytes[..bytes.len().min(self.capture_bytes())];
            let text = self.capped(self.redact(&String::from_utf8_lossy(seen)));
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
        assert_eq!(errors.capped("é".repeat(50)).len(), 10);
        assert_eq!(errors.capped("éa".repeat(50)).len(), 9, "cut on a character boundary");
    }

    fn policy(max_bytes: usize) -> PayloadPolicy {
        let cipher = Arc::new(Cipher::new(&zeroize::Zeroizing::new([3u8; 32])));
        PayloadPolicy::new(PayloadMode::Full, max_bytes, &[], cipher).unwrap()
    }

    #[test]
    fn a_secret_cut_by_the_cap_is_redacted_before_the_cut() {
        let p = policy(40);
        let cipher = Arc::new(Cipher::new(&zeroize::Zeroizing::new([3u8; 32])));
        let body = format!("{}{{\"refresh_token\": \"{}\"}}", "x".repeat(10), "Q".repeat(100));
        let raw = RawPayload { request: Bytes::from(body.clone()), response: body.clone().into_bytes() };
        let (req, _) = p.seal("id", &raw);
        let opened = PayloadPolicy::open(&cipher, "id", "request", &req.unwrap()).unwrap();
        assert!(!opened.contains('Q') && opened.len() <= 40, "{opened}");
        // Cut inside a key: what is left of it still matches, nothing of the secret remains.
        let red = p.capped(p.redact(&format!("{}sk-ant-api03-{}", "y".repeat(30), "K".repeat(50))));
        assert!(!red.contains('K'), "{red}");
        // A value the capture itself cut (no closing quote) is masked to the end.
        assert_eq!(p.redact(r#"{"token": "abc"#), r#"{"token": "[REDACTED]"#);
    }
}
