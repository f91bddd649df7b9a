//! The embedded backend: an append-only log of segment files for what grows with traffic, and
//! sled for a bounded set of keys. The only module that names sled.
//!
//! Why this shape (measured, see `ARCHITECTURE.md`): sled 0.34 keeps memory for every key it
//! has written and removed in a process's life (1M small keys inserted then removed: 620 MiB
//! RSS), and each insert costs ~15 µs. So nothing here is one sled key per event, delivery or
//! attempt:
//! - `log.rs` (durability): every event (payload written once), attempt, change of a delivery
//!   and webhook write is a checksummed record in the log; a delivery's state is a 48-byte
//!   slot inside its event's record, rewritten in place. Ids name records (`codec.rs`), so a
//!   read by id is one `pread`.
//! - sled (`keys.rs`, `pages.rs`): webhooks, each webhook's schedule as pages sorted by due
//!   time, listing pages, idempotency buckets, statistics counters (`stats.rs`), usage, the
//!   segment catalogue and the log checkpoint.
//! - `writer/`: one thread owns every write — log, slots and sled keys — and commits groups
//!   (group commit; one `fdatasync` before any 202). Readers never wait for it.
//! - At open, the log after the checkpoint is replayed into sled (`WriterState::replay_from`),
//!   so sled is flushed only every 200 ms and never before an acknowledgement. Open never
//!   scans the whole store.
//!
//! Other files: `webhooks.rs`, `events.rs`, `deliveries.rs` (reads, claims), `retention.rs`,
//! `migrate.rs` (a data dir of the previous layout, `hookd/v1`), `plugins.rs` (the plugin
//! catalogue: a tree of its own and component files, outside the writer), `shadow.rs` (shadow
//! runs of candidate plugin versions, in the catalogue's tree).

mod attempt_codec;
mod codec;
mod deliveries;
mod events;
mod keys;
mod log;
mod migrate;
mod pages;
mod plugins;
mod record_cache;
mod retention;
mod shadow;
mod stats;
mod webhooks;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::cache::WebhookCache;
use super::stats::{DayStats, StatsScope};
use super::{
    Appended, AttemptOutcome, AttemptRecord, DeliveryFilter, DeliveryRecord, DeliveryStatus,
    DeliveryWithEvent, EventFilter, EventRecord, NewEvent, Page, PluginHead, PluginListener,
    PluginStage, PluginVersion, PurgeOutcome, QueueHead, Result, ScheduleCounts, SpaceProblem,
    Store, StoreError, SyncObserver, TenantUsage, WebhookChange, WebhookRecord, WorkListener,
};
use crate::ids::{DeliveryId, EventId, WebhookId};
use crate::secrets::Keyring;
use codec::{IdKey, Locator};
use writer::{Command, WriterState};

/// Most rows a listing scans for one page before it returns a cursor to continue from.
const MAX_SCAN_ROWS: usize = 50_000;
/// The name of the tree of this layout.
const TREE: &str = "hookd/v2";
/// This layout's version, kept under `M format`.
const FORMAT: &[u8] = b"2";

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        match err {
            sled::Error::Io(err) => StoreError::Io(err.to_string()),
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}

/// An attempt as the log keeps it: the record, and the plugin that dropped the delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredAttempt {
    #[serde(flatten)]
    attempt: AttemptRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filtered_by: Option<String>,
    /// The captured request's body was left out: it is the event's delivered body
    /// ([`EventRecord::delivered_body`]), rendered again when the attempt is read, so an
    /// attempt does not copy its event's payload into the log.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    body_from_event: bool,
}

/// The free-space reserve of the data dir, and the first I/O failure of a write. After a
/// failure the store refuses every write until a restart (`/readyz` reports it); below the
/// reserve ingest is refused and taken again as soon as space returns.
#[derive(Debug)]
struct SpaceWatermark {
    dir: PathBuf,
    min_free_bytes: AtomicU64,
    failure: OnceLock<String>,
}

/// What the writer thread and every reader share.
struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    log: Arc<log::Log>,
    webhooks: WebhookCache,
    keyring: Arc<Keyring>,
    /// Makes event, delivery and attempt ids opaque (`codec::IdKey`).
    ids: IdKey,
    listener: OnceLock<Arc<dyn WorkListener>>,
    sync_observer: OnceLock<Arc<dyn SyncObserver>>,
    space: SpaceWatermark,
}

impl Shared {
    /// Whether the data dir can take new events: writable, with the reserve free (one
    /// `statvfs`, a few microseconds, once per group).
    fn check_space(&self) -> Result<()> {
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

    /// Records the first I/O failure of a write; later writes are refused with it.
    fn failed(&self, err: &StoreError) {
        if err.is_unavailable() && self.space.failure.set(err.to_string()).is_ok() {
            tracing::error!(error = %err, "the store met an I/O error; it takes no writes until hookd restarts");
        }
    }

    fn failure(&self) -> Option<String> {
        self.space.failure.get().cloned()
    }
}

#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
    writer: mpsc::Sender<Command>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The data dir holds the previous layout, to migrate before use.
    migration_due: Arc<AtomicBool>,
    /// The plugin catalogue (`plugins.rs`).
    plugins: Arc<plugins::Catalogue>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// How opening names a data dir whose lock another process (or a store of this process not yet
/// closed) holds; callers that wait for a release match on it.
pub const DATA_DIR_IN_USE: &str = "another process has this data dir open";

impl SledStore {
    /// Opens (or creates) the store in `dir`, with sled's page cache at 16 MiB (the config's default).
    pub fn open(dir: &Path, keyring: Arc<Keyring>) -> Result<SledStore> {
        SledStore::open_with_cache(dir, keyring, 16 * 1024 * 1024)
    }

    /// Opens (or creates) the store in `dir`: migrates a data dir of the previous layout,
    /// checks the log's tail, replays what sled had not written, and starts the writer. sled
    /// takes an exclusive lock on the directory, so one data dir serves one process.
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
            // The writer flushes sled itself, right after the log (see `writer/mod.rs`).
            .flush_every_ms(None)
            .open()
            .map_err(|err| match err {
                // sled's own words for the data dir's lock held elsewhere.
                sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                    StoreError::Io(format!(
                        "{DATA_DIR_IN_USE} (one hookd per data dir; stop the other or give \
                         this one another --data)"
                    ))
                }
                other => other.into(),
            })?;
        let migrating = migrate::prepare(&db, dir)?;
        let tree = db.open_tree(TREE)?;
        let plugins = Arc::new(plugins::Catalogue::open(&db, dir)?);
        let (log, last_segment) = log::LogWriter::open(&dir.join("log"))?;
        let ids = id_key(&dir.join("log"), last_segment)?;
        let shared = Arc::new(Shared {
            db,
            tree,
            log,
            webhooks: WebhookCache::default(),
            keyring,
            ids,
            listener: OnceLock::new(),
            sync_observer: OnceLock::new(),
            space: SpaceWatermark {
                dir: dir.to_path_buf(),
                min_free_bytes: AtomicU64::new(0),
                failure: OnceLock::new(),
            },
        });
        let state = recover(shared.clone())?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hookd-store-writer".into())
            .spawn(move || state.run(rx))
            .map_err(|err| StoreError::Io(err.to_string()))?;
        Ok(SledStore {
            shared,
            writer: tx,
            thread: Arc::new(Mutex::new(Some(thread))),
            migration_due: Arc::new(AtomicBool::new(migrating)),
            plugins,
        })
    }

    /// Migrates a data dir of the previous layout (see `migrate.rs`); nothing when there is
    /// none. Called once, right after opening, before the store is used.
    pub async fn migrate_if_needed(&self) -> Result<()> {
        if self.migration_due.swap(false, Ordering::SeqCst) {
            migrate::migrate(self).await?;
        }
        Ok(())
    }

    /// Sends a command to the writer and waits for its answer.
    async fn ask<T>(&self, command: impl FnOnce(writer::Reply<T>) -> Command) -> Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer
            .send(command(reply))
            .map_err(|_| StoreError::Interrupted("the store's writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Interrupted("the store's writer has stopped".into()))?
    }

    fn check_readable(&self) -> Result<()> {
        self.shared.tree.get(keys::meta(keys::FORMAT))?;
        Ok(())
    }

    fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage> {
        let usage = match self.shared.tree.get(keys::usage(tenant))? {
            Some(bytes) => pages::Usage::decode(&bytes)?,
            None => pages::Usage::default(),
        };
        Ok(TenantUsage {
            webhooks: self.shared.webhooks_of(tenant)?.len() as u64,
            events: usage.events,
            pending_deliveries: usage.pending,
            stored_bytes: usage.payload_bytes,
        })
    }

    fn size_on_disk(&self) -> u64 {
        self.shared.db.size_on_disk().unwrap_or(0) + self.shared.log.size_on_disk()
    }
}

/// Checks the log's tail, replays what sled had not written, and makes the writer's state.
/// This data dir's id key (`log/id-key`, beside the records whose ids it makes, so a sled
/// rebuilt from the log keeps it), made the first time this release opens the data dir. Ids
/// are keyed from the end of the log as it is then (a new data dir: from the start), so every
/// id handed out before keeps naming its record; the key is durable before any record gets a
/// keyed id.
fn id_key(log_dir: &Path, last_segment: Option<u32>) -> Result<IdKey> {
    let io = |err: std::io::Error| StoreError::Io(err.to_string());
    let path = log_dir.join("id-key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            return IdKey::from_bytes(&bytes).ok_or_else(|| {
                StoreError::Corrupt(format!("{} does not hold an id key", path.display()))
            });
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io(err)),
    }
    let keyed_from = match last_segment {
        Some(segment) => {
            let written = std::fs::metadata(log::segment_path(log_dir, segment))
                .map_err(io)?
                .len();
            Locator {
                segment,
                offset: u32::try_from(written).unwrap_or(u32::MAX),
            }
        }
        None => Locator::ZERO,
    };
    let key = IdKey::random(keyed_from);
    let temporary = log_dir.join("id-key.tmp");
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    std::io::Write::write_all(&mut file, &key.to_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, &path).map_err(io)?;
    std::fs::File::open(log_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io)?;
    Ok(key)
}

fn recover(shared: Arc<Shared>) -> Result<WriterState> {
    let log = shared.log.clone();
    let checkpoint = match shared.tree.get(keys::meta(keys::CHECKPOINT))? {
        Some(bytes) => Some(Locator::unpack(u64::from_be_bytes(
            bytes
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("the log checkpoint".into()))?,
        ))),
        None => None,
    };
    let segments = log.segments()?;
    let from = checkpoint.unwrap_or(Locator {
        segment: segments.first().copied().unwrap_or(1),
        offset: 0,
    });
    let valid_end = if segments.is_empty() {
        None
    } else {
        Some(log.scan_from(from, |_, _| Ok(()))?)
    };
    if let (Some(end), Some(last)) = (valid_end, segments.last())
        && (end.segment < *last)
    {
        return Err(StoreError::Corrupt(format!(
            "log segment {} is damaged before its end; later segments exist",
            end.segment
        )));
    }
    // sled ahead of the log: its checkpoint lies past the end of the log's valid records.
    let lost = match checkpoint {
        Some(checkpoint) => log.valid_end_before(checkpoint)?.map(|end| end..checkpoint),
        None => None,
    };
    let writer = log::LogWriter::resume(log, valid_end)?;
    let mut state = WriterState::new(shared.clone(), writer)?;
    if let Some(lost) = lost {
        let dropped = state.drop_lost(lost.clone())?;
        warn!(
            segment = lost.start.segment,
            from_offset = lost.start.offset,
            to_offset = lost.end.offset,
            deliveries = dropped,
            "the log lost its unsynced tail while the store kept its pages (a power loss?): \
             the events in it were never acknowledged; their queued deliveries were dropped"
        );
    }
    let replayed = state.replay_from(from)?;
    if replayed > 0 {
        info!(
            records = replayed,
            "log records replayed into the store after an unclean stop"
        );
    }
    shared.tree.insert(keys::meta(keys::FORMAT), FORMAT)?;
    shared.db.flush()?;
    Ok(state)
}

#[async_trait::async_trait]
impl Store for SledStore {
    fn set_listener(&self, listener: Arc<dyn WorkListener>) {
        let _ = self.shared.listener.set(listener);
    }

    fn set_sync_observer(&self, observer: Arc<dyn SyncObserver>) {
        let _ = self.shared.sync_observer.set(observer);
    }

    /// One process per data dir, and a claim is the dispatcher's own note.
    fn claims_are_local(&self) -> bool {
        true
    }

    async fn flush(&self) -> Result<()> {
        self.ask(|reply| Command::Flush { reply }).await
    }

    async fn close(&self) -> Result<()> {
        let closed = self.ask(|reply| Command::Close { reply }).await;
        let thread = self.thread.lock().expect("writer thread lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        closed
    }

    async fn check_ready(&self) -> Result<()> {
        self.shared.check_space()?;
        self.check_readable()
    }

    fn set_min_free_bytes(&self, bytes: u64) {
        self.shared
            .space
            .min_free_bytes
            .store(bytes, Ordering::Relaxed);
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
        self.shared.webhooks_of(tenant)
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
        if group.is_empty() {
            return Ok(Vec::new());
        }
        self.ask(|reply| Command::Append { group, reply }).await
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

    async fn delivery_with_event(
        &self,
        tenant: &str,
        id: &DeliveryId,
    ) -> Result<Option<DeliveryWithEvent>> {
        SledStore::delivery_with_event(self, tenant, id)
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
        skip_due_before: Option<u64>,
        now_ms: u64,
        limit: usize,
    ) -> Result<QueueHead> {
        SledStore::claim_due(
            self,
            tenant,
            webhook,
            in_flight,
            skip_due_before,
            now_ms,
            limit,
        )
    }

    async fn record_attempts(&self, outcomes: Vec<AttemptOutcome>) -> Result<Vec<Result<()>>> {
        self.ask(|reply| Command::Record { outcomes, reply }).await
    }

    async fn requeue(
        &self,
        tenant: &str,
        id: &DeliveryId,
        due_ms: u64,
    ) -> Result<Option<DeliveryRecord>> {
        let Some(delivery) = self.shared.ids.parse_delivery_id(id) else {
            return Ok(None);
        };
        self.ask(|reply| Command::Requeue {
            tenant: tenant.to_string(),
            delivery,
            due: due_ms,
            reply,
        })
        .await
    }

    async fn settle(
        &self,
        tenant: &str,
        id: &DeliveryId,
        status: DeliveryStatus,
        error: &str,
    ) -> Result<()> {
        let Some(delivery) = self.shared.ids.parse_delivery_id(id) else {
            return Ok(());
        };
        self.ask(|reply| Command::Settle {
            tenant: tenant.to_string(),
            delivery,
            status,
            error: error.to_string(),
            reply,
        })
        .await
    }

    async fn recover(&self, tenant: &str, webhook: &WebhookId, since_ms: u64) -> Result<usize> {
        self.ask(|reply| Command::Recover {
            tenant: tenant.to_string(),
            webhook: webhook.clone(),
            since_ms,
            reply,
        })
        .await
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
        stats::stats_days(&self.shared.tree, tenant, scope, first_day, last_day)
    }

    async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage> {
        SledStore::tenant_usage(self, tenant)
    }

    async fn webhook_health(
        &self,
        tenant: &str,
        webhook: &WebhookId,
    ) -> Result<super::health::WebhookHealth> {
        match self.shared.tree.get(keys::health(tenant, webhook))? {
            Some(bytes) => stats::decode(&bytes),
            None => Ok(super::health::WebhookHealth::default()),
        }
    }

    async fn purge(
        &self,
        tenant: Option<&str>,
        channel: Option<&str>,
        before_ms: u64,
        stop: &CancellationToken,
    ) -> Result<PurgeOutcome> {
        match tenant {
            Some(tenant) => self.purge_tenant(tenant, channel, before_ms, stop).await,
            None => {
                debug_assert!(channel.is_none(), "a channel purge names its tenant");
                self.purge_all(before_ms, stop).await
            }
        }
    }

    async fn prune_stats(&self, before_day: u32) -> Result<usize> {
        self.prune_counters(before_day).await
    }

    fn set_plugin_listener(&self, listener: Arc<dyn PluginListener>) {
        self.plugins.set_listener(listener);
    }

    async fn put_plugin_version(
        &self,
        tenant: &str,
        name: &str,
        sha256: &str,
        bytes: &[u8],
        uploaded_by: &str,
        stage: PluginStage,
    ) -> Result<PluginVersion> {
        SledStore::put_plugin_version(self, tenant, name, sha256, bytes, uploaded_by, stage).await
    }

    async fn plugin_versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginVersion>> {
        SledStore::plugin_versions(self, tenant, name)
    }

    async fn plugin_head(&self, tenant: &str, name: &str) -> Result<Option<PluginHead>> {
        SledStore::plugin_head(self, tenant, name)
    }

    async fn plugin_bytes(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
    ) -> Result<Option<Vec<u8>>> {
        SledStore::plugin_bytes(self, tenant, name, version).await
    }

    async fn set_plugin_current(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
    ) -> Result<Option<PluginHead>> {
        SledStore::set_plugin_current(self, tenant, name, version).await
    }

    async fn delete_plugin(&self, tenant: &str, name: &str) -> Result<bool> {
        SledStore::delete_plugin(self, tenant, name).await
    }

    async fn plugin_heads(&self) -> Result<Vec<PluginHead>> {
        SledStore::plugin_heads(self)
    }

    async fn start_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        start: &super::ShadowSummary,
    ) -> Result<bool> {
        SledStore::start_plugin_shadow(self, tenant, name, start).await
    }

    async fn record_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        candidate: u64,
        case: &super::ShadowCase,
    ) -> Result<super::ShadowRecorded> {
        SledStore::record_plugin_shadow(self, tenant, name, candidate, case).await
    }

    async fn plugin_shadow(&self, tenant: &str, name: &str) -> Result<Option<super::ShadowReport>> {
        SledStore::plugin_shadow(self, tenant, name)
    }

    async fn end_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        candidate: u64,
        state: super::ShadowState,
    ) -> Result<bool> {
        SledStore::end_plugin_shadow(self, tenant, name, candidate, state).await
    }
}
#[cfg(test)]
mod tests;
