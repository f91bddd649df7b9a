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
use super::{DeliveryContext, sanitize_snippet};
use crate::ids::{AttemptId, DeliveryId, WebhookId, now_ms};
use crate::signing;
use crate::store::{
    AttemptRecord, DeliveryStatus, DeliveryUpdate, EventRecord, WebhookRecord, WebhookStatus,
};

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

/// Builds the signed request for a delivery of `event` to `webhook`.
pub fn build_request(
    webhook: &WebhookRecord,
    webhook_id_header: &str,
    body: Bytes,
    timeout: Duration,
    now_ms: u64,
) -> Result<OutboundRequest, (&'static str, String)> {
    let url = Url::parse(&webhook.url).map_err(|err| {
        (
            "invalid_url",
            format!("the webhook URL is not valid: {err}"),
        )
    })?;
    let mut headers = HeaderMap::new();
    for (name, value) in &webhook.headers {
        // Validated when set; skip anything that no longer parses rather than fail.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let timestamp = now_ms / 1000;
    let keys: Vec<Vec<u8>> = webhook
        .live_secrets(now_ms)
        .filter_map(|s| signing::decode_secret(&s.secret).ok())
        .collect();
    let signature = signing::signature_header(
        keys.iter().map(Vec::as_slice),
        webhook_id_header,
        timestamp,
        &body,
    );
    let header = |value: &str| {
        HeaderValue::from_str(value).expect("ids, digits and base64 are valid header values")
    };
    headers.insert("webhook-id", header(webhook_id_header));
    headers.insert("webhook-timestamp", header(&timestamp.to_string()));
    headers.insert("webhook-signature", header(&signature));
    Ok(OutboundRequest {
        url,
        method: Method::POST,
        headers,
        body,
        timeout,
    })
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
    let Some(delivery) = store.mark_in_flight(tenant, delivery_id)? else {
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
    let timeout = webhook
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(tenant_config.delivery.attempt_timeout);
    let body = render_body(&event);
    let outcome = match build_request(&webhook, delivery_id.as_str(), body, timeout, started_at) {
        Ok(request) => {
            ctx.client
                .send(request, tenant_config.delivery.max_response_body_bytes)
                .await
        }
        Err((code, message)) => HttpOutcome::Failed {
            code,
            message,
            latency: Duration::ZERO,
        },
    };

    let policy = RetryPolicy::new(&tenant_config.delivery, webhook.max_attempts);
    let verdict = judge(&outcome, &policy, attempt_number);
    let (status_code, error_code, error_message, snippet, latency) = match &outcome {
        HttpOutcome::Response {
            status,
            snippet,
            latency,
            ..
        } => (
            Some(*status),
            (verdict.status != DeliveryStatus::Delivered).then(|| "http_status".to_string()),
            None,
            Some(sanitize_snippet(snippet)),
            *latency,
        ),
        HttpOutcome::Failed {
            code,
            message,
            latency,
        } => (
            None,
            Some(code.to_string()),
            Some(message.clone()),
            None,
            *latency,
        ),
    };
    let next_attempt_at = verdict
        .retry_in
        .map(|delay| now_ms() + delay.as_millis() as u64);
    let result = match (verdict.status, next_attempt_at) {
        (DeliveryStatus::Delivered, _) => "delivered",
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
        plugin_logs: Vec::new(),
    };
    let update = DeliveryUpdate {
        status: if next_attempt_at.is_some() {
            DeliveryStatus::Pending
        } else {
            verdict.status
        },
        next_attempt_at,
        filtered_by: None,
    };
    store.record_attempt(tenant, &attempt, &update)?;
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
                    return Ok::<_, ()>(());
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
            Ok(Some(w)) if w.status == WebhookStatus::Disabled => {
                warn!(tenant, webhook_id = %webhook_id, reason = ?w.disabled_reason, "webhook disabled");
                ctx.dispatch.webhook_changed(tenant, webhook_id);
            }
            Ok(_) => {}
            Err(err) => {
                warn!(tenant, webhook_id = %webhook_id, error = %err, "could not update webhook health")
            }
        }
    }
    Ok(())
}

/// The delivery-level meaning of one attempt's outcome.
#[derive(Debug, PartialEq)]
struct Verdict {
    status: DeliveryStatus,
    retry_in: Option<Duration>,
    retryable: bool,
    gone: bool,
}

fn judge(outcome: &HttpOutcome, policy: &RetryPolicy, attempt_number: u32) -> Verdict {
    let (class, retry_after) = match outcome {
        HttpOutcome::Response {
            status,
            retry_after,
            ..
        } => (
            classify_status(*status),
            retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
        ),
        // Refusing a blocked address again later would not change anything.
        HttpOutcome::Failed {
            code: "blocked_address" | "invalid_url",
            ..
        } => (StatusClass::Rejected, None),
        HttpOutcome::Failed { .. } => (StatusClass::Retryable, None),
    };
    match class {
        StatusClass::Delivered => Verdict {
            status: DeliveryStatus::Delivered,
            retry_in: None,
            retryable: false,
            gone: false,
        },
        StatusClass::Retryable => Verdict {
            status: DeliveryStatus::Failed,
            retry_in: policy.next_delay(attempt_number, retry_after, &mut rand::rng()),
            retryable: true,
            gone: false,
        },
        StatusClass::Rejected | StatusClass::Gone => Verdict {
            status: DeliveryStatus::Failed,
            retry_in: None,
            retryable: false,
            gone: class == StatusClass::Gone,
        },
    }
}

/// Result of `POST /v1/webhooks/{id}/test`.
#[derive(Debug, Serialize)]
pub struct TestSendOutcome {
    pub delivered: bool,
    pub webhook_id_header: String,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub response_snippet: Option<String>,
}

/// Sends a sample event to a webhook now, outside the queue: nothing is stored or retried.
pub async fn test_send(
    ctx: &DeliveryContext,
    tenant: &str,
    webhook: &WebhookRecord,
    event: &EventRecord,
) -> TestSendOutcome {
    let config = ctx.config.current();
    let delivery = config
        .tenant(tenant)
        .map(|t| t.delivery.clone())
        .unwrap_or_else(|| config.delivery.clone());
    let webhook_id_header = format!(
        "{}test_{}",
        DeliveryId::PREFIX,
        uuid::Uuid::now_v7().simple()
    );
    let timeout = webhook
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(delivery.attempt_timeout);
    let outcome = match build_request(
        webhook,
        &webhook_id_header,
        render_body(event),
        timeout,
        now_ms(),
    ) {
        Ok(request) => {
            ctx.client
                .send(request, delivery.max_response_body_bytes)
                .await
        }
        Err((code, message)) => HttpOutcome::Failed {
            code,
            message,
            latency: Duration::ZERO,
        },
    };
    match outcome {
        HttpOutcome::Response {
            status,
            snippet,
            latency,
            ..
        } => TestSendOutcome {
            delivered: classify_status(status) == StatusClass::Delivered,
            webhook_id_header,
            status_code: Some(status),
            latency_ms: latency.as_millis() as u64,
            error_code: (classify_status(status) != StatusClass::Delivered)
                .then(|| "http_status".to_string()),
            error_message: None,
            response_snippet: Some(sanitize_snippet(&snippet)),
        },
        HttpOutcome::Failed {
            code,
            message,
            latency,
        } => TestSendOutcome {
            delivered: false,
            webhook_id_header,
            status_code: None,
            latency_ms: latency.as_millis() as u64,
            error_code: Some(code.to_string()),
            error_message: Some(message),
            response_snippet: None,
        },
    }
}
