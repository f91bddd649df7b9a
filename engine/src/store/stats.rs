//! Statistics, as every backend reports them: per-day counts of a scope (the whole tenant, one
//! webhook or one channel), a latency histogram per day, event types per day. Pure types and
//! arithmetic; how a backend keeps the counters is its own business (`sled_store/stats.rs`,
//! `postgres/stats.rs`).
//!
//! Days are **cohorts**: everything in a day is about the deliveries created that day (their
//! outcomes so far, the latency of their attempts, whenever those happened), so pending =
//! created − delivered − failed − filtered holds per day. Retention purges rows, not counters:
//! statistics outlive the log they were counted from, up to [`STATS_HORIZON_DAYS`].
//!
//! Channels are free-form producer strings, so their scopes are bounded: per tenant and UTC
//! day, the first [`MAX_CHANNELS_PER_DAY`] distinct channels get a scope; events (and their
//! deliveries) on any further channel that day are counted in the tenant's and webhooks'
//! scopes as always, and in the tenant's channel overflow scope ([`StatsScope::ChannelOverflow`])
//! instead of a channel's. A day whose overflow scope counted anything is a day on which a
//! channel's own figures may be missing (the API names such days).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::WebhookId;

pub const MS_PER_DAY: u64 = 86_400_000;
/// Longest window a stats query may ask for, in days.
pub const MAX_STATS_DAYS: u32 = 90;
/// Counter days older than this are dropped by retention: no query can read them.
pub const STATS_HORIZON_DAYS: u32 = MAX_STATS_DAYS + 1;
/// Distinct event types counted per scope and day before the rest go to [`OTHER_EVENT_TYPES`].
pub const MAX_EVENT_TYPES_PER_DAY: u32 = 1000;
/// Where event types beyond [`MAX_EVENT_TYPES_PER_DAY`] are counted (not a valid event type).
pub const OTHER_EVENT_TYPES: &str = "(other)";
/// Upper bounds (inclusive, ms) of the latency histogram's buckets; one more bucket holds
/// everything slower. p95 is therefore an estimate within one bucket.
pub const LATENCY_BUCKETS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

/// Distinct channels with their own statistics scope per tenant and UTC day; events on further
/// channels count in [`StatsScope::ChannelOverflow`]. A thousand covers a gateway tenant's
/// numbers or instances while bounding a day's counter keys (a channel scope holds two
/// counters plus its event types).
pub const MAX_CHANNELS_PER_DAY: u32 = 1000;

/// The scope name of the whole tenant (a webhook's scope is its id).
pub const TENANT_SCOPE: &str = "*";
/// The first character of a channel's scope name (`#` + channel). Never in a channel (1-128 of
/// `a-z A-Z 0-9 . _ - :`), a webhook id or [`TENANT_SCOPE`].
pub const CHANNEL_SCOPE_PREFIX: &str = "#";
/// The scope name of a tenant's channel overflow: events on channels beyond
/// [`MAX_CHANNELS_PER_DAY`] (the prefix alone: no channel is empty).
pub const CHANNEL_OVERFLOW_SCOPE: &str = CHANNEL_SCOPE_PREFIX;

/// The scope name of a channel.
pub fn channel_scope(channel: &str) -> String {
    format!("{CHANNEL_SCOPE_PREFIX}{channel}")
}

/// Whether a scope name is a channel's (not the overflow).
pub fn is_channel_scope(scope: &str) -> bool {
    scope.len() > CHANNEL_SCOPE_PREFIX.len() && scope.starts_with(CHANNEL_SCOPE_PREFIX)
}

/// The UTC day (days since the epoch) of a time in ms.
pub fn day_of(ms: u64) -> u32 {
    (ms / MS_PER_DAY) as u32
}

/// Whose statistics.
#[derive(Debug, Clone, Copy)]
pub enum StatsScope<'a> {
    Tenant,
    Webhook(&'a WebhookId),
    /// One channel of the tenant (zero on days it was beyond [`MAX_CHANNELS_PER_DAY`]).
    Channel(&'a str),
    /// Events on channels beyond [`MAX_CHANNELS_PER_DAY`], per day.
    ChannelOverflow,
}

impl StatsScope<'_> {
    /// The scope's name in the counters' keys.
    pub fn name(&self) -> Cow<'_, str> {
        match self {
            StatsScope::Tenant => Cow::Borrowed(TENANT_SCOPE),
            StatsScope::Webhook(id) => Cow::Borrowed(id.as_str()),
            StatsScope::Channel(channel) => Cow::Owned(channel_scope(channel)),
            StatsScope::ChannelOverflow => Cow::Borrowed(CHANNEL_OVERFLOW_SCOPE),
        }
    }
}

/// Attempt latencies: count, sum and max, plus a fixed-bucket histogram for percentiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    pub count: u64,
    pub sum_ms: u64,
    pub max_ms: u64,
    /// `buckets[i]` counts latencies ≤ `LATENCY_BUCKETS_MS[i]` (and above the previous bound);
    /// the last counts the rest. Empty until the first latency.
    #[serde(default)]
    pub buckets: Vec<u64>,
}

impl LatencyHistogram {
    pub fn record(&mut self, latency_ms: u64) {
        self.buckets.resize(LATENCY_BUCKETS_MS.len() + 1, 0);
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| latency_ms <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(latency_ms);
        self.max_ms = self.max_ms.max(latency_ms);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    /// Mean latency in ms; `None` without attempts.
    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms as f64 / self.count as f64)
    }

    /// Estimated `q` quantile (0 < q ≤ 1) in ms: the bucket holding the q-th latency, linearly
    /// interpolated inside it (as Prometheus' `histogram_quantile`), never above the maximum
    /// seen. `None` without attempts.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0);
        let mut below = 0u64;
        for (i, &in_bucket) in self.buckets.iter().enumerate() {
            if in_bucket == 0 || ((below + in_bucket) as f64) < rank {
                below += in_bucket;
                continue;
            }
            let lower = if i == 0 { 0 } else { LATENCY_BUCKETS_MS[i - 1] } as f64;
            let upper = LATENCY_BUCKETS_MS
                .get(i)
                .copied()
                .unwrap_or(self.max_ms)
                .min(self.max_ms) as f64;
            let upper = upper.max(lower);
            let within = (rank - below as f64) / in_bucket as f64;
            return Some(lower + (upper - lower) * within);
        }
        Some(self.max_ms as f64)
    }
}

/// Counts of a scope over some days, as the API reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsCounts {
    pub events: u64,
    pub deliveries: u64,
    pub delivered: u64,
    pub failed: u64,
    pub filtered: u64,
    pub latency: LatencyHistogram,
}

impl StatsCounts {
    /// Deliveries not in a final state yet (pending or in flight).
    pub fn pending(&self) -> u64 {
        self.deliveries
            .saturating_sub(self.delivered + self.failed + self.filtered)
    }

    /// delivered / (delivered + failed); `None` when neither happened.
    pub fn success_rate(&self) -> Option<f64> {
        let finished = self.delivered + self.failed;
        (finished > 0).then(|| self.delivered as f64 / finished as f64)
    }

    pub fn add(&mut self, other: &StatsCounts) {
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.filtered += other.filtered;
        self.latency.merge(&other.latency);
    }
}

/// One UTC day of a scope.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayStats {
    pub day: u32,
    pub counts: StatsCounts,
    pub event_types: BTreeMap<String, u64>,
}

/// The `n` most frequent event types, most frequent first (ties by name).
pub fn top_event_types(days: &[DayStats], n: usize) -> Vec<(String, u64)> {
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for day in days {
        for (event_type, count) in &day.event_types {
            *totals.entry(event_type).or_default() += count;
        }
    }
    let mut ranked: Vec<(String, u64)> = totals
        .into_iter()
        .map(|(t, c)| (t.to_string(), c))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(n);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_into_their_buckets_and_give_mean_and_max() {
        let mut h = LatencyHistogram::default();
        for ms in [0, 1, 2, 3, 40_000] {
            h.record(ms);
        }
        assert_eq!(h.count, 5);
        assert_eq!(h.sum_ms, 40_006);
        assert_eq!(h.max_ms, 40_000);
        assert_eq!(&h.buckets[..3], &[2, 1, 1]);
        assert_eq!(h.buckets[LATENCY_BUCKETS_MS.len()], 1, "overflow bucket");
        assert_eq!(h.mean_ms(), Some(40_006.0 / 5.0));
        assert_eq!(LatencyHistogram::default().mean_ms(), None);
        assert_eq!(LatencyHistogram::default().quantile_ms(0.95), None);
    }

    #[test]
    fn p95_is_interpolated_within_the_bucket_that_holds_it() {
        let mut h = LatencyHistogram::default();
        for ms in 1..=100 {
            h.record(ms);
        }
        // The 95th of 100 latencies is in (50, 100], which holds 50 of them, 45 after 50.
        assert_eq!(h.quantile_ms(0.95), Some(95.0));
        // Never above the slowest attempt.
        let mut slow = LatencyHistogram::default();
        for _ in 0..10 {
            slow.record(120);
        }
        assert_eq!(slow.quantile_ms(0.95), Some(120.0));
        let mut overflow = LatencyHistogram::default();
        overflow.record(45_000);
        assert_eq!(overflow.quantile_ms(0.95), Some(45_000.0));
    }

    #[test]
    fn merged_histograms_equal_one_histogram_of_all_latencies() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        let mut all = LatencyHistogram::default();
        for ms in [3, 70, 900] {
            a.record(ms);
            all.record(ms);
        }
        for ms in [12, 70_000] {
            b.record(ms);
            all.record(ms);
        }
        let mut merged = LatencyHistogram::default();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged, all);
    }

    #[test]
    fn pending_and_success_rate_come_from_the_counts() {
        let counts = StatsCounts {
            events: 7,
            deliveries: 7,
            delivered: 3,
            failed: 2,
            filtered: 1,
            ..Default::default()
        };
        assert_eq!(counts.pending(), 1);
        assert_eq!(counts.success_rate(), Some(0.6));
        assert_eq!(StatsCounts::default().success_rate(), None);
        let only_filtered = StatsCounts {
            deliveries: 1,
            filtered: 1,
            ..Default::default()
        };
        assert_eq!(only_filtered.success_rate(), None);
    }

    #[test]
    fn scope_names_never_collide() {
        let webhook = WebhookId::new();
        let names = [
            StatsScope::Tenant.name().into_owned(),
            StatsScope::Webhook(&webhook).name().into_owned(),
            StatsScope::Channel("wh_x").name().into_owned(),
            StatsScope::Channel("*").name().into_owned(),
            StatsScope::ChannelOverflow.name().into_owned(),
        ];
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert!(is_channel_scope(&names[2]));
        assert!(!is_channel_scope(CHANNEL_OVERFLOW_SCOPE));
        assert!(!is_channel_scope(TENANT_SCOPE));
        assert!(!is_channel_scope(webhook.as_str()));
    }

    #[test]
    fn top_event_types_rank_by_count_then_name_across_days() {
        let day = |types: &[(&str, u64)]| DayStats {
            event_types: types.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            ..Default::default()
        };
        let days = [
            day(&[("b", 2), ("a", 1)]),
            day(&[("a", 1), ("c", 5)]),
            day(&[("d", 1)]),
        ];
        assert_eq!(
            top_event_types(&days, 3),
            [
                ("c".to_string(), 5),
                ("a".to_string(), 2),
                ("b".to_string(), 2)
            ]
        );
    }
}
