//! Who may use the gateway: client API keys (only their SHA-256 stored, compared in constant time), roles
//! and permissions, per-key limits (requests/min, input tokens/min, concurrency), and the audit log.
//! Keys live in memory for the hot path and are reloaded from the store each second.

pub mod admin;
mod keys;
pub mod totp;
mod window;

pub use window::MinuteWindow;

/// The source a connection or attempt counts against: all of loopback is one machine (any local program
/// can pick any 127.x address), an IPv6 client owns its /64.
pub fn source(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip.to_canonical() {
        ip if ip.is_loopback() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

pub use keys::{
    ClientKey, ClientKeys, KeyCheck, NewKey, NewKeyError, Permission, Role, SpendBook, audit, generate_key, hash_key,
    key_listing, parse_expiry, periods,
};
