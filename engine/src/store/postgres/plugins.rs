//! The plugin catalogue in PostgreSQL (schema 4): `plugins` (one row per name: current and
//! candidate version, next version id) and `plugin_versions` (each version with its component
//! bytes). Every write sends `plugin <node> <tenant> <name>` in its transaction, so every node
//! hears of it when it commits (`notify.rs`); this node's listener is told right after the
//! commit.

use std::collections::HashSet;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::codec::{ms, unms};
use super::{PgResult, PostgresStore, notify, retry_tx};
use crate::ids::now_ms;
use crate::store::{PluginHead, PluginStage, PluginVersion, Result, StoreError, versions_to_drop};

/// The columns [`version`] reads, in order.
const VERSION_COLUMNS: &str = "id, sha256, size, created_at, uploaded_by";

fn version(row: &Row) -> PgResult<PluginVersion> {
    Ok(PluginVersion {
        id: unms(row.try_get(0)?),
        sha256: row.try_get(1)?,
        size: unms(row.try_get(2)?),
        created_at: unms(row.try_get(3)?),
        uploaded_by: row.try_get(4)?,
    })
}

/// The head row of a plugin, locked: (current, candidate, next id), current 0 when the row
/// was created by this transaction.
async fn lock_head(
    tx: &Transaction<'_>,
    tenant: &str,
    name: &str,
) -> PgResult<Option<(i64, Option<i64>, i64)>> {
    let row = tx
        .query_opt(
            "SELECT current_version, candidate_version, next_version FROM plugins
              WHERE tenant = $1 AND name = $2 FOR UPDATE",
            &[&tenant, &name],
        )
        .await?;
    Ok(match row {
        Some(row) => Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)),
        None => None,
    })
}

async fn version_of(
    tx: &Transaction<'_>,
    tenant: &str,
    name: &str,
    id: i64,
) -> PgResult<Option<PluginVersion>> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM plugin_versions
                  WHERE tenant = $1 AND name = $2 AND id = $3"
            ),
            &[&tenant, &name, &id],
        )
        .await?;
    row.as_ref().map(version).transpose()
}

/// Versions of `name` that a webhook of the tenant pins (JSON of the webhook records).
async fn pinned(tx: &Transaction<'_>, tenant: &str, name: &str) -> PgResult<HashSet<u64>> {
    let rows = tx
        .query(
            "SELECT DISTINCT (p->>'version')::bigint FROM webhooks w,
                    jsonb_array_elements(w.record->'plugins') AS p
              WHERE w.tenant = $1 AND p->>'name' = $2
                AND jsonb_typeof(p->'version') = 'number'",
            &[&tenant, &name],
        )
        .await?;
    rows.iter().map(|row| Ok(unms(row.try_get(0)?))).collect()
}

/// Drops the versions past the kept history (see [`versions_to_drop`]).
async fn prune(
    tx: &Transaction<'_>,
    tenant: &str,
    name: &str,
    current: i64,
    candidate: Option<i64>,
) -> PgResult<()> {
    let ids: Vec<u64> = tx
        .query(
            "SELECT id FROM plugin_versions WHERE tenant = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await?
        .iter()
        .map(|row| Ok(unms(row.try_get(0)?)))
        .collect::<PgResult<_>>()?;
    let pinned = pinned(tx, tenant, name).await?;
    let dropped: Vec<i64> = versions_to_drop(&ids, unms(current), candidate.map(unms), &pinned)
        .into_iter()
        .map(ms)
        .collect();
    if !dropped.is_empty() {
        tx.execute(
            "DELETE FROM plugin_versions WHERE tenant = $1 AND name = $2 AND id = ANY($3)",
            &[&tenant, &name, &dropped],
        )
        .await?;
    }
    Ok(())
}

fn changed(store: &PostgresStore, tenant: &str, name: &str) {
    if let Some(listener) = store.inner.plugin_listener.get() {
        listener.plugin_changed(tenant, name);
    }
}

pub(super) async fn put_version(
    store: &PostgresStore,
    tenant: &str,
    name: &str,
    sha256: &str,
    bytes: &[u8],
    uploaded_by: &str,
    stage: PluginStage,
) -> Result<PluginVersion> {
    let (version, wrote) = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let now = ms(now_ms());
        tx.execute(
            "INSERT INTO plugins (tenant, name, current_version, next_version, created_at, updated_at)
             VALUES ($1, $2, 0, 1, $3, $3) ON CONFLICT DO NOTHING",
            &[&tenant, &name, &now],
        )
        .await?;
        let Some((current, candidate, id)) = lock_head(&tx, tenant, name).await? else {
            return Err(super::Failure::Store(StoreError::Io(
                "the plugin row vanished inside its transaction".into(),
            )));
        };
        if current != 0
            && stage == PluginStage::Current
            && let Some(live) = version_of(&tx, tenant, name, current).await?
            && live.sha256 == sha256
        {
            tx.commit().await?;
            return PgResult::Ok((live, false));
        }
        let size = ms(bytes.len() as u64);
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO plugin_versions
                         (tenant, name, id, sha256, size, created_at, uploaded_by, bytes)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     RETURNING {VERSION_COLUMNS}"
                ),
                &[
                    &tenant,
                    &name,
                    &id,
                    &sha256,
                    &size,
                    &now,
                    &uploaded_by,
                    &bytes,
                ],
            )
            .await?;
        let stored = version(&row)?;
        let (current, candidate) = match stage {
            PluginStage::Candidate if current != 0 => (current, Some(id)),
            _ => (id, candidate),
        };
        tx.execute(
            "UPDATE plugins SET current_version = $3, candidate_version = $4,
                    next_version = $5,
                    updated_at = CASE WHEN current_version = $3 THEN updated_at ELSE $6 END
              WHERE tenant = $1 AND name = $2",
            &[&tenant, &name, &current, &candidate, &(id + 1), &now],
        )
        .await?;
        prune(&tx, tenant, name, current, candidate).await?;
        notify::send_plugin_changed(&tx, &store.inner.node, tenant, name).await?;
        tx.commit().await?;
        PgResult::Ok((stored, true))
    })?;
    if wrote {
        changed(store, tenant, name);
    }
    Ok(version)
}

pub(super) async fn versions(
    store: &PostgresStore,
    tenant: &str,
    name: &str,
) -> PgResult<Vec<PluginVersion>> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM plugin_versions
              WHERE tenant = $1 AND name = $2 ORDER BY id DESC"
        ))
        .await?;
    client
        .query(&statement, &[&tenant, &name])
        .await?
        .iter()
        .map(version)
        .collect()
}

/// Heads of every plugin (`None`: every tenant) or of one.
async fn heads_where(
    store: &PostgresStore,
    only: Option<(&str, &str)>,
) -> PgResult<Vec<PluginHead>> {
    let client = store.client().await?;
    let columns = "p.tenant, p.name, p.created_at, p.updated_at, \
         c.id, c.sha256, c.size, c.created_at, c.uploaded_by, \
         k.id, k.sha256, k.size, k.created_at, k.uploaded_by";
    let from = "plugins p
         JOIN plugin_versions c
           ON c.tenant = p.tenant AND c.name = p.name AND c.id = p.current_version
         LEFT JOIN plugin_versions k
           ON k.tenant = p.tenant AND k.name = p.name AND k.id = p.candidate_version";
    let rows = match only {
        Some((tenant, name)) => {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {columns} FROM {from} WHERE p.tenant = $1 AND p.name = $2"
                ))
                .await?;
            client.query(&statement, &[&tenant, &name]).await?
        }
        None => {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {columns} FROM {from} ORDER BY p.tenant, p.name"
                ))
                .await?;
            client.query(&statement, &[]).await?
        }
    };
    rows.iter()
        .map(|row| {
            let at = |i: usize| -> PgResult<PluginVersion> {
                Ok(PluginVersion {
                    id: unms(row.try_get(i)?),
                    sha256: row.try_get(i + 1)?,
                    size: unms(row.try_get(i + 2)?),
                    created_at: unms(row.try_get(i + 3)?),
                    uploaded_by: row.try_get(i + 4)?,
                })
            };
            let candidate: Option<i64> = row.try_get(9)?;
            Ok(PluginHead {
                tenant: row.try_get(0)?,
                name: row.try_get(1)?,
                created_at: unms(row.try_get(2)?),
                updated_at: unms(row.try_get(3)?),
                current: at(4)?,
                candidate: candidate.map(|_| at(9)).transpose()?,
            })
        })
        .collect()
}

pub(super) async fn head(
    store: &PostgresStore,
    tenant: &str,
    name: &str,
) -> PgResult<Option<PluginHead>> {
    Ok(heads_where(store, Some((tenant, name))).await?.pop())
}

pub(super) async fn heads(store: &PostgresStore) -> PgResult<Vec<PluginHead>> {
    heads_where(store, None).await
}

pub(super) async fn bytes(
    store: &PostgresStore,
    tenant: &str,
    name: &str,
    id: u64,
) -> PgResult<Option<Vec<u8>>> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT bytes FROM plugin_versions WHERE tenant = $1 AND name = $2 AND id = $3",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&tenant, &name, &ms(id)])
        .await?;
    row.map(|row| row.try_get(0))
        .transpose()
        .map_err(Into::into)
}

pub(super) async fn set_current(
    store: &PostgresStore,
    tenant: &str,
    name: &str,
    id: u64,
) -> Result<Option<PluginHead>> {
    let moved = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let Some((current, _, _)) = lock_head(&tx, tenant, name).await? else {
            return PgResult::Ok(None);
        };
        if version_of(&tx, tenant, name, ms(id)).await?.is_none() {
            return PgResult::Ok(None);
        }
        if current == ms(id) {
            return PgResult::Ok(Some(false));
        }
        tx.execute(
            "UPDATE plugins SET current_version = $3, updated_at = $4,
                    candidate_version = NULLIF(candidate_version, $3)
              WHERE tenant = $1 AND name = $2",
            &[&tenant, &name, &ms(id), &ms(now_ms())],
        )
        .await?;
        notify::send_plugin_changed(&tx, &store.inner.node, tenant, name).await?;
        tx.commit().await?;
        PgResult::Ok(Some(true))
    })?;
    match moved {
        None => Ok(None),
        Some(wrote) => {
            if wrote {
                changed(store, tenant, name);
            }
            head(store, tenant, name).await.map_err(StoreError::from)
        }
    }
}

pub(super) async fn delete(store: &PostgresStore, tenant: &str, name: &str) -> Result<bool> {
    let deleted = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let removed = tx
            .execute(
                "DELETE FROM plugins WHERE tenant = $1 AND name = $2",
                &[&tenant, &name],
            )
            .await?;
        if removed == 0 {
            return PgResult::Ok(false);
        }
        notify::send_plugin_changed(&tx, &store.inner.node, tenant, name).await?;
        tx.commit().await?;
        PgResult::Ok(true)
    })?;
    if deleted {
        changed(store, tenant, name);
    }
    Ok(deleted)
}
