//! Shadow runs: a plugin's candidate version run beside the current one on real attempts,
//! off the delivery path, with the differences counted in the store (`store/shadow.rs`).
//!
//! - **Upload** ([`PluginHost::upload_candidate`]): a component checked and compiled like any
//!   upload, stored as the plugin's candidate (`PluginStage::Candidate`: the current version
//!   keeps serving), and a report started for the next N attempts. Every node hears of it
//!   through the catalogue's notification and loads the candidate ([`PluginHost::sync_shadow`]).
//! - **Attempts**: [`PluginHost::shadow_plan`] is the delivery path's only cost — one atomic
//!   load while no candidate runs anywhere on this node; otherwise a map lookup per chain step.
//!   An attempt whose chain uses a shadowed plugin (following its current version, not pinning
//!   one) hands a copy of its plugin request and its chain's outcome to [`PluginHost::shadow`],
//!   which returns at once: the candidate's chain runs later, in a task of its own, on the
//!   plugin thread pool, under [`SHADOW_CONCURRENCY`] slots of its own (never the tenant's
//!   chain slots), with the tenant's plugin budgets (deadline, memory, fuel). At most
//!   [`SHADOW_QUEUE`] attempts wait for those slots; more are not compared. Nothing of it is
//!   sent: the attempt delivers the current version's output, whatever the candidate does.
//! - **Comparison** ([`compare`]): each version's decision (deliver, drop, error), header and
//!   body differences, errors and the plugin's own call time; the store counts it (exactly N,
//!   summed over nodes) and keeps the first differing cases.
//! - **End**: [`PluginHost::promote`] makes the candidate current through the rollback path
//!   (hot swap here and on every node by the catalogue's notification);
//!   [`PluginHost::discard`] drops the candidate pointer. The report stays readable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::chain::{self, ChainOutcome, ChainRun, ChainStep, PluginCall, PluginRequest};
use super::runtime::LoadedPlugin;
use super::{
    CompileSlot, PluginHost, PluginInfo, PluginLoadError, PluginQuota, PluginSettings, now_ms,
};
use crate::store::{
    ShadowCase, ShadowRecorded, ShadowReport, ShadowSide, ShadowState, ShadowSummary,
};

/// Candidate chains running at once on this node (each may loop until its deadline: one
/// keeps a looping candidate to one core's worth of time slices on the plugin pool).
pub const SHADOW_CONCURRENCY: usize = 1;
/// Attempts waiting for a shadow slot; an attempt finding the queue full is not compared.
pub const SHADOW_QUEUE: usize = 256;
/// Attempts a shadow run compares unless the upload says (`?shadow_attempts=`).
pub const DEFAULT_SHADOW_ATTEMPTS: u64 = 100;
/// Most attempts a shadow run may compare.
pub const MAX_SHADOW_ATTEMPTS: u64 = 10_000;
/// Bytes of an error message kept in a shadow case.
const MAX_CASE_MESSAGE_BYTES: usize = 256;

/// Why a candidate upload, promote, discard or report was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// Loading the candidate (or the version to promote) failed.
    #[error(transparent)]
    Load(#[from] PluginLoadError),
    /// The tenant has no uploaded plugin of that name to compare a candidate with.
    #[error(
        "there is no uploaded plugin of that name to compare a candidate with: upload it first without `?stage=candidate`"
    )]
    NoCurrentVersion,
    /// The candidate's bytes are the current version's.
    #[error("the candidate is the current version (same SHA-256): there is nothing to compare")]
    SameAsCurrent,
    /// The plugin has no candidate to promote or discard.
    #[error("the plugin has no candidate version (upload one with `?stage=candidate`)")]
    NoCandidate,
    /// A shadow run compares the chain before the send (filter, transform, sign); it cannot
    /// run an `on-response` hook on an answer, so it would report such a plugin "same".
    #[error(
        "shadow runs compare filter, transform and sign; this {0} exports on-response, which a \
         shadow run cannot compare: simulate it and roll out with a pinned webhook instead"
    )]
    ResponseHook(&'static str),
}

fn storage(error: crate::store::StoreError) -> ShadowError {
    ShadowError::Load(PluginLoadError::Storage(error.to_string()))
}

/// A candidate this node compares, for one plugin name of one tenant.
pub(crate) struct Candidate {
    version: u64,
    plugin: Arc<LoadedPlugin>,
}

/// The shadow runs this node takes part in, and its shadow slots.
pub(crate) struct Shadows {
    /// How many candidates are in `running` (the delivery path's one check).
    active: AtomicUsize,
    /// Tenant → plugin name → its running candidate.
    running: RwLock<HashMap<String, HashMap<String, Arc<Candidate>>>>,
    queue: Arc<Semaphore>,
    slots: Arc<Semaphore>,
}

impl Default for Shadows {
    fn default() -> Self {
        Shadows {
            active: AtomicUsize::new(0),
            running: RwLock::new(HashMap::new()),
            queue: Arc::new(Semaphore::new(SHADOW_QUEUE)),
            slots: Arc::new(Semaphore::new(SHADOW_CONCURRENCY)),
        }
    }
}

impl Shadows {
    fn get(&self, tenant: &str, name: &str) -> Option<Arc<Candidate>> {
        let running = self.running.read().unwrap_or_else(|e| e.into_inner());
        running.get(tenant)?.get(name).cloned()
    }

    fn set(&self, tenant: &str, name: &str, candidate: Option<Arc<Candidate>>) {
        let mut running = self.running.write().unwrap_or_else(|e| e.into_inner());
        match candidate {
            Some(candidate) => {
                running
                    .entry(tenant.to_owned())
                    .or_default()
                    .insert(name.to_owned(), candidate);
            }
            None => {
                if let Some(plugins) = running.get_mut(tenant) {
                    plugins.remove(name);
                    if plugins.is_empty() {
                        running.remove(tenant);
                    }
                }
            }
        }
        self.active
            .store(running.values().map(HashMap::len).sum(), Ordering::Release);
    }

    /// Stops comparing `version` of the plugin (a newer candidate stays).
    fn stop(&self, tenant: &str, name: &str, version: u64) {
        if self.get(tenant, name).is_some_and(|c| c.version == version) {
            self.set(tenant, name, None);
        }
    }
}

/// An attempt's chain step that has a running candidate: what [`PluginHost::shadow`] needs.
pub struct ShadowPlan {
    index: usize,
    name: String,
    candidate: Arc<Candidate>,
}

/// Counts a candidate's hook calls in the per-plugin metrics (the plugin host has no metrics
/// handle of its own).
pub type CountCalls = Box<dyn FnOnce(&[PluginCall]) + Send>;

/// Which attempt a shadow case is about (beside what its plugin request says).
pub struct ShadowAttempt<'a> {
    pub webhook_id: &'a str,
    pub settings: &'a PluginSettings,
    /// Counts the candidate's own hook calls in the per-plugin metrics (its version label
    /// tells them from the current version's); the chain's other steps are not counted again.
    pub count_calls: CountCalls,
}

impl PluginHost {
    /// The chain step whose plugin has a running candidate on this node, if any (the first
    /// one; a step pinning a version is never shadowed). Costs one atomic load while no
    /// candidate runs.
    pub fn shadow_plan(&self, tenant: &str, steps: &[ChainStep]) -> Option<ShadowPlan> {
        let shadows = &self.inner.shadows;
        if shadows.active.load(Ordering::Acquire) == 0 {
            return None;
        }
        steps.iter().enumerate().find_map(|(index, step)| {
            if step.version.is_some() {
                return None;
            }
            let candidate = shadows.get(tenant, &step.name)?;
            Some(ShadowPlan {
                index,
                name: step.name.clone(),
                candidate,
            })
        })
    }

    /// Queues the candidate's run of an attempt whose chain ran as `real` (on `request`, a copy
    /// of what the chain was given) and returns at once. Later, off the delivery path: the
    /// chain runs with the candidate in the plan's step, the two outcomes are compared and the
    /// store counts the case. Nothing is queued when [`SHADOW_QUEUE`] attempts wait already.
    pub fn shadow(
        &self,
        plan: ShadowPlan,
        steps: &[ChainStep],
        request: PluginRequest,
        real: &ChainRun,
        attempt: ShadowAttempt<'_>,
    ) {
        let Some(store) = self.inner.catalogue.clone() else {
            return;
        };
        let Ok(queued) = self.inner.shadows.queue.clone().try_acquire_owned() else {
            tracing::debug!(plugin = %plan.name, "shadow queue full: attempt not compared");
            return;
        };
        let host = self.clone();
        let steps = steps.to_vec();
        let real_outcome = real.outcome.clone();
        let real_micros = plugin_micros(&real.calls, &plan.name);
        let settings = attempt.settings.clone();
        let webhook_id = attempt.webhook_id.to_owned();
        let count_calls = attempt.count_calls;
        tokio::spawn(async move {
            let _queued = queued;
            let tenant = request.tenant.clone();
            let mut case = ShadowCase {
                at: request.attempt_time_ms,
                webhook_id,
                delivery_id: request.delivery_id.clone(),
                event_id: request.event_id.clone(),
                attempt: request.attempt,
                ..ShadowCase::default()
            };
            let Some((outcome, calls)) =
                host.run_candidate(&plan, &steps, request, &settings).await
            else {
                return;
            };
            let candidate_micros = plugin_micros(&calls, &plan.name);
            let candidate_calls: Vec<PluginCall> = calls
                .into_iter()
                .filter(|call| call.plugin == plan.name)
                .collect();
            count_calls(&candidate_calls);
            let (differences, current, candidate) = compare(&real_outcome, &outcome);
            case.differences = differences;
            case.current = ShadowSide {
                micros: real_micros,
                ..current
            };
            case.candidate = ShadowSide {
                micros: candidate_micros,
                ..candidate
            };
            let version = plan.candidate.version;
            match store
                .record_plugin_shadow(&tenant, &plan.name, version, &case)
                .await
            {
                Ok(ShadowRecorded::Counted {
                    complete: false, ..
                }) => {}
                Ok(ShadowRecorded::Counted { complete: true, .. }) => {
                    tracing::info!(%tenant, plugin = %plan.name, candidate = version, "shadow run complete");
                    host.inner.shadows.stop(&tenant, &plan.name, version);
                }
                Ok(ShadowRecorded::NotRunning) => {
                    host.inner.shadows.stop(&tenant, &plan.name, version);
                }
                Err(error) => {
                    tracing::warn!(%tenant, plugin = %plan.name, %error, "cannot record a shadow case");
                }
            }
        });
    }

    /// Runs the chain with the candidate in the plan's step, on the plugin pool under a shadow
    /// slot. `None` when another step no longer loads or the host is shutting down.
    async fn run_candidate(
        &self,
        plan: &ShadowPlan,
        steps: &[ChainStep],
        request: PluginRequest,
        settings: &PluginSettings,
    ) -> Option<(ChainOutcome, Vec<PluginCall>)> {
        let tenant = request.tenant.clone();
        let mut resolved = Vec::with_capacity(steps.len());
        for (index, step) in steps.iter().enumerate() {
            let plugin = if index == plan.index {
                plan.candidate.plugin.clone()
            } else {
                self.resolve(&tenant, &step.name, step.version).await.ok()?
            };
            resolved.push((step.clone(), plugin));
        }
        let slot = self
            .inner
            .shadows
            .slots
            .clone()
            .acquire_owned()
            .await
            .ok()?;
        let inner = self.inner.clone();
        let settings = settings.clone();
        let job = async move {
            let _slot = slot;
            let (outcome, _logs, calls) =
                chain::run(&inner.runtime, &resolved, request, &settings).await;
            (outcome, calls)
        };
        match self.inner.runtime.pool().handle().spawn(job).await {
            Ok(ran) => Some(ran),
            Err(error) => {
                tracing::error!(%tenant, plugin = %plan.name, %error, "a candidate's shadow chain panicked");
                None
            }
        }
    }

    /// Uploads a candidate version of an uploaded plugin and starts its shadow run over the
    /// next `attempts` attempts (on every node). The current version keeps serving.
    pub async fn upload_candidate(
        &self,
        tenant: &str,
        name: &str,
        wasm: Vec<u8>,
        attempts: u64,
        slot: Option<CompileSlot>,
        uploaded_by: &str,
    ) -> Result<ShadowReport, ShadowError> {
        let Some(store) = self.inner.catalogue.clone() else {
            return Err(ShadowError::NoCurrentVersion);
        };
        let limit = self.inner.settings.max_upload_bytes;
        if wasm.len() > limit {
            return Err(PluginLoadError::TooLarge {
                size: wasm.len(),
                limit,
            }
            .into());
        }
        let head = store.plugin_head(tenant, name).await.map_err(storage)?;
        let Some(head) = head else {
            return Err(ShadowError::NoCurrentVersion);
        };
        let wait = self.inner.settings.compile_wait;
        let (plugin, wasm) = self.load_blocking(tenant, wasm, slot, wait).await?;
        if plugin.sha256 == head.current.sha256 {
            return Err(ShadowError::SameAsCurrent);
        }
        // The same candidate again (a retried deploy step): its run goes on, unrestarted.
        if head
            .candidate
            .as_ref()
            .is_some_and(|c| c.sha256 == plugin.sha256)
            && let Some(report) = store.plugin_shadow(tenant, name).await.map_err(storage)?
            && report.summary.state == ShadowState::Running
        {
            return Ok(report);
        }
        if plugin.on_response.is_some() {
            return Err(ShadowError::ResponseHook("candidate"));
        }
        if self
            .inner
            .registry
            .get(tenant, name)
            .is_some_and(|current| current.on_response.is_some())
        {
            return Err(ShadowError::ResponseHook("plugin's current version"));
        }
        let _publishing = self.inner.publish_lock.lock().await;
        let uploaded_by = super::catalogue::uploader(uploaded_by);
        let version = store
            .put_plugin_version(
                tenant,
                name,
                &plugin.sha256,
                &wasm,
                uploaded_by,
                crate::store::PluginStage::Candidate,
            )
            .await
            .map_err(storage)?;
        let current = store
            .plugin_head(tenant, name)
            .await
            .map_err(storage)?
            .map_or(head.current.id, |h| h.current.id);
        let summary = ShadowSummary::start(version.id, current, attempts, now_ms());
        if !store
            .start_plugin_shadow(tenant, name, &summary)
            .await
            .map_err(storage)?
        {
            return Err(ShadowError::NoCurrentVersion);
        }
        self.inner.shadows.set(
            tenant,
            name,
            Some(Arc::new(Candidate {
                version: version.id,
                plugin,
            })),
        );
        tracing::info!(%tenant, plugin = %name, candidate = version.id, attempts, "candidate uploaded; shadow run started");
        Ok(ShadowReport {
            summary,
            cases: Vec::new(),
        })
    }

    /// The plugin's latest shadow report (`None`: it never had a candidate, or it was deleted).
    pub async fn shadow_report(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<ShadowReport>, ShadowError> {
        let Some(store) = &self.inner.catalogue else {
            return Ok(None);
        };
        store.plugin_shadow(tenant, name).await.map_err(storage)
    }

    /// Makes the plugin's candidate current (the rollback path: loaded, checked against the
    /// quota, swapped in here and on every node) and ends its shadow run as promoted.
    pub async fn promote(
        &self,
        tenant: &str,
        name: &str,
        quota: Option<PluginQuota>,
        attached: &[super::Attached],
    ) -> Result<PluginInfo, ShadowError> {
        let candidate = self.candidate_of(tenant, name).await?;
        // The rollback path ends the candidate's shadow run as promoted.
        let info = self
            .rollback(tenant, name, candidate, quota, attached)
            .await?;
        tracing::info!(%tenant, plugin = %name, version_id = candidate, "candidate promoted");
        Ok(info)
    }

    /// Drops the plugin's candidate (it stays in the version history) and ends its shadow run
    /// as discarded; returns the final report.
    pub async fn discard(&self, tenant: &str, name: &str) -> Result<ShadowReport, ShadowError> {
        let candidate = self.candidate_of(tenant, name).await?;
        self.end_shadow(tenant, name, candidate, ShadowState::Discarded)
            .await?;
        tracing::info!(%tenant, plugin = %name, version_id = candidate, "candidate discarded");
        self.shadow_report(tenant, name)
            .await?
            .ok_or(ShadowError::NoCandidate)
    }

    async fn candidate_of(&self, tenant: &str, name: &str) -> Result<u64, ShadowError> {
        let Some(store) = &self.inner.catalogue else {
            return Err(PluginLoadError::NotFound.into());
        };
        let head = store.plugin_head(tenant, name).await.map_err(storage)?;
        let head = head.ok_or(ShadowError::Load(PluginLoadError::NotFound))?;
        head.candidate.map(|c| c.id).ok_or(ShadowError::NoCandidate)
    }

    /// A new current version (an upload, a rollback) while a shadow run is open: the run is
    /// compared with it from now on, so it restarts against it (its report names the version
    /// it compares with, and no count mixes two); a current with the candidate's bytes ends
    /// the run as promoted.
    pub(super) async fn follow_new_current(&self, tenant: &str, name: &str) {
        let Some(store) = self.inner.catalogue.clone() else {
            return;
        };
        let (head, report) = match (
            store.plugin_head(tenant, name).await,
            store.plugin_shadow(tenant, name).await,
        ) {
            (Ok(Some(head)), Ok(Some(report))) => (head, report),
            _ => return,
        };
        let summary = &report.summary;
        if summary.state != ShadowState::Running || summary.current == head.current.id {
            return;
        }
        let Some(candidate) = head.candidate.filter(|c| c.id == summary.candidate) else {
            return;
        };
        if candidate.sha256 == head.current.sha256 {
            if let Err(error) = self
                .end_shadow(tenant, name, candidate.id, ShadowState::Promoted)
                .await
            {
                tracing::warn!(%tenant, plugin = %name, %error, "cannot end the shadow run");
            }
            return;
        }
        let restarted =
            ShadowSummary::start(candidate.id, head.current.id, summary.attempts, now_ms());
        match store.start_plugin_shadow(tenant, name, &restarted).await {
            Ok(_) => {
                tracing::info!(%tenant, plugin = %name, candidate = candidate.id, current = head.current.id, "new current version; the shadow run restarts against it")
            }
            Err(error) => {
                tracing::warn!(%tenant, plugin = %name, %error, "cannot restart the shadow run")
            }
        }
    }

    /// Stops comparing `candidate` here and ends its open run in the store as `state` (a
    /// no-op for a version that is not an open run's candidate).
    pub(super) async fn end_shadow(
        &self,
        tenant: &str,
        name: &str,
        candidate: u64,
        state: ShadowState,
    ) -> Result<(), ShadowError> {
        self.inner.shadows.stop(tenant, name, candidate);
        if let Some(store) = &self.inner.catalogue {
            store
                .end_plugin_shadow(tenant, name, candidate, state)
                .await
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Brings this node's shadow of one plugin in line with the store: the candidate of a
    /// running report is loaded (compiled if this node never ran it) and compared on the next
    /// attempts; anything else stops comparing. Called on every catalogue notification.
    pub(super) async fn sync_shadow(&self, tenant: &str, name: &str) {
        let Some(store) = self.inner.catalogue.clone() else {
            return;
        };
        let shadows = &self.inner.shadows;
        let wanted = match store.plugin_head(tenant, name).await {
            Ok(head) => head.and_then(|h| h.candidate),
            Err(error) => {
                tracing::warn!(%tenant, plugin = %name, %error, "cannot read the plugin's head for its shadow run");
                return;
            }
        };
        let running = match (&wanted, store.plugin_shadow(tenant, name).await) {
            (Some(candidate), Ok(Some(report))) => {
                report.summary.candidate == candidate.id
                    && report.summary.state == ShadowState::Running
            }
            (_, Ok(_)) => false,
            (_, Err(error)) => {
                tracing::warn!(%tenant, plugin = %name, %error, "cannot read the plugin's shadow report");
                return;
            }
        };
        let Some(candidate) = wanted.filter(|_| running) else {
            shadows.set(tenant, name, None);
            return;
        };
        if shadows
            .get(tenant, name)
            .is_some_and(|c| c.version == candidate.id)
        {
            return;
        }
        match self.load_stored(&store, tenant, name, candidate.id).await {
            Ok(plugin) => {
                shadows.set(
                    tenant,
                    name,
                    Some(Arc::new(Candidate {
                        version: candidate.id,
                        plugin,
                    })),
                );
                tracing::info!(%tenant, plugin = %name, candidate = candidate.id, "comparing the plugin's candidate on this node");
            }
            Err(error) => {
                tracing::error!(%tenant, plugin = %name, candidate = candidate.id, %error, "the candidate does not load on this node; not compared here");
            }
        }
    }
}

/// The time the calls of plugin `name` took, in µs.
fn plugin_micros(calls: &[PluginCall], name: &str) -> u64 {
    let total: Duration = calls
        .iter()
        .filter(|call| call.plugin == name)
        .map(|call| call.duration)
        .sum();
    u64::try_from(total.as_micros()).unwrap_or(u64::MAX)
}

/// What one version did (without its time).
fn side(outcome: &ChainOutcome) -> ShadowSide {
    match outcome {
        ChainOutcome::Deliver(request) => ShadowSide {
            decision: "deliver".into(),
            body_sha256: Some(hex::encode(Sha256::digest(&request.body))),
            ..ShadowSide::default()
        },
        ChainOutcome::Filtered { .. } => ShadowSide {
            decision: "drop".into(),
            ..ShadowSide::default()
        },
        ChainOutcome::Failed { code, message, .. } => ShadowSide {
            decision: "error".into(),
            error_code: Some(code.as_str().to_owned()),
            error_message: Some(cap(message)),
            ..ShadowSide::default()
        },
    }
}

fn cap(message: &str) -> String {
    let mut end = message.len().min(MAX_CASE_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

/// Header values by lower-case name, in order.
fn header_map(headers: &[(String, String)]) -> HashMap<String, Vec<&str>> {
    let mut map: HashMap<String, Vec<&str>> = HashMap::new();
    for (name, value) in headers {
        map.entry(name.to_ascii_lowercase())
            .or_default()
            .push(value);
    }
    map
}

/// Compares the current version's chain outcome with the candidate's: the kinds of
/// difference (`decision`, `error`, `url`, `headers`, `body`; empty when the same) and each
/// side's decision (the candidate's side lists the headers that differ).
pub(crate) fn compare(
    current: &ChainOutcome,
    candidate: &ChainOutcome,
) -> (Vec<String>, ShadowSide, ShadowSide) {
    let (current_side, mut candidate_side) = (side(current), side(candidate));
    let mut differences = Vec::new();
    match (current, candidate) {
        (ChainOutcome::Deliver(a), ChainOutcome::Deliver(b)) => {
            if a.url != b.url || a.method != b.method {
                differences.push("url".to_owned());
            }
            let (before, after) = (header_map(&a.headers), header_map(&b.headers));
            let mut changed: Vec<String> = before
                .keys()
                .chain(after.keys())
                .filter(|name| before.get(*name) != after.get(*name))
                .cloned()
                .collect();
            if a.content_type != b.content_type {
                changed.push("content-type".to_owned());
            }
            changed.sort();
            changed.dedup();
            if !changed.is_empty() {
                differences.push("headers".to_owned());
                candidate_side.changed_headers = changed;
            }
            if current_side.body_sha256 != candidate_side.body_sha256 {
                differences.push("body".to_owned());
            }
        }
        (ChainOutcome::Failed { code: a, .. }, ChainOutcome::Failed { code: b, .. }) => {
            if a != b {
                differences.push("error".to_owned());
            }
        }
        (ChainOutcome::Failed { .. }, _) | (_, ChainOutcome::Failed { .. }) => {
            differences.push("error".to_owned());
        }
        (ChainOutcome::Filtered { .. }, ChainOutcome::Filtered { .. }) => {}
        (ChainOutcome::Deliver(_), ChainOutcome::Filtered { .. })
        | (ChainOutcome::Filtered { .. }, ChainOutcome::Deliver(_)) => {
            differences.push("decision".to_owned());
        }
    }
    (differences, current_side, candidate_side)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{OutboundRequest, PluginFailureCode};

    fn deliver(url: &str, headers: &[(&str, &str)], body: &str) -> ChainOutcome {
        ChainOutcome::Deliver(OutboundRequest {
            url: url.into(),
            method: "POST".into(),
            content_type: "application/json".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec().into(),
        })
    }

    fn failed(code: PluginFailureCode) -> ChainOutcome {
        ChainOutcome::Failed {
            plugin: "p".into(),
            code,
            message: "x".repeat(1000),
        }
    }

    fn kinds(current: &ChainOutcome, candidate: &ChainOutcome) -> Vec<String> {
        compare(current, candidate).0
    }

    #[test]
    fn the_same_request_is_the_same_and_each_kind_of_difference_is_named() {
        let base = deliver("https://r.example/a", &[("X-A", "1")], "{}");
        assert!(kinds(&base, &base.clone()).is_empty());
        assert!(
            kinds(
                &base,
                &deliver("https://r.example/a", &[("x-a", "1")], "{}")
            )
            .is_empty(),
            "header names compare without case"
        );
        assert_eq!(
            kinds(
                &base,
                &deliver("https://r.example/b", &[("X-A", "1")], "{}")
            ),
            ["url"]
        );
        let (differences, _, candidate) = compare(
            &base,
            &deliver(
                "https://r.example/a",
                &[("X-A", "2"), ("X-New", "n")],
                "{\"a\":1}",
            ),
        );
        assert_eq!(differences, ["headers", "body"]);
        assert_eq!(candidate.changed_headers, ["x-a", "x-new"]);
        let dropped = ChainOutcome::Filtered { plugin: "p".into() };
        assert_eq!(kinds(&base, &dropped), ["decision"]);
        assert_eq!(kinds(&dropped, &base), ["decision"]);
        assert!(kinds(&dropped, &dropped.clone()).is_empty());
    }

    #[test]
    fn errors_differ_from_outcomes_and_from_other_codes() {
        let base = deliver("https://r.example/a", &[], "{}");
        let trap = failed(PluginFailureCode::Trap);
        let (differences, current, candidate) = compare(&base, &trap);
        assert_eq!(differences, ["error"]);
        assert_eq!(current.decision, "deliver");
        assert!(current.body_sha256.is_some());
        assert_eq!(candidate.decision, "error");
        assert_eq!(candidate.error_code.as_deref(), Some("plugin_trap"));
        assert_eq!(
            candidate.error_message.as_ref().map(String::len),
            Some(MAX_CASE_MESSAGE_BYTES),
            "messages are capped"
        );
        assert_eq!(kinds(&trap, &failed(PluginFailureCode::Timeout)), ["error"]);
        assert!(kinds(&trap, &trap.clone()).is_empty());
    }
}
