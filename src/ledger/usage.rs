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

fn int(v: &serde_json::Value, key: &str) -> Option<i64> {
    v.get(key).and_then(serde_json::Value::as_i64)
}

impl Usage {
    fn absorb(&mut self, usage: &serde_json::Value) {
        if let Some(n) = int(usage, "input_tokens").filter(|n| *n > 0) {
            self.input = n;
        }
        if let Some(n) = int(usage, "output_tokens") {
            self.output = n;
        }
        if let Some(n) = int(usage, "cache_read_input_tokens").filter(|n| *n > 0) {
            self.cache_read = n;
        }
        if let Some(n) = int(usage, "cache_creation_input_tokens").filter(|n| *n > 0) {
            self.cache_creation = n;
        }
    }
}

/// Usage of a complete JSON answer.
pub fn json_usage(body: &[u8]) -> Usage {
    let mut usage = Usage::default();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(u) = v.get("usage") {
            usage.absorb(u);
        }
        usage.error_type = v.pointer("/error/type").and_then(|t| t.as_str()).map(str::to_owned);
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
    pub usage: Usage,
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
        let Some(data) = line.strip_prefix(b"data:") else { return };
        // Only the few events that carry usage or an error are parsed.
        let interesting = memchr::memmem::find(data, b"message_start").is_some()
            || memchr::memmem::find(data, b"message_delta").is_some()
            || memchr::memmem::find(data, b"\"error\"").is_some();
        if !interesting {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
        match v.get("type").and_then(|t| t.as_str()) {
            Some("message_start") => {
                if let Some(u) = v.pointer("/message/usage") {
                    self.usage.absorb(u);
                }
            }
            Some("message_delta") => {
                if let Some(u) = v.get("usage") {
                    self.usage.absorb(u);
                }
            }
            Some("error") => {
                self.usage.error_type = v.pointer("/error/type").and_then(|t| t.as_str()).map(str::to_owned);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":40,\"output_tokens\":1}}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":57}}\n\n";

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
    fn huge_lines_are_skipped_not_buffered() {
        let mut tap = SseTap::default();
        tap.feed(b"data: ");
        tap.feed(&vec![b'x'; MAX_LINE + 10]);
        assert!(tap.line.is_empty());
        tap.feed(b"\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n");
        assert_eq!(tap.usage.output, 3);
    }
}
