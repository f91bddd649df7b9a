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

mod commands;
mod effects;
mod replay;
mod schedule;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::codec::{
    self, DeliveryRef, EventMeta, IdKey, Locator, MAX_FAN_OUT, PurgeMeta, PurgedEvent, RecordKind,
    Slot, SlotError, TransitionMeta, WebhookMeta, encode_record,
};
use super::keys;
use super::log::{LogWriter, RawRecord};
use super::pages::{
    self, DeliveryEntry, EventEntry, IdempotencyEntry, QUEUE_PAGE_ENTRIES, QueueEntry, SegmentInfo,
    Usage,
};
use super::stats::{self, StatsDeltas};
use super::{Shared, attempt_codec};
use crate::ids::{WebhookId, now_ms};
use crate::store::health::WebhookHealth;
use crate::store::{
    Appended, AttemptOutcome, AttemptRecord, DeliveryRecord, DeliveryStatus, EventRecord, NewEvent,
    Result, StoreError,
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

/// Sends a reply once its group's commit is known (with the commit's failure, if any).
type SendReply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// What a reply waits for before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerAfter {
    /// The sled batch: outcomes (a crash that loses one only makes its delivery due again),
    /// settles, and removals of keys that hold nothing.
    Batch,
    /// The log's sync: everything the command wrote is a log record, which replay redoes into
    /// sled if sled loses it (events).
    LogSync,
    /// The log's sync, then sled's flush (API changes, raw sled writes, explicit flushes).
    FullSync,
}

/// A reply waiting for the group's commit.
struct Pending {
    after: AnswerAfter,
    send: SendReply,
}

fn pending<T: Send + 'static>(after: AnswerAfter, reply: Reply<T>, value: Result<T>) -> Pending {
    Pending {
        after,
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

/// The newest page of a listing: its key and how many entries it holds.
type ListingTail = (Vec<u8>, usize);

/// The writer's own state, kept between groups: the log's write side and what it knows of
/// the pages it writes (so appending does not search sled).
pub(super) struct WriterState {
    shared: Arc<Shared>,
    log: LogWriter,
    queues: HashMap<(String, WebhookId), QueueIndex>,
    /// The newest page of each tenant's event listing.
    event_tails: HashMap<String, Option<ListingTail>>,
    /// The newest page of each webhook's delivery listing.
    delivery_tails: HashMap<(String, WebhookId), Option<ListingTail>>,
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
        let started = Instant::now();
        self.log.sync()?;
        self.flush_sled(started)
    }

    /// sled's half of [`Self::sync_all`], once the log is synced (since `started`).
    fn flush_sled(&mut self, started: Instant) -> Result<()> {
        self.shared.db.flush()?;
        if let Some(observer) = self.shared.sync_observer.get() {
            observer.synced(started.elapsed());
        }
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
                    replies.push(pending(AnswerAfter::LogSync, reply, value));
                }
                Command::Record { outcomes, reply } => {
                    let value = Ok(outcomes
                        .into_iter()
                        .map(|o| self.record(&mut batch, o))
                        .collect());
                    replies.push(pending(AnswerAfter::Batch, reply, value));
                }
                Command::Requeue {
                    tenant,
                    delivery,
                    due,
                    reply,
                } => {
                    let value = self.requeue(&mut batch, &tenant, delivery, due);
                    replies.push(pending(AnswerAfter::FullSync, reply, value));
                }
                Command::Settle {
                    tenant,
                    delivery,
                    status,
                    error,
                    reply,
                } => {
                    let value = self.settle(&mut batch, &tenant, delivery, status, &error);
                    replies.push(pending(AnswerAfter::Batch, reply, value));
                }
                Command::Recover {
                    tenant,
                    webhook,
                    since_ms,
                    reply,
                } => {
                    let value = self.recover(&mut batch, &tenant, &webhook, since_ms);
                    replies.push(pending(AnswerAfter::FullSync, reply, value));
                }
                Command::PutWebhook {
                    tenant,
                    webhook,
                    json,
                    expect,
                    reply,
                } => {
                    let value = self.put_webhook(&mut batch, &tenant, &webhook, json, expect);
                    replies.push(pending(AnswerAfter::FullSync, reply, value));
                }
                Command::DeleteWebhook {
                    tenant,
                    webhook,
                    reply,
                } => {
                    let value = self.delete_webhook(&mut batch, &tenant, &webhook);
                    replies.push(pending(AnswerAfter::FullSync, reply, value));
                }
                Command::Purge {
                    tenant,
                    events,
                    before_ms,
                    reply,
                } => {
                    let value = self.purge(&mut batch, &tenant, &events, before_ms);
                    replies.push(pending(AnswerAfter::FullSync, reply, value));
                }
                Command::DeleteSegment {
                    segment,
                    before_ms,
                    reply,
                } => {
                    let value = self.delete_segment(&mut batch, segment, before_ms);
                    replies.push(pending(AnswerAfter::FullSync, reply, value));
                }
                Command::RemoveKeys { keys, reply } => {
                    for key in keys {
                        batch.raw.push((key, None));
                    }
                    replies.push(pending(AnswerAfter::Batch, reply, Ok(())));
                }
                Command::PutRaw { entries, reply } => {
                    for (key, value) in entries {
                        batch.raw.push((key, Some(value)));
                    }
                    replies.push(pending(AnswerAfter::FullSync, reply, Ok(())));
                }
                Command::Flush { reply } => {
                    batch.durable = true;
                    replies.push(pending(AnswerAfter::FullSync, reply, Ok(())));
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
        let mut after_log = Vec::new();
        let mut after_sync = Vec::new();
        for reply in replies.drain(..) {
            match reply.after {
                AnswerAfter::Batch => (reply.send)(failure),
                AnswerAfter::LogSync => after_log.push(reply),
                AnswerAfter::FullSync => after_sync.push(reply),
            }
        }
        // sled is flushed with the log even though the log alone would do for durability:
        // tried, syncing only the log made sled's periodic flush the writer's long stall, and
        // deliveries trailed ingest (s1 e2e p50 5-6 ms -> 12-75 ms). Events need only the log,
        // so they are answered between the two (sled's flush is ~0.1 ms of a ~0.5 ms sync).
        let synced = match &result {
            Ok(()) if batch.durable => {
                let started = Instant::now();
                let log_synced = self.log.sync();
                for reply in after_log.drain(..) {
                    (reply.send)(log_synced.as_ref().err());
                }
                log_synced.and_then(|()| self.flush_sled(started))
            }
            Ok(()) => Ok(()),
            Err(err) => Err(StoreError::Io(err.to_string())),
        };
        let failure = synced.as_ref().err();
        for reply in after_log.into_iter().chain(after_sync) {
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
        sled_batch.insert(
            keys::meta(keys::CHECKPOINT),
            &checkpoint.pack().to_be_bytes(),
        );
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

/// A delivery as the API sees it, from its event's meta and its slot.
pub(super) fn delivery_record(
    ids: &IdKey,
    delivery: DeliveryRef,
    meta: &EventMeta,
    webhook: &WebhookId,
    slot: &Slot,
) -> DeliveryRecord {
    DeliveryRecord {
        id: ids.delivery_id(delivery, meta.created_at),
        event_id: ids.event_id(delivery.event, meta.created_at),
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
