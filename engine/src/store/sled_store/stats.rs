//! Statistics counters on sled: per (tenant, UTC day) and per (tenant, webhook, UTC day) and
//! per (tenant, channel, UTC day), so `GET /v1/stats` reads a few counter records per day
//! instead of scanning the delivery log.
//!
//! Each day of a scope (`*` = the whole tenant, a webhook id, or `#` + a channel; key layout in
//! `keys.rs`) has three kinds of record, each a version byte and JSON:
//! - `i` ([`IngestCounts`]): events and deliveries created that day;
//! - `o` ([`OutcomeCounts`]): how many of that day's deliveries are delivered, failed or
//!   filtered, and a latency histogram of their attempts;
//! - `t` + event type: events (tenant and channel scopes) or deliveries (webhook scope) of that
//!   type. At most [`MAX_EVENT_TYPES_PER_DAY`] types per scope and day; later types count under
//!   [`OTHER_EVENT_TYPES`].
//!
//! A channel gets its scope for a day when its first event of that day is counted, if the
//! tenant has fewer than [`MAX_CHANNELS_PER_DAY`] channel scopes that day (the count is the
//! `channels` field of the overflow scope `#`'s `i` record); otherwise its events count in the
//! overflow scope, and so do its deliveries' outcomes (an outcome goes to the channel's scope
//! only if that scope's `i` record exists).
//!
//! The writer owns these keys: it adds up what one group changes ([`StatsDeltas`]: every event
//! appended, every delivery moving between states) and reads and writes each counter once per
//! group, in the same sled batch as the rest of the group. A delivery that leaves a final state
//! (manual retry, recover) takes its count back out of that state, so counts never drift.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::codec::EventMeta;
use super::keys;
use crate::ids::WebhookId;
use crate::store::stats::{
    CHANNEL_OVERFLOW_SCOPE, DayStats, LatencyHistogram, MAX_CHANNELS_PER_DAY,
    MAX_EVENT_TYPES_PER_DAY, OTHER_EVENT_TYPES, StatsScope, TENANT_SCOPE, channel_scope, day_of,
};
use crate::store::{DeliveryStatus, Result, StoreError};

const PART_INGEST: u8 = b'i';
const PART_OUTCOME: u8 = b'o';
const PART_TYPE: u8 = b't';
/// First byte of every counter value; bump when the encoding changes.
const COUNTER_VERSION: u8 = 1;

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(COUNTER_VERSION);
    serde_json::to_writer(&mut out, value).expect("counters serialise to JSON");
    out
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&COUNTER_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|err| StoreError::Corrupt(err.to_string()))
        }
        Some((version, _)) => Err(StoreError::Corrupt(format!(
            "counter version {version} is not known to this hookd"
        ))),
        None => Err(StoreError::Corrupt("empty counter".into())),
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
    /// Channel scopes of the tenant this day (kept in the overflow scope's record only).
    #[serde(default, skip_serializing_if = "is_zero")]
    channels: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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

/// What one group adds to one scope and day's ingest counts.
#[derive(Debug, Default)]
struct IngestDelta {
    events: u64,
    deliveries: u64,
    event_types: BTreeMap<String, u64>,
    /// Channel scopes opened (overflow scope only).
    channels: u32,
}

impl IngestDelta {
    fn count(&mut self, event_type: &str, deliveries: u64) {
        self.events += 1;
        self.deliveries += deliveries;
        *self.event_types.entry(event_type.to_string()).or_default() += 1;
    }
}

/// What one group changes in one scope and day's outcome counts.
#[derive(Debug, Default)]
struct OutcomeDelta {
    delivered: i64,
    failed: i64,
    filtered: i64,
    latency: LatencyHistogram,
}

impl OutcomeDelta {
    fn slot(&mut self, status: DeliveryStatus) -> Option<&mut i64> {
        match status {
            DeliveryStatus::Delivered => Some(&mut self.delivered),
            DeliveryStatus::Failed => Some(&mut self.failed),
            DeliveryStatus::Filtered => Some(&mut self.filtered),
            DeliveryStatus::Pending | DeliveryStatus::InFlight => None,
        }
    }

    /// One delivery moving from `old` to `new` (`moves`), with an attempt's latency.
    fn record(
        &mut self,
        moves: bool,
        old: DeliveryStatus,
        new: DeliveryStatus,
        latency_ms: Option<u64>,
    ) {
        if moves {
            if let Some(slot) = self.slot(old) {
                *slot -= 1;
            }
            if let Some(slot) = self.slot(new) {
                *slot += 1;
            }
        }
        if let Some(ms) = latency_ms {
            self.latency.record(ms);
        }
    }

    fn merge(&mut self, other: OutcomeDelta) {
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.filtered += other.filtered;
        self.latency.merge(&other.latency);
    }
}

/// (tenant, UTC day, channel): a channel scope's day before admission decides where it counts.
type ChannelDay = (String, u32, String);

fn apply(count: &mut u64, delta: i64) {
    *count = count.saturating_add_signed(delta);
}

fn with_part(day_key: &[u8], part: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(day_key.len() + 1 + rest.len());
    key.extend_from_slice(day_key);
    key.push(part);
    key.extend_from_slice(rest);
    key
}

/// The counter changes of one group, written once per key by [`StatsDeltas::write`].
#[derive(Debug, Default)]
pub(super) struct StatsDeltas {
    ingest: BTreeMap<Vec<u8>, IngestDelta>,
    outcomes: BTreeMap<Vec<u8>, OutcomeDelta>,
    /// Channel scopes' changes, placed at [`StatsDeltas::write`] (channel or overflow scope).
    channel_ingest: BTreeMap<ChannelDay, IngestDelta>,
    channel_outcomes: BTreeMap<ChannelDay, OutcomeDelta>,
}

impl StatsDeltas {
    /// An event appended with one delivery per webhook of `meta`.
    pub fn event(&mut self, meta: &EventMeta) {
        let tenant = meta.tenant.as_str();
        let day = day_of(meta.created_at);
        let fan_out = meta.webhooks.len() as u64;
        self.ingest
            .entry(keys::stats_day(tenant, TENANT_SCOPE, day))
            .or_default()
            .count(&meta.event_type, fan_out);
        for webhook in &meta.webhooks {
            self.ingest
                .entry(keys::stats_day(tenant, webhook.as_str(), day))
                .or_default()
                .count(&meta.event_type, 1);
        }
        if let Some(channel) = &meta.channel {
            self.channel_ingest
                .entry((tenant.to_string(), day, channel.clone()))
                .or_default()
                .count(&meta.event_type, fan_out);
        }
    }

    /// A delivery created at `created_at`, of an event on `channel`, moved from `old` to `new`;
    /// `latency_ms` when the move records an attempt.
    #[allow(clippy::too_many_arguments)]
    pub fn transition(
        &mut self,
        tenant: &str,
        webhook: &WebhookId,
        channel: Option<&str>,
        created_at: u64,
        old: DeliveryStatus,
        new: DeliveryStatus,
        latency_ms: Option<u64>,
    ) {
        let moves = old != new && (!old.is_queued() || !new.is_queued());
        if !moves && latency_ms.is_none() {
            return;
        }
        let day = day_of(created_at);
        for scope in [TENANT_SCOPE, webhook.as_str()] {
            self.outcomes
                .entry(keys::stats_day(tenant, scope, day))
                .or_default()
                .record(moves, old, new, latency_ms);
        }
        if let Some(channel) = channel {
            self.channel_outcomes
                .entry((tenant.to_string(), day, channel.to_string()))
                .or_default()
                .record(moves, old, new, latency_ms);
        }
    }

    /// Moves the channel scopes' changes to the scope each counts in: the channel's own when
    /// its scope exists for the day or is opened now (room under [`MAX_CHANNELS_PER_DAY`]),
    /// the tenant's overflow scope otherwise.
    fn place_channels(&mut self, tree: &sled::Tree) -> Result<()> {
        let mut admission = ChannelAdmission::default();
        for ((tenant, day, channel), delta) in std::mem::take(&mut self.channel_ingest) {
            let scope_key = keys::stats_day(&tenant, &channel_scope(&channel), day);
            if admission.admit(tree, &tenant, day, &scope_key)? {
                let counts = self.ingest.entry(scope_key).or_default();
                counts.events += delta.events;
                counts.deliveries += delta.deliveries;
                for (event_type, n) in delta.event_types {
                    *counts.event_types.entry(event_type).or_default() += n;
                }
            } else {
                // The overflow scope keeps counts, not event types (nothing reads them).
                let overflow = self
                    .ingest
                    .entry(keys::stats_day(&tenant, CHANNEL_OVERFLOW_SCOPE, day))
                    .or_default();
                overflow.events += delta.events;
                overflow.deliveries += delta.deliveries;
            }
        }
        for ((tenant, day), opened) in &admission.opened {
            self.ingest
                .entry(keys::stats_day(tenant, CHANNEL_OVERFLOW_SCOPE, *day))
                .or_default()
                .channels += opened;
        }
        for ((tenant, day, channel), delta) in std::mem::take(&mut self.channel_outcomes) {
            let scope_key = keys::stats_day(&tenant, &channel_scope(&channel), day);
            let key = if admission.is_open(tree, &scope_key)? {
                scope_key
            } else {
                keys::stats_day(&tenant, CHANNEL_OVERFLOW_SCOPE, day)
            };
            self.outcomes.entry(key).or_default().merge(delta);
        }
        Ok(())
    }

    /// Reads every counter this group changes (from `tree`, which only the writer writes) and
    /// puts its new value into `batch`.
    pub fn write(mut self, tree: &sled::Tree, batch: &mut sled::Batch) -> Result<()> {
        self.place_channels(tree)?;
        for (day_key, delta) in self.ingest {
            let ingest_key = with_part(&day_key, PART_INGEST, &[]);
            let mut counts: IngestCounts = read_counter(tree, &ingest_key)?;
            counts.events += delta.events;
            counts.deliveries += delta.deliveries;
            counts.channels += delta.channels;
            for (event_type, n) in delta.event_types {
                let mut key = with_part(&day_key, PART_TYPE, event_type.as_bytes());
                let mut current: Option<u64> = tree.get(&key)?.and_then(|v| decode(&v).ok());
                if current.is_none() {
                    if counts.event_types < MAX_EVENT_TYPES_PER_DAY {
                        counts.event_types += 1;
                    } else {
                        key = with_part(&day_key, PART_TYPE, OTHER_EVENT_TYPES.as_bytes());
                        current = tree.get(&key)?.and_then(|v| decode(&v).ok());
                    }
                }
                batch.insert(key, encode(&(current.unwrap_or(0) + n)));
            }
            batch.insert(ingest_key, encode(&counts));
        }
        for (day_key, delta) in self.outcomes {
            let key = with_part(&day_key, PART_OUTCOME, &[]);
            let mut counts: OutcomeCounts = read_counter(tree, &key)?;
            apply(&mut counts.delivered, delta.delivered);
            apply(&mut counts.failed, delta.failed);
            apply(&mut counts.filtered, delta.filtered);
            counts.latency.merge(&delta.latency);
            batch.insert(key, encode(&counts));
        }
        Ok(())
    }
}

/// Which channel scopes of a group's days are open, and how many the group opens.
#[derive(Debug, Default)]
struct ChannelAdmission {
    /// Channel scopes per (tenant, day) before this group (read once per day).
    before: BTreeMap<(String, u32), u32>,
    /// Channel scopes this group opens per (tenant, day).
    opened: BTreeMap<(String, u32), u32>,
    /// Day keys of the scopes opened by this group.
    open_now: BTreeSet<Vec<u8>>,
}

impl ChannelAdmission {
    /// Whether the channel scope of `scope_key` (a day key) counts: open already, or opened now
    /// if the tenant's day has room.
    fn admit(
        &mut self,
        tree: &sled::Tree,
        tenant: &str,
        day: u32,
        scope_key: &[u8],
    ) -> Result<bool> {
        if self.is_open(tree, scope_key)? {
            return Ok(true);
        }
        let slot = (tenant.to_string(), day);
        let before = match self.before.get(&slot) {
            Some(n) => *n,
            None => {
                let overflow = with_part(
                    &keys::stats_day(tenant, CHANNEL_OVERFLOW_SCOPE, day),
                    PART_INGEST,
                    &[],
                );
                let counts: IngestCounts = read_counter(tree, &overflow)?;
                self.before.insert(slot.clone(), counts.channels);
                counts.channels
            }
        };
        let opened = self.opened.entry(slot).or_default();
        if before.saturating_add(*opened) >= MAX_CHANNELS_PER_DAY {
            return Ok(false);
        }
        *opened += 1;
        self.open_now.insert(scope_key.to_vec());
        Ok(true)
    }

    fn is_open(&self, tree: &sled::Tree, scope_key: &[u8]) -> Result<bool> {
        Ok(self.open_now.contains(scope_key)
            || tree.contains_key(with_part(scope_key, PART_INGEST, &[]))?)
    }
}

/// A counter record, or its zero value if absent. A record that does not decode is logged
/// and restarted from zero: a damaged counter must never stop events or deliveries.
fn read_counter<T: DeserializeOwned + Default>(tree: &sled::Tree, key: &[u8]) -> Result<T> {
    Ok(match tree.get(key)? {
        Some(bytes) => decode(&bytes).unwrap_or_else(|err| {
            warn!(error = %err, "a statistics counter did not decode; it restarts from zero");
            T::default()
        }),
        None => T::default(),
    })
}

/// The statistics of a scope for each UTC day from `first_day` to `last_day` (inclusive), one
/// entry per day, zero where nothing happened.
pub(super) fn stats_days(
    tree: &sled::Tree,
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
    let scope = scope.name();
    let start = keys::stats_day(tenant, &scope, first_day);
    let end = keys::stats_day(tenant, &scope, last_day.saturating_add(1));
    for entry in tree.range(start..end) {
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

/// Keys found by a bounded scan, and the key to go on after (None: the scan is complete).
pub(super) type ScanPart = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// The keys of counter days before `before_day`, of every tenant (at most `max_keys`, after
/// `cursor`), and where to go on.
pub(super) fn stale_counters(
    tree: &sled::Tree,
    before_day: u32,
    cursor: Option<&[u8]>,
    max_keys: usize,
) -> Result<ScanPart> {
    let start = match cursor {
        Some(key) => [key, &[0]].concat(),
        None => vec![keys::STATS],
    };
    let mut stale = Vec::new();
    let mut scanned = 0;
    for entry in tree.range(start..vec![keys::STATS + 1]) {
        let (key, _) = entry?;
        scanned += 1;
        if keys::parse_stats_key(&key).is_some_and(|(_, _, day, _)| day < before_day) {
            stale.push(key.to_vec());
        }
        if scanned >= max_keys {
            return Ok((stale, Some(key.to_vec())));
        }
    }
    Ok((stale, None))
}
