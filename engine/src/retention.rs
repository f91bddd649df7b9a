//! Retention: the background task that purges old records every `limits.retention_interval`,
//! and the purge loop it shares with `DELETE /v1/deliveries?before=`.
//!
//! What goes and what never goes is the store's business (`store/retention.rs`: finished
//! deliveries and their attempts, events without a queued delivery; never a pending or
//! in-flight one). This module only drives it: tenant by tenant, one bounded batch at a time on
//! the blocking pool, yielding between batches so the store is never held for long and the
//! reactor is never blocked. Statistics counters are kept; only counter days older than any
//! stats query can read are dropped.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::SharedConfig;
use crate::ids::{EventId, now_ms};
use crate::store::stats::{STATS_HORIZON_DAYS, day_of};
use crate::store::{PurgeOutcome, Store, StoreError};

/// Keys one purge batch removes at most (one sled transaction).
pub const PURGE_BATCH_KEYS: usize = 2_000;

/// Runs `work` on the blocking pool (sled calls block), re-raising a panic.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Purges `tenant`'s finished deliveries (and their attempts) created before `before_ms`, and
/// its events created before then that have no delivery left, batch by batch. Stops early,
/// with what it did so far, once `stop` is cancelled.
pub async fn purge_tenant(
    store: &Store,
    tenant: &str,
    before_ms: u64,
    stop: &CancellationToken,
) -> Result<PurgeOutcome, StoreError> {
    let mut total = PurgeOutcome::default();
    let mut after: Option<EventId> = None;
    loop {
        let (store, tenant_id, resume) = (store.clone(), tenant.to_string(), after.take());
        let (outcome, next) = blocking(move || {
            store.purge_batch(&tenant_id, before_ms, resume.as_ref(), PURGE_BATCH_KEYS)
        })
        .await?;
        total.add(outcome);
        match next {
            Some(id) if !stop.is_cancelled() => after = Some(id),
            _ => return Ok(total),
        }
        tokio::task::yield_now().await;
    }
}

/// One retention pass over every tenant with data, then the statistics horizon.
pub async fn purge_once(
    store: &Store,
    retention: Duration,
    stop: &CancellationToken,
) -> Result<PurgeOutcome, StoreError> {
    let now = now_ms();
    let before_ms = now.saturating_sub(retention.as_millis() as u64);
    let tenants = {
        let store = store.clone();
        blocking(move || store.tenants_with_events()).await?
    };
    let mut total = PurgeOutcome::default();
    for tenant in tenants {
        if stop.is_cancelled() {
            break;
        }
        let outcome = purge_tenant(store, &tenant, before_ms, stop).await?;
        if !outcome.is_empty() {
            info!(
                tenant,
                events = outcome.events,
                deliveries = outcome.deliveries,
                attempts = outcome.attempts,
                "retention purged old records"
            );
        }
        total.add(outcome);
    }
    let horizon = day_of(now).saturating_sub(STATS_HORIZON_DAYS);
    let mut cursor: Option<Vec<u8>> = None;
    while !stop.is_cancelled() {
        let store = store.clone();
        let resume = cursor.take();
        let (_, next) =
            blocking(move || store.prune_stats(horizon, resume.as_deref(), PURGE_BATCH_KEYS))
                .await?;
        match next {
            Some(key) => cursor = Some(key),
            None => break,
        }
        tokio::task::yield_now().await;
    }
    Ok(total)
}

/// Starts the retention task: a pass every `limits.retention_interval` (read from the live
/// config each time, so a reload applies), until `shutdown` is cancelled.
pub fn spawn(store: Store, config: SharedConfig, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let interval = config.current().limits.retention_interval;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let retention = config.current().limits.retention;
            match purge_once(&store, retention, &shutdown).await {
                Ok(outcome) if !outcome.is_empty() => {
                    if let Err(err) = store.flush().await {
                        warn!(error = %err, "flush after the retention pass failed");
                    }
                }
                Ok(_) => {}
                Err(err) => warn!(error = %err, "retention pass failed; it runs again later"),
            }
        }
    })
}
