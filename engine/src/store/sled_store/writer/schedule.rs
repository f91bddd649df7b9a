//! The pages the writer keeps: each webhook's schedule (sorted pages of due deliveries with an
//! in-memory index of their first entries), the tenants' event and delivery listing pages,
//! idempotency buckets, usage and the segment catalogue, read through the group's overlay.

use super::*;

impl WriterState {
    pub(super) fn next_page_number(&mut self) -> u32 {
        self.page_counter = self.page_counter.wrapping_add(1);
        self.page_counter
    }

    pub(super) fn queue_index(
        &mut self,
        tenant: &str,
        webhook: &WebhookId,
    ) -> Result<&mut QueueIndex> {
        let id = (tenant.to_string(), webhook.clone());
        if !self.queues.contains_key(&id) {
            let prefix = keys::queue_of(tenant, webhook);
            let mut index = QueueIndex::new();
            for entry in self.shared.tree.scan_prefix(&prefix) {
                let (key, value) = entry?;
                if let Some(page) = keys::parse_queue_page(&key, prefix.len()) {
                    index.insert(page, pages::queue_page_len(&value)?);
                }
            }
            self.queues.insert(id.clone(), index);
        }
        Ok(self.queues.get_mut(&id).expect("loaded above"))
    }

    pub(super) fn queue_page<'b>(
        &self,
        batch: &'b mut Batch,
        key: &[u8],
    ) -> Result<&'b mut Vec<QueueEntry>> {
        if !matches!(batch.queue_pages.get(key), Some(Some(_))) {
            let entries = match self.shared.tree.get(key)? {
                Some(bytes) => pages::decode_queue_page(&bytes)?,
                None => Vec::new(),
            };
            batch.queue_pages.insert(key.to_vec(), Some(entries));
        }
        Ok(batch
            .queue_pages
            .get_mut(key)
            .and_then(Option::as_mut)
            .expect("loaded above"))
    }

    /// Puts an entry into the webhook's schedule: into the page whose range holds its due time
    /// if it has room; a full page splits, or — when the entry goes last — a new page starts.
    pub(super) fn queue_insert(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        webhook: &WebhookId,
        entry: QueueEntry,
    ) -> Result<()> {
        let target = self
            .queue_index(tenant, webhook)?
            .range(..=(entry.due, u32::MAX))
            .next_back()
            .map(|(page, count)| (*page, *count));
        let Some(((first_due, page), count)) = target else {
            return self.new_queue_page(batch, tenant, webhook, vec![entry]);
        };
        let key = keys::queue_page(tenant, webhook, first_due, page);
        let mut entries = std::mem::take(self.queue_page(batch, &key)?);
        debug_assert_eq!(entries.len(), count);
        if entries.len() < QUEUE_PAGE_ENTRIES {
            let at = entries.partition_point(|e| e < &entry);
            entries.insert(at, entry);
            self.put_queue_page(batch, tenant, webhook, (first_due, page), key, entries)?;
            return Ok(());
        }
        if entries.last().is_none_or(|last| *last <= entry) {
            self.put_queue_page(batch, tenant, webhook, (first_due, page), key, entries)?;
            return self.new_queue_page(batch, tenant, webhook, vec![entry]);
        }
        // Split: the upper half moves to a page of its own.
        let mut upper = entries.split_off(entries.len() / 2);
        let half = if entry < upper[0] {
            &mut entries
        } else {
            &mut upper
        };
        let at = half.partition_point(|e| e < &entry);
        half.insert(at, entry);
        self.put_queue_page(batch, tenant, webhook, (first_due, page), key, entries)?;
        self.new_queue_page(batch, tenant, webhook, upper)
    }

    pub(super) fn put_queue_page(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        webhook: &WebhookId,
        page: (u64, u32),
        key: Vec<u8>,
        entries: Vec<QueueEntry>,
    ) -> Result<()> {
        self.queue_index(tenant, webhook)?
            .insert(page, entries.len());
        batch.queue_pages.insert(key, Some(entries));
        Ok(())
    }

    pub(super) fn new_queue_page(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        webhook: &WebhookId,
        entries: Vec<QueueEntry>,
    ) -> Result<()> {
        let number = self.next_page_number();
        let first_due = entries[0].due;
        let key = keys::queue_page(tenant, webhook, first_due, number);
        self.queue_index(tenant, webhook)?
            .insert((first_due, number), entries.len());
        batch.queue_pages.insert(key, Some(entries));
        Ok(())
    }

    /// Takes an entry out of the webhook's schedule (searching back from the page its due time
    /// falls in: pages that start at the same time may hold it).
    pub(super) fn queue_remove(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        webhook: &WebhookId,
        due: u64,
        delivery: DeliveryRef,
    ) -> Result<()> {
        let candidates: Vec<(u64, u32)> = self
            .queue_index(tenant, webhook)?
            .range(..=(due, u32::MAX))
            .rev()
            .map(|(page, _)| *page)
            .collect();
        for (first_due, page) in candidates {
            let key = keys::queue_page(tenant, webhook, first_due, page);
            let entries = self.queue_page(batch, &key)?;
            if let Some(at) = entries
                .iter()
                .position(|e| e.delivery == delivery && e.due == due)
            {
                entries.remove(at);
                let left = entries.len();
                let index = self.queue_index(tenant, webhook)?;
                if left == 0 {
                    index.remove(&(first_due, page));
                    batch.queue_pages.insert(key, None);
                } else {
                    index.insert((first_due, page), left);
                }
                return Ok(());
            }
            if entries.last().is_some_and(|last| last.due < due) {
                break;
            }
        }
        warn!(tenant, webhook_id = %webhook, "a delivery was not in its webhook's schedule");
        Ok(())
    }

    pub(super) fn append_event_entry(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        entry: EventEntry,
    ) -> Result<()> {
        if !self.event_tails.contains_key(tenant) {
            let prefix = keys::tenant_prefix(keys::EVENTS, tenant);
            let tail = match self.tree().scan_prefix(&prefix).next_back() {
                Some(found) => {
                    let (key, value) = found?;
                    Some((key.to_vec(), pages::decode_events_page(&value)?.len()))
                }
                None => None,
            };
            self.event_tails.insert(tenant.to_string(), tail);
        }
        let tail = self.event_tails.get_mut(tenant).expect("loaded above");
        match tail {
            Some((key, count)) if *count < pages::LIST_PAGE_ENTRIES => {
                if !batch.event_pages.contains_key(key.as_slice()) {
                    let page = match self.shared.tree.get(&key)? {
                        Some(bytes) => pages::decode_events_page(&bytes)?,
                        None => Vec::new(),
                    };
                    batch.event_pages.insert(key.clone(), page);
                }
                batch
                    .event_pages
                    .get_mut(key.as_slice())
                    .expect("loaded above")
                    .push(entry);
                *count += 1;
            }
            _ => {
                let key = keys::events_page(tenant, entry.event);
                batch.event_pages.insert(key.clone(), vec![entry]);
                *tail = Some((key, 1));
            }
        }
        Ok(())
    }

    pub(super) fn append_delivery_entry(
        &mut self,
        batch: &mut Batch,
        tenant: &str,
        webhook: &WebhookId,
        entry: DeliveryEntry,
    ) -> Result<()> {
        let id = (tenant.to_string(), webhook.clone());
        if !self.delivery_tails.contains_key(&id) {
            let prefix = keys::webhook_deliveries(tenant, webhook);
            let tail = match self.tree().scan_prefix(&prefix).next_back() {
                Some(found) => {
                    let (key, value) = found?;
                    Some((key.to_vec(), pages::decode_deliveries_page(&value)?.len()))
                }
                None => None,
            };
            self.delivery_tails.insert(id.clone(), tail);
        }
        let tail = self.delivery_tails.get_mut(&id).expect("loaded above");
        match tail {
            Some((key, count)) if *count < pages::LIST_PAGE_ENTRIES => {
                if !batch.delivery_pages.contains_key(key.as_slice()) {
                    let page = match self.shared.tree.get(&key)? {
                        Some(bytes) => pages::decode_deliveries_page(&bytes)?,
                        None => Vec::new(),
                    };
                    batch.delivery_pages.insert(key.clone(), page);
                }
                batch
                    .delivery_pages
                    .get_mut(key.as_slice())
                    .expect("loaded above")
                    .push(entry);
                *count += 1;
            }
            _ => {
                let key = keys::webhook_deliveries_page(tenant, webhook, entry.delivery);
                batch.delivery_pages.insert(key.clone(), vec![entry]);
                *tail = Some((key, 1));
            }
        }
        Ok(())
    }

    pub(super) fn bucket<'b>(
        &self,
        batch: &'b mut Batch,
        key: &[u8],
    ) -> Result<&'b mut Vec<IdempotencyEntry>> {
        if !batch.buckets.contains_key(key) {
            let entries = match self.shared.tree.get(key)? {
                Some(bytes) => pages::decode_bucket(&bytes)?,
                None => Vec::new(),
            };
            batch.buckets.insert(key.to_vec(), entries);
        }
        Ok(batch.buckets.get_mut(key).expect("loaded above"))
    }

    pub(super) fn usage(&self, batch: &Batch, tenant: &str) -> Result<Usage> {
        if let Some(usage) = batch.usage.get(tenant) {
            return Ok(*usage);
        }
        match self.shared.tree.get(keys::usage(tenant))? {
            Some(bytes) => Usage::decode(&bytes),
            None => Ok(Usage::default()),
        }
    }

    pub(super) fn segment_info(&self, batch: &Batch, segment: u32) -> Result<Option<SegmentInfo>> {
        if let Some(info) = batch.segments.get(&segment) {
            return Ok(*info);
        }
        self.shared
            .tree
            .get(keys::segment(segment))?
            .map(|bytes| SegmentInfo::decode(&bytes))
            .transpose()
    }

    /// A delivery's event meta and current slot (this group's change if any), if it exists, is
    /// the tenant's and is not purged.
    pub(super) fn delivery_state(
        &self,
        batch: &Batch,
        tenant: &str,
        delivery: DeliveryRef,
    ) -> Result<Option<(EventMeta, Slot)>> {
        let Some(record) = self.shared.log.read(delivery.event, false)? else {
            return Ok(None);
        };
        if record.header.kind != RecordKind::Event {
            return Ok(None);
        }
        let meta = EventMeta::decode(&record.meta)?;
        let index = usize::from(delivery.index);
        if meta.tenant != tenant || index >= meta.webhooks.len() {
            return Ok(None);
        }
        let slot = match batch.slots.get(&delivery) {
            Some(slot) => slot.clone(),
            // The record just read holds the slot (no second `pread`).
            None => match record
                .slots
                .get(index * codec::SLOT_BYTES..(index + 1) * codec::SLOT_BYTES)
                .map(Slot::decode)
            {
                Some(Ok(slot)) => slot,
                None => return Ok(None),
                Some(Err(StoreError::Corrupt(_))) => {
                    // A slot torn by a power loss: the delivery is attempted again.
                    warn!(
                        tenant,
                        "a delivery slot failed its checksum; the delivery is due again"
                    );
                    Slot::pending(meta.created_at)
                }
                Some(Err(err)) => return Err(err),
            },
        };
        if slot.purged {
            return Ok(None);
        }
        Ok(Some((meta, slot)))
    }
}
