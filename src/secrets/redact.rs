//! Finding and masking secrets in text that leaves the process or is kept: payloads, error texts from
//! token endpoints. One set of patterns for all of them.

use std::ops::Range;

use regex::Regex;

pub const MARK: &str = "[REDACTED]";

/// Fields whose string value is a secret, in any case and with `_`, `-` or no separator (`accessToken`,
/// `refresh_token`, `client-secret`), at any depth of escaping (`\"token\": \"…\"` inside a JSON string).
const SECRET_FIELD: &str = r#"(?i)\\*"(?:x-api-key|api[_-]?key|authorization|proxy-authorization|(?:access|refresh|id)[_-]?token|token|client[_-]?secret|password|passphrase|secret|private[_-]?key|session[_-]?key|cookie|code[_-]?verifier)\\*"\s*:\s*(\\*)""#;

/// Built-in patterns: a named group `s` marks the part to mask, else the whole match is masked.
const SECRET_PATTERNS: &[&str] = &[
    r"sk-ant-[A-Za-z0-9_\-]+",
    r"sy-[A-Za-z0-9_\-]{20,}",
    r"(?i)bearer\s+[A-Za-z0-9._~+/=\-]+",
    // Credentials in a URL: scheme://user:password@host.
    r"(?i)\b[a-z][a-z0-9+.\-]*://(?P<s>[^/\s:@]+:[^/\s@]+)@",
];

/// `Basic` credentials: base64 of `user:password` (checked after decoding, so prose is left alone).
const BASIC: &str = r"(?i)\bbasic\s+(?P<s>[A-Za-z0-9+/]{4,}={0,2})";

/// The built-in patterns and any extra ones.
#[derive(Debug)]
pub struct Redactor {
    patterns: Vec<Regex>,
    field: Regex,
    basic: Regex,
}

impl Redactor {
    /// The built-in patterns plus `extra` regexes (their whole match is masked).
    pub fn new(extra: &[String]) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for pattern in SECRET_PATTERNS.iter().map(|p| (*p).to_owned()).chain(extra.iter().cloned()) {
            patterns.push(Regex::new(&pattern).map_err(|e| format!("bad redaction pattern {pattern:?}: {e}"))?);
        }
        let field = Regex::new(SECRET_FIELD).map_err(|e| e.to_string())?;
        let basic = Regex::new(BASIC).map_err(|e| e.to_string())?;
        Ok(Self { patterns, field, basic })
    }

    /// The built-in patterns alone.
    pub fn builtin() -> Option<&'static Redactor> {
        static BUILTIN: std::sync::LazyLock<Option<Redactor>> = std::sync::LazyLock::new(|| Redactor::new(&[]).ok());
        BUILTIN.as_ref()
    }

    /// Redact text: every secret becomes `[REDACTED]` (a JSON field keeps its name). A stream's text
    /// deltas are reassembled first, so a key split over several events is found and masked in each.
    pub fn redact(&self, text: &str) -> String {
        let text = if text.starts_with("event:") || text.starts_with("data:") {
            self.redact_deltas(text)
        } else {
            text.to_owned()
        };
        mask(&text, &self.spans(&text))
    }

    /// Byte ranges of `text` that hold secrets, sorted and merged.
    fn spans(&self, text: &str) -> Vec<Range<usize>> {
        let mut spans = Vec::new();
        for re in &self.patterns {
            spans.extend(re.captures_iter(text).filter_map(|c| c.name("s").or_else(|| c.get(0)).map(|m| m.range())));
        }
        for c in self.basic.captures_iter(text) {
            let Some(m) = c.name("s") else { continue };
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD.decode(m.as_str()).unwrap_or_default();
            if decoded.contains(&b':') {
                spans.push(m.range());
            }
        }
        for c in self.field.captures_iter(text) {
            let (Some(all), Some(escapes)) = (c.get(0), c.get(1)) else { continue };
            spans.push(all.end()..string_end(text, all.end(), escapes.len()));
        }
        spans.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
        for span in spans.into_iter().filter(|r| !r.is_empty()) {
            match merged.last_mut() {
                Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
                _ => merged.push(span),
            }
        }
        merged
    }

    /// Mask secrets that only appear once a stream's deltas (`text`, `partial_json`, `thinking`) of one
    /// content block are joined: each piece loses its part of the secret, the first one gets the mark.
    fn redact_deltas(&self, text: &str) -> String {
        let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
        let mut blocks: std::collections::BTreeMap<(u64, &'static str), Vec<Piece>> = std::collections::BTreeMap::new();
        for (at, line) in lines.iter().enumerate() {
            let Some(data) = line.strip_prefix("data:") else { continue };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(data.trim_start()) else { continue };
            if event["type"] != "content_block_delta" {
                continue;
            }
            let index = event["index"].as_u64().unwrap_or(0);
            for field in ["text", "partial_json", "thinking"] {
                if let Some(piece) = event["delta"][field].as_str() {
                    let piece = piece.to_owned();
                    blocks.entry((index, field)).or_default().push((at, event.clone(), piece));
                }
            }
        }
        for ((_, field), pieces) in blocks {
            let joined: String = pieces.iter().map(|(_, _, piece)| piece.as_str()).collect();
            let spans = self.spans(&joined);
            if spans.is_empty() {
                continue;
            }
            let mut offset = 0;
            for (at, mut event, piece) in pieces {
                let range = offset..offset + piece.len();
                offset = range.end;
                let mut kept = String::with_capacity(piece.len());
                for (i, ch) in piece.char_indices() {
                    let pos = range.start + i;
                    // The mark goes where the secret starts; pieces that carry it on just lose their part.
                    match spans.iter().find(|s| s.contains(&pos)) {
                        Some(span) if span.start == pos => kept.push_str(MARK),
                        Some(_) => {}
                        None => kept.push(ch),
                    }
                }
                if kept == piece {
                    continue;
                }
                event["delta"][field] = serde_json::Value::String(kept);
                if let Ok(json) = serde_json::to_string(&event) {
                    lines[at] = format!("data: {json}");
                }
            }
        }
        lines.join("\n")
    }
}

/// Where a JSON string value that starts at `from` ends, when its opening quote had `escapes` backslashes
/// before it (0 at the top level, 1 inside one string, 3 inside two): at the first quote with the same
/// escaping, or with less (an enclosing string ended); the end of the text when it was cut.
fn string_end(text: &str, from: usize, escapes: usize) -> usize {
    let bytes = text.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate().skip(from) {
        match b {
            b'\\' => run += 1,
            b'"' if run < escapes || run % (2 * escapes + 2) == escapes => return i - run.min(escapes),
            _ => run = 0,
        }
    }
    text.len()
}

/// One delta of a stream: its line, its event, and its text.
type Piece = (usize, serde_json::Value, String);

/// `text` with each span replaced by the mark.
fn mask(text: &str, spans: &[Range<usize>]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.start]);
        out.push_str(MARK);
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn token_fields_in_any_spelling_and_escaping_are_redacted() {
        let p = Redactor::new(&[]).unwrap();
        let text = r#"{"accessToken":"A1","refreshToken": "R1","token":"T1","client_secret":"C1","Password":"P\"1x","n":"ok",
            "content":"{\"refresh_token\": \"R2\", \"deep\": \"{\\\"token\\\": \\\"T3\\\"}\"}","input_tokens":5}"#;
        let red = p.redact(text);
        for gone in ["A1", "R1", "T1", "C1", "P\\\"1x", "1x", "R2", "T3"] {
            assert!(!red.contains(gone), "{gone} left in {red}");
        }
        assert!(red.contains(r#""n":"ok""#) && red.contains(r#""input_tokens":5"#), "{red}");
        assert!(red.contains(r#""accessToken":"[REDACTED]""#), "{red}");
        assert!(red.contains(r#"\"refresh_token\": \"[REDACTED]\""#), "the nested quotes stay: {red}");
    }

    #[test]
    fn basic_auth_and_url_credentials_are_redacted_but_prose_is_not() {
        let p = Redactor::new(&[]).unwrap();
        let red = p
            .redact("Authorization: Basic dXNlcjpodW50ZXIy and https://bob:hunter2@example.com/x, basic understanding");
        assert!(!red.contains("dXNlcjpodW50ZXIy") && !red.contains("hunter2"), "{red}");
        assert!(red.contains("https://[REDACTED]@example.com/x") && red.contains("basic understanding"), "{red}");
    }

    #[test]
    fn a_key_split_across_stream_deltas_is_redacted_in_every_piece() {
        let p = Redactor::new(&[]).unwrap();
        let delta = |i: u32, t: &str| {
            let event = serde_json::json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": t}});
            format!("event: content_block_delta\ndata: {event}\n\n")
        };
        let json_delta = |t: &str| {
            let event = serde_json::json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": t}});
            format!("event: content_block_delta\ndata: {event}\n\n")
        };
        let stream = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\"}}\n\n{}{}{}{}{}{}",
            delta(0, "your key is sk-an"),
            delta(0, "t-api03-SECRETPART"),
            delta(0, "TWO and more"),
            json_delta("{\"tok"),
            json_delta("en\": \"HIDDEN"),
            json_delta("VALUE\"}"),
        );
        let red = p.redact(&stream);
        for gone in ["SECRETPART", "TWO", "t-api03", "HIDDEN", "VALUE"] {
            assert!(!red.contains(gone), "{gone} left in {red}");
        }
        assert!(red.contains("your key is [REDACTED]") && red.contains(" and more"), "{red}");
        assert_eq!(red.matches("event: content_block_delta").count(), 6, "the events stay: {red}");
    }
}
