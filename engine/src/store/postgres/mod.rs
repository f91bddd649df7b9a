//! The PostgreSQL backend: several hookd nodes sharing one database. The only module that
//! names tokio-postgres (and deadpool, refinery).
//!
//! What lives where:
//! - `schema.rs`: versioned migrations (`engine/migrations/`), applied at open under an
//!   advisory lock; a schema newer than this binary stops the start.
//! - `codec.rs`: ids (the UUID part of `evt_…`), statuses and rows ↔ records.
//! - `events.rs`: group commit of events, idempotency keys, deliveries and their counters.
//! - `queue.rs`: claims with leases, group commit of attempt outcomes, requeue and settle.
//! - `webhooks.rs`, `stats.rs`, `retention.rs`: what their names say.
//! - `plugins.rs`: the plugin catalogue (versions with their bytes, the current one).
//! - `shadow.rs`: shadow runs of candidate plugin versions (summary and differing cases).
//! - `notify.rs`: how nodes hear of each other — LISTEN/NOTIFY wake-ups and cache
//!   invalidation, the polling safety net, lease renewal.
//!
//! Claims are leases in the `deliveries` row (node, expiry, token): a node records an outcome
//! only while the token is still its own, renews its leases while it lives, and gives them
//! back at shutdown; a dead node's leases run out and the others take the deliveries.
//! Every transaction that wrote work due or changed a webhook sends a NOTIFY in the same
//! transaction, so other nodes hear of it exactly when it is committed.

mod codec;
mod events;
mod notify;
mod plugins;
mod queue;
mod retention;
mod schema;
mod shadow;
mod stats;
mod webhooks;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::cache::WebhookCache;
use super::stats::{DayStats, StatsScope};
use super::{
    Appended, AttemptOutcome, AttemptRecord, DeliveryFilter, DeliveryRecord, DeliveryStatus,
    EventFilter, EventRecord, NewEvent, Page, PluginHead, PluginListener, PluginStage,
    PluginVersion, PurgeOutcome, QueueHead, Result, ScheduleCounts, Store, StoreError, TenantUsage,
    WebhookChange, WebhookRecord, WorkListener,
};
use crate::config::StoreConfig;
use crate::ids::{DeliveryId, EventId, WebhookId};
use crate::secrets::Keyring;

pub use schema::SCHEMA_VERSION;

/// How long a request waits for a pooled connection, or for a new one, before the store
/// reports itself unavailable (ingest answers 503 rather than hanging).
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long ingest waits for PostgreSQL to answer its write before the store reports itself
/// unavailable (ingest answers 503): a database that stops answering (a frozen host, a
/// partition the kernel has not given up on) must not hold every producer for as long.
const WRITE_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a readiness check waits for the database to say whether it takes writes.
const READY_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the background checks that the server still takes writes (and drops the pool's
/// connections when it does not: `writable`).
pub(super) const WRITABLE_CHECK: Duration = Duration::from_secs(2);
/// TCP keepalive and user timeout on every connection: a peer gone without a reset is noticed
/// in about this long instead of the kernel's ~15 minutes of retransmissions.
const TCP_DEAD_PEER: Duration = Duration::from_secs(10);

/// `operation`, or [`StoreError::Unavailable`] if PostgreSQL has not answered within `limit`.
/// A write given up on may still commit later: the message says so (a producer that retries
/// with the same idempotency key gets no duplicate).
async fn answered_within<T>(
    limit: Duration,
    what: &str,
    operation: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "PostgreSQL did not answer {what} within {limit:?}"
        ))),
    }
}

/// Transactions retried after a deadlock or serialisation failure before giving up.
pub(super) const MAX_TX_TRIES: usize = 3;

/// A failure inside the backend, before it becomes a [`StoreError`]: keeps the SQL state so
/// that a transaction can tell a deadlock (retry) from the database being away.
#[derive(Debug)]
enum Failure {
    Pg(tokio_postgres::Error),
    Pool(PoolError),
    Store(StoreError),
}

type PgResult<T> = std::result::Result<T, Failure>;

impl From<tokio_postgres::Error> for Failure {
    fn from(err: tokio_postgres::Error) -> Self {
        Failure::Pg(err)
    }
}

impl From<PoolError> for Failure {
    fn from(err: PoolError) -> Self {
        Failure::Pool(err)
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::Store(err)
    }
}

impl Failure {
    /// A deadlock or serialisation failure: the same transaction may succeed if run again.
    fn is_retryable(&self) -> bool {
        matches!(self, Failure::Pg(err) if err.code().is_some_and(|code| {
            *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
        }))
    }
}

/// SQL states meaning "the database cannot serve now" rather than "this statement is wrong":
/// connection exceptions (08), insufficient resources (53), operator intervention (57: admin
/// shutdown, crash shutdown, cannot connect now), and transaction rollbacks (40).
fn is_unavailable_state(code: &SqlState) -> bool {
    ["08", "53", "57", "40"]
        .iter()
        .any(|class| code.code().starts_with(class))
}

/// Why a read-only server is not ready (`/readyz`, the log).
pub(super) const READ_ONLY: &str = "PostgreSQL accepts no writes here: the server is a standby (in \
    recovery) or its transactions are read-only (default_transaction_read_only); hookd \
    reconnects until it reaches a writable primary";

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Store(err) => err,
            Failure::Pool(PoolError::Backend(err)) => {
                StoreError::Unavailable(format!("PostgreSQL: {}", explain(&err)))
            }
            Failure::Pool(err) => StoreError::Unavailable(format!("PostgreSQL: {err}")),
            Failure::Pg(err) => match err.code() {
                Some(code) if !is_unavailable_state(code) => {
                    StoreError::Io(format!("PostgreSQL refused a statement: {}", explain(&err)))
                }
                // No SQL state: the connection broke, timed out or was closed.
                _ => StoreError::Unavailable(format!("PostgreSQL: {}", explain(&err))),
            },
        }
    }
}

/// What went wrong, in PostgreSQL's words: the server's message and SQL state (a wrong
/// password, a missing database or privilege, a read-only server) or the connection's cause,
/// where the driver's own text is only "db error" or "error connecting to server". Neither
/// carries the URL or its password.
pub(super) fn explain(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!(
            "{} ({}, SQL state {})",
            db.message(),
            db.severity(),
            db.code().code()
        );
    }
    with_causes(err)
}

/// An error and its causes, each once (`a: b: c`), a PostgreSQL server error in its words.
pub(super) fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let words = match cause.downcast_ref::<tokio_postgres::error::DbError>() {
            Some(db) => format!(
                "{} ({}, SQL state {})",
                db.message(),
                db.severity(),
                db.code().code()
            ),
            None => cause.to_string(),
        };
        if !text.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        source = cause.source();
    }
    text
}

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    keyring: Arc<Keyring>,
    webhooks: WebhookCache,
    listener: OnceLock<Arc<dyn WorkListener>>,
    plugin_listener: OnceLock<Arc<dyn PluginListener>>,
    /// This process's name in leases: host, pid and a random part (a restarted process is a
    /// new node, so it never mistakes a dead predecessor's leases for its own).
    node: String,
    lease_ms: u64,
    /// Leases this node was granted and has not recorded or given back: (tenant, delivery) →
    /// token. The renewal task extends exactly these.
    held: Mutex<HashMap<(String, Uuid), i64>>,
    /// Database size, refreshed in the background (`size_on_disk` may not wait).
    size_bytes: AtomicU64,
    /// Stops the background tasks when the store is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// A TLS connector with the system's root certificates: used when the URL asks for TLS
/// (`sslmode=require`; the default `prefer` uses it when the server offers it).
fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// Parses the configured URL; the error never repeats it (it may carry a password).
fn pg_config(config: &StoreConfig) -> Result<tokio_postgres::Config> {
    let url = config.postgres_url().ok_or_else(|| {
        StoreError::Unavailable(format!(
            "[store] backend = \"postgres\" needs postgres_url or {}",
            crate::config::POSTGRES_URL_ENV
        ))
    })?;
    let mut pg: tokio_postgres::Config = url.parse().map_err(|_| {
        StoreError::Unavailable(
            "the PostgreSQL URL does not parse (not shown: it may hold a password)".into(),
        )
    })?;
    pg.application_name("hookd");
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(POOL_TIMEOUT);
    }
    pg.keepalives(true)
        .keepalives_idle(TCP_DEAD_PEER)
        .tcp_user_timeout(TCP_DEAD_PEER);
    Ok(pg)
}

/// A fresh connection outside the pool (migrations, LISTEN), driven by its own task.
async fn connect_one(config: &tokio_postgres::Config) -> PgResult<tokio_postgres::Client> {
    let (client, connection) = config.connect(tls_connector()).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects and applies pending migrations, nothing else (`hookd migrate`). Returns the
/// versions applied now.
pub async fn migrate(config: &StoreConfig) -> Result<Vec<i32>> {
    let pg = pg_config(config)?;
    let mut client = connect_one(&pg).await.map_err(|failure| match failure {
        Failure::Pg(err) => {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL: {}", explain(&err)))
        }
        other => other.into(),
    })?;
    schema::migrate(&mut client).await
}

fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() { "node".into() } else { host };
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

impl PostgresStore {
    /// Connects, applies pending migrations (refusing a schema newer than this binary), and
    /// starts the background tasks (LISTEN, polling, lease renewal).
    pub async fn open(config: &StoreConfig, keyring: Arc<Keyring>) -> Result<PostgresStore> {
        let pg = pg_config(config)?;
        let mut client = connect_one(&pg).await.map_err(|failure| match failure {
            Failure::Pg(err) => {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL: {}", explain(&err)))
            }
            other => other.into(),
        })?;
        schema::migrate(&mut client).await?;
        drop(client);
        let manager = Manager::from_config(
            pg.clone(),
            tls_connector(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|err| StoreError::Unavailable(format!("cannot build the pool: {err}")))?;
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool,
                keyring,
                webhooks: WebhookCache::default(),
                listener: OnceLock::new(),
                plugin_listener: OnceLock::new(),
                node: node_name(),
                lease_ms: config.lease_duration.as_millis() as u64,
                held: Mutex::default(),
                size_bytes: AtomicU64::new(0),
                stop: CancellationToken::new(),
            }),
        };
        notify::spawn_background(&store, pg, config.poll_interval);
        Ok(store)
    }

    /// This process's node name (as written in leases).
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    async fn client(&self) -> PgResult<Object> {
        Ok(self.inner.pool.get().await?)
    }

    /// Whether the server a pooled connection reaches takes writes. When it does not, every
    /// idle connection is dropped, so the next ones are opened afresh: after a failover they
    /// reach the new primary (the URL's host resolved again), and a database whose read-only
    /// default was lifted gives read-write sessions (a session keeps the default it began
    /// with). Run by `/readyz` and every [`WRITABLE_CHECK`] in the background.
    async fn writable(&self) -> Result<bool> {
        let client = self.client().await.map_err(StoreError::from)?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
                &[],
            )
            .await
            .map_err(|err| StoreError::from(Failure::from(err)))?;
        if !row.get::<_, bool>(0) {
            return Ok(true);
        }
        drop(client);
        self.inner.pool.retain(|_, _| false);
        Ok(false)
    }

    fn listener(&self) -> Option<&Arc<dyn WorkListener>> {
        self.inner.listener.get()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Uuid), i64>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs a transactional operation, again after a deadlock or serialisation failure.
macro_rules! retry_tx {
    ($op:expr) => {{
        let mut tries = 0;
        loop {
            tries += 1;
            match $op.await {
                Err(failure) if failure.is_retryable() && tries < $crate::store::postgres::MAX_TX_TRIES => {
                    tracing::warn!(error = ?failure, "transaction conflict; running it again");
                }
                other => break other.map_err(StoreError::from),
            }
        }
    }};
}
pub(super) use retry_tx;

#[async_trait::async_trait]
impl Store for PostgresStore {
    fn set_listener(&self, listener: Arc<dyn WorkListener>) {
        let _ = self.inner.listener.set(listener);
    }

    /// Every write is committed before it returns; attempt outcomes (committed without
    /// waiting for the WAL flush) are made durable by any later synchronous commit.
    async fn flush(&self) -> Result<()> {
        let client = self.client().await.map_err(StoreError::from)?;
        client
            .batch_execute("SELECT txid_current()")
            .await
            .map_err(|err| StoreError::from(Failure::from(err)))
    }

    async fn release_claims(&self) -> Result<()> {
        queue::release_claims(self).await.map_err(StoreError::from)
    }

    async fn check_ready(&self) -> Result<()> {
        answered_within(READY_ANSWER_TIMEOUT, "a readiness check", async {
            match self.writable().await? {
                true => Ok(()),
                false => Err(StoreError::Unavailable(READ_ONLY.to_string())),
            }
        })
        .await
    }

    /// The database's disk is the database's business: nothing to keep in reserve here.
    fn set_min_free_bytes(&self, _bytes: u64) {}

    fn size_on_disk(&self) -> u64 {
        self.inner.size_bytes.load(Ordering::Relaxed)
    }

    async fn reseal_webhooks(&self) -> Result<usize> {
        webhooks::reseal(self).await
    }

    async fn insert_webhook(&self, tenant: &str, webhook: &WebhookRecord) -> Result<()> {
        webhooks::insert(self, tenant, webhook).await
    }

    async fn webhook(&self, tenant: &str, id: &WebhookId) -> Result<Option<WebhookRecord>> {
        Ok(webhooks::of_tenant(self, tenant)
            .await
            .map_err(StoreError::from)?
            .iter()
            .find(|w| &w.id == id)
            .cloned())
    }

    async fn webhooks_of(&self, tenant: &str) -> Result<Arc<Vec<WebhookRecord>>> {
        webhooks::of_tenant(self, tenant).await.map_err(Into::into)
    }

    async fn list_webhooks(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<WebhookRecord>> {
        webhooks::list(self, tenant, cursor, limit)
            .await
            .map_err(Into::into)
    }

    async fn update_webhook(
        &self,
        tenant: &str,
        id: &WebhookId,
        change: WebhookChange<'_>,
    ) -> Result<Option<WebhookRecord>> {
        webhooks::update(self, tenant, id, change).await
    }

    async fn delete_webhook(&self, tenant: &str, id: &WebhookId) -> Result<bool> {
        webhooks::delete(self, tenant, id).await
    }

    async fn all_webhook_ids(&self) -> Result<Vec<(String, WebhookId)>> {
        webhooks::all_ids(self).await.map_err(Into::into)
    }

    async fn append_events(&self, group: Vec<NewEvent>) -> Result<Vec<Appended>> {
        answered_within(
            WRITE_ANSWER_TIMEOUT,
            "the write of new events (it may still commit: retry with the same idempotency key)",
            events::append(self, group),
        )
        .await
    }

    async fn event(&self, tenant: &str, id: &EventId) -> Result<Option<EventRecord>> {
        events::get(self, tenant, id).await.map_err(Into::into)
    }

    async fn list_events(
        &self,
        tenant: &str,
        filter: &EventFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<EventRecord>> {
        events::list(self, tenant, filter, cursor, limit)
            .await
            .map_err(Into::into)
    }

    async fn deliveries_of_event(
        &self,
        tenant: &str,
        event: &EventId,
    ) -> Result<Vec<DeliveryRecord>> {
        queue::deliveries_of_event(self, tenant, event)
            .await
            .map_err(Into::into)
    }

    async fn delivery(&self, tenant: &str, id: &DeliveryId) -> Result<Option<DeliveryRecord>> {
        queue::delivery(self, tenant, id).await.map_err(Into::into)
    }

    async fn list_deliveries(
        &self,
        tenant: &str,
        filter: &DeliveryFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliveryRecord>> {
        queue::list(self, tenant, filter, cursor, limit)
            .await
            .map_err(Into::into)
    }

    async fn attempts(&self, tenant: &str, delivery: &DeliveryId) -> Result<Vec<AttemptRecord>> {
        queue::attempts(self, tenant, delivery)
            .await
            .map_err(Into::into)
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
        queue::claim(
            self,
            tenant,
            webhook,
            in_flight,
            skip_due_before,
            now_ms,
            limit,
        )
        .await
        .map_err(Into::into)
    }

    async fn record_attempts(&self, outcomes: Vec<AttemptOutcome>) -> Result<Vec<Result<()>>> {
        queue::record(self, outcomes).await
    }

    async fn requeue(
        &self,
        tenant: &str,
        id: &DeliveryId,
        due_ms: u64,
    ) -> Result<Option<DeliveryRecord>> {
        queue::requeue(self, tenant, id, due_ms).await
    }

    async fn settle(
        &self,
        tenant: &str,
        id: &DeliveryId,
        status: DeliveryStatus,
        error: &str,
    ) -> Result<()> {
        queue::settle(self, tenant, id, status, error).await
    }

    async fn recover(&self, tenant: &str, webhook: &WebhookId, since_ms: u64) -> Result<usize> {
        queue::recover(self, tenant, webhook, since_ms).await
    }

    async fn schedule_counts(&self, now_ms: u64, max_entries: usize) -> Result<ScheduleCounts> {
        queue::schedule_counts(self, now_ms, max_entries)
            .await
            .map_err(Into::into)
    }

    async fn stats_days(
        &self,
        tenant: &str,
        scope: StatsScope<'_>,
        first_day: u32,
        last_day: u32,
    ) -> Result<Vec<DayStats>> {
        stats::days(self, tenant, scope, first_day, last_day)
            .await
            .map_err(Into::into)
    }

    async fn webhook_health(
        &self,
        tenant: &str,
        webhook: &WebhookId,
    ) -> Result<super::health::WebhookHealth> {
        queue::health(self, tenant, webhook)
            .await
            .map_err(Into::into)
    }

    async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage> {
        stats::usage(self, tenant).await.map_err(Into::into)
    }

    async fn purge(
        &self,
        tenant: Option<&str>,
        channel: Option<&str>,
        before_ms: u64,
        stop: &CancellationToken,
    ) -> Result<PurgeOutcome> {
        debug_assert!(
            tenant.is_some() || channel.is_none(),
            "a channel purge names its tenant"
        );
        retention::purge(self, tenant, channel, before_ms, stop)
            .await
            .map_err(Into::into)
    }

    async fn prune_stats(&self, before_day: u32) -> Result<usize> {
        retention::prune_stats(self, before_day)
            .await
            .map_err(Into::into)
    }

    fn set_plugin_listener(&self, listener: Arc<dyn PluginListener>) {
        let _ = self.inner.plugin_listener.set(listener);
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
        plugins::put_version(self, tenant, name, sha256, bytes, uploaded_by, stage).await
    }

    async fn plugin_versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginVersion>> {
        plugins::versions(self, tenant, name)
            .await
            .map_err(Into::into)
    }

    async fn plugin_head(&self, tenant: &str, name: &str) -> Result<Option<PluginHead>> {
        plugins::head(self, tenant, name).await.map_err(Into::into)
    }

    async fn plugin_bytes(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
    ) -> Result<Option<Vec<u8>>> {
        plugins::bytes(self, tenant, name, version)
            .await
            .map_err(Into::into)
    }

    async fn set_plugin_current(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
    ) -> Result<Option<PluginHead>> {
        plugins::set_current(self, tenant, name, version).await
    }

    async fn delete_plugin(&self, tenant: &str, name: &str) -> Result<bool> {
        plugins::delete(self, tenant, name).await
    }

    async fn plugin_heads(&self) -> Result<Vec<PluginHead>> {
        plugins::heads(self).await.map_err(Into::into)
    }

    async fn start_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        start: &crate::store::ShadowSummary,
    ) -> Result<bool> {
        shadow::start(self, tenant, name, start).await
    }

    async fn record_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        candidate: u64,
        case: &crate::store::ShadowCase,
    ) -> Result<crate::store::ShadowRecorded> {
        shadow::record(self, tenant, name, candidate, case).await
    }

    async fn plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<crate::store::ShadowReport>> {
        shadow::report(self, tenant, name).await.map_err(Into::into)
    }

    async fn end_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        candidate: u64,
        state: crate::store::ShadowState,
    ) -> Result<bool> {
        shadow::end(self, tenant, name, candidate, state).await
    }
}
