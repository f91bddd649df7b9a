//! Retention: the background task that purges old records every `limits.retention_interval`.
//!
//! What goes and what never goes is the store's business ([`Store::purge`]: finished
//! deliveries and their attempts, events without a queued delivery; never a pending or
//! in-flight delivery, in bounded steps). This module only drives it on a timer. Statistics
//! counters are kept; only counter days older than any stats query can read are dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::SharedConfig;
use crate::ids::now_ms;
use crate::store::stats::{STATS_HORIZON_DAYS, day_of};
use crate::store::{PurgeOutcome, Store, StoreError};

/// One retention pass over every tenant with data, then the statistics horizon.
pub async fn purge_once(
    store: &dyn Store,
    retention: Duration,
    stop: &CancellationToken,
) -> Result<PurgeOutcome, StoreError> {
    let now = now_ms();
    let before_ms = now.saturating_sub(retention.as_millis() as u64);
    let total = store.purge(None, None, before_ms, stop).await?;
    if !total.is_empty() {
        info!(
            events = total.events,
            deliveries = total.deliveries,
            attempts = total.attempts,
            "retention purged old records"
        );
    }
    if !stop.is_cancelled() {
        store
            .prune_stats(day_of(now).saturating_sub(STATS_HORIZON_DAYS))
            .await?;
    }
    Ok(total)
}

/// Starts the retention task: a pass every `limits.retention_interval` after the last one,
/// until `shutdown` is cancelled. `reloaded` is notified after each applied reload: the
/// interval is read again then, so a shorter one applies at once instead of after the wait
/// already begun.
pub fn spawn(
    store: Arc<dyn Store>,
    config: SharedConfig,
    reloaded: Arc<Notify>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_pass = Instant::now();
        loop {
            let due = last_pass + config.current().limits.retention_interval;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = reloaded.notified() => continue,
                _ = tokio::time::sleep_until(due) => {}
            }
            let retention = config.current().limits.retention;
            if let Err(err) = purge_once(store.as_ref(), retention, &shutdown).await {
                warn!(error = %err, "retention pass failed; it runs again later");
            }
            last_pass = Instant::now();
        }
    })
}
