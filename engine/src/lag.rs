//! How far each tenant's deliveries trail their due time — the delivery lag — observed as
//! attempts start (`delivery/attempt.rs`): the time between a delivery becoming due and its
//! attempt starting. It is what a growing queue looks like from outside (the queue gauges say
//! how much is waiting; this says for how long), and what the optional ingest back-pressure
//! reads: with `[quotas] max_delivery_lag_secs` set, a tenant whose deliveries trail by more
//! than that is answered `429 delivery_lag_exceeded` with `Retry-After` until they catch up.
//!
//! A tenant's lag is the largest observed over the last one to two seconds (two one-second
//! windows), so one webhook that keeps up does not hide another that trails. With no attempt
//! started for [`STALE_AFTER`], the lag reads as zero: an idle tenant is not behind, and a
//! receiver that holds every slot is bounded by the `pending_deliveries` quota instead.
//!
//! Apart from the tenants' windows, the latest attempt start says whether deliveries are
//! [`behind`](DeliveryLag::behind) right now (it started [`BEHIND_AFTER_MS`] or more after
//! it was due). Ingest reads it to choose between the lowest accept latency and the cheapest
//! group commits (`ingest.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Width of one observation window.
const WINDOW: Duration = Duration::from_secs(1);
/// With no attempt started for this long, a tenant's lag reads as zero.
pub const STALE_AFTER: Duration = Duration::from_secs(2);
/// Longest `Retry-After` the back-pressure asks for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// An attempt that starts this long after its delivery was due or later means deliveries are
/// behind. A delivery of s1 in the e2e bench, keeping pace, starts 1-2 ms after it is due.
pub const BEHIND_AFTER_MS: u64 = 5;
/// How long one late attempt start counts (an attempt on time ends it sooner): deliveries that
/// stop starting at all are not behind the producers' new events.
const BEHIND_FOR: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Windows {
    /// The last observation.
    last: Instant,
    /// Start of the current window.
    started: Instant,
    current_ms: u64,
    previous_ms: u64,
}

impl Windows {
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= WINDOW * 2 {
            self.previous_ms = 0;
            self.current_ms = 0;
            self.started = now;
        } else if elapsed >= WINDOW {
            self.previous_ms = self.current_ms;
            self.current_ms = 0;
            self.started += WINDOW;
        }
    }

    fn lag_ms(&self, now: Instant) -> u64 {
        if now.saturating_duration_since(self.last) >= STALE_AFTER {
            return 0;
        }
        let mut windows = *self;
        windows.roll(now);
        windows.current_ms.max(windows.previous_ms)
    }
}

/// Every tenant's recent delivery lag (cheap to clone, shared by the attempts, the API and
/// ingest).
#[derive(Debug, Clone)]
pub struct DeliveryLag {
    tenants: Arc<Mutex<HashMap<String, Windows>>>,
    /// Until when deliveries count as behind, in µs since `epoch` (0: not behind).
    behind_until_us: Arc<AtomicU64>,
    epoch: Instant,
}

impl Default for DeliveryLag {
    fn default() -> Self {
        DeliveryLag {
            tenants: Arc::default(),
            behind_until_us: Arc::default(),
            epoch: Instant::now(),
        }
    }
}

/// Ingest refused because the tenant's deliveries trail by more than its quota allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagExceeded {
    pub lag: Duration,
    pub limit: Duration,
    /// When to try again: the excess, at least 1 s, at most a minute.
    pub retry_after: Duration,
}

impl DeliveryLag {
    /// An attempt of `tenant` started `lag_ms` after its delivery was due.
    pub fn observe(&self, tenant: &str, lag_ms: u64) {
        let now = Instant::now();
        self.note_start(lag_ms, now);
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        match tenants.get_mut(tenant) {
            Some(windows) => {
                windows.roll(now);
                windows.current_ms = windows.current_ms.max(lag_ms);
                windows.last = now;
            }
            None => {
                tenants.insert(
                    tenant.to_string(),
                    Windows {
                        last: now,
                        started: now,
                        current_ms: lag_ms,
                        previous_ms: 0,
                    },
                );
            }
        }
    }

    /// The latest attempt start decides [`Self::behind`]; the atomic is written only when
    /// that answer changes or a late start extends it, so attempts on time share it read-only.
    fn note_start(&self, lag_ms: u64, now: Instant) {
        let until = if lag_ms >= BEHIND_AFTER_MS {
            self.micros(now + BEHIND_FOR)
        } else {
            0
        };
        if self.behind_until_us.load(Ordering::Relaxed) != until {
            self.behind_until_us.store(until, Ordering::Relaxed);
        }
    }

    /// Whether deliveries are behind: the latest attempt started [`BEHIND_AFTER_MS`] or more
    /// after it was due, within the last `BEHIND_FOR` (100 ms).
    pub fn behind(&self) -> bool {
        self.behind_at(Instant::now())
    }

    /// Deliveries behind for `how_long` from now, whatever attempts start (tests of readers).
    #[cfg(test)]
    pub(crate) fn behind_for(&self, how_long: Duration) {
        let until = self.micros(Instant::now() + how_long);
        self.behind_until_us.store(until, Ordering::Relaxed);
    }

    fn behind_at(&self, now: Instant) -> bool {
        self.micros(now) < self.behind_until_us.load(Ordering::Relaxed)
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// `tenant`'s lag now (zero when it started no attempt lately).
    pub fn of(&self, tenant: &str) -> Duration {
        let tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let lag_ms = tenants
            .get(tenant)
            .map_or(0, |windows| windows.lag_ms(Instant::now()));
        Duration::from_millis(lag_ms)
    }

    /// The largest lag of any tenant now (what `/readyz` shows; names no tenant). Forgets
    /// tenants gone stale, so the map holds only tenants delivering lately.
    pub fn worst(&self) -> Duration {
        let now = Instant::now();
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.retain(|_, windows| now.saturating_duration_since(windows.last) < STALE_AFTER);
        let worst = tenants.values().map(|w| w.lag_ms(now)).max().unwrap_or(0);
        Duration::from_millis(worst)
    }

    /// `Err` when `limit_secs` is set (non-zero) and `tenant`'s lag is above it.
    pub fn check(&self, tenant: &str, limit_secs: u64) -> Result<(), LagExceeded> {
        if limit_secs == 0 {
            return Ok(());
        }
        let limit = Duration::from_secs(limit_secs);
        let lag = self.of(tenant);
        if lag <= limit {
            return Ok(());
        }
        let retry_after = (lag - limit).clamp(Duration::from_secs(1), MAX_RETRY_AFTER);
        Err(LagExceeded {
            lag,
            limit,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_largest_of_the_last_window_and_idle_tenants_read_zero() {
        let lag = DeliveryLag::default();
        assert_eq!(lag.of("acme"), Duration::ZERO);
        lag.observe("acme", 40_000);
        lag.observe("acme", 5);
        lag.observe("globex", 12);
        assert_eq!(lag.of("acme"), Duration::from_secs(40));
        assert_eq!(lag.of("globex"), Duration::from_millis(12));
        assert_eq!(lag.worst(), Duration::from_secs(40));

        // Windows roll: a window older than two is forgotten, and so is a stale tenant.
        let mut windows = lag.tenants.lock().unwrap();
        let acme = windows.get_mut("acme").unwrap();
        acme.started -= Duration::from_millis(1500);
        acme.roll(Instant::now());
        assert_eq!((acme.previous_ms, acme.current_ms), (40_000, 0));
        acme.last -= STALE_AFTER;
        drop(windows);
        assert_eq!(lag.of("acme"), Duration::ZERO);
        assert_eq!(lag.worst(), Duration::from_millis(12));
        assert!(!lag.tenants.lock().unwrap().contains_key("acme"));
    }

    #[test]
    fn deliveries_are_behind_from_a_late_start_until_a_start_on_time_or_a_while_without() {
        let lag = DeliveryLag::default();
        assert!(!lag.behind(), "nothing started yet");
        lag.observe("acme", BEHIND_AFTER_MS - 1);
        assert!(!lag.behind());
        lag.observe("acme", BEHIND_AFTER_MS);
        assert!(lag.behind());
        // Any tenant's start on time ends it: the engine is starting attempts promptly.
        lag.observe("globex", 0);
        assert!(!lag.behind());
        // A late start counts for a while, then no longer without another one.
        let before = Instant::now();
        lag.observe("globex", 40_000);
        let after = Instant::now();
        assert!(lag.behind_at(before + BEHIND_FOR / 2));
        assert!(!lag.behind_at(after + BEHIND_FOR + Duration::from_millis(1)));
        // The tenants' windows do not decide it: globex's 40 s stays in its window.
        lag.observe("acme", 1);
        assert!(!lag.behind());
        assert_eq!(lag.of("globex"), Duration::from_secs(40));
    }

    #[test]
    fn the_check_refuses_only_above_a_set_limit_and_asks_for_the_excess() {
        let lag = DeliveryLag::default();
        lag.observe("acme", 45_000);
        assert_eq!(lag.check("acme", 0), Ok(()), "0 turns the check off");
        assert_eq!(lag.check("acme", 60), Ok(()));
        assert_eq!(lag.check("globex", 1), Ok(()));
        let refused = lag.check("acme", 30).unwrap_err();
        assert_eq!(refused.lag, Duration::from_secs(45));
        assert_eq!(refused.retry_after, Duration::from_secs(15));
        lag.observe("acme", 500_000);
        assert_eq!(
            lag.check("acme", 30).unwrap_err().retry_after,
            MAX_RETRY_AFTER
        );
        lag.observe("globex", 2_100);
        assert_eq!(
            lag.check("globex", 2).unwrap_err().retry_after,
            Duration::from_secs(1)
        );
    }
}
