//! A per-minute limit that holds over every 60-second window: counts in one-second buckets, with the clock
//! passed in (so tests drive it) and no I/O under its lock.
//!
//! Why not a token bucket (governor's GCRA): with a burst of the whole limit it refills one unit every
//! `60/limit` s, so a full burst followed by the steady rate admits almost twice the limit within one
//! minute. A client key's `rpm` promises at most that many requests in any minute.

use std::sync::Mutex;

/// One-second buckets kept: the current second and the 60 before it, so the buckets consulted always
/// cover the whole 60 s before `now`, wherever `now` falls within its second.
const SPAN: usize = 61;

#[derive(Debug)]
pub struct MinuteWindow {
    limit: u64,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    /// The second `counts[second % SPAN]` belongs to, per bucket.
    seconds: [i64; SPAN],
    counts: [u64; SPAN],
}

impl MinuteWindow {
    /// `None` for a limit of zero or less (no limit).
    pub fn new(limit: i64) -> Option<Self> {
        let limit = u64::try_from(limit).ok().filter(|l| *l > 0)?;
        Some(Self { limit, state: Mutex::new(Buckets { seconds: [i64::MIN; SPAN], counts: [0; SPAN] }) })
    }

    /// Take `n` units at `now_ms`, or say how many whole seconds until they would fit (60 when `n` alone is
    /// over the limit: it can never pass).
    pub fn take(&self, n: u64, now_ms: i64) -> Result<(), u64> {
        if n > self.limit {
            return Err(60);
        }
        let now = now_ms.div_euclid(1000);
        let mut b = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let oldest = now - (SPAN as i64 - 1);
        // Buckets of seconds that left the window (or that a clock step back put in the future) are stale.
        let live = |second: i64| second >= oldest && second <= now;
        let used: u64 = (0..SPAN).filter(|i| live(b.seconds[*i])).map(|i| b.counts[i]).sum();
        if used + n <= self.limit {
            let slot = usize::try_from(now.rem_euclid(SPAN as i64)).unwrap_or(0);
            if b.seconds[slot] != now {
                b.seconds[slot] = now;
                b.counts[slot] = 0;
            }
            b.counts[slot] += n;
            return Ok(());
        }
        // Wait until enough of the oldest seconds have left the window.
        let mut freed = 0;
        for second in oldest..=now {
            let slot = usize::try_from(second.rem_euclid(SPAN as i64)).unwrap_or(0);
            if b.seconds[slot] == second {
                freed += b.counts[slot];
            }
            if used - freed + n <= self.limit {
                return Err(u64::try_from(second - oldest + 1).unwrap_or(1));
            }
        }
        Err(60)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the arrivals, no 60-second window ever holds more than the limit, and a refusal's wait
        /// is honest: after it, the same request fits (when nothing else arrived).
        #[test]
        fn no_minute_ever_holds_more_than_the_limit(
            limit in 1i64..40,
            gaps in proptest::collection::vec(0i64..4_000, 1..400),
            sizes in proptest::collection::vec(1u64..4, 400),
        ) {
            let window = MinuteWindow::new(limit).unwrap();
            let mut now = 1_700_000_000_000i64;
            let mut admitted: Vec<(i64, u64)> = Vec::new();
            for (gap, n) in gaps.iter().zip(&sizes) {
                now += gap;
                match window.take(*n, now) {
                    Ok(()) => admitted.push((now, *n)),
                    Err(wait) if *n > u64::try_from(limit).unwrap() => prop_assert_eq!(wait, 60),
                    Err(wait) => {
                        prop_assert!((1..=61).contains(&wait));
                        let probe = MinuteWindow::new(limit).unwrap();
                        for (at, m) in admitted.iter().filter(|(at, _)| *at > now - 61_000) {
                            probe.take(*m, *at).unwrap();
                        }
                        let later = (now.div_euclid(1000) + i64::try_from(wait).unwrap()) * 1000;
                        prop_assert!(probe.take(*n, later).is_ok(), "still refused {wait} s later");
                    }
                }
            }
            for (start, _) in &admitted {
                let inside: u64 = admitted.iter().filter(|(at, _)| *at >= *start && *at < start + 60_000).map(|(_, n)| n).sum();
                prop_assert!(inside <= u64::try_from(limit).unwrap(), "{inside} in the minute from {start}");
            }
        }
    }

    #[test]
    fn a_full_burst_then_the_steady_rate_stays_within_one_minute() {
        // The case a token bucket gets wrong: 10 at once, then one every 6 s.
        let window = MinuteWindow::new(10).unwrap();
        let t0 = 1_700_000_000_000;
        for _ in 0..10 {
            window.take(1, t0).unwrap();
        }
        let mut extra = 0;
        for i in 1..10 {
            extra += u32::from(window.take(1, t0 + i * 6_000).is_ok());
        }
        assert_eq!(extra, 0, "more than 10 within one minute");
        assert!(window.take(1, t0 + 61_000).is_ok(), "the minute has passed");
        assert_eq!(window.take(11, t0 + 61_000), Err(60), "over the whole limit: never");
        assert!(MinuteWindow::new(0).is_none());
    }

    #[test]
    fn a_clock_step_back_does_not_panic_or_free_the_window() {
        let window = MinuteWindow::new(2).unwrap();
        let t0 = 1_700_000_000_000;
        window.take(2, t0).unwrap();
        let _ = window.take(1, t0 - 3_600_000);
        assert!(window.take(1, t0).is_err(), "still full at t0");
    }
}
