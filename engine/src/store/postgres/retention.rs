//! Purging old records in PostgreSQL, in bounded transactions: first finished deliveries with
//! their attempts, then events none of whose deliveries remain (with their idempotency entry).
//! A purge of one channel (`DELETE /v1/deliveries?channel=`) adds `channel = $6` to both (a
//! delivery carries its event's channel).
//!
//! Rows are chosen with `FOR UPDATE SKIP LOCKED` and the conditions are checked again on the
//! locked row, so a delivery re-queued meanwhile (manual retry) or claimed by a node is never
//! removed. Statistics counters are aggregates and stay (`prune_stats` drops old days).

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::codec::ms;
use super::{PgResult, PostgresStore, stats};
use crate::store::PurgeOutcome;

/// Rows one purge transaction removes at most.
const PURGE_BATCH_ROWS: i64 = 1_000;
/// Ids are made a little after the `created_at` they carry (the ingest writer stamps events
/// before the store names them): the id range scanned reaches this far past the cutoff, and
/// `created_at` decides.
const ID_MARGIN_MS: u64 = 60_000;

/// The smallest UUIDv7 of `ms`: every id made earlier sorts before it.
fn id_bound(ms: u64) -> Uuid {
    Uuid::from_u128(u128::from(ms.min(0xffff_ffff_ffff)) << 80)
}

pub(super) async fn purge(
    store: &PostgresStore,
    tenant: Option<&str>,
    channel: Option<&str>,
    before_ms: u64,
    stop: &CancellationToken,
) -> PgResult<PurgeOutcome> {
    let tenants = match tenant {
        Some(tenant) => vec![tenant.to_string()],
        None => {
            let client = store.client().await?;
            client
                .query("SELECT DISTINCT tenant FROM tenant_totals", &[])
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect()
        }
    };
    let mut total = PurgeOutcome::default();
    for tenant in tenants {
        let mut after = Uuid::nil();
        while !stop.is_cancelled() {
            let (outcome, last) =
                purge_deliveries(store, &tenant, channel, before_ms, after).await?;
            total.add(outcome);
            match last {
                Some(id) => after = id,
                None => break,
            }
        }
        let mut after = Uuid::nil();
        while !stop.is_cancelled() {
            let (events, last) = purge_events(store, &tenant, channel, before_ms, after).await?;
            total.events += events;
            match last {
                Some(id) => after = id,
                None => break,
            }
        }
        if stop.is_cancelled() {
            break;
        }
    }
    Ok(total)
}

/// One batch of finished deliveries created before `before_ms` (ids after `after`; on
/// `channel` if given), with their attempts. Returns what went and the id to continue after
/// (`None`: done).
async fn purge_deliveries(
    store: &PostgresStore,
    tenant: &str,
    channel: Option<&str>,
    before_ms: u64,
    after: Uuid,
) -> PgResult<(PurgeOutcome, Option<Uuid>)> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let statement = tx
        .prepare_cached(
            "WITH doomed AS (
                 SELECT tenant, id FROM deliveries
                  WHERE tenant = $1 AND id > $2 AND id < $3 AND created_at < $4
                    AND next_attempt_at IS NULL
                    AND ($6::text IS NULL OR channel = $6)
                  ORDER BY id
                  LIMIT $5
                    FOR UPDATE SKIP LOCKED
             )
             DELETE FROM deliveries d USING doomed
              WHERE d.tenant = doomed.tenant AND d.id = doomed.id
             RETURNING d.id",
        )
        .await?;
    let bound = id_bound(before_ms.saturating_add(ID_MARGIN_MS));
    let ids: Vec<Uuid> = tx
        .query(
            &statement,
            &[
                &tenant,
                &after,
                &bound,
                &ms(before_ms),
                &PURGE_BATCH_ROWS,
                &channel,
            ],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if ids.is_empty() {
        tx.commit().await?;
        return Ok((PurgeOutcome::default(), None));
    }
    let attempts = tx
        .execute(
            "DELETE FROM attempts a USING unnest($2::uuid[]) AS u(id)
              WHERE a.tenant = $1 AND a.delivery_id = u.id",
            &[&tenant, &ids],
        )
        .await?;
    tx.commit().await?;
    let outcome = PurgeOutcome {
        events: 0,
        deliveries: ids.len() as u64,
        attempts,
    };
    let more = ids.len() as i64 == PURGE_BATCH_ROWS;
    Ok((outcome, more.then(|| ids.iter().max().copied()).flatten()))
}

/// One batch of events created before `before_ms` (on `channel` if given) with no delivery
/// left, with the idempotency entries that name them.
async fn purge_events(
    store: &PostgresStore,
    tenant: &str,
    channel: Option<&str>,
    before_ms: u64,
    after: Uuid,
) -> PgResult<(u64, Option<Uuid>)> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let statement = tx
        .prepare_cached(
            "WITH doomed AS (
                 SELECT e.tenant, e.id FROM events e
                  WHERE e.tenant = $1 AND e.id > $2 AND e.id < $3 AND e.created_at < $4
                    AND ($6::text IS NULL OR e.channel = $6)
                    AND NOT EXISTS (SELECT 1 FROM deliveries d
                                     WHERE d.tenant = e.tenant AND d.event_id = e.id)
                  ORDER BY e.id
                  LIMIT $5
                    FOR UPDATE SKIP LOCKED
             )
             DELETE FROM events e USING doomed
              WHERE e.tenant = doomed.tenant AND e.id = doomed.id
             RETURNING e.id, e.idempotency_key, octet_length(e.payload)",
        )
        .await?;
    let bound = id_bound(before_ms.saturating_add(ID_MARGIN_MS));
    let rows = tx
        .query(
            &statement,
            &[
                &tenant,
                &after,
                &bound,
                &ms(before_ms),
                &PURGE_BATCH_ROWS,
                &channel,
            ],
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
    let keyed: Vec<(Uuid, String)> = rows
        .iter()
        .filter_map(|row| Some((row.get(0), row.get::<_, Option<String>>(1)?)))
        .collect();
    let bytes: i64 = rows.iter().map(|row| i64::from(row.get::<_, i32>(2))).sum();
    if !keyed.is_empty() {
        let key_ids: Vec<Uuid> = keyed.iter().map(|(id, _)| *id).collect();
        let keys: Vec<&str> = keyed.iter().map(|(_, key)| key.as_str()).collect();
        tx.execute(
            "DELETE FROM idempotency_keys k USING unnest($2::text[], $3::uuid[]) AS u(key, id)
              WHERE k.tenant = $1 AND k.key = u.key AND k.event_id = u.id",
            &[&tenant, &keys, &key_ids],
        )
        .await?;
    }
    stats::remove_from_totals(&tx, tenant, ids.len() as i64, bytes).await?;
    tx.commit().await?;
    let more = ids.len() as i64 == PURGE_BATCH_ROWS;
    Ok((
        ids.len() as u64,
        more.then(|| ids.iter().max().copied()).flatten(),
    ))
}

pub(super) async fn prune_stats(store: &PostgresStore, before_day: u32) -> PgResult<usize> {
    let client = store.client().await?;
    let day = before_day as i32;
    let mut removed = 0;
    for table in ["stats_ingest", "stats_outcomes", "stats_event_types"] {
        removed += client
            .execute(&format!("DELETE FROM {table} WHERE day < $1"), &[&day])
            .await?;
    }
    Ok(removed as usize)
}
