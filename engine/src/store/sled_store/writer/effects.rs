//! Effects of records: what each record in the log changes in the sled tree (schedule pages,
//! listings, idempotency buckets, counters, usage, webhook health). The same functions run
//! live, right after a command wrote its record, and at start when the log is replayed.

use super::commands::idempotency_slot;
use super::*;

impl WriterState {
    /// Applies one record read back from the log (replay).
    pub fn apply_record(
        &mut self,
        batch: &mut Batch,
        loc: Locator,
        record: &RawRecord,
    ) -> Result<()> {
        batch.records += 1;
        match record.header.kind {
            RecordKind::Event => {
                let meta = EventMeta::decode(&record.meta)?;
                self.apply_event(batch, loc, &meta, u64::from(record.header.payload_len))
            }
            RecordKind::Attempt => {
                let meta = TransitionMeta::decode(&record.meta)?;
                let stored = attempt_codec::decode(&record.payload, loc, &self.shared.ids)?;
                self.apply_transition(batch, loc, &meta, Some(&stored.attempt))
            }
            RecordKind::Transition => {
                let meta = TransitionMeta::decode(&record.meta)?;
                self.apply_transition(batch, loc, &meta, None)
            }
            RecordKind::WebhookPut => {
                let meta = WebhookMeta::decode(&record.meta)?;
                self.apply_webhook_put(batch, &meta, record.payload.clone());
                Ok(())
            }
            RecordKind::WebhookDelete => {
                let meta = WebhookMeta::decode(&record.meta)?;
                self.apply_webhook_delete(batch, &meta)
            }
            RecordKind::Purge => {
                let meta = PurgeMeta::decode(&record.meta)?;
                self.apply_purge(batch, &meta)
            }
        }
    }

    pub(super) fn apply_event(
        &mut self,
        batch: &mut Batch,
        loc: Locator,
        meta: &EventMeta,
        payload_len: u64,
    ) -> Result<()> {
        let tenant = meta.tenant.as_str();
        self.append_event_entry(
            batch,
            tenant,
            EventEntry {
                event: loc,
                created_at: meta.created_at,
            },
        )?;
        for (index, webhook) in meta.webhooks.iter().enumerate() {
            let delivery = DeliveryRef {
                event: loc,
                index: index as u16,
            };
            self.append_delivery_entry(
                batch,
                tenant,
                webhook,
                DeliveryEntry {
                    delivery,
                    created_at: meta.created_at,
                },
            )?;
            self.queue_insert(
                batch,
                tenant,
                webhook,
                QueueEntry {
                    due: meta.created_at,
                    delivery,
                    created_at: meta.created_at,
                },
            )?;
            batch.notify_due(tenant, webhook, meta.created_at);
        }
        if let Some(key) = &meta.idempotency_key {
            let (bucket_key, hash) = idempotency_slot(tenant, key);
            let now = now_ms();
            let entries = self.bucket(batch, &bucket_key)?;
            entries.retain(|e| e.expires_at > now && e.hash != hash);
            entries.push(IdempotencyEntry {
                hash,
                event: loc,
                expires_at: meta.idempotency_until,
            });
        }
        batch.stats.event(meta);
        let usage = self.usage(batch, tenant)?;
        batch.usage.insert(
            tenant.to_string(),
            Usage {
                events: usage.events + 1,
                pending: usage.pending + meta.webhooks.len() as u64,
                payload_bytes: usage.payload_bytes + payload_len,
            },
        );
        let mut info = self.segment_info(batch, loc.segment)?.unwrap_or_default();
        info.events += 1;
        info.queued += meta.webhooks.len() as u64;
        info.last_ms = info.last_ms.max(meta.created_at);
        batch.segments.insert(loc.segment, Some(info));
        Ok(())
    }

    /// A delivery's change; `attempt` when the record is an attempt (it becomes the slot's
    /// last attempt and counts in the webhook's health).
    pub(super) fn apply_transition(
        &mut self,
        batch: &mut Batch,
        loc: Locator,
        meta: &TransitionMeta,
        attempt: Option<&AttemptRecord>,
    ) -> Result<()> {
        let mut new = meta.new.clone();
        if attempt.is_some() {
            new.last_attempt = Some(loc);
        }
        let tenant = meta.tenant.as_str();
        let was_queued = meta.old_status.is_queued();
        let is_queued = new.status.is_queued();
        if was_queued && let Some(due) = meta.old_due {
            self.queue_remove(batch, tenant, &meta.webhook, due, meta.delivery)?;
        }
        if is_queued && let Some(due) = new.next_attempt_at {
            self.queue_insert(
                batch,
                tenant,
                &meta.webhook,
                QueueEntry {
                    due,
                    delivery: meta.delivery,
                    created_at: meta.created_at,
                },
            )?;
            batch.notify_due(tenant, &meta.webhook, due);
        }
        batch.stats.transition(
            tenant,
            &meta.webhook,
            meta.channel.as_deref(),
            meta.created_at,
            meta.old_status,
            new.status,
            meta.latency_ms,
        );
        if was_queued != is_queued {
            self.count_queued(batch, tenant, meta.delivery.event.segment, is_queued)?;
        }
        if let Some(attempt) = attempt {
            let key = keys::health(tenant, &meta.webhook);
            let mut health = match batch.health.get(&key) {
                Some(health) => health.clone(),
                None => match self.tree().get(&key)? {
                    // A record that does not decode starts afresh rather than failing the attempt.
                    Some(bytes) => stats::decode(&bytes).unwrap_or_default(),
                    None => WebhookHealth::default(),
                },
            };
            if health.record(attempt) {
                batch.health.insert(key, health);
            }
        }
        // The segment of the record stays known to the catalogue, with its time.
        let mut info = self.segment_info(batch, loc.segment)?.unwrap_or_default();
        info.last_ms = info.last_ms.max(new.updated_at);
        batch.segments.insert(loc.segment, Some(info));
        batch.slots.insert(meta.delivery, new);
        Ok(())
    }

    /// A delivery of `tenant` whose event is in `segment` joined (`queued`) or left the
    /// deliveries still to be made: the tenant's pending count and the segment's.
    pub(super) fn count_queued(
        &self,
        batch: &mut Batch,
        tenant: &str,
        segment: u32,
        queued: bool,
    ) -> Result<()> {
        let mut usage = self.usage(batch, tenant)?;
        let mut info = self.segment_info(batch, segment)?.unwrap_or_default();
        if queued {
            usage.pending += 1;
            info.queued += 1;
        } else {
            usage.pending = usage.pending.saturating_sub(1);
            info.queued = info.queued.saturating_sub(1);
        }
        batch.usage.insert(tenant.to_string(), usage);
        batch.segments.insert(segment, Some(info));
        Ok(())
    }

    pub(super) fn apply_webhook_put(
        &mut self,
        batch: &mut Batch,
        meta: &WebhookMeta,
        json: Vec<u8>,
    ) {
        batch
            .raw
            .push((keys::webhook(&meta.tenant, &meta.webhook), Some(json)));
        batch.invalidate.insert(meta.tenant.clone());
        batch
            .changed
            .insert((meta.tenant.clone(), meta.webhook.clone()));
    }

    /// Removes the webhook and ends every delivery still in its schedule as `failed`
    /// (`webhook_deleted`): the schedule holds exactly its queued deliveries.
    pub(super) fn apply_webhook_delete(
        &mut self,
        batch: &mut Batch,
        meta: &WebhookMeta,
    ) -> Result<()> {
        let tenant = meta.tenant.as_str();
        let webhook = &meta.webhook;
        batch.raw.push((keys::webhook(tenant, webhook), None));
        batch.raw.push((keys::health(tenant, webhook), None));
        batch.invalidate.insert(tenant.to_string());
        batch.changed.insert((tenant.to_string(), webhook.clone()));
        let index = self.queue_index(tenant, webhook)?.clone();
        let now = now_ms();
        let mut usage = self.usage(batch, tenant)?;
        for (first_due, page) in index.into_keys() {
            let key = keys::queue_page(tenant, webhook, first_due, page);
            let entries = self.queue_page(batch, &key)?.clone();
            for entry in entries {
                let old = match batch.slots.get(&entry.delivery) {
                    Some(slot) => slot.clone(),
                    None => self
                        .shared
                        .log
                        .read_slot(entry.delivery)?
                        .unwrap_or_else(|| Slot::pending(entry.created_at)),
                };
                let new = Slot {
                    status: DeliveryStatus::Failed,
                    next_attempt_at: None,
                    updated_at: now,
                    last_error: SlotError::of(Some("webhook_deleted")),
                    ..old
                };
                let channel = self.channel_of(entry.delivery)?;
                batch.stats.transition(
                    tenant,
                    webhook,
                    channel.as_deref(),
                    entry.created_at,
                    DeliveryStatus::Pending,
                    DeliveryStatus::Failed,
                    None,
                );
                usage.pending = usage.pending.saturating_sub(1);
                let segment = entry.delivery.event.segment;
                let mut info = self.segment_info(batch, segment)?.unwrap_or_default();
                info.queued = info.queued.saturating_sub(1);
                batch.segments.insert(segment, Some(info));
                batch.slots.insert(entry.delivery, new);
            }
            batch.queue_pages.insert(key, None);
        }
        batch.usage.insert(tenant.to_string(), usage);
        self.queues
            .insert((tenant.to_string(), webhook.clone()), QueueIndex::new());
        Ok(())
    }

    /// The channel of a delivery's event, read from its record in the log (`None` when the
    /// event has none or is gone).
    fn channel_of(&self, delivery: DeliveryRef) -> Result<Option<String>> {
        match self.shared.log.read(delivery.event, false)? {
            Some(record) if record.header.kind == RecordKind::Event => {
                Ok(EventMeta::decode(&record.meta)?.channel)
            }
            _ => Ok(None),
        }
    }

    pub(super) fn apply_purge(&mut self, batch: &mut Batch, meta: &PurgeMeta) -> Result<()> {
        let mut usage = self.usage(batch, &meta.tenant)?;
        for event in &meta.events {
            for &index in &event.deliveries {
                let delivery = DeliveryRef {
                    event: event.event,
                    index,
                };
                let slot = match batch.slots.get(&delivery) {
                    Some(slot) => Some(slot.clone()),
                    None => self.shared.log.read_slot(delivery)?,
                };
                if let Some(mut slot) = slot {
                    slot.purged = true;
                    batch.slots.insert(delivery, slot);
                }
            }
            if event.whole_event {
                usage.events = usage.events.saturating_sub(1);
                usage.payload_bytes = usage.payload_bytes.saturating_sub(event.payload_bytes);
                batch.purged_records.push(event.event);
            }
        }
        batch.usage.insert(meta.tenant.clone(), usage);
        Ok(())
    }
}
