//! The single writer: one thread owns every write of the sled backend — the log, the delivery
//! slots and every key of the sled tree — so nothing needs a transaction or a lock.
//!
//! Callers send [`Command`]s. The writer takes every command waiting, turns each into log
//! records (an event, an attempt, a change of a delivery, a webhook written or deleted, a
//! purge), and applies each record's effects to an in-memory [`Batch`]: schedule pages,
//! listing pages, idempotency buckets, counters, usage, the segment catalogue. Then it commits
//! the group: one `write` of the log, the slot rewrites, one sled batch with the new checkpoint,
//! and — when a command needs it (events, API changes) — one `fdatasync` before answering.
//! Outcomes are answered right after the sled batch, without waiting for a sync: a crash that
//! loses one only makes its delivery due again.
//!
//! The same `apply_*` functions replay the log after the checkpoint at start (`recover`), so
//! sled never needs to be flushed before an acknowledgement: what it lost, the log redoes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::codec::{
    self, DeliveryRef, EventMeta, Locator, MAX_FAN_OUT, PurgeMeta, PurgedEvent, RecordKind, Slot,
    SlotError, TransitionMeta, WebhookMeta, encode_record,
};
use super::keys;
use super::log::{LogWriter, RawRecord};
use super::pages::{
    self, DeliveryEntry, EventEntry, IdempotencyEntry, QUEUE_PAGE_ENTRIES, QueueEntry,
    SegmentInfo, Usage,
};
use super::stats::{self, StatsDeltas};
use super::{Shared, StoredAttempt};
use crate::ids::{WebhookId, now_ms};
use crate::store::health::WebhookHealth;
use crate::store::{
    Appended, AttemptOutcome, AttemptRecord, DeliveryRecord, DeliveryStatus, EventRecord,
    NewEvent, Result, StoreError,
};

/// How often written but unsynced records (outcomes, slot rewrites) are synced, with sled.
const SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// Most commands taken into one group.
const MAX_GROUP_COMMANDS: usize = 1024;
/// Records replayed per sled batch at start.
const REPLAY_CHUNK: usize = 10_000;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

/// What the old stored bytes of a webhook must be for a put to apply.
#[derive(Debug)]
pub(super) enum Expect {
    /// A new webhook.
    Absent,
    /// A read-modify-write: the record read.
    Bytes(sled::IVec),
    /// Whatever is there (re-sealing at start).
    Any,
}

/// A request to the writer.
pub(super) enum Command {
    Append {
        group: Vec<NewEvent>,
        reply: Reply<Vec<Appended>>,
    },
    Record {
        outcomes: Vec<AttemptOutcome>,
        reply: Reply<Vec<Result<()>>>,
    },
    Requeue {
        tenant: String,
        delivery: DeliveryRef,
        due: u64,
        reply: Reply<Option<DeliveryRecord>>,
    },
    Settle {
        tenant: String,
        delivery: DeliveryRef,
        status: DeliveryStatus,
        error: String,
        reply: Reply<()>,
    },
    Recover {
        tenant: String,
        webhook: WebhookId,
        since_ms: u64,
        reply: Reply<usize>,
    },
    PutWebhook {
        tenant: String,
        webhook: WebhookId,
        json: Vec<u8>,
        expect: Expect,
        /// `false`: the stored record was not what the caller read (try again).
        reply: Reply<bool>,
    },
    DeleteWebhook {
        tenant: String,
        webhook: WebhookId,
        reply: Reply<bool>,
    },
    Purge {
        tenant: String,
        events: Vec<Locator>,
        before_ms: u64,
        reply: Reply<crate::store::PurgeOutcome>,
    },
    DeleteSegment {
        segment: u32,
        before_ms: u64,
        reply: Reply<crate::store::PurgeOutcome>,
    },
    /// Keys that no longer hold anything (statistics past their horizon, listing pages of
    /// deleted segments).
    RemoveKeys {
        keys: Vec<Vec<u8>>,
        reply: Reply<()>,
    },
    /// Keys written as given (statistics counters carried over by a migration).
    PutRaw {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        reply: Reply<()>,
    },
    Flush {
        reply: Reply<()>,
    },
    Close {
        reply: Reply<()>,
    },
}

/// A reply waiting for the group's commit.
struct Pending {
    durable: bool,
    send: Box<dyn FnOnce(Option<&StoreError>) + Send>,
}

fn pending<T: Send + 'static>(durable: bool, reply: Reply<T>, value: Result<T>) -> Pending {
    Pending {
        durable,
        send: Box::new(move |failure| {
            let answer = match (failure, value) {
                (Some(err), Ok(_)) => Err(StoreError::Io(err.to_string())),
                (_, value) => value,
            };
            let _ = reply.send(answer);
        }),
    }
}

/// Changes of one group, applied to sled in one batch.
#[derive(Default)]
pub(super) struct Batch {
    queue_pages: HashMap<Vec<u8>, Option<Vec<QueueEntry>>>,
    event_pages: HashMap<Vec<u8>, Vec<EventEntry>>,
    delivery_pages: HashMap<Vec<u8>, Vec<DeliveryEntry>>,
    buckets: HashMap<Vec<u8>, Vec<IdempotencyEntry>>,
    usage: HashMap<String, Usage>,
    segments: HashMap<u32, Option<SegmentInfo>>,
    health: HashMap<Vec<u8>, WebhookHealth>,
    /// Webhook records written (`Some`) or removed, in order.
    raw: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    stats: StatsDeltas,
    slots: HashMap<DeliveryRef, Slot>,
    purged_records: Vec<Locator>,
    /// A command needs the group synced before it is answered.
    durable: bool,
    due: HashMap<(String, WebhookId), u64>,
    changed: HashSet<(String, WebhookId)>,
    /// Tenants whose cached webhooks are stale.
    invalidate: HashSet<String>,
    /// Segment files to delete once the batch is durable.
    delete_segments: Vec<u32>,
    /// Events appended in this group (not readable before the commit): creation times.
    appended: HashMap<Locator, u64>,
    records: usize,
}

impl Batch {
    fn notify_due(&mut self, tenant: &str, webhook: &WebhookId, due: u64) {
        self.due
            .entry((tenant.to_string(), webhook.clone()))
            .and_modify(|d| *d = (*d).min(due))
            .or_insert(due);
    }
}

/// The schedule pages of one webhook: (first due, page) → entry count.
type QueueIndex = BTreeMap<(u64, u32), usize>;

/// The writer's own state, kept between groups: the log's write side and what it knows of
/// the pages it writes (so appending does not search sled).
pub(super) struct WriterState {
    shared: Arc<Shared>,
    log: LogWriter,
    queues: HashMap<(String, WebhookId), QueueIndex>,
    /// The newest page of each tenant's event listing: key and entry count.
    event_tails: HashMap<String, Option<(Vec<u8>, usize)>>,
    delivery_tails: HashMap<(String, WebhookId), Option<(Vec<u8>, usize)>>,
    page_counter: u32,
    last_sync: Instant,
    unsynced: bool,
}

impl WriterState {
    pub fn new(shared: Arc<Shared>, log: LogWriter) -> Result<WriterState> {
        let page_counter = match shared.tree.get(keys::meta(keys::PAGE_COUNTER))? {
            Some(v) => u32::from_le_bytes(v.as_ref().try_into().unwrap_or([0; 4])),
            None => 0,
        };
        Ok(WriterState {
            shared,
            log,
            queues: HashMap::new(),
            event_tails: HashMap::new(),
            delivery_tails: HashMap::new(),
            page_counter,
            last_sync: Instant::now(),
            unsynced: false,
        })
    }

    fn tree(&self) -> &sled::Tree {
        &self.shared.tree
    }

    // ---- the loop ---------------------------------------------------------------------------

    /// Runs until every sender is gone or a `Close` command, then syncs.
    pub fn run(mut self, rx: Receiver<Command>) {
        loop {
            let first = match rx.recv_timeout(SYNC_INTERVAL) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    self.periodic_sync();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut commands = vec![first];
            while commands.len() < MAX_GROUP_COMMANDS {
                match rx.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            let close = self.run_group(commands);
            if close {
                return;
            }
            if self.last_sync.elapsed() >= SYNC_INTERVAL {
                self.periodic_sync();
            }
        }
        if let Err(err) = self.sync_all() {
            warn!(error = %err, "the final sync of the store failed");
        }
    }

    fn periodic_sync(&mut self) {
        if !self.unsynced {
            self.last_sync = Instant::now();
            return;
        }
        if let Err(err) = self.sync_all() {
            self.shared.failed(&err);
        }
    }

    /// The log (with every slot rewrite) and then sled: sled's checkpoint never runs ahead of
    /// a log that is on disk.
    fn sync_all(&mut self) -> Result<()> {
        self.log.sync()?;
        self.shared.db.flush()?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// One group: every command applied, then one commit. Returns whether to stop.
    fn run_group(&mut self, commands: Vec<Command>) -> bool {
        let mut batch = Batch::default();
        let mut replies = Vec::with_capacity(commands.len());
        let mut close = None;
        let refused = self.shared.failure();
        for command in commands {
            if let Some(failure) = &refused {
                refuse(command, failure);
                continue;
            }
            match command {
                Command::Append { group, reply } => {
                    let value = self.append(&mut batch, group);
                    replies.push(pending(true, reply, value));
                }
                Command::Record { outcomes, reply } => {
                    let value = Ok(outcomes
                        .into_iter()
                        .map(|o| self.record(&mut batch, o))
                        .collect());
                    replies.push(pending(false, reply, value));
                }
                Command::Requeue {
                    tenant,
                    delivery,
                    due,
                    reply,
                } => {
                    let value = self.requeue(&mut batch, &tenant, delivery, due);
                    replies.push(pending(true, reply, value));
                }
                Command::Settle {
                    tenant,
                    delivery,
                    status,
                    error,
                    reply,
                } => {
                    let value = self.settle(&mut batch, &tenant, delivery, status, &error);
                    replies.push(pending(false, reply, value));
                }
                Command::Recover {
                    tenant,
                    webhook,
                    since_ms,
                    reply,
                } => {
                    let value = self.recover(&mut batch, &tenant, &webhook, since_ms);
                    replies.push(pending(true, reply, value));
                }
                Command::PutWebhook {
                    tenant,
                    webhook,
                    json,
                    expect,
                    reply,
                } => {
                    let value = self.put_webhook(&mut batch, &tenant, &webhook, json, expect);
                    replies.push(pending(true, reply, value));
                }
                Command::DeleteWebhook {
                    tenant,
                    webhook,
                    reply,
                } => {
                    let value = self.delete_webhook(&mut batch, &tenant, &webhook);
                    replies.push(pending(true, reply, value));
                }
                Command::Purge {
                    tenant,
                    events,
                    before_ms,
                    reply,
                } => {
                    let value = self.purge(&mut batch, &tenant, &events, before_ms);
                    replies.push(pending(true, reply, value));
                }
                Command::DeleteSegment {
                    segment,
                    before_ms,
                    reply,
                } => {
                    let value = self.delete_segment(&mut batch, segment, before_ms);
                    replies.push(pending(true, reply, value));
                }
                Command::RemoveKeys { keys, reply } => {
                    for key in keys {
                        batch.raw.push((key, None));
                    }
                    replies.push(pending(false, reply, Ok(())));
                }
                Command::PutRaw { entries, reply } => {
                    for (key, value) in entries {
                        batch.raw.push((key, Some(value)));
                    }
                    replies.push(pending(true, reply, Ok(())));
                }
                Command::Flush { reply } => {
                    batch.durable = true;
                    replies.push(pending(true, reply, Ok(())));
                }
                Command::Close { reply } => {
                    batch.durable = true;
                    close = Some(reply);
                }
            }
        }
        let committed = self.commit(batch, &mut replies);
        if let Err(err) = &committed {
            self.shared.failed(err);
        }
        if let Some(reply) = close {
            let result = committed.and_then(|_| self.sync_all());
            let _ = reply.send(result);
            return true;
        }
        false
    }

    /// Writes a group: log, slots, sled, then (if needed) sync; answers in that order.
    fn commit(&mut self, mut batch: Batch, replies: &mut Vec<Pending>) -> Result<()> {
        let result = self.write_group(&mut batch);
        let failure = result.as_ref().err();
        // Outcomes and other non-durable answers need only the sled batch.
        let (durable, quick): (Vec<_>, Vec<_>) = replies.drain(..).partition(|p| p.durable);
        for reply in quick {
            (reply.send)(failure);
        }
        let synced = match &result {
            Ok(()) if batch.durable => self.sync_all(),
            Ok(()) => Ok(()),
            Err(err) => Err(StoreError::Io(err.to_string())),
        };
        let failure = synced.as_ref().err();
        for reply in durable {
            (reply.send)(failure);
        }
        if synced.is_ok() {
            for segment in std::mem::take(&mut batch.delete_segments) {
                if let Err(err) = self.shared.log.delete_segment(segment) {
                    warn!(segment, error = %err, "could not delete a log segment");
                }
            }
            self.notify(&mut batch);
        }
        synced
    }

    fn write_group(&mut self, batch: &mut Batch) -> Result<()> {
        let checkpoint = self.log.end();
        self.write_group_to(batch, checkpoint)
    }

    /// [`Self::write_group`] with the checkpoint given: replay commits in chunks, each up to
    /// the record after its last.
    fn write_group_to(&mut self, batch: &mut Batch, checkpoint: Locator) -> Result<()> {
        self.log.write()?;
        for (delivery, slot) in &batch.slots {
            self.shared.log.write_slot(*delivery, slot)?;
            self.log.touched(delivery.event.segment);
        }
        for loc in &batch.purged_records {
            self.shared.log.purge(*loc)?;
            self.log.touched(loc.segment);
        }
        let mut sled_batch = self.sled_batch(batch)?;
        sled_batch.insert(keys::meta(keys::CHECKPOINT), &checkpoint.pack().to_be_bytes());
        sled_batch.insert(
            keys::meta(keys::PAGE_COUNTER),
            &self.page_counter.to_le_bytes(),
        );
        self.shared.tree.apply_batch(sled_batch)?;
        for tenant in &batch.invalidate {
            self.shared.webhooks.invalidate(tenant);
        }
        self.unsynced = true;
        Ok(())
    }

    fn sled_batch(&self, batch: &mut Batch) -> Result<sled::Batch> {
        let mut out = sled::Batch::default();
        for (key, page) in batch.queue_pages.drain() {
            match page {
                Some(entries) if !entries.is_empty() => {
                    out.insert(key, pages::encode_queue_page(&entries))
                }
                _ => out.remove(key),
            }
        }
        for (key, entries) in batch.event_pages.drain() {
            out.insert(key, pages::encode_events_page(&entries));
        }
        for (key, entries) in batch.delivery_pages.drain() {
            out.insert(key, pages::encode_deliveries_page(&entries));
        }
        for (key, entries) in batch.buckets.drain() {
            if entries.is_empty() {
                out.remove(key);
            } else {
                out.insert(key, pages::encode_bucket(&entries));
            }
        }
        for (tenant, usage) in batch.usage.drain() {
            out.insert(keys::usage(&tenant), usage.encode());
        }
        for (segment, info) in batch.segments.drain() {
            match info {
                Some(info) => out.insert(keys::segment(segment), info.encode()),
                None => out.remove(keys::segment(segment)),
            }
        }
        for (key, health) in batch.health.drain() {
            out.insert(key, stats::encode(&health));
        }
        for (key, value) in batch.raw.drain(..) {
            match value {
                Some(value) => out.insert(key, value),
                None => out.remove(key),
            }
        }
        std::mem::take(&mut batch.stats).write(self.tree(), &mut out)?;
        Ok(out)
    }

    fn notify(&self, batch: &mut Batch) {
        let Some(listener) = self.shared.listener.get() else {
            return;
        };
        for (tenant, webhook) in batch.changed.drain() {
            listener.webhook_changed(&tenant, &webhook);
        }
        for ((tenant, webhook), due) in batch.due.drain() {
            listener.due(&tenant, &webhook, due);
        }
    }

    // ---- commands ---------------------------------------------------------------------------

    fn append(&mut self, batch: &mut Batch, group: Vec<NewEvent>) -> Result<Vec<Appended>> {
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
            self.apply_event(batch, loc, &meta, payload.len() as u64)?;
            batch.appended.insert(loc, meta.created_at);
            let event = EventRecord {
                id: codec::event_id(loc, meta.created_at),
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
                    delivery_record(delivery, &meta, webhook, &Slot::pending(meta.created_at))
                })
                .collect();
            answers.push(Appended::Created { event, deliveries });
        }
        Ok(answers)
    }

    /// The event a key names within its window: one seen earlier in this group, or stored.
    fn idempotent_event(
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
            return Ok(Some(codec::event_id(entry.event, *created_at)));
        }
        // The original may have been purged since: then the key is free again.
        match self.shared.log.read(entry.event, false)? {
            Some(record) if record.header.kind == RecordKind::Event => {
                let meta = EventMeta::decode(&record.meta)?;
                Ok((meta.tenant == tenant).then(|| codec::event_id(entry.event, meta.created_at)))
            }
            _ => Ok(None),
        }
    }

    fn record(&mut self, batch: &mut Batch, outcome: AttemptOutcome) -> Result<()> {
        let Some(delivery) = codec::parse_delivery_id(&outcome.attempt.delivery_id) else {
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
            attempts: slot.attempts.max(attempt.attempt.min(u32::from(u16::MAX)) as u16),
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
        };
        let stored = StoredAttempt {
            attempt: attempt.clone(),
            filtered_by: update.filtered_by.clone(),
        };
        let json = serde_json::to_vec(&stored).expect("attempts serialise to JSON");
        let record = encode_record(RecordKind::Attempt, &[], &transition.encode(), &json);
        let loc = self.log.append(&record)?;
        self.apply_transition(batch, loc, &transition, Some(attempt))
    }

    fn requeue(
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
        Ok(Some(delivery_record(delivery, &meta, &webhook, &new)))
    }

    fn settle(
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
    fn transition(
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
        };
        let record = encode_record(RecordKind::Transition, &[], &transition.encode(), &[]);
        let loc = self.log.append(&record)?;
        self.apply_transition(batch, loc, &transition, None)
    }

    fn recover(
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

    fn put_webhook(
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

    fn delete_webhook(
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

    fn purge(
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
    fn purge_candidate(
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
    fn delete_segment(
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
        shared.log.scan_from(from, |loc, record| {
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
        info!(segment, events = outcome.events, "log segment deleted by retention");
        Ok(outcome)
    }

    // ---- effects of records (live and at replay) --------------------------------------------

    /// Applies one record read back from the log (replay).
    pub fn apply_record(&mut self, batch: &mut Batch, loc: Locator, record: &RawRecord) -> Result<()> {
        batch.records += 1;
        match record.header.kind {
            RecordKind::Event => {
                let meta = EventMeta::decode(&record.meta)?;
                self.apply_event(batch, loc, &meta, u64::from(record.header.payload_len))
            }
            RecordKind::Attempt => {
                let meta = TransitionMeta::decode(&record.meta)?;
                let stored: super::StoredAttempt = serde_json::from_slice(&record.payload)
                    .map_err(|err| StoreError::Corrupt(err.to_string()))?;
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

    fn apply_event(
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
    fn apply_transition(
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
            meta.created_at,
            meta.old_status,
            new.status,
            meta.latency_ms,
        );
        if was_queued != is_queued {
            let mut usage = self.usage(batch, tenant)?;
            let mut info = self
                .segment_info(batch, meta.delivery.event.segment)?
                .unwrap_or_default();
            if is_queued {
                usage.pending += 1;
                info.queued += 1;
            } else {
                usage.pending = usage.pending.saturating_sub(1);
                info.queued = info.queued.saturating_sub(1);
            }
            batch.usage.insert(tenant.to_string(), usage);
            batch.segments.insert(meta.delivery.event.segment, Some(info));
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

    fn apply_webhook_put(&mut self, batch: &mut Batch, meta: &WebhookMeta, json: Vec<u8>) {
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
    fn apply_webhook_delete(&mut self, batch: &mut Batch, meta: &WebhookMeta) -> Result<()> {
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
                batch.stats.transition(
                    tenant,
                    webhook,
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

    fn apply_purge(&mut self, batch: &mut Batch, meta: &PurgeMeta) -> Result<()> {
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

    // ---- pages ------------------------------------------------------------------------------

    fn next_page_number(&mut self) -> u32 {
        self.page_counter = self.page_counter.wrapping_add(1);
        self.page_counter
    }

    fn queue_index(&mut self, tenant: &str, webhook: &WebhookId) -> Result<&mut QueueIndex> {
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

    fn queue_page<'b>(&self, batch: &'b mut Batch, key: &[u8]) -> Result<&'b mut Vec<QueueEntry>> {
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
    fn queue_insert(
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

    fn put_queue_page(
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

    fn new_queue_page(
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
    fn queue_remove(
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

    fn append_event_entry(&mut self, batch: &mut Batch, tenant: &str, entry: EventEntry) -> Result<()> {
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

    fn append_delivery_entry(
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

    fn bucket<'b>(&self, batch: &'b mut Batch, key: &[u8]) -> Result<&'b mut Vec<IdempotencyEntry>> {
        if !batch.buckets.contains_key(key) {
            let entries = match self.shared.tree.get(key)? {
                Some(bytes) => pages::decode_bucket(&bytes)?,
                None => Vec::new(),
            };
            batch.buckets.insert(key.to_vec(), entries);
        }
        Ok(batch.buckets.get_mut(key).expect("loaded above"))
    }

    fn usage(&self, batch: &Batch, tenant: &str) -> Result<Usage> {
        if let Some(usage) = batch.usage.get(tenant) {
            return Ok(*usage);
        }
        match self.shared.tree.get(keys::usage(tenant))? {
            Some(bytes) => Usage::decode(&bytes),
            None => Ok(Usage::default()),
        }
    }

    fn segment_info(&self, batch: &Batch, segment: u32) -> Result<Option<SegmentInfo>> {
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
    fn delivery_state(
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
            None => match self.shared.log.read_slot(delivery) {
                Ok(Some(slot)) => slot,
                Ok(None) => return Ok(None),
                Err(StoreError::Corrupt(_)) => {
                    // A slot torn by a power loss: the delivery is attempted again.
                    warn!(tenant, "a delivery slot failed its checksum; the delivery is due again");
                    Slot::pending(meta.created_at)
                }
                Err(err) => return Err(err),
            },
        };
        if slot.purged {
            return Ok(None);
        }
        Ok(Some((meta, slot)))
    }

    // ---- replay -----------------------------------------------------------------------------

    /// Replays every record after `checkpoint` into sled (what sled had not written when the
    /// process stopped), in chunks, each committed with the checkpoint after its last record;
    /// returns how many records were replayed.
    pub fn replay_from(&mut self, checkpoint: Locator) -> Result<usize> {
        let log = self.shared.log.clone();
        let mut batch = Batch::default();
        let mut total = 0;
        let mut next = checkpoint;
        let mut failure = None;
        let scanned = log.scan_from(checkpoint, |loc, record| {
            if let Err(err) = self.apply_record(&mut batch, loc, &record) {
                failure = Some(err);
                return Err(StoreError::Interrupted("replay stopped".into()));
            }
            total += 1;
            next = Locator {
                segment: loc.segment,
                offset: loc.offset + record.header.total_len() as u32,
            };
            if batch.records >= REPLAY_CHUNK {
                let mut full = std::mem::take(&mut batch);
                self.write_group_to(&mut full, next)?;
            }
            Ok(())
        });
        if let Some(err) = failure {
            return Err(err);
        }
        scanned?;
        self.write_group_to(&mut batch, next)?;
        Ok(total)
    }
}

/// Answers a command refused because the store failed earlier.
fn refuse(command: Command, failure: &str) {
    let err = || StoreError::Failed(failure.to_string());
    match command {
        Command::Append { reply, .. } => drop(reply.send(Err(err()))),
        Command::Record { reply, .. } => drop(reply.send(Err(err()))),
        Command::Requeue { reply, .. } => drop(reply.send(Err(err()))),
        Command::Settle { reply, .. } => drop(reply.send(Err(err()))),
        Command::Recover { reply, .. } => drop(reply.send(Err(err()))),
        Command::PutWebhook { reply, .. } => drop(reply.send(Err(err()))),
        Command::DeleteWebhook { reply, .. } => drop(reply.send(Err(err()))),
        Command::Purge { reply, .. } => drop(reply.send(Err(err()))),
        Command::DeleteSegment { reply, .. } => drop(reply.send(Err(err()))),
        Command::RemoveKeys { reply, .. } | Command::PutRaw { reply, .. } => {
            drop(reply.send(Err(err())))
        }
        Command::Flush { reply } | Command::Close { reply } => drop(reply.send(Err(err()))),
    }
}

/// The bucket key and the 16-byte hash of a tenant's idempotency key.
fn idempotency_slot(tenant: &str, key: &str) -> (Vec<u8>, [u8; 16]) {
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

/// A delivery as the API sees it, from its event's meta and its slot.
pub(super) fn delivery_record(
    delivery: DeliveryRef,
    meta: &EventMeta,
    webhook: &WebhookId,
    slot: &Slot,
) -> DeliveryRecord {
    DeliveryRecord {
        id: codec::delivery_id(delivery, meta.created_at),
        event_id: codec::event_id(delivery.event, meta.created_at),
        webhook_id: webhook.clone(),
        event_type: meta.event_type.clone(),
        channel: meta.channel.clone(),
        status: slot.status,
        attempts: u32::from(slot.attempts),
        created_at: meta.created_at,
        updated_at: slot.updated_at,
        next_attempt_at: slot.next_attempt_at.filter(|_| slot.status.is_queued()),
        last_attempt_at: slot.last_attempt_at,
        last_status_code: slot.last_status_code,
        last_error: match &slot.last_error {
            SlotError::None => None,
            SlotError::Known(code) => Some((*code).to_string()),
            SlotError::Other => None,
        },
        filtered_by: None,
    }
}
