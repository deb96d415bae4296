//! Routing policy: which accounts may take a request and in what order. Returns ordered candidates (first
//! choice first); the forwarder walks them. Runs on in-memory state only, in microseconds.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::pool::Account;
use crate::store::AccountStatus;

/// How the first choice is made among the best available accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Stay on one account until it is limited or the session duration ends (keeps the prompt cache warm).
    Session,
    /// Next account each request.
    RoundRobin,
    /// Round-robin in proportion to each account's weight.
    Weighted,
    /// Lowest 5-hour utilization, ties by fewest recent requests.
    LeastUsed,
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "session" | "sticky" => Ok(Self::Session),
            "round-robin" | "roundrobin" | "rr" => Ok(Self::RoundRobin),
            "weighted" | "weighted-round-robin" => Ok(Self::Weighted),
            "least-used" | "leastused" => Ok(Self::LeastUsed),
            other => Err(format!("unknown strategy {other:?}: expected session, round-robin, weighted or least-used")),
        }
    }
}

/// What keeps a conversation on one account (`SWITCHYARD_AFFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    /// Client key, session and agent: each agent's conversation sticks, a session's subagents spread.
    #[default]
    SessionAgent,
    /// Client key and session: a session's subagents share the parent's account.
    Session,
    /// No stickiness: every request follows the strategy.
    Off,
}

impl FromStr for Affinity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace(' ', "").as_str() {
            "session+agent" | "session-agent" | "agent" => Ok(Self::SessionAgent),
            "session" => Ok(Self::Session),
            "off" | "none" => Ok(Self::Off),
            other => Err(format!("unknown affinity {other:?}: expected session+agent, session or off")),
        }
    }
}

impl Affinity {
    /// The affinity key of a request (a digest: the client's strings may be any length, the map lives
    /// for hours), and whether it belongs to a subagent (whose first request spreads rather than joining
    /// the account the strategy sticks to). `None` without a session, or with affinity off.
    pub fn key(self, client_key: Option<&str>, session: Option<&str>, agent: Option<&str>) -> Option<(String, bool)> {
        use sha2::Digest;
        let session = session?;
        let agent = match self {
            Self::Off => return None,
            Self::Session => None,
            Self::SessionAgent => agent,
        };
        let mut digest = sha2::Sha256::new();
        // Length-prefixed parts: ("ab", "c") and ("a", "bc") never collide.
        for part in [client_key.unwrap_or(""), session, agent.unwrap_or("")] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part.as_bytes());
        }
        let digest = digest.finalize();
        let mut key = String::with_capacity(32);
        for b in &digest[..16] {
            use std::fmt::Write;
            let _ = write!(key, "{b:02x}");
        }
        Some((key, agent.is_some()))
    }
}

/// What a request asks of the router.
#[derive(Debug, Clone, Default)]
pub struct Want {
    /// Model family of the request (`opus`, …), for model-scoped limits.
    pub family: Option<String>,
    /// Conversation key (see [`Affinity::key`]).
    pub affinity: Option<String>,
    /// The conversation is a subagent's: a new one goes to the next account in turn instead of the one
    /// the session strategy sticks to, so a fan-out spreads (each agent then sticks).
    pub spread: bool,
    /// `x-switchyard-account`: only this account.
    pub pinned: Option<String>,
    /// The client key may use only these accounts.
    pub allowed: Option<Vec<String>>,
}

/// Why no account can take a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Unavailable {
    NoAccounts,
    /// Every candidate is rate-limited; the soonest is back at this epoch ms.
    AllLimited {
        until_ms: i64,
        detail: String,
    },
    /// No account is usable and waiting will not help (needs login, paused, missing).
    NoneUsable {
        detail: String,
    },
    /// The client's key may not use the account it asked for.
    Forbidden {
        detail: String,
    },
    /// The client pinned an account that does not exist (its mistake, not the gateway's state).
    UnknownAccount {
        name: String,
    },
}

impl Unavailable {
    pub fn message(&self) -> String {
        match self {
            Self::NoAccounts => {
                "no accounts configured: add one with `switchyard auth login` or `switchyard accounts add`".to_owned()
            }
            Self::AllLimited { until_ms, detail } => {
                format!("all accounts are rate-limited; the first is back at {} ({detail})", format_ms(*until_ms))
            }
            Self::NoneUsable { detail } => format!("no usable account: {detail}"),
            Self::Forbidden { detail } => detail.clone(),
            Self::UnknownAccount { name } => {
                format!(
                    "no account named {name:?} (asked for with x-switchyard-account); see `switchyard accounts list`"
                )
            }
        }
    }
}

impl Unavailable {
    /// The message for a caller who may not see the accounts (a `user` key): what happened and whether
    /// waiting helps, without account names (often e-mail addresses).
    pub fn generic_message(&self) -> String {
        match self {
            Self::AllLimited { until_ms, .. } => {
                format!("all accounts are rate-limited; the first is back at {}", format_ms(*until_ms))
            }
            Self::NoneUsable { .. } => "no account can serve this request now; the gateway's log says why".to_owned(),
            Self::NoAccounts | Self::Forbidden { .. } | Self::UnknownAccount { .. } => self.message(),
        }
    }
}

pub(crate) fn format_ms(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// Affinity entries beyond this many are pruned (oldest first).
const MAX_AFFINITY: usize = 10_000;

#[derive(Debug)]
pub struct Router {
    strategy: Strategy,
    session_ms: i64,
    counter: AtomicU64,
    /// The session strategy's current account and when its session began.
    session: Mutex<Option<(String, i64)>>,
    /// Conversation key → (account id, last used).
    affinity: Mutex<HashMap<String, (String, i64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Router {
    pub fn new(strategy: Strategy, session_ms: i64) -> Self {
        Self {
            strategy,
            session_ms,
            counter: AtomicU64::new(0),
            session: Mutex::new(None),
            affinity: Mutex::new(HashMap::new()),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Accounts that may take the request now, first choice first, skipping `exclude` (ids already tried).
    pub fn order(
        &self,
        accounts: &[Arc<Account>],
        want: &Want,
        exclude: &[String],
        now_ms: i64,
    ) -> Result<Vec<Arc<Account>>, Unavailable> {
        let family = want.family.as_deref();
        let restricted: Vec<Arc<Account>>;
        let accounts = match &want.allowed {
            Some(allowed) => {
                if let Some(name) = want.pinned.as_ref().filter(|n| !allowed.contains(n)) {
                    return Err(Unavailable::Forbidden {
                        detail: format!("this API key may not use account {name:?}"),
                    });
                }
                restricted = accounts.iter().filter(|a| allowed.contains(&a.name)).cloned().collect();
                &restricted[..]
            }
            None => accounts,
        };
        if let Some(name) = &want.pinned {
            let Some(account) = accounts.iter().find(|a| &a.name == name) else {
                return Err(Unavailable::UnknownAccount { name: name.clone() });
            };
            return match account.unusable(family, now_ms) {
                None if !exclude.contains(&account.id) => Ok(vec![account.clone()]),
                None => Err(Unavailable::NoneUsable { detail: format!("{name} failed") }),
                Some(why) => Err(unavailable(&[(account, why)])),
            };
        }
        if accounts.is_empty() {
            return Err(Unavailable::NoAccounts);
        }
        let mut available = Vec::with_capacity(accounts.len());
        let mut refused = Vec::new();
        for account in accounts {
            if exclude.contains(&account.id) {
                continue;
            }
            match account.unusable(family, now_ms) {
                None => available.push(account.clone()),
                Some(why) => refused.push((account, why)),
            }
        }
        if available.is_empty() {
            if refused.is_empty() {
                return Err(Unavailable::NoneUsable { detail: "every account failed this request".to_owned() });
            }
            return Err(unavailable(&refused));
        }
        // Preference: lower priority value first, then accounts without a warning. Stable: ties keep the
        // configured order.
        available.sort_by_cached_key(|a| a.preference());
        let first = self.first_choice(&available, want, now_ms);
        if first > 0 {
            let chosen = available.remove(first);
            available.insert(0, chosen);
        }
        Ok(available)
    }

    /// Index in `available` (sorted by preference) of the first choice.
    fn first_choice(&self, available: &[Arc<Account>], want: &Want, now_ms: i64) -> usize {
        if let Some(key) = &want.affinity
            && let Some((id, _)) = lock(&self.affinity).get(key)
            && let Some(i) = available.iter().position(|a| &a.id == id)
        {
            return i;
        }
        let best = available[0].preference();
        let group = available.iter().take_while(|a| a.preference() == best).count();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        if want.spread {
            return usize::try_from(n % group as u64).unwrap_or(0);
        }
        match self.strategy {
            Strategy::Session => {
                let session = lock(&self.session).clone();
                match session
                    .and_then(|(id, started)| available[..group].iter().position(|a| a.id == id).map(|i| (i, started)))
                {
                    Some((i, started)) if now_ms - started < self.session_ms => i,
                    // The session ran its course: move on to the next account of the group.
                    Some((i, _)) => (i + 1) % group,
                    None => 0,
                }
            }
            Strategy::RoundRobin => usize::try_from(n % group as u64).unwrap_or(0),
            Strategy::Weighted => {
                let weights: Vec<u64> = available[..group].iter().map(|a| a.weight().max(1)).collect();
                let mut ticket = n % weights.iter().sum::<u64>();
                weights
                    .iter()
                    .position(|w| {
                        if ticket < *w {
                            true
                        } else {
                            ticket -= w;
                            false
                        }
                    })
                    .unwrap_or(0)
            }
            Strategy::LeastUsed => {
                let mut best_i = 0;
                let mut best_key = (f64::INFINITY, u64::MAX);
                for (i, a) in available[..group].iter().enumerate() {
                    let key = a.load(now_ms);
                    if key.0 < best_key.0 || (key.0 == best_key.0 && key.1 < best_key.1) {
                        best_i = i;
                        best_key = key;
                    }
                }
                best_i
            }
        }
    }

    /// Remember which account served: the conversation stays there, and the session moves to it.
    pub fn served(&self, account: &Account, want: &Want, now_ms: i64) {
        if want.pinned.is_some() {
            return;
        }
        if let Some(key) = &want.affinity {
            let mut map = lock(&self.affinity);
            if map.len() >= MAX_AFFINITY && !map.contains_key(key) {
                let cutoff = now_ms - self.session_ms;
                map.retain(|_, (_, last)| *last > cutoff);
                if map.len() >= MAX_AFFINITY
                    && let Some(oldest) = map.iter().min_by_key(|(_, (_, last))| *last).map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
            map.insert(key.clone(), (account.id.clone(), now_ms));
        }
        // A subagent's account is its own: the next new conversation still goes where the session was.
        if self.strategy == Strategy::Session && !want.spread {
            let mut session = lock(&self.session);
            if session.as_ref().is_none_or(|(id, _)| id != &account.id) {
                *session = Some((account.id.clone(), now_ms));
            }
        }
    }
}

/// Why an account cannot serve now.
#[derive(Debug, Clone, PartialEq)]
pub enum Unusable {
    Status(AccountStatus),
    LimitedUntil(i64),
}

fn unavailable(refused: &[(&Arc<Account>, Unusable)]) -> Unavailable {
    let detail = refused
        .iter()
        .map(|(a, why)| match why {
            Unusable::Status(AccountStatus::NeedsLogin) => format!("{} needs a new login", a.name),
            Unusable::Status(AccountStatus::Paused) => format!("{} is paused", a.name),
            Unusable::Status(AccountStatus::Active) => format!("{} is unavailable", a.name),
            Unusable::LimitedUntil(t) => format!("{} is rate-limited until {}", a.name, format_ms(*t)),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let soonest = refused
        .iter()
        .filter_map(|(_, why)| match why {
            Unusable::LimitedUntil(t) => Some(*t),
            Unusable::Status(_) => None,
        })
        .min();
    match soonest {
        Some(until_ms) => Unavailable::AllLimited { until_ms, detail },
        None => Unavailable::NoneUsable { detail },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn affinity_keys_separate_keys_sessions_and_agents() {
        let key = |mode: Affinity, k: Option<&str>, s: Option<&str>, a: Option<&str>| mode.key(k, s, a);
        let both = Affinity::SessionAgent;
        let base = key(both, Some("k1"), Some("s1"), None).unwrap();
        assert!(!base.1, "no agent: not a subagent");
        assert_ne!(key(both, Some("k2"), Some("s1"), None).unwrap().0, base.0, "another client key");
        assert_ne!(key(both, Some("k1"), Some("s2"), None).unwrap().0, base.0, "another session");
        let agent = key(both, Some("k1"), Some("s1"), Some("a1")).unwrap();
        assert!(agent.1 && agent.0 != base.0, "a subagent has its own conversation");
        assert_ne!(key(both, Some("k1s"), Some("1"), None).unwrap().0, base.0, "parts never run together");
        assert_eq!(key(Affinity::Session, Some("k1"), Some("s1"), Some("a1")).unwrap(), base, "agent ignored");
        assert_eq!(key(Affinity::Off, Some("k1"), Some("s1"), None), None);
        assert_eq!(key(both, Some("k1"), None, Some("a1")), None, "no session, no affinity");
        assert_eq!("session+agent".parse(), Ok(Affinity::SessionAgent));
        assert!("sideways".parse::<Affinity>().is_err());
    }

    #[test]
    fn strategy_names() {
        assert_eq!("round-robin".parse::<Strategy>().unwrap(), Strategy::RoundRobin);
        assert_eq!("least_used".parse::<Strategy>().unwrap(), Strategy::LeastUsed);
        assert!("fastest".parse::<Strategy>().is_err());
    }
}
