//! JSON helpers for plugins (feature `json`, on by default): parse a config into a serde type,
//! parse a payload, and address values inside a payload with **dot paths**.
//!
//! # Dot paths
//!
//! A path is a list of segments separated by `.`, applied from the root of the payload, which
//! by default is the Standard Webhooks envelope `{"id","type","timestamp","channel","data"}`
//! (so the producer's payload is under `data`). A segment selects an object member by exact
//! name; on an array, a segment of decimal digits selects that index. `data.items.0.sku` is
//! `payload["data"]["items"][0]["sku"]`. The empty path selects the root. A member whose name
//! contains `.` cannot be addressed.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::PluginError;

/// Parse a plugin config string; any error becomes [`PluginError::InvalidConfig`] saying what
/// is wrong.
pub fn parse_config<T: DeserializeOwned>(config: &str) -> Result<T, PluginError> {
    serde_json::from_str(config)
        .map_err(|error| PluginError::InvalidConfig(format!("config is not valid: {error}")))
}

/// Like [`parse_config`], but an empty config (`""`, only whitespace, or `null`) gives
/// `T::default()`, for plugins whose keys are all optional.
pub fn parse_config_or_default<T: DeserializeOwned + Default>(
    config: &str,
) -> Result<T, PluginError> {
    let trimmed = config.trim();
    if trimmed.is_empty() || trimmed == "null" {
        Ok(T::default())
    } else {
        parse_config(trimmed)
    }
}

/// Parse a payload as JSON; a payload that is not JSON becomes [`PluginError::InvalidEvent`]
/// (permanent for this event).
pub fn parse_payload(payload: &[u8]) -> Result<Value, PluginError> {
    serde_json::from_slice(payload)
        .map_err(|error| PluginError::InvalidEvent(format!("payload is not JSON: {error}")))
}

/// Serialize a value as a JSON payload.
pub fn to_payload(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail: its map keys are always strings.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Check that `path` is a usable dot path (not empty segments like `a..b` or a trailing `.`).
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if path.split('.').any(str::is_empty) {
        return Err(format!("path `{path}` has an empty segment"));
    }
    Ok(())
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('.').filter(|segment| !segment.is_empty())
}

/// The value at dot path `path` in `value`, if there is one.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    segments(path).try_fold(value, |current, segment| match current {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// The value at dot path `path` in `value`, mutably, if there is one.
pub fn lookup_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    segments(path).try_fold(value, |current, segment| match current {
        Value::Object(map) => map.get_mut(segment),
        Value::Array(items) => segment
            .parse::<usize>()
            .ok()
            .and_then(move |i| items.get_mut(i)),
        _ => None,
    })
}

/// Replace the value at `path` with `replacement`; returns whether the path existed.
pub fn replace(value: &mut Value, path: &str, replacement: Value) -> bool {
    match lookup_mut(value, path) {
        Some(slot) => {
            *slot = replacement;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_follows_members_and_array_indexes() {
        let value = json!({"data": {"items": [{"sku": "a"}, {"sku": "b"}], "kind": "x"}});
        assert_eq!(lookup(&value, "data.kind"), Some(&json!("x")));
        assert_eq!(lookup(&value, "data.items.1.sku"), Some(&json!("b")));
        assert_eq!(lookup(&value, "data.items.9.sku"), None);
        assert_eq!(lookup(&value, "data.kind.deeper"), None);
        assert_eq!(lookup(&value, ""), Some(&value));
    }

    #[test]
    fn replace_changes_only_existing_paths() {
        let mut value = json!({"card": {"number": "4242"}});
        assert!(replace(&mut value, "card.number", json!("[REDACTED]")));
        assert!(!replace(&mut value, "card.cvc", json!("[REDACTED]")));
        assert_eq!(value, json!({"card": {"number": "[REDACTED]"}}));
    }
}
