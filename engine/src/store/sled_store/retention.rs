//! Retention on sled: what goes, in bounded steps, never a queued delivery.
//!
//! - A log segment whose records are all older than the cutoff and none of whose deliveries is
//!   queued is deleted whole (the writer re-checks, then counts what its events held).
//! - In the segment being written (never deleted while the log appends to it), in an old
//!   segment that a queued delivery keeps, and for a purge on request
//!   (`DELETE /v1/deliveries?before=`), finished deliveries are marked purged and an event none
//!   of whose deliveries is left is marked purged with its payload zeroed in place. A purge on
//!   request for one channel (`&channel=`) hands the writer only the events on that channel
//!   (an event has one channel, which never changes, so choosing before the writer is exact).
//! - Listing pages that point only into deleted segments go; statistics counters stay (up to
//!   their horizon, [`crate::store::stats::STATS_HORIZON_DAYS`]).

use tokio_util::sync::CancellationToken;

use super::codec::{EventMeta, Locator, RecordKind};
use super::keys;
use super::pages::{self, SegmentInfo};
use super::writer::Command;
use super::{SledStore, stats};
use crate::store::{PurgeOutcome, Result, StoreError};

/// Events handed to the writer per purge command.
const PURGE_BATCH_EVENTS: usize = 1_000;
/// Counter keys removed per command.
const PRUNE_BATCH_KEYS: usize = 2_000;

impl SledStore {
    /// Purges `tenant`'s finished deliveries and empty events created before `before_ms`, of
    /// every channel or of `channel` only.
    pub(super) async fn purge_tenant(
        &self,
        tenant: &str,
        channel: Option<&str>,
        before_ms: u64,
        stop: &CancellationToken,
    ) -> Result<PurgeOutcome> {
        let mut total = PurgeOutcome::default();
        let mut candidates = Vec::with_capacity(PURGE_BATCH_EVENTS);
        let prefix = keys::tenant_prefix(keys::EVENTS, tenant);
        let pages: Vec<sled::IVec> = self
            .shared
            .tree
            .scan_prefix(&prefix)
            .values()
            .collect::<std::result::Result<_, _>>()?;
        'pages: for page in pages {
            let entries = pages::decode_events_page(&page)?;
            if entries.first().is_some_and(|e| e.created_at >= before_ms) {
                break;
            }
            for entry in entries {
                if entry.created_at >= before_ms {
                    continue;
                }
                candidates.push(entry.event);
                if candidates.len() >= PURGE_BATCH_EVENTS {
                    self.keep_channel(&mut candidates, channel).await?;
                    if !candidates.is_empty() {
                        total.add(
                            self.purge_events(tenant, &mut candidates, before_ms)
                                .await?,
                        );
                    }
                    if stop.is_cancelled() {
                        break 'pages;
                    }
                }
            }
        }
        self.keep_channel(&mut candidates, channel).await?;
        if !candidates.is_empty() {
            total.add(
                self.purge_events(tenant, &mut candidates, before_ms)
                    .await?,
            );
        }
        Ok(total)
    }

    /// Keeps the events of `candidates` that are on `channel` (all of them without one).
    async fn keep_channel(
        &self,
        candidates: &mut Vec<Locator>,
        channel: Option<&str>,
    ) -> Result<()> {
        let Some(channel) = channel else {
            return Ok(());
        };
        let log = self.shared.log.clone();
        let channel = channel.to_string();
        let events = std::mem::take(candidates);
        *candidates = tokio::task::spawn_blocking(move || {
            let mut kept = Vec::with_capacity(events.len());
            for loc in events {
                let Some(record) = log.read(loc, false)? else {
                    continue;
                };
                if record.header.kind == RecordKind::Event
                    && EventMeta::decode(&record.meta)?.channel.as_deref() == Some(&channel)
                {
                    kept.push(loc);
                }
            }
            Ok::<_, StoreError>(kept)
        })
        .await
        .map_err(|err| StoreError::Interrupted(err.to_string()))??;
        Ok(())
    }

    async fn purge_events(
        &self,
        tenant: &str,
        candidates: &mut Vec<Locator>,
        before_ms: u64,
    ) -> Result<PurgeOutcome> {
        let events = std::mem::take(candidates);
        self.ask(|reply| Command::Purge {
            tenant: tenant.to_string(),
            events,
            before_ms,
            reply,
        })
        .await
    }

    /// The retention pass over every tenant: old segments deleted or swept, then listing
    /// pages into deleted segments dropped.
    pub(super) async fn purge_all(
        &self,
        before_ms: u64,
        stop: &CancellationToken,
    ) -> Result<PurgeOutcome> {
        let mut total = PurgeOutcome::default();
        let catalogue: Vec<(u32, SegmentInfo)> = self
            .shared
            .tree
            .scan_prefix(keys::segments())
            .map(|entry| {
                let (key, value) = entry?;
                let segment = keys::parse_segment(&key)
                    .ok_or_else(|| StoreError::Corrupt("a segment key".into()))?;
                Ok((segment, SegmentInfo::decode(&value)?))
            })
            .collect::<Result<_>>()?;
        let mut deleted = false;
        // The segment the log appends to is swept at every pass, never deleted: its newest
        // record is always recent while anything is written, and with nothing queued it could
        // not be deleted anyway, so its old records would otherwise stay until it filled
        // (64 MiB: weeks, for a quiet engine).
        let writing = self.shared.log.durable_end().segment;
        for (segment, info) in catalogue {
            if stop.is_cancelled() {
                continue;
            }
            if segment >= writing {
                total.add(self.sweep_segment(segment, before_ms).await?);
                continue;
            }
            if info.last_ms >= before_ms {
                continue;
            }
            if info.queued == 0 {
                let outcome = self
                    .ask(|reply| Command::DeleteSegment {
                        segment,
                        before_ms,
                        reply,
                    })
                    .await?;
                deleted |= !outcome.is_empty();
                total.add(outcome);
            } else {
                total.add(self.sweep_segment(segment, before_ms).await?);
            }
        }
        if deleted && !stop.is_cancelled() {
            self.drop_dead_pages().await?;
        }
        Ok(total)
    }

    /// Purges what is finished in a segment that queued deliveries keep, tenant by tenant.
    async fn sweep_segment(&self, segment: u32, before_ms: u64) -> Result<PurgeOutcome> {
        let log = self.shared.log.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut by_tenant: std::collections::BTreeMap<String, Vec<Locator>> =
                std::collections::BTreeMap::new();
            let scanned = log.scan_from(Locator { segment, offset: 0 }, |loc, record| {
                if loc.segment != segment {
                    return Err(StoreError::Interrupted("end of segment".into()));
                }
                if record.header.kind == RecordKind::Event {
                    let meta = EventMeta::decode(&record.meta)?;
                    if meta.created_at < before_ms {
                        by_tenant.entry(meta.tenant).or_default().push(loc);
                    }
                }
                Ok(())
            });
            match scanned {
                Ok(_) | Err(StoreError::Interrupted(_)) => Ok(by_tenant),
                Err(err) => Err(err),
            }
        })
        .await
        .map_err(|err| StoreError::Interrupted(err.to_string()))??;
        let mut total = PurgeOutcome::default();
        for (tenant, mut events) in found {
            for chunk in events.chunks_mut(PURGE_BATCH_EVENTS) {
                let mut batch = chunk.to_vec();
                total.add(self.purge_events(&tenant, &mut batch, before_ms).await?);
            }
            events.clear();
        }
        Ok(total)
    }

    /// Drops `L` and `V` pages every entry of which is in a deleted segment.
    async fn drop_dead_pages(&self) -> Result<()> {
        let live: std::collections::HashSet<u32> = self
            .shared
            .tree
            .scan_prefix(keys::segments())
            .keys()
            .filter_map(|k| k.ok().and_then(|k| keys::parse_segment(&k)))
            .collect();
        let mut dead = Vec::new();
        for kind in [keys::EVENTS, keys::WEBHOOK_DELIVERIES] {
            for entry in self.shared.tree.scan_prefix([kind]) {
                let (key, value) = entry?;
                let segments: Vec<u32> = if kind == keys::EVENTS {
                    pages::decode_events_page(&value)?
                        .iter()
                        .map(|e| e.event.segment)
                        .collect()
                } else {
                    pages::decode_deliveries_page(&value)?
                        .iter()
                        .map(|e| e.delivery.event.segment)
                        .collect()
                };
                if segments.iter().all(|s| !live.contains(s)) {
                    dead.push(key.to_vec());
                }
            }
        }
        for keys in dead.chunks(PRUNE_BATCH_KEYS) {
            let keys = keys.to_vec();
            self.ask(|reply| Command::RemoveKeys { keys, reply })
                .await?;
        }
        Ok(())
    }

    /// Removes counter days before `before_day`, in bounded batches.
    pub(super) async fn prune_counters(&self, before_day: u32) -> Result<usize> {
        let mut cursor: Option<Vec<u8>> = None;
        let mut removed = 0;
        loop {
            let (stale, next) = stats::stale_counters(
                &self.shared.tree,
                before_day,
                cursor.as_deref(),
                PRUNE_BATCH_KEYS,
            )?;
            removed += stale.len();
            if !stale.is_empty() {
                self.ask(|reply| Command::RemoveKeys { keys: stale, reply })
                    .await?;
            }
            match next {
                Some(key) => cursor = Some(key),
                None => return Ok(removed),
            }
            tokio::task::yield_now().await;
        }
    }
}
