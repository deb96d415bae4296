//! Wire knowledge about the Anthropic API: which headers travel, how an OAuth request must look, and the
//! Claude Code identity. Pure functions; no I/O and nothing else of ours.

mod headers;
mod identity;
mod ratelimit;

pub use headers::{beta_list, forward_request_header, merge_beta, named_by_connection, pass_back_response_header};
pub use identity::{IdentityMode, MessageBody, Peek, carries_identity};
pub use ratelimit::{RateLimitInfo, Verdict, Window, classify, is_entitlement_error, model_family, parse_timestamp_ms};

/// Sentences that open a Claude Code or Agent SDK system prompt.
pub const KNOWN_IDENTITIES: [&str; 2] = [
    "You are Claude Code, Anthropic's official CLI for Claude.",
    "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
];
