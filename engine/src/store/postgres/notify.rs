//! How nodes hear of each other's writes, and the background work of a node:
//!
//! - **NOTIFY** on channel `hookd`, sent inside the transaction that made work due or changed a
//!   webhook (so it is delivered exactly when that commits): `due <node> <tenant> <webhook>
//!   <due_ms>`, `webhook <node> <tenant> <webhook>` and `plugin <node> <tenant> <name>` (the
//!   plugin catalogue changed). Each node LISTENs on a connection of its own and passes them to
//!   its dispatcher (the store's [`WorkListener`](crate::store::WorkListener)), its webhook
//!   cache and its plugin host (the [`PluginListener`](crate::store::PluginListener)); a node
//!   skips its own (it told itself already).
//! - **Reconnects**: NOTIFYs sent while the LISTEN connection was down are lost, so after
//!   reconnecting a node drops its whole webhook cache, wakes every webhook and has its plugin
//!   host compare every plugin.
//! - **Plugin heads**, the plugins' safety net: every [`PLUGIN_RESYNC`] the node reads every
//!   plugin's current and candidate version and tells its plugin host of each that changed
//!   since the last reading (the first reading tells of all).
//! - **Polling**, the safety net: every `poll_interval` one query finds, per webhook, the
//!   earliest due delivery that no live lease holds — work whose NOTIFY was missed, and the
//!   deliveries of a dead node once its leases run out.
//! - **Lease renewal**: every third of the lease duration the node extends the leases it holds,
//!   so an attempt may outlast one lease; a node that cannot reach the database stops renewing
//!   and its leases run out.
//! - **Statistics**: a queue table that changed by more than twice its rows since it was last
//!   analyzed is analyzed at once (autovacuum waits a minute), so plans never take a table
//!   that grew from empty for an empty one.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::Transaction;
use futures::StreamExt as _;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::codec::{self, ms, unms};
use super::{Inner, PgResult, PostgresStore};
use crate::ids::{WebhookId, now_ms};

const CHANNEL: &str = "hookd";
/// How often a node looks for queue tables whose statistics are far behind
/// ([`refresh_statistics`]).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(2);
/// The tables the claim, the outcomes and the reads plan against.
const QUEUE_TABLES: [&str; 3] = ["deliveries", "events", "attempts"];
/// Fewest changes since the last ANALYZE that make [`refresh_statistics`] take new statistics.
const STALE_AFTER_CHANGES: i64 = 10_000;
/// Wait before connecting the LISTEN session again after it broke.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often the database size (`size_on_disk`) is read again.
const SIZE_INTERVAL: Duration = Duration::from_secs(30);
/// How often the plugin heads are compared (a missed `plugin` note is caught by then).
pub(super) const PLUGIN_RESYNC: Duration = Duration::from_secs(10);

/// (tenant, plugin) → (current, candidate) version ids, as last read.
type HeadIds = HashMap<(String, String), (u64, Option<u64>)>;

/// Sends `due` notes for (tenant, webhook, due) in `tx`.
pub(super) async fn send_due(
    tx: &Transaction<'_>,
    node: &str,
    due: Vec<(String, WebhookId, u64)>,
) -> PgResult<()> {
    if due.is_empty() {
        return Ok(());
    }
    let notes: Vec<String> = due
        .iter()
        .map(|(tenant, webhook, at)| format!("due {node} {tenant} {webhook} {at}"))
        .collect();
    send(tx, &notes).await
}

pub(super) async fn send_webhook_changed(
    tx: &Transaction<'_>,
    node: &str,
    tenant: &str,
    webhook: &WebhookId,
) -> PgResult<()> {
    send(tx, &[format!("webhook {node} {tenant} {webhook}")]).await
}

pub(super) async fn send_plugin_changed(
    tx: &Transaction<'_>,
    node: &str,
    tenant: &str,
    name: &str,
) -> PgResult<()> {
    send(tx, &[format!("plugin {node} {tenant} {name}")]).await
}

async fn send(tx: &Transaction<'_>, notes: &[String]) -> PgResult<()> {
    let statement = tx
        .prepare_cached("SELECT pg_notify($1, note) FROM unnest($2::text[]) AS note")
        .await?;
    tx.execute(&statement, &[&CHANNEL, &notes]).await?;
    Ok(())
}

/// Acts on one note from another node.
fn receive(store: &PostgresStore, note: &str) {
    let parts: Vec<&str> = note.split(' ').collect();
    let (kind, node, tenant, subject) = match parts.as_slice() {
        [kind, node, tenant, subject, ..] => (*kind, *node, *tenant, *subject),
        _ => return,
    };
    let own = node == store.inner.node;
    if kind == "plugin" {
        if !own && let Some(listener) = store.inner.plugin_listener.get() {
            listener.plugin_changed(tenant, subject);
        }
        return;
    }
    let Some(webhook) = WebhookId::parse(subject) else {
        return;
    };
    match (kind, parts.get(4)) {
        ("due", Some(at)) if !own => {
            if let (Ok(at), Some(listener)) = (at.parse::<u64>(), store.listener()) {
                listener.due(tenant, &webhook, at);
            }
        }
        ("webhook", _) if !own => {
            store.inner.webhooks.invalidate(tenant);
            if let Some(listener) = store.listener() {
                listener.webhook_changed(tenant, &webhook);
            }
        }
        _ => {}
    }
}

/// Starts the LISTEN session and the maintenance loop; both end when the store is dropped.
pub(super) fn spawn_background(
    store: &PostgresStore,
    config: tokio_postgres::Config,
    poll_interval: Duration,
) {
    let stop = store.inner.stop.clone();
    tokio::spawn(listen(Arc::downgrade(&store.inner), config, stop.clone()));
    tokio::spawn(maintain(Arc::downgrade(&store.inner), poll_interval, stop));
}

fn upgrade(inner: &Weak<Inner>) -> Option<PostgresStore> {
    inner.upgrade().map(|inner| PostgresStore { inner })
}

async fn listen(inner: Weak<Inner>, config: tokio_postgres::Config, stop: CancellationToken) {
    let mut sessions = 0u64;
    loop {
        let session = listen_session(&inner, &config, sessions > 0);
        tokio::select! {
            _ = stop.cancelled() => return,
            connected = session => if connected { sessions += 1 },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

/// One LISTEN connection, until it breaks. Returns whether it connected.
async fn listen_session(
    inner: &Weak<Inner>,
    config: &tokio_postgres::Config,
    reconnected: bool,
) -> bool {
    let (client, mut connection) = match config.connect(super::tls_connector()).await {
        Ok(pair) => pair,
        Err(err) => {
            debug!(error = %err, "LISTEN connection failed; trying again");
            return false;
        }
    };
    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    let _ = notes_tx.send(note.payload().to_string());
                }
                Ok(_) => {}
                Err(err) => {
                    warn!(error = %err, "LISTEN connection lost; other nodes' changes are picked up after reconnecting");
                    break;
                }
            }
        }
    });
    if let Err(err) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        warn!(error = %err, "LISTEN failed");
        driver.abort();
        return true;
    }
    if reconnected && let Some(store) = upgrade(inner) {
        info!("LISTEN connection back: re-reading webhooks and waking every queue");
        catch_up(&store).await;
    }
    while let Some(note) = notes.recv().await {
        let Some(store) = upgrade(inner) else { break };
        receive(&store, &note);
    }
    driver.abort();
    drop(client);
    true
}

/// After notes may have been missed: forget every cached webhook, wake every queue, and have
/// the plugin host compare every plugin.
async fn catch_up(store: &PostgresStore) {
    store.inner.webhooks.invalidate_all();
    if let Some(plugins) = store.inner.plugin_listener.get() {
        match super::plugins::heads(store).await {
            Ok(heads) => {
                for head in heads {
                    plugins.plugin_changed(&head.tenant, &head.name);
                }
            }
            Err(err) => {
                warn!(error = ?err, "could not read the plugin heads after reconnecting; the next comparison will")
            }
        }
    }
    let Some(listener) = store.listener() else {
        return;
    };
    match super::webhooks::all_ids(store).await {
        Ok(ids) => {
            for (tenant, webhook) in ids {
                listener.webhook_changed(&tenant, &webhook);
            }
        }
        Err(err) => {
            warn!(error = ?err, "could not list webhooks after reconnecting; polling will find due work")
        }
    }
}

async fn maintain(inner: Weak<Inner>, poll_interval: Duration, stop: CancellationToken) {
    let Some(lease_ms) = inner.upgrade().map(|inner| inner.lease_ms) else {
        return;
    };
    let mut poll = tokio::time::interval(poll_interval);
    let mut renew = tokio::time::interval(Duration::from_millis((lease_ms / 3).max(100)));
    let mut size = tokio::time::interval(SIZE_INTERVAL);
    let mut plugins = tokio::time::interval(PLUGIN_RESYNC);
    let mut statistics = tokio::time::interval(STATISTICS_INTERVAL);
    let mut writable = tokio::time::interval(super::WRITABLE_CHECK);
    let mut read_only = false;
    let mut heads_seen: Option<HeadIds> = None;
    for interval in [
        &mut poll,
        &mut renew,
        &mut size,
        &mut plugins,
        &mut statistics,
        &mut writable,
    ] {
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = poll.tick() => {
                let Some(store) = upgrade(&inner) else { return };
                if let Err(err) = poll_due(&store).await {
                    debug!(error = ?err, "polling for due work failed; trying again");
                }
            }
            _ = renew.tick() => {
                let Some(store) = upgrade(&inner) else { return };
                if let Err(err) = renew_leases(&store).await {
                    warn!(error = ?err, "could not renew leases; they run out unless renewed in time");
                }
            }
            _ = plugins.tick() => {
                let Some(store) = upgrade(&inner) else { return };
                if let Err(err) = compare_plugin_heads(&store, &mut heads_seen).await {
                    debug!(error = ?err, "comparing plugin heads failed; trying again");
                }
            }
            _ = writable.tick() => {
                let Some(store) = upgrade(&inner) else { return };
                match store.writable().await {
                    Ok(false) => {
                        if !read_only {
                            warn!("{}", super::READ_ONLY);
                        }
                        read_only = true;
                    }
                    Ok(true) if read_only => {
                        info!("PostgreSQL takes writes again");
                        read_only = false;
                    }
                    _ => {}
                }
            }
            _ = statistics.tick() => {
                let Some(store) = upgrade(&inner) else { return };
                if let Err(err) = refresh_statistics(&store).await {
                    debug!(error = ?err, "could not refresh the planner's statistics; autovacuum will");
                }
            }
            _ = size.tick() => {
                let Some(store) = upgrade(&inner) else { return };
                if let Ok(client) = store.client().await
                    && let Ok(row) = client
                        .query_one("SELECT pg_database_size(current_database())", &[])
                        .await
                {
                    let bytes: i64 = row.get(0);
                    store.inner.size_bytes.store(unms(bytes), std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

/// ANALYZEs each queue table that changed by more than twice its rows (and at least
/// [`STALE_AFTER_CHANGES`]) since the planner's statistics were last taken. Autovacuum does so
/// too, but only after its nap (a minute by default) and 10 % of the rows: until then a table
/// that grew from empty is planned as if still empty, and the cached plans of the claim and of
/// the key lookups pick any index on `tenant` and read every row of it (seen: 20k rows read per
/// claim in the first minute of a database). ANALYZE also makes those plans be made again.
async fn refresh_statistics(store: &PostgresStore) -> PgResult<()> {
    let client = store.client().await?;
    let stale = client
        .query(
            "SELECT s.relname::text FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
              WHERE s.schemaname = current_schema() AND s.relname = ANY ($1)
                AND s.n_mod_since_analyze > greatest($2::bigint, (2 * c.reltuples)::bigint)",
            &[&QUEUE_TABLES.as_slice(), &STALE_AFTER_CHANGES],
        )
        .await?;
    for row in stale {
        let table: String = row.try_get(0)?;
        // Only names of QUEUE_TABLES come back.
        if let Some(table) = QUEUE_TABLES.iter().find(|known| **known == table) {
            client.batch_execute(&format!("ANALYZE {table}")).await?;
            debug!(table, "analyzed: its statistics were far behind its rows");
        }
    }
    Ok(())
}

/// Reads every plugin's head and tells the plugin host of each one that differs from `seen`
/// (all of them at the first reading, when `seen` is `None`), then remembers this reading.
async fn compare_plugin_heads(store: &PostgresStore, seen: &mut Option<HeadIds>) -> PgResult<()> {
    let Some(listener) = store.inner.plugin_listener.get() else {
        return Ok(());
    };
    let now: HeadIds = super::plugins::heads(store)
        .await?
        .into_iter()
        .map(|head| {
            let ids = (head.current.id, head.candidate.map(|c| c.id));
            ((head.tenant, head.name), ids)
        })
        .collect();
    let before = seen.take().unwrap_or_default();
    for (key, ids) in &now {
        if before.get(key) != Some(ids) {
            listener.plugin_changed(&key.0, &key.1);
        }
    }
    for key in before.keys().filter(|key| !now.contains_key(*key)) {
        listener.plugin_changed(&key.0, &key.1);
    }
    *seen = Some(now);
    Ok(())
}

/// Per webhook, the earliest due delivery no live lease holds (`hookd_due_webhooks`, migration
/// 6); tells the dispatcher.
async fn poll_due(store: &PostgresStore) -> PgResult<()> {
    let Some(listener) = store.listener() else {
        return Ok(());
    };
    let client = store.client().await?;
    let statement = client
        .prepare_cached("SELECT tenant, webhook_id, due FROM hookd_due_webhooks($1)")
        .await?;
    for row in client.query(&statement, &[&ms(now_ms())]).await? {
        let tenant: String = row.try_get(0)?;
        let webhook: WebhookId = codec::id(row.try_get(1)?);
        listener.due(&tenant, &webhook, unms(row.try_get(2)?));
    }
    Ok(())
}

/// Extends every lease this node holds (rows being written right now are skipped: their
/// outcome ends the lease anyway).
async fn renew_leases(store: &PostgresStore) -> PgResult<()> {
    let held: Vec<((String, Uuid), i64)> = store
        .held()
        .iter()
        .map(|(key, token)| (key.clone(), *token))
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = held.iter().map(|((t, _), _)| t.as_str()).collect();
    let ids: Vec<Uuid> = held.iter().map(|((_, id), _)| *id).collect();
    let tokens: Vec<i64> = held.iter().map(|(_, token)| *token).collect();
    let until = ms(now_ms().saturating_add(store.inner.lease_ms));
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    let statement = tx
        .prepare_cached(
            "WITH mine AS (
                 SELECT d.tenant, d.id FROM deliveries d
                   JOIN unnest($1::text[], $2::uuid[], $3::bigint[]) AS u(tenant, id, token)
                     ON d.tenant = u.tenant AND d.id = u.id
                  WHERE d.lease_node = $4 AND d.lease_token = u.token
                  ORDER BY d.tenant, d.id
                    FOR UPDATE OF d SKIP LOCKED
             )
             UPDATE deliveries d SET lease_until = $5
               FROM mine WHERE d.tenant = mine.tenant AND d.id = mine.id",
        )
        .await?;
    tx.execute(
        &statement,
        &[&tenants, &ids, &tokens, &store.inner.node, &until],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
