//! Operational events: hookd tells a tenant about trouble through the tenant's own event
//! stream (`hookd.delivery.failing`, `hookd.delivery.exhausted`, `hookd.delivery.recovered`,
//! `hookd.webhook.disabled`, `hookd.plugin.failed`), so a webhook subscribed to `hookd.*`
//! (Slack, PagerDuty, the tenant's own service) hears about it through the same durable
//! delivery path as any event. [`OperationalEvent`] is the typed list; its payloads are the
//! documented JSON shapes.
//!
//! An operational event is stored only when at least one webhook subscribes to it.
//!
//! No loops: an operational event is never delivered to the webhook it is about, deliveries of
//! operational events never cause operational events themselves, and `*` filters do not match
//! them (see `fanout`).

use serde::Serialize;
use serde_json::value::RawValue;
use tracing::warn;

use super::DeliveryContext;
use crate::ids::{EventId, WebhookId, now_ms};
use crate::ingest::{EventInput, prepare_event};

/// The facts about one delivery's attempt that every delivery event carries.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeliveryFacts {
    pub delivery_id: String,
    pub webhook_id: WebhookId,
    pub webhook_url: String,
    pub event_id: EventId,
    pub event_type: String,
    pub attempt: u32,
    pub status_code: Option<u16>,
    pub error_code: Option<&'static str>,
    /// RFC 3339, when another attempt is scheduled.
    pub next_attempt_at: Option<String>,
}

/// One operational event, before it becomes a `hookd.*` event of its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationalEvent {
    /// A delivery failed `failing_event_after_attempts` times in a row and will be retried.
    DeliveryFailing(DeliveryFacts),
    /// A delivery ended failed: out of attempts, or refused for good.
    DeliveryExhausted(DeliveryFacts),
    /// A delivery that had been failing was delivered.
    DeliveryRecovered(DeliveryFacts),
    /// A plugin of the webhook's chain failed (once per delivery and failure code).
    PluginFailed {
        facts: DeliveryFacts,
        message: String,
    },
    /// hookd disabled the webhook.
    WebhookDisabled {
        webhook_id: WebhookId,
        webhook_url: String,
        reason: Option<String>,
    },
}

#[derive(Serialize)]
struct PluginFailedPayload<'a> {
    #[serde(flatten)]
    facts: &'a DeliveryFacts,
    message: &'a str,
}

#[derive(Serialize)]
struct WebhookDisabledPayload<'a> {
    webhook_id: &'a WebhookId,
    webhook_url: &'a str,
    reason: &'a Option<String>,
}

impl OperationalEvent {
    /// The `hookd.*` event type.
    pub fn event_type(&self) -> &'static str {
        match self {
            OperationalEvent::DeliveryFailing(_) => "hookd.delivery.failing",
            OperationalEvent::DeliveryExhausted(_) => "hookd.delivery.exhausted",
            OperationalEvent::DeliveryRecovered(_) => "hookd.delivery.recovered",
            OperationalEvent::PluginFailed { .. } => "hookd.plugin.failed",
            OperationalEvent::WebhookDisabled { .. } => "hookd.webhook.disabled",
        }
    }

    /// The webhook the event is about (it never receives the event).
    pub fn about(&self) -> &WebhookId {
        match self {
            OperationalEvent::DeliveryFailing(facts)
            | OperationalEvent::DeliveryExhausted(facts)
            | OperationalEvent::DeliveryRecovered(facts)
            | OperationalEvent::PluginFailed { facts, .. } => &facts.webhook_id,
            OperationalEvent::WebhookDisabled { webhook_id, .. } => webhook_id,
        }
    }

    /// The event's payload (`data` of the delivered body).
    pub fn payload(&self) -> String {
        let json = match self {
            OperationalEvent::DeliveryFailing(facts)
            | OperationalEvent::DeliveryExhausted(facts)
            | OperationalEvent::DeliveryRecovered(facts) => serde_json::to_string(facts),
            OperationalEvent::PluginFailed { facts, message } => {
                serde_json::to_string(&PluginFailedPayload { facts, message })
            }
            OperationalEvent::WebhookDisabled {
                webhook_id,
                webhook_url,
                reason,
            } => serde_json::to_string(&WebhookDisabledPayload {
                webhook_id,
                webhook_url,
                reason,
            }),
        };
        json.expect("operational payloads serialise")
    }
}

/// Emits one operational event for `tenant` and waits until it is durable. Failures are
/// logged: they never fail the attempt that caused them.
pub async fn emit(ctx: &DeliveryContext, tenant: &str, event: OperationalEvent) {
    let event_type = event.event_type();
    let about = event.about().clone();
    let payload = match RawValue::from_string(event.payload()) {
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
    let result = match prepare_event(ctx.store.as_ref(), tenant, input, 0, Some(&about)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> DeliveryFacts {
        DeliveryFacts {
            delivery_id: "dlv_1".into(),
            webhook_id: WebhookId::new(),
            webhook_url: "https://receiver.example/hook".into(),
            event_id: EventId::new(),
            event_type: "user.created".into(),
            attempt: 3,
            status_code: Some(500),
            error_code: Some("http_status"),
            next_attempt_at: Some("2026-01-01T00:00:00.000Z".into()),
        }
    }

    #[test]
    fn payloads_keep_their_documented_shapes() {
        let failing: serde_json::Value =
            serde_json::from_str(&OperationalEvent::DeliveryFailing(facts()).payload()).unwrap();
        for key in [
            "delivery_id",
            "webhook_id",
            "webhook_url",
            "event_id",
            "event_type",
            "attempt",
            "status_code",
            "error_code",
            "next_attempt_at",
        ] {
            assert!(failing.get(key).is_some(), "{key} in {failing}");
        }
        let plugin = OperationalEvent::PluginFailed {
            facts: facts(),
            message: "plugin `p`: trapped".into(),
        };
        assert_eq!(plugin.event_type(), "hookd.plugin.failed");
        let json: serde_json::Value = serde_json::from_str(&plugin.payload()).unwrap();
        assert_eq!(json["message"], "plugin `p`: trapped");
        assert_eq!(json["attempt"], 3);
        let webhook_id = WebhookId::new();
        let disabled = OperationalEvent::WebhookDisabled {
            webhook_id: webhook_id.clone(),
            webhook_url: "https://x.example/".into(),
            reason: Some("the receiver answered 410 Gone".into()),
        };
        assert_eq!(disabled.about(), &webhook_id);
        let json: serde_json::Value = serde_json::from_str(&disabled.payload()).unwrap();
        assert_eq!(json["reason"], "the receiver answered 410 Gone");
    }
}
