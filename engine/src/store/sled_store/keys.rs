//! Key layout of the sled tree (`hookd/v2`). Every tenant-scoped key starts with a kind byte and
//! the tenant id, then a NUL, so one tenant's data is a contiguous range and no read can cross
//! into another tenant's. The key set stays bounded by webhooks, pages and days — never one key
//! per event or delivery (sled 0.34 keeps memory per key it has ever written; see `mod.rs`).
//!
//! | kind | key after `tenant NUL` | value |
//! |---|---|---|
//! | `W` | webhook id (text) | the webhook, JSON, secrets sealed |
//! | `H` | webhook (16 bytes) | the webhook's delivery health |
//! | `Q` | webhook (16), first due (u64 BE), page (u32 BE) | a page of its schedule |
//! | `L` | first event locator (u64 BE) | a page of the tenant's events, oldest first |
//! | `V` | webhook (16), first delivery (u64 BE + u16 BE) | a page of the webhook's deliveries |
//! | `I` | bucket (u16 BE) | idempotency keys hashed into that bucket |
//! | `S` | scope, NUL, day (u32 BE), part | statistics counters (`stats.rs`) |
//! | `T` | — | the tenant's usage (events, pending deliveries, payload bytes) |
//!
//! and, not tenant-scoped, `M` + name: the log checkpoint, the layout version, the page counter,
//! and the segment catalogue (`M seg` + segment u32 BE).

use super::codec::{DeliveryRef, Locator, webhook_bytes};
use crate::ids::WebhookId;

pub const WEBHOOK: u8 = b'W';
pub const HEALTH: u8 = b'H';
pub const QUEUE: u8 = b'Q';
pub const EVENTS: u8 = b'L';
pub const WEBHOOK_DELIVERIES: u8 = b'V';
pub const IDEMPOTENCY: u8 = b'I';
pub const STATS: u8 = b'S';
pub const USAGE: u8 = b'T';
pub const META: u8 = b'M';

const SEP: u8 = 0;

pub fn tenant_prefix(kind: u8, tenant: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + tenant.len() + 40);
    key.push(kind);
    key.extend_from_slice(tenant.as_bytes());
    key.push(SEP);
    key
}

/// The tenant of any tenant-scoped key.
pub fn tenant_of(key: &[u8]) -> Option<&str> {
    let body = key.get(1..)?;
    let end = body.iter().position(|b| *b == SEP)?;
    std::str::from_utf8(&body[..end]).ok()
}

pub fn webhook(tenant: &str, id: &WebhookId) -> Vec<u8> {
    let mut key = tenant_prefix(WEBHOOK, tenant);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// (tenant, webhook id) of a `W` key.
pub fn split_webhook_key(key: &[u8]) -> Option<(&str, WebhookId)> {
    let tenant = tenant_of(key)?;
    let id = std::str::from_utf8(&key[tenant.len() + 2..]).ok()?;
    Some((tenant, WebhookId::parse(id)?))
}

pub fn health(tenant: &str, webhook: &WebhookId) -> Vec<u8> {
    let mut key = tenant_prefix(HEALTH, tenant);
    key.extend_from_slice(&webhook_bytes(webhook));
    key
}

/// Every page of a webhook's schedule.
pub fn queue_of(tenant: &str, webhook: &WebhookId) -> Vec<u8> {
    let mut key = tenant_prefix(QUEUE, tenant);
    key.extend_from_slice(&webhook_bytes(webhook));
    key
}

pub fn queue_page(tenant: &str, webhook: &WebhookId, first_due: u64, page: u32) -> Vec<u8> {
    let mut key = queue_of(tenant, webhook);
    key.extend_from_slice(&first_due.to_be_bytes());
    key.extend_from_slice(&page.to_be_bytes());
    key
}

/// (first due, page) of a key under [`queue_of`] of length `prefix_len`.
pub fn parse_queue_page(key: &[u8], prefix_len: usize) -> Option<(u64, u32)> {
    let rest = key.get(prefix_len..)?;
    Some((
        u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
        u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?),
    ))
}

pub fn events_page(tenant: &str, first: Locator) -> Vec<u8> {
    let mut key = tenant_prefix(EVENTS, tenant);
    key.extend_from_slice(&first.pack().to_be_bytes());
    key
}

pub fn webhook_deliveries(tenant: &str, webhook: &WebhookId) -> Vec<u8> {
    let mut key = tenant_prefix(WEBHOOK_DELIVERIES, tenant);
    key.extend_from_slice(&webhook_bytes(webhook));
    key
}

pub fn webhook_deliveries_page(tenant: &str, webhook: &WebhookId, first: DeliveryRef) -> Vec<u8> {
    let mut key = webhook_deliveries(tenant, webhook);
    key.extend_from_slice(&delivery_order(first));
    key
}

/// A delivery as 10 bytes that sort like the delivery.
pub fn delivery_order(delivery: DeliveryRef) -> [u8; 10] {
    let mut out = [0u8; 10];
    out[..8].copy_from_slice(&delivery.event.pack().to_be_bytes());
    out[8..].copy_from_slice(&delivery.index.to_be_bytes());
    out
}

#[cfg(test)]
pub fn parse_delivery_order(bytes: &[u8]) -> Option<DeliveryRef> {
    Some(DeliveryRef {
        event: Locator::unpack(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?)),
        index: u16::from_be_bytes(bytes.get(8..10)?.try_into().ok()?),
    })
}

pub fn idempotency_bucket(tenant: &str, bucket: u16) -> Vec<u8> {
    let mut key = tenant_prefix(IDEMPOTENCY, tenant);
    key.extend_from_slice(&bucket.to_be_bytes());
    key
}

pub fn usage(tenant: &str) -> Vec<u8> {
    tenant_prefix(USAGE, tenant)
}

/// The statistics of one scope (`*` or a webhook id) of a tenant, every day.
pub fn stats_scope(tenant: &str, scope: &str) -> Vec<u8> {
    let mut key = tenant_prefix(STATS, tenant);
    key.extend_from_slice(scope.as_bytes());
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

pub fn meta(name: &str) -> Vec<u8> {
    let mut key = vec![META];
    key.extend_from_slice(name.as_bytes());
    key
}

pub const CHECKPOINT: &str = "checkpoint";
pub const FORMAT: &str = "format";
pub const PAGE_COUNTER: &str = "page-counter";

/// Every entry of the segment catalogue.
pub fn segments() -> Vec<u8> {
    meta("seg\0")
}

pub fn segment(number: u32) -> Vec<u8> {
    let mut key = segments();
    key.extend_from_slice(&number.to_be_bytes());
    key
}

pub fn parse_segment(key: &[u8]) -> Option<u32> {
    let rest = key.strip_prefix(segments().as_slice())?;
    Some(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?))
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
    fn queue_pages_order_by_due_time_then_page() {
        let webhook = WebhookId::new();
        let early = queue_page("t", &webhook, 5, 9);
        let late = queue_page("t", &webhook, 300, 1);
        let later = queue_page("t", &webhook, 300, 2);
        assert!(early < late && late < later);
        let prefix = queue_of("t", &webhook);
        assert_eq!(parse_queue_page(&late, prefix.len()), Some((300, 1)));
        assert!(!queue_page("t", &WebhookId::new(), 1, 1).starts_with(&prefix));
    }

    #[test]
    fn one_tenants_range_never_contains_anothers_keys() {
        let prefix = tenant_prefix(EVENTS, "a");
        let end = prefix_end(&prefix);
        for other in ["ab", "a-", "b", "", "a_"] {
            let key = events_page(other, Locator::ZERO);
            assert!(
                !(key >= prefix && key < end),
                "tenant {other:?} leaks into a"
            );
            assert_eq!(tenant_of(&key), Some(other));
        }
    }

    #[test]
    fn delivery_order_sorts_like_deliveries() {
        let a = DeliveryRef {
            event: Locator {
                segment: 1,
                offset: 900,
            },
            index: 3,
        };
        let b = DeliveryRef {
            event: Locator {
                segment: 2,
                offset: 16,
            },
            index: 0,
        };
        assert!(delivery_order(a) < delivery_order(b));
        assert_eq!(parse_delivery_order(&delivery_order(a)), Some(a));
    }

    #[test]
    fn stats_and_segment_keys_parse_back() {
        let webhook = WebhookId::new();
        let mut day = stats_day("t", webhook.as_str(), 20_000);
        day.extend_from_slice(b"tuser.created");
        assert_eq!(
            parse_stats_key(&day),
            Some(("t", webhook.as_str(), 20_000, &b"tuser.created"[..]))
        );
        assert_eq!(parse_segment(&segment(77)), Some(77));
        assert!(segment(1) < segment(256));
        let key = self::webhook("acme", &webhook);
        let (tenant, id) = split_webhook_key(&key).unwrap();
        assert_eq!((tenant, id), ("acme", webhook));
    }
}
