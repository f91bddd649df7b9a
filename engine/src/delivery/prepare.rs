//! The prepare stage of an attempt: the signed request to send, or why nothing is sent.
//!
//! Renders the Standard Webhooks body, runs the webhook's plugin chain (if any; the plugin host
//! queues it under the tenant's plugin slots), re-checks a URL a plugin changed, and signs the
//! final bytes with the webhook's live secrets. Shared by queued attempts, test sends and
//! `simulate`, so all three produce exactly the same request.
//!
//! Signing costs one HMAC over the whole body per live secret: at most the tenant's
//! `secrets_per_webhook` quota of them, and, for a large body, on the blocking pool
//! (`crate::offload`), so it cannot stall an async worker.

use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use super::DeliveryContext;
use super::judge::Tried;
use crate::config::TenantConfig;
use crate::outbound::OutboundRequest;
use crate::plugin::{ChainOutcome, ChainStep, PluginFailureCode, PluginRequest, ShadowAttempt};
use crate::signing;
use crate::ssrf::SsrfPolicy;
use crate::store::{EventRecord, WebhookRecord};

/// The request as the webhook defines it, before plugins: its URL and static headers, `POST`,
/// JSON.
pub fn webhook_request(webhook: &WebhookRecord, body: Bytes) -> OutboundRequest {
    OutboundRequest {
        url: webhook.url.clone(),
        method: "POST".to_string(),
        content_type: "application/json".to_string(),
        headers: webhook
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body,
    }
}

/// Everything an attempt needs to know about what it sends.
pub struct AttemptInput<'a> {
    pub tenant: &'a TenantConfig,
    pub webhook: &'a WebhookRecord,
    pub event: &'a EventRecord,
    /// The `webhook-id` header: the delivery id (or a one-off id for test sends).
    pub webhook_id_header: &'a str,
    pub attempt: u32,
    pub now_ms: u64,
}

impl AttemptInput<'_> {
    /// The attempt's total time: the webhook's `timeout_ms`, else the tenant's default.
    pub fn timeout(&self) -> Duration {
        self.webhook
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.tenant.delivery.attempt_timeout)
    }

    /// What the plugin hooks get for this attempt: its identity and `request` (as the webhook
    /// defines it before the chain, or as sent for `on-response`). `signing_secret` is the
    /// key a sign hook's `signing-key.mac` uses (empty after the send).
    pub fn plugin_request(
        &self,
        request: OutboundRequest,
        signing_secret: Vec<u8>,
    ) -> PluginRequest {
        PluginRequest {
            delivery_id: self.webhook_id_header.to_string(),
            event_id: self.event.id.to_string(),
            event_type: self.event.event_type.clone(),
            tenant: self.tenant.id.clone(),
            channel: self.event.channel.clone(),
            timestamp_ms: self.event.created_at,
            attempt_time_ms: self.now_ms,
            attempt: self.attempt,
            url: request.url,
            method: request.method,
            content_type: request.content_type,
            headers: request.headers,
            body: request.body,
            signing_secret,
        }
    }

    /// The decoded keys that sign this attempt: the live secrets, newest first, at most the
    /// tenant's `secrets_per_webhook` (a rotation keeps no more, and this bounds the HMAC work
    /// for records written before the quota existed).
    fn signing_keys(&self) -> Vec<Vec<u8>> {
        self.webhook
            .live_secrets(self.now_ms)
            .take(self.tenant.quotas.secrets_per_webhook as usize)
            .filter_map(|s| signing::decode_secret(&s.secret).ok())
            .collect()
    }
}

/// What the prepare stage leaves for the next one.
#[derive(Debug)]
pub enum Prepared {
    /// Send this signed request.
    Send(OutboundRequest),
    /// Nothing is sent: a plugin dropped the delivery or failed.
    NotSent(Tried),
}

/// The prepared attempt with what the plugin chain said along the way.
#[derive(Debug)]
pub struct Preparation {
    pub prepared: Prepared,
    /// `<plugin> [<level>] <message>` lines.
    pub plugin_logs: Vec<String>,
    /// How long the plugin chain took (including its wait for a plugin slot).
    pub chain_time: Duration,
    /// The body sent is the event's [`EventRecord::delivered_body`] unchanged (no plugin
    /// changed it).
    pub body_as_rendered: bool,
    /// The webhook's chain as it ran (empty without plugins), for its `on-response` hooks.
    pub steps: Vec<ChainStep>,
}

/// Renders, runs the plugin chain, re-checks a URL a plugin changed, and signs.
pub async fn prepare(ctx: &DeliveryContext, input: &AttemptInput<'_>) -> Preparation {
    prepare_as(ctx, input, Shadowed::No).await
}

/// [`prepare`] for a real (queued) attempt: when a plugin of its chain has a candidate version
/// in a shadow run, the attempt is also handed to it (`plugin/shadow.rs`, off this path).
pub async fn prepare_attempt(ctx: &DeliveryContext, input: &AttemptInput<'_>) -> Preparation {
    prepare_as(ctx, input, Shadowed::Yes).await
}

/// Whether an attempt takes part in shadow runs (test sends and simulations do not).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shadowed {
    Yes,
    No,
}

async fn prepare_as(
    ctx: &DeliveryContext,
    input: &AttemptInput<'_>,
    shadowed: Shadowed,
) -> Preparation {
    let rendered = input.event.delivered_body();
    let request = webhook_request(input.webhook, rendered.clone());
    if input.webhook.plugins.is_empty() {
        return Preparation {
            prepared: Prepared::Send(sign(ctx, input, request).await),
            plugin_logs: Vec::new(),
            chain_time: Duration::ZERO,
            body_as_rendered: true,
            steps: Vec::new(),
        };
    }
    let steps = chain_steps(input.webhook);
    let (outcome, plugin_logs, chain_time) = run_chain(ctx, input, &steps, request, shadowed).await;
    let body_as_rendered =
        matches!(&outcome, ChainOutcome::Deliver(request) if request.body == rendered);
    let prepared = match outcome {
        ChainOutcome::Deliver(request) => match check_plugin_url(ctx, input, &request) {
            Ok(()) => Prepared::Send(sign(ctx, input, request).await),
            Err(tried) => Prepared::NotSent(tried),
        },
        ChainOutcome::Filtered { plugin } => Prepared::NotSent(Tried::Filtered { plugin }),
        ChainOutcome::Failed {
            plugin,
            code,
            message,
        } => Prepared::NotSent(Tried::PluginFailed {
            message: format!("plugin `{plugin}`: {message}"),
            plugin,
            code,
        }),
    };
    Preparation {
        prepared,
        plugin_logs,
        chain_time,
        body_as_rendered,
        steps,
    }
}

/// The webhook's plugin chain, each step with its config as JSON text.
fn chain_steps(webhook: &WebhookRecord) -> Vec<ChainStep> {
    webhook
        .plugins
        .iter()
        .map(|p| ChainStep {
            name: p.name.clone(),
            config: p.config.to_string(),
            version: p.version,
        })
        .collect()
}

/// Runs the webhook's chain on `request`: its outcome, its log lines, how long it took.
async fn run_chain(
    ctx: &DeliveryContext,
    input: &AttemptInput<'_>,
    steps: &[ChainStep],
    request: OutboundRequest,
    shadowed: Shadowed,
) -> (ChainOutcome, Vec<String>, Duration) {
    // A sign hook computes `signing-key.mac` with the current secret (it never enters the guest).
    let signing_secret = input.signing_keys().into_iter().next().unwrap_or_default();
    let plugin_request = input.plugin_request(request, signing_secret);
    let tenant = &input.tenant.id;
    let shadow = (shadowed == Shadowed::Yes)
        .then(|| ctx.plugins.shadow_plan(tenant, steps))
        .flatten()
        .map(|plan| (plan, plugin_request.clone()));
    let run = ctx
        .plugins
        .run_chain(tenant, steps, plugin_request, &input.tenant.plugins)
        .await;
    if let Some((plan, request)) = shadow {
        let (metrics, tenant_id) = (ctx.metrics.clone(), input.tenant.id.clone());
        let attempt = ShadowAttempt {
            webhook_id: input.webhook.id.as_str(),
            settings: &input.tenant.plugins,
            count_calls: Box::new(move |calls| metrics.plugin_calls(&tenant_id, calls)),
        };
        ctx.plugins.shadow(plan, steps, request, &run, attempt);
    }
    let (chain_outcome, chain_error) = match &run.outcome {
        ChainOutcome::Deliver(_) => ("deliver", None),
        ChainOutcome::Filtered { .. } => ("filtered", None),
        ChainOutcome::Failed { code, .. } => ("failed", Some(code.as_str())),
    };
    ctx.metrics.plugin_calls(&input.tenant.id, &run.calls);
    ctx.metrics.plugin_chain_ran(
        &input.tenant.id,
        chain_outcome,
        chain_error,
        run.duration,
        run.waited,
        run.cpu,
    );
    let logs = run
        .logs
        .iter()
        .map(|log| {
            debug!(
                plugin = %log.plugin,
                level = log.level.as_str(),
                "plugin log: {}",
                log.message
            );
            format!("{} [{}] {}", log.plugin, log.level.as_str(), log.message)
        })
        .collect();
    (run.outcome, logs, run.waited + run.duration)
}

/// A URL a plugin chose passes the same syntax checks as one a tenant entered; the address
/// itself is checked at connect time by the client.
fn check_plugin_url(
    ctx: &DeliveryContext,
    input: &AttemptInput<'_>,
    request: &OutboundRequest,
) -> Result<(), Tried> {
    if request.url == input.webhook.url {
        return Ok(());
    }
    let policy = SsrfPolicy::new(&ctx.config.current().ssrf);
    policy
        .parse_url(&request.url)
        .map(|_| ())
        .map_err(|err| Tried::PluginFailed {
            plugin: "hookd".to_string(),
            code: PluginFailureCode::InvalidOutput,
            message: format!("a plugin set the URL `{}`: {err}", request.url),
        })
}

/// Adds the Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`
/// with one `v1,` signature per signing key) for the final bytes.
async fn sign(
    ctx: &DeliveryContext,
    input: &AttemptInput<'_>,
    mut request: OutboundRequest,
) -> OutboundRequest {
    let timestamp = input.now_ms / 1000;
    let keys = input.signing_keys();
    let id = input.webhook_id_header.to_string();
    let body = request.body.clone();
    let signature = ctx
        .offload
        .by_size(&input.tenant.id, body.len(), move || {
            signing::signature_header(keys.iter().map(Vec::as_slice), &id, timestamp, &body)
        })
        .await;
    request.set_header("webhook-id", input.webhook_id_header.to_string());
    request.set_header("webhook-timestamp", timestamp.to_string());
    request.set_header("webhook-signature", signature);
    request
}
