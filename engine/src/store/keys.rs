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
}
