//! The embedded backend on sled: the only module that names sled.
//!
//! Layout: one sled tree; keys are `kind byte, tenant, NUL, ids…` (see `keys.rs`); values are
//! a version byte followed by JSON (see [`encode`]). Multi-record writes are one atomic sled
//! batch or transaction, so a crash never leaves an event without its deliveries or a delivery
//! without its schedule entry.
//!
//! Webhook secrets are sealed (`secrets.rs`) on every write of a webhook and opened on reads
//! for signing; listings leave them sealed.

mod keys;
mod retention;
mod stats;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio_util::sync::CancellationToken;

use super::cache::WebhookCache;
use super::health::WebhookHealth;
use super::stats::{DayStats, StatsScope};
use super::{
    Appended, AttemptOutcome, AttemptRecord, Claim, DeliveryFilter, DeliveryRecord, DeliveryStatus,
    EventFilter, EventRecord, FLUSH_TIMEOUT, NewEvent, Page, PurgeOutcome, QueueHead, Result,
    ScheduleCounts, SpaceProblem, Store, StoreError, TenantUsage, WebhookChange, WebhookRecord,
    WorkListener,
};
use crate::ids::{DeliveryId, EventId, WebhookId};
use crate::secrets::Keyring;

/// First byte of every stored value; bump when the encoding changes.
const RECORD_VERSION: u8 = 1;
/// Most rows a listing scans for one page before it returns a cursor to continue from.
const MAX_SCAN_ROWS: usize = 50_000;

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        match err {
            sled::Error::Io(err) => StoreError::Io(err.to_string()),
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(RECORD_VERSION);
    serde_json::to_writer(&mut out, value).expect("records serialise to JSON");
    out
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|err| StoreError::Corrupt(err.to_string()))
        }
        Some((version, _)) => Err(StoreError::Corrupt(format!(
            "record version {version} is not known to this hookd"
        ))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

fn tx_error(err: TransactionError<StoreError>) -> StoreError {
    match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => err.into(),
    }
}

/// An accepted event with its fan-out and ids, as written by [`SledStore::write_events`].
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub tenant: String,
    pub event: EventRecord,
    pub deliveries: Vec<DeliveryRecord>,
}

/// The idempotency entry of an event: which event a producer's key maps to, and since when.
#[derive(Debug, Serialize, serde::Deserialize)]
struct IdempotencyEntry {
    event_id: EventId,
    created_at: u64,
}

/// Read-modify-write of one delivery inside transaction `tx`. Its schedule entry follows
/// `next_attempt_at` (removed, moved or added), and `extra` (a key and value) is written in
/// the same transaction, as are the statistics counters of the state change and of the
/// attempt's latency (`attempt_latency_ms`, when the change records an attempt). `None` if the
/// delivery does not exist; a record that does not decode aborts with `Corrupt`.
/// Applies an attempt to its webhook's health record inside transaction `tx`.
fn record_health(
    tx: &sled::transaction::TransactionalTree,
    tenant: &str,
    attempt: &AttemptRecord,
) -> std::result::Result<(), ConflictableTransactionError<StoreError>> {
    let key = keys::health(tenant, &attempt.webhook_id);
    let mut health: WebhookHealth = match tx.get(&key)? {
        // A record that does not decode is started afresh rather than failing the attempt.
        Some(bytes) => decode(&bytes).unwrap_or_default(),
        None => WebhookHealth::default(),
    };
    if health.record(attempt) {
        tx.insert(key, encode(&health))?;
    }
    Ok(())
}

fn change_delivery_in(
    tx: &sled::transaction::TransactionalTree,
    tenant: &str,
    id: &DeliveryId,
    change: impl Fn(&mut DeliveryRecord),
    extra: Option<(&[u8], &[u8])>,
    attempt_latency_ms: Option<u64>,
    now: u64,
) -> std::result::Result<Option<DeliveryRecord>, ConflictableTransactionError<StoreError>> {
    let delivery_key = keys::delivery(tenant, id);
    let Some(bytes) = tx.get(&delivery_key)? else {
        return Ok(None);
    };
    let mut record: DeliveryRecord = decode(&bytes).map_err(ConflictableTransactionError::Abort)?;
    let old_due = record.next_attempt_at;
    let old_status = record.status;
    change(&mut record);
    stats::record_transition(tx, tenant, old_status, &record, attempt_latency_ms)?;
    if old_due != record.next_attempt_at {
        if let Some(due) = old_due {
            tx.remove(keys::queue_entry(
                tenant,
                &record.webhook_id,
                due,
                &record.id,
            ))?;
        }
        if let Some(due) = record.next_attempt_at {
            tx.insert(
                keys::queue_entry(tenant, &record.webhook_id, due, &record.id),
                &[],
            )?;
        }
    }
    record.updated_at = now;
    tx.insert(delivery_key.as_slice(), encode(&record))?;
    if let Some((key, value)) = extra {
        tx.insert(key, value)?;
    }
    Ok(Some(record))
}

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    webhooks: Arc<WebhookCache>,
    keyring: Arc<Keyring>,
    space: Arc<SpaceWatermark>,
    listener: Arc<OnceLock<Arc<dyn WorkListener>>>,
}

/// The free-space reserve of the data dir. sled 0.34 keeps a failed write's I/O error and
/// fails every later write with it until the process reopens the store, so a disk that
/// fills up under sled needs a restart; refusing events while the reserve is short keeps
/// sled from ever meeting a full disk, and taking them again needs nothing but space.
///
/// When sled does meet an I/O error on a write or flush anyway, the first one is kept here:
/// later flushes would wait forever (seen on a full tmpfs), so every later ingest is refused
/// at once and `/readyz` reports it until a restart.
#[derive(Debug)]
struct SpaceWatermark {
    dir: PathBuf,
    min_free_bytes: AtomicU64,
    failure: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. sled takes an exclusive lock on the directory,
    /// so one data dir serves one process.
    pub fn open(dir: &Path, keyring: Arc<Keyring>) -> Result<SledStore> {
        SledStore::open_with_cache(dir, keyring, 64 * 1024 * 1024)
    }

    /// [`SledStore::open`] with sled's page cache capped at `cache_bytes`.
    #[allow(clippy::disallowed_methods)] // the one allowed sled::open
    pub fn open_with_cache(
        dir: &Path,
        keyring: Arc<Keyring>,
        cache_bytes: u64,
    ) -> Result<SledStore> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(200))
            .open()?;
        let tree = db.open_tree("hookd/v1")?;
        let space = Arc::new(SpaceWatermark {
            dir: dir.to_path_buf(),
            min_free_bytes: AtomicU64::new(0),
            failure: std::sync::OnceLock::new(),
        });
        Ok(SledStore {
            db,
            tree,
            webhooks: Arc::default(),
            keyring,
            space,
            listener: Arc::default(),
        })
    }

    /// Sets the free space [`SledStore::write_events`] keeps in reserve (`limits.min_free_disk_bytes`).
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.space.min_free_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Whether the data dir can take new events: writable, with the reserve free. One
    /// `statvfs` call (a few microseconds; measured in `tests/it/disk.rs`).
    pub fn check_space(&self) -> Result<()> {
        if let Some(failure) = self.space.failure.get() {
            return Err(StoreError::Failed(failure.clone()));
        }
        let min = self.space.min_free_bytes.load(Ordering::Relaxed);
        let stat = match rustix::fs::statvfs(&self.space.dir) {
            Ok(stat) => stat,
            // Cannot tell: let the write itself find out.
            Err(_) => return Ok(()),
        };
        if stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Err(StoreError::Space(SpaceProblem::ReadOnly));
        }
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < min {
            return Err(StoreError::Space(SpaceProblem::Full { free, min }));
        }
        Ok(())
    }

    /// Makes every write so far durable. Concurrent callers should share one flush (ingest's
    /// group commit does); a flush costs an fsync.
    ///
    /// The flush runs synchronously on the blocking pool: sled 0.34's `flush_async` can
    /// deadlock against concurrent transactions (spacejam/sled#1308), which the e2e bench hit
    /// under load — both runtime workers then sat in `transaction` forever.
    pub async fn flush(&self) -> Result<()> {
        let tree = self.tree.clone();
        let flush = tokio::task::spawn_blocking(move || tree.flush());
        match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(err))) => Err(self.failed(err.into())),
            Ok(Err(join)) => Err(StoreError::Interrupted(format!(
                "the flush task failed: {join}"
            ))),
            // Not recorded as a failure: a slow disk may still finish it. The caller answers
            // 503 (never a 202 it cannot back), and a retry with the same idempotency key
            // finds the event if it did land.
            Err(_) => Err(StoreError::Io(format!(
                "a flush took longer than {FLUSH_TIMEOUT:?}"
            ))),
        }
    }

    /// Records the first I/O failure of a write (see [`SpaceWatermark`]).
    ///
    /// It also leaks one handle of the database on purpose: dropping sled's last handle runs
    /// a blocking flush, which after such a failure never returns (seen on a full tmpfs), so
    /// a failed store would hang shutdown forever. Leaked, the process stops in bounded time
    /// and the next start recovers from the log like after a crash (acknowledged events were
    /// flushed before their 202).
    fn failed(&self, err: StoreError) -> StoreError {
        if err.is_unavailable() && self.space.failure.set(err.to_string()).is_ok() {
            std::mem::forget(self.db.clone());
        }
        err
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn notify_due(&self, tenant: &str, webhook: &WebhookId, due_ms: u64) {
        if let Some(listener) = self.listener.get() {
            listener.due(tenant, webhook, due_ms);
        }
    }

    fn notify_changed(&self, tenant: &str, webhook: &WebhookId) {
        if let Some(listener) = self.listener.get() {
            listener.webhook_changed(tenant, webhook);
        }
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.tree.get(key)?.map(|v| decode(&v)).transpose()
    }

    /// Newest-first page of the records under `prefix`, resuming before `cursor` (an id).
    fn page<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        cursor: Option<&str>,
        limit: usize,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Page<T>> {
        let end = match cursor {
            Some(id) => {
                let mut key = prefix.to_vec();
                key.extend_from_slice(id.as_bytes());
                key
            }
            None => keys::prefix_end(prefix),
        };
        let mut items = Vec::new();
        let mut scanned = 0;
        for entry in self.tree.range(prefix.to_vec()..end).rev() {
            let (key, value) = entry?;
            scanned += 1;
            let last_id = keys::last_segment(&key).map(str::to_string);
            let record: T = decode(&value)?;
            if keep(&record) {
                items.push(record);
                if items.len() == limit {
                    return Ok(Page {
                        items,
                        next: last_id,
                    });
                }
            }
            if scanned >= MAX_SCAN_ROWS {
                return Ok(Page {
                    items,
                    next: last_id,
                });
            }
        }
        Ok(Page { items, next: None })
    }

    // ---- webhooks ------------------------------------------------------------------------

    /// The stored form of a webhook: every secret that has its plaintext is sealed afresh
    /// (bound to this tenant and webhook); secrets read sealed are written as they were.
    fn encode_webhook(&self, tenant: &str, webhook: &WebhookRecord) -> Vec<u8> {
        let mut stored = webhook.clone();
        for secret in &mut stored.secrets {
            if !secret.secret.is_empty() {
                secret.sealed = Some(self.keyring.seal(
                    tenant,
                    webhook.id.as_str(),
                    &secret.secret,
                ));
            }
        }
        encode(&stored)
    }

    /// Opens every sealed secret of `webhook` (a record written before sealing existed has
    /// its plaintext already).
    fn open_secrets(&self, tenant: &str, webhook: &mut WebhookRecord) -> Result<()> {
        for secret in &mut webhook.secrets {
            if let Some(sealed) = &secret.sealed {
                secret.secret = self
                    .keyring
                    .open(tenant, webhook.id.as_str(), sealed)
                    .map_err(|source| StoreError::Secret {
                        tenant: tenant.to_string(),
                        webhook_id: webhook.id.to_string(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    pub async fn insert_webhook(&self, tenant: &str, webhook: &WebhookRecord) -> Result<()> {
        let written = self.tree.insert(
            keys::webhook(tenant, &webhook.id),
            self.encode_webhook(tenant, webhook),
        );
        self.webhooks.invalidate(tenant);
        written?;
        self.flush().await?;
        self.notify_changed(tenant, &webhook.id);
        Ok(())
    }

    /// A webhook with its secrets opened (plaintext in `secret`): what an attempt signs with.
    /// Read from the cache of the tenant's webhooks.
    pub fn webhook(&self, tenant: &str, id: &WebhookId) -> Result<Option<WebhookRecord>> {
        Ok(self
            .webhooks_shared(tenant)?
            .iter()
            .find(|w| &w.id == id)
            .cloned())
    }

    /// Seals every plaintext secret (records from before sealing) and re-seals every secret
    /// sealed under a previous key with the current one, then flushes; every secret is opened
    /// on the way, so a wrong key fails here, at startup, naming the webhook and the key id.
    /// Returns how many webhooks were rewritten.
    pub async fn reseal_webhooks(&self) -> Result<usize> {
        let mut rewritten = 0;
        for entry in self.tree.scan_prefix([keys::WEBHOOK]) {
            let (key, old) = entry?;
            let Some((tenant, _)) = keys::split_tenant_key(&key) else {
                continue;
            };
            let mut webhook: WebhookRecord = decode(&old)?;
            let stale = webhook.secrets.iter().any(|s| {
                s.sealed
                    .as_deref()
                    .is_none_or(|sealed| !self.keyring.is_current(sealed))
            });
            self.open_secrets(tenant, &mut webhook)?;
            if stale {
                // A concurrent change cannot happen before the API starts; a lost race would
                // only leave the record for the next start.
                let _ = self.tree.compare_and_swap(
                    &key,
                    Some(&old),
                    Some(self.encode_webhook(tenant, &webhook)),
                )?;
                self.webhooks.invalidate(tenant);
                rewritten += 1;
            }
        }
        if rewritten > 0 {
            self.flush().await?;
        }
        Ok(rewritten)
    }

    pub fn list_webhooks(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<WebhookRecord>> {
        self.page(
            &keys::tenant_prefix(keys::WEBHOOK, tenant),
            cursor,
            limit,
            |_| true,
        )
    }

    /// Whether the store answers a read (for `/readyz`): one read from the tree itself, never
    /// from the webhook cache.
    pub fn check_readable(&self) -> Result<()> {
        self.tree.get([keys::WEBHOOK])?;
        Ok(())
    }

    /// Every webhook of a tenant, secrets opened (from the cache; views never show them).
    pub fn webhooks_of(&self, tenant: &str) -> Result<Vec<WebhookRecord>> {
        Ok(self.webhooks_shared(tenant)?.as_ref().clone())
    }

    /// Every webhook of a tenant, shared from the cache (fan-out reads this per event).
    pub fn webhooks_shared(&self, tenant: &str) -> Result<Arc<Vec<WebhookRecord>>> {
        let (cached, generation) = self.webhooks.get(tenant);
        if let Some(webhooks) = cached {
            return Ok(webhooks);
        }
        let webhooks: Vec<WebhookRecord> = self
            .tree
            .scan_prefix(keys::tenant_prefix(keys::WEBHOOK, tenant))
            .map(|entry| {
                let mut webhook = decode(&entry?.1)?;
                self.open_secrets(tenant, &mut webhook)?;
                Ok(webhook)
            })
            .collect::<Result<_>>()?;
        let webhooks = Arc::new(webhooks);
        self.webhooks.put(tenant, generation, webhooks.clone());
        Ok(webhooks)
    }

    /// (tenant, webhook id) of every webhook of every tenant, for the dispatcher's start.
    pub fn all_webhook_ids(&self) -> Result<Vec<(String, WebhookId)>> {
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix([keys::WEBHOOK]) {
            let (key, _) = entry?;
            if let Some((tenant, id)) = keys::split_tenant_key(&key)
                && let Some(id) = WebhookId::parse(id)
            {
                out.push((tenant.to_string(), id));
            }
        }
        Ok(out)
    }

    /// Read-modify-write of a webhook, retried on concurrent change. `Ok(None)`: no such
    /// webhook.
    pub async fn update_webhook(
        &self,
        tenant: &str,
        id: &WebhookId,
        change: WebhookChange<'_>,
    ) -> Result<Option<WebhookRecord>> {
        let key = keys::webhook(tenant, id);
        loop {
            let Some(old) = self.tree.get(&key)? else {
                return Ok(None);
            };
            let mut record: WebhookRecord = decode(&old)?;
            self.open_secrets(tenant, &mut record)?;
            change(&mut record);
            let swapped = self.tree.compare_and_swap(
                &key,
                Some(&old),
                Some(self.encode_webhook(tenant, &record)),
            );
            self.webhooks.invalidate(tenant);
            if swapped?.is_ok() {
                self.flush().await?;
                self.notify_changed(tenant, id);
                return Ok(Some(record));
            }
        }
    }

    /// Deletes a webhook; its queued deliveries become `failed` with `webhook_deleted`.
    pub async fn delete_webhook(&self, tenant: &str, id: &WebhookId) -> Result<bool> {
        let removed = self.tree.remove(keys::webhook(tenant, id));
        self.webhooks.invalidate(tenant);
        self.tree.remove(keys::health(tenant, id))?;
        if removed?.is_none() {
            return Ok(false);
        }
        let prefix = keys::queue_of(tenant, id);
        for entry in self.tree.scan_prefix(&prefix) {
            let (key, _) = entry?;
            if let Some((_, delivery_id)) = keys::parse_queue_suffix(&key[prefix.len()..]) {
                self.settle(
                    tenant,
                    &delivery_id,
                    DeliveryStatus::Failed,
                    "webhook_deleted",
                )?;
            }
            // Also drops an entry whose delivery record is gone.
            self.tree.remove(key)?;
        }
        self.flush().await?;
        self.notify_changed(tenant, id);
        Ok(true)
    }

    // ---- events --------------------------------------------------------------------------

    /// The event a producer's idempotency key already names, if it is younger than `window_ms`.
    pub fn idempotent_event(
        &self,
        tenant: &str,
        idempotency_key: &str,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Option<EventId>> {
        let entry: Option<IdempotencyEntry> =
            self.get(&keys::idempotency(tenant, idempotency_key))?;
        Ok(entry
            .filter(|e| e.created_at.saturating_add(window_ms) > now_ms)
            .map(|e| e.event_id))
    }

    /// Writes accepted events, their deliveries, index and schedule entries and the statistics
    /// counters they add to, atomically (one transaction). Not durable until [`SledStore::flush`].
    pub(crate) fn write_events(&self, events: &[StoredEvent]) -> Result<()> {
        self.check_space()?;
        self.write_events_unchecked(events)
            .map_err(|err| self.failed(err))
    }

    fn write_events_unchecked(&self, events: &[StoredEvent]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for new in events {
            let tenant = new.tenant.as_str();
            let event = &new.event;
            batch.insert(keys::event(tenant, &event.id), encode(event));
            if let Some(key) = &event.idempotency_key {
                let entry = IdempotencyEntry {
                    event_id: event.id.clone(),
                    created_at: event.created_at,
                };
                batch.insert(keys::idempotency(tenant, key), encode(&entry));
            }
            for delivery in &new.deliveries {
                batch.insert(keys::delivery(tenant, &delivery.id), encode(delivery));
                let mut index = keys::event_deliveries(tenant, &event.id);
                index.extend_from_slice(delivery.id.as_str().as_bytes());
                batch.insert(index, &[]);
                let mut index = keys::webhook_deliveries(tenant, &delivery.webhook_id);
                index.extend_from_slice(delivery.id.as_str().as_bytes());
                batch.insert(index, &[]);
                if let Some(due) = delivery.next_attempt_at {
                    batch.insert(
                        keys::queue_entry(tenant, &delivery.webhook_id, due, &delivery.id),
                        &[],
                    );
                }
            }
        }
        // One transaction with the statistics counters these records add to (`stats.rs`).
        self.apply_ingest(&batch, events)
    }

    /// What a tenant holds: key scans of its events and queue (for admin views and quotas).
    pub fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage> {
        let mut usage = TenantUsage {
            webhooks: self.webhooks_shared(tenant)?.len() as u64,
            ..TenantUsage::default()
        };
        for entry in self
            .tree
            .scan_prefix(keys::tenant_prefix(keys::EVENT, tenant))
        {
            let (_, value) = entry?;
            let event: EventRecord = decode(&value)?;
            usage.events += 1;
            usage.stored_bytes += event.payload.get().len() as u64;
        }
        for key in self
            .tree
            .scan_prefix(keys::tenant_prefix(keys::QUEUE, tenant))
            .keys()
        {
            key?;
            usage.pending_deliveries += 1;
        }
        Ok(usage)
    }

    pub fn event(&self, tenant: &str, id: &EventId) -> Result<Option<EventRecord>> {
        self.get(&keys::event(tenant, id))
    }

    pub fn list_events(
        &self,
        tenant: &str,
        filter: &EventFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<EventRecord>> {
        self.page(
            &keys::tenant_prefix(keys::EVENT, tenant),
            cursor,
            limit,
            |e: &EventRecord| {
                filter
                    .event_type
                    .as_ref()
                    .is_none_or(|t| *t == e.event_type)
                    && filter
                        .channel
                        .as_ref()
                        .is_none_or(|c| e.channel.as_ref() == Some(c))
                    && filter.after_ms.is_none_or(|t| e.created_at >= t)
                    && filter.before_ms.is_none_or(|t| e.created_at < t)
            },
        )
    }

    /// The deliveries of one event, oldest first.
    pub fn deliveries_of_event(
        &self,
        tenant: &str,
        event: &EventId,
    ) -> Result<Vec<DeliveryRecord>> {
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix(keys::event_deliveries(tenant, event)) {
            let (key, _) = entry?;
            if let Some(id) = keys::last_segment(&key).and_then(DeliveryId::parse)
                && let Some(delivery) = self.delivery(tenant, &id)?
            {
                out.push(delivery);
            }
        }
        Ok(out)
    }

    // ---- deliveries ----------------------------------------------------------------------

    pub fn delivery(&self, tenant: &str, id: &DeliveryId) -> Result<Option<DeliveryRecord>> {
        self.get(&keys::delivery(tenant, id))
    }

    pub fn list_deliveries(
        &self,
        tenant: &str,
        filter: &DeliveryFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliveryRecord>> {
        let keep = |d: &DeliveryRecord| {
            filter
                .webhook_id
                .as_ref()
                .is_none_or(|w| *w == d.webhook_id)
                && filter.status.is_none_or(|s| s == d.status)
                && filter
                    .event_type
                    .as_ref()
                    .is_none_or(|t| *t == d.event_type)
                && filter
                    .channel
                    .as_ref()
                    .is_none_or(|c| d.channel.as_ref() == Some(c))
                && filter.after_ms.is_none_or(|t| d.created_at >= t)
                && filter.before_ms.is_none_or(|t| d.created_at < t)
        };
        match &filter.webhook_id {
            // The per-webhook index avoids scanning every other webhook's deliveries.
            Some(webhook) => {
                let prefix = keys::webhook_deliveries(tenant, webhook);
                self.page_via_index(tenant, &prefix, cursor, limit, keep)
            }
            None => self.page(
                &keys::tenant_prefix(keys::DELIVERY, tenant),
                cursor,
                limit,
                keep,
            ),
        }
    }

    fn page_via_index(
        &self,
        tenant: &str,
        prefix: &[u8],
        cursor: Option<&str>,
        limit: usize,
        keep: impl Fn(&DeliveryRecord) -> bool,
    ) -> Result<Page<DeliveryRecord>> {
        let end = match cursor {
            Some(id) => [prefix, id.as_bytes()].concat(),
            None => keys::prefix_end(prefix),
        };
        let mut items = Vec::new();
        let mut scanned = 0;
        for entry in self.tree.range(prefix.to_vec()..end).rev() {
            let (key, _) = entry?;
            scanned += 1;
            let Some(id) = keys::last_segment(&key).and_then(DeliveryId::parse) else {
                continue;
            };
            if let Some(delivery) = self.delivery(tenant, &id)?
                && keep(&delivery)
            {
                items.push(delivery);
                if items.len() == limit || scanned >= MAX_SCAN_ROWS {
                    return Ok(Page {
                        items,
                        next: Some(id.to_string()),
                    });
                }
            }
        }
        Ok(Page { items, next: None })
    }

    /// Attempts of a delivery, oldest first.
    pub fn attempts(&self, tenant: &str, delivery: &DeliveryId) -> Result<Vec<AttemptRecord>> {
        self.tree
            .scan_prefix(keys::attempts_of(tenant, delivery))
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// The due head of a webhook's queue, skipping `skip` (deliveries already in flight).
    pub fn queue_head(
        &self,
        tenant: &str,
        webhook: &WebhookId,
        skip: &HashSet<DeliveryId>,
        now_ms: u64,
        limit: usize,
    ) -> Result<QueueHead> {
        let prefix = keys::queue_of(tenant, webhook);
        let mut head = QueueHead::default();
        for entry in self.tree.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let Some((due, id)) = keys::parse_queue_suffix(&key[prefix.len()..]) else {
                continue;
            };
            if skip.contains(&id) {
                continue;
            }
            if due > now_ms || head.due.len() >= limit {
                head.next_due = Some(due);
                break;
            }
            head.due.push(Claim {
                delivery_id: id,
                lease: 0,
            });
        }
        Ok(head)
    }

    /// Counts schedule entries across every tenant and webhook, reading at most `max_entries`
    /// keys. An estimate for metrics only: never used to decide what runs.
    pub fn schedule_counts(&self, now_ms: u64, max_entries: usize) -> Result<ScheduleCounts> {
        let mut counts = ScheduleCounts::default();
        for entry in self.tree.scan_prefix([keys::QUEUE]) {
            if counts.scheduled >= max_entries {
                counts.truncated = true;
                break;
            }
            let (key, _) = entry?;
            counts.scheduled += 1;
            if keys::queue_entry_due(&key).is_some_and(|due| due <= now_ms) {
                counts.due += 1;
            }
        }
        Ok(counts)
    }

    /// Records an attempt and applies its consequence to the delivery and its schedule entry,
    /// atomically. Returns the updated delivery (`None` if it was purged meanwhile). The engine
    /// records through the attempt recorder ([`SledStore::record_attempts`]); this one is for tests.
    #[cfg(test)]
    pub(crate) fn record_attempt(
        &self,
        tenant: &str,
        attempt: &AttemptRecord,
        update: &super::DeliveryUpdate,
    ) -> Result<Option<DeliveryRecord>> {
        let item = AttemptOutcome {
            tenant: tenant.to_string(),
            lease: 0,
            attempt: attempt.clone(),
            update: update.clone(),
        };
        self.record_attempts(std::slice::from_ref(&item))?
            .pop()
            .expect("one result per outcome")
    }

    /// [`SledStore::record_attempt`] for many attempts in one transaction (the attempt recorder's
    /// group commit): one result per outcome, in order. A delivery record that does not decode
    /// fails only its own outcome.
    pub fn record_attempts(
        &self,
        outcomes: &[AttemptOutcome],
    ) -> Result<Vec<Result<Option<DeliveryRecord>>>> {
        let now = crate::ids::now_ms();
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = outcomes
            .iter()
            .map(|o| {
                let mut key = keys::attempts_of(&o.tenant, &o.attempt.delivery_id);
                key.extend_from_slice(o.attempt.id.as_str().as_bytes());
                (key, encode(&o.attempt))
            })
            .collect();
        self.tree
            .transaction(|tx| {
                let mut results = Vec::with_capacity(outcomes.len());
                for (o, (key, value)) in outcomes.iter().zip(&encoded) {
                    let (attempt, update) = (&o.attempt, &o.update);
                    let changed = change_delivery_in(
                        tx,
                        &o.tenant,
                        &attempt.delivery_id,
                        |record| {
                            record.status = update.status;
                            record.next_attempt_at = update.next_attempt_at;
                            record.attempts = record.attempts.max(attempt.attempt);
                            record.last_attempt_at = Some(attempt.started_at);
                            record.last_status_code = attempt.status_code;
                            record.last_error = attempt.error_code.clone();
                            record.filtered_by = update.filtered_by.clone();
                        },
                        Some((key, value)),
                        Some(attempt.latency_ms),
                        now,
                    );
                    if matches!(changed, Ok(Some(_))) {
                        record_health(tx, &o.tenant, attempt)?;
                    }
                    match changed {
                        Ok(record) => results.push(Ok(record)),
                        Err(ConflictableTransactionError::Abort(err)) => results.push(Err(err)),
                        Err(other) => return Err(other),
                    }
                }
                Ok(results)
            })
            .map_err(tx_error)
    }

    /// Puts a delivery back on its webhook's queue, due at `due_ms` (manual retry, recover).
    /// Returns the updated delivery, or `None` if it does not exist.
    pub fn requeue(
        &self,
        tenant: &str,
        id: &DeliveryId,
        due_ms: u64,
    ) -> Result<Option<DeliveryRecord>> {
        self.change_delivery(
            tenant,
            id,
            |record| {
                record.status = DeliveryStatus::Pending;
                record.next_attempt_at = Some(due_ms);
            },
            None,
            None,
        )
    }

    /// Ends a delivery without an attempt (its webhook or event is gone): removes its schedule
    /// entry and sets `status` with `error` as the last error.
    pub fn settle(
        &self,
        tenant: &str,
        id: &DeliveryId,
        status: DeliveryStatus,
        error: &str,
    ) -> Result<()> {
        self.change_delivery(
            tenant,
            id,
            |record| {
                record.status = status;
                record.next_attempt_at = None;
                record.last_error = Some(error.to_string());
            },
            None,
            None,
        )?;
        Ok(())
    }

    /// Read-modify-write of one delivery in a transaction (see [`change_delivery_in`]).
    /// `None` if the delivery does not exist.
    fn change_delivery(
        &self,
        tenant: &str,
        id: &DeliveryId,
        change: impl Fn(&mut DeliveryRecord),
        extra: Option<(&[u8], &[u8])>,
        attempt_latency_ms: Option<u64>,
    ) -> Result<Option<DeliveryRecord>> {
        let now = crate::ids::now_ms();
        self.tree
            .transaction(|tx| {
                change_delivery_in(tx, tenant, id, &change, extra, attempt_latency_ms, now)
            })
            .map_err(tx_error)
    }

    /// Ids of a webhook's deliveries in `status` created at or after `since_ms`, oldest first.
    pub fn webhook_deliveries_with_status(
        &self,
        tenant: &str,
        webhook: &WebhookId,
        status: DeliveryStatus,
        since_ms: u64,
    ) -> Result<Vec<DeliveryId>> {
        let mut out = Vec::new();
        for entry in self
            .tree
            .scan_prefix(keys::webhook_deliveries(tenant, webhook))
        {
            let (key, _) = entry?;
            let Some(id) = keys::last_segment(&key).and_then(DeliveryId::parse) else {
                continue;
            };
            if let Some(delivery) = self.delivery(tenant, &id)?
                && delivery.status == status
                && delivery.created_at >= since_ms
            {
                out.push(id);
            }
        }
        Ok(out)
    }
}

impl SledStore {
    /// Ids, idempotency and records for a group of accepted events: which are duplicates (of a
    /// stored event, or of one earlier in the group) and what to write for the others.
    fn prepare_group(&self, group: Vec<NewEvent>) -> Result<(Vec<StoredEvent>, Vec<Appended>)> {
        let now = crate::ids::now_ms();
        let mut seen: std::collections::HashMap<(String, String), EventId> =
            std::collections::HashMap::new();
        let mut to_write = Vec::with_capacity(group.len());
        let mut answers = Vec::with_capacity(group.len());
        for new in group {
            if let Some(key) = &new.idempotency_key {
                let seen_key = (new.tenant.clone(), key.clone());
                let existing = match seen.get(&seen_key) {
                    Some(id) => Some(id.clone()),
                    None => {
                        self.idempotent_event(&new.tenant, key, new.idempotency_window_ms, now)?
                    }
                };
                if let Some(id) = existing {
                    answers.push(Appended::Duplicate(id));
                    continue;
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
            if let Some(key) = &event.idempotency_key {
                seen.insert((new.tenant.clone(), key.clone()), event.id.clone());
            }
            let deliveries: Vec<DeliveryRecord> = new
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
            answers.push(Appended::Created {
                event: event.clone(),
                deliveries: deliveries.clone(),
            });
            to_write.push(StoredEvent {
                tenant: new.tenant,
                event,
                deliveries,
            });
        }
        Ok((to_write, answers))
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    fn set_listener(&self, listener: Arc<dyn WorkListener>) {
        let _ = self.listener.set(listener);
    }

    async fn flush(&self) -> Result<()> {
        SledStore::flush(self).await
    }

    async fn check_ready(&self) -> Result<()> {
        self.check_space()?;
        self.check_readable()
    }

    fn set_min_free_bytes(&self, bytes: u64) {
        SledStore::set_min_free_bytes(self, bytes)
    }

    fn size_on_disk(&self) -> u64 {
        SledStore::size_on_disk(self)
    }

    async fn reseal_webhooks(&self) -> Result<usize> {
        SledStore::reseal_webhooks(self).await
    }

    async fn insert_webhook(&self, tenant: &str, webhook: &WebhookRecord) -> Result<()> {
        SledStore::insert_webhook(self, tenant, webhook).await
    }

    async fn webhook(&self, tenant: &str, id: &WebhookId) -> Result<Option<WebhookRecord>> {
        SledStore::webhook(self, tenant, id)
    }

    async fn webhooks_of(&self, tenant: &str) -> Result<Arc<Vec<WebhookRecord>>> {
        self.webhooks_shared(tenant)
    }

    async fn list_webhooks(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<WebhookRecord>> {
        SledStore::list_webhooks(self, tenant, cursor, limit)
    }

    async fn update_webhook(
        &self,
        tenant: &str,
        id: &WebhookId,
        change: WebhookChange<'_>,
    ) -> Result<Option<WebhookRecord>> {
        SledStore::update_webhook(self, tenant, id, change).await
    }

    async fn delete_webhook(&self, tenant: &str, id: &WebhookId) -> Result<bool> {
        SledStore::delete_webhook(self, tenant, id).await
    }

    async fn all_webhook_ids(&self) -> Result<Vec<(String, WebhookId)>> {
        SledStore::all_webhook_ids(self)
    }

    async fn append_events(&self, group: Vec<NewEvent>) -> Result<Vec<Appended>> {
        let (to_write, answers) = self.prepare_group(group)?;
        if !to_write.is_empty() {
            self.write_events(&to_write)?;
            SledStore::flush(self).await?;
        }
        for new in &to_write {
            for delivery in &new.deliveries {
                if let Some(due) = delivery.next_attempt_at {
                    self.notify_due(&new.tenant, &delivery.webhook_id, due);
                }
            }
        }
        Ok(answers)
    }

    async fn event(&self, tenant: &str, id: &EventId) -> Result<Option<EventRecord>> {
        SledStore::event(self, tenant, id)
    }

    async fn list_events(
        &self,
        tenant: &str,
        filter: &EventFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<EventRecord>> {
        SledStore::list_events(self, tenant, filter, cursor, limit)
    }

    async fn deliveries_of_event(
        &self,
        tenant: &str,
        event: &EventId,
    ) -> Result<Vec<DeliveryRecord>> {
        SledStore::deliveries_of_event(self, tenant, event)
    }

    async fn delivery(&self, tenant: &str, id: &DeliveryId) -> Result<Option<DeliveryRecord>> {
        SledStore::delivery(self, tenant, id)
    }

    async fn list_deliveries(
        &self,
        tenant: &str,
        filter: &DeliveryFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliveryRecord>> {
        SledStore::list_deliveries(self, tenant, filter, cursor, limit)
    }

    async fn attempts(&self, tenant: &str, delivery: &DeliveryId) -> Result<Vec<AttemptRecord>> {
        SledStore::attempts(self, tenant, delivery)
    }

    async fn claim_due(
        &self,
        tenant: &str,
        webhook: &WebhookId,
        in_flight: &HashSet<DeliveryId>,
        now_ms: u64,
        limit: usize,
    ) -> Result<QueueHead> {
        self.queue_head(tenant, webhook, in_flight, now_ms, limit)
    }

    async fn record_attempts(&self, outcomes: Vec<AttemptOutcome>) -> Result<Vec<Result<()>>> {
        let results = SledStore::record_attempts(self, &outcomes)?;
        for outcome in &outcomes {
            if let Some(due) = outcome.update.next_attempt_at {
                self.notify_due(&outcome.tenant, &outcome.attempt.webhook_id, due);
            }
        }
        Ok(results.into_iter().map(|r| r.map(|_| ())).collect())
    }

    async fn requeue(
        &self,
        tenant: &str,
        id: &DeliveryId,
        due_ms: u64,
    ) -> Result<Option<DeliveryRecord>> {
        let changed = SledStore::requeue(self, tenant, id, due_ms)?;
        SledStore::flush(self).await?;
        if let Some(delivery) = &changed {
            self.notify_due(tenant, &delivery.webhook_id, due_ms);
        }
        Ok(changed)
    }

    async fn settle(
        &self,
        tenant: &str,
        id: &DeliveryId,
        status: DeliveryStatus,
        error: &str,
    ) -> Result<()> {
        SledStore::settle(self, tenant, id, status, error)
    }

    async fn recover(&self, tenant: &str, webhook: &WebhookId, since_ms: u64) -> Result<usize> {
        let failed =
            self.webhook_deliveries_with_status(tenant, webhook, DeliveryStatus::Failed, since_ms)?;
        let now = crate::ids::now_ms();
        for id in &failed {
            SledStore::requeue(self, tenant, id, now)?;
        }
        SledStore::flush(self).await?;
        if !failed.is_empty() {
            self.notify_due(tenant, webhook, now);
        }
        Ok(failed.len())
    }

    async fn schedule_counts(&self, now_ms: u64, max_entries: usize) -> Result<ScheduleCounts> {
        SledStore::schedule_counts(self, now_ms, max_entries)
    }

    async fn stats_days(
        &self,
        tenant: &str,
        scope: StatsScope<'_>,
        first_day: u32,
        last_day: u32,
    ) -> Result<Vec<DayStats>> {
        SledStore::stats_days(self, tenant, scope, first_day, last_day)
    }

    async fn webhook_health(&self, tenant: &str, webhook: &WebhookId) -> Result<WebhookHealth> {
        match self.tree.get(keys::health(tenant, webhook))? {
            Some(bytes) => decode(&bytes),
            None => Ok(WebhookHealth::default()),
        }
    }

    async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage> {
        SledStore::tenant_usage(self, tenant)
    }

    async fn purge(
        &self,
        tenant: Option<&str>,
        before_ms: u64,
        stop: &CancellationToken,
    ) -> Result<PurgeOutcome> {
        let tenants = match tenant {
            Some(tenant) => vec![tenant.to_string()],
            None => self.tenants_with_events()?,
        };
        let mut total = PurgeOutcome::default();
        for tenant in tenants {
            let mut after: Option<EventId> = None;
            loop {
                let (store, tenant_id, resume) = (self.clone(), tenant.clone(), after.take());
                let (outcome, next) = tokio::task::spawn_blocking(move || {
                    store.purge_batch(
                        &tenant_id,
                        before_ms,
                        resume.as_ref(),
                        retention::PURGE_BATCH_KEYS,
                    )
                })
                .await
                .map_err(|err| StoreError::Interrupted(err.to_string()))??;
                total.add(outcome);
                match next {
                    Some(id) if !stop.is_cancelled() => after = Some(id),
                    _ => break,
                }
                tokio::task::yield_now().await;
            }
            if stop.is_cancelled() {
                break;
            }
        }
        if !total.is_empty() {
            SledStore::flush(self).await?;
        }
        Ok(total)
    }

    async fn prune_stats(&self, before_day: u32) -> Result<usize> {
        let mut cursor: Option<Vec<u8>> = None;
        let mut removed = 0;
        loop {
            let (store, resume) = (self.clone(), cursor.take());
            let (n, next) = tokio::task::spawn_blocking(move || {
                SledStore::prune_stats(
                    &store,
                    before_day,
                    resume.as_deref(),
                    retention::PURGE_BATCH_KEYS,
                )
            })
            .await
            .map_err(|err| StoreError::Interrupted(err.to_string()))??;
            removed += n;
            match next {
                Some(key) => cursor = Some(key),
                None => return Ok(removed),
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::store::{WebhookSecret, WebhookStatus};

    fn delivery(event: &EventRecord, webhook: &WebhookId, due: Option<u64>) -> DeliveryRecord {
        DeliveryRecord {
            id: DeliveryId::new(),
            event_id: event.id.clone(),
            webhook_id: webhook.clone(),
            event_type: event.event_type.clone(),
            channel: None,
            status: DeliveryStatus::Pending,
            attempts: 0,
            created_at: 1,
            updated_at: 1,
            next_attempt_at: due,
            last_attempt_at: None,
            last_status_code: None,
            last_error: None,
            filtered_by: None,
        }
    }

    #[test]
    fn schedule_counts_cover_every_tenant_and_webhook_and_stop_at_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(
            dir.path(),
            std::sync::Arc::new(crate::secrets::Keyring::random()),
        )
        .unwrap();
        let (a, b) = (WebhookId::new(), WebhookId::new());
        let news: Vec<StoredEvent> = ["acme", "globex"]
            .into_iter()
            .map(|tenant| {
                let event = EventRecord {
                    id: EventId::new(),
                    event_type: "user.created".into(),
                    channel: None,
                    idempotency_key: None,
                    created_at: 1,
                    payload: RawValue::from_string("{}".into()).unwrap(),
                };
                let deliveries = vec![
                    delivery(&event, &a, Some(100)),
                    delivery(&event, &b, Some(1_000)),
                    delivery(&event, &b, None),
                ];
                StoredEvent {
                    tenant: tenant.into(),
                    event,
                    deliveries,
                }
            })
            .collect();
        store.write_events(&news).unwrap();

        let all = store.schedule_counts(500, usize::MAX).unwrap();
        assert_eq!(
            all,
            ScheduleCounts {
                due: 2,
                scheduled: 4,
                truncated: false
            }
        );
        let capped = store.schedule_counts(5_000, 3).unwrap();
        assert_eq!((capped.scheduled, capped.truncated), (3, true));
    }

    fn webhook_record(secret: &str) -> WebhookRecord {
        WebhookRecord {
            id: WebhookId::new(),
            url: "https://receiver.example/hook".into(),
            description: String::new(),
            event_types: vec!["*".into()],
            channels: None,
            secrets: vec![WebhookSecret::new(secret.into(), 1)],
            headers: Default::default(),
            status: WebhookStatus::Active,
            disabled_reason: None,
            max_attempts: None,
            timeout_ms: None,
            max_in_flight: None,
            rate_limit_per_sec: None,
            retry_schedule_ms: None,
            metadata: Default::default(),
            plugins: Vec::new(),
            failing_since: None,
            created_at: 1,
            updated_at: 1,
        }
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[tokio::test]
    async fn plaintext_secrets_of_older_records_are_sealed_at_startup_and_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), Arc::new(Keyring::random())).unwrap();
        let webhook = webhook_record(SECRET);
        // A record as hookd wrote it before sealing: the secret in plaintext JSON.
        let mut legacy = serde_json::to_value(&webhook).unwrap();
        legacy["secrets"][0]["secret"] = SECRET.into();
        let key = keys::webhook("acme", &webhook.id);
        store.tree.insert(&key, encode(&legacy)).unwrap();
        assert_eq!(
            store.webhook("acme", &webhook.id).unwrap().unwrap().secrets[0].secret,
            SECRET,
            "an older record reads as before"
        );

        assert_eq!(store.reseal_webhooks().await.unwrap(), 1);
        let raw = store.tree.get(&key).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert_eq!(
            store.webhook("acme", &webhook.id).unwrap().unwrap().secrets[0].secret,
            SECRET
        );
        // Nothing left to re-seal; API listings keep secrets sealed (the in-memory webhook
        // cache behind `webhooks_of` holds them opened, for signing).
        assert_eq!(store.reseal_webhooks().await.unwrap(), 0);
        let listed = store.list_webhooks("acme", None, 10).unwrap();
        assert!(listed.items[0].secrets[0].secret.is_empty());
        assert_eq!(
            store.webhooks_of("acme").unwrap()[0].secrets[0].secret,
            SECRET
        );
    }

    #[tokio::test]
    async fn a_sealed_record_moved_to_another_webhook_or_tenant_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), Arc::new(Keyring::random())).unwrap();
        let webhook = webhook_record(SECRET);
        store.insert_webhook("acme", &webhook).await.unwrap();
        let sealed = store
            .tree
            .get(keys::webhook("acme", &webhook.id))
            .unwrap()
            .unwrap();
        store
            .tree
            .insert(keys::webhook("globex", &webhook.id), sealed.clone())
            .unwrap();
        assert!(matches!(
            store.webhook("globex", &webhook.id),
            Err(StoreError::Secret { .. })
        ));
        assert!(matches!(
            store.reseal_webhooks().await,
            Err(StoreError::Secret { .. })
        ));
    }
}
