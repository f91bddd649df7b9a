//! One attempt of one delivery: load → build the signed request → send → classify the
//! outcome → record it (attempt log, delivery state and next schedule entry in one write) →
//! apply consequences to the webhook (410 disables it; so does failing for too long).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

use super::client::{HttpOutcome, OutboundRequest};
use super::retry::{RetryPolicy, StatusClass, classify_status, parse_retry_after};
use super::{DeliveryContext, operational, sanitize_snippet};
use crate::config::TenantConfig;
use crate::fanout;
use crate::ids::{AttemptId, DeliveryId, WebhookId, now_ms};
use crate::plugin::{ChainOutcome, ChainStep, PluginRequest};
use crate::signing;
use crate::ssrf::SsrfPolicy;
use crate::store::{
    AttemptRecord, DeliveryStatus, DeliveryUpdate, EventRecord, WebhookRecord, WebhookStatus,
};
use serde_json::json;

/// How long a delivery of a tenant that vanished from config waits before it is looked at again.
const TENANT_MISSING_RECHECK: Duration = Duration::from_secs(60);

/// The Standard Webhooks body: `{"id","type","timestamp","channel"?,"data"}`.
#[derive(Serialize)]
struct DeliveredBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a RawValue,
}

/// The JSON body delivered for an event (the payload is copied byte for byte).
pub fn render_body(event: &EventRecord) -> Bytes {
    let created = SystemTime::UNIX_EPOCH + Duration::from_millis(event.created_at);
    let body = DeliveredBody {
        id: event.id.as_str(),
        event_type: &event.event_type,
        timestamp: humantime::format_rfc3339_millis(created).to_string(),
        channel: event.channel.as_deref(),
        data: &event.payload,
    };
    Bytes::from(serde_json::to_vec(&body).expect("the body serialises"))
}

/// The request of an attempt before hookd signs it: what the webhook says, or what its
/// plugin chain made of it.
#[derive(Debug, Clone)]
pub struct RequestParts {
    pub url: String,
    pub method: String,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RequestParts {
    /// The request as the webhook defines it (no plugins).
    pub fn for_webhook(webhook: &WebhookRecord, body: Bytes) -> Self {
        RequestParts {
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
}

/// Signs `parts` with the webhook's live secrets (Standard Webhooks headers on the final
/// bytes) and makes the request to send.
pub fn build_request(
    webhook: &WebhookRecord,
    parts: RequestParts,
    webhook_id_header: &str,
    timeout: Duration,
    now_ms: u64,
) -> Result<OutboundRequest, (&'static str, String)> {
    let url = Url::parse(&parts.url)
        .map_err(|err| ("invalid_url", format!("the URL is not valid: {err}")))?;
    let method = Method::from_bytes(parts.method.as_bytes()).map_err(|_| {
        (
            "invalid_method",
            format!("`{}` is not an HTTP method", parts.method),
        )
    })?;
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        // Validated when set (API or plugin output policy); skip anything that does not parse.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let content_type = HeaderValue::from_str(&parts.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_TYPE, content_type);
    let timestamp = now_ms / 1000;
    let keys: Vec<Vec<u8>> = webhook
        .live_secrets(now_ms)
        .filter_map(|s| signing::decode_secret(&s.secret).ok())
        .collect();
    let signature = signing::signature_header(
        keys.iter().map(Vec::as_slice),
        webhook_id_header,
        timestamp,
        &parts.body,
    );
    let header = |value: &str| {
        HeaderValue::from_str(value).expect("ids, digits and base64 are valid header values")
    };
    headers.insert("webhook-id", header(webhook_id_header));
    headers.insert("webhook-timestamp", header(&timestamp.to_string()));
    headers.insert("webhook-signature", header(&signature));
    Ok(OutboundRequest {
        url,
        method,
        headers,
        body: parts.body,
        timeout,
    })
}

/// An attempt's request after the plugin chain, or why there is none.
#[derive(Debug)]
pub enum Prepared {
    Send(Box<OutboundRequest>),
    /// A plugin dropped the delivery.
    Filtered {
        plugin: String,
    },
    /// The chain (or building the request) failed.
    Failed {
        code: String,
        message: String,
        retryable: bool,
    },
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

/// Renders, runs the webhook's plugin chain (if any), re-checks a URL a plugin changed, and
/// signs: the request to send, with the plugins' logs and how long the chain took.
pub async fn prepare(
    ctx: &DeliveryContext,
    input: &AttemptInput<'_>,
) -> (Prepared, Vec<String>, Duration) {
    let webhook = input.webhook;
    let timeout = webhook
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(input.tenant.delivery.attempt_timeout);
    let parts = RequestParts::for_webhook(webhook, render_body(input.event));
    if webhook.plugins.is_empty() {
        return (
            sign(webhook, parts, input, timeout),
            Vec::new(),
            Duration::ZERO,
        );
    }
    let steps: Vec<ChainStep> = webhook
        .plugins
        .iter()
        .map(|p| ChainStep {
            name: p.name.clone(),
            config: p.config.to_string(),
        })
        .collect();
    let signing_secret = webhook
        .live_secrets(input.now_ms)
        .next()
        .and_then(|s| signing::decode_secret(&s.secret).ok())
        .unwrap_or_default();
    let request = PluginRequest {
        delivery_id: input.webhook_id_header.to_string(),
        event_id: input.event.id.to_string(),
        event_type: input.event.event_type.clone(),
        tenant: input.tenant.id.clone(),
        channel: input.event.channel.clone(),
        timestamp_ms: input.event.created_at,
        attempt_time_ms: input.now_ms,
        attempt: input.attempt,
        url: parts.url,
        method: parts.method,
        content_type: parts.content_type,
        headers: parts.headers,
        body: parts.body,
        signing_secret,
    };
    let run = ctx
        .plugins
        .run_chain(&input.tenant.id, &steps, request, &input.tenant.plugins)
        .await;
    let (chain_outcome, chain_error) = match &run.outcome {
        ChainOutcome::Deliver(_) => ("deliver", None),
        ChainOutcome::Filtered { .. } => ("filtered", None),
        ChainOutcome::Failed { code, .. } => ("failed", Some(code.as_str())),
    };
    ctx.metrics.plugin_chain_ran(
        &input.tenant.id,
        chain_outcome,
        chain_error,
        run.duration,
        run.waited,
    );
    let logs = run
        .logs
        .iter()
        .map(|log| {
            tracing::debug!(
                tenant = %input.tenant.id,
                delivery_id = input.webhook_id_header,
                plugin = %log.plugin,
                level = log.level.as_str(),
                "plugin log: {}",
                log.message
            );
            format!("{} [{}] {}", log.plugin, log.level.as_str(), log.message)
        })
        .collect();
    let prepared = match run.outcome {
        ChainOutcome::Deliver(out) => {
            let checked = if out.url == webhook.url {
                Ok(())
            } else {
                // A URL a plugin chose passes the same checks as one a tenant entered; the
                // address itself is checked at connect time by the client.
                let policy = SsrfPolicy::new(&ctx.config.current().ssrf);
                policy.parse_url(&out.url).map(|_| ())
            };
            match checked {
                Ok(()) => {
                    let parts = RequestParts {
                        url: out.url,
                        method: out.method,
                        content_type: out.content_type,
                        headers: out.headers,
                        body: out.body,
                    };
                    sign(webhook, parts, input, timeout)
                }
                Err(err) => Prepared::Failed {
                    code: "plugin_invalid_output".into(),
                    message: format!("a plugin set the URL `{}`: {err}", out.url),
                    retryable: true,
                },
            }
        }
        ChainOutcome::Filtered { plugin } => Prepared::Filtered { plugin },
        ChainOutcome::Failed {
            plugin,
            code,
            message,
        } => Prepared::Failed {
            code: code.as_str().to_string(),
            message: format!("plugin `{plugin}`: {message}"),
            retryable: code.is_retryable(),
        },
    };
    (prepared, logs, run.waited + run.duration)
}

fn sign(
    webhook: &WebhookRecord,
    parts: RequestParts,
    input: &AttemptInput<'_>,
    timeout: Duration,
) -> Prepared {
    match build_request(
        webhook,
        parts,
        input.webhook_id_header,
        timeout,
        input.now_ms,
    ) {
        Ok(request) => Prepared::Send(Box::new(request)),
        Err((code, message)) => Prepared::Failed {
            code: code.to_string(),
            message,
            // The stored URL or method no longer parses: trying again will not help.
            retryable: false,
        },
    }
}

/// Runs one attempt of a claimed delivery. Failures of hookd itself (store errors) are
/// logged; the delivery stays queued and is tried again.
pub async fn run(
    ctx: &DeliveryContext,
    tenant: &str,
    webhook_id: &WebhookId,
    delivery_id: &DeliveryId,
) {
    if let Err(err) = try_run(ctx, tenant, webhook_id, delivery_id).await {
        warn!(tenant, webhook_id = %webhook_id, delivery_id = %delivery_id, error = %err, "attempt could not be completed; it stays queued");
    }
}

async fn try_run(
    ctx: &DeliveryContext,
    tenant: &str,
    webhook_id: &WebhookId,
    delivery_id: &DeliveryId,
) -> Result<(), crate::store::StoreError> {
    let store = &ctx.store;
    // The claim is the dispatcher's (in memory); the record stays `pending` until the
    // outcome is recorded, so an attempt costs one write, not two.
    let Some(delivery) = store.delivery(tenant, delivery_id)? else {
        return Ok(());
    };
    if !delivery.status.is_queued() {
        return Ok(());
    }
    let config = ctx.config.current();
    let Some(tenant_config) = config.tenant(tenant) else {
        // The tenant was removed from config; its deliveries wait (it may come back).
        debug!(tenant, "tenant not in config; delivery waits");
        store.requeue(
            tenant,
            delivery_id,
            now_ms() + TENANT_MISSING_RECHECK.as_millis() as u64,
        )?;
        return Ok(());
    };
    let Some(webhook) = store.webhook(tenant, webhook_id)? else {
        store.settle(
            tenant,
            delivery_id,
            DeliveryStatus::Failed,
            "webhook_deleted",
        )?;
        return Ok(());
    };
    let Some(event) = store.event(tenant, &delivery.event_id)? else {
        store.settle(tenant, delivery_id, DeliveryStatus::Failed, "event_missing")?;
        return Ok(());
    };
    if webhook.status != WebhookStatus::Active {
        // Parked: the dispatcher learns the webhook is disabled and stops claiming from it.
        store.requeue(
            tenant,
            delivery_id,
            delivery.next_attempt_at.unwrap_or_else(now_ms),
        )?;
        ctx.dispatch.webhook_changed(tenant, webhook_id);
        return Ok(());
    }
    let attempt_number = delivery.attempts + 1;
    let started_at = now_ms();
    let input = AttemptInput {
        tenant: tenant_config,
        webhook: &webhook,
        event: &event,
        webhook_id_header: delivery_id.as_str(),
        attempt: attempt_number,
        now_ms: started_at,
    };
    let (prepared, plugin_logs, chain_time) = prepare(ctx, &input).await;
    let tried = match prepared {
        Prepared::Send(request) => Tried::Http(
            ctx.client
                .send(*request, tenant_config.delivery.max_response_body_bytes)
                .await,
        ),
        Prepared::Filtered { plugin } => Tried::Filtered { plugin },
        Prepared::Failed {
            code,
            message,
            retryable,
        } => Tried::Failed {
            code,
            message,
            retryable,
        },
    };

    let policy = RetryPolicy::new(&tenant_config.delivery, webhook.max_attempts);
    let verdict = judge(&tried, &policy, attempt_number);
    let (status_code, error_code, error_message, snippet, latency) = match &tried {
        Tried::Http(HttpOutcome::Response {
            status,
            snippet,
            latency,
            ..
        }) => (
            Some(*status),
            (verdict.status != DeliveryStatus::Delivered).then(|| "http_status".to_string()),
            None,
            Some(sanitize_snippet(snippet)),
            *latency,
        ),
        Tried::Http(HttpOutcome::Failed {
            code,
            message,
            latency,
        }) => (
            None,
            Some(code.to_string()),
            Some(message.clone()),
            None,
            *latency,
        ),
        Tried::Filtered { plugin } => (
            None,
            None,
            Some(format!("dropped by plugin `{plugin}`")),
            None,
            chain_time,
        ),
        Tried::Failed { code, message, .. } => (
            None,
            Some(code.clone()),
            Some(message.clone()),
            None,
            chain_time,
        ),
    };
    let next_attempt_at = verdict
        .retry_in
        .map(|delay| now_ms() + delay.as_millis() as u64);
    let result = match (verdict.status, next_attempt_at) {
        (DeliveryStatus::Delivered, _) => "delivered",
        (DeliveryStatus::Filtered, _) => "filtered",
        (_, Some(_)) => "failed",
        _ if verdict.retryable => "exhausted",
        _ => "rejected",
    };
    let attempt = AttemptRecord {
        id: AttemptId::new(),
        delivery_id: delivery_id.clone(),
        webhook_id: webhook_id.clone(),
        attempt: attempt_number,
        started_at,
        url: webhook.url.clone(),
        latency_ms: latency.as_millis() as u64,
        result: result.to_string(),
        status_code,
        error_code: error_code.clone(),
        error_message,
        response_snippet: snippet,
        next_attempt_at,
        plugin_logs,
    };
    let update = DeliveryUpdate {
        status: if next_attempt_at.is_some() {
            DeliveryStatus::Pending
        } else {
            verdict.status
        },
        next_attempt_at,
        filtered_by: verdict.filtered_by.clone(),
    };
    ctx.recorder
        .record(crate::store::AttemptOutcome {
            tenant: tenant.to_string(),
            attempt,
            update,
        })
        .await?;
    ctx.metrics
        .attempt_finished(tenant, result, error_code.as_deref());
    if matches!(tried, Tried::Http(_)) {
        ctx.metrics.delivery_latency(tenant, latency);
    }
    info!(
        tenant,
        delivery_id = %delivery_id,
        webhook_id = %webhook_id,
        attempt = attempt_number,
        status = ?status_code,
        error = ?error_code,
        result,
        "attempt finished"
    );
    if !fanout::is_operational(&event.event_type) {
        let about = json!({
            "delivery_id": delivery_id,
            "webhook_id": webhook_id,
            "webhook_url": webhook.url,
            "event_id": event.id,
            "event_type": event.event_type,
            "attempt": attempt_number,
            "status_code": status_code,
            "error_code": error_code,
            "next_attempt_at": next_attempt_at.map(crate::api::rfc3339),
        });
        let failing_after = tenant_config.delivery.failing_event_after_attempts;
        let kind = match result {
            "failed" if attempt_number == failing_after => Some(operational::DELIVERY_FAILING),
            "exhausted" | "rejected" => Some(operational::DELIVERY_EXHAUSTED),
            "delivered" if attempt_number > failing_after => Some(operational::DELIVERY_RECOVERED),
            _ => None,
        };
        if let Some(kind) = kind {
            operational::emit(ctx, tenant, kind, webhook_id, about.clone()).await;
        }
        if let Tried::Failed { code, message, .. } = &tried
            && code.starts_with("plugin_")
            && delivery.last_error.as_deref() != Some(code.as_str())
        {
            let mut about = about;
            about["message"] = json!(message);
            operational::emit(ctx, tenant, operational::PLUGIN_FAILED, webhook_id, about).await;
        }
    }
    if !matches!(tried, Tried::Http(_)) {
        // Plugins' verdicts say nothing about the receiver's health.
        return Ok(());
    }

    // Consequences for the webhook.
    let now = now_ms();
    let disable_reason = if verdict.gone {
        Some("the receiver answered 410 Gone".to_string())
    } else {
        None
    };
    let succeeded = verdict.status == DeliveryStatus::Delivered;
    let needs_update = disable_reason.is_some()
        || (succeeded && webhook.failing_since.is_some())
        || (!succeeded && webhook.failing_since.is_none())
        || (!succeeded
            && webhook.failing_since.is_some_and(|since| {
                now.saturating_sub(since) >= tenant_config.delivery.disable_after.as_millis() as u64
            }));
    if needs_update {
        let disable_after = tenant_config.delivery.disable_after.as_millis() as u64;
        let changed = store
            .update_webhook(tenant, webhook_id, |w| {
                if succeeded {
                    w.failing_since = None;
                    return Ok::<_, std::convert::Infallible>(());
                }
                let since = *w.failing_since.get_or_insert(now);
                let reason = disable_reason.clone().or_else(|| {
                    (now.saturating_sub(since) >= disable_after).then(|| {
                        format!(
                            "every attempt failed for {}",
                            humantime::format_duration(Duration::from_secs(disable_after / 1000))
                        )
                    })
                });
                if let Some(reason) = reason
                    && w.status == WebhookStatus::Active
                {
                    w.status = WebhookStatus::Disabled;
                    w.disabled_reason = Some(reason);
                    w.updated_at = now;
                }
                Ok(())
            })
            .await;
        match changed {
            Ok(Some(w))
                if w.status == WebhookStatus::Disabled
                    && webhook.status == WebhookStatus::Active =>
            {
                warn!(tenant, webhook_id = %webhook_id, reason = ?w.disabled_reason, "webhook disabled");
                ctx.dispatch.webhook_changed(tenant, webhook_id);
                let about = json!({
                    "webhook_id": webhook_id,
                    "webhook_url": w.url,
                    "reason": w.disabled_reason,
                });
                operational::emit(
                    ctx,
                    tenant,
                    operational::WEBHOOK_DISABLED,
                    webhook_id,
                    about,
                )
                .await;
            }
            Ok(_) => {}
            Err(err) => {
                warn!(tenant, webhook_id = %webhook_id, error = %err, "could not update webhook health")
            }
        }
    }
    Ok(())
}

/// What an attempt did.
#[derive(Debug)]
enum Tried {
    Http(HttpOutcome),
    Filtered {
        plugin: String,
    },
    Failed {
        code: String,
        message: String,
        retryable: bool,
    },
}

/// The delivery-level meaning of one attempt's outcome.
#[derive(Debug, PartialEq)]
struct Verdict {
    status: DeliveryStatus,
    retry_in: Option<Duration>,
    retryable: bool,
    gone: bool,
    filtered_by: Option<String>,
}

fn judge(tried: &Tried, policy: &RetryPolicy, attempt_number: u32) -> Verdict {
    let (class, retry_after) = match tried {
        Tried::Http(HttpOutcome::Response {
            status,
            retry_after,
            ..
        }) => (
            classify_status(*status),
            retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
        ),
        // Refusing a blocked address again later would not change anything.
        Tried::Http(HttpOutcome::Failed {
            code: "blocked_address" | "invalid_url",
            ..
        }) => (StatusClass::Rejected, None),
        Tried::Http(HttpOutcome::Failed { .. }) => (StatusClass::Retryable, None),
        Tried::Filtered { plugin } => {
            return Verdict {
                status: DeliveryStatus::Filtered,
                retry_in: None,
                retryable: false,
                gone: false,
                filtered_by: Some(plugin.clone()),
            };
        }
        Tried::Failed { retryable, .. } => {
            let class = if *retryable {
                StatusClass::Retryable
            } else {
                StatusClass::Rejected
            };
            (class, None)
        }
    };
    let verdict = |status, retry_in, retryable, gone| Verdict {
        status,
        retry_in,
        retryable,
        gone,
        filtered_by: None,
    };
    match class {
        StatusClass::Delivered => verdict(DeliveryStatus::Delivered, None, false, false),
        StatusClass::Retryable => verdict(
            DeliveryStatus::Failed,
            policy.next_delay(attempt_number, retry_after, &mut rand::rng()),
            true,
            false,
        ),
        StatusClass::Rejected | StatusClass::Gone => verdict(
            DeliveryStatus::Failed,
            None,
            false,
            class == StatusClass::Gone,
        ),
    }
}

/// Result of `POST /v1/webhooks/{id}/test`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestSendOutcome {
    pub delivered: bool,
    pub webhook_id_header: String,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub response_snippet: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugin_logs: Vec<String>,
}

/// Sends a sample event to a webhook now, through its plugin chain, outside the queue:
/// nothing is stored or retried.
pub async fn test_send(
    ctx: &DeliveryContext,
    tenant: &TenantConfig,
    webhook: &WebhookRecord,
    event: &EventRecord,
) -> TestSendOutcome {
    let webhook_id_header = format!(
        "{}test_{}",
        DeliveryId::PREFIX,
        uuid::Uuid::now_v7().simple()
    );
    let input = AttemptInput {
        tenant,
        webhook,
        event,
        webhook_id_header: &webhook_id_header,
        attempt: 1,
        now_ms: now_ms(),
    };
    let (prepared, plugin_logs, chain_time) = prepare(ctx, &input).await;
    let mut outcome = TestSendOutcome {
        delivered: false,
        webhook_id_header: webhook_id_header.clone(),
        status_code: None,
        latency_ms: chain_time.as_millis() as u64,
        error_code: None,
        error_message: None,
        response_snippet: None,
        plugin_logs,
    };
    let request = match prepared {
        Prepared::Send(request) => request,
        Prepared::Filtered { plugin } => {
            outcome.error_code = Some("filtered".into());
            outcome.error_message = Some(format!("dropped by plugin `{plugin}`"));
            return outcome;
        }
        Prepared::Failed { code, message, .. } => {
            outcome.error_code = Some(code);
            outcome.error_message = Some(message);
            return outcome;
        }
    };
    match ctx
        .client
        .send(*request, tenant.delivery.max_response_body_bytes)
        .await
    {
        HttpOutcome::Response {
            status,
            snippet,
            latency,
            ..
        } => {
            outcome.delivered = classify_status(status) == StatusClass::Delivered;
            outcome.status_code = Some(status);
            outcome.latency_ms = latency.as_millis() as u64;
            outcome.error_code = (!outcome.delivered).then(|| "http_status".to_string());
            outcome.response_snippet = Some(sanitize_snippet(&snippet));
        }
        HttpOutcome::Failed {
            code,
            message,
            latency,
        } => {
            outcome.latency_ms = latency.as_millis() as u64;
            outcome.error_code = Some(code.to_string());
            outcome.error_message = Some(message);
        }
    }
    outcome
}
