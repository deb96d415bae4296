//! The `system` prompt of a Messages request: recognising the Claude Code identity and placing it first.

use indexmap::IndexMap;
use serde_json::value::RawValue;

use super::KNOWN_IDENTITIES;

/// What to do with the identity prompt for OAuth accounts (`SWITCHYARD_IDENTITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// Put the identity block first unless the request already carries a Claude identity.
    Inject,
    /// Send `system` exactly as the client wrote it.
    PassThrough,
}

/// What routing and the request log need from a request body, read in one pass that keeps nothing of
/// the body's structure (the full parse below is only for bodies an OAuth account rewrites).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Peek {
    /// `model`, when it is a string.
    pub model: Option<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// `metadata.user_id`: Claude Code sends one per session; the router keeps a conversation on one account.
    pub user_id: Option<String>,
}

#[derive(serde::Deserialize)]
struct PeekFields<'a> {
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(default, borrow)]
    stream: Option<&'a RawValue>,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

/// Refuse anything but a JSON object before parsing: a derived struct would also read an array (its fields
/// in order), and "expected a JSON object" says more than serde's type error.
fn expect_object(bytes: &[u8]) -> Result<(), BodyError> {
    if bytes.trim_ascii_start().first() == Some(&b'{') {
        Ok(())
    } else {
        Err(BodyError::Json("expected a JSON object".to_owned()))
    }
}

impl Peek {
    /// The conversation's session from `metadata.user_id`: current Claude Code sends a JSON string
    /// `{"device_id":…,"account_uuid":…,"session_id":…}`, older versions `user_…_session_<uuid>`, SDK users
    /// whatever they choose (then the whole string is the session).
    pub fn session(&self) -> Option<&str> {
        let user_id = self.user_id.as_deref()?;
        if user_id.trim_start().starts_with('{') {
            #[derive(serde::Deserialize)]
            struct UserId<'a> {
                #[serde(borrow)]
                session_id: Option<std::borrow::Cow<'a, str>>,
            }
            if let Ok(UserId { session_id: Some(session) }) = serde_json::from_str::<UserId<'_>>(user_id)
                && !session.is_empty()
                && let Some(start) = user_id.find(session.as_ref())
            {
                // Borrowed from the string itself when it holds no escapes (a session id never does).
                return Some(&user_id[start..start + session.len()]);
            }
            return Some(user_id);
        }
        match user_id.rsplit_once("_session_") {
            Some((_, session)) if !session.is_empty() => Some(session),
            _ => Some(user_id),
        }
    }

    /// Read a request body; it must be a JSON object.
    pub fn parse(bytes: &[u8]) -> Result<Self, BodyError> {
        expect_object(bytes)?;
        let fields: PeekFields<'_> = serde_json::from_slice(bytes).map_err(|e| BodyError::Json(e.to_string()))?;
        let user_id = fields.metadata.and_then(|raw| {
            let metadata: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
            metadata.get("user_id")?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
        });
        Ok(Self {
            model: fields.model.and_then(|raw| serde_json::from_str(raw.get()).ok()),
            stream: fields.stream.is_some_and(|raw| raw.get() == "true"),
            user_id,
        })
    }
}

/// A JSON request body parsed only one level deep: each top-level value stays the client's exact bytes,
/// borrowed from the body rather than copied (a long conversation is most of the body).
#[derive(Debug)]
pub struct MessageBody<'a> {
    bytes: &'a [u8],
    fields: IndexMap<String, &'a RawValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is not valid JSON: {0}")]
    Json(String),
}

impl<'a> MessageBody<'a> {
    /// Parse a request body; it must be a JSON object.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BodyError> {
        expect_object(bytes)?;
        let fields: IndexMap<String, &'a RawValue> =
            serde_json::from_slice(bytes).map_err(|e| BodyError::Json(e.to_string()))?;
        Ok(Self { bytes, fields })
    }

    /// A top-level value's bytes, exactly as the client wrote them.
    pub fn raw(&self, key: &str) -> Option<&'a str> {
        self.fields.get(key).map(|raw| raw.get())
    }

    /// The body with the top-level `key` set to the JSON text `value`, every other byte as the client sent
    /// it (a prompt-cache prefix depends on them): an existing value is replaced where it stands, a new
    /// key goes first.
    pub fn with_field(&self, key: &str, value: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + value.len() + key.len() + 4);
        match self.fields.get(key).and_then(|raw| self.span(raw)) {
            Some((start, end)) => {
                out.extend_from_slice(&self.bytes[..start]);
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(&self.bytes[end..]);
            }
            None => {
                // After the opening brace (the body is an object, so it is there).
                let open = self.bytes.iter().position(|b| *b == b'{').map_or(0, |i| i + 1);
                out.extend_from_slice(&self.bytes[..open]);
                out.push(b'"');
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
                out.extend_from_slice(value.as_bytes());
                if !self.fields.is_empty() {
                    out.push(b',');
                }
                out.extend_from_slice(&self.bytes[open..]);
            }
        }
        out
    }

    /// Where a borrowed value lies in the body (it always does: values are borrowed from it).
    fn span(&self, raw: &RawValue) -> Option<(usize, usize)> {
        let start = (raw.get().as_ptr() as usize).checked_sub(self.bytes.as_ptr() as usize)?;
        let end = start + raw.get().len();
        (end <= self.bytes.len()).then_some((start, end))
    }

    /// The body with `identity` first in `system`, or `None` when it needs no change: the request already
    /// opens with a Claude identity (or `identity` itself).
    pub fn with_identity(&self, identity: &str) -> Option<Vec<u8>> {
        let system: Option<serde_json::Value> = match self.fields.get("system") {
            None => None,
            Some(raw) => match serde_json::from_str(raw.get()) {
                Ok(value) => Some(value),
                // Deeper than the parser reads (the one-level parse skips over it): the client's system
                // goes as it was written, never replaced by the identity alone.
                Err(_) => return None,
            },
        };
        if system.as_ref().is_some_and(|s| carries_identity(s, identity)) {
            return None;
        }
        // Only the identity is new; the client's own system text and blocks keep their bytes.
        let block = serde_json::json!({ "type": "text", "text": identity }).to_string();
        let raw = self.raw("system").map(str::trim);
        let new_system = match system {
            None | Some(serde_json::Value::Null) => format!("[{block}]"),
            Some(serde_json::Value::String(s)) if s.is_empty() => format!("[{block}]"),
            Some(serde_json::Value::String(_)) => format!(r#"[{block},{{"type":"text","text":{}}}]"#, raw?),
            Some(serde_json::Value::Array(blocks)) if blocks.is_empty() => format!("[{block}]"),
            Some(serde_json::Value::Array(_)) => format!("[{block},{}", raw?.strip_prefix('[')?.trim_start()),
            // Anything else is the client's error to hear from the upstream, untouched.
            Some(_) => return None,
        };
        Some(self.with_field("system", &new_system))
    }
}

/// Whether a `system` value already carries a Claude identity: one of the known sentences (or the
/// configured one) opens the string, or opens one of the first three text blocks.
pub fn carries_identity(system: &serde_json::Value, configured: &str) -> bool {
    let opens = |text: &str| {
        let text = text.trim_start();
        text.starts_with(configured) || KNOWN_IDENTITIES.iter().any(|known| text.starts_with(known))
    };
    match system {
        serde_json::Value::String(s) => opens(s),
        serde_json::Value::Array(blocks) => {
            blocks.iter().take(3).any(|b| b.get("text").and_then(|t| t.as_str()).is_some_and(opens))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ID: &str = "You are Claude Code, Anthropic's official CLI for Claude.";

    fn system_of(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(body).unwrap()["system"].clone()
    }

    #[test]
    fn the_session_is_read_from_every_shape_of_user_id() {
        let peek = |user_id: &str| Peek { user_id: Some(user_id.to_owned()), ..Peek::default() };
        let json = peek(r#"{"device_id":"d1","account_uuid":"a1","session_id":"5e55-10n"}"#);
        assert_eq!(json.session(), Some("5e55-10n"));
        assert_eq!(peek("user_abc_account_a1_session_5e55-10n").session(), Some("5e55-10n"));
        assert_eq!(peek("alice@example.com").session(), Some("alice@example.com"));
        // JSON without a session: the whole string still keeps one user together.
        assert_eq!(peek(r#"{"device_id":"d1"}"#).session(), Some(r#"{"device_id":"d1"}"#));
        assert_eq!(Peek::default().session(), None);
    }

    #[test]
    fn string_system_becomes_two_blocks() {
        let body = MessageBody::parse(br#"{"model":"m","system":"Be brief.","messages":[]}"#).unwrap();
        let out = body.with_identity(ID).unwrap();
        assert_eq!(system_of(&out), serde_json::json!([{"type":"text","text":ID},{"type":"text","text":"Be brief."}]));
        // Field order and the other values are kept byte for byte.
        assert!(String::from_utf8(out).unwrap().starts_with(r#"{"model":"m","system":"#));
    }

    #[test]
    fn only_the_identity_is_new_every_other_byte_is_the_clients() {
        let id_block = serde_json::json!({"type":"text","text":ID}).to_string();
        // Blocks with keys out of order and odd spacing: kept exactly, the identity spliced in before them.
        let list = "{ \"model\" : \"m\",\n \"system\": [ {\"text\":\"x\", \"type\":\"text\"} ],\"messages\":[] }";
        let out = String::from_utf8(MessageBody::parse(list.as_bytes()).unwrap().with_identity(ID).unwrap()).unwrap();
        assert_eq!(out, list.replace("[ {", &format!("[{id_block},{{")));
        // A string system keeps its exact escapes.
        let string = r#"{"system":"caf\u00e9\n","messages":[]}"#;
        let out = String::from_utf8(MessageBody::parse(string.as_bytes()).unwrap().with_identity(ID).unwrap()).unwrap();
        assert_eq!(out, format!(r#"{{"system":[{id_block},{{"type":"text","text":"caf\u00e9\n"}}],"messages":[]}}"#));
        // No system: one is put first, the rest follows untouched.
        let none = r#"{"messages":[{"role":"user","content":"hi"}],"zeta":1}"#;
        let out = String::from_utf8(MessageBody::parse(none.as_bytes()).unwrap().with_identity(ID).unwrap()).unwrap();
        assert_eq!(out, format!(r#"{{"system":[{id_block}],"messages":[{{"role":"user","content":"hi"}}],"zeta":1}}"#));
        // Any field replaced in place.
        let body = MessageBody::parse(br#"{"model": "opus" ,"max_tokens":5}"#).unwrap();
        assert_eq!(
            body.with_field("model", r#""claude-opus-4-5""#),
            br#"{"model": "claude-opus-4-5" ,"max_tokens":5}"#
        );
        assert_eq!(MessageBody::parse(b"{}").unwrap().with_field("a", "1"), b"{\"a\":1}");
    }

    #[test]
    fn block_list_gets_identity_prepended_once() {
        let body =
            MessageBody::parse(br#"{"system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]}"#)
                .unwrap();
        let out = body.with_identity(ID).unwrap();
        let sys = system_of(&out);
        assert_eq!(sys[0]["text"], ID);
        assert_eq!(sys[1]["cache_control"]["type"], "ephemeral");
        // Running it again changes nothing: never duplicated.
        assert!(MessageBody::parse(&out).unwrap().with_identity(ID).is_none());
    }

    #[test]
    fn missing_system_gets_identity() {
        let body = MessageBody::parse(br#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(system_of(&body.with_identity(ID).unwrap()), serde_json::json!([{"type":"text","text":ID}]));
    }

    #[test]
    fn claude_code_and_agent_sdk_are_recognised() {
        let cc = br#"{"system":[{"type":"text","text":"x-anthropic-billing-header: cc_version=2"},{"type":"text","text":"You are a Claude agent, built on Anthropic's Claude Agent SDK."}]}"#;
        assert!(MessageBody::parse(cc).unwrap().with_identity(ID).is_none());
        let s = br#"{"system":"You are Claude Code, Anthropic's official CLI for Claude. More."}"#;
        assert!(MessageBody::parse(s).unwrap().with_identity(ID).is_none());
    }

    #[test]
    fn a_system_too_deep_to_read_is_left_as_it_is() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let text = format!(r#"{{"model":"m","system":[{{"type":"text","text":"mine","x":{deep}}}],"messages":[]}}"#);
        match MessageBody::parse(text.as_bytes()) {
            // Refused whole, or parsed and then never rewritten: the client's system is not replaced.
            Err(_) => {}
            Ok(body) => assert!(body.with_identity(ID).is_none()),
        }
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert!(MessageBody::parse(b"{not json").is_err());
        assert!(MessageBody::parse(b"[1,2]").is_err());
        assert!(MessageBody::parse(b"").is_err());
    }

    #[test]
    fn model_stream_and_user_are_read() {
        let b =
            Peek::parse(br#"{"model":"claude-x","stream":true,"metadata":{"user_id":"u1"},"messages":[]}"#).unwrap();
        assert_eq!(b, Peek { model: Some("claude-x".into()), stream: true, user_id: Some("u1".into()) });
        assert_eq!(Peek::parse(br#"{"model":7,"stream":"yes"}"#).unwrap(), Peek::default());
        for bad in [&b"{not json"[..], b"[1,2]", b"", b"\"x\""] {
            assert!(Peek::parse(bad).is_err(), "{bad:?}");
        }
        let not_object = Peek::parse(b"[1]").unwrap_err().to_string();
        assert!(not_object.contains("expected a JSON object"), "{not_object}");
    }
}
