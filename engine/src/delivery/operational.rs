//! Operational events: hookd tells a tenant about trouble through the tenant's own event
//! stream (`hookd.delivery.failing`, `hookd.delivery.exhausted`, `hookd.delivery.recovered`,
//! `hookd.webhook.disabled`, `hookd.plugin.failed`), so a webhook subscribed to `hookd.*`
//! (Slack, PagerDuty, the tenant's own service) hears about it through the same durable
//! delivery path as any event.
//!
//! An operational event is stored only when at least one webhook subscribes to it.
//!
//! No loops: an operational event is never delivered to the webhook it is about, deliveries of
//! operational events never cause operational events themselves, and `*` filters do not match
//! them (see `fanout`).

use serde_json::value::RawValue;
use tracing::warn;

use super::DeliveryContext;
use crate::ids::{WebhookId, now_ms};
use crate::ingest::{EventInput, prepare_event};

pub const DELIVERY_FAILING: &str = "hookd.delivery.failing";
pub const DELIVERY_EXHAUSTED: &str = "hookd.delivery.exhausted";
pub const DELIVERY_RECOVERED: &str = "hookd.delivery.recovered";
pub const WEBHOOK_DISABLED: &str = "hookd.webhook.disabled";
pub const PLUGIN_FAILED: &str = "hookd.plugin.failed";

/// Emits one operational event for `tenant` about `webhook` (which will not receive it) and
/// waits until it is durable. Failures are logged: they never fail the attempt that caused them.
pub async fn emit(
    ctx: &DeliveryContext,
    tenant: &str,
    event_type: &str,
    about: &WebhookId,
    payload: serde_json::Value,
) {
    let payload = match RawValue::from_string(payload.to_string()) {
        Ok(payload) => payload,
        Err(_) => return,
    };
    let input = EventInput {
        event_type: event_type.to_string(),
        channel: None,
        idempotency_key: None,
        created_at: now_ms(),
        payload,
    };
    let result = match prepare_event(ctx.store.as_ref(), tenant, input, 0, Some(about)).await {
        // Nobody listens: nothing to store (an outage would otherwise add one durable event
        // per failed delivery for no reader).
        Ok(new) if new.webhooks.is_empty() => Ok(()),
        Ok(new) => ctx
            .ingest
            .submit(new)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    if let Err(err) = result {
        warn!(tenant, webhook_id = %about, event_type, error = %err, "could not emit an operational event");
    }
}
