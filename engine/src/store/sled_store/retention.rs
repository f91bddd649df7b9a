//! Purging old records: finished deliveries with their attempts and index entries, and events
//! none of whose deliveries remain (with their idempotency entry), in bounded batches.
//!
//! A purge never removes a pending or in-flight delivery, nor an event that still has one.
//! Each batch is read first (a range of event ids, which are time-ordered) and then removed in
//! one transaction that re-reads every delivery and skips any that changed since (a manual retry
//! may have re-queued it), so a purge never leaves a dangling schedule entry, attempt or index
//! entry, and never holds the store for longer than one batch. Statistics counters are not
//! touched: they are aggregates, not rows (see `stats.rs`).

use sled::IVec;

use super::{
    DeliveryRecord, EventRecord, IdempotencyEntry, PurgeOutcome, Result, SledStore, decode, keys,
    tx_error,
};
use crate::ids::{DeliveryId, EventId};

/// Keys one purge batch removes at most (one sled transaction).
pub const PURGE_BATCH_KEYS: usize = 2_000;

/// A delivery of a candidate event, as read before the transaction.
struct DeliveryCandidate {
    id: DeliveryId,
    /// The index entries pointing at it (event → delivery, webhook → delivery).
    index_keys: Vec<Vec<u8>>,
    /// The record as read, and its attempts' keys; `None` if the record is already gone (only
    /// the index entries are left to remove).
    snapshot: Option<(IVec, Vec<IVec>)>,
}

struct EventCandidate {
    id: EventId,
    idempotency_key: Option<String>,
    deliveries: Vec<DeliveryCandidate>,
    /// Deliveries that stay (queued, or created at or after the cutoff).
    kept: usize,
}

/// The first event id made at `ms`: every id of an event created earlier sorts before it
/// (ids are a prefix and a UUIDv7, whose first 48 bits are the creation time in ms).
fn event_id_bound(ms: u64) -> String {
    format!("{}{:012x}", EventId::PREFIX, ms.min(0xffff_ffff_ffff))
}

impl SledStore {
    /// Tenants that have at least one event stored (whether or not still in the config).
    pub fn tenants_with_events(&self) -> Result<Vec<String>> {
        let mut tenants = Vec::new();
        let mut start = vec![keys::EVENT];
        while let Some(entry) = self.tree.range(start..vec![keys::EVENT + 1]).next() {
            let (key, _) = entry?;
            let Some((tenant, _)) = keys::split_tenant_key(&key) else {
                break;
            };
            start = keys::prefix_end(&keys::tenant_prefix(keys::EVENT, tenant));
            tenants.push(tenant.to_string());
        }
        Ok(tenants)
    }

    /// One bounded batch of a purge of `tenant`'s records created before `before_ms`: finished
    /// deliveries (delivered, failed, filtered) with their attempts and index entries, then
    /// events with no delivery left. Looks at events after `after` (an id this returned), and
    /// stops once about `max_keys` keys are to be removed. Returns what went and the event id to
    /// resume after (`None`: nothing older is left to look at).
    pub fn purge_batch(
        &self,
        tenant: &str,
        before_ms: u64,
        after: Option<&EventId>,
        max_keys: usize,
    ) -> Result<(PurgeOutcome, Option<EventId>)> {
        let prefix = keys::tenant_prefix(keys::EVENT, tenant);
        let start = match after {
            Some(id) => [keys::event(tenant, id).as_slice(), &[0]].concat(),
            None => prefix.clone(),
        };
        let end = [prefix.as_slice(), event_id_bound(before_ms).as_bytes()].concat();
        let mut candidates = Vec::new();
        let mut budget = 0usize;
        let mut resume = None;
        for entry in self.tree.range(start..end) {
            let (_, value) = entry?;
            let event: EventRecord = decode(&value)?;
            if budget >= max_keys {
                resume = candidates.last().map(|c: &EventCandidate| c.id.clone());
                break;
            }
            if event.created_at >= before_ms {
                continue;
            }
            let candidate = self.event_candidate(tenant, &event, before_ms)?;
            budget += 2 + candidate
                .deliveries
                .iter()
                .map(|d| 3 + d.snapshot.as_ref().map_or(0, |(_, a)| a.len()))
                .sum::<usize>();
            candidates.push(candidate);
        }
        if candidates.is_empty() {
            return Ok((PurgeOutcome::default(), None));
        }

        let outcome = self.remove_candidates(tenant, &candidates)?;
        Ok((outcome, resume))
    }

    /// Removes what was read, in one transaction, skipping every delivery that changed since.
    fn remove_candidates(
        &self,
        tenant: &str,
        candidates: &[EventCandidate],
    ) -> Result<PurgeOutcome> {
        self.tree
            .transaction(|tx| {
                let mut out = PurgeOutcome::default();
                for event in candidates {
                    let mut kept = event.kept;
                    for delivery in &event.deliveries {
                        if let Some((seen, attempts)) = &delivery.snapshot {
                            let key = keys::delivery(tenant, &delivery.id);
                            if tx.get(&key)?.as_ref() != Some(seen) {
                                // Changed since it was read (re-queued, or purged by another
                                // purge): leave it for a later pass.
                                kept += 1;
                                continue;
                            }
                            tx.remove(key)?;
                            for attempt in attempts {
                                tx.remove(attempt.clone())?;
                            }
                            out.deliveries += 1;
                            out.attempts += attempts.len() as u64;
                        }
                        for index in &delivery.index_keys {
                            tx.remove(index.as_slice())?;
                        }
                    }
                    if kept > 0 {
                        continue;
                    }
                    if tx.remove(keys::event(tenant, &event.id))?.is_some() {
                        out.events += 1;
                    }
                    if let Some(key) = &event.idempotency_key {
                        let key = keys::idempotency(tenant, key);
                        let names_this_event = tx
                            .get(&key)?
                            .and_then(|v| decode::<IdempotencyEntry>(&v).ok())
                            .is_some_and(|entry| entry.event_id == event.id);
                        if names_this_event {
                            tx.remove(key)?;
                        }
                    }
                }
                Ok(out)
            })
            .map_err(tx_error)
    }

    /// Reads what purging one event would remove.
    fn event_candidate(
        &self,
        tenant: &str,
        event: &EventRecord,
        before_ms: u64,
    ) -> Result<EventCandidate> {
        let mut candidate = EventCandidate {
            id: event.id.clone(),
            idempotency_key: event.idempotency_key.clone(),
            deliveries: Vec::new(),
            kept: 0,
        };
        for entry in self
            .tree
            .scan_prefix(keys::event_deliveries(tenant, &event.id))
        {
            let (index_key, _) = entry?;
            let Some(id) = keys::last_segment(&index_key).and_then(DeliveryId::parse) else {
                continue;
            };
            let mut index_keys = vec![index_key.to_vec()];
            let snapshot = match self.tree.get(keys::delivery(tenant, &id))? {
                None => None,
                Some(bytes) => {
                    let delivery: DeliveryRecord = decode(&bytes)?;
                    if delivery.status.is_queued() || delivery.created_at >= before_ms {
                        candidate.kept += 1;
                        continue;
                    }
                    let mut by_webhook = keys::webhook_deliveries(tenant, &delivery.webhook_id);
                    by_webhook.extend_from_slice(id.as_str().as_bytes());
                    index_keys.push(by_webhook);
                    let attempts = self
                        .tree
                        .scan_prefix(keys::attempts_of(tenant, &id))
                        .keys()
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    Some((bytes, attempts))
                }
            };
            candidate.deliveries.push(DeliveryCandidate {
                id,
                index_keys,
                snapshot,
            });
        }
        Ok(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::super::StoredEvent as NewEvent;
    use super::*;
    use crate::ids::{AttemptId, WebhookId};
    use crate::store::{AttemptRecord, DeliveryStatus, DeliveryUpdate};
    use std::collections::HashSet;

    fn new_event(webhooks: &[&WebhookId], idempotency_key: Option<&str>) -> NewEvent {
        let id = EventId::new();
        let at = crate::ids::now_ms();
        NewEvent {
            tenant: "acme".into(),
            event: EventRecord {
                id: id.clone(),
                event_type: "order.paid".into(),
                channel: None,
                idempotency_key: idempotency_key.map(str::to_string),
                created_at: at,
                payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            },
            deliveries: webhooks
                .iter()
                .map(|w| DeliveryRecord {
                    id: DeliveryId::new(),
                    event_id: id.clone(),
                    webhook_id: (*w).clone(),
                    event_type: "order.paid".into(),
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

    fn finish(store: &SledStore, delivery: &DeliveryRecord, status: DeliveryStatus) {
        let attempt = AttemptRecord {
            id: AttemptId::new(),
            delivery_id: delivery.id.clone(),
            webhook_id: delivery.webhook_id.clone(),
            attempt: 1,
            started_at: delivery.created_at,
            url: "http://127.0.0.1/".into(),
            latency_ms: 3,
            result: "x".into(),
            status_code: Some(200),
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
        store.record_attempt("acme", &attempt, &update).unwrap();
    }

    fn purge_all(store: &SledStore, tenant: &str, before_ms: u64, max_keys: usize) -> PurgeOutcome {
        let mut total = PurgeOutcome::default();
        let mut after = None;
        loop {
            let (outcome, next) = store
                .purge_batch(tenant, before_ms, after.as_ref(), max_keys)
                .unwrap();
            total.add(outcome);
            match next {
                Some(id) => after = Some(id),
                None => return total,
            }
        }
    }

    fn all_keys(store: &SledStore) -> Vec<Vec<u8>> {
        store
            .tree
            .iter()
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect()
    }

    #[test]
    fn finished_records_go_with_every_key_that_points_at_them_and_queued_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(
            dir.path(),
            std::sync::Arc::new(crate::secrets::Keyring::random()),
        )
        .unwrap();
        let (ok, slow) = (WebhookId::new(), WebhookId::new());
        let events = [
            new_event(&[&ok], Some("key-1")),
            new_event(&[&ok, &slow], None),
            new_event(&[&slow], None),
            new_event(&[], None),
            NewEvent {
                tenant: "globex".into(),
                ..new_event(&[&ok], None)
            },
        ];
        store.write_events(&events).unwrap();
        let [done, mixed, in_flight, no_webhook, other_tenant] = &events;
        finish(&store, &done.deliveries[0], DeliveryStatus::Delivered);
        finish(&store, &mixed.deliveries[0], DeliveryStatus::Failed);
        let keys_before: HashSet<Vec<u8>> = all_keys(&store).into_iter().collect();

        // Nothing was created before this cutoff.
        assert!(purge_all(&store, "acme", done.event.created_at, 1000).is_empty());
        let later = crate::ids::now_ms() + 1;
        let outcome = purge_all(&store, "acme", later, 3);
        assert_eq!(
            outcome,
            PurgeOutcome {
                events: 2,
                deliveries: 2,
                attempts: 2
            }
        );

        let gone: HashSet<Vec<u8>> = keys_before
            .difference(&all_keys(&store).into_iter().collect())
            .cloned()
            .collect();
        let mut expected = HashSet::new();
        for event in [done, no_webhook] {
            expected.insert(keys::event("acme", &event.event.id));
        }
        expected.insert(keys::idempotency("acme", "key-1"));
        for (event, delivery) in [(done, &done.deliveries[0]), (mixed, &mixed.deliveries[0])] {
            expected.insert(keys::delivery("acme", &delivery.id));
            let mut x = keys::event_deliveries("acme", &event.event.id);
            x.extend_from_slice(delivery.id.as_str().as_bytes());
            expected.insert(x);
            let mut y = keys::webhook_deliveries("acme", &delivery.webhook_id);
            y.extend_from_slice(delivery.id.as_str().as_bytes());
            expected.insert(y);
        }
        let attempt_keys: Vec<_> = gone
            .iter()
            .filter(|k| k.first() == Some(&keys::ATTEMPT))
            .cloned()
            .collect();
        assert_eq!(attempt_keys.len(), 2);
        expected.extend(attempt_keys);
        assert_eq!(gone, expected);

        // What stays: the event with a pending delivery, the in-flight one, globex's data.
        assert!(store.event("acme", &mixed.event.id).unwrap().is_some());
        assert_eq!(
            store
                .delivery("acme", &mixed.deliveries[1].id)
                .unwrap()
                .unwrap()
                .status,
            DeliveryStatus::Pending
        );
        assert_eq!(
            store
                .delivery("acme", &in_flight.deliveries[0].id)
                .unwrap()
                .unwrap()
                .status,
            DeliveryStatus::Pending
        );
        assert!(
            store
                .event("globex", &other_tenant.event.id)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store
                .deliveries_of_event("acme", &mixed.event.id)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_delivery_retried_after_it_was_read_is_not_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(
            dir.path(),
            std::sync::Arc::new(crate::secrets::Keyring::random()),
        )
        .unwrap();
        let hook = WebhookId::new();
        let event = new_event(&[&hook], None);
        store.write_events(std::slice::from_ref(&event)).unwrap();
        finish(&store, &event.deliveries[0], DeliveryStatus::Failed);
        let later = crate::ids::now_ms() + 1;
        let candidate = store.event_candidate("acme", &event.event, later).unwrap();
        assert!(candidate.deliveries[0].snapshot.is_some());
        // A manual retry lands between the read and the transaction.
        store
            .requeue("acme", &event.deliveries[0].id, later)
            .unwrap()
            .unwrap();
        let outcome = store
            .remove_candidates("acme", std::slice::from_ref(&candidate))
            .unwrap();
        assert!(outcome.is_empty(), "{outcome:?}");
        let delivery = store
            .delivery("acme", &event.deliveries[0].id)
            .unwrap()
            .unwrap();
        assert_eq!(delivery.status, DeliveryStatus::Pending);
        assert_eq!(store.attempts("acme", &delivery.id).unwrap().len(), 1);
        assert!(store.event("acme", &event.event.id).unwrap().is_some());
        // Once it is finished again, the next pass takes it.
        finish(&store, &delivery, DeliveryStatus::Delivered);
        let (outcome, _) = store.purge_batch("acme", later, None, 100).unwrap();
        assert_eq!(
            (outcome.deliveries, outcome.attempts, outcome.events),
            (1, 2, 1)
        );
    }

    #[test]
    fn tenants_with_events_lists_each_tenant_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(
            dir.path(),
            std::sync::Arc::new(crate::secrets::Keyring::random()),
        )
        .unwrap();
        let mut events = vec![new_event(&[], None), new_event(&[], None)];
        for tenant in ["globex", "a"] {
            events.push(NewEvent {
                tenant: tenant.into(),
                ..new_event(&[], None)
            });
        }
        store.write_events(&events).unwrap();
        assert_eq!(
            store.tenants_with_events().unwrap(),
            ["a", "acme", "globex"]
        );
    }
}
