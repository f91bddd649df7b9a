//! Retry policy: which outcomes are retried and how long to wait. Pure functions, so the
//! schedule can be tested without a clock.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::DeliveryConfig;

/// What an HTTP status means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Delivered,
    /// Try again later: 408, 425, 429, 5xx, and 3xx (redirects are never followed, and a
    /// temporary redirect may go away).
    Retryable,
    /// The receiver refused for good: the other 4xx.
    Rejected,
    /// 410 Gone: the receiver asks us to stop; the webhook is disabled.
    Gone,
}

pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Delivered,
        410 => StatusClass::Gone,
        408 | 425 | 429 => StatusClass::Retryable,
        400..=499 => StatusClass::Rejected,
        _ => StatusClass::Retryable,
    }
}

/// The retry schedule of one webhook.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    schedule: Vec<Duration>,
    jitter_percent: u8,
    max_attempts: u32,
    max_retry_after: Duration,
}

impl RetryPolicy {
    /// The tenant's schedule, limited to `max_attempts` attempts when the webhook sets it
    /// (past the end of the schedule its last delay repeats).
    pub fn new(config: &DeliveryConfig, max_attempts: Option<u32>) -> Self {
        let default_attempts = config.retry_schedule.len() as u32 + 1;
        RetryPolicy {
            schedule: config.retry_schedule.clone(),
            jitter_percent: config.retry_jitter_percent,
            max_attempts: max_attempts.unwrap_or(default_attempts).max(1),
            max_retry_after: config.max_retry_after,
        }
    }

    /// The policy of `webhook`: its own retry schedule if it sets one (with the tenant's
    /// jitter and `Retry-After` cap), else the tenant's; its `max_attempts` if set.
    pub fn for_webhook(config: &DeliveryConfig, webhook: &crate::store::WebhookRecord) -> Self {
        match &webhook.retry_schedule_ms {
            None => RetryPolicy::new(config, webhook.max_attempts),
            Some(schedule) => {
                let config = DeliveryConfig {
                    retry_schedule: schedule
                        .iter()
                        .copied()
                        .map(Duration::from_millis)
                        .collect(),
                    ..config.clone()
                };
                RetryPolicy::new(&config, webhook.max_attempts)
            }
        }
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// How long to wait after `attempts_made` attempts have failed, or `None` when the
    /// delivery has had all its attempts. A `Retry-After` from the receiver lengthens the
    /// scheduled delay up to `max_retry_after`; it never shortens it.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts || self.schedule.is_empty() {
            return None;
        }
        let index = (attempts_made.max(1) as usize - 1).min(self.schedule.len() - 1);
        let scheduled = jitter(self.schedule[index], self.jitter_percent, rng);
        // A receiver may ask for more time, never for less: a `Retry-After: 1` answered to
        // every attempt would otherwise spend the whole schedule (a day and more) in seconds.
        Some(match retry_after {
            Some(wait) => scheduled.max(wait.min(self.max_retry_after)),
            None => scheduled,
        })
    }
}

/// `base` ± `percent`%, uniformly.
fn jitter(base: Duration, percent: u8, rng: &mut impl Rng) -> Duration {
    if percent == 0 || base.is_zero() {
        return base;
    }
    let spread = f64::from(percent) / 100.0;
    let factor = rng.random_range((1.0 - spread)..=(1.0 + spread));
    base.mul_f64(factor.max(0.0))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(schedule: &[u64], jitter: u8) -> DeliveryConfig {
        DeliveryConfig {
            retry_schedule: schedule.iter().map(|s| Duration::from_secs(*s)).collect(),
            retry_jitter_percent: jitter,
            ..DeliveryConfig::default()
        }
    }

    #[test]
    fn statuses_are_classified_as_documented() {
        assert_eq!(classify_status(200), StatusClass::Delivered);
        assert_eq!(classify_status(204), StatusClass::Delivered);
        for retryable in [301, 408, 425, 429, 500, 502, 503] {
            assert_eq!(
                classify_status(retryable),
                StatusClass::Retryable,
                "{retryable}"
            );
        }
        for rejected in [400, 401, 403, 404, 422] {
            assert_eq!(
                classify_status(rejected),
                StatusClass::Rejected,
                "{rejected}"
            );
        }
        assert_eq!(classify_status(410), StatusClass::Gone);
    }

    #[test]
    fn the_default_schedule_gives_eight_attempts() {
        let policy = RetryPolicy::new(&DeliveryConfig::default(), None);
        let mut rng = rand::rng();
        let delays: Vec<_> = (1..=8)
            .map(|n| policy.next_delay(n, None, &mut rng))
            .collect();
        assert!(delays[..7].iter().all(Option::is_some));
        assert_eq!(delays[7], None);
        let first = delays[0].unwrap();
        assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6));
    }

    #[test]
    fn retry_after_lengthens_the_delay_never_shortens_it_and_is_clamped() {
        let policy = RetryPolicy::new(&config(&[5], 0), Some(5));
        let mut rng = rand::rng();
        assert_eq!(
            policy.next_delay(1, Some(Duration::from_secs(20)), &mut rng),
            Some(Duration::from_secs(20))
        );
        for shorter in [0, 2] {
            assert_eq!(
                policy.next_delay(1, Some(Duration::from_secs(shorter)), &mut rng),
                Some(Duration::from_secs(5))
            );
        }
        assert_eq!(
            policy.next_delay(1, Some(Duration::from_secs(86_400)), &mut rng),
            Some(Duration::from_secs(3600))
        );
        // The cap does not shorten a longer schedule either.
        let policy = RetryPolicy::new(&config(&[7200], 0), Some(5));
        assert_eq!(
            policy.next_delay(1, Some(Duration::from_secs(86_400)), &mut rng),
            Some(Duration::from_secs(7200))
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    proptest! {
        #[test]
        fn delays_stay_within_the_jitter_band_and_the_schedule_ends(
            schedule in proptest::collection::vec(1u64..100_000, 1..10),
            jitter in 0u8..=100,
            max_attempts in proptest::option::of(1u32..20),
        ) {
            let policy = RetryPolicy::new(&config(&schedule, jitter), max_attempts);
            let mut rng = rand::rng();
            let limit = policy.max_attempts();
            for made in 1..limit {
                let delay = policy.next_delay(made, None, &mut rng).expect("not yet exhausted");
                let base = schedule[(made as usize - 1).min(schedule.len() - 1)] as f64;
                let spread = f64::from(jitter) / 100.0;
                let secs = delay.as_secs_f64();
                prop_assert!(secs >= base * (1.0 - spread) - 1e-6 && secs <= base * (1.0 + spread) + 1e-6);
            }
            prop_assert_eq!(policy.next_delay(limit, None, &mut rng), None);
        }
    }
}
