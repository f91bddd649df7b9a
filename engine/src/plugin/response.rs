//! The `on-response` hook (`hookd:plugin@0.2.0`): after the request was sent and the receiver
//! answered, the webhook's plugins that export it say what the answer means for the delivery
//! ([`ResponseDecision`]). Types of the run ([`PluginResponse`], [`ResponseRun`]) and the
//! runner.
//!
//! Order: the chain's plugins that export `on-response`, in chain order, each in a fresh store
//! and instance under the tenant's budgets (deadline, memory, fuel), with the same sandbox and
//! deterministic clocks and random as the hooks before the send. The first decision other than
//! `default` ends the run. A plugin that fails here (traps, loops past its deadline, returns a
//! `plugin-error`, cannot be instantiated) counts as `default`: the request was sent and
//! answered, so a broken response plugin must not fail it; its error goes to the attempt's
//! plugin logs and the next plugin, or hookd's own rules, decide.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bindings::hookd::plugin::types::Event;
use super::bindings::v2::exports::hookd::plugin0_2_0::on_response::{self, Decision};
use super::chain::{self, ChainStep, Live, PluginCall};
use super::error::PluginFailureCode;
use super::policy::truncate;
use super::runtime::{CallFailure, LoadedPlugin, Runtime};
use super::sandbox::{LogBuffer, PluginLog, PluginLogLevel, SandboxParams, lock_logs};
use super::settings::PluginSettings;

/// Longest message a response plugin can attach to `fail` or `disable` (the attempt log and
/// the webhook's `disabled_reason` show it).
pub const MAX_DECISION_MESSAGE_BYTES: usize = 512;

/// The receiver's answer as a response hook sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginResponse {
    /// The HTTP status.
    pub status: u16,
    /// Response headers (names lower case), as capped by the delivery client.
    pub headers: Vec<(String, String)>,
    /// The start of the body, as much as the engine read.
    pub body: Vec<u8>,
    /// Whether the body was longer than `body`.
    pub body_truncated: bool,
}

/// What a response plugin decided, other than "hookd's default rules".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseDecision {
    /// Delivered, whatever the status said.
    Delivered,
    /// Try again, no sooner than `after` (the engine never retries sooner than the schedule).
    Retry {
        /// The plugin's `retry(some(seconds))`.
        after: Option<Duration>,
    },
    /// Fail now without retrying; the plugin's message.
    Fail {
        /// At most [`MAX_DECISION_MESSAGE_BYTES`], control characters replaced.
        message: String,
    },
    /// Fail now and disable the webhook with this reason.
    Disable {
        /// At most [`MAX_DECISION_MESSAGE_BYTES`], control characters replaced.
        reason: String,
    },
}

/// The result of [`PluginHost::run_on_response`](super::PluginHost::run_on_response).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseRun {
    /// The first decision other than `default`, and the plugin (chain step name) that made it;
    /// `None`: hookd's default rules decide.
    pub decision: Option<(String, ResponseDecision)>,
    /// Response plugins that ran (0: the chain has none, nothing ran).
    pub ran: usize,
    /// Logs the response plugins wrote, and one `error` line from `hookd` per plugin that
    /// failed, capped at `max_log_bytes`.
    pub logs: Vec<PluginLog>,
    /// Wall time of running the hooks, from the moment the plugin slots were granted.
    pub duration: Duration,
    /// Time spent waiting for plugin slots before running.
    pub waited: Duration,
    /// Each hook call, in order; the outcome is the decision's name or the failure code.
    pub calls: Vec<PluginCall>,
}

impl ResponseDecision {
    /// The decision's name (its WIT case), for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry { .. } => "retry",
            Self::Fail { .. } => "fail",
            Self::Disable { .. } => "disable",
        }
    }
}

/// Replaces control characters (a reason is shown in UIs and logs) and caps the length.
fn clean_message(message: &str) -> String {
    let cleaned: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(cleaned.trim(), MAX_DECISION_MESSAGE_BYTES).to_owned()
}

/// The engine's view of a guest decision; `None` for `default`.
fn decision(decision: Decision) -> Option<ResponseDecision> {
    match decision {
        Decision::Default => None,
        Decision::Delivered => Some(ResponseDecision::Delivered),
        Decision::Retry(after) => Some(ResponseDecision::Retry {
            after: after.map(|seconds| Duration::from_secs(u64::from(seconds))),
        }),
        Decision::Fail(message) => Some(ResponseDecision::Fail {
            message: clean_message(&message),
        }),
        Decision::Disable(reason) => Some(ResponseDecision::Disable {
            reason: clean_message(&reason),
        }),
    }
}

/// Runs the response hooks of `steps` (each has one) on `event` and `response`; the decision
/// and the logs.
pub(crate) async fn run(
    runtime: &Runtime,
    steps: &[(ChainStep, Arc<LoadedPlugin>)],
    event: Event,
    response: on_response::Response,
    settings: &PluginSettings,
) -> (
    Option<(String, ResponseDecision)>,
    LogBuffer,
    Vec<PluginCall>,
) {
    let logs = Arc::new(Mutex::new(LogBuffer::new(settings.max_log_bytes)));
    let no_secret: Arc<[u8]> = Arc::from(&b""[..]);
    let mut decided = None;
    let mut calls = Vec::new();
    for (step, plugin) in steps {
        let started = Instant::now();
        let params = SandboxParams {
            plugin: Arc::from(step.name.as_str()),
            delivery_id: &event.id,
            attempt_time_ms: event.attempt_time,
            memory_limit_bytes: settings.memory_limit_bytes,
            logs: logs.clone(),
            signing_secret: no_secret.clone(),
            random_key: runtime.random_key(),
        };
        let result = call(runtime, plugin, step, params, &event, &response, settings).await;
        let outcome = match &result {
            Ok(None) => "default",
            Ok(Some(made)) => made.as_str(),
            Err(failure) => failure.code.as_str(),
        };
        calls.push(PluginCall::new(step, plugin, outcome, started));
        match result {
            Ok(None) => {}
            Ok(Some(made)) => {
                decided = Some((step.name.clone(), made));
                break;
            }
            Err(failure) => lock_logs(&logs).push(
                "hookd",
                PluginLogLevel::Error,
                &format!(
                    "plugin `{}` on-response failed ({}): {}; hookd's default verdict applies",
                    step.name, failure.code, failure.message
                ),
            ),
        }
    }
    let buffer = std::mem::replace(&mut *lock_logs(&logs), LogBuffer::new(0));
    (decided, buffer, calls)
}

/// One plugin's response hook in a fresh instance, dropped at return.
async fn call(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    step: &ChainStep,
    params: SandboxParams<'_>,
    event: &Event,
    response: &on_response::Response,
    settings: &PluginSettings,
) -> Result<Option<ResponseDecision>, CallFailure> {
    let Some(indices) = &plugin.on_response else {
        return Ok(None);
    };
    let mut live: Live = chain::instantiate(runtime, plugin, params, settings).await?;
    let guest = indices
        .load(&mut live.store, &live.instance)
        .map_err(|e| chain::bind_failure(&e))?;
    runtime.arm(&mut live.store, settings);
    let returned = guest
        .call_on_response(&mut live.store, &step.config, event, response)
        .await;
    chain::hook_returned(&live, returned).map(decision)
}

/// The guest record of a response.
pub(crate) fn guest_response(response: PluginResponse) -> on_response::Response {
    on_response::Response {
        status: response.status,
        headers: response.headers,
        body: response.body,
        body_truncated: response.body_truncated,
    }
}

/// A run that did nothing (no response plugin, or the host could not run them).
pub(crate) fn failed_run(message: &str, code: PluginFailureCode) -> ResponseRun {
    ResponseRun {
        logs: vec![PluginLog {
            plugin: "hookd".into(),
            level: PluginLogLevel::Error,
            message: format!(
                "on-response not run ({code}): {message}; hookd's default verdict applies"
            ),
        }],
        ..ResponseRun::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_map_and_messages_are_cleaned_and_capped() {
        assert_eq!(decision(Decision::Default), None);
        assert_eq!(
            decision(Decision::Retry(Some(90))),
            Some(ResponseDecision::Retry {
                after: Some(Duration::from_secs(90))
            })
        );
        assert_eq!(
            decision(Decision::Disable("closed\n\u{1b}[31maccount".into())),
            Some(ResponseDecision::Disable {
                reason: "closed  [31maccount".into()
            })
        );
        let Some(ResponseDecision::Fail { message }) = decision(Decision::Fail("x".repeat(5000)))
        else {
            panic!("fail maps to fail");
        };
        assert_eq!(message.len(), MAX_DECISION_MESSAGE_BYTES);
    }
}
