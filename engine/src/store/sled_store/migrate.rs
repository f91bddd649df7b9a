//! Opening a data dir written by the previous layout (`hookd/v1`: one sled key per event,
//! delivery, attempt and index entry, JSON values) — the layout of hookd before storage v2.
//!
//! The migration runs at open, before anything else touches the store: webhooks are copied as
//! they are (secrets stay sealed), every event is appended again with its deliveries, every
//! attempt recorded again in order and each delivery brought to its stored state, through the
//! writer's own commands (so the new pages, usage and catalogue are built as for live traffic);
//! then the statistics counters are copied over as they were (they count purged history too),
//! and the old tree is dropped. Events and deliveries get new ids (ids name log records now);
//! webhook ids, secrets, states, attempts and statistics are kept.
//!
//! A migration stopped half-way (kill -9) leaves the old tree whole: the next open wipes the
//! new layout's partial data and runs the migration again.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tracing::info;

use super::writer::{Command, Expect};
use super::{SledStore, keys};
use crate::ids::{DeliveryId, WebhookId};
use crate::store::{
    Appended, AttemptOutcome, AttemptRecord, DeliveryRecord, DeliveryStatus, DeliveryUpdate,
    NewEvent, Result, StoreError,
};

/// The tree of the previous layout.
const OLD_TREE: &str = "hookd/v1";
/// Set while a migration runs; found at open, it means the last one did not finish.
const MIGRATING: &str = "migrating";
/// The idempotency window migrated events keep: the old records did not store one, so the
/// default they were checked against.
const MIGRATED_IDEMPOTENCY_WINDOW: std::time::Duration = crate::config::DEFAULT_IDEMPOTENCY_WINDOW;

const V1_WEBHOOK: u8 = b'W';
const V1_EVENT: u8 = b'E';
const V1_DELIVERY: u8 = b'D';
const V1_ATTEMPT: u8 = b'A';
const V1_EVENT_DELIVERY: u8 = b'X';
const V1_STATS: u8 = b'S';

fn v1_decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((1, json)) => {
            serde_json::from_slice(json).map_err(|err| StoreError::Corrupt(err.to_string()))
        }
        _ => Err(StoreError::Corrupt(
            "a record of the previous layout has an unknown version".into(),
        )),
    }
}

/// `kind, tenant, NUL, id…` → (tenant, id) in the previous layout.
fn v1_split(key: &[u8]) -> Option<(&str, &str)> {
    let body = key.get(1..)?;
    let sep = body.iter().position(|b| *b == 0)?;
    Some((
        std::str::from_utf8(&body[..sep]).ok()?,
        std::str::from_utf8(&body[sep + 1..]).ok()?,
    ))
}

fn v1_prefix(kind: u8, tenant: &str, id: &str) -> Vec<u8> {
    let mut key = vec![kind];
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    key
}

/// An event as the previous layout stored it.
#[derive(Deserialize)]
struct OldEvent {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    created_at: u64,
    payload: Box<RawValue>,
}

/// Whether the data dir holds the previous layout still to migrate. A new layout left
/// half-built by an interrupted migration is wiped here, before anything reads it.
pub(super) fn prepare(db: &sled::Db, dir: &std::path::Path) -> Result<bool> {
    let names = db.tree_names();
    if !names.iter().any(|n| n.as_ref() == OLD_TREE.as_bytes()) {
        return Ok(false);
    }
    let old = db.open_tree(OLD_TREE)?;
    if old.is_empty() {
        db.drop_tree(OLD_TREE)?;
        return Ok(false);
    }
    let new = db.open_tree(super::TREE)?;
    if !new.is_empty() {
        info!("an earlier migration of this data dir did not finish; starting it again");
        new.clear()?;
        let log = dir.join("log");
        if log.exists() {
            std::fs::remove_dir_all(&log).map_err(|err| StoreError::Io(err.to_string()))?;
        }
    }
    new.insert(keys::meta(MIGRATING), b"1")?;
    db.flush()?;
    Ok(true)
}

/// Copies the previous layout into the new one (see the module docs).
pub(super) async fn migrate(store: &SledStore) -> Result<()> {
    let db = store.shared.db.clone();
    let old = db.open_tree(OLD_TREE)?;
    let started = std::time::Instant::now();
    let mut webhooks = 0;
    for entry in old.scan_prefix([V1_WEBHOOK]) {
        let (key, value) = entry?;
        let Some((tenant, id)) = v1_split(&key) else {
            continue;
        };
        let Some(id) = WebhookId::parse(id) else {
            continue;
        };
        store
            .ask(|reply| Command::PutWebhook {
                tenant: tenant.to_string(),
                webhook: id,
                json: value.to_vec(),
                expect: Expect::Any,
                reply,
            })
            .await?;
        webhooks += 1;
    }
    let mut events = 0;
    for entry in old.scan_prefix([V1_EVENT]) {
        let (key, value) = entry?;
        let Some((tenant, old_id)) = v1_split(&key) else {
            continue;
        };
        let event: OldEvent = v1_decode(&value)?;
        let deliveries = old_deliveries(&old, tenant, old_id)?;
        migrate_event(store, tenant, event, deliveries).await?;
        events += 1;
    }
    // Statistics as they were: they also count what retention has purged.
    let mut counters = Vec::new();
    for entry in old.scan_prefix([V1_STATS]) {
        let (key, value) = entry?;
        counters.push((key.to_vec(), value.to_vec()));
    }
    for chunk in counters.chunks(2_000) {
        let entries = chunk.to_vec();
        store
            .ask(|reply| Command::PutRaw { entries, reply })
            .await?;
    }
    store
        .ask(|reply| Command::RemoveKeys {
            keys: vec![keys::meta(MIGRATING)],
            reply,
        })
        .await?;
    store.ask(|reply| Command::Flush { reply }).await?;
    db.drop_tree(OLD_TREE)?;
    db.flush()?;
    info!(
        webhooks,
        events,
        seconds = started.elapsed().as_secs_f64(),
        "data dir migrated to the log-structured store (events and deliveries have new ids)"
    );
    Ok(())
}

/// The deliveries of an old event, each with its attempts oldest first.
fn old_deliveries(
    old: &sled::Tree,
    tenant: &str,
    event_id: &str,
) -> Result<Vec<(DeliveryRecord, Vec<AttemptRecord>)>> {
    let mut out = Vec::new();
    for entry in old.scan_prefix(v1_prefix(V1_EVENT_DELIVERY, tenant, event_id)) {
        let (key, _) = entry?;
        let Some(delivery_id) = key
            .iter()
            .rposition(|b| *b == 0)
            .and_then(|at| std::str::from_utf8(&key[at + 1..]).ok())
        else {
            continue;
        };
        let mut delivery_key = vec![V1_DELIVERY];
        delivery_key.extend_from_slice(tenant.as_bytes());
        delivery_key.push(0);
        delivery_key.extend_from_slice(delivery_id.as_bytes());
        let Some(bytes) = old.get(&delivery_key)? else {
            continue;
        };
        let delivery: DeliveryRecord = v1_decode(&bytes)?;
        let mut attempts: Vec<AttemptRecord> = old
            .scan_prefix(v1_prefix(V1_ATTEMPT, tenant, delivery_id))
            .map(|entry| v1_decode(&entry?.1))
            .collect::<Result<_>>()?;
        attempts.sort_by_key(|a| (a.attempt, a.started_at));
        out.push((delivery, attempts));
    }
    Ok(out)
}

async fn migrate_event(
    store: &SledStore,
    tenant: &str,
    event: OldEvent,
    deliveries: Vec<(DeliveryRecord, Vec<AttemptRecord>)>,
) -> Result<()> {
    let new = NewEvent {
        tenant: tenant.to_string(),
        event_type: event.event_type,
        channel: event.channel,
        idempotency_key: event.idempotency_key,
        idempotency_window_ms: MIGRATED_IDEMPOTENCY_WINDOW.as_millis() as u64,
        created_at: event.created_at,
        payload: event.payload,
        webhooks: deliveries
            .iter()
            .map(|(d, _)| d.webhook_id.clone())
            .collect(),
    };
    let appended = store
        .ask(|reply| Command::Append {
            group: vec![new],
            reply,
        })
        .await?;
    let Some(Appended::Created {
        deliveries: created,
        ..
    }) = appended.into_iter().next()
    else {
        return Ok(());
    };
    for ((old, attempts), new) in deliveries.into_iter().zip(created) {
        bring_to_state(store, tenant, &new.id, old, attempts).await?;
    }
    Ok(())
}

/// Records a delivery's old attempts again, then sets its stored state.
async fn bring_to_state(
    store: &SledStore,
    tenant: &str,
    id: &DeliveryId,
    old: DeliveryRecord,
    attempts: Vec<AttemptRecord>,
) -> Result<()> {
    let status = match old.status {
        DeliveryStatus::InFlight => DeliveryStatus::Pending,
        other => other,
    };
    let count = attempts.len();
    let mut outcomes = Vec::with_capacity(count);
    for (i, mut attempt) in attempts.into_iter().enumerate() {
        let last = i + 1 == count;
        let update = if last {
            DeliveryUpdate {
                status,
                next_attempt_at: old.next_attempt_at.filter(|_| status.is_queued()),
                filtered_by: old.filtered_by.clone(),
            }
        } else {
            DeliveryUpdate {
                status: DeliveryStatus::Pending,
                next_attempt_at: attempt.next_attempt_at.or(Some(attempt.started_at)),
                filtered_by: None,
            }
        };
        attempt.delivery_id = id.clone();
        outcomes.push(AttemptOutcome {
            tenant: tenant.to_string(),
            lease: 0,
            attempt,
            update,
            body_is_event_body: false,
        });
    }
    if !outcomes.is_empty() {
        for result in store
            .ask(|reply| Command::Record { outcomes, reply })
            .await?
        {
            result?;
        }
    }
    let settled_without_attempt = count == 0 && !status.is_queued();
    if settled_without_attempt {
        let error = old.last_error.unwrap_or_else(|| "migrated".into());
        store
            .ask(|reply| Command::Settle {
                tenant: tenant.to_string(),
                delivery: store
                    .shared
                    .ids
                    .parse_delivery_id(id)
                    .expect("an id of this store"),
                status,
                error,
                reply,
            })
            .await?;
    } else if status.is_queued()
        && let Some(due) = old.next_attempt_at
        && count == 0
        && due != old.created_at
    {
        store
            .ask(|reply| Command::Requeue {
                tenant: tenant.to_string(),
                delivery: store
                    .shared
                    .ids
                    .parse_delivery_id(id)
                    .expect("an id of this store"),
                due,
                reply,
            })
            .await?;
    }
    Ok(())
}
