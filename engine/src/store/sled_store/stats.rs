//! Statistics counters on sled: per (tenant, UTC day) and per (tenant, webhook, UTC day), kept up to
//! date by the writes that change what they count, so `GET /v1/stats` reads a few counter
//! records per day instead of scanning the delivery log.
//!
//! Each day of a scope (`*` = the whole tenant, or one webhook id; key layout in `keys.rs`) has
//! three kinds of record:
//! - `i` ([`IngestCounts`]): events and deliveries created that day. Written only by
//!   [`SledStore::write_events`], in the same transaction as the events and deliveries.
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

use super::{Result, SledStore, StoredEvent, decode, encode, keys, tx_error};
use crate::store::stats::{
    DayStats, LatencyHistogram, MAX_EVENT_TYPES_PER_DAY, OTHER_EVENT_TYPES, StatsScope,
    TENANT_SCOPE, day_of,
};
use crate::store::{DeliveryRecord, DeliveryStatus};

const PART_INGEST: u8 = b'i';
const PART_OUTCOME: u8 = b'o';
const PART_TYPE: u8 = b't';

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

/// What one ingest batch adds to one scope and day.
#[derive(Debug, Default)]
struct IngestDelta {
    events: u64,
    deliveries: u64,
    event_types: BTreeMap<String, u64>,
}

/// The counter changes of an ingest batch, keyed by the day key of each scope.
fn ingest_deltas(events: &[StoredEvent]) -> BTreeMap<Vec<u8>, IngestDelta> {
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

impl SledStore {
    /// Applies an ingest batch together with its counter changes, as one transaction.
    pub(super) fn apply_ingest(&self, batch: &sled::Batch, events: &[StoredEvent]) -> Result<()> {
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
    use crate::ids::{AttemptId, DeliveryId, EventId, WebhookId};
    use crate::store::stats::MS_PER_DAY;
    use crate::store::{AttemptRecord, DeliveryUpdate, EventRecord};

    fn event(tenant: &str, webhooks: &[&WebhookId], event_type: &str, at: u64) -> StoredEvent {
        let id = EventId::new();
        StoredEvent {
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
                    channel: None,
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

    fn attempt(store: &SledStore, delivery: &DeliveryRecord, status: DeliveryStatus, ms: u64) {
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
            request: None,
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
        let store = SledStore::open(
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
        let store = SledStore::open(
            dir.path(),
            std::sync::Arc::new(crate::secrets::Keyring::random()),
        )
        .unwrap();
        let at = 20_400 * MS_PER_DAY;
        let events: Vec<StoredEvent> = (0..MAX_EVENT_TYPES_PER_DAY + 3)
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
        let store = SledStore::open(
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
