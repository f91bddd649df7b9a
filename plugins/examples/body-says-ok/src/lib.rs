//! Example response plugin `body-says-ok` (`hookd:plugin@0.2.0`, hook `on-response`): for
//! receivers that answer in their own dialect, it reads the answer's JSON body and status and
//! tells hookd what the answer means.
//!
//! Config (every key optional; `{}` uses the defaults):
//! ```json
//! {"path": "ok", "retry_after": 60, "fail": [400, 422], "disable": [403]}
//! ```
//! In this order:
//! 1. a status listed in `disable` → `disable` the webhook (reason: the status and the body's
//!    `error` or `message` member, if any);
//! 2. a status listed in `fail` → `fail` the delivery now, without retrying;
//! 3. a JSON body whose value at `path` (a dot path, default `ok`) is a boolean: `true` →
//!    `delivered` (whatever the status: a receiver that processed the event but answered 500
//!    is recorded as delivered by this plugin), `false` → `retry` after `retry_after` seconds
//!    (or the receiver's `Retry-After` seconds if larger; hookd never retries sooner than the
//!    webhook's schedule);
//! 4. anything else (no JSON, no such member, a truncated body) → `default`: hookd's own rules.

use hookd_plugin_sdk::{
    Decision, Description, Event, HookResult, Meta, OnResponse, PluginError, Response, json, log,
};
use serde::Deserialize;
use serde_json::Value;

/// The plugin config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    path: String,
    retry_after: Option<u32>,
    fail: Vec<u16>,
    disable: Vec<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            path: "ok".to_owned(),
            retry_after: None,
            fail: Vec::new(),
            disable: Vec::new(),
        }
    }
}

impl Config {
    fn parse(config: &str) -> HookResult<Self> {
        let parsed: Self = json::parse_config_or_default(config)?;
        json::validate_path(&parsed.path).map_err(PluginError::InvalidConfig)?;
        if parsed.path.is_empty() {
            return Err(PluginError::InvalidConfig(
                "`path` must name a member of the body".to_owned(),
            ));
        }
        for status in parsed.fail.iter().chain(&parsed.disable) {
            if !(100..=599).contains(status) {
                return Err(PluginError::InvalidConfig(format!(
                    "{status} is not an HTTP status"
                )));
            }
        }
        Ok(parsed)
    }
}

/// The body's `error` or `message` member, if it is a string: the receiver's own words.
fn receiver_says(body: Option<&Value>) -> Option<String> {
    let body = body?;
    ["error", "message"]
        .iter()
        .find_map(|key| body.get(key).and_then(Value::as_str))
        .map(|text| text.chars().take(200).collect())
}

/// The receiver's `Retry-After`, when it is delay-seconds.
fn retry_after_header(response: &Response) -> Option<u32> {
    response.header("retry-after")?.trim().parse().ok()
}

struct BodySaysOk;

impl Meta for BodySaysOk {
    fn describe() -> Description {
        Description::new("body-says-ok", env!("CARGO_PKG_VERSION"), &["on-response"])
    }

    fn validate_config(config: String) -> Result<(), String> {
        Config::parse(&config)
            .map(drop)
            .map_err(|error| error.message().to_owned())
    }
}

impl OnResponse for BodySaysOk {
    fn on_response(config: String, _event: Event, response: Response) -> HookResult<Decision> {
        let config = Config::parse(&config)?;
        let body: Option<Value> = serde_json::from_slice(&response.body).ok();
        let status = response.status;
        if config.disable.contains(&status) {
            let reason = match receiver_says(body.as_ref()) {
                Some(says) => format!("the receiver answered {status}: {says}"),
                None => format!("the receiver answered {status}"),
            };
            log::warn(&format!("disabling the webhook: {reason}"));
            return Ok(Decision::Disable(reason));
        }
        if config.fail.contains(&status) {
            let message = match receiver_says(body.as_ref()) {
                Some(says) => format!("the receiver answered {status}: {says}"),
                None => format!("the receiver answered {status}"),
            };
            return Ok(Decision::Fail(message));
        }
        let ok = body
            .as_ref()
            .and_then(|body| json::lookup(body, &config.path))
            .and_then(Value::as_bool);
        Ok(match ok {
            Some(true) => {
                if !response.is_success() {
                    log::info(&format!("status {status}, but the body says ok: delivered"));
                }
                Decision::Delivered
            }
            Some(false) => {
                let after = config.retry_after.max(retry_after_header(&response));
                log::info(&format!(
                    "status {status}, but the body says not ok: retry{}",
                    after.map_or(String::new(), |s| format!(" after {s} s"))
                ));
                Decision::Retry(after)
            }
            None => Decision::Default,
        })
    }
}

hookd_plugin_sdk::export_on_response!(BodySaysOk);
