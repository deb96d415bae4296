//! Entry points shared by the coverage-guided fuzz targets (`fuzz/`, run with `cargo fuzz`) and the corpus
//! replay in the test suite (`tests/fuzz_corpus.rs`): each feeds hostile bytes to one parser that takes
//! outside input and checks what must hold for any input, beyond "does not panic".
//!
//! Not an API: the names follow the targets, and the checks panic on purpose (that is how a fuzzer
//! reports a finding).
#![allow(clippy::panic)]

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// One target's entry point.
pub type Target = fn(&[u8]);

/// Every target, by name: the fuzz crate's binaries and the corpus folders are named after these.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_body", request_body),
    ("sse_tap", sse_tap),
    ("json_usage", json_usage),
    ("ratelimit_headers", ratelimit_headers),
    ("usage_answer", usage_answer),
    ("pasted_code", pasted_code),
    ("client_auth", client_auth),
    ("config_file", config_file),
    ("openai_request", openai_request),
    ("openai_answer", openai_answer),
    ("admin_input", admin_input),
    ("backup_file", backup_file),
    ("redact", redact),
];

/// Split `data` at an offset chosen by its first byte, so one input also tests a second chunking.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let at = data.first().map_or(0, |b| usize::from(*b) % (data.len() + 1));
    data.split_at(at)
}

/// Headers from `name: value` lines, as far as they are valid (hyper refuses the rest before we see them).
fn headers(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n').take(64) {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(name, value);
        }
    }
    map
}

/// The request-body peek and the one-level message parse; a body both accept keeps its other fields when
/// the model is rewritten, and the rewritten body is read back with the new model.
pub fn request_body(data: &[u8]) {
    let peek = crate::anthropic::Peek::parse(data);
    if let Ok(peek) = &peek {
        let _ = peek.session();
    }
    let Ok(body) = crate::anthropic::MessageBody::parse(data) else { return };
    let _ = body.with_identity("You are Claude Code, Anthropic's official CLI for Claude.");
    let rewritten = body.with_field("model", "\"claude-sonnet-4-5\"");
    if peek.is_ok() {
        let again = crate::anthropic::Peek::parse(&rewritten)
            .unwrap_or_else(|e| panic!("a rewritten body does not parse: {e}"));
        assert_eq!(again.model.as_deref(), Some("claude-sonnet-4-5"), "the rewritten model is not read back");
    }
}

/// The SSE usage tap: any chunking of the same bytes gives the same usage.
pub fn sse_tap(data: &[u8]) {
    let mut whole = crate::ledger::SseTap::default();
    whole.feed(data);
    let (a, b) = split(data);
    let mut parts = crate::ledger::SseTap::default();
    parts.feed(a);
    parts.feed(b);
    assert_eq!(whole.usage, parts.usage, "the usage depends on how the stream was split");
}

/// The usage read from a JSON answer.
pub fn json_usage(data: &[u8]) {
    let _ = crate::ledger::json_usage(data);
}

/// Rate-limit headers, and the verdict drawn from them for every status the failover loop sees.
pub fn ratelimit_headers(data: &[u8]) {
    let info = crate::anthropic::RateLimitInfo::parse(&headers(data));
    for window in ["5h", "7d", "7d_opus", "7d_sonnet", "overage"] {
        if let Some(u) = info.utilization(window) {
            assert!(u.is_finite() && u >= 0.0, "utilization {u} of {window}");
        }
    }
    for status in [200, 401, 403, 429, 500, 529] {
        let _ = crate::anthropic::classify(status, &info);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::anthropic::parse_timestamp_ms(text);
        let _ = crate::anthropic::model_family(text);
    }
    let _ = crate::anthropic::is_entitlement_error(data);
}

/// The OAuth usage endpoint's answer and the profile's, as the server reads them.
pub fn usage_answer(data: &[u8]) {
    if let Ok(report) = serde_json::from_slice::<crate::oauth::UsageReport>(data) {
        for (_, utilization, _) in report.windows() {
            assert!(!utilization.is_nan(), "a window's utilization is NaN");
        }
    }
    if let Ok(profile) = serde_json::from_slice::<crate::oauth::Profile>(data) {
        let _ = profile.plan();
    }
    let _ = serde_json::from_slice::<crate::oauth::TokenResponse>(data);
}

/// A pasted `CODE#STATE`: when accepted, both halves are non-empty and came from the input.
pub fn pasted_code(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((code, state)) = crate::oauth::split_pasted(text) {
        assert!(!code.is_empty() && !state.is_empty());
        assert!(text.contains(&code) && text.contains(&state));
    }
}

/// Client credentials (`x-api-key`, `Authorization: Bearer`) and the dashboard's session cookie.
pub fn client_auth(data: &[u8]) {
    let map = headers(data);
    if let Some(key) = crate::server::presented_key(&map) {
        assert_eq!(key, key.trim(), "a presented key keeps surrounding spaces");
        let _ = crate::access::hash_key(key);
    }
    let _ = crate::server::cookie_value(&map);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::access::parse_expiry(text, 1_700_000_000_000);
        let _ = crate::server::parse_allowed_ips(text);
    }
}

/// The config file, parsed and validated as `serve` does (no environment, no flags): an error is one line.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = crate::config::Config::from_file_text(text, std::path::PathBuf::from("/nonexistent/switchyard")) {
        let message = e.to_string();
        assert!(!message.contains('\n'), "a config error is not one line: {message:?}");
    }
}

/// Both OpenAI dialects, with default settings.
fn openai_dialects() -> [Box<dyn crate::dialect::Dialect>; 2] {
    let settings = crate::dialect::openai::OpenAiSettings::default();
    [
        Box::new(crate::dialect::openai::OpenAiChat::new(settings.clone())),
        Box::new(crate::dialect::responses::OpenAiResponses::new(settings)),
    ]
}

/// OpenAI requests (Chat Completions and Responses) into Anthropic's: what comes out is a JSON object the
/// forwarder's own peek reads.
pub fn openai_request(data: &[u8]) {
    for dialect in openai_dialects() {
        if let Ok(t) = dialect.request(data) {
            crate::anthropic::Peek::parse(&t.body).unwrap_or_else(|e| {
                panic!("{} made a body the forwarder cannot read: {e}", dialect.name());
            });
        }
    }
}

/// Anthropic answers back into OpenAI's: a JSON answer, and the same bytes as a stream, cut or finished.
pub fn openai_answer(data: &[u8]) {
    let request = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let input = br#"{"model":"gpt-4o","stream":true,"input":"hi"}"#;
    for (dialect, body) in openai_dialects().into_iter().zip([&request[..], &input[..]]) {
        let Ok(translated) = dialect.request(body) else { panic!("{}: the fixed request is refused", dialect.name()) };
        if let Ok(answer) = dialect.answer(data, &translated) {
            serde_json::from_slice::<serde_json::Value>(&answer)
                .unwrap_or_else(|e| panic!("{}: a translated answer is not JSON: {e}", dialect.name()));
        }
        let mut stream = dialect.stream(&translated);
        let mut reader = crate::dialect::SseReader::default();
        let (a, b) = split(data);
        for chunk in [a, b] {
            reader.feed(chunk, |name, event| {
                let _ = stream.event(name, event);
            });
        }
        let _ = stream.finish(data.len().is_multiple_of(2));
        let _ = dialect.error(429, "rate_limit_error", &String::from_utf8_lossy(data));
    }
}

/// Every admin API body and query.
pub fn admin_input(data: &[u8]) {
    crate::server::read_any_admin_input(data);
}

/// A backup file's envelope (format, KDF bounds, fields) and the accounts inside one.
pub fn backup_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::secrets::envelope_ok(text, crate::secrets::BACKUP_FORMAT);
    }
    let _ = serde_json::from_slice::<Vec<crate::accounts::PlainAccount>>(data);
}

/// The log redactor: what it returns never contains a token it was shown.
pub fn redact(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let secret = "sk-ant-oat01-FUZZSECRETFUZZSECRETFUZZSECRET";
    let line = format!("{text} Authorization: Bearer {secret} {text}");
    let Some(redactor) = crate::secrets::redact::Redactor::builtin() else {
        panic!("the built-in patterns do not compile")
    };
    let out = redactor.redact(&line);
    assert!(!out.contains(secret), "a bearer token survived redaction");
}
