//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30-second steps, 6 digits) for the optional second
//! factor of password logins, and the base32 that authenticator apps read.

use hmac::{Hmac, Mac};
use sha1::Sha1;

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(char::from(ALPHABET[((buffer >> (bits - 5)) & 31) as usize]));
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase())? as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buffer >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

/// The 6-digit code for `secret` at `unix_secs`.
pub fn code(secret: &[u8], unix_secs: u64) -> String {
    let counter = unix_secs / 30;
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else { return String::new() };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let value = u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
    format!("{:06}", value % 1_000_000)
}

/// Whether `given` is the code of the current step or one step either side (clock drift).
pub fn verify(secret: &[u8], given: &str, unix_secs: u64) -> bool {
    verify_step(secret, given, unix_secs, 0).is_some()
}

/// The 30-second step whose code `given` is (the previous, current or next one), if it is later than
/// `after`: a code accepted once is not accepted again, nor is one older than it.
pub fn verify_step(secret: &[u8], given: &str, unix_secs: u64, after: u64) -> Option<u64> {
    use subtle::ConstantTimeEq;
    let given = given.trim();
    [unix_secs.saturating_sub(30), unix_secs, unix_secs + 30]
        .iter()
        .map(|t| t / 30)
        .filter(|step| *step > after)
        .find(|step| bool::from(code(secret, step * 30).as_bytes().ct_eq(given.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        // RFC 6238 appendix B, SHA-1, last six digits.
        assert_eq!(code(secret, 59), "287082");
        assert_eq!(code(secret, 1_111_111_109), "081804");
        assert_eq!(code(secret, 2_000_000_000), "279037");
        assert!(verify(secret, "287082", 59 + 30));
        assert!(!verify(secret, "287082", 59 + 90));
    }

    #[test]
    fn base32_round_trip() {
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_decode("MZXW6YTBOI").unwrap_or_default(), b"foobar");
        let bytes: Vec<u8> = (0..20).collect();
        assert_eq!(base32_decode(&base32_encode(&bytes)).unwrap_or_default(), bytes);
    }
}
