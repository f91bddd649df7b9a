//! Shadow runs of candidate plugin versions in PostgreSQL (schema 5): `plugin_shadows` (one
//! row per plugin name: the report's summary as JSON) and `plugin_shadow_cases` (its first
//! differing cases). A compared attempt locks the summary row, counts itself
//! ([`ShadowSummary::count`]) and writes it back, so counts from every node add up exactly and
//! stop at the planned number. Starting and ending a run send `plugin <node> <tenant> <name>`
//! like a catalogue change, so every node hears of it.

use deadpool_postgres::Transaction;

use super::codec::corrupt;
use super::{PgResult, PostgresStore, notify, retry_tx};
use crate::ids::now_ms;
use crate::store::{
    Result, ShadowCase, ShadowRecorded, ShadowReport, ShadowState, ShadowSummary, StoreError,
};

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("shadow records serialise")
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> PgResult<T> {
    serde_json::from_str(text).map_err(corrupt)
}

/// The plugin's summary, locked for this transaction.
async fn lock_summary(
    tx: &Transaction<'_>,
    tenant: &str,
    name: &str,
) -> PgResult<Option<ShadowSummary>> {
    let row = tx
        .query_opt(
            "SELECT summary::text FROM plugin_shadows
              WHERE tenant = $1 AND name = $2 FOR UPDATE",
            &[&tenant, &name],
        )
        .await?;
    row.map(|row| parse(row.try_get::<_, &str>(0)?)).transpose()
}

async fn write_summary(
    tx: &Transaction<'_>,
    tenant: &str,
    name: &str,
    summary: &ShadowSummary,
) -> PgResult<()> {
    tx.execute(
        "UPDATE plugin_shadows SET summary = $3::text::jsonb WHERE tenant = $1 AND name = $2",
        &[&tenant, &name, &json(summary)],
    )
    .await?;
    Ok(())
}

fn changed(store: &PostgresStore, tenant: &str, name: &str) {
    if let Some(listener) = store.inner.plugin_listener.get() {
        listener.plugin_changed(tenant, name);
    }
}

pub(super) async fn start(
    store: &PostgresStore,
    tenant: &str,
    name: &str,
    start: &ShadowSummary,
) -> Result<bool> {
    let started = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM plugins WHERE tenant = $1 AND name = $2 FOR UPDATE",
                &[&tenant, &name],
            )
            .await?
            .is_some();
        if !exists {
            return PgResult::Ok(false);
        }
        tx.execute(
            "DELETE FROM plugin_shadows WHERE tenant = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await?;
        tx.execute(
            "INSERT INTO plugin_shadows (tenant, name, summary) VALUES ($1, $2, $3::text::jsonb)",
            &[&tenant, &name, &json(start)],
        )
        .await?;
        notify::send_plugin_changed(&tx, &store.inner.node, tenant, name).await?;
        tx.commit().await?;
        PgResult::Ok(true)
    })?;
    if started {
        changed(store, tenant, name);
    }
    Ok(started)
}

pub(super) async fn record(
    store: &PostgresStore,
    tenant: &str,
    name: &str,
    candidate: u64,
    case: &ShadowCase,
) -> Result<ShadowRecorded> {
    retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        let Some(mut summary) = lock_summary(&tx, tenant, name).await? else {
            return PgResult::Ok(ShadowRecorded::NotRunning);
        };
        let recorded = summary.count(candidate, case, now_ms());
        let ShadowRecorded::Counted { keep, complete } = recorded else {
            return PgResult::Ok(recorded);
        };
        if keep {
            let seq = i32::try_from(summary.counts.differing - 1).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO plugin_shadow_cases (tenant, name, seq, record)
                 VALUES ($1, $2, $3, $4::text::jsonb)",
                &[&tenant, &name, &seq, &json(case)],
            )
            .await?;
        }
        write_summary(&tx, tenant, name, &summary).await?;
        if complete {
            // Every node stops comparing.
            notify::send_plugin_changed(&tx, &store.inner.node, tenant, name).await?;
        }
        tx.commit().await?;
        PgResult::Ok(recorded)
    })
    .inspect(|recorded| {
        if matches!(recorded, ShadowRecorded::Counted { complete: true, .. }) {
            changed(store, tenant, name);
        }
    })
}

pub(super) async fn report(
    store: &PostgresStore,
    tenant: &str,
    name: &str,
) -> PgResult<Option<ShadowReport>> {
    let client = store.client().await?;
    let Some(row) = client
        .query_opt(
            "SELECT summary::text FROM plugin_shadows WHERE tenant = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await?
    else {
        return Ok(None);
    };
    let summary = parse(row.try_get::<_, &str>(0)?)?;
    let cases = client
        .query(
            "SELECT record::text FROM plugin_shadow_cases
              WHERE tenant = $1 AND name = $2 ORDER BY seq",
            &[&tenant, &name],
        )
        .await?
        .iter()
        .map(|row| parse(row.try_get::<_, &str>(0)?))
        .collect::<PgResult<Vec<ShadowCase>>>()?;
    Ok(Some(ShadowReport { summary, cases }))
}

pub(super) async fn end(
    store: &PostgresStore,
    tenant: &str,
    name: &str,
    candidate: u64,
    state: ShadowState,
) -> Result<bool> {
    let ended = retry_tx!(async {
        let mut client = store.client().await?;
        let tx = client.transaction().await?;
        // The catalogue row first, in the order every catalogue write locks.
        tx.query_opt(
            "SELECT 1 FROM plugins WHERE tenant = $1 AND name = $2 FOR UPDATE",
            &[&tenant, &name],
        )
        .await?;
        let mut wrote = false;
        if let Some(mut summary) = lock_summary(&tx, tenant, name).await?
            && summary.end(candidate, state, now_ms())
        {
            write_summary(&tx, tenant, name, &summary).await?;
            wrote = true;
        }
        if state == ShadowState::Discarded {
            let cleared = tx
                .execute(
                    "UPDATE plugins SET candidate_version = NULL
                      WHERE tenant = $1 AND name = $2 AND candidate_version = $3",
                    &[&tenant, &name, &super::codec::ms(candidate)],
                )
                .await?;
            wrote |= cleared > 0;
        }
        if !wrote {
            return PgResult::Ok(false);
        }
        notify::send_plugin_changed(&tx, &store.inner.node, tenant, name).await?;
        tx.commit().await?;
        PgResult::Ok(true)
    })?;
    if ended {
        changed(store, tenant, name);
    }
    Ok(ended)
}
