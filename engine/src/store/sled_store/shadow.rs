//! Shadow runs of candidate plugin versions in the sled backend (`store/shadow.rs`), in the
//! plugin catalogue's tree, under its write lock:
//!
//! ```text
//! S <tenant> NUL <name>                  → the report's summary (JSON)
//! C <tenant> NUL <name> NUL <seq, u32 BE> → one kept differing case (JSON), seq < 50
//! ```
//!
//! So a plugin name holds at most 1 + [`MAX_SHADOW_CASES`] keys, whatever the attempts
//! compared. Starting and ending a run are made durable before they return (and tell the
//! plugin listener); a recorded case is written without waiting for a flush, like an attempt
//! outcome: it becomes durable with the writer's next flush (a crash may lose the last few,
//! which only means fewer attempts compared).

use super::SledStore;
use super::plugins::{StoredHead, decode, encode, head_key};
use crate::ids::now_ms;
use crate::store::{
    MAX_SHADOW_CASES, Result, ShadowCase, ShadowRecorded, ShadowReport, ShadowState, ShadowSummary,
};

const SUMMARY: u8 = b'S';
const CASE: u8 = b'C';

fn summary_key(tenant: &str, name: &str) -> Vec<u8> {
    let mut key = vec![SUMMARY];
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key
}

fn cases_prefix(tenant: &str, name: &str) -> Vec<u8> {
    let mut key = vec![CASE];
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

fn case_key(tenant: &str, name: &str, seq: u32) -> Vec<u8> {
    let mut key = cases_prefix(tenant, name);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Adds the removal of a plugin's shadow report to `batch` (the plugin is deleted, or a new
/// run replaces the report).
pub(super) fn remove_report(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    tenant: &str,
    name: &str,
) -> Result<()> {
    batch.remove(summary_key(tenant, name));
    for entry in tree.scan_prefix(cases_prefix(tenant, name)) {
        batch.remove(entry?.0);
    }
    Ok(())
}

fn summary(tree: &sled::Tree, tenant: &str, name: &str) -> Result<Option<ShadowSummary>> {
    tree.get(summary_key(tenant, name))?
        .map(|bytes| decode(&bytes))
        .transpose()
}

impl SledStore {
    pub(super) async fn start_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        start: &ShadowSummary,
    ) -> Result<bool> {
        let catalogue = &self.plugins;
        let _writing = catalogue.lock.lock().await;
        if catalogue.head(tenant, name)?.is_none() {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        remove_report(&catalogue.tree, &mut batch, tenant, name)?;
        batch.insert(summary_key(tenant, name), encode(start));
        catalogue.tree.apply_batch(batch)?;
        self.durable().await?;
        catalogue.changed(tenant, name);
        Ok(true)
    }

    pub(super) async fn record_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        candidate: u64,
        case: &ShadowCase,
    ) -> Result<ShadowRecorded> {
        let catalogue = &self.plugins;
        let _writing = catalogue.lock.lock().await;
        let Some(mut summary) = summary(&catalogue.tree, tenant, name)? else {
            return Ok(ShadowRecorded::NotRunning);
        };
        let recorded = summary.count(candidate, case, now_ms());
        let ShadowRecorded::Counted { keep, complete } = recorded else {
            return Ok(recorded);
        };
        let mut batch = sled::Batch::default();
        if keep {
            let seq = u32::try_from(summary.counts.differing - 1).unwrap_or(u32::MAX);
            debug_assert!((seq as usize) < MAX_SHADOW_CASES);
            batch.insert(case_key(tenant, name, seq), encode(case));
        }
        batch.insert(summary_key(tenant, name), encode(&summary));
        catalogue.tree.apply_batch(batch)?;
        if complete {
            // Every node stops comparing.
            catalogue.changed(tenant, name);
        }
        Ok(recorded)
    }

    pub(super) fn plugin_shadow(&self, tenant: &str, name: &str) -> Result<Option<ShadowReport>> {
        let tree = &self.plugins.tree;
        let Some(summary) = summary(tree, tenant, name)? else {
            return Ok(None);
        };
        let cases = tree
            .scan_prefix(cases_prefix(tenant, name))
            .map(|entry| decode(&entry?.1))
            .collect::<Result<Vec<ShadowCase>>>()?;
        Ok(Some(ShadowReport { summary, cases }))
    }

    pub(super) async fn end_plugin_shadow(
        &self,
        tenant: &str,
        name: &str,
        candidate: u64,
        state: ShadowState,
    ) -> Result<bool> {
        let catalogue = &self.plugins;
        let _writing = catalogue.lock.lock().await;
        let mut batch = sled::Batch::default();
        let mut wrote = false;
        if let Some(mut summary) = summary(&catalogue.tree, tenant, name)?
            && summary.end(candidate, state, now_ms())
        {
            batch.insert(summary_key(tenant, name), encode(&summary));
            wrote = true;
        }
        if state == ShadowState::Discarded
            && let Some(head) = catalogue.head(tenant, name)?
            && head.candidate == Some(candidate)
        {
            let head = StoredHead {
                candidate: None,
                ..head
            };
            batch.insert(head_key(tenant, name), encode(&head));
            wrote = true;
        }
        if !wrote {
            return Ok(false);
        }
        catalogue.tree.apply_batch(batch)?;
        self.durable().await?;
        catalogue.changed(tenant, name);
        Ok(true)
    }
}
