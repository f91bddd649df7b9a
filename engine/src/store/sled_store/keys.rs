//! Key encoding. Every key starts with a kind byte and the tenant id, then a NUL, so one
//! tenant's data is a contiguous range and no read can cross into another tenant's range.
//! Ids are time-ordered, so ranges iterate oldest → newest.

use crate::ids::{DeliveryId, EventId, WebhookId};

pub const WEBHOOK: u8 = b'W';
pub const EVENT: u8 = b'E';
pub const DELIVERY: u8 = b'D';
/// Attempts of a delivery: tenant, delivery id, attempt id.
pub const ATTEMPT: u8 = b'A';
/// Index: tenant, event id, delivery id → ().
pub const EVENT_DELIVERY: u8 = b'X';
/// Index: tenant, webhook id, delivery id → ().
pub const WEBHOOK_DELIVERY: u8 = b'Y';
/// Schedule, one queue per webhook: tenant, webhook id, due time (u64 big-endian), delivery id.
pub const QUEUE: u8 = b'Q';
/// Idempotency keys: tenant, producer's key → event id.
pub const IDEMPOTENCY: u8 = b'I';
/// Statistics counters (`stats.rs`): tenant, scope (`*` for the whole tenant, else a webhook
/// id), NUL, UTC day (u32 big-endian, days since the epoch), then a part byte (`i` ingest
/// counts, `o` outcome counts, `t` followed by an event type: that type's count).
pub const STATS: u8 = b'S';

/// Webhook health (`store/health.rs`): tenant, webhook id → its health record.
pub const HEALTH: u8 = b'H';

const SEP: u8 = 0;

pub fn tenant_prefix(kind: u8, tenant: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + tenant.len() + 40);
    key.push(kind);
    key.extend_from_slice(tenant.as_bytes());
    key.push(SEP);
    key
}

fn with_parts(kind: u8, tenant: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = tenant_prefix(kind, tenant);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part);
    }
    key
}

pub fn webhook(tenant: &str, id: &WebhookId) -> Vec<u8> {
    with_parts(WEBHOOK, tenant, &[id.as_str().as_bytes()])
}

pub fn health(tenant: &str, id: &WebhookId) -> Vec<u8> {
    with_parts(HEALTH, tenant, &[id.as_str().as_bytes()])
}

pub fn event(tenant: &str, id: &EventId) -> Vec<u8> {
    with_parts(EVENT, tenant, &[id.as_str().as_bytes()])
}

pub fn delivery(tenant: &str, id: &DeliveryId) -> Vec<u8> {
    with_parts(DELIVERY, tenant, &[id.as_str().as_bytes()])
}

pub fn attempts_of(tenant: &str, delivery: &DeliveryId) -> Vec<u8> {
    let mut key = with_parts(ATTEMPT, tenant, &[delivery.as_str().as_bytes()]);
    key.push(SEP);
    key
}

pub fn event_deliveries(tenant: &str, event: &EventId) -> Vec<u8> {
    let mut key = with_parts(EVENT_DELIVERY, tenant, &[event.as_str().as_bytes()]);
    key.push(SEP);
    key
}

pub fn webhook_deliveries(tenant: &str, webhook: &WebhookId) -> Vec<u8> {
    let mut key = with_parts(WEBHOOK_DELIVERY, tenant, &[webhook.as_str().as_bytes()]);
    key.push(SEP);
    key
}

pub fn queue_of(tenant: &str, webhook: &WebhookId) -> Vec<u8> {
    let mut key = with_parts(QUEUE, tenant, &[webhook.as_str().as_bytes()]);
    key.push(SEP);
    key
}

pub fn queue_entry(
    tenant: &str,
    webhook: &WebhookId,
    due_ms: u64,
    delivery: &DeliveryId,
) -> Vec<u8> {
    let mut key = queue_of(tenant, webhook);
    key.extend_from_slice(&due_ms.to_be_bytes());
    key.extend_from_slice(delivery.as_str().as_bytes());
    key
}

/// The due time in a whole key made by [`queue_entry`].
pub fn queue_entry_due(key: &[u8]) -> Option<u64> {
    let body = key.get(1..)?;
    let after_tenant = &body[body.iter().position(|b| *b == SEP)? + 1..];
    let suffix = &after_tenant[after_tenant.iter().position(|b| *b == SEP)? + 1..];
    Some(u64::from_be_bytes(suffix.get(..8)?.try_into().ok()?))
}

/// Splits the part of a queue key after [`queue_of`] into due time and delivery id.
pub fn parse_queue_suffix(suffix: &[u8]) -> Option<(u64, DeliveryId)> {
    let due = u64::from_be_bytes(suffix.get(..8)?.try_into().ok()?);
    let id = DeliveryId::parse(std::str::from_utf8(suffix.get(8..)?).ok()?)?;
    Some((due, id))
}

pub fn idempotency(tenant: &str, idempotency_key: &str) -> Vec<u8> {
    with_parts(IDEMPOTENCY, tenant, &[idempotency_key.as_bytes()])
}

/// The statistics of one scope (`*` or a webhook id) of a tenant, every day.
pub fn stats_scope(tenant: &str, scope: &str) -> Vec<u8> {
    let mut key = with_parts(STATS, tenant, &[scope.as_bytes()]);
    key.push(SEP);
    key
}

/// The statistics of one scope for one UTC day (days since the epoch); a part byte follows.
pub fn stats_day(tenant: &str, scope: &str, day: u32) -> Vec<u8> {
    let mut key = stats_scope(tenant, scope);
    key.extend_from_slice(&day.to_be_bytes());
    key
}

/// (tenant, scope, day, rest) of a key under [`STATS`].
pub fn parse_stats_key(key: &[u8]) -> Option<(&str, &str, u32, &[u8])> {
    let body = key.strip_prefix(&[STATS])?;
    let tenant_end = body.iter().position(|b| *b == SEP)?;
    let rest = &body[tenant_end + 1..];
    let scope_end = rest.iter().position(|b| *b == SEP)?;
    let tail = &rest[scope_end + 1..];
    let day = u32::from_be_bytes(tail.get(..4)?.try_into().ok()?);
    Some((
        std::str::from_utf8(&body[..tenant_end]).ok()?,
        std::str::from_utf8(&rest[..scope_end]).ok()?,
        day,
        &tail[4..],
    ))
}

/// The last id segment of a key (after the final NUL), as text.
pub fn last_segment(key: &[u8]) -> Option<&str> {
    let start = key.iter().rposition(|b| *b == SEP)? + 1;
    std::str::from_utf8(&key[start..]).ok()
}

/// (tenant, id) from a key made by [`webhook`].
pub fn split_tenant_key(key: &[u8]) -> Option<(&str, &str)> {
    let body = key.get(1..)?;
    let sep = body.iter().position(|b| *b == SEP)?;
    let tenant = std::str::from_utf8(&body[..sep]).ok()?;
    let id = std::str::from_utf8(&body[sep + 1..]).ok()?;
    Some((tenant, id))
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_order_by_due_time_then_id() {
        let webhook = WebhookId::new();
        let (a, b) = (DeliveryId::new(), DeliveryId::new());
        let early_b = queue_entry("t", &webhook, 5, &b);
        let late_a = queue_entry("t", &webhook, 300, &a);
        let late_b = queue_entry("t", &webhook, 300, &b);
        assert!(early_b < late_a && late_a < late_b);
        let prefix_len = queue_of("t", &webhook).len();
        assert_eq!(parse_queue_suffix(&late_a[prefix_len..]), Some((300, a)));
    }

    #[test]
    fn a_whole_queue_key_gives_its_due_time_even_when_it_holds_nul_bytes() {
        let webhook = WebhookId::new();
        for due in [0, 5, 256, 1 << 40, u64::MAX] {
            let key = queue_entry("acme", &webhook, due, &DeliveryId::new());
            assert_eq!(queue_entry_due(&key), Some(due));
        }
        assert_eq!(queue_entry_due(&queue_of("acme", &webhook)), None);
    }

    #[test]
    fn one_tenants_range_never_contains_anothers_keys() {
        let id = EventId::new();
        let prefix = tenant_prefix(EVENT, "a");
        let end = prefix_end(&prefix);
        for other in ["ab", "a-", "b", "", "a_"] {
            let key = event(other, &id);
            assert!(
                !(key >= prefix && key < end),
                "tenant {other:?} leaks into a"
            );
        }
        assert!(event("a", &id) >= prefix && event("a", &id) < end);
    }

    #[test]
    fn stats_keys_order_by_day_and_parse_back() {
        let webhook = WebhookId::new();
        let mut monday = stats_day("t", webhook.as_str(), 20_000);
        let tuesday = stats_day("t", webhook.as_str(), 20_001);
        assert!(monday < tuesday);
        assert!(monday.starts_with(&stats_scope("t", webhook.as_str())));
        // A day whose big-endian bytes contain NUL still parses by position.
        monday.extend_from_slice(b"tuser.created");
        assert_eq!(
            parse_stats_key(&monday),
            Some(("t", webhook.as_str(), 20_000, &b"tuser.created"[..]))
        );
        let tenant_wide = stats_scope("t", "*");
        assert!(!monday.starts_with(&tenant_wide));
    }
}
