//! Statistics counters and tenant usage in PostgreSQL, written in the transaction of what they
//! count: per (tenant, scope, UTC day), scope `*` for the tenant, a webhook id, or `#` + a
//! channel (see `store/stats.rs` for what a day means and for the channel cap).
//!
//! A channel's scope is opened for a day by its first event of that day if the tenant has
//! fewer than [`MAX_CHANNELS_PER_DAY`] channel scopes that day (counted through the partial
//! index `stats_ingest_channel_scopes`); otherwise that event counts in the overflow scope `#`.
//! An outcome counts in a channel's scope only if that scope has its `stats_ingest` row for the
//! delivery's day, else in the overflow scope. Two nodes opening channels at the same moment
//! may each see room for one more (as for event types).
//!
//! Counters move per group, not per row: a group's changes are summed in memory and each
//! counter row gets one `INSERT … ON CONFLICT DO UPDATE` adding the sum, in key order (so two
//! transactions never take the same counter rows in opposite orders). Ingest writes
//! `stats_ingest` and `stats_event_types`, attempts write `stats_outcomes`.

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;

use super::events::StoredEvent;
use super::{PgResult, PostgresStore};
use crate::ids::{DeliveryId, WebhookId};
use crate::store::stats::{
    CHANNEL_OVERFLOW_SCOPE, DayStats, LATENCY_BUCKETS_MS, LatencyHistogram, MAX_CHANNELS_PER_DAY,
    MAX_EVENT_TYPES_PER_DAY, OTHER_EVENT_TYPES, StatsScope, TENANT_SCOPE, channel_scope, day_of,
};
use crate::store::{DeliveryStatus, TenantUsage};

type DayKey = (String, String, i32);

/// One delivery's change of state (and the latency of the attempt that changed it).
#[derive(Debug)]
pub(super) struct Transition {
    pub tenant: String,
    pub delivery_id: DeliveryId,
    pub webhook_id: WebhookId,
    /// The channel of the delivery's event.
    pub channel: Option<String>,
    pub created_at: u64,
    pub old: DeliveryStatus,
    pub new: DeliveryStatus,
    pub latency_ms: Option<u64>,
}

fn day_key(tenant: &str, scope: &str, created_at: u64) -> DayKey {
    (
        tenant.to_string(),
        scope.to_string(),
        day_of(created_at) as i32,
    )
}

/// Adds an ingest group's events, deliveries and event types to their days.
pub(super) async fn add_ingest(tx: &Transaction<'_>, events: &[&StoredEvent]) -> PgResult<()> {
    let mut counts: BTreeMap<DayKey, (i64, i64)> = BTreeMap::new();
    let mut types: BTreeMap<(DayKey, String), i64> = BTreeMap::new();
    let mut totals: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut channels: BTreeMap<DayKey, ChannelIngest> = BTreeMap::new();
    for new in events {
        let (tenant, event) = (new.tenant.as_str(), &new.event);
        let day = day_key(tenant, TENANT_SCOPE, event.created_at);
        let entry = counts.entry(day.clone()).or_default();
        entry.0 += 1;
        entry.1 += new.deliveries.len() as i64;
        *types.entry((day, event.event_type.clone())).or_default() += 1;
        let total = totals.entry(tenant).or_default();
        total.0 += 1;
        total.1 += event.payload.get().len() as i64;
        for delivery in &new.deliveries {
            let day = day_key(tenant, delivery.webhook_id.as_str(), delivery.created_at);
            let entry = counts.entry(day.clone()).or_default();
            entry.0 += 1;
            entry.1 += 1;
            *types.entry((day, delivery.event_type.clone())).or_default() += 1;
        }
        if let Some(channel) = &event.channel {
            let day = day_key(tenant, &channel_scope(channel), event.created_at);
            let entry = channels.entry(day).or_default();
            entry.events += 1;
            entry.deliveries += new.deliveries.len() as i64;
            *entry.types.entry(event.event_type.clone()).or_default() += 1;
        }
    }
    if !channels.is_empty() {
        let open = open_channel_scopes(tx, channels.keys().collect()).await?;
        for (day, channel) in channels {
            let (scope_day, count_types) = if open.contains(&day) {
                (day, true)
            } else {
                ((day.0, CHANNEL_OVERFLOW_SCOPE.to_string(), day.2), false)
            };
            let entry = counts.entry(scope_day.clone()).or_default();
            entry.0 += channel.events;
            entry.1 += channel.deliveries;
            if count_types {
                for (event_type, n) in channel.types {
                    *types.entry((scope_day.clone(), event_type)).or_default() += n;
                }
            }
        }
    }
    futures::try_join!(
        add_counts(tx, &counts),
        add_event_types(tx, &types),
        add_totals(tx, &totals),
    )?;
    Ok(())
}

/// One channel's events of a group on one day.
#[derive(Default)]
struct ChannelIngest {
    events: i64,
    deliveries: i64,
    types: BTreeMap<String, i64>,
}

/// Of the channel scope days of an ingest group, those that count in their channel's scope:
/// open already, or opened now while the tenant's day has fewer than [`MAX_CHANNELS_PER_DAY`]
/// channel scopes (in channel order).
async fn open_channel_scopes(
    tx: &Transaction<'_>,
    wanted: Vec<&DayKey>,
) -> PgResult<std::collections::BTreeSet<DayKey>> {
    let tenants: Vec<&str> = wanted.iter().map(|k| k.0.as_str()).collect();
    let scopes: Vec<&str> = wanted.iter().map(|k| k.1.as_str()).collect();
    let days: Vec<i32> = wanted.iter().map(|k| k.2).collect();
    let statement = tx
        .prepare_cached(
            "SELECT u.t, u.sc, u.d,
                    EXISTS (SELECT 1 FROM stats_ingest i
                             WHERE i.tenant = u.t AND i.scope = u.sc AND i.day = u.d),
                    (SELECT count(*) FROM stats_ingest i
                      WHERE i.tenant = u.t AND i.day = u.d AND i.scope LIKE '#_%')
               FROM unnest($1::text[], $2::text[], $3::integer[]) AS u(t, sc, d)",
        )
        .await?;
    let rows = tx.query(&statement, &[&tenants, &scopes, &days]).await?;
    let mut open = std::collections::BTreeSet::new();
    let mut room: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut closed = Vec::new();
    for row in &rows {
        let key: DayKey = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if row.try_get::<_, bool>(3)? {
            open.insert(key);
        } else {
            let opened: i64 = row.try_get(4)?;
            room.insert(
                (key.0.clone(), key.2),
                i64::from(MAX_CHANNELS_PER_DAY) - opened,
            );
            closed.push(key);
        }
    }
    closed.sort();
    for key in closed {
        let left = room
            .get_mut(&(key.0.clone(), key.2))
            .expect("room of each day");
        if *left > 0 {
            *left -= 1;
            open.insert(key);
        }
    }
    Ok(open)
}

/// Of the channel scope days of some transitions, those whose channel scope is open (has its
/// `stats_ingest` row).
async fn existing_channel_scopes(
    tx: &Transaction<'_>,
    wanted: &std::collections::BTreeSet<DayKey>,
) -> PgResult<std::collections::BTreeSet<DayKey>> {
    let tenants: Vec<&str> = wanted.iter().map(|k| k.0.as_str()).collect();
    let scopes: Vec<&str> = wanted.iter().map(|k| k.1.as_str()).collect();
    let days: Vec<i32> = wanted.iter().map(|k| k.2).collect();
    let statement = tx
        .prepare_cached(
            "SELECT i.tenant, i.scope, i.day
               FROM unnest($1::text[], $2::text[], $3::integer[]) AS u(t, sc, d)
               JOIN stats_ingest i ON i.tenant = u.t AND i.scope = u.sc AND i.day = u.d",
        )
        .await?;
    tx.query(&statement, &[&tenants, &scopes, &days])
        .await?
        .iter()
        .map(|row| -> PgResult<DayKey> { Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)) })
        .collect()
}

async fn add_counts(tx: &Transaction<'_>, counts: &BTreeMap<DayKey, (i64, i64)>) -> PgResult<()> {
    let tenants: Vec<&str> = counts.keys().map(|k| k.0.as_str()).collect();
    let scopes: Vec<&str> = counts.keys().map(|k| k.1.as_str()).collect();
    let days: Vec<i32> = counts.keys().map(|k| k.2).collect();
    let events: Vec<i64> = counts.values().map(|v| v.0).collect();
    let deliveries: Vec<i64> = counts.values().map(|v| v.1).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO stats_ingest AS s (tenant, scope, day, events, deliveries)
             SELECT t, sc, d, e, dl
               FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[], $5::bigint[])
                    WITH ORDINALITY AS u(t, sc, d, e, dl, n)
              ORDER BY n
             ON CONFLICT (tenant, scope, day) DO UPDATE
                SET events = s.events + excluded.events,
                    deliveries = s.deliveries + excluded.deliveries",
        )
        .await?;
    tx.execute(
        &statement,
        &[&tenants, &scopes, &days, &events, &deliveries],
    )
    .await?;
    Ok(())
}

/// Event types per scope and day; a type new to a day that already has
/// [`MAX_EVENT_TYPES_PER_DAY`] counts under [`OTHER_EVENT_TYPES`] (two nodes adding new types
/// at the same moment may each see room for one more).
async fn add_event_types(
    tx: &Transaction<'_>,
    types: &BTreeMap<(DayKey, String), i64>,
) -> PgResult<()> {
    let tenants: Vec<&str> = types.keys().map(|(k, _)| k.0.as_str()).collect();
    let scopes: Vec<&str> = types.keys().map(|(k, _)| k.1.as_str()).collect();
    let days: Vec<i32> = types.keys().map(|(k, _)| k.2).collect();
    let names: Vec<&str> = types.keys().map(|(_, t)| t.as_str()).collect();
    let counts: Vec<i64> = types.values().copied().collect();
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO stats_event_types AS s (tenant, scope, day, event_type, count)
             SELECT t, sc, d, ty, sum(c) FROM (
                 SELECT u.t, u.sc, u.d,
                        CASE WHEN EXISTS (SELECT 1 FROM stats_event_types e
                                           WHERE e.tenant = u.t AND e.scope = u.sc
                                             AND e.day = u.d AND e.event_type = u.ty)
                               OR (SELECT count(*) FROM stats_event_types e
                                    WHERE e.tenant = u.t AND e.scope = u.sc AND e.day = u.d)
                                  < {MAX_EVENT_TYPES_PER_DAY}
                             THEN u.ty ELSE '{OTHER_EVENT_TYPES}' END AS ty,
                        u.c
                   FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::bigint[])
                        AS u(t, sc, d, ty, c)
             ) mapped
             GROUP BY t, sc, d, ty
             ORDER BY t, sc, d, ty
             ON CONFLICT (tenant, scope, day, event_type) DO UPDATE
                SET count = s.count + excluded.count"
        ))
        .await?;
    tx.execute(&statement, &[&tenants, &scopes, &days, &names, &counts])
        .await?;
    Ok(())
}

async fn add_totals(tx: &Transaction<'_>, totals: &BTreeMap<&str, (i64, i64)>) -> PgResult<()> {
    let tenants: Vec<&str> = totals.keys().copied().collect();
    let events: Vec<i64> = totals.values().map(|v| v.0).collect();
    let bytes: Vec<i64> = totals.values().map(|v| v.1).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO tenant_totals AS s (tenant, events, stored_bytes)
             SELECT t, e, b FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                    WITH ORDINALITY AS u(t, e, b, n)
              ORDER BY n
             ON CONFLICT (tenant) DO UPDATE
                SET events = greatest(0, s.events + excluded.events),
                    stored_bytes = greatest(0, s.stored_bytes + excluded.stored_bytes)",
        )
        .await?;
    tx.execute(&statement, &[&tenants, &events, &bytes]).await?;
    Ok(())
}

/// Takes purged events out of the tenants' totals.
pub(super) async fn remove_from_totals(
    tx: &Transaction<'_>,
    tenant: &str,
    events: i64,
    bytes: i64,
) -> PgResult<()> {
    if events == 0 {
        return Ok(());
    }
    let totals = BTreeMap::from([(tenant, (-events, -bytes))]);
    add_totals(tx, &totals).await
}

/// What a group of state changes does to the outcome counters of their days.
#[derive(Default)]
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

    fn record(&mut self, t: &Transition, moves: bool) {
        if moves {
            if let Some(slot) = self.slot(t.old) {
                *slot -= 1;
            }
            if let Some(slot) = self.slot(t.new) {
                *slot += 1;
            }
        }
        if let Some(ms) = t.latency_ms {
            self.latency.record(ms);
        }
    }
}

/// Moves each delivery's count from its old state to its new one and records attempt
/// latencies, per day of the delivery's creation, for the tenant, the webhook and the channel
/// (its scope if open for that day, else the overflow scope).
pub(super) async fn add_transitions(
    tx: &Transaction<'_>,
    transitions: &[Transition],
) -> PgResult<()> {
    let mut deltas: BTreeMap<DayKey, OutcomeDelta> = BTreeMap::new();
    let mut channel_days = std::collections::BTreeSet::new();
    let mut counted = Vec::with_capacity(transitions.len());
    for t in transitions {
        let moves = t.old != t.new && (!t.old.is_queued() || !t.new.is_queued());
        if !moves && t.latency_ms.is_none() {
            continue;
        }
        for scope in [TENANT_SCOPE, t.webhook_id.as_str()] {
            deltas
                .entry(day_key(&t.tenant, scope, t.created_at))
                .or_default()
                .record(t, moves);
        }
        if let Some(channel) = &t.channel {
            channel_days.insert(day_key(&t.tenant, &channel_scope(channel), t.created_at));
        }
        counted.push((t, moves));
    }
    if !channel_days.is_empty() {
        let open = existing_channel_scopes(tx, &channel_days).await?;
        for (t, moves) in counted {
            let Some(channel) = &t.channel else {
                continue;
            };
            let day = day_key(&t.tenant, &channel_scope(channel), t.created_at);
            let key = if open.contains(&day) {
                day
            } else {
                (day.0, CHANNEL_OVERFLOW_SCOPE.to_string(), day.2)
            };
            deltas.entry(key).or_default().record(t, moves);
        }
    }
    if deltas.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = deltas.keys().map(|k| k.0.as_str()).collect();
    let scopes: Vec<&str> = deltas.keys().map(|k| k.1.as_str()).collect();
    let days: Vec<i32> = deltas.keys().map(|k| k.2).collect();
    let delivered: Vec<i64> = deltas.values().map(|d| d.delivered).collect();
    let failed: Vec<i64> = deltas.values().map(|d| d.failed).collect();
    let filtered: Vec<i64> = deltas.values().map(|d| d.filtered).collect();
    let counts: Vec<i64> = deltas.values().map(|d| d.latency.count as i64).collect();
    let sums: Vec<i64> = deltas.values().map(|d| d.latency.sum_ms as i64).collect();
    let maxes: Vec<i64> = deltas.values().map(|d| d.latency.max_ms as i64).collect();
    // Arrays of arrays do not unnest row by row: each histogram travels as array text.
    let buckets: Vec<String> = deltas
        .values()
        .map(|d| {
            let mut buckets = d.latency.buckets.clone();
            buckets.resize(LATENCY_BUCKETS_MS.len() + 1, 0);
            let items: Vec<String> = buckets.iter().map(u64::to_string).collect();
            format!("{{{}}}", items.join(","))
        })
        .collect();
    // Deltas go in signed (a delivery leaving a final state takes one out); reads clamp at 0.
    let statement = tx
        .prepare_cached(
            "INSERT INTO stats_outcomes AS s (tenant, scope, day, delivered, failed, filtered,
                                              latency_count, latency_sum_ms, latency_max_ms,
                                              latency_buckets)
             SELECT t, sc, d, dv, fa, fi, lc, ls, lm, lb::bigint[]
               FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[], $5::bigint[],
                           $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[])
                    WITH ORDINALITY AS u(t, sc, d, dv, fa, fi, lc, ls, lm, lb, n)
              ORDER BY n
             ON CONFLICT (tenant, scope, day) DO UPDATE
                SET delivered = s.delivered + excluded.delivered,
                    failed = s.failed + excluded.failed,
                    filtered = s.filtered + excluded.filtered,
                    latency_count = s.latency_count + excluded.latency_count,
                    latency_sum_ms = s.latency_sum_ms + excluded.latency_sum_ms,
                    latency_max_ms = greatest(s.latency_max_ms, excluded.latency_max_ms),
                    latency_buckets = (
                        SELECT array_agg(coalesce(a, 0) + coalesce(b, 0) ORDER BY i)
                          FROM unnest(s.latency_buckets, excluded.latency_buckets)
                               WITH ORDINALITY AS x(a, b, i))",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &tenants, &scopes, &days, &delivered, &failed, &filtered, &counts, &sums, &maxes,
            &buckets,
        ],
    )
    .await?;
    Ok(())
}

/// The statistics of a scope for each day from `first_day` to `last_day`.
pub(super) async fn days(
    store: &PostgresStore,
    tenant: &str,
    scope: StatsScope<'_>,
    first_day: u32,
    last_day: u32,
) -> PgResult<Vec<DayStats>> {
    let mut days: Vec<DayStats> = (first_day..=last_day)
        .map(|day| DayStats {
            day,
            ..DayStats::default()
        })
        .collect();
    let (first, last) = (first_day as i32, last_day as i32);
    let scope = scope.name();
    let scope = scope.as_ref();
    let client = store.client().await?;
    let (ingest, outcomes, types) = futures::try_join!(
        async {
            let statement = client
                .prepare_cached(
                    "SELECT day, events, deliveries FROM stats_ingest
                      WHERE tenant = $1 AND scope = $2 AND day BETWEEN $3 AND $4",
                )
                .await?;
            client
                .query(&statement, &[&tenant, &scope, &first, &last])
                .await
        },
        async {
            let statement = client
                .prepare_cached(
                    "SELECT day, delivered, failed, filtered, latency_count, latency_sum_ms,
                            latency_max_ms, latency_buckets
                       FROM stats_outcomes
                      WHERE tenant = $1 AND scope = $2 AND day BETWEEN $3 AND $4",
                )
                .await?;
            client
                .query(&statement, &[&tenant, &scope, &first, &last])
                .await
        },
        async {
            let statement = client
                .prepare_cached(
                    "SELECT day, event_type, count FROM stats_event_types
                      WHERE tenant = $1 AND scope = $2 AND day BETWEEN $3 AND $4",
                )
                .await?;
            client
                .query(&statement, &[&tenant, &scope, &first, &last])
                .await
        },
    )?;
    let index = |day: i32| usize::try_from(day - first).ok();
    for row in &ingest {
        if let Some(day) = index(row.try_get(0)?).and_then(|i| days.get_mut(i)) {
            day.counts.events += row.try_get::<_, i64>(1)?.max(0) as u64;
            day.counts.deliveries += row.try_get::<_, i64>(2)?.max(0) as u64;
        }
    }
    for row in &outcomes {
        if let Some(day) = index(row.try_get(0)?).and_then(|i| days.get_mut(i)) {
            day.counts.delivered += row.try_get::<_, i64>(1)?.max(0) as u64;
            day.counts.failed += row.try_get::<_, i64>(2)?.max(0) as u64;
            day.counts.filtered += row.try_get::<_, i64>(3)?.max(0) as u64;
            let buckets: Vec<i64> = row.try_get(7)?;
            day.counts.latency.merge(&LatencyHistogram {
                count: row.try_get::<_, i64>(4)?.max(0) as u64,
                sum_ms: row.try_get::<_, i64>(5)?.max(0) as u64,
                max_ms: row.try_get::<_, i64>(6)?.max(0) as u64,
                buckets: buckets.into_iter().map(|b| b.max(0) as u64).collect(),
            });
        }
    }
    for row in &types {
        if let Some(day) = index(row.try_get(0)?).and_then(|i| days.get_mut(i)) {
            *day.event_types.entry(row.try_get(1)?).or_default() +=
                row.try_get::<_, i64>(2)?.max(0) as u64;
        }
    }
    Ok(days)
}

pub(super) async fn usage(store: &PostgresStore, tenant: &str) -> PgResult<TenantUsage> {
    let webhooks = super::webhooks::of_tenant(store, tenant).await?.len() as u64;
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT (SELECT events FROM tenant_totals WHERE tenant = $1),
                    (SELECT stored_bytes FROM tenant_totals WHERE tenant = $1),
                    (SELECT count(*) FROM deliveries
                      WHERE tenant = $1 AND next_attempt_at IS NOT NULL)",
        )
        .await?;
    let row = client.query_one(&statement, &[&tenant]).await?;
    Ok(TenantUsage {
        webhooks,
        events: row.try_get::<_, Option<i64>>(0)?.unwrap_or(0).max(0) as u64,
        stored_bytes: row.try_get::<_, Option<i64>>(1)?.unwrap_or(0).max(0) as u64,
        pending_deliveries: row.try_get::<_, i64>(2)?.max(0) as u64,
    })
}
