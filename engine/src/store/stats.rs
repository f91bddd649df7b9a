//! Statistics counters: per (tenant, UTC day) and per (tenant, webhook, UTC day), kept up to
//! date by the writes that change what they count, so `GET /v1/stats` reads a few counter
//! records per day instead of scanning the delivery log.
//!
//! Each day of a scope (`*` = the whole tenant, or one webhook id; key layout in `keys.rs`) has
//! three kinds of record:
//! - `i` ([`IngestCounts`]): events and deliveries created that day. Written only by
//!   [`Store::write_events`], in the same transaction as the events and deliveries.
//! - `o` ([`OutcomeCounts`]): how many of that day's deliveries are delivered, failed or
//!   filtered, and a latency histogram of their attempts. Written only by the delivery
//!   transaction (`change_delivery`) that changes a delivery's state or records an attempt, from
//!   the state before and after: a delivery that leaves a final state (manual retry, recover)
//!   takes its count back out of that state, so counts never drift.
//! - `t` + event type: events (tenant scope) or deliveries (webhook scope) of that type. At most
//!   [`MAX_EVENT_TYPES_PER_DAY`] types per scope and day; later types count under
//!   [`OTHER_EVENT_TYPES`].
//!
//! Days are **cohorts**: everything in a day's record is about the deliveries created that day
//! (their outcomes so far, the latency of their attempts, whenever those happened), so pending =
//! created − delivered − failed − filtered holds per day. sled runs transactions one at a time
//! (serialisable), which makes the read-modify-write of a counter safe against every other
//! writer of the same key.
//!
//! Retention purges rows, not counters: statistics outlive the log they were counted from, up to
//! [`STATS_HORIZON_DAYS`].

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use tracing::warn;

use super::{
    DeliveryRecord, DeliveryStatus, NewEvent, Result, Store, decode, encode, keys, tx_error,
};
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

const TENANT_SCOPE: &str = "*";
const PART_INGEST: u8 = b'i';
const PART_OUTCOME: u8 = b'o';
const PART_TYPE: u8 = b't';

/// The UTC day (days since the epoch) of a time in ms.
pub fn day_of(ms: u64) -> u32 {
    (ms / MS_PER_DAY) as u32
}

/// Whose statistics.
#[derive(Debug, Clone, Copy)]
pub enum StatsScope<'a> {
    Tenant,
    Webhook(&'a WebhookId),
}

impl StatsScope<'_> {
    fn as_str(&self) -> &str {
        match self {
            StatsScope::Tenant => TENANT_SCOPE,
            StatsScope::Webhook(id) => id.as_str(),
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

/// The `i` record of a scope and day.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IngestCounts {
    /// Events accepted (tenant scope) or routed to the webhook (webhook scope).
    events: u64,
    deliveries: u64,
    /// Distinct event types with a `t` record this day.
    #[serde(default)]
    event_types: u32,
}

/// The `o` record of a scope and day.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OutcomeCounts {
    delivered: u64,
    failed: u64,
    filtered: u64,
    #[serde(default)]
    latency: LatencyHistogram,
}

impl OutcomeCounts {
    fn slot(&mut self, status: DeliveryStatus) -> Option<&mut u64> {
        match status {
            DeliveryStatus::Delivered => Some(&mut self.delivered),
            DeliveryStatus::Failed => Some(&mut self.failed),
            DeliveryStatus::Filtered => Some(&mut self.filtered),
            DeliveryStatus::Pending | DeliveryStatus::InFlight => None,
        }
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

/// What one ingest batch adds to one scope and day.
#[derive(Debug, Default)]
struct IngestDelta {
    events: u64,
    deliveries: u64,
    event_types: BTreeMap<String, u64>,
}

/// The counter changes of an ingest batch, keyed by the day key of each scope.
fn ingest_deltas(events: &[NewEvent]) -> BTreeMap<Vec<u8>, IngestDelta> {
    let mut deltas: BTreeMap<Vec<u8>, IngestDelta> = BTreeMap::new();
    for new in events {
        let tenant = new.tenant.as_str();
        let event = &new.event;
        let tenant_day = deltas
            .entry(keys::stats_day(
                tenant,
                TENANT_SCOPE,
                day_of(event.created_at),
            ))
            .or_default();
        tenant_day.events += 1;
        tenant_day.deliveries += new.deliveries.len() as u64;
        *tenant_day
            .event_types
            .entry(event.event_type.clone())
            .or_default() += 1;
        for delivery in &new.deliveries {
            let webhook_day = deltas
                .entry(keys::stats_day(
                    tenant,
                    delivery.webhook_id.as_str(),
                    day_of(delivery.created_at),
                ))
                .or_default();
            webhook_day.events += 1;
            webhook_day.deliveries += 1;
            *webhook_day
                .event_types
                .entry(delivery.event_type.clone())
                .or_default() += 1;
        }
    }
    deltas
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<super::StoreError>>;

/// A counter record, or its zero value if absent. A record that does not decode is logged
/// and restarted from zero: a damaged counter must never stop events or deliveries.
fn read_counter<T: DeserializeOwned + Default>(tx: &TransactionalTree, key: &[u8]) -> TxResult<T> {
    Ok(match tx.get(key)? {
        Some(bytes) => decode(&bytes).unwrap_or_else(|err| {
            warn!(error = %err, "a statistics counter did not decode; it restarts from zero");
            T::default()
        }),
        None => T::default(),
    })
}

fn with_part(day_key: &[u8], part: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(day_key.len() + 1 + rest.len());
    key.extend_from_slice(day_key);
    key.push(part);
    key.extend_from_slice(rest);
    key
}

/// Applies an ingest batch's counter changes inside its transaction.
fn apply_ingest_deltas(
    tx: &TransactionalTree,
    deltas: &BTreeMap<Vec<u8>, IngestDelta>,
) -> TxResult<()> {
    for (day_key, delta) in deltas {
        let ingest_key = with_part(day_key, PART_INGEST, &[]);
        let mut counts: IngestCounts = read_counter(tx, &ingest_key)?;
        counts.events += delta.events;
        counts.deliveries += delta.deliveries;
        for (event_type, n) in &delta.event_types {
            let mut key = with_part(day_key, PART_TYPE, event_type.as_bytes());
            let mut current: Option<u64> = tx.get(&key)?.and_then(|v| decode(&v).ok());
            if current.is_none() {
                if counts.event_types < MAX_EVENT_TYPES_PER_DAY {
                    counts.event_types += 1;
                } else {
                    key = with_part(day_key, PART_TYPE, OTHER_EVENT_TYPES.as_bytes());
                    current = tx.get(&key)?.and_then(|v| decode(&v).ok());
                }
            }
            tx.insert(key, encode(&(current.unwrap_or(0) + n)))?;
        }
        tx.insert(ingest_key, encode(&counts))?;
    }
    Ok(())
}

/// Updates the outcome counters for one delivery change, inside the transaction that makes it:
/// `old` is the state before, `record` the delivery after, `latency_ms` the attempt's latency
/// when the change records an attempt.
pub(super) fn record_transition(
    tx: &TransactionalTree,
    tenant: &str,
    old: DeliveryStatus,
    record: &DeliveryRecord,
    latency_ms: Option<u64>,
) -> TxResult<()> {
    let moves = old != record.status && (!old.is_queued() || !record.status.is_queued());
    if !moves && latency_ms.is_none() {
        return Ok(());
    }
    let day = day_of(record.created_at);
    for scope in [TENANT_SCOPE, record.webhook_id.as_str()] {
        let key = with_part(&keys::stats_day(tenant, scope, day), PART_OUTCOME, &[]);
        let mut counts: OutcomeCounts = read_counter(tx, &key)?;
        if moves {
            if let Some(slot) = counts.slot(old) {
                *slot = slot.saturating_sub(1);
            }
            if let Some(slot) = counts.slot(record.status) {
                *slot += 1;
            }
        }
        if let Some(ms) = latency_ms {
            counts.latency.record(ms);
        }
        tx.insert(key, encode(&counts))?;
    }
    Ok(())
}

impl Store {
    /// Applies an ingest batch together with its counter changes, as one transaction.
    pub(super) fn apply_ingest(&self, batch: &sled::Batch, events: &[NewEvent]) -> Result<()> {
        let deltas = ingest_deltas(events);
        self.tree
            .transaction(|tx| {
                tx.apply_batch(batch)?;
                apply_ingest_deltas(tx, &deltas)?;
                Ok(())
            })
            .map_err(tx_error)
    }

    /// The statistics of a scope for each UTC day from `first_day` to `last_day` (inclusive),
    /// one entry per day, zero where nothing happened.
    pub fn stats_days(
        &self,
        tenant: &str,
        scope: StatsScope<'_>,
        first_day: u32,
        last_day: u32,
    ) -> Result<Vec<DayStats>> {
        let mut days: Vec<DayStats> = (first_day..=last_day)
            .map(|day| DayStats {
                day,
                ..DayStats::default()
            })
            .collect();
        let start = keys::stats_day(tenant, scope.as_str(), first_day);
        let end = keys::stats_day(tenant, scope.as_str(), last_day.saturating_add(1));
        for entry in self.tree.range(start..end) {
            let (key, value) = entry?;
            let Some((_, _, day, rest)) = keys::parse_stats_key(&key) else {
                continue;
            };
            let Some(slot) = days.get_mut(day.wrapping_sub(first_day) as usize) else {
                continue;
            };
            match rest.split_first() {
                Some((&PART_INGEST, _)) => {
                    let counts: IngestCounts = decode(&value)?;
                    slot.counts.events += counts.events;
                    slot.counts.deliveries += counts.deliveries;
                }
                Some((&PART_OUTCOME, _)) => {
                    let counts: OutcomeCounts = decode(&value)?;
                    slot.counts.delivered += counts.delivered;
                    slot.counts.failed += counts.failed;
                    slot.counts.filtered += counts.filtered;
                    slot.counts.latency.merge(&counts.latency);
                }
                Some((&PART_TYPE, event_type)) => {
                    let count: u64 = decode(&value)?;
                    let event_type = String::from_utf8_lossy(event_type).into_owned();
                    *slot.event_types.entry(event_type).or_default() += count;
                }
                _ => {}
            }
        }
        Ok(days)
    }

    /// Removes up to `max_keys` counter records of days before `before_day`, of every tenant,
    /// resuming after `cursor` (a key this returned). Returns how many went and where to go on
    /// (`None`: done).
    pub fn prune_stats(
        &self,
        before_day: u32,
        cursor: Option<&[u8]>,
        max_keys: usize,
    ) -> Result<(usize, Option<Vec<u8>>)> {
        let start = match cursor {
            Some(key) => [key, &[0]].concat(),
            None => vec![keys::STATS],
        };
        let mut batch = sled::Batch::default();
        let (mut removed, mut scanned) = (0, 0);
        let mut next = None;
        for entry in self.tree.range(start..vec![keys::STATS + 1]) {
            let (key, _) = entry?;
            scanned += 1;
            if keys::parse_stats_key(&key).is_some_and(|(_, _, day, _)| day < before_day) {
                batch.remove(key.clone());
                removed += 1;
            }
            if scanned >= max_keys {
                next = Some(key.to_vec());
                break;
            }
        }
        if removed > 0 {
            self.tree.apply_batch(batch)?;
        }
        Ok((removed, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AttemptId, DeliveryId, EventId};
    use crate::store::{AttemptRecord, DeliveryUpdate, EventRecord};

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

    fn event(tenant: &str, webhooks: &[&WebhookId], event_type: &str, at: u64) -> NewEvent {
        let id = EventId::new();
        NewEvent {
            tenant: tenant.to_string(),
            event: EventRecord {
                id: id.clone(),
                event_type: event_type.to_string(),
                channel: None,
                idempotency_key: None,
                created_at: at,
                payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            },
            deliveries: webhooks
                .iter()
                .map(|w| DeliveryRecord {
                    id: DeliveryId::new(),
                    event_id: id.clone(),
                    webhook_id: (*w).clone(),
                    event_type: event_type.to_string(),
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    created_at: at,
                    updated_at: at,
                    next_attempt_at: Some(at),
                    last_attempt_at: None,
                    last_status_code: None,
                    last_error: None,
                    filtered_by: None,
                })
                .collect(),
        }
    }

    fn attempt(store: &Store, delivery: &DeliveryRecord, status: DeliveryStatus, ms: u64) {
        let record = AttemptRecord {
            id: AttemptId::new(),
            delivery_id: delivery.id.clone(),
            webhook_id: delivery.webhook_id.clone(),
            attempt: 1,
            started_at: delivery.created_at,
            url: "http://127.0.0.1/".into(),
            latency_ms: ms,
            result: "x".into(),
            status_code: None,
            error_code: None,
            error_message: None,
            response_snippet: None,
            next_attempt_at: None,
            plugin_logs: Vec::new(),
        };
        let update = DeliveryUpdate {
            status,
            next_attempt_at: None,
            filtered_by: None,
        };
        store.record_attempt("acme", &record, &update).unwrap();
    }

    #[test]
    fn counters_follow_ingest_outcomes_and_manual_retries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            std::sync::Arc::new(crate::secrets::Keyring::random()),
        )
        .unwrap();
        let (hook_a, hook_b) = (WebhookId::new(), WebhookId::new());
        let today = 20_400 * MS_PER_DAY + 5;
        let yesterday = today - MS_PER_DAY;
        let events = [
            event("acme", &[&hook_a, &hook_b], "order.paid", today),
            event("acme", &[&hook_a], "order.refunded", today),
            event("acme", &[], "order.paid", yesterday),
            event("globex", &[&hook_a], "order.paid", today),
        ];
        store.write_events(&events).unwrap();
        let (e1, e2) = (&events[0], &events[1]);

        attempt(&store, &e1.deliveries[0], DeliveryStatus::Delivered, 10);
        attempt(&store, &e1.deliveries[1], DeliveryStatus::Failed, 30);
        // A retry that is still pending changes latency only.
        attempt(&store, &e2.deliveries[0], DeliveryStatus::Pending, 20);

        let day = day_of(today);
        let tenant = store
            .stats_days("acme", StatsScope::Tenant, day - 1, day)
            .unwrap();
        assert_eq!(tenant.len(), 2);
        assert_eq!(tenant[0].counts.events, 1, "yesterday");
        assert_eq!(tenant[0].counts.deliveries, 0);
        let t = &tenant[1].counts;
        assert_eq!(
            (t.events, t.deliveries, t.delivered, t.failed, t.filtered),
            (2, 3, 1, 1, 0)
        );
        assert_eq!(t.pending(), 1);
        assert_eq!((t.latency.count, t.latency.sum_ms), (3, 60));
        assert_eq!(tenant[1].event_types["order.paid"], 1);
        assert_eq!(tenant[1].event_types["order.refunded"], 1);

        let a = &store
            .stats_days("acme", StatsScope::Webhook(&hook_a), day, day)
            .unwrap()[0];
        assert_eq!((a.counts.deliveries, a.counts.delivered), (2, 1));
        assert_eq!(a.counts.latency.count, 2);

        // Manual retry of the failed delivery: it leaves `failed`, then is delivered.
        store
            .requeue("acme", &e1.deliveries[1].id, today)
            .unwrap()
            .unwrap();
        let t = &store
            .stats_days("acme", StatsScope::Tenant, day, day)
            .unwrap()[0]
            .counts;
        assert_eq!((t.delivered, t.failed, t.pending()), (1, 0, 2));
        attempt(&store, &e1.deliveries[1], DeliveryStatus::Delivered, 5);
        let t = &store
            .stats_days("acme", StatsScope::Tenant, day, day)
            .unwrap()[0]
            .counts;
        assert_eq!((t.delivered, t.failed, t.pending()), (2, 0, 1));
        assert_eq!(t.success_rate(), Some(1.0));

        // The other tenant's counts are its own.
        let g = &store
            .stats_days("globex", StatsScope::Tenant, day, day)
            .unwrap()[0]
            .counts;
        assert_eq!((g.events, g.deliveries, g.delivered), (1, 1, 0));
    }

    #[test]
    fn event_types_beyond_the_daily_cap_count_as_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            std::sync::Arc::new(crate::secrets::Keyring::random()),
        )
        .unwrap();
        let at = 20_400 * MS_PER_DAY;
        let events: Vec<NewEvent> = (0..MAX_EVENT_TYPES_PER_DAY + 3)
            .map(|i| event("acme", &[], &format!("t.{i}"), at))
            .collect();
        store.write_events(&events).unwrap();
        store
            .write_events(&[
                event("acme", &[], "t.0", at),
                event("acme", &[], "late", at),
            ])
            .unwrap();
        let day = &store
            .stats_days("acme", StatsScope::Tenant, day_of(at), day_of(at))
            .unwrap()[0];
        assert_eq!(day.counts.events, MAX_EVENT_TYPES_PER_DAY as u64 + 5);
        assert_eq!(day.event_types.len(), MAX_EVENT_TYPES_PER_DAY as usize + 1);
        assert_eq!(day.event_types[OTHER_EVENT_TYPES], 4);
        assert_eq!(day.event_types.values().sum::<u64>(), day.counts.events);
    }

    #[test]
    fn pruning_drops_only_counter_days_before_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            std::sync::Arc::new(crate::secrets::Keyring::random()),
        )
        .unwrap();
        let old = 20_000 * MS_PER_DAY;
        let new = 20_100 * MS_PER_DAY;
        let hook = WebhookId::new();
        store
            .write_events(&[
                event("acme", &[&hook], "a", old),
                event("acme", &[&hook], "a", new),
            ])
            .unwrap();
        let mut cursor = None;
        let mut removed = 0;
        loop {
            let (n, next) = store.prune_stats(20_050, cursor.as_deref(), 2).unwrap();
            removed += n;
            match next {
                Some(key) => cursor = Some(key),
                None => break,
            }
        }
        assert_eq!(removed, 4, "i and t records of two scopes");
        let days = store
            .stats_days("acme", StatsScope::Tenant, 20_000, 20_100)
            .unwrap();
        assert_eq!(days[0].counts.events, 0);
        assert_eq!(days[100].counts.events, 1);
    }
}
