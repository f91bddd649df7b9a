//! Example filter plugin `json-filter`: delivers an event only when the JSON value at a
//! configured dot path of the payload is one of the allowed values, and drops it otherwise.
//!
//! Config: `{"path": "data.kind", "allowed": ["a", "b"]}`.
//! - `path`: a dot path from the root of the delivered body (see `hookd_plugin_sdk::json`);
//!   with the default Standard Webhooks envelope the producer's payload is under `data`.
//! - `allowed`: at least one JSON value (string, number, boolean, null), compared by JSON
//!   equality, so `"1"` does not match `1`. A missing path matches nothing: the event is dropped.
//!
//! A config that is not that shape is `invalid-config` (also from `validate-config`); a payload
//! that is not JSON is `invalid-event`.

use hookd_plugin_sdk::{
    Description, Event, Filter, HookResult, Meta, PluginError, Verdict, json, log,
};
use serde::Deserialize;
use serde_json::Value;

/// The plugin config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: String,
    allowed: Vec<Value>,
}

impl Config {
    fn parse(config: &str) -> HookResult<Self> {
        let parsed: Self = json::parse_config(config)?;
        json::validate_path(&parsed.path).map_err(PluginError::InvalidConfig)?;
        if parsed.allowed.is_empty() {
            return Err(PluginError::InvalidConfig(
                "`allowed` must list at least one value".to_owned(),
            ));
        }
        Ok(parsed)
    }
}

struct JsonFilter;

impl Meta for JsonFilter {
    fn describe() -> Description {
        Description::new("json-filter", env!("CARGO_PKG_VERSION"), &["filter"])
    }

    fn validate_config(config: String) -> Result<(), String> {
        Config::parse(&config)
            .map(drop)
            .map_err(|error| error.message().to_owned())
    }
}

impl Filter for JsonFilter {
    fn filter(config: String, event: Event) -> HookResult<Verdict> {
        let config = Config::parse(&config)?;
        let payload = json::parse_payload(&event.payload)?;
        let verdict = match json::lookup(&payload, &config.path) {
            Some(value) if config.allowed.contains(value) => Verdict::Deliver,
            Some(value) => {
                log::debug(&format!("{} = {value} is not allowed", config.path));
                Verdict::Drop
            }
            None => {
                log::debug(&format!("{} is absent", config.path));
                Verdict::Drop
            }
        };
        Ok(verdict)
    }
}

hookd_plugin_sdk::export_filter!(JsonFilter);
