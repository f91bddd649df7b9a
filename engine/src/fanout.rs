//! Fan-out: which webhooks an event goes to. Pure matching on event type and channel.
//!
//! Event-type filters: `*` matches everything, `prefix.*` matches every type under `prefix.`,
//! anything else matches exactly. A webhook with channels receives only events posted to one
//! of them; a webhook without channels receives events of every channel.

use crate::store::{WebhookRecord, WebhookStatus};

/// Prefix of hookd's own operational event types (`hookd.delivery.failing`, …).
pub const OPERATIONAL_PREFIX: &str = "hookd.";

/// Whether an event type is one of hookd's operational events. Only hookd emits them, and
/// only webhooks that name them (`hookd.*` or an exact type) receive them: `*` does not.
pub fn is_operational(event_type: &str) -> bool {
    event_type.starts_with(OPERATIONAL_PREFIX)
}

/// Whether one event-type filter matches an event type.
pub fn type_matches(filter: &str, event_type: &str) -> bool {
    if filter == "*" {
        return !is_operational(event_type);
    }
    match filter.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => {
            event_type.len() > prefix.len() && event_type.starts_with(prefix)
        }
        _ => filter == event_type,
    }
}

/// Whether a webhook subscribes to an event.
pub fn webhook_matches(webhook: &WebhookRecord, event_type: &str, channel: Option<&str>) -> bool {
    matches!(
        webhook.status,
        WebhookStatus::Active | WebhookStatus::Paused
    ) && webhook
        .event_types
        .iter()
        .any(|filter| type_matches(filter, event_type))
        && match (&webhook.channels, channel) {
            (None, _) => true,
            (Some(channels), Some(channel)) => channels.iter().any(|c| c == channel),
            (Some(_), None) => false,
        }
}

/// Whether a string is a valid event-type filter (`*`, `prefix.*` or an event type).
pub fn valid_filter(filter: &str) -> bool {
    if filter == "*" {
        return true;
    }
    let exact = filter.strip_suffix(".*").unwrap_or(filter);
    crate::config::valid_event_type(exact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_prefixes_and_exact_types() {
        assert!(type_matches("*", "user.created"));
        assert!(type_matches("user.*", "user.created"));
        assert!(type_matches("user.*", "user.profile.updated"));
        assert!(!type_matches("user.*", "user"));
        assert!(!type_matches("user.*", "users.created"));
        assert!(type_matches("user.created", "user.created"));
        assert!(!type_matches("user.created", "user.created.v2"));
        assert!(!type_matches("user*", "user.created"));
    }

    #[test]
    fn operational_events_reach_only_webhooks_that_name_them() {
        assert!(!type_matches("*", "hookd.delivery.failing"));
        assert!(type_matches("hookd.*", "hookd.delivery.failing"));
        assert!(type_matches("hookd.delivery.*", "hookd.delivery.failing"));
        assert!(type_matches(
            "hookd.webhook.disabled",
            "hookd.webhook.disabled"
        ));
    }

    #[test]
    fn filters_are_validated() {
        assert!(valid_filter("*"));
        assert!(valid_filter("invoice.*"));
        assert!(valid_filter("invoice.paid"));
        assert!(!valid_filter(""));
        assert!(!valid_filter("a b"));
        assert!(!valid_filter("*.paid"));
    }
}
