//! The consequences stage of an attempt, after its outcome is recorded: what it means beyond
//! its delivery. Operational events for the tenant ([`OperationalEvent`]: failing, exhausted,
//! recovered, plugin failed, webhook disabled) and the webhook's health (`failing_since`;
//! disabled on 410 Gone, on a response verdict, or after failing for `disable_after`).
//!
//! Runs with no delivery permit held: its writes wait for the store, never for a receiver.

use std::time::Duration;

use tracing::warn;

use super::DeliveryContext;
use super::judge::{AttemptResult, Tried, Verdict};
use super::operational::{self, DeliveryFacts, OperationalEvent};
use crate::config::TenantConfig;
use crate::fanout;
use crate::ids::now_ms;
use crate::store::{DeliveryRecord, WebhookRecord, WebhookStatus};

/// What the consequences of one recorded attempt are computed from.
pub struct Recorded<'a> {
    pub tenant: &'a TenantConfig,
    pub webhook: &'a WebhookRecord,
    /// The delivery as it was before this attempt.
    pub delivery: &'a DeliveryRecord,
    pub facts: DeliveryFacts,
    pub tried: &'a Tried,
    pub verdict: &'a Verdict,
}

/// The operational events an attempt causes (none for deliveries of operational events).
pub fn operational_events(recorded: &Recorded<'_>) -> Vec<OperationalEvent> {
    if fanout::is_operational(&recorded.facts.event_type) {
        return Vec::new();
    }
    let attempt = recorded.facts.attempt;
    let failing_after = recorded.tenant.delivery.failing_event_after_attempts;
    let facts = || recorded.facts.clone();
    let mut events = Vec::new();
    match recorded.verdict.result {
        AttemptResult::Failed if attempt == failing_after => {
            events.push(OperationalEvent::DeliveryFailing(facts()));
        }
        AttemptResult::Exhausted | AttemptResult::Rejected => {
            events.push(OperationalEvent::DeliveryExhausted(facts()));
        }
        AttemptResult::Delivered if attempt > failing_after => {
            events.push(OperationalEvent::DeliveryRecovered(facts()));
        }
        _ => {}
    }
    // Once per delivery and failure code: a plugin failing the same way on every retry is one
    // alert, not one per attempt.
    if let Tried::PluginFailed { code, message, .. } = recorded.tried
        && recorded.delivery.last_error.as_deref() != Some(code.as_str())
    {
        events.push(OperationalEvent::PluginFailed {
            facts: facts(),
            message: message.clone(),
        });
    }
    events
}

/// Applies the consequences of a recorded attempt: operational events, then the webhook's
/// health. Failures are logged; the attempt is recorded either way.
pub async fn apply(ctx: &DeliveryContext, recorded: Recorded<'_>) {
    let tenant = recorded.tenant.id.as_str();
    for event in operational_events(&recorded) {
        operational::emit(ctx, tenant, event).await;
    }
    if recorded.tried.reached_receiver()
        && let Some(disabled) = update_health(ctx, &recorded).await
    {
        operational::emit(ctx, tenant, disabled).await;
    }
}

/// What an attempt changes in its webhook's health record, if anything.
#[derive(Debug, PartialEq, Eq)]
enum HealthChange {
    /// Delivered after failing: no longer failing.
    Recovered,
    /// Failed: failing since now, unless already failing; disabled with a reason when the
    /// verdict says so or the webhook has failed for `disable_after`.
    Failed { disable: Option<String> },
}

fn health_change(
    webhook: &WebhookRecord,
    verdict: &Verdict,
    disable_after: Duration,
    now: u64,
) -> Option<HealthChange> {
    if verdict.result == AttemptResult::Delivered {
        return webhook
            .failing_since
            .is_some()
            .then_some(HealthChange::Recovered);
    }
    let disable = verdict.disable_webhook.clone().or_else(|| {
        let since = webhook.failing_since?;
        (now.saturating_sub(since) >= disable_after.as_millis() as u64).then(|| {
            format!(
                "every attempt failed for {}",
                humantime::format_duration(Duration::from_secs(disable_after.as_secs()))
            )
        })
    });
    (disable.is_some() || webhook.failing_since.is_none())
        .then_some(HealthChange::Failed { disable })
}

/// Writes the webhook's health change; returns the `hookd.webhook.disabled` event when this
/// attempt disabled it.
async fn update_health(ctx: &DeliveryContext, recorded: &Recorded<'_>) -> Option<OperationalEvent> {
    let tenant = recorded.tenant.id.as_str();
    let webhook = recorded.webhook;
    let now = now_ms();
    let disable_after = recorded.tenant.delivery.disable_after;
    let change = health_change(webhook, recorded.verdict, disable_after, now)?;
    let changed = ctx
        .store
        .update_webhook(tenant, &webhook.id, &|w| match &change {
            HealthChange::Recovered => w.failing_since = None,
            HealthChange::Failed { disable } => {
                w.failing_since.get_or_insert(now);
                if let Some(reason) = disable
                    && w.status == WebhookStatus::Active
                {
                    w.status = WebhookStatus::Disabled;
                    w.disabled_reason = Some(reason.clone());
                    w.updated_at = now;
                }
            }
        })
        .await;
    match changed {
        Ok(Some(w))
            if w.status == WebhookStatus::Disabled && webhook.status == WebhookStatus::Active =>
        {
            // The store tells the dispatcher, which stops claiming from the webhook.
            warn!(tenant, webhook_id = %webhook.id, reason = ?w.disabled_reason, "webhook disabled");
            Some(OperationalEvent::WebhookDisabled {
                webhook_id: webhook.id.clone(),
                webhook_url: w.url,
                reason: w.disabled_reason,
            })
        }
        Ok(_) => None,
        Err(err) => {
            warn!(tenant, webhook_id = %webhook.id, error = %err, "could not update webhook health");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(failing_since: Option<u64>) -> WebhookRecord {
        serde_json::from_value(serde_json::json!({
            "id": crate::ids::WebhookId::new(),
            "url": "https://receiver.example/hook",
            "description": "",
            "event_types": ["*"],
            "secrets": [],
            "status": "active",
            "failing_since": failing_since,
            "created_at": 0,
            "updated_at": 0,
        }))
        .expect("a minimal webhook record")
    }

    fn verdict(result: AttemptResult, disable: Option<&str>) -> Verdict {
        Verdict {
            result,
            retry_in: None,
            filtered_by: None,
            disable_webhook: disable.map(str::to_string),
            verdict_by: None,
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn health_changes_only_when_it_moves() {
        let now = 10 * DAY.as_millis() as u64;
        let delivered = verdict(AttemptResult::Delivered, None);
        let failed = verdict(AttemptResult::Failed, None);
        assert_eq!(health_change(&webhook(None), &delivered, DAY, now), None);
        assert_eq!(
            health_change(&webhook(Some(now - 5)), &delivered, DAY, now),
            Some(HealthChange::Recovered)
        );
        assert_eq!(
            health_change(&webhook(None), &failed, DAY, now),
            Some(HealthChange::Failed { disable: None })
        );
        // Already failing, not for long: nothing to write.
        assert_eq!(
            health_change(&webhook(Some(now - 5)), &failed, DAY, now),
            None
        );
        // Failing for `disable_after`: disabled.
        assert_eq!(
            health_change(
                &webhook(Some(now - 2 * DAY.as_millis() as u64)),
                &failed,
                DAY,
                now
            ),
            Some(HealthChange::Failed {
                disable: Some("every attempt failed for 1day".into())
            })
        );
        // 410 disables at once.
        assert_eq!(
            health_change(
                &webhook(None),
                &verdict(
                    AttemptResult::Rejected,
                    Some("the receiver answered 410 Gone")
                ),
                DAY,
                now
            ),
            Some(HealthChange::Failed {
                disable: Some("the receiver answered 410 Gone".into())
            })
        );
    }
}
