//! Prefixed, time-ordered identifiers (`evt_`, `wh_`, `dlv_`, `att_`) and the engine clock.
//!
//! Ids are a prefix plus a UUIDv7 in lowercase hex: they sort by creation time, so store keys
//! built from them keep listings in time order without a separate index.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch as an RFC 3339 timestamp (`2026-11-23T10:00:00.000Z`),
/// the form every time takes in the API, delivered bodies and operational events.
pub fn rfc3339(ms: u64) -> String {
    // The format ends at 9999-12-31T23:59:59.999Z (and panics past it): later times show as it.
    const LAST_MS: u64 = 253_402_300_799_999;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.min(LAST_MS)))
        .to_string()
}

/// The 32 lowercase hex digits after `prefix`, if `text` is exactly that.
fn uuid_hex<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let hex = text.strip_prefix(prefix)?;
    let well_formed = hex.len() == 32
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    well_formed.then_some(hex)
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new id, ordered after every id made before it in this process.
            pub fn new() -> Self {
                $name(format!("{}{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// The id whose UUID is `value` (a store that derives ids from where records are).
            pub fn from_u128(value: u128) -> Self {
                let mut buffer = uuid::Uuid::encode_buffer();
                let hex = uuid::Uuid::from_u128(value).simple().encode_lower(&mut buffer);
                let mut id = String::with_capacity($prefix.len() + hex.len());
                id.push_str($prefix);
                id.push_str(hex);
                $name(id)
            }

            /// Accepts only well-formed ids of this kind (prefix + 32 lowercase hex digits).
            pub fn parse(text: &str) -> Option<Self> {
                uuid_hex(text, $prefix).map(|_| $name(text.to_string()))
            }

            /// The UUID of a well-formed id (the inverse of `from_u128`); `None` for an id
            /// that came in through serde without the prefix and 32 hex digits.
            pub fn to_u128(&self) -> Option<u128> {
                uuid_hex(&self.0, $prefix).and_then(|hex| u128::from_str_radix(hex, 16).ok())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// An event posted by a producer.
    EventId,
    "evt_"
);
prefixed_id!(
    /// A webhook (subscription).
    WebhookId,
    "wh_"
);
prefixed_id!(
    /// One event × one webhook; also the `webhook-id` header, stable across retries.
    DeliveryId,
    "dlv_"
);
prefixed_id!(
    /// One HTTP try of a delivery.
    AttemptId,
    "att_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shows_times_past_year_9999_as_its_last_millisecond_instead_of_panicking() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn ids_sort_by_creation_and_round_trip_through_parse() {
        let first = EventId::new();
        let second = EventId::new();
        assert!(first < second);
        assert_eq!(EventId::parse(first.as_str()), Some(first.clone()));
    }

    #[test]
    fn parse_refuses_other_kinds_and_malformed_text() {
        let webhook = WebhookId::new();
        assert_eq!(EventId::parse(webhook.as_str()), None);
        assert_eq!(EventId::parse("evt_"), None);
        assert_eq!(EventId::parse("evt_../../etc"), None);
        assert_eq!(EventId::parse(&format!("evt_{}", "A".repeat(32))), None);
    }

    #[test]
    fn from_u128_is_the_prefix_and_32_lowercase_hex_digits() {
        for value in [
            0,
            1,
            0xabc,
            u128::MAX,
            0x0190_0000_7000_8000_0000_0000_0000_00ff,
        ] {
            let id = DeliveryId::from_u128(value);
            assert_eq!(id.as_str(), format!("dlv_{value:032x}"));
            assert_eq!(DeliveryId::parse(id.as_str()), Some(id));
        }
        assert_eq!(WebhookId::from_u128(7).as_str(), format!("wh_{:032x}", 7));
        for value in [0, 7, u128::MAX, EventId::new().to_u128().unwrap()] {
            assert_eq!(EventId::from_u128(value).to_u128(), Some(value));
        }
        let loose: DeliveryId = serde_json::from_str("\"dlv_not-hex\"").unwrap();
        assert_eq!(loose.to_u128(), None);
    }
}
