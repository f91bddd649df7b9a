//! Deliveries and the queue: claims under leases, the group commit of attempt outcomes, the
//! other state changes (requeue, settle, recover), reads and listings.
//!
//! A claim (`hookd_claim`, migrations 1, 2 and 6) writes the claiming node, an expiry and a fresh
//! token into each claimed row. An outcome is recorded only where the row still carries this node
//! and that token: a node whose lease ran out and was taken over records nothing
//! ([`StoreError::LeaseLost`]), so the delivery's state is whatever its new holder records.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::codec::{self, Filtered, ms, status_text, unms};
use super::stats::{self, Transition};
use super::{PgResult, PostgresStore, notify, retry_tx};
use crate::ids::{DeliveryId, WebhookId};
use crate::store::health::WebhookHealth;
use crate::store::{
    AttemptOutcome, AttemptRecord, Claim, DeliveryFilter, DeliveryRecord, DeliveryStatus, Page,
    QueueHead, Result, ScheduleCounts, StoreError,
};

/// `DELIVERY_COLUMNS` of the row being updated (`d`), for `RETURNING` next to other tables.
fn returned_columns() -> String {
    codec::DELIVERY_COLUMNS
        .split(", ")
        .map(|column| format!("d.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) async fn claim(
    store: &PostgresStore,
    tenant: &str,
    webhook: &WebhookId,
    in_flight: &HashSet<DeliveryId>,
    skip_due_before: Option<u64>,
    now_ms: u64,
    limit: usize,
) -> PgResult<QueueHead> {
    if limit == 0 {
        return Ok(QueueHead::default());
    }
    // The rate limit is the webhook's own (cached); the bucket is shared in the database.
    let rate: Option<i32> = super::webhooks::of_tenant(store, tenant)
        .await?
        .iter()
        .find(|w| &w.id == webhook)
        .and_then(|w| w.rate_limit_per_sec)
        .map(|rate| i32::try_from(rate).unwrap_or(i32::MAX));
    let skip: Vec<Uuid> = in_flight.iter().map(codec::uuid).collect();
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT delivery_id, lease_token, due
               FROM hookd_claim($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &tenant,
                &codec::uuid(webhook),
                &store.inner.node,
                &skip,
                &skip_due_before.map(ms),
                &ms(now_ms),
                &i32::try_from(limit).unwrap_or(i32::MAX),
                &ms(store.inner.lease_ms),
                &rate,
            ],
        )
        .await?;
    let mut head = QueueHead::default();
    let mut claimed: Vec<(i64, Uuid, i64)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let due: Option<i64> = row.try_get(2)?;
        match row.try_get::<_, Option<Uuid>>(0)? {
            Some(id) => claimed.push((due.unwrap_or(0), id, row.try_get(1)?)),
            None => head.next_due = due.map(unms),
        }
    }
    claimed.sort();
    let mut held = store.held();
    for (due, id, token) in claimed {
        held.insert((tenant.to_string(), id), token);
        head.due.push(Claim {
            delivery_id: codec::id(id),
            lease: token as u64,
            queue_due: Some(unms(due)),
        });
    }
    Ok(head)
}

/// What the outcome transaction found for the group.
struct Recorded {
    /// (tenant, delivery) whose outcome was written.
    written: HashSet<(String, Uuid)>,
    /// (tenant, delivery) that exist but are no longer leased to this node under that token.
    lost: HashSet<(String, Uuid)>,
}

pub(super) async fn record(
    store: &PostgresStore,
    outcomes: Vec<AttemptOutcome>,
) -> Result<Vec<Result<()>>> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let recorded = retry_tx!(record_tx(store, &outcomes))?;
    {
        let mut held = store.held();
        for outcome in &outcomes {
            let key = (
                outcome.tenant.clone(),
                codec::uuid(&outcome.attempt.delivery_id),
            );
            if held.get(&key) == Some(&(outcome.lease as i64)) {
                held.remove(&key);
            }
        }
    }
    let mut results = Vec::with_capacity(outcomes.len());
    for outcome in &outcomes {
        let key = (
            outcome.tenant.clone(),
            codec::uuid(&outcome.attempt.delivery_id),
        );
        if recorded.lost.contains(&key) {
            results.push(Err(StoreError::LeaseLost(
                outcome.attempt.delivery_id.to_string(),
            )));
            continue;
        }
        if recorded.written.contains(&key)
            && let (Some(due), Some(listener)) = (outcome.update.next_attempt_at, store.listener())
        {
            listener.due(&outcome.tenant, &outcome.attempt.webhook_id, due);
        }
        // Written, or the delivery is gone (purged, its webhook deleted): nothing to record.
        results.push(Ok(()));
    }
    Ok(results)
}

/// One transaction for the group, committed without waiting for the WAL flush: a lost outcome
/// only makes its delivery due again, as the store interface allows.
async fn record_tx(store: &PostgresStore, outcomes: &[AttemptOutcome]) -> PgResult<Recorded> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    let transitions = apply_outcomes(&tx, &store.inner.node, outcomes).await?;
    let written: HashSet<(String, Uuid)> = transitions
        .iter()
        .map(|t| (t.tenant.clone(), codec::uuid(&t.delivery_id)))
        .collect();
    let missing: Vec<&AttemptOutcome> = outcomes
        .iter()
        .filter(|o| !written.contains(&(o.tenant.clone(), codec::uuid(&o.attempt.delivery_id))))
        .collect();
    let lost = existing(&tx, &missing).await?;
    let recorded: Vec<&AttemptOutcome> = outcomes
        .iter()
        .filter(|o| written.contains(&(o.tenant.clone(), codec::uuid(&o.attempt.delivery_id))))
        .collect();
    let retries: Vec<(String, WebhookId, u64)> = recorded
        .iter()
        .filter_map(|o| {
            let due = o.update.next_attempt_at?;
            Some((o.tenant.clone(), o.attempt.webhook_id.clone(), due))
        })
        .collect();
    futures::try_join!(
        insert_attempts(&tx, &recorded),
        stats::add_transitions(&tx, &transitions),
        notify::send_due(&tx, &store.inner.node, retries),
    )?;
    record_health(&tx, &recorded).await?;
    tx.commit().await?;
    Ok(Recorded { written, lost })
}

/// Writes each outcome's consequence where the lease still holds; returns what changed.
async fn apply_outcomes(
    tx: &Transaction<'_>,
    node: &str,
    outcomes: &[AttemptOutcome],
) -> PgResult<Vec<Transition>> {
    let tenants: Vec<&str> = outcomes.iter().map(|o| o.tenant.as_str()).collect();
    let ids: Vec<Uuid> = outcomes
        .iter()
        .map(|o| codec::uuid(&o.attempt.delivery_id))
        .collect();
    let tokens: Vec<i64> = outcomes.iter().map(|o| o.lease as i64).collect();
    let statuses: Vec<&str> = outcomes
        .iter()
        .map(|o| status_text(o.update.status))
        .collect();
    let next: Vec<Option<i64>> = outcomes
        .iter()
        .map(|o| o.update.next_attempt_at.map(ms))
        .collect();
    let numbers: Vec<i32> = outcomes
        .iter()
        .map(|o| i32::try_from(o.attempt.attempt).unwrap_or(i32::MAX))
        .collect();
    let started: Vec<i64> = outcomes.iter().map(|o| ms(o.attempt.started_at)).collect();
    let codes: Vec<Option<i32>> = outcomes
        .iter()
        .map(|o| o.attempt.status_code.map(i32::from))
        .collect();
    let errors: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| o.attempt.error_code.as_deref())
        .collect();
    let filtered_by: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| o.update.filtered_by.as_deref())
        .collect();
    let latencies: HashMap<(&str, Uuid), u64> = outcomes
        .iter()
        .map(|o| {
            (
                (o.tenant.as_str(), codec::uuid(&o.attempt.delivery_id)),
                o.attempt.latency_ms,
            )
        })
        .collect();
    let statement = tx
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::text[], $2::uuid[], $3::bigint[], $4::text[],
                                      $5::bigint[], $6::integer[], $7::bigint[], $8::integer[],
                                      $9::text[], $10::text[])
                     AS u(tenant, id, token, status, next_at, attempt, started_at, status_code,
                          error, filtered_by)
             ), old AS (
                 SELECT d.tenant, d.id, d.status FROM deliveries d
                   JOIN input u ON d.tenant = u.tenant AND d.id = u.id
                  WHERE d.lease_node = $11 AND d.lease_token = u.token
                  ORDER BY d.tenant, d.id
                    FOR UPDATE OF d
             )
             UPDATE deliveries d
                SET status = u.status, next_attempt_at = u.next_at,
                    attempts = greatest(d.attempts, u.attempt), last_attempt_at = u.started_at,
                    last_status_code = u.status_code, last_error = u.error,
                    filtered_by = u.filtered_by, updated_at = $12,
                    lease_node = NULL, lease_until = NULL, lease_token = NULL
               FROM old JOIN input u ON u.tenant = old.tenant AND u.id = old.id
              WHERE d.tenant = old.tenant AND d.id = old.id
             RETURNING d.tenant, d.id, old.status, d.status, d.created_at, d.webhook_id,
                       d.channel",
        )
        .await?;
    let rows = tx
        .query(
            &statement,
            &[
                &tenants,
                &ids,
                &tokens,
                &statuses,
                &next,
                &numbers,
                &started,
                &codes,
                &errors,
                &filtered_by,
                &node,
                &ms(crate::ids::now_ms()),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let tenant: String = row.try_get(0)?;
            let id: Uuid = row.try_get(1)?;
            Ok(Transition {
                latency_ms: latencies.get(&(tenant.as_str(), id)).copied(),
                delivery_id: codec::id(id),
                old: codec::status(row.try_get(2)?)?,
                new: codec::status(row.try_get(3)?)?,
                created_at: unms(row.try_get(4)?),
                webhook_id: codec::id(row.try_get(5)?),
                channel: row.try_get(6)?,
                tenant,
            })
        })
        .collect()
}

/// Applies the recorded attempts to their webhooks' health, in the outcome transaction: the
/// health rows are read locked (in key order) and written back once per webhook.
async fn record_health(tx: &Transaction<'_>, outcomes: &[&AttemptOutcome]) -> PgResult<()> {
    let mut by_webhook: std::collections::BTreeMap<(&str, Uuid), Vec<&AttemptRecord>> =
        std::collections::BTreeMap::new();
    for outcome in outcomes {
        by_webhook
            .entry((
                outcome.tenant.as_str(),
                codec::uuid(&outcome.attempt.webhook_id),
            ))
            .or_default()
            .push(&outcome.attempt);
    }
    if by_webhook.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = by_webhook.keys().map(|(t, _)| *t).collect();
    let webhooks: Vec<Uuid> = by_webhook.keys().map(|(_, w)| *w).collect();
    let statement = tx
        .prepare_cached(
            "SELECT h.tenant, h.webhook_id, h.record::text FROM webhook_health h
               JOIN unnest($1::text[], $2::uuid[]) AS u(tenant, webhook_id)
                 ON h.tenant = u.tenant AND h.webhook_id = u.webhook_id
              ORDER BY h.tenant, h.webhook_id
                FOR UPDATE OF h",
        )
        .await?;
    let mut current: HashMap<(String, Uuid), WebhookHealth> = HashMap::new();
    for row in tx.query(&statement, &[&tenants, &webhooks]).await? {
        let text: String = row.try_get(2)?;
        let health = serde_json::from_str(&text).unwrap_or_default();
        current.insert((row.try_get(0)?, row.try_get(1)?), health);
    }
    let mut changed: Vec<(&str, Uuid, String)> = Vec::new();
    for ((tenant, webhook), mut attempts) in by_webhook {
        attempts.sort_by_key(|a| a.started_at);
        let mut health = current
            .remove(&(tenant.to_string(), webhook))
            .unwrap_or_default();
        let mut any = false;
        for attempt in attempts {
            any |= health.record(attempt);
        }
        if any {
            let text = serde_json::to_string(&health).expect("health serialises");
            changed.push((tenant, webhook, text));
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = changed.iter().map(|(t, _, _)| *t).collect();
    let webhooks: Vec<Uuid> = changed.iter().map(|(_, w, _)| *w).collect();
    let records: Vec<&str> = changed.iter().map(|(_, _, r)| r.as_str()).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO webhook_health AS h (tenant, webhook_id, record)
             SELECT t, w, r::jsonb FROM unnest($1::text[], $2::uuid[], $3::text[])
                    WITH ORDINALITY AS u(t, w, r, n)
              ORDER BY n
             ON CONFLICT (tenant, webhook_id) DO UPDATE SET record = excluded.record",
        )
        .await?;
    tx.execute(&statement, &[&tenants, &webhooks, &records])
        .await?;
    Ok(())
}

/// A webhook's health; the default before its first attempt.
pub(super) async fn health(
    store: &PostgresStore,
    tenant: &str,
    webhook: &WebhookId,
) -> PgResult<WebhookHealth> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT record::text FROM webhook_health WHERE tenant = $1 AND webhook_id = $2",
        )
        .await?;
    match client
        .query_opt(&statement, &[&tenant, &codec::uuid(webhook)])
        .await?
    {
        Some(row) => serde_json::from_str(&row.try_get::<_, String>(0)?).map_err(codec::corrupt),
        None => Ok(WebhookHealth::default()),
    }
}

/// Which of `outcomes`' deliveries exist (those not written lost their lease).
async fn existing(
    tx: &Transaction<'_>,
    outcomes: &[&AttemptOutcome],
) -> PgResult<HashSet<(String, Uuid)>> {
    if outcomes.is_empty() {
        return Ok(HashSet::new());
    }
    let tenants: Vec<&str> = outcomes.iter().map(|o| o.tenant.as_str()).collect();
    let ids: Vec<Uuid> = outcomes
        .iter()
        .map(|o| codec::uuid(&o.attempt.delivery_id))
        .collect();
    let statement = tx
        .prepare_cached(
            "SELECT d.tenant, d.id FROM deliveries d
               JOIN unnest($1::text[], $2::uuid[]) AS u(tenant, id)
                 ON d.tenant = u.tenant AND d.id = u.id",
        )
        .await?;
    Ok(tx
        .query(&statement, &[&tenants, &ids])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

async fn insert_attempts(tx: &Transaction<'_>, outcomes: &[&AttemptOutcome]) -> PgResult<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = outcomes.iter().map(|o| o.tenant.as_str()).collect();
    let deliveries: Vec<Uuid> = outcomes
        .iter()
        .map(|o| codec::uuid(&o.attempt.delivery_id))
        .collect();
    let ids: Vec<Uuid> = outcomes
        .iter()
        .map(|o| codec::uuid(&o.attempt.id))
        .collect();
    let records: Vec<String> = outcomes
        .iter()
        .map(|o| serde_json::to_string(&o.attempt).expect("attempt records serialise"))
        .collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO attempts (tenant, delivery_id, id, record)
             SELECT t, d, i, r::json
               FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[]) AS u(t, d, i, r)",
        )
        .await?;
    tx.execute(&statement, &[&tenants, &deliveries, &ids, &records])
        .await?;
    Ok(())
}

/// Sets the state of the tenant's deliveries matching `filter` (an SQL condition on `d`
/// whose parameters start at $6), clears their leases and moves their statistics, in `tx`.
/// Returns each delivery as it is now.
pub(super) async fn change_where(
    tx: &Transaction<'_>,
    tenant: &str,
    filter: &str,
    filter_params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    status: DeliveryStatus,
    next_attempt_at: Option<u64>,
    error: Option<&str>,
) -> PgResult<Vec<DeliveryRecord>> {
    let statement = tx
        .prepare_cached(&format!(
            "WITH old AS (
                 SELECT d.tenant, d.id, d.status FROM deliveries d
                  WHERE d.tenant = $1 AND {filter}
                  ORDER BY d.id
                    FOR UPDATE
             )
             UPDATE deliveries d
                SET status = $2, next_attempt_at = $3, last_error = coalesce($4, d.last_error),
                    updated_at = $5, lease_node = NULL, lease_until = NULL, lease_token = NULL
               FROM old
              WHERE d.tenant = old.tenant AND d.id = old.id
             RETURNING old.status, {}",
            returned_columns()
        ))
        .await?;
    let status_word = status_text(status);
    let next = next_attempt_at.map(ms);
    let now = ms(crate::ids::now_ms());
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&tenant, &status_word, &next, &error, &now];
    params.extend_from_slice(filter_params);
    let rows = tx.query(&statement, &params).await?;
    let mut changed = Vec::with_capacity(rows.len());
    let mut transitions = Vec::with_capacity(rows.len());
    for row in &rows {
        let old = codec::status(row.try_get(0)?)?;
        let record = delivery_after_first(row)?;
        transitions.push(Transition {
            tenant: tenant.to_string(),
            delivery_id: record.id.clone(),
            webhook_id: record.webhook_id.clone(),
            channel: record.channel.clone(),
            created_at: record.created_at,
            old,
            new: record.status,
            latency_ms: None,
        });
        changed.push(record);
    }
    stats::add_transitions(tx, &transitions).await?;
    Ok(changed)
}

/// A delivery from a row whose first column is something else (`old.status`).
fn delivery_after_first(row: &tokio_postgres::Row) -> PgResult<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: codec::id(row.try_get(1)?),
        event_id: codec::id(row.try_get(2)?),
        webhook_id: codec::id(row.try_get(3)?),
        event_type: row.try_get(4)?,
        channel: row.try_get(5)?,
        status: codec::status(row.try_get(6)?)?,
        attempts: row.try_get::<_, i32>(7)?.max(0) as u32,
        created_at: unms(row.try_get(8)?),
        updated_at: unms(row.try_get(9)?),
        next_attempt_at: row.try_get::<_, Option<i64>>(10)?.map(unms),
        last_attempt_at: row.try_get::<_, Option<i64>>(11)?.map(unms),
        last_status_code: row
            .try_get::<_, Option<i32>>(12)?
            .and_then(|code| u16::try_from(code).ok()),
        last_error: row.try_get(13)?,
        filtered_by: row.try_get(14)?,
    })
}

/// Forgets the leases of `deliveries` (their state was changed outside an attempt).
fn forget_leases(store: &PostgresStore, tenant: &str, deliveries: &[DeliveryRecord]) {
    let mut held = store.held();
    for delivery in deliveries {
        held.remove(&(tenant.to_string(), codec::uuid(&delivery.id)));
    }
}

pub(super) async fn requeue(
    store: &PostgresStore,
    tenant: &str,
    id: &DeliveryId,
    due_ms: u64,
) -> Result<Option<DeliveryRecord>> {
    let changed = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let changed = change_where(
            &tx,
            tenant,
            "d.id = $6",
            &[&codec::uuid(id)],
            DeliveryStatus::Pending,
            Some(due_ms),
            None,
        )
        .await?;
        if let Some(delivery) = changed.first() {
            notify::send_due(
                &tx,
                &store.inner.node,
                vec![(tenant.to_string(), delivery.webhook_id.clone(), due_ms)],
            )
            .await?;
        }
        tx.commit().await?;
        PgResult::Ok(changed)
    })?;
    forget_leases(store, tenant, &changed);
    let delivery = changed.into_iter().next();
    if let (Some(delivery), Some(listener)) = (&delivery, store.listener()) {
        listener.due(tenant, &delivery.webhook_id, due_ms);
    }
    Ok(delivery)
}

pub(super) async fn settle(
    store: &PostgresStore,
    tenant: &str,
    id: &DeliveryId,
    status: DeliveryStatus,
    error: &str,
) -> Result<()> {
    let changed = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let changed = change_where(
            &tx,
            tenant,
            "d.id = $6",
            &[&codec::uuid(id)],
            status,
            None,
            Some(error),
        )
        .await?;
        tx.commit().await?;
        PgResult::Ok(changed)
    })?;
    forget_leases(store, tenant, &changed);
    Ok(())
}

pub(super) async fn recover(
    store: &PostgresStore,
    tenant: &str,
    webhook: &WebhookId,
    since_ms: u64,
) -> Result<usize> {
    let now = crate::ids::now_ms();
    let changed = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let changed = change_where(
            &tx,
            tenant,
            "d.webhook_id = $6 AND d.status = 'failed' AND d.created_at >= $7",
            &[&codec::uuid(webhook), &ms(since_ms)],
            DeliveryStatus::Pending,
            Some(now),
            None,
        )
        .await?;
        if !changed.is_empty() {
            notify::send_due(
                &tx,
                &store.inner.node,
                vec![(tenant.to_string(), webhook.clone(), now)],
            )
            .await?;
        }
        tx.commit().await?;
        PgResult::Ok(changed)
    })?;
    if !changed.is_empty()
        && let Some(listener) = store.listener()
    {
        listener.due(tenant, webhook, now);
    }
    Ok(changed.len())
}

/// Gives back every lease this node holds (at shutdown) and tells the other nodes the
/// deliveries are due, so they take them now rather than when the leases would have run out.
pub(super) async fn release_claims(store: &PostgresStore) -> PgResult<()> {
    let held: Vec<((String, Uuid), i64)> = store.held().drain().collect();
    if held.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = held.iter().map(|((t, _), _)| t.as_str()).collect();
    let ids: Vec<Uuid> = held.iter().map(|((_, id), _)| *id).collect();
    let tokens: Vec<i64> = held.iter().map(|(_, token)| *token).collect();
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "UPDATE deliveries d
                SET lease_node = NULL, lease_until = NULL, lease_token = NULL
               FROM unnest($1::text[], $2::uuid[], $3::bigint[]) AS u(tenant, id, token)
              WHERE d.tenant = u.tenant AND d.id = u.id
                AND d.lease_node = $4 AND d.lease_token = u.token
             RETURNING d.tenant, d.webhook_id, d.next_attempt_at",
            &[&tenants, &ids, &tokens, &store.inner.node],
        )
        .await?;
    let mut due: HashMap<(String, Uuid), u64> = HashMap::new();
    for row in &rows {
        if let Some(at) = row.try_get::<_, Option<i64>>(2)? {
            let entry = due
                .entry((row.try_get(0)?, row.try_get(1)?))
                .or_insert(u64::MAX);
            *entry = (*entry).min(unms(at));
        }
    }
    let wakes = due
        .into_iter()
        .map(|((tenant, webhook), at)| (tenant, codec::id(webhook), at))
        .collect();
    notify::send_due(&tx, &store.inner.node, wakes).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn delivery(
    store: &PostgresStore,
    tenant: &str,
    id: &DeliveryId,
) -> PgResult<Option<DeliveryRecord>> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {} FROM deliveries WHERE tenant = $1 AND id = $2",
            codec::DELIVERY_COLUMNS
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&tenant, &codec::uuid(id)])
        .await?;
    row.as_ref().map(codec::delivery).transpose()
}

pub(super) async fn deliveries_of_event(
    store: &PostgresStore,
    tenant: &str,
    event: &crate::ids::EventId,
) -> PgResult<Vec<DeliveryRecord>> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {} FROM deliveries WHERE tenant = $1 AND event_id = $2 ORDER BY id",
            codec::DELIVERY_COLUMNS
        ))
        .await?;
    client
        .query(&statement, &[&tenant, &codec::uuid(event)])
        .await?
        .iter()
        .map(codec::delivery)
        .collect()
}

pub(super) async fn list(
    store: &PostgresStore,
    tenant: &str,
    filter: &DeliveryFilter,
    cursor: Option<&str>,
    limit: usize,
) -> PgResult<Page<DeliveryRecord>> {
    let mut query = Filtered::new(
        format!(
            "SELECT {} FROM deliveries WHERE tenant = $1",
            codec::DELIVERY_COLUMNS
        ),
        tenant,
    );
    if let Some(before) = codec::cursor::<DeliveryId>(cursor) {
        query.and("id <", before);
    }
    if let Some(webhook) = &filter.webhook_id {
        query.and("webhook_id =", codec::uuid(webhook));
    }
    if let Some(status) = filter.status {
        query.and("status =", status_text(status).to_string());
    }
    query.and_event_filters(
        filter.event_type.as_ref(),
        filter.channel.as_ref(),
        filter.after_ms,
        filter.before_ms,
    );
    query
        .newest_first(store, limit, codec::delivery, |d: &DeliveryRecord| {
            d.id.to_string()
        })
        .await
}

pub(super) async fn attempts(
    store: &PostgresStore,
    tenant: &str,
    delivery: &DeliveryId,
) -> PgResult<Vec<AttemptRecord>> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT record::text FROM attempts WHERE tenant = $1 AND delivery_id = $2 ORDER BY id",
        )
        .await?;
    client
        .query(&statement, &[&tenant, &codec::uuid(delivery)])
        .await?
        .iter()
        .map(|row| {
            let text: String = row.try_get(0)?;
            serde_json::from_str(&text).map_err(codec::corrupt)
        })
        .collect()
}

pub(super) async fn schedule_counts(
    store: &PostgresStore,
    now_ms: u64,
    max_entries: usize,
) -> PgResult<ScheduleCounts> {
    let limit = i64::try_from(max_entries)
        .unwrap_or(i64::MAX - 1)
        .saturating_add(1);
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE next_attempt_at <= $1), count(*)
               FROM (SELECT next_attempt_at FROM deliveries
                      WHERE next_attempt_at IS NOT NULL LIMIT $2) queued",
        )
        .await?;
    let row = client.query_one(&statement, &[&ms(now_ms), &limit]).await?;
    let due = row.try_get::<_, i64>(0)?.max(0) as usize;
    let scheduled = row.try_get::<_, i64>(1)?.max(0) as usize;
    Ok(ScheduleCounts {
        due: due.min(max_entries),
        scheduled: scheduled.min(max_entries),
        truncated: scheduled > max_entries,
    })
}
