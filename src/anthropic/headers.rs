//! Which client headers reach the upstream and which upstream headers return to the client.

/// Whether a client request header may be forwarded upstream.
///
/// Credentials, cookies, hop-by-hop headers and anything that identifies the client's network are dropped;
/// `content-length` is recomputed, and `accept-encoding` is dropped so the upstream answers uncompressed
/// bytes that can be inspected while passing through.
pub fn forward_request_header(name: &str) -> bool {
    const DROP: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
        "cookie",
        "authorization",
        "x-api-key",
        "forwarded",
        "via",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "origin",
        "referer",
        "expect",
    ];
    const DROP_PREFIX: &[&str] = &["x-forwarded-", "cf-", "x-switchyard-"];
    // `http` header names are lowercase already; other callers get the same answer either way.
    let lower;
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        lower = name.to_ascii_lowercase();
        lower.as_str()
    } else {
        name
    };
    !DROP.contains(&name) && !DROP_PREFIX.iter().any(|p| name.starts_with(p))
}

/// The header names a `Connection` header lists (lowercase): hop-by-hop for this one connection, so they
/// are dropped in both directions like the standard hop-by-hop headers (RFC 9110 §7.6.1).
pub fn named_by_connection<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty() && name != "close" && name != "keep-alive")
        .collect()
}

/// Whether an upstream response header may be passed back to the client.
///
/// Everything the client may need passes (`request-id`, every `anthropic-ratelimit-*`, `retry-after`,
/// `content-type`); hop-by-hop headers and upstream cookies, which belong to the account, do not.
pub fn pass_back_response_header(name: &str) -> bool {
    const DROP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "alt-svc",
    ];
    !DROP.iter().any(|d| d.eq_ignore_ascii_case(name))
}

/// The client's comma-separated `anthropic-beta` list with `required` added once.
pub fn merge_beta(client: Option<&str>, required: &str) -> String {
    beta_list(client, Some(required), None).unwrap_or_default()
}

/// The `anthropic-beta` list to send: the client's flags in their order, each once, then `add` unless
/// already there, without `remove` (the OAuth beta never goes with an API key). `None` when empty.
pub fn beta_list(client: Option<&str>, add: Option<&str>, remove: Option<&str>) -> Option<String> {
    let mut flags: Vec<&str> = Vec::new();
    for flag in client.unwrap_or("").split(',').map(str::trim).chain(add) {
        if !flag.is_empty() && Some(flag) != remove && !flags.contains(&flag) {
            flags.push(flag);
        }
    }
    (!flags.is_empty()).then(|| flags.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_is_merged_once() {
        assert_eq!(merge_beta(None, "oauth-2025-04-20"), "oauth-2025-04-20");
        assert_eq!(merge_beta(Some("a, b"), "oauth-2025-04-20"), "a,b,oauth-2025-04-20");
        assert_eq!(merge_beta(Some("oauth-2025-04-20,a"), "oauth-2025-04-20"), "oauth-2025-04-20,a");
        assert_eq!(merge_beta(Some("b, a,b ,a"), "o"), "b,a,o", "the client's order, each once");
        assert_eq!(beta_list(Some("x,oauth-2025-04-20,y"), None, Some("oauth-2025-04-20")).as_deref(), Some("x,y"));
        assert_eq!(beta_list(Some("oauth-2025-04-20"), None, Some("oauth-2025-04-20")), None);
        assert_eq!(beta_list(Some(" , "), None, None), None);
    }

    #[test]
    fn identifying_headers_stay_home() {
        for h in ["Authorization", "x-api-key", "Cookie", "X-Forwarded-For", "host", "x-switchyard-account"] {
            assert!(!forward_request_header(h), "{h} must not be forwarded");
        }
        for h in ["anthropic-version", "anthropic-beta", "content-type", "user-agent", "x-stainless-os"] {
            assert!(forward_request_header(h), "{h} must be forwarded");
        }
        assert!(pass_back_response_header("anthropic-ratelimit-unified-status"));
        assert!(pass_back_response_header("request-id"));
        assert!(!pass_back_response_header("set-cookie"));
    }
}

#[cfg(test)]
mod connection_tests {
    use super::*;

    #[test]
    fn connection_names_its_hop_by_hop_headers() {
        let named = named_by_connection(["keep-alive, X-Secret-Hop", "close,  x-other "].into_iter());
        assert_eq!(named, ["x-secret-hop", "x-other"]);
        assert!(named_by_connection(std::iter::empty()).is_empty());
        assert!(!forward_request_header("expect"));
    }
}
