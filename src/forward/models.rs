//! Model names as clients write them: operator-defined aliases (`[models.aliases]`) and the `[1m]` suffix
//! some clients put on a model to ask for the 1M-token context window, resolved before routing.

use std::collections::BTreeMap;

/// The beta flag that opens the 1M-token context window.
pub const LONG_CONTEXT_BETA: &str = "context-1m-2025-08-07";

/// The suffix that asks for it on a model name (`claude-sonnet-4-5[1m]`).
const LONG_CONTEXT_SUFFIX: &str = "[1m]";

/// Most aliases a configuration may define, and the longest name on either side.
pub const MAX_ALIASES: usize = 1_000;
pub const MAX_NAME: usize = 128;

/// What a model name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The name the upstream gets.
    pub model: String,
    /// The client asked for the long context window (`[1m]`).
    pub long_context: bool,
}

/// Aliases by name (exact, case-sensitive, as model ids are).
#[derive(Debug, Clone, Default)]
pub struct Models {
    aliases: BTreeMap<String, String>,
}

impl Models {
    pub fn new(aliases: BTreeMap<String, String>) -> Self {
        Self { aliases }
    }

    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    /// Whether a body may need resolving: aliases exist, or it mentions the suffix (a byte search, so the
    /// common case costs no parse).
    pub fn may_rewrite(&self, body: &[u8]) -> bool {
        !self.aliases.is_empty() || memchr::memmem::find(body, LONG_CONTEXT_SUFFIX.as_bytes()).is_some()
    }

    /// What `model` resolves to, or `None` when it is sent as it is (unknown models pass through).
    pub fn resolve(&self, model: &str) -> Option<Resolved> {
        let (name, long_context) = match model.strip_suffix(LONG_CONTEXT_SUFFIX) {
            Some(name) => (name.trim_end(), true),
            None => (model, false),
        };
        let target = self.aliases.get(name).map(String::as_str);
        if target.is_none() && !long_context {
            return None;
        }
        // An alias may carry the suffix itself (`opus1m = "claude-opus-4-5[1m]"`).
        let target = target.unwrap_or(name);
        let (target, suffixed) = match target.strip_suffix(LONG_CONTEXT_SUFFIX) {
            Some(t) => (t.trim_end(), true),
            None => (target, false),
        };
        Some(Resolved { model: target.to_owned(), long_context: long_context || suffixed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_the_long_context_suffix_resolve() {
        let models = Models::new(BTreeMap::from([
            ("opus".to_owned(), "claude-opus-4-5".to_owned()),
            ("big".to_owned(), "claude-sonnet-4-5[1m]".to_owned()),
        ]));
        let r = |m: &str| models.resolve(m);
        assert_eq!(r("opus"), Some(Resolved { model: "claude-opus-4-5".into(), long_context: false }));
        assert_eq!(r("opus[1m]"), Some(Resolved { model: "claude-opus-4-5".into(), long_context: true }));
        assert_eq!(r("big"), Some(Resolved { model: "claude-sonnet-4-5".into(), long_context: true }));
        assert_eq!(
            r("claude-sonnet-4-5[1m]"),
            Some(Resolved { model: "claude-sonnet-4-5".into(), long_context: true })
        );
        assert_eq!(r("claude-haiku-4-5"), None, "unknown models pass through");
        assert_eq!(r("Opus"), None, "model ids are case-sensitive");
        assert!(!Models::default().may_rewrite(br#"{"model":"claude-x"}"#));
        assert!(Models::default().may_rewrite(br#"{"model":"claude-x[1m]"}"#));
    }
}
