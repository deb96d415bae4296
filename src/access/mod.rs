//! Who may use the gateway: client API keys (only their SHA-256 stored, compared in constant time), roles
//! and permissions, per-key limits (requests/min, input tokens/min, concurrency), and the audit log.
//! Keys live in memory for the hot path and are reloaded from the store each second.

pub mod admin;
mod keys;
pub mod totp;

pub use keys::{
    ClientKey, ClientKeys, KeyCheck, NewKey, NewKeyError, Permission, Role, SpendBook, audit, generate_key, hash_key,
    key_listing, parse_expiry, periods,
};
