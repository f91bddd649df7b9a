//! Deliveries and the queue on sled: a delivery is its event's record plus its slot (read by
//! id with one `pread`); attempts chain back from the slot through the log; each webhook's
//! schedule is a run of `Q` pages sorted by due time, from which the dispatcher claims.

use std::collections::HashSet;

use super::attempt_codec;
use super::codec::{
    self, DeliveryRef, EventMeta, Locator, RecordKind, SLOT_BYTES, Slot, SlotError,
};
use super::keys;
use super::log::RawRecord;
use super::pages;
use super::writer::delivery_record;
use super::{MAX_SCAN_ROWS, SledStore, StoredAttempt};
use crate::ids::{DeliveryId, WebhookId};
use crate::store::{
    AttemptRecord, Claim, DeliveryFilter, DeliveryRecord, DeliveryStatus, DeliveryWithEvent, Page,
    QueueHead, Result, ScheduleCounts, StoreError,
};

/// The slot of delivery `index` among the slots of `record`.
fn slot_of(record: &RawRecord, index: usize) -> Result<Slot> {
    let start = index * SLOT_BYTES;
    let bytes = record
        .slots
        .get(start..start + SLOT_BYTES)
        .ok_or_else(|| StoreError::Corrupt("a delivery slot is missing".into()))?;
    Slot::decode(bytes).or_else(|_| {
        // Torn by a power loss: the delivery is attempted again (at-least-once).
        Ok(Slot::pending(0))
    })
}

impl SledStore {
    /// A delivery from its event's meta and slot, with what only its last attempt knows (an
    /// unusual error code, the plugin that filtered it).
    fn delivery_view(
        &self,
        tenant: &str,
        delivery: DeliveryRef,
        meta: &EventMeta,
        slot: &Slot,
    ) -> Result<DeliveryRecord> {
        let webhook = &meta.webhooks[usize::from(delivery.index)];
        let mut record = delivery_record(&self.shared.ids, delivery, meta, webhook, slot);
        let needs_attempt =
            slot.last_error == SlotError::Other || slot.status == DeliveryStatus::Filtered;
        if needs_attempt
            && let Some(loc) = slot.last_attempt
            && let Some((_, stored)) = self.read_attempt(tenant, delivery, loc)?
        {
            if slot.last_error == SlotError::Other {
                record.last_error = stored.attempt.error_code.clone();
            }
            record.filtered_by = stored.filtered_by;
        }
        Ok(record)
    }

    pub(super) fn delivery(&self, tenant: &str, id: &DeliveryId) -> Result<Option<DeliveryRecord>> {
        let Some(delivery) = self.shared.ids.parse_delivery_id(id) else {
            return Ok(None);
        };
        let Some((meta, record)) = self.read_event(tenant, delivery.event, false)? else {
            return Ok(None);
        };
        self.delivery_in(tenant, delivery, &meta, &record)
    }

    /// Delivery `delivery` of its event's record, read: `None` past the event's fan-out or
    /// purged.
    fn delivery_in(
        &self,
        tenant: &str,
        delivery: DeliveryRef,
        meta: &EventMeta,
        record: &RawRecord,
    ) -> Result<Option<DeliveryRecord>> {
        let index = usize::from(delivery.index);
        if index >= meta.webhooks.len() {
            return Ok(None);
        }
        let slot = slot_of(record, index)?;
        if slot.purged {
            return Ok(None);
        }
        self.delivery_view(tenant, delivery, meta, &slot).map(Some)
    }

    /// [`Self::delivery`] and its event from one read of the event's record. A payload that
    /// fails its checksum is read again without it, so the delivery is still returned.
    pub(super) fn delivery_with_event(
        &self,
        tenant: &str,
        id: &DeliveryId,
    ) -> Result<Option<DeliveryWithEvent>> {
        let Some(delivery) = self.shared.ids.parse_delivery_id(id) else {
            return Ok(None);
        };
        let (meta, record, payload) = match self.read_event(tenant, delivery.event, true) {
            Ok(Some((meta, mut record))) => {
                let payload = std::mem::take(&mut record.payload);
                (meta, record, Ok(payload))
            }
            Ok(None) => return Ok(None),
            Err(StoreError::Corrupt(reason)) => {
                let Some((meta, record)) = self.read_event(tenant, delivery.event, false)? else {
                    return Ok(None);
                };
                (meta, record, Err(StoreError::Corrupt(reason)))
            }
            Err(err) => return Err(err),
        };
        let Some(view) = self.delivery_in(tenant, delivery, &meta, &record)? else {
            return Ok(None);
        };
        let event = payload
            .and_then(|payload| {
                super::events::event_record(&self.shared.ids, delivery.event, meta, payload)
            })
            .map(Some);
        Ok(Some(DeliveryWithEvent {
            delivery: view,
            event,
        }))
    }

    pub(super) fn deliveries_of_event(
        &self,
        tenant: &str,
        event: &crate::ids::EventId,
    ) -> Result<Vec<DeliveryRecord>> {
        let Some(loc) = self.shared.ids.parse_event_id(event) else {
            return Ok(Vec::new());
        };
        let Some((meta, record)) = self.read_event(tenant, loc, false)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(meta.webhooks.len());
        for index in 0..meta.webhooks.len() {
            let slot = slot_of(&record, index)?;
            if !slot.purged {
                let delivery = DeliveryRef {
                    event: loc,
                    index: index as u16,
                };
                out.push(self.delivery_view(tenant, delivery, &meta, &slot)?);
            }
        }
        Ok(out)
    }

    /// An attempt record of `delivery` at `loc`: its meta's previous attempt, and the attempt.
    fn read_attempt(
        &self,
        tenant: &str,
        delivery: DeliveryRef,
        loc: Locator,
    ) -> Result<Option<(Option<Locator>, StoredAttempt)>> {
        let Some(record) = self.shared.log.read(loc, true)? else {
            return Ok(None);
        };
        if record.header.kind != RecordKind::Attempt {
            return Ok(None);
        }
        let meta = codec::TransitionMeta::decode(&record.meta)?;
        if meta.tenant != tenant || meta.delivery != delivery {
            return Ok(None);
        }
        let stored = attempt_codec::decode(&record.payload, loc, &self.shared.ids)?;
        Ok(Some((meta.previous_attempt, stored)))
    }

    /// The body delivered for the event at `loc` before plugins (what an attempt that kept it
    /// by reference sent).
    fn delivered_body(&self, tenant: &str, loc: Locator, meta: &EventMeta) -> Result<String> {
        let Some((_, record)) = self.read_event(tenant, loc, true)? else {
            return Ok(String::new());
        };
        let event =
            super::events::event_record(&self.shared.ids, loc, meta.clone(), record.payload)?;
        String::from_utf8(event.delivered_body().to_vec())
            .map_err(|_| StoreError::Corrupt("a delivered body is not UTF-8".into()))
    }

    /// Attempts of a delivery, oldest first (those still in the log: a segment deleted by
    /// retention takes its attempts with it).
    pub(super) fn attempts(&self, tenant: &str, id: &DeliveryId) -> Result<Vec<AttemptRecord>> {
        let Some(delivery) = self.shared.ids.parse_delivery_id(id) else {
            return Ok(Vec::new());
        };
        let Some((meta, record)) = self.read_event(tenant, delivery.event, false)? else {
            return Ok(Vec::new());
        };
        if usize::from(delivery.index) >= meta.webhooks.len() {
            return Ok(Vec::new());
        }
        let slot = slot_of(&record, usize::from(delivery.index))?;
        let mut out = Vec::new();
        let mut next = slot.last_attempt;
        // The event's delivered body, read once for the attempts that keep it by reference.
        let mut event_body = None;
        // A bound against a cycle in damaged data.
        while let Some(loc) = next
            && out.len() < 100_000
        {
            let Some((previous, mut stored)) = self.read_attempt(tenant, delivery, loc)? else {
                break;
            };
            if stored.body_from_event
                && let Some(request) = &mut stored.attempt.request
            {
                if event_body.is_none() {
                    event_body = Some(self.delivered_body(tenant, delivery.event, &meta)?);
                }
                request.body = event_body.clone().unwrap_or_default();
            }
            out.push(stored.attempt);
            next = previous.filter(|p| *p < loc);
        }
        out.reverse();
        Ok(out)
    }

    pub(super) fn list_deliveries(
        &self,
        tenant: &str,
        filter: &DeliveryFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliveryRecord>> {
        let before = cursor
            .and_then(DeliveryId::parse)
            .and_then(|id| self.shared.ids.parse_delivery_id(&id));
        let mut lister = Lister {
            store: self,
            tenant,
            filter,
            limit,
            items: Vec::new(),
            scanned: 0,
        };
        let done = match &filter.webhook_id {
            Some(webhook) => lister.by_webhook(webhook, before)?,
            None => lister.by_event(before)?,
        };
        Ok(Page {
            items: lister.items,
            next: done,
        })
    }

    /// The due head of a webhook's schedule: entries due by `now_ms`, oldest due first, not in
    /// `in_flight` and durable (an event is never attempted before its 202). With
    /// `skip_due_before` the scan starts at the first page that may hold an entry due then or
    /// later (see `Store::claim_due`), so a webhook with many claims open does not walk past
    /// all of them on every fill.
    pub(super) fn claim_due(
        &self,
        tenant: &str,
        webhook: &WebhookId,
        in_flight: &HashSet<DeliveryId>,
        skip_due_before: Option<u64>,
        now_ms: u64,
        limit: usize,
    ) -> Result<QueueHead> {
        let durable = self.shared.log.durable_end();
        let prefix = keys::queue_of(tenant, webhook);
        let skip_before = skip_due_before.unwrap_or(0);
        // An entry goes into the last page starting at or before its due time
        // (`writer/schedule.rs`), so a page holds nothing due later than the next page's start:
        // the pages before the last one starting earlier than `skip_before` hold only entries
        // due earlier. (Entries due at the same time may sit in pages out of insertion order,
        // which is why the scan resumes at a due time, not at an entry.)
        let start = match skip_due_before {
            Some(due) => match self
                .shared
                .tree
                .range(prefix.clone()..keys::queue_page(tenant, webhook, due, 0))
                .next_back()
            {
                Some(page) => page?.0.to_vec(),
                None => prefix.clone(),
            },
            None => prefix.clone(),
        };
        let mut head = QueueHead::default();
        for page in self.shared.tree.range(start..) {
            let (key, value) = page?;
            if !key.starts_with(&prefix) {
                break;
            }
            for entry in pages::decode_queue_page(&value)? {
                if entry.due < skip_before || entry.delivery.event >= durable {
                    continue;
                }
                if entry.due > now_ms || head.due.len() >= limit {
                    head.next_due = Some(entry.due);
                    return Ok(head);
                }
                let id = self
                    .shared
                    .ids
                    .delivery_id(entry.delivery, entry.created_at);
                if in_flight.contains(&id) {
                    continue;
                }
                head.due.push(Claim {
                    delivery_id: id,
                    lease: 0,
                    queue_due: Some(entry.due),
                });
            }
        }
        Ok(head)
    }

    pub(super) fn schedule_counts(
        &self,
        now_ms: u64,
        max_entries: usize,
    ) -> Result<ScheduleCounts> {
        let mut counts = ScheduleCounts::default();
        for page in self.shared.tree.scan_prefix([keys::QUEUE]) {
            let (_, value) = page?;
            for entry in pages::decode_queue_page(&value)? {
                if counts.scheduled >= max_entries {
                    counts.truncated = true;
                    return Ok(counts);
                }
                counts.scheduled += 1;
                if entry.due <= now_ms {
                    counts.due += 1;
                }
            }
        }
        Ok(counts)
    }
}

/// One listing of deliveries, newest first, bounded by [`MAX_SCAN_ROWS`].
struct Lister<'a> {
    store: &'a SledStore,
    tenant: &'a str,
    filter: &'a DeliveryFilter,
    limit: usize,
    items: Vec<DeliveryRecord>,
    scanned: usize,
}

impl Lister<'_> {
    /// Looks at one delivery; `Some(cursor)` when the page is full or the scan bound reached.
    fn visit(
        &mut self,
        delivery: DeliveryRef,
        created_at: u64,
        event: Option<&(EventMeta, RawRecord)>,
    ) -> Result<Option<String>> {
        self.scanned += 1;
        let last = self
            .store
            .shared
            .ids
            .delivery_id(delivery, created_at)
            .to_string();
        let in_time = self.filter.after_ms.is_none_or(|t| created_at >= t)
            && self.filter.before_ms.is_none_or(|t| created_at < t);
        if in_time {
            let read;
            let found = match event {
                Some(found) => Some(found),
                None => {
                    read = self.store.read_event(self.tenant, delivery.event, false)?;
                    read.as_ref()
                }
            };
            if let Some((meta, record)) = found
                && let Some(found) = self.keep(delivery, meta, record)?
            {
                self.items.push(found);
                if self.items.len() == self.limit {
                    return Ok(Some(last));
                }
            }
        }
        Ok((self.scanned >= MAX_SCAN_ROWS).then_some(last))
    }

    fn keep(
        &self,
        delivery: DeliveryRef,
        meta: &EventMeta,
        record: &RawRecord,
    ) -> Result<Option<DeliveryRecord>> {
        let index = usize::from(delivery.index);
        if index >= meta.webhooks.len() {
            return Ok(None);
        }
        let slot = slot_of(record, index)?;
        let filter = self.filter;
        let keep = !slot.purged
            && filter.status.is_none_or(|s| s == slot.status)
            && filter
                .webhook_id
                .as_ref()
                .is_none_or(|w| *w == meta.webhooks[index])
            && filter
                .event_type
                .as_ref()
                .is_none_or(|t| *t == meta.event_type)
            && filter
                .channel
                .as_ref()
                .is_none_or(|c| meta.channel.as_ref() == Some(c));
        if !keep {
            return Ok(None);
        }
        self.store
            .delivery_view(self.tenant, delivery, meta, &slot)
            .map(Some)
    }

    /// Through the webhook's `V` pages.
    fn by_webhook(
        &mut self,
        webhook: &WebhookId,
        before: Option<DeliveryRef>,
    ) -> Result<Option<String>> {
        let prefix = keys::webhook_deliveries(self.tenant, webhook);
        let end = match before {
            Some(d) => [
                keys::webhook_deliveries_page(self.tenant, webhook, d),
                vec![0],
            ]
            .concat(),
            None => keys::prefix_end(&prefix),
        };
        for page in self.store.shared.tree.range(prefix.clone()..end).rev() {
            let (_, value) = page?;
            for entry in pages::decode_deliveries_page(&value)?.into_iter().rev() {
                if before.is_some_and(|b| entry.delivery >= b) {
                    continue;
                }
                if let Some(cursor) = self.visit(entry.delivery, entry.created_at, None)? {
                    return Ok(Some(cursor));
                }
            }
        }
        Ok(None)
    }

    /// Through the tenant's `L` pages, each event's deliveries in reverse fan-out order.
    fn by_event(&mut self, before: Option<DeliveryRef>) -> Result<Option<String>> {
        let prefix = keys::tenant_prefix(keys::EVENTS, self.tenant);
        let end = match before {
            Some(d) => [keys::events_page(self.tenant, d.event), vec![0]].concat(),
            None => keys::prefix_end(&prefix),
        };
        for page in self.store.shared.tree.range(prefix.clone()..end).rev() {
            let (_, value) = page?;
            for entry in pages::decode_events_page(&value)?.into_iter().rev() {
                if before.is_some_and(|b| entry.event > b.event) {
                    continue;
                }
                let Some(found) = self.store.read_event(self.tenant, entry.event, false)? else {
                    continue;
                };
                for index in (0..found.0.webhooks.len()).rev() {
                    let delivery = DeliveryRef {
                        event: entry.event,
                        index: index as u16,
                    };
                    if before.is_some_and(|b| delivery >= b) {
                        continue;
                    }
                    if let Some(cursor) = self.visit(delivery, entry.created_at, Some(&found))? {
                        return Ok(Some(cursor));
                    }
                }
            }
        }
        Ok(None)
    }
}
