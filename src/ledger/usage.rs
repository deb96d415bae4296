//! Token usage read from answers as they pass: the JSON `usage` of a whole reply, or the SSE
//! `message_start` / `message_delta` events of a stream, parsed line by line without holding the stream.

/// Tokens and the error (if any) an answer reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_creation: i64,
    /// `error.type` of an error answer or SSE `error` event.
    pub error_type: Option<String>,
}

/// The parts of an answer or event that carry tokens or an error; everything else is skipped unread.
#[derive(Debug, Default, serde::Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    message: Option<EventMessage>,
    #[serde(default)]
    usage: Option<Tokens>,
    #[serde(default)]
    error: Option<EventError>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct EventMessage {
    #[serde(default)]
    usage: Option<Tokens>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct EventError {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Tokens {
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cache_read_input_tokens: Option<i64>,
    cache_creation_input_tokens: Option<i64>,
}

impl Usage {
    fn absorb(&mut self, usage: &Tokens) {
        if let Some(n) = usage.input_tokens.filter(|n| *n > 0) {
            self.input = n;
        }
        if let Some(n) = usage.output_tokens {
            self.output = n;
        }
        if let Some(n) = usage.cache_read_input_tokens.filter(|n| *n > 0) {
            self.cache_read = n;
        }
        if let Some(n) = usage.cache_creation_input_tokens.filter(|n| *n > 0) {
            self.cache_creation = n;
        }
    }
}

/// Usage of a complete JSON answer.
pub fn json_usage(body: &[u8]) -> Usage {
    let mut usage = Usage::default();
    if let Ok(answer) = serde_json::from_slice::<Event<'_>>(body) {
        if let Some(tokens) = &answer.usage {
            usage.absorb(tokens);
        }
        usage.error_type = answer.error.and_then(|e| e.kind);
    }
    usage
}

/// Longest SSE line kept while waiting for its end; longer ones (huge deltas) are skipped, not buffered.
const MAX_LINE: usize = 256 * 1024;

/// Reads SSE chunks as they are forwarded.
#[derive(Debug, Default)]
pub struct SseTap {
    line: Vec<u8>,
    skipping: bool,
    /// What the current event's `event:` name says, when it had one: only a few names are worth parsing.
    named: Option<Named>,
    pub usage: Usage,
}

/// An SSE event by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// `message_start`, `message_delta`: only their `usage` is read.
    Tokens,
    Error,
    /// Deltas, pings and the rest: skipped.
    Other,
}

impl Named {
    fn of(name: &[u8]) -> Self {
        match name.trim_ascii() {
            b"message_start" | b"message_delta" => Self::Tokens,
            b"error" => Self::Error,
            _ => Self::Other,
        }
    }
}

/// The first `usage` object of an event, parsed alone. `message_start` and `message_delta` carry exactly
/// one, and nothing before it in either holds a key of that name (a `"` inside a JSON string is escaped,
/// so an unescaped `"usage"` is a key), so the rest of the event need not be read: a stream's two parses
/// were a twelfth of a proxied request's instructions. `None` when there is none or it does not parse; the
/// caller then reads the whole event.
fn first_usage(data: &[u8]) -> Option<Tokens> {
    use serde::Deserialize;
    let mut from = 0;
    while let Some(at) = memchr::memmem::find(&data[from..], b"\"usage\"") {
        let at = from + at;
        from = at + b"\"usage\"".len();
        if at > 0 && data[at - 1] == b'\\' {
            continue;
        }
        let value = data[from..].trim_ascii_start().strip_prefix(b":")?;
        return Tokens::deserialize(&mut serde_json::Deserializer::from_slice(value)).ok();
    }
    None
}

impl SseTap {
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (head, tail) = rest.split_at(pos);
            if !self.skipping {
                if self.line.is_empty() {
                    self.line_done(head);
                } else {
                    let mut line = std::mem::take(&mut self.line);
                    line.extend_from_slice(head);
                    self.line_done(&line);
                }
            }
            self.line.clear();
            self.skipping = false;
            rest = &tail[1..];
        }
        if !self.skipping {
            if self.line.len() + rest.len() > MAX_LINE {
                self.line.clear();
                self.skipping = true;
            } else {
                self.line.extend_from_slice(rest);
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        if line.is_empty() || line == b"\r" {
            self.named = None;
            return;
        }
        if let Some(name) = line.strip_prefix(b"event:") {
            self.named = Some(Named::of(name));
            return;
        }
        let Some(data) = line.strip_prefix(b"data:") else { return };
        // Anthropic names every event, so deltas are skipped by name; an unnamed event is looked into.
        let interesting = self.named.map_or_else(
            || {
                memchr::memmem::find(data, b"message_start").is_some()
                    || memchr::memmem::find(data, b"message_delta").is_some()
                    || memchr::memmem::find(data, b"\"error\"").is_some()
            },
            |named| named != Named::Other,
        );
        if !interesting {
            return;
        }
        if self.named == Some(Named::Tokens)
            && let Some(tokens) = first_usage(data)
        {
            self.usage.absorb(&tokens);
            return;
        }
        let Ok(event) = serde_json::from_slice::<Event<'_>>(data) else { return };
        match event.kind.as_deref() {
            Some("message_start") => {
                if let Some(tokens) = event.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    self.usage.absorb(tokens);
                }
            }
            Some("message_delta") => {
                if let Some(tokens) = &event.usage {
                    self.usage.absorb(tokens);
                }
            }
            Some("error") => self.usage.error_type = event.error.and_then(|e| e.kind),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":40,\"output_tokens\":1}}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":57}}\n\n";

    #[test]
    fn only_the_usage_object_is_read_and_an_escaped_one_is_not_it() {
        let start = br#"{"type":"message_start","message":{"id":"m","model":"claude \"usage\": {\"input_tokens\": 999}","content":[],"usage" : {"input_tokens":12,"cache_creation":{"ephemeral_5m_input_tokens":0},"output_tokens":1}}}"#;
        let tokens = first_usage(start).unwrap();
        assert_eq!((tokens.input_tokens, tokens.output_tokens), (Some(12), Some(1)));
        assert!(first_usage(br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#).is_none());
        assert!(first_usage(br#"{"usage": [1, 2]}"#).is_none(), "not an object: the whole event is read");
        let mut tap = SseTap::default();
        tap.feed(b"event: message_start\ndata: ");
        tap.feed(start);
        tap.feed(b"\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n");
        assert_eq!((tap.usage.input, tap.usage.output), (12, 7));
    }

    #[test]
    fn usage_from_a_stream_split_anywhere() {
        for split in 0..STREAM.len() {
            let mut tap = SseTap::default();
            tap.feed(&STREAM.as_bytes()[..split]);
            tap.feed(&STREAM.as_bytes()[split..]);
            assert_eq!(
                tap.usage,
                Usage { input: 12, output: 57, cache_read: 40, cache_creation: 3, error_type: None },
                "split at {split}"
            );
        }
    }

    #[test]
    fn errors_and_json_replies() {
        let mut tap = SseTap::default();
        tap.feed(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n",
        );
        assert_eq!(tap.usage.error_type.as_deref(), Some("overloaded_error"));
        let u = json_usage(br#"{"usage":{"input_tokens":5,"output_tokens":7}}"#);
        assert_eq!((u.input, u.output), (5, 7));
        let e = json_usage(br#"{"type":"error","error":{"type":"rate_limit_error","message":"m"}}"#);
        assert_eq!(e.error_type.as_deref(), Some("rate_limit_error"));
    }

    #[test]
    fn unnamed_events_are_read_by_content_and_named_deltas_skipped() {
        let mut tap = SseTap::default();
        tap.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n");
        assert_eq!(tap.usage.output, 9);
        // A named event that carries no usage is not parsed, whatever its data says.
        tap.feed(b"event: content_block_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":1}}\n\n");
        assert_eq!(tap.usage.output, 9);
        // CRLF line ends work too.
        tap.feed(
            b"event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":11}}\r\n\r\n",
        );
        assert_eq!(tap.usage.output, 11);
    }

    #[test]
    fn huge_lines_are_skipped_not_buffered() {
        let mut tap = SseTap::default();
        tap.feed(b"data: ");
        tap.feed(&vec![b'x'; MAX_LINE + 10]);
        assert!(tap.line.is_empty());
        tap.feed(b"\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n");
        assert_eq!(tap.usage.output, 3);
    }
}
