//! Commands into log records: each command the writer takes (append a group, record an
//! outcome, requeue, settle, recover, put or delete a webhook, purge, drop a segment) is
//! checked against the current state and written as records whose effects `effects.rs` applies.

use super::*;

impl WriterState {
    pub(super) fn append(
        &mut self,
        batch: &mut Batch,
        group: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        self.shared.check_space()?;
        if let Some(wide) = group.iter().find(|e| e.webhooks.len() > MAX_FAN_OUT) {
            return Err(StoreError::Unavailable(format!(
                "an event of tenant {} fans out to {} webhooks; at most {MAX_FAN_OUT} are stored",
                wide.tenant,
                wide.webhooks.len()
            )));
        }
        batch.durable = true;
        let now = now_ms();
        let mut answers = Vec::with_capacity(group.len());
        for new in group {
            if let Some(key) = &new.idempotency_key
                && let Some(original) = self.idempotent_event(batch, &new.tenant, key, now)?
            {
                answers.push(Appended::Duplicate(original));
                continue;
            }
            let meta = EventMeta {
                tenant: new.tenant,
                created_at: new.created_at,
                event_type: new.event_type,
                channel: new.channel,
                idempotency_until: match new.idempotency_key {
                    Some(_) => new.created_at.saturating_add(new.idempotency_window_ms),
                    None => 0,
                },
                idempotency_key: new.idempotency_key,
                webhooks: new.webhooks,
            };
            let slots = vec![Slot::pending(meta.created_at); meta.webhooks.len()];
            let payload = new.payload.get().as_bytes();
            let record = encode_record(RecordKind::Event, &slots, &meta.encode(), payload);
            let loc = self.log.append(&record)?;
            // Readable once written, and read next by its deliveries and their outcomes.
            self.shared.log.cache_appended(loc, record);
            self.apply_event(batch, loc, &meta, payload.len() as u64)?;
            batch.appended.insert(loc, meta.created_at);
            let event = EventRecord {
                id: self.shared.ids.event_id(loc, meta.created_at),
                event_type: meta.event_type.clone(),
                channel: meta.channel.clone(),
                idempotency_key: meta.idempotency_key.clone(),
                created_at: meta.created_at,
                payload: new.payload,
            };
            let deliveries = meta
                .webhooks
                .iter()
                .enumerate()
                .map(|(index, webhook)| {
                    let delivery = DeliveryRef {
                        event: loc,
                        index: index as u16,
                    };
                    delivery_record(
                        &self.shared.ids,
                        delivery,
                        &meta,
                        webhook,
                        &Slot::pending(meta.created_at),
                    )
                })
                .collect();
            answers.push(Appended::Created { event, deliveries });
        }
        Ok(answers)
    }

    /// The event a key names within its window: one seen earlier in this group, or stored.
    pub(super) fn idempotent_event(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        key: &str,
        now: u64,
    ) -> Result<Option<crate::ids::EventId>> {
        let (bucket_key, hash) = idempotency_slot(tenant, key);
        let entries = self.bucket(batch, &bucket_key)?;
        let Some(entry) = entries
            .iter()
            .find(|e| e.hash == hash && e.expires_at > now)
            .copied()
        else {
            return Ok(None);
        };
        if let Some(created_at) = batch.appended.get(&entry.event) {
            return Ok(Some(self.shared.ids.event_id(entry.event, *created_at)));
        }
        // The original may have been purged since: then the key is free again.
        match self.shared.log.read(entry.event, false)? {
            Some(record) if record.header.kind == RecordKind::Event => {
                let meta = EventMeta::decode(&record.meta)?;
                Ok((meta.tenant == tenant)
                    .then(|| self.shared.ids.event_id(entry.event, meta.created_at)))
            }
            _ => Ok(None),
        }
    }

    pub(super) fn record(&mut self, batch: &mut Batch, outcome: AttemptOutcome) -> Result<()> {
        let Some(delivery) = self
            .shared
            .ids
            .parse_delivery_id(&outcome.attempt.delivery_id)
        else {
            return Ok(());
        };
        let Some((meta, slot)) = self.delivery_state(batch, &outcome.tenant, delivery)? else {
            return Ok(());
        };
        let attempt = &outcome.attempt;
        let update = &outcome.update;
        let now = now_ms();
        let new = Slot {
            status: update.status,
            purged: false,
            attempts: slot
                .attempts
                .max(attempt.attempt.min(u32::from(u16::MAX)) as u16),
            updated_at: now,
            next_attempt_at: update.next_attempt_at,
            last_attempt_at: Some(attempt.started_at),
            last_status_code: attempt.status_code,
            last_error: SlotError::of(attempt.error_code.as_deref()),
            last_attempt: None,
        };
        let transition = TransitionMeta {
            tenant: outcome.tenant.clone(),
            delivery,
            webhook: meta.webhooks[usize::from(delivery.index)].clone(),
            created_at: meta.created_at,
            old_status: slot.status,
            old_due: slot.next_attempt_at,
            new,
            latency_ms: Some(attempt.latency_ms),
            previous_attempt: slot.last_attempt,
            channel: meta.channel.clone(),
        };
        let body_from_event = outcome.body_is_event_body
            && attempt
                .request
                .as_ref()
                .is_some_and(|request| !request.body_truncated && !request.body_base64);
        let body = attempt_codec::encode(attempt, update.filtered_by.as_deref(), body_from_event);
        let record = encode_record(RecordKind::Attempt, &[], &transition.encode(), &body);
        let loc = self.log.append(&record)?;
        self.apply_transition(batch, loc, &transition, Some(attempt))
    }

    pub(super) fn requeue(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        delivery: DeliveryRef,
        due: u64,
    ) -> Result<Option<DeliveryRecord>> {
        batch.durable = true;
        let Some((meta, slot)) = self.delivery_state(batch, tenant, delivery)? else {
            return Ok(None);
        };
        let new = Slot {
            status: DeliveryStatus::Pending,
            next_attempt_at: Some(due),
            updated_at: now_ms(),
            ..slot.clone()
        };
        let webhook = meta.webhooks[usize::from(delivery.index)].clone();
        self.transition(batch, tenant, delivery, &meta, &slot, new.clone())?;
        Ok(Some(delivery_record(
            &self.shared.ids,
            delivery,
            &meta,
            &webhook,
            &new,
        )))
    }

    pub(super) fn settle(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        delivery: DeliveryRef,
        status: DeliveryStatus,
        error: &str,
    ) -> Result<()> {
        let Some((meta, slot)) = self.delivery_state(batch, tenant, delivery)? else {
            return Ok(());
        };
        if !slot.status.is_queued() {
            return Ok(());
        }
        let new = Slot {
            status,
            next_attempt_at: None,
            updated_at: now_ms(),
            last_error: SlotError::of(Some(error)),
            ..slot.clone()
        };
        self.transition(batch, tenant, delivery, &meta, &slot, new)
    }

    /// Logs and applies a change of a delivery without an attempt.
    pub(super) fn transition(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        delivery: DeliveryRef,
        meta: &EventMeta,
        old: &Slot,
        new: Slot,
    ) -> Result<()> {
        let transition = TransitionMeta {
            tenant: tenant.to_string(),
            delivery,
            webhook: meta.webhooks[usize::from(delivery.index)].clone(),
            created_at: meta.created_at,
            old_status: old.status,
            old_due: old.next_attempt_at,
            new,
            latency_ms: None,
            previous_attempt: None,
            channel: meta.channel.clone(),
        };
        let record = encode_record(RecordKind::Transition, &[], &transition.encode(), &[]);
        let loc = self.log.append(&record)?;
        self.apply_transition(batch, loc, &transition, None)
    }

    pub(super) fn recover(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        webhook: &WebhookId,
        since_ms: u64,
    ) -> Result<usize> {
        batch.durable = true;
        let now = now_ms();
        let prefix = keys::webhook_deliveries(tenant, webhook);
        // Deliveries appended in this same group are pending, never failed: the pages in
        // sled hold every delivery that can be.
        let mut failed = Vec::new();
        for entry in self.tree().scan_prefix(&prefix) {
            let (_, value) = entry?;
            failed.extend(
                pages::decode_deliveries_page(&value)?
                    .into_iter()
                    .filter(|e| e.created_at >= since_ms)
                    .map(|e| e.delivery),
            );
        }
        let mut requeued = 0;
        for delivery in failed {
            let Some((meta, slot)) = self.delivery_state(batch, tenant, delivery)? else {
                continue;
            };
            if slot.status != DeliveryStatus::Failed {
                continue;
            }
            let new = Slot {
                status: DeliveryStatus::Pending,
                next_attempt_at: Some(now),
                updated_at: now,
                ..slot.clone()
            };
            self.transition(batch, tenant, delivery, &meta, &slot, new)?;
            requeued += 1;
        }
        Ok(requeued)
    }

    pub(super) fn put_webhook(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        webhook: &WebhookId,
        json: Vec<u8>,
        expect: Expect,
    ) -> Result<bool> {
        batch.durable = true;
        let key = keys::webhook(tenant, webhook);
        let current = match batch.raw.iter().rev().find(|(k, _)| *k == key) {
            Some((_, value)) => value.clone().map(sled::IVec::from),
            None => self.tree().get(&key)?,
        };
        let matches = match (&expect, &current) {
            (Expect::Any, _) | (Expect::Absent, None) => true,
            (Expect::Bytes(old), Some(now)) => old == now,
            _ => false,
        };
        if !matches {
            return Ok(false);
        }
        let meta = WebhookMeta {
            tenant: tenant.to_string(),
            webhook: webhook.clone(),
        };
        let record = encode_record(RecordKind::WebhookPut, &[], &meta.encode(), &json);
        self.log.append(&record)?;
        self.apply_webhook_put(batch, &meta, json);
        Ok(true)
    }

    pub(super) fn delete_webhook(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        webhook: &WebhookId,
    ) -> Result<bool> {
        batch.durable = true;
        let key = keys::webhook(tenant, webhook);
        let exists = match batch.raw.iter().rev().find(|(k, _)| *k == key) {
            Some((_, value)) => value.is_some(),
            None => self.tree().get(&key)?.is_some(),
        };
        if !exists {
            return Ok(false);
        }
        let meta = WebhookMeta {
            tenant: tenant.to_string(),
            webhook: webhook.clone(),
        };
        let record = encode_record(RecordKind::WebhookDelete, &[], &meta.encode(), &[]);
        self.log.append(&record)?;
        self.apply_webhook_delete(batch, &meta)?;
        Ok(true)
    }

    pub(super) fn purge(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        events: &[Locator],
        before_ms: u64,
    ) -> Result<crate::store::PurgeOutcome> {
        batch.durable = true;
        let mut purged = Vec::new();
        for &loc in events {
            let Some(record) = self.shared.log.read(loc, false)? else {
                continue;
            };
            if record.header.kind != RecordKind::Event {
                continue;
            }
            let meta = EventMeta::decode(&record.meta)?;
            if meta.tenant != tenant || meta.created_at >= before_ms {
                continue;
            }
            if let Some(event) = self.purge_candidate(batch, loc, &record, &meta)? {
                purged.push(event);
            }
        }
        let outcome = purge_outcome(&purged);
        if purged.is_empty() {
            return Ok(outcome);
        }
        let meta = PurgeMeta {
            tenant: tenant.to_string(),
            events: purged,
        };
        let record = encode_record(RecordKind::Purge, &[], &meta.encode(), &[]);
        self.log.append(&record)?;
        self.apply_purge(batch, &meta)?;
        Ok(outcome)
    }

    /// What of one event a purge removes: its finished deliveries not purged yet, and the event
    /// itself once none of its deliveries is left.
    pub(super) fn purge_candidate(
        &mut self,
        batch: &Batch,
        loc: Locator,
        record: &RawRecord,
        meta: &EventMeta,
    ) -> Result<Option<PurgedEvent>> {
        let mut deliveries = Vec::new();
        let mut attempts = 0;
        let mut kept = 0;
        for index in 0..meta.webhooks.len() {
            let delivery = DeliveryRef {
                event: loc,
                index: index as u16,
            };
            let slot = match batch.slots.get(&delivery) {
                Some(slot) => slot.clone(),
                None => Slot::decode(&record.slots[index * codec::SLOT_BYTES..])?,
            };
            if slot.purged {
                continue;
            }
            if slot.status.is_queued() {
                kept += 1;
                continue;
            }
            deliveries.push(index as u16);
            attempts += u64::from(slot.attempts);
        }
        let whole_event = kept == 0;
        if deliveries.is_empty() && !whole_event {
            return Ok(None);
        }
        Ok(Some(PurgedEvent {
            event: loc,
            whole_event,
            deliveries,
            payload_bytes: u64::from(record.header.payload_len),
            attempts,
        }))
    }

    /// Deletes a log segment every record of which is older than `before_ms` and none of whose
    /// deliveries is queued, with what its events count for in usage.
    pub(super) fn delete_segment(
        &mut self,
        batch: &mut Batch,
        segment: u32,
        before_ms: u64,
    ) -> Result<crate::store::PurgeOutcome> {
        let mut outcome = crate::store::PurgeOutcome::default();
        let Some(info) = self.segment_info(batch, segment)? else {
            return Ok(outcome);
        };
        if info.queued > 0 || info.last_ms >= before_ms || segment >= self.log.end().segment {
            return Ok(outcome);
        }
        batch.durable = true;
        let mut usage: HashMap<String, Usage> = HashMap::new();
        let from = Locator { segment, offset: 0 };
        let shared = self.shared.clone();
        shared
            .log
            .scan_from(from, |loc, record| {
                if loc.segment != segment {
                    return Err(StoreError::Interrupted("end of segment".into()));
                }
                match record.header.kind {
                    RecordKind::Event if record.header.flags & codec::FLAG_PURGED == 0 => {
                        let meta = EventMeta::decode(&record.meta)?;
                        let u = usage.entry(meta.tenant).or_default();
                        u.events += 1;
                        u.payload_bytes += u64::from(record.header.payload_len);
                        outcome.events += 1;
                        for index in 0..meta.webhooks.len() {
                            let slot = Slot::decode(&record.slots[index * codec::SLOT_BYTES..])?;
                            if !slot.purged {
                                outcome.deliveries += 1;
                                outcome.attempts += u64::from(slot.attempts);
                            }
                        }
                    }
                    _ => {}
                }
                Ok(())
            })
            .or_else(|err| match err {
                StoreError::Interrupted(_) => Ok(Locator::ZERO),
                other => Err(other),
            })?;
        for (tenant, gone) in usage {
            let mut current = self.usage(batch, &tenant)?;
            current.events = current.events.saturating_sub(gone.events);
            current.payload_bytes = current.payload_bytes.saturating_sub(gone.payload_bytes);
            batch.usage.insert(tenant, current);
        }
        batch.segments.insert(segment, None);
        batch.delete_segments.push(segment);
        info!(
            segment,
            events = outcome.events,
            "log segment deleted by retention"
        );
        Ok(outcome)
    }
}

/// The bucket key and the 16-byte hash of a tenant's idempotency key.
pub(super) fn idempotency_slot(tenant: &str, key: &str) -> (Vec<u8>, [u8; 16]) {
    let digest = Sha256::new()
        .chain_update(tenant.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    let hash: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    let bucket = u16::from_be_bytes([hash[0], hash[1]]);
    (keys::idempotency_bucket(tenant, bucket), hash)
}

fn purge_outcome(events: &[PurgedEvent]) -> crate::store::PurgeOutcome {
    crate::store::PurgeOutcome {
        events: events.iter().filter(|e| e.whole_event).count() as u64,
        deliveries: events.iter().map(|e| e.deliveries.len() as u64).sum(),
        attempts: events.iter().map(|e| e.attempts).sum(),
    }
}
