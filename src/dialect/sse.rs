//! An incremental reader of `text/event-stream`: bytes in, whole events (name, data) out, however the
//! bytes were split. Bounded: an event larger than the cap is dropped rather than held.

/// Largest event kept (a tool call's arguments arrive in many small deltas; one event is small).
const MAX_EVENT: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub struct SseReader {
    line: Vec<u8>,
    name: String,
    data: Vec<u8>,
    oversized: bool,
}

impl SseReader {
    /// Take in `chunk`; `each` is called with every event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(&str, &[u8])) {
        let mut rest = chunk;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (head, tail) = rest.split_at(pos);
            if self.line.len() + head.len() <= MAX_EVENT {
                self.line.extend_from_slice(head);
            } else {
                self.oversized = true;
            }
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, &mut each);
            rest = &tail[1..];
        }
        if self.line.len() + rest.len() <= MAX_EVENT {
            self.line.extend_from_slice(rest);
        } else {
            self.oversized = true;
        }
    }

    fn line_done(&mut self, line: &[u8], each: &mut impl FnMut(&str, &[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.data.is_empty() && !self.oversized {
                each(&self.name, &self.data);
            }
            self.name.clear();
            self.data.clear();
            self.oversized = false;
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => (&line[..i], line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..])),
            None => (line, &b""[..]),
        };
        match field {
            b"event" => self.name = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    self.oversized = true;
                } else {
                    if !self.data.is_empty() {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_whole_however_the_bytes_are_split() {
        let stream = b"event: message_start\ndata: {\"a\":1}\n\n: comment\n\nevent: ping\r\ndata: {}\r\n\r\ndata: x\ndata: y\n\n";
        let want: Vec<(String, Vec<u8>)> = vec![
            ("message_start".into(), b"{\"a\":1}".to_vec()),
            ("ping".into(), b"{}".to_vec()),
            (String::new(), b"x\ny".to_vec()),
        ];
        for split in 0..stream.len() {
            let mut reader = SseReader::default();
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                reader.feed(part, |name, data| got.push((name.to_owned(), data.to_vec())));
            }
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn an_oversized_event_is_dropped_not_held() {
        let mut reader = SseReader::default();
        let mut got = 0;
        let big = vec![b'x'; MAX_EVENT + 10];
        reader.feed(b"data: ", |_, _| got += 1);
        reader.feed(&big, |_, _| got += 1);
        reader.feed(b"\n\ndata: ok\n\n", |_, data| {
            assert_eq!(data, b"ok");
            got += 1;
        });
        assert_eq!(got, 1);
        assert!(reader.line.len() <= MAX_EVENT);
    }
}
