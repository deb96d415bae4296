//! Property tests of routing over many accounts with an injected clock: random sequences of answers
//! (rate-limit rejections with resets, header-less 429s, successes) and requests, checked against what the
//! router promises. No sleeps: every call takes the time it happens at.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use super::{Account, Router, Strategy as Routing, Unavailable, Want};
use crate::anthropic::RateLimitInfo;

#[derive(Debug, Clone)]
enum Step {
    /// Account `i` answered 429 with unified headers: rejected until `reset_in` seconds from now.
    Rejected { i: usize, reset_in: i64 },
    /// Account `i` answered 429 without rate-limit headers.
    Bare429 { i: usize },
    /// Account `i` answered 200.
    Ok { i: usize },
    /// A request with conversation key `conversation` (none when `None`) after `gap_ms`.
    Route { gap_ms: i64, conversation: Option<u8>, opus: bool },
}

fn step(accounts: usize) -> impl proptest::strategy::Strategy<Value = Step> {
    prop_oneof![
        1 => (0..accounts, 1i64..900).prop_map(|(i, reset_in)| Step::Rejected { i, reset_in }),
        1 => (0..accounts).prop_map(|i| Step::Bare429 { i }),
        1 => (0..accounts).prop_map(|i| Step::Ok { i }),
        4 => (0i64..120_000, proptest::option::of(0u8..4), any::<bool>())
            .prop_map(|(gap_ms, conversation, opus)| Step::Route { gap_ms, conversation, opus }),
    ]
}

fn strategy() -> impl proptest::strategy::Strategy<Value = Routing> {
    prop_oneof![Just(Routing::Session), Just(Routing::RoundRobin), Just(Routing::Weighted), Just(Routing::LeastUsed)]
}

fn rejected_until(reset_secs: i64) -> RateLimitInfo {
    let mut h = HeaderMap::new();
    h.insert("anthropic-ratelimit-unified-status", HeaderValue::from_static("rejected"));
    h.insert("anthropic-ratelimit-unified-reset", HeaderValue::from_str(&reset_secs.to_string()).unwrap());
    RateLimitInfo::parse(&h)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A rejected account is never offered before its reset; a request is refused only when no account is
    /// usable, with a time in the future to come back; and a conversation stays on its account for as long
    /// as that account is usable.
    #[test]
    fn benched_accounts_wait_for_their_reset_and_conversations_stay(
        n in 1usize..6,
        priorities in proptest::collection::vec(0i64..3, 6),
        strategy in strategy(),
        steps in proptest::collection::vec(step(6), 1..120),
    ) {
        let accounts: Vec<Arc<Account>> = (0..n).map(|i| Account::for_tests(&format!("a{i}"), priorities[i])).collect();
        let router = Router::new(strategy, 5 * 60_000);
        let mut now = 1_800_000_000_000i64;
        // At least until then, per account (the bench adds jitter on top and is capped at a day).
        let mut benched_until = vec![0i64; n];
        let mut conversations: HashMap<String, String> = HashMap::new();
        for s in steps {
            match s {
                Step::Rejected { i, reset_in } => {
                    let i = i % n;
                    let reset_secs = now / 1000 + reset_in;
                    accounts[i].observe_at(429, &rejected_until(reset_secs), None, now);
                    benched_until[i] = benched_until[i].max(reset_secs * 1000);
                }
                Step::Bare429 { i } => {
                    accounts[i % n].observe_at(429, &RateLimitInfo::default(), None, now);
                }
                Step::Ok { i } => {
                    accounts[i % n].observe_at(200, &RateLimitInfo::default(), None, now);
                }
                Step::Route { gap_ms, conversation, opus } => {
                    now += gap_ms;
                    let want = Want {
                        family: opus.then(|| "opus".to_owned()),
                        affinity: conversation.map(|c| format!("conversation-{c}")),
                        ..Want::default()
                    };
                    match router.order(&accounts, &want, &[], now) {
                        Ok(order) => {
                            prop_assert!(!order.is_empty());
                            for a in &order {
                                let i: usize = a.id[1..].parse().unwrap();
                                prop_assert!(benched_until[i] <= now, "{} offered {} ms before its reset", a.id, benched_until[i] - now);
                            }
                            if let Some(key) = &want.affinity
                                && let Some(id) = conversations.get(key)
                                && let Some(kept) = accounts.iter().find(|a| &a.id == id)
                                && kept.unusable(want.family.as_deref(), now).is_none()
                            {
                                prop_assert_eq!(&order[0].id, id, "the conversation moved while its account was usable");
                            }
                            router.served(&order[0], &want, now);
                            if let Some(key) = want.affinity {
                                conversations.insert(key, order[0].id.clone());
                            }
                        }
                        Err(Unavailable::AllLimited { until_ms, .. }) => {
                            prop_assert!(until_ms > now, "all limited, but until the past");
                            let none_usable = accounts.iter().all(|a| a.unusable(want.family.as_deref(), now).is_some());
                            prop_assert!(none_usable, "refused while an account was usable");
                        }
                        Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
                    }
                }
            }
        }
    }
}
