//! Events: ingest's group commit (idempotency keys, events, deliveries, their counters and the
//! wake-ups of other nodes in one transaction), reads and listings.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::codec::Filtered;
use super::codec::{self, EVENT_COLUMNS, ms};
use super::{PgResult, PostgresStore, notify, retry_tx, stats};
use crate::ids::{DeliveryId, EventId};
use crate::store::{
    Appended, DeliveryRecord, DeliveryStatus, EventFilter, EventRecord, NewEvent, Page, Result,
    StoreError,
};

/// An accepted event with its ids and fan-out, as written.
#[derive(Debug)]
pub(super) struct StoredEvent {
    pub tenant: String,
    pub event: EventRecord,
    pub deliveries: Vec<DeliveryRecord>,
    /// When its idempotency key stops naming it.
    pub key_expires_at: u64,
}

/// What the group holds at one position, before the store has been asked about keys.
enum Slot {
    New(StoredEvent),
    /// Repeats the idempotency key of the event at this position of the group.
    SameAs(usize),
}

/// Ids and records for a group; an idempotency key repeated within the group names the first
/// event that carried it.
fn prepare(group: Vec<NewEvent>) -> Vec<Slot> {
    let mut first_with_key: HashMap<(String, String), usize> = HashMap::new();
    let mut slots = Vec::with_capacity(group.len());
    for (position, new) in group.into_iter().enumerate() {
        if let Some(key) = &new.idempotency_key {
            match first_with_key.get(&(new.tenant.clone(), key.clone())) {
                Some(first) => {
                    slots.push(Slot::SameAs(*first));
                    continue;
                }
                None => {
                    first_with_key.insert((new.tenant.clone(), key.clone()), position);
                }
            }
        }
        let event = EventRecord {
            id: EventId::new(),
            event_type: new.event_type,
            channel: new.channel,
            idempotency_key: new.idempotency_key,
            created_at: new.created_at,
            payload: new.payload,
        };
        let deliveries = new
            .webhooks
            .into_iter()
            .map(|webhook_id| DeliveryRecord {
                id: DeliveryId::new(),
                event_id: event.id.clone(),
                webhook_id,
                event_type: event.event_type.clone(),
                channel: event.channel.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                created_at: event.created_at,
                updated_at: event.created_at,
                next_attempt_at: Some(event.created_at),
                last_attempt_at: None,
                last_status_code: None,
                last_error: None,
                filtered_by: None,
            })
            .collect();
        slots.push(Slot::New(StoredEvent {
            key_expires_at: new.created_at.saturating_add(new.idempotency_window_ms),
            tenant: new.tenant,
            event,
            deliveries,
        }));
    }
    slots
}

pub(super) async fn append(store: &PostgresStore, group: Vec<NewEvent>) -> Result<Vec<Appended>> {
    let slots = prepare(group);
    let stored_duplicates = retry_tx!(write(store, &slots))?;
    // Answers in group order; a repeat inside the group answers like the first of its key.
    let mut answers: Vec<Appended> = Vec::with_capacity(slots.len());
    for slot in &slots {
        let answer = match slot {
            Slot::New(new) => match stored_duplicates.get(&new.event.id) {
                Some(existing) => Appended::Duplicate(existing.clone()),
                None => Appended::Created {
                    event: new.event.clone(),
                    deliveries: new.deliveries.clone(),
                },
            },
            Slot::SameAs(first) => match &answers[*first] {
                Appended::Created { event, .. } => Appended::Duplicate(event.id.clone()),
                duplicate @ Appended::Duplicate(_) => duplicate.clone(),
            },
        };
        answers.push(answer);
    }
    if let Some(listener) = store.listener() {
        for slot in &slots {
            if let Slot::New(new) = slot
                && !stored_duplicates.contains_key(&new.event.id)
            {
                for delivery in &new.deliveries {
                    listener.due(&new.tenant, &delivery.webhook_id, delivery.created_at);
                }
            }
        }
    }
    Ok(answers)
}

/// One transaction for the whole group. Returns the events found to repeat a key the store
/// already held: their would-be id → the stored event's id.
async fn write(store: &PostgresStore, slots: &[Slot]) -> PgResult<HashMap<EventId, EventId>> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let candidates: Vec<&StoredEvent> = slots
        .iter()
        .filter_map(|slot| match slot {
            Slot::New(new) => Some(new),
            Slot::SameAs(_) => None,
        })
        .collect();
    let duplicates = claim_keys(&tx, &candidates).await?;
    let fresh: Vec<&StoredEvent> = candidates
        .into_iter()
        .filter(|new| !duplicates.contains_key(&new.event.id))
        .collect();
    if !fresh.is_empty() {
        futures::try_join!(
            insert_events(&tx, &fresh),
            insert_deliveries(&tx, &fresh),
            stats::add_ingest(&tx, &fresh),
            notify::send_due(&tx, &store.inner.node, due_webhooks(&fresh)),
        )?;
    }
    tx.commit().await?;
    Ok(duplicates)
}

/// Takes the idempotency keys of `events` for them, unless an unexpired entry names another
/// event: concurrent groups (other nodes) with the same key wait for each other here, so
/// exactly one event gets each key. Returns the events that lost: their id → the winner's.
async fn claim_keys(
    tx: &Transaction<'_>,
    events: &[&StoredEvent],
) -> PgResult<HashMap<EventId, EventId>> {
    let keyed: Vec<(&StoredEvent, &str)> = events
        .iter()
        .filter_map(|new| Some((*new, new.event.idempotency_key.as_deref()?)))
        .collect();
    if keyed.is_empty() {
        return Ok(HashMap::new());
    }
    let tenants: Vec<&str> = keyed.iter().map(|(e, _)| e.tenant.as_str()).collect();
    let keys: Vec<&str> = keyed.iter().map(|(_, k)| *k).collect();
    let ids: Vec<Uuid> = keyed
        .iter()
        .map(|(e, _)| codec::uuid(&e.event.id))
        .collect();
    let expiries: Vec<i64> = keyed.iter().map(|(e, _)| ms(e.key_expires_at)).collect();
    let now = ms(crate::ids::now_ms());
    let statement = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys AS k (tenant, key, event_id, expires_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bigint[])
             ON CONFLICT (tenant, key) DO UPDATE
                SET event_id = excluded.event_id, expires_at = excluded.expires_at
              WHERE k.expires_at <= $5
             RETURNING event_id",
        )
        .await?;
    let won: std::collections::HashSet<Uuid> = tx
        .query(&statement, &[&tenants, &keys, &ids, &expiries, &now])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if won.len() == keyed.len() {
        return Ok(HashMap::new());
    }
    let lost: Vec<&(&StoredEvent, &str)> = keyed
        .iter()
        .filter(|(e, _)| !won.contains(&codec::uuid(&e.event.id)))
        .collect();
    let lost_tenants: Vec<&str> = lost.iter().map(|(e, _)| e.tenant.as_str()).collect();
    let lost_keys: Vec<&str> = lost.iter().map(|(_, k)| *k).collect();
    let statement = tx
        .prepare_cached(
            "SELECT k.tenant, k.key, k.event_id FROM idempotency_keys k
               JOIN unnest($1::text[], $2::text[]) AS u(tenant, key)
                 ON k.tenant = u.tenant AND k.key = u.key",
        )
        .await?;
    let holders: HashMap<(String, String), Uuid> = tx
        .query(&statement, &[&lost_tenants, &lost_keys])
        .await?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    let mut duplicates = HashMap::new();
    for (event, key) in lost {
        let holder = holders
            .get(&(event.tenant.clone(), key.to_string()))
            .ok_or_else(|| {
                StoreError::Interrupted(format!(
                    "idempotency key of tenant {} changed hands during ingest",
                    event.tenant
                ))
            })?;
        duplicates.insert(event.event.id.clone(), codec::id(*holder));
    }
    Ok(duplicates)
}

async fn insert_events(tx: &Transaction<'_>, events: &[&StoredEvent]) -> PgResult<()> {
    let tenants: Vec<&str> = events.iter().map(|e| e.tenant.as_str()).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| codec::uuid(&e.event.id)).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event.event_type.as_str()).collect();
    let channels: Vec<Option<&str>> = events.iter().map(|e| e.event.channel.as_deref()).collect();
    let keys: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.event.idempotency_key.as_deref())
        .collect();
    let created: Vec<i64> = events.iter().map(|e| ms(e.event.created_at)).collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.event.payload.get()).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO events (tenant, id, event_type, channel, idempotency_key, created_at, payload)
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                  $6::bigint[], $7::text[])",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &tenants, &ids, &types, &channels, &keys, &created, &payloads,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_deliveries(tx: &Transaction<'_>, events: &[&StoredEvent]) -> PgResult<()> {
    let rows: Vec<(&str, &DeliveryRecord)> = events
        .iter()
        .flat_map(|e| e.deliveries.iter().map(|d| (e.tenant.as_str(), d)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = rows.iter().map(|(t, _)| *t).collect();
    let ids: Vec<Uuid> = rows.iter().map(|(_, d)| codec::uuid(&d.id)).collect();
    let event_ids: Vec<Uuid> = rows.iter().map(|(_, d)| codec::uuid(&d.event_id)).collect();
    let webhooks: Vec<Uuid> = rows
        .iter()
        .map(|(_, d)| codec::uuid(&d.webhook_id))
        .collect();
    let types: Vec<&str> = rows.iter().map(|(_, d)| d.event_type.as_str()).collect();
    let channels: Vec<Option<&str>> = rows.iter().map(|(_, d)| d.channel.as_deref()).collect();
    let created: Vec<i64> = rows.iter().map(|(_, d)| ms(d.created_at)).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO deliveries (tenant, id, event_id, webhook_id, event_type, channel, status,
                                     created_at, updated_at, next_attempt_at)
             SELECT t, i, e, w, ty, ch, 'pending', c, c, c
               FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                           $6::text[], $7::bigint[]) AS u(t, i, e, w, ty, ch, c)",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &tenants, &ids, &event_ids, &webhooks, &types, &channels, &created,
        ],
    )
    .await?;
    Ok(())
}

/// (tenant, webhook) → the earliest due time among the group's new deliveries.
fn due_webhooks(events: &[&StoredEvent]) -> Vec<(String, crate::ids::WebhookId, u64)> {
    let mut due: BTreeMap<(&str, &crate::ids::WebhookId), u64> = BTreeMap::new();
    for event in events {
        for delivery in &event.deliveries {
            let at = due
                .entry((event.tenant.as_str(), &delivery.webhook_id))
                .or_insert(delivery.created_at);
            *at = (*at).min(delivery.created_at);
        }
    }
    due.into_iter()
        .map(|((tenant, webhook), at)| (tenant.to_string(), webhook.clone(), at))
        .collect()
}

pub(super) async fn get(
    store: &PostgresStore,
    tenant: &str,
    id: &EventId,
) -> PgResult<Option<EventRecord>> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant = $1 AND id = $2"
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&tenant, &codec::uuid(id)])
        .await?;
    row.as_ref().map(codec::event).transpose()
}

pub(super) async fn list(
    store: &PostgresStore,
    tenant: &str,
    filter: &EventFilter,
    cursor: Option<&str>,
    limit: usize,
) -> PgResult<Page<EventRecord>> {
    let mut query = Filtered::new(
        format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant = $1"),
        tenant,
    );
    if let Some(before) = codec::cursor::<EventId>(cursor) {
        query.and("id <", before);
    }
    query.and_event_filters(
        filter.event_type.as_ref(),
        filter.channel.as_ref(),
        filter.after_ms,
        filter.before_ms,
    );
    query
        .newest_first(store, limit, codec::event, |e: &EventRecord| {
            e.id.to_string()
        })
        .await
}
