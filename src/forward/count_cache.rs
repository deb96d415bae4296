//! A short-lived cache of `count_tokens` answers: editor extensions send the same body dozens of times a
//! second, and each one would otherwise take an upstream round trip and a slot of some account's limits.
//! Keyed by the client key and a digest of everything that decides the answer (path, version and beta
//! headers, body); bounded in entries and bytes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Most answers kept, and most bytes of them (an answer is `{"input_tokens":N}`, a few dozen bytes).
const MAX_ENTRIES: usize = 4_096;
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Largest answer worth keeping.
pub const MAX_ANSWER: usize = 16 * 1024;

#[derive(Debug)]
pub struct CountCache {
    ttl: Duration,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<[u8; 32], (Instant, Bytes)>,
    bytes: usize,
}

impl CountCache {
    /// `None` when `ttl` is zero (caching off).
    pub fn new(ttl: Duration) -> Option<Self> {
        (!ttl.is_zero()).then(|| Self { ttl, entries: Mutex::new(Entries::default()) })
    }

    /// The key of a request: who asks, and everything that decides the answer.
    pub fn key(client: Option<&str>, path_and_query: &str, headers: &[Option<&str>], body: &[u8]) -> [u8; 32] {
        let mut digest = Sha256::new();
        for part in [client.unwrap_or("").as_bytes(), path_and_query.as_bytes()]
            .into_iter()
            .chain(headers.iter().map(|h| h.unwrap_or("").as_bytes()))
            .chain([body])
        {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        digest.finalize().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh answer for `key`, if one is kept.
    pub fn get(&self, key: &[u8; 32]) -> Option<Bytes> {
        let entries = self.lock();
        entries.map.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, body)| body.clone())
    }

    /// Keep `body` (a successful answer) for `key`: expired answers go first, then the oldest.
    pub fn put(&self, key: [u8; 32], body: Bytes) {
        if body.len() > MAX_ANSWER {
            return;
        }
        let mut entries = self.lock();
        if entries.map.len() >= MAX_ENTRIES || entries.bytes + body.len() > MAX_BYTES {
            let ttl = self.ttl;
            entries.map.retain(|_, (at, _)| at.elapsed() < ttl);
            entries.bytes = entries.map.values().map(|(_, b)| b.len()).sum();
            while entries.map.len() >= MAX_ENTRIES || entries.bytes + body.len() > MAX_BYTES {
                let Some(oldest) = entries.map.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| *k) else { break };
                if let Some((_, gone)) = entries.map.remove(&oldest) {
                    entries.bytes -= gone.len();
                }
            }
        }
        entries.bytes += body.len();
        if let Some((_, old)) = entries.map.insert(key, (Instant::now(), body)) {
            entries.bytes -= old.len();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_are_kept_per_key_and_bounded() {
        let cache = CountCache::new(Duration::from_secs(60)).unwrap();
        let k = |client: &str, body: &[u8]| CountCache::key(Some(client), "/v1/messages/count_tokens", &[None], body);
        cache.put(k("a", b"{}"), Bytes::from_static(b"{\"input_tokens\":3}"));
        assert_eq!(cache.get(&k("a", b"{}")).unwrap(), &b"{\"input_tokens\":3}"[..]);
        assert!(cache.get(&k("b", b"{}")).is_none(), "another client key");
        assert!(cache.get(&k("a", b"{ }")).is_none(), "another body");
        for i in 0..(MAX_ENTRIES + 10) {
            cache.put(k("a", i.to_string().as_bytes()), Bytes::from_static(b"1"));
        }
        assert!(cache.len() <= MAX_ENTRIES);
        cache.put(k("big", b""), Bytes::from(vec![b'x'; MAX_ANSWER + 1]));
        assert!(cache.get(&k("big", b"")).is_none(), "too large to keep");
        assert!(CountCache::new(Duration::ZERO).is_none());
        let quick = CountCache::new(Duration::from_nanos(1)).unwrap();
        quick.put(k("a", b""), Bytes::from_static(b"1"));
        assert!(quick.get(&k("a", b"")).is_none(), "expired");
    }
}
