//! Webhooks in PostgreSQL: one row per webhook holding its `WebhookRecord` as JSON, secrets and
//! credential headers sealed (`store/sealing.rs`). Reads for fan-out and attempts come
//! from the node's [`WebhookCache`](crate::store::cache::WebhookCache); every write drops the
//! tenant's entry here and, through a NOTIFY sent in the same transaction, on every other node.

use std::sync::Arc;

use deadpool_postgres::Transaction;

use super::codec::{self, cursor};
use super::{PgResult, PostgresStore, notify, queue, retry_tx};
use crate::ids::WebhookId;
use crate::store::{
    DeliveryStatus, Page, Result, StoreError, WebhookChange, WebhookRecord, sealing,
};

/// The stored JSON of a webhook (`store/sealing.rs`): every secret and credential header
/// sealed. The plaintext is never serialised.
fn encode(store: &PostgresStore, tenant: &str, webhook: &WebhookRecord) -> String {
    let stored = sealing::stored_form(&store.inner.keyring, tenant, webhook);
    serde_json::to_string(&stored).expect("webhook records serialise")
}

fn decode(text: &str) -> PgResult<WebhookRecord> {
    serde_json::from_str(text).map_err(codec::corrupt)
}

/// Opens every sealed value (a record from before sealing has its plaintext already).
fn open_secrets(store: &PostgresStore, tenant: &str, webhook: &mut WebhookRecord) -> Result<()> {
    sealing::open(&store.inner.keyring, tenant, webhook)
}

/// Every webhook of a tenant, secrets opened, from the cache or read once into it.
pub(super) async fn of_tenant(
    store: &PostgresStore,
    tenant: &str,
) -> PgResult<Arc<Vec<WebhookRecord>>> {
    let cache = &store.inner.webhooks;
    let (cached, generation) = cache.get(tenant);
    if let Some(webhooks) = cached {
        return Ok(webhooks);
    }
    let client = store.client().await?;
    let statement = client
        .prepare_cached("SELECT record::text FROM webhooks WHERE tenant = $1 ORDER BY id")
        .await?;
    let mut webhooks = Vec::new();
    for row in client.query(&statement, &[&tenant]).await? {
        let mut webhook = decode(row.try_get(0)?)?;
        open_secrets(store, tenant, &mut webhook)?;
        webhooks.push(webhook);
    }
    let webhooks = Arc::new(webhooks);
    cache.put(tenant, generation, webhooks.clone());
    Ok(webhooks)
}

/// After a committed webhook write: this node's cache and dispatcher (others hear the NOTIFY).
fn changed(store: &PostgresStore, tenant: &str, id: &WebhookId) {
    store.inner.webhooks.invalidate(tenant);
    if let Some(listener) = store.listener() {
        listener.webhook_changed(tenant, id);
    }
}

pub(super) async fn insert(
    store: &PostgresStore,
    tenant: &str,
    webhook: &WebhookRecord,
) -> Result<()> {
    let record = encode(store, tenant, webhook);
    retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO webhooks (tenant, id, record) VALUES ($1, $2, $3::text::jsonb)",
            &[&tenant, &codec::uuid(&webhook.id), &record],
        )
        .await?;
        notify::send_webhook_changed(&tx, &store.inner.node, tenant, &webhook.id).await?;
        tx.commit().await?;
        PgResult::Ok(())
    })?;
    changed(store, tenant, &webhook.id);
    Ok(())
}

pub(super) async fn list(
    store: &PostgresStore,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
) -> PgResult<Page<WebhookRecord>> {
    let mut query = codec::Filtered::new(
        "SELECT record::text FROM webhooks WHERE tenant = $1".to_string(),
        tenant,
    );
    if let Some(before) = cursor::<WebhookId>(after) {
        query.and("id <", before);
    }
    query
        .newest_first(
            store,
            limit,
            |row| decode(row.try_get(0)?),
            |w: &WebhookRecord| w.id.to_string(),
        )
        .await
}

pub(super) async fn update(
    store: &PostgresStore,
    tenant: &str,
    id: &WebhookId,
    change: WebhookChange<'_>,
) -> Result<Option<WebhookRecord>> {
    let updated = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT record::text FROM webhooks WHERE tenant = $1 AND id = $2 FOR UPDATE",
                &[&tenant, &codec::uuid(id)],
            )
            .await?;
        let Some(row) = row else {
            return PgResult::Ok(None);
        };
        let mut record = decode(row.try_get(0)?)?;
        open_secrets(store, tenant, &mut record)?;
        change(&mut record);
        tx.execute(
            "UPDATE webhooks SET record = $3::text::jsonb WHERE tenant = $1 AND id = $2",
            &[&tenant, &codec::uuid(id), &encode(store, tenant, &record)],
        )
        .await?;
        notify::send_webhook_changed(&tx, &store.inner.node, tenant, id).await?;
        tx.commit().await?;
        PgResult::Ok(Some(record))
    })?;
    if updated.is_some() {
        changed(store, tenant, id);
    }
    Ok(updated)
}

pub(super) async fn delete(store: &PostgresStore, tenant: &str, id: &WebhookId) -> Result<bool> {
    let deleted = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let removed = tx
            .execute(
                "DELETE FROM webhooks WHERE tenant = $1 AND id = $2",
                &[&tenant, &codec::uuid(id)],
            )
            .await?;
        if removed == 0 {
            return PgResult::Ok(false);
        }
        end_queue(&tx, tenant, id).await?;
        for table in ["webhook_rate", "webhook_health"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE tenant = $1 AND webhook_id = $2"),
                &[&tenant, &codec::uuid(id)],
            )
            .await?;
        }
        notify::send_webhook_changed(&tx, &store.inner.node, tenant, id).await?;
        tx.commit().await?;
        PgResult::Ok(true)
    })?;
    if deleted {
        changed(store, tenant, id);
    }
    Ok(deleted)
}

/// Ends a deleted webhook's queued deliveries as failed (`webhook_deleted`).
async fn end_queue(tx: &Transaction<'_>, tenant: &str, id: &WebhookId) -> PgResult<()> {
    queue::change_where(
        tx,
        tenant,
        "d.webhook_id = $6 AND d.next_attempt_at IS NOT NULL",
        &[&codec::uuid(id)],
        DeliveryStatus::Failed,
        None,
        Some("webhook_deleted"),
    )
    .await?;
    Ok(())
}

pub(super) async fn all_ids(store: &PostgresStore) -> PgResult<Vec<(String, WebhookId)>> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached("SELECT tenant, id FROM webhooks ORDER BY tenant, id")
        .await?;
    client
        .query(&statement, &[])
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, codec::id(row.try_get(1)?))))
        .collect()
}

/// Seals plaintext secrets and re-seals secrets under a previous key; every secret is opened
/// on the way, so a key that opens nothing fails here. Nodes starting together may both
/// re-seal a webhook: each writes a valid sealing, and the last one stays.
pub(super) async fn reseal(store: &PostgresStore) -> Result<usize> {
    let rows = {
        let client = store.client().await.map_err(StoreError::from)?;
        client
            .query("SELECT tenant, id, record::text FROM webhooks", &[])
            .await
            .map_err(|err| StoreError::from(super::Failure::from(err)))?
    };
    let mut rewritten = 0;
    for row in rows {
        let tenant: String = row.get(0);
        let id: uuid::Uuid = row.get(1);
        let text: String = row.get(2);
        let mut webhook = decode(&text).map_err(StoreError::from)?;
        let stale = sealing::needs_reseal(&store.inner.keyring, &webhook);
        open_secrets(store, &tenant, &mut webhook)?;
        if !stale {
            continue;
        }
        let client = store.client().await.map_err(StoreError::from)?;
        client
            .execute(
                "UPDATE webhooks SET record = $3::text::jsonb
                  WHERE tenant = $1 AND id = $2 AND record = $4::text::jsonb",
                &[&tenant, &id, &encode(store, &tenant, &webhook), &text],
            )
            .await
            .map_err(|err| StoreError::from(super::Failure::from(err)))?;
        store.inner.webhooks.invalidate(&tenant);
        rewritten += 1;
    }
    Ok(rewritten)
}
