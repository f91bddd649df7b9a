//! Running a webhook's plugin chain for one delivery attempt: the request and outcome types
//! ([`PluginRequest`], [`ChainStep`], [`ChainRun`], [`ChainOutcome`]) and the blocking runner.
//!
//! Order: every filter in chain order, then every transform in chain order, then every sign
//! hook on the final bytes. Each chain step gets its own fresh `Store` and instance, created
//! when its first hook runs and dropped with the attempt; a store is never reused, because a
//! trap poisons its instance. The first failure, drop or cancel ends the chain.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::bindings::exports::hookd::plugin::filter::Verdict;
use super::bindings::hookd::plugin::types::{Event, PluginError as GuestError};
use super::error::PluginFailureCode;
use super::policy::{self, OutboundRequest, PatchEffect};
use super::runtime::{CallFailure, CallPhase, LoadedPlugin, Runtime, classify};
use super::sandbox::{LogBuffer, PluginLog, SandboxParams, StoreState, lock_logs};
use super::settings::PluginSettings;

/// One plugin of a webhook's chain, with the config attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStep {
    /// The plugin's name (within the tenant).
    pub name: String,
    /// The plugin config for this webhook: JSON text by convention, passed verbatim.
    pub config: String,
    /// The stored version the webhook pins; `None`: the live one.
    pub version: Option<u64>,
}

/// What the engine would send without plugins, plus the attempt's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRequest {
    /// The delivery id (`dlv_...`); also seeds the guest's random numbers.
    pub delivery_id: String,
    /// The event id (`evt_...`).
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The tenant that owns the event, webhook and plugins.
    pub tenant: String,
    /// The event's channel, if any.
    pub channel: Option<String>,
    /// When the event was accepted, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// When this attempt started, ms since the Unix epoch; the guest's clocks read this.
    pub attempt_time_ms: u64,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The webhook's url.
    pub url: String,
    /// The HTTP method (usually `POST`).
    pub method: String,
    /// The body's content type.
    pub content_type: String,
    /// The webhook's static headers.
    pub headers: Vec<(String, String)>,
    /// The body (the Standard Webhooks envelope, by default).
    pub body: Bytes,
    /// The webhook's current signing secret, decoded (the bytes after `whsec_`): the key of
    /// `signing-key.mac`. It never enters guest memory.
    pub signing_secret: Vec<u8>,
}

impl PluginRequest {
    /// The request as it would be sent with no plugin changing it.
    pub fn into_outbound(self) -> OutboundRequest {
        OutboundRequest {
            url: self.url,
            method: self.method,
            content_type: self.content_type,
            headers: self.headers,
            body: self.body,
        }
    }
}

impl PluginRequest {
    /// The `event` record a hook sees for this request as it stands (the response hook gets
    /// the request as sent).
    pub(crate) fn event(&self) -> Event {
        Event {
            id: self.delivery_id.clone(),
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            tenant: self.tenant.clone(),
            channel: self.channel.clone(),
            timestamp: self.timestamp_ms,
            attempt_time: self.attempt_time_ms,
            attempt: self.attempt,
            url: self.url.clone(),
            method: self.method.clone(),
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
            payload: self.body.to_vec(),
        }
    }
}

/// What a chain decided for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainOutcome {
    /// Send this request. If its url differs from the webhook's, the engine must SSRF-check
    /// it again before connecting.
    Deliver(OutboundRequest),
    /// A filter dropped the delivery or a transform cancelled it: the delivery ends as
    /// `filtered` and is not retried.
    Filtered {
        /// The plugin that dropped or cancelled it.
        plugin: String,
    },
    /// A plugin made the attempt fail; see [`PluginFailureCode::is_retryable`].
    Failed {
        /// The failing plugin (`hookd` if the host itself failed).
        plugin: String,
        /// Stable failure code.
        code: PluginFailureCode,
        /// Human-readable detail (guest message, trap description), at most 1 KiB.
        message: String,
    },
}

/// One hook call of one plugin, for the per-plugin metrics (`hookd_plugin_hook_calls_total`,
/// `hookd_plugin_hook_seconds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCall {
    /// The plugin (chain step name).
    pub plugin: String,
    /// Its version as a metric label: the first 12 hex digits of the component's SHA-256.
    pub version: String,
    /// `ok`, `filtered` (a drop or cancel), a failure code (`plugin_trap`, …), or for
    /// `on-response` its decision (`default`, `delivered`, `retry`, `fail`, `disable`).
    pub outcome: &'static str,
    /// Wall time of the call, including the instance's creation for a plugin's first call.
    pub duration: Duration,
}

impl PluginCall {
    pub(crate) fn new(
        step: &ChainStep,
        plugin: &LoadedPlugin,
        outcome: &'static str,
        started: Instant,
    ) -> Self {
        Self {
            plugin: step.name.clone(),
            version: plugin
                .sha256
                .get(..VERSION_LABEL_DIGITS)
                .unwrap_or(&plugin.sha256)
                .to_owned(),
            outcome,
            duration: started.elapsed(),
        }
    }
}

/// Hex digits of a component's SHA-256 used as its version label.
pub const VERSION_LABEL_DIGITS: usize = 12;

/// The result of [`PluginHost::run_chain`](super::PluginHost::run_chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRun {
    /// The decision.
    pub outcome: ChainOutcome,
    /// Logs the plugins wrote (`host.log`, stdout, stderr), capped at `max_log_bytes`.
    pub logs: Vec<PluginLog>,
    /// Whether logs were dropped because of the cap (the last entry then says so).
    pub logs_truncated: bool,
    /// Wall time of running the chain, from the moment its plugin slots were granted.
    pub duration: Duration,
    /// Time spent waiting for plugin slots (the tenant's and the host's) before running.
    pub waited: Duration,
    /// CPU time the chain's threads spent running it (instantiation, guest code, host calls,
    /// dropping the stores): [`duration`](Self::duration) without the time the thread was
    /// descheduled, which on a busy machine can be most of it. Measured for a sample of runs
    /// (one in eight under load, every run of a quiet engine; see `cputime.rs`); `None` for
    /// the others and when no plugin ran.
    pub cpu: Option<Duration>,
    /// Each hook call, in order (empty when no plugin ran).
    pub calls: Vec<PluginCall>,
}

/// Which hook a chain phase calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Filter,
    Transform,
    Sign,
}

/// The attempt facts that do not change along the chain.
struct Attempt {
    delivery_id: String,
    event_id: String,
    event_type: String,
    tenant: String,
    channel: Option<String>,
    timestamp_ms: u64,
    attempt_time_ms: u64,
    attempt: u32,
}

impl Attempt {
    /// The `event` record a hook sees: the attempt plus the request as it is now.
    fn event(&self, request: &OutboundRequest) -> Event {
        Event {
            id: self.delivery_id.clone(),
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            tenant: self.tenant.clone(),
            channel: self.channel.clone(),
            timestamp: self.timestamp_ms,
            attempt_time: self.attempt_time_ms,
            attempt: self.attempt,
            url: request.url.clone(),
            method: request.method.clone(),
            content_type: request.content_type.clone(),
            headers: request.headers.clone(),
            payload: request.body.to_vec(),
        }
    }
}

/// A chain step's live instance for this attempt.
pub(crate) struct Live {
    pub(crate) store: wasmtime::Store<StoreState>,
    pub(crate) instance: wasmtime::component::Instance,
}

/// Runs the chain. Guest code runs inside the returned future's polls and yields at every
/// epoch tick, so whoever polls it decides where a long call continues. Returns the outcome
/// and the captured logs.
pub(crate) async fn run(
    runtime: &Runtime,
    steps: &[(ChainStep, Arc<LoadedPlugin>)],
    request: PluginRequest,
    settings: &PluginSettings,
) -> (ChainOutcome, LogBuffer, Vec<PluginCall>) {
    let logs = Arc::new(Mutex::new(LogBuffer::new(settings.max_log_bytes)));
    let mut calls = Vec::new();
    let secret: Arc<[u8]> = Arc::from(request.signing_secret.as_slice());
    let attempt = Attempt {
        delivery_id: request.delivery_id.clone(),
        event_id: request.event_id.clone(),
        event_type: request.event_type.clone(),
        tenant: request.tenant.clone(),
        channel: request.channel.clone(),
        timestamp_ms: request.timestamp_ms,
        attempt_time_ms: request.attempt_time_ms,
        attempt: request.attempt,
    };
    let mut outbound = request.into_outbound();
    let mut live: Vec<Option<Live>> = steps.iter().map(|_| None).collect();

    let outcome = 'chain: {
        for hook in [Hook::Filter, Hook::Transform, Hook::Sign] {
            for (index, (step, plugin)) in steps.iter().enumerate() {
                let implemented = match hook {
                    Hook::Filter => plugin.filter.is_some(),
                    Hook::Transform => plugin.transform.is_some(),
                    Hook::Sign => plugin.sign.is_some(),
                };
                if !implemented {
                    continue;
                }
                let failed = |f: CallFailure| ChainOutcome::Failed {
                    plugin: step.name.clone(),
                    code: f.code,
                    message: f.message,
                };
                let started = Instant::now();
                let slot = &mut live[index];
                let instance = match slot {
                    Some(instance) => instance,
                    None => {
                        let params = SandboxParams {
                            plugin: Arc::from(step.name.as_str()),
                            delivery_id: &attempt.delivery_id,
                            attempt_time_ms: attempt.attempt_time_ms,
                            memory_limit_bytes: settings.memory_limit_bytes,
                            logs: logs.clone(),
                            signing_secret: secret.clone(),
                            random_key: runtime.random_key(),
                        };
                        match instantiate(runtime, plugin, params, settings).await {
                            Ok(instance) => slot.insert(instance),
                            Err(f) => {
                                calls.push(PluginCall::new(step, plugin, f.code.as_str(), started));
                                break 'chain failed(f);
                            }
                        }
                    }
                };
                let event = attempt.event(&outbound);
                let step_outcome = match hook {
                    Hook::Filter => {
                        call_filter(runtime, instance, plugin, step, &event, settings).await
                    }
                    Hook::Transform => {
                        call_transform(
                            runtime,
                            instance,
                            plugin,
                            step,
                            &event,
                            settings,
                            &mut outbound,
                        )
                        .await
                    }
                    Hook::Sign => {
                        call_sign(
                            runtime,
                            instance,
                            plugin,
                            step,
                            &event,
                            settings,
                            &mut outbound,
                        )
                        .await
                    }
                };
                let code = match &step_outcome {
                    Ok(Step::Continue) => "ok",
                    Ok(Step::Stop) => "filtered",
                    Err(f) => f.code.as_str(),
                };
                calls.push(PluginCall::new(step, plugin, code, started));
                match step_outcome {
                    Ok(Step::Continue) => {}
                    Ok(Step::Stop) => {
                        break 'chain ChainOutcome::Filtered {
                            plugin: step.name.clone(),
                        };
                    }
                    Err(f) => break 'chain failed(f),
                }
            }
        }
        ChainOutcome::Deliver(outbound)
    };
    drop(live);
    let buffer = std::mem::replace(&mut *lock_logs(&logs), LogBuffer::new(0));
    (outcome, buffer, calls)
}

/// Whether the chain goes on after a hook.
enum Step {
    Continue,
    Stop,
}

pub(crate) async fn instantiate(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    params: SandboxParams<'_>,
    settings: &PluginSettings,
) -> Result<Live, CallFailure> {
    let mut store = runtime.call_store(params);
    runtime.arm(&mut store, settings);
    match plugin.pre.instantiate_async(&mut store).await {
        Ok(instance) => Ok(Live { store, instance }),
        Err(e) => Err(classify(&e, &store, CallPhase::Instantiate)),
    }
}

/// What a hook's call on `live` returned, as a chain reads it: the guest's value, the failure
/// its `plugin-error` names, or the trap (deadline, memory, fuel) that ended the call.
pub(crate) fn hook_returned<T>(
    live: &Live,
    returned: wasmtime::Result<Result<T, GuestError>>,
) -> Result<T, CallFailure> {
    match returned {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(guest_error(e)),
        Err(e) => Err(classify(&e, &live.store, CallPhase::Call)),
    }
}

/// Maps a `plugin-error` a hook returned to a failure.
fn guest_error(error: GuestError) -> CallFailure {
    match error {
        GuestError::InvalidEvent(m) => CallFailure::new(PluginFailureCode::InvalidEvent, m),
        GuestError::RetryLater(m) => {
            CallFailure::new(PluginFailureCode::Error, format!("retry later: {m}"))
        }
        GuestError::Internal(m) => {
            CallFailure::new(PluginFailureCode::Error, format!("internal error: {m}"))
        }
        GuestError::InvalidConfig(m) => {
            CallFailure::new(PluginFailureCode::Error, format!("invalid config: {m}"))
        }
    }
}

/// Binding a hook to a live instance only fails if the export changed type, which the load
/// pipeline already ruled out; report it as a host error, not the guest's.
pub(crate) fn bind_failure(e: &wasmtime::Error) -> CallFailure {
    CallFailure::new(PluginFailureCode::Error, format!("cannot bind hook: {e:#}"))
}

async fn call_filter(
    runtime: &Runtime,
    live: &mut Live,
    plugin: &LoadedPlugin,
    step: &ChainStep,
    event: &Event,
    settings: &PluginSettings,
) -> Result<Step, CallFailure> {
    let Some(indices) = &plugin.filter else {
        return Ok(Step::Continue);
    };
    let guest = indices
        .load(&mut live.store, &live.instance)
        .map_err(|e| bind_failure(&e))?;
    runtime.arm(&mut live.store, settings);
    let returned = guest
        .call_filter(&mut live.store, &step.config, event)
        .await;
    Ok(match hook_returned(live, returned)? {
        Verdict::Deliver => Step::Continue,
        Verdict::Drop => Step::Stop,
    })
}

async fn call_transform(
    runtime: &Runtime,
    live: &mut Live,
    plugin: &LoadedPlugin,
    step: &ChainStep,
    event: &Event,
    settings: &PluginSettings,
    outbound: &mut OutboundRequest,
) -> Result<Step, CallFailure> {
    let Some(indices) = &plugin.transform else {
        return Ok(Step::Continue);
    };
    let guest = indices
        .load(&mut live.store, &live.instance)
        .map_err(|e| bind_failure(&e))?;
    runtime.arm(&mut live.store, settings);
    let returned = guest
        .call_transform(&mut live.store, &step.config, event)
        .await;
    let patch = hook_returned(live, returned)?;
    match policy::apply_patch(outbound, patch, settings.max_output_payload_bytes) {
        Ok(PatchEffect::Continue) => Ok(Step::Continue),
        Ok(PatchEffect::Cancel) => Ok(Step::Stop),
        Err(reason) => Err(CallFailure::new(PluginFailureCode::InvalidOutput, reason)),
    }
}

async fn call_sign(
    runtime: &Runtime,
    live: &mut Live,
    plugin: &LoadedPlugin,
    step: &ChainStep,
    event: &Event,
    settings: &PluginSettings,
    outbound: &mut OutboundRequest,
) -> Result<Step, CallFailure> {
    let Some(indices) = &plugin.sign else {
        return Ok(Step::Continue);
    };
    let guest = indices
        .load(&mut live.store, &live.instance)
        .map_err(|e| bind_failure(&e))?;
    runtime.arm(&mut live.store, settings);
    live.store.data_mut().set_signing(true);
    let signed = guest.call_sign(&mut live.store, &step.config, event).await;
    live.store.data_mut().set_signing(false);
    let headers = hook_returned(live, signed)?;
    policy::apply_sign_headers(outbound, headers)
        .map(|()| Step::Continue)
        .map_err(|reason| CallFailure::new(PluginFailureCode::InvalidOutput, reason))
}
