//! Durable state behind one interface. [`Store`] says what the engine needs of storage —
//! append a group of events with their deliveries, claim due work, record a group of attempt
//! outcomes, webhooks, reads and listings, statistics, retention — and nothing about how a
//! backend keeps it. The engine and the API hold an `Arc<dyn Store>` and never name a backend.
//!
//! Backends: `sled_store` (embedded, the default; the only module that names sled) and
//! `postgres` (several nodes sharing one database; the only module that names tokio-postgres).
//! [`open`] picks one from `[store] backend`; see `ARCHITECTURE.md`.
//!
//! Rules every backend keeps:
//! - Every read and write takes the tenant id; no call crosses tenants.
//! - A method that changes state returns once the change is durable, except
//!   [`Store::record_attempts`] (a lost outcome only makes its delivery due again).
//! - Ids of events and deliveries are assigned by the store when it appends them.
//! - The write that makes work due (ingest, retry, recover, manual retry, a webhook resumed)
//!   tells the [`WorkListener`] after it is durable; callers never notify the dispatcher.
//! - Webhook secrets and credential headers are sealed at rest (`sealing.rs`); [`Store::webhook`]
//!   and [`Store::webhooks_of`] open them, listings leave them sealed.
//! - Tenants' uploaded plugins live in the store's plugin catalogue (versions, bytes, which
//!   version is current); a write to it tells the [`PluginListener`] once it is durable, on
//!   every process sharing the store.

pub mod cache;
pub mod health;
pub mod postgres;
pub mod records;
pub mod sealing;
pub mod shadow;
pub mod sled_store;
pub mod stats;

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::ids::{DeliveryId, EventId, WebhookId};
use crate::secrets::{Keyring, SecretsError};
pub use records::{
    AttemptRecord, DeliveryRecord, DeliveryStatus, EventRecord, PluginAttachment, SentHeader,
    SentRequest, WebhookRecord, WebhookSecret, WebhookStatus,
};
pub use shadow::{
    MAX_SHADOW_CASES, ShadowCase, ShadowCounts, ShadowRecorded, ShadowReport, ShadowSide,
    ShadowState, ShadowSummary,
};
pub use sled_store::SledStore;
use stats::{DayStats, StatsScope};

/// The longest a caller waits for a flush (a healthy one takes milliseconds).
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage failure: {0}")]
    Io(String),
    #[error("a stored record could not be decoded: {0}")]
    Corrupt(String),
    /// A store task (a writer, a flush on the blocking pool) did not finish.
    #[error("store operation interrupted: {0}")]
    Interrupted(String),
    #[error("the secrets of webhook {webhook_id} (tenant {tenant}) cannot be opened: {source}")]
    Secret {
        tenant: String,
        webhook_id: String,
        source: SecretsError,
    },
    #[error("the data dir {0}")]
    Space(SpaceProblem),
    #[error("the store met an I/O error earlier and takes no writes until hookd restarts: {0}")]
    Failed(String),
    /// The backend cannot be reached or refused the operation for now (e.g. the database is
    /// restarting); the caller answers 503 and may try again.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// An attempt's outcome came back under a claim the store no longer holds for this process
    /// (its lease expired and another node may have the delivery): nothing was recorded.
    #[error("the claim on delivery {0} was lost before its outcome was recorded")]
    LeaseLost(String),
}

/// Why the data dir cannot take an event now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpaceProblem {
    #[error("has {free} bytes free, below the {min} bytes kept in reserve")]
    Full { free: u64, min: u64 },
    #[error("is on a read-only file system")]
    ReadOnly,
}

impl StoreError {
    /// Whether the failure is the storage refusing writes for now (disk full or read-only, an
    /// earlier I/O failure, a database away), which callers report as "unavailable" rather than
    /// as a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Io(_)
                | StoreError::Space(_)
                | StoreError::Failed(_)
                | StoreError::Unavailable(_)
        )
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One page of a listing, newest first.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `iterator` to get the next page; `None` when there is nothing more.
    pub next: Option<String>,
}

/// Filters of `GET /v1/events`.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub channel: Option<String>,
    pub after_ms: Option<u64>,
    pub before_ms: Option<u64>,
}

/// Filters of `GET /v1/deliveries`.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    pub webhook_id: Option<WebhookId>,
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<String>,
    pub channel: Option<String>,
    pub after_ms: Option<u64>,
    pub before_ms: Option<u64>,
}

/// An accepted event before the store gives it an id: what a producer sent, validated, and the
/// webhooks it fans out to (one delivery each, due at `created_at`).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub tenant: String,
    pub event_type: String,
    pub channel: Option<String>,
    /// The producer's idempotency key; a key the store already holds (younger than
    /// `idempotency_window_ms`), or one earlier in the same group, makes this a duplicate.
    pub idempotency_key: Option<String>,
    pub idempotency_window_ms: u64,
    pub created_at: u64,
    pub payload: Box<RawValue>,
    pub webhooks: Vec<WebhookId>,
}

/// What [`Store::append_events`] did with one event.
#[derive(Debug, Clone)]
pub enum Appended {
    /// Stored durably, with its deliveries (in the order of [`NewEvent::webhooks`]).
    Created {
        event: EventRecord,
        deliveries: Vec<DeliveryRecord>,
    },
    /// Its idempotency key already names this event; nothing new was written.
    Duplicate(EventId),
}

/// What one attempt changes on its delivery.
#[derive(Debug, Clone)]
pub struct DeliveryUpdate {
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<u64>,
    pub filtered_by: Option<String>,
}

/// A due delivery the dispatcher may attempt now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub delivery_id: DeliveryId,
    /// The backend's proof of the claim, handed back with the outcome ([`AttemptOutcome`]);
    /// a backend shared by several nodes records an outcome only under a claim it still holds.
    pub lease: u64,
    /// The due time of the delivery's queue entry, for a backend whose later
    /// [`Store::claim_due`] can start there (`skip_due_before`); `None` from one that cannot.
    pub queue_due: Option<u64>,
}

/// The due head of a webhook's queue.
#[derive(Debug, Default)]
pub struct QueueHead {
    /// Due deliveries (due ≤ now) not in the caller's in-flight set, in due order.
    pub due: Vec<Claim>,
    /// Due time of the first entry not returned (and not in flight), if any.
    pub next_due: Option<u64>,
}

/// A count of the schedule (every webhook's queue), for the queue gauges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleCounts {
    /// Deliveries due by the given time (claimed ones included: they leave the queue only when
    /// their attempt is recorded).
    pub due: usize,
    /// All queued deliveries counted.
    pub scheduled: usize,
    /// The count stopped at its limit.
    pub truncated: bool,
}

/// What [`Store::delivery_with_event`] read.
#[derive(Debug)]
pub struct DeliveryWithEvent {
    pub delivery: DeliveryRecord,
    /// `Ok(None)`: the event is gone; `Err(StoreError::Corrupt)`: its stored bytes are damaged.
    pub event: Result<Option<EventRecord>>,
}

/// One attempt's record and what it does to its delivery, for [`Store::record_attempts`].
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub tenant: String,
    pub lease: u64,
    pub attempt: AttemptRecord,
    pub update: DeliveryUpdate,
    /// The captured request's body is the event's [`EventRecord::delivered_body`] unchanged:
    /// a backend may keep that fact instead of the bytes (the sled backend does).
    pub body_is_event_body: bool,
}

/// What a purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PurgeOutcome {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
}

impl PurgeOutcome {
    pub fn add(&mut self, other: PurgeOutcome) {
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.attempts += other.attempts;
    }

    pub fn is_empty(&self) -> bool {
        *self == PurgeOutcome::default()
    }
}

/// What a tenant holds in the store (admin view, quotas).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TenantUsage {
    pub webhooks: u64,
    pub events: u64,
    /// Deliveries not in a final state (pending or in flight).
    pub pending_deliveries: u64,
    /// Bytes of event payloads stored.
    pub stored_bytes: u64,
}

/// Hears about work the store made due, once it is durable (the dispatcher).
pub trait WorkListener: Send + Sync {
    /// Deliveries of `webhook` are due at `due_ms` (or were, if that is past).
    fn due(&self, tenant: &str, webhook: &WebhookId, due_ms: u64);
    /// The webhook was created, changed or deleted: its settings or status may differ.
    fn webhook_changed(&self, tenant: &str, webhook: &WebhookId);
}

/// Hears how long each sync of the store to disk took (the metrics): what an acknowledgement
/// waits for, and where a slow disk shows first.
pub trait SyncObserver: Send + Sync {
    fn synced(&self, took: std::time::Duration);
}

/// Hears about changes to the plugin catalogue (the plugin host), once they are durable: this
/// process's own writes and, on a shared backend, every other process's.
pub trait PluginListener: Send + Sync {
    /// The tenant's plugin `name` was uploaded, rolled back or deleted: read its head again.
    fn plugin_changed(&self, tenant: &str, name: &str);
}

/// Versions of a plugin kept besides the current, candidate and pinned ones: an upload beyond
/// this drops the oldest unused version.
pub const KEEP_PLUGIN_VERSIONS: usize = 20;

/// Which pointer of a plugin an upload moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginStage {
    /// The upload becomes the version every attempt runs (unless a webhook pins another).
    Current,
    /// The upload is kept beside the current version without running (the first upload of a
    /// name becomes current whatever its stage: there is nothing to compare it with).
    Candidate,
}

/// One stored version of a tenant's plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PluginVersion {
    /// 1, 2, 3… per plugin name, in upload order (a name deleted and uploaded again starts
    /// at 1).
    pub id: u64,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    pub size: u64,
    pub created_at: u64,
    /// Who uploaded it: the first hex digits of the API key's SHA-256 (`config` lists keys by
    /// that hash), `console`, or `migrated` (a plugin file found at start).
    pub uploaded_by: String,
}

/// A plugin's current (and candidate) version: what every node loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginHead {
    pub tenant: String,
    pub name: String,
    pub current: PluginVersion,
    pub candidate: Option<PluginVersion>,
    /// When the name was first uploaded.
    pub created_at: u64,
    /// When the current version last changed.
    pub updated_at: u64,
}

/// A change to a webhook inside [`Store::update_webhook`]; it may run more than once (a
/// backend retries it on a concurrent change).
pub type WebhookChange<'a> = &'a (dyn Fn(&mut WebhookRecord) + Send + Sync);

/// The storage interface of the engine. See the module docs for the rules every backend keeps.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    // ---- lifecycle and health ---------------------------------------------------------------

    /// Sets who hears about due work (the dispatcher). Called once, at start.
    fn set_listener(&self, listener: Arc<dyn WorkListener>);

    /// Sets who hears how long each of the store's own syncs to disk took. Called once, at
    /// start; a backend whose durability is a server's (PostgreSQL) has none to report.
    fn set_sync_observer(&self, _observer: Arc<dyn SyncObserver>) {}

    /// Makes every write so far durable.
    async fn flush(&self) -> Result<()>;

    /// Makes everything durable and releases the store (at shutdown): nothing may be called
    /// after it. By default a last flush.
    async fn close(&self) -> Result<()> {
        self.flush().await
    }

    /// Whether a claim lives only in this process and costs nothing to hold (no lease, no cap
    /// shared with other processes): the dispatcher may then claim a few deliveries ahead of
    /// the slots that will start them, and ask the store less often.
    fn claims_are_local(&self) -> bool {
        false
    }

    /// Gives up the claims this process still holds (at shutdown, after attempts stopped), so
    /// that other processes sharing the store take them at once rather than when their lease
    /// runs out. A backend whose claims live only in the process has nothing to do.
    async fn release_claims(&self) -> Result<()> {
        Ok(())
    }

    /// Whether the store can take events now: `Space` when the data dir is full or
    /// read-only, another error when it cannot be read or written (for `/readyz`).
    async fn check_ready(&self) -> Result<()>;

    /// Sets the free space kept in reserve (`limits.min_free_disk_bytes`); ingest is refused
    /// with [`StoreError::Space`] below it.
    fn set_min_free_bytes(&self, bytes: u64);

    /// Bytes the store occupies (the data dir for an embedded backend).
    fn size_on_disk(&self) -> u64;

    /// Seals plaintext secrets and re-seals secrets sealed under a previous key; every secret is
    /// opened on the way, so a wrong key fails here, at start ([`StoreError::Secret`]).
    /// Returns how many webhooks were rewritten.
    async fn reseal_webhooks(&self) -> Result<usize>;

    // ---- webhooks ---------------------------------------------------------------------------

    async fn insert_webhook(&self, tenant: &str, webhook: &WebhookRecord) -> Result<()>;

    /// A webhook with its secrets opened (what an attempt signs with).
    async fn webhook(&self, tenant: &str, id: &WebhookId) -> Result<Option<WebhookRecord>>;

    /// Every webhook of a tenant, secrets opened, shared (fan-out reads this per event).
    async fn webhooks_of(&self, tenant: &str) -> Result<Arc<Vec<WebhookRecord>>>;

    /// A page of the tenant's webhooks, secrets sealed.
    async fn list_webhooks(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<WebhookRecord>>;

    /// Read-modify-write of a webhook. `None`: no such webhook.
    async fn update_webhook(
        &self,
        tenant: &str,
        id: &WebhookId,
        change: WebhookChange<'_>,
    ) -> Result<Option<WebhookRecord>>;

    /// Deletes a webhook and, in the same durable step, ends its queued deliveries as `failed`
    /// with `webhook_deleted`. `false`: no such webhook.
    async fn delete_webhook(&self, tenant: &str, id: &WebhookId) -> Result<bool>;

    /// (tenant, webhook id) of every webhook, for the dispatcher's start.
    async fn all_webhook_ids(&self) -> Result<Vec<(String, WebhookId)>>;

    // ---- events -----------------------------------------------------------------------------

    /// Appends a group of events with their deliveries in one durable write (group commit):
    /// idempotency keys are resolved against the store and within the group, in order. One
    /// result per event, in order; an `Err` refuses the whole group and wrote nothing.
    async fn append_events(&self, group: Vec<NewEvent>) -> Result<Vec<Appended>>;

    async fn event(&self, tenant: &str, id: &EventId) -> Result<Option<EventRecord>>;

    async fn list_events(
        &self,
        tenant: &str,
        filter: &EventFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<EventRecord>>;

    /// The deliveries of one event, in fan-out order.
    async fn deliveries_of_event(
        &self,
        tenant: &str,
        event: &EventId,
    ) -> Result<Vec<DeliveryRecord>>;

    // ---- deliveries and the queue -----------------------------------------------------------

    async fn delivery(&self, tenant: &str, id: &DeliveryId) -> Result<Option<DeliveryRecord>>;

    /// A delivery with its event, as an attempt reads them: `None` when the delivery is gone.
    /// A backend that keeps both in one place reads them at once (sled: one `pread`).
    async fn delivery_with_event(
        &self,
        tenant: &str,
        id: &DeliveryId,
    ) -> Result<Option<DeliveryWithEvent>> {
        let Some(delivery) = self.delivery(tenant, id).await? else {
            return Ok(None);
        };
        let event = self.event(tenant, &delivery.event_id).await;
        Ok(Some(DeliveryWithEvent { delivery, event }))
    }

    async fn list_deliveries(
        &self,
        tenant: &str,
        filter: &DeliveryFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliveryRecord>>;

    /// Attempts of a delivery, oldest first.
    async fn attempts(&self, tenant: &str, delivery: &DeliveryId) -> Result<Vec<AttemptRecord>>;

    /// Claims up to `limit` due deliveries of a webhook, skipping `in_flight` (claims the
    /// caller holds already). A claim the caller did not start may come back from a later call.
    /// A backend shared by several processes may return fewer than `limit` (the webhook's
    /// in-flight cap and rate limit hold across them) and then sets `next_due` to when to ask
    /// again.
    ///
    /// `skip_due_before` (a [`Claim::queue_due`] this backend returned) lets the scan start
    /// past the head: the caller vouches that every entry due before it is in `in_flight`, or
    /// was put there by a write that told the [`WorkListener`] after the caller last passed
    /// `None`. A backend may ignore it; `in_flight` is honoured from there on as always.
    async fn claim_due(
        &self,
        tenant: &str,
        webhook: &WebhookId,
        in_flight: &HashSet<DeliveryId>,
        skip_due_before: Option<u64>,
        now_ms: u64,
        limit: usize,
    ) -> Result<QueueHead>;

    /// Records attempts and applies each one's consequence to its delivery and schedule, as one
    /// group. One result per outcome, in order; a delivery that no longer exists is `Ok`.
    async fn record_attempts(&self, outcomes: Vec<AttemptOutcome>) -> Result<Vec<Result<()>>>;

    /// Puts a delivery back on its webhook's queue, due at `due_ms`, whatever its state
    /// (manual retry). `None`: no such delivery.
    async fn requeue(
        &self,
        tenant: &str,
        id: &DeliveryId,
        due_ms: u64,
    ) -> Result<Option<DeliveryRecord>>;

    /// Ends a queued delivery without an attempt (its event is gone): `status`, with `error`
    /// as the last error.
    async fn settle(
        &self,
        tenant: &str,
        id: &DeliveryId,
        status: DeliveryStatus,
        error: &str,
    ) -> Result<()>;

    /// Puts every `failed` delivery of a webhook created at or after `since_ms` back on its
    /// queue, due now, as one durable step. Returns how many.
    async fn recover(&self, tenant: &str, webhook: &WebhookId, since_ms: u64) -> Result<usize>;

    /// Counts queued deliveries (reading at most `max_entries`), for metrics only.
    async fn schedule_counts(&self, now_ms: u64, max_entries: usize) -> Result<ScheduleCounts>;

    // ---- statistics and usage ---------------------------------------------------------------

    /// The statistics of a scope for each UTC day from `first_day` to `last_day` (inclusive),
    /// one entry per day, zero where nothing happened.
    async fn stats_days(
        &self,
        tenant: &str,
        scope: StatsScope<'_>,
        first_day: u32,
        last_day: u32,
    ) -> Result<Vec<DayStats>>;

    async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage>;

    /// A webhook's health (`health.rs`), kept up to date by [`Store::record_attempts`] in the
    /// same write as each attempt (applying [`health::WebhookHealth::record`]); default for a
    /// webhook with no attempt yet. Removed with the webhook.
    async fn webhook_health(
        &self,
        tenant: &str,
        webhook: &WebhookId,
    ) -> Result<health::WebhookHealth>;

    // ---- retention --------------------------------------------------------------------------

    /// Purges finished deliveries (with their attempts) created before `before_ms`, and events
    /// created before then with no delivery left, of one tenant or (`None`) every tenant; never
    /// a pending or in-flight delivery. With `channel` (only with a tenant), only events on
    /// that channel and their deliveries. Works in bounded steps and stops early once `stop`
    /// is cancelled, answering what it did so far.
    async fn purge(
        &self,
        tenant: Option<&str>,
        channel: Option<&str>,
        before_ms: u64,
        stop: &CancellationToken,
    ) -> Result<PurgeOutcome>;

    /// Drops statistics of days before `before_day` (no query can read them). Returns how many
    /// counter records went.
    async fn prune_stats(&self, before_day: u32) -> Result<usize>;

    // ---- plugin catalogue ---------------------------------------------------------------------

    /// Sets who hears about plugin changes (the plugin host). Called once, at start.
    fn set_plugin_listener(&self, listener: Arc<dyn PluginListener>);

    /// Stores an upload as the plugin's next version and makes it `stage` (the first upload
    /// of a name is current whatever `stage`). Bytes equal to the current version's store
    /// nothing and answer the current version (an upload is idempotent). Keeps the newest
    /// [`KEEP_PLUGIN_VERSIONS`] versions plus the current, the candidate and every version a
    /// webhook of the tenant pins; older ones are dropped with their bytes.
    async fn put_plugin_version(
        &self,
        tenant: &str,
        name: &str,
        sha256: &str,
        bytes: &[u8],
        uploaded_by: &str,
        stage: PluginStage,
    ) -> Result<PluginVersion>;

    /// The plugin's stored versions, newest first (empty: no such plugin).
    async fn plugin_versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginVersion>>;

    /// The plugin's head, if the tenant has a plugin of that name.
    async fn plugin_head(&self, tenant: &str, name: &str) -> Result<Option<PluginHead>>;

    /// The component bytes of one stored version.
    async fn plugin_bytes(&self, tenant: &str, name: &str, version: u64)
    -> Result<Option<Vec<u8>>>;

    /// Makes a stored version current (a rollback, or a candidate promoted; a candidate made
    /// current stops being the candidate). `None`: no such plugin or version.
    async fn set_plugin_current(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
    ) -> Result<Option<PluginHead>>;

    /// Deletes a plugin with every version. `false`: no such plugin.
    async fn delete_plugin(&self, tenant: &str, name: &str) -> Result<bool>;

    /// Every tenant's plugins with their current and candidate versions (what a process loads
    /// at start and compares against to catch up).
    async fn plugin_heads(&self) -> Result<Vec<PluginHead>>;

    // ---- shadow runs of candidate versions (`shadow.rs`) ---------------------------------------

    /// Starts the shadow run `start` of the plugin's candidate: replaces the plugin's previous
    /// report (its cases go), then tells the [`PluginListener`] (every node starts comparing).
    /// `false`: no such plugin. A bounded number of records per plugin name.
    async fn start_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        start: &ShadowSummary,
    ) -> Result<bool>;

    /// Counts one attempt compared with `candidate` ([`ShadowSummary::count`], atomically with
    /// every node's), keeping the case if it is one of the first differing ones. Like
    /// [`Store::record_attempts`], it may return before the write is durable (a lost case only
    /// means one fewer attempt compared). The last planned attempt tells the
    /// [`PluginListener`] (every node stops comparing).
    async fn record_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        candidate: u64,
        case: &ShadowCase,
    ) -> Result<ShadowRecorded>;

    /// The plugin's latest shadow report (kept after a promote or discard, until the next
    /// candidate or the plugin's deletion).
    async fn plugin_shadow(&self, tenant: &str, name: &str) -> Result<Option<ShadowReport>>;

    /// Ends the open shadow run of `candidate` as promoted or discarded; discarding also clears
    /// the plugin's candidate pointer if it still names `candidate`. Tells the
    /// [`PluginListener`]. `false`: nothing changed (no open run of that candidate, and no
    /// candidate pointer to clear).
    async fn end_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        candidate: u64,
        state: ShadowState,
    ) -> Result<bool>;
}

/// Versions a webhook of `webhooks` pins of the plugin `name` (kept whatever their age).
pub fn pinned_versions(webhooks: &[WebhookRecord], name: &str) -> HashSet<u64> {
    webhooks
        .iter()
        .flat_map(|webhook| webhook.plugins.iter())
        .filter(|attachment| attachment.name == name)
        .filter_map(|attachment| attachment.version)
        .collect()
}

/// The versions to drop after an upload: all but the newest [`KEEP_PLUGIN_VERSIONS`], the
/// current, the candidate and the pinned ones. `ids` in any order.
pub fn versions_to_drop(
    ids: &[u64],
    current: u64,
    candidate: Option<u64>,
    pinned: &HashSet<u64>,
) -> Vec<u64> {
    let mut newest_first = ids.to_vec();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    newest_first
        .into_iter()
        .skip(KEEP_PLUGIN_VERSIONS)
        .filter(|id| *id != current && Some(*id) != candidate && !pinned.contains(id))
        .collect()
}

/// Opens the configured backend: sled on `config.data_dir` (migrating a data dir of an older
/// layout), or PostgreSQL at `config.store`'s URL (connecting and migrating the schema first).
pub async fn open(config: &crate::config::Config, keyring: Arc<Keyring>) -> Result<Arc<dyn Store>> {
    match config.store.backend {
        crate::config::StoreBackend::Sled => {
            let dir = config.data_dir.clone();
            let cache_bytes = config.limits.store_cache_bytes;
            let store = tokio::task::spawn_blocking(move || {
                SledStore::open_with_cache(&dir, keyring, cache_bytes)
            })
            .await
            .map_err(|err| StoreError::Interrupted(err.to_string()))??;
            store.migrate_if_needed().await?;
            Ok(Arc::new(store))
        }
        crate::config::StoreBackend::Postgres => Ok(Arc::new(
            postgres::PostgresStore::open(&config.store, keyring).await?,
        )),
    }
}
