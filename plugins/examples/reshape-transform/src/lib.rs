//! Example transform plugin `reshape-transform`: redacts configured fields of a JSON payload and
//! optionally reshapes it into a flat record or a chat message, setting the content type.
//!
//! Config (every key optional; `{}` changes nothing):
//! ```json
//! {
//!   "redact": ["password", "card.number"],
//!   "replacement": "[REDACTED]",
//!   "shape": "flat",
//!   "fields": {"from": "data.sender"},
//!   "template": "{$type}: {data.text}",
//!   "text_field": "text",
//!   "content_type": "application/json"
//! }
//! ```
//! - `redact`: dot paths matched at **any depth** against object member names (array indexes
//!   are not part of the path): `password` replaces every member named `password`;
//!   `card.number` replaces `number` inside any member named `card`. Matched values (whole
//!   subtrees) become `replacement` (default `"[REDACTED]"`). Redaction runs first, so a
//!   redacted value never reaches the reshaped output.
//! - `shape`: absent (or `"keep"`) keeps the body's shape; `"flat"` produces
//!   `{"client_id","message_id","from","to","timestamp","type","content"}`; `"chat"` produces
//!   `{"<text_field>": "<template rendered>"}` (Slack uses `text`, Discord `content`).
//! - Sources (values of `fields`, placeholders of `template`) are either a dot path from the
//!   root of the body (with the default envelope, the producer's payload is under `data`) or
//!   one of `$id` (delivery id), `$event_id`, `$type`, `$tenant`, `$channel`, `$timestamp`
//!   (event creation, ms), `$attempt`. A missing source gives `null` (flat) or `""` (chat).
//! - `fields` (flat only) overrides the defaults: `client_id` ← `$tenant`, `message_id` ←
//!   `$event_id`, `from` ← `data.from`, `to` ← `data.to`, `timestamp` ← `$timestamp`, `type` ←
//!   `$type`, `content` ← `data.content`. Other keys are an `invalid-config`.
//! - `template` (chat only, default `"{$type}: {data}"`): `{source}` placeholders; strings are
//!   inserted as they are, other values as compact JSON. A `{` without a matching `}` is text.
//! - `content_type`: set when the body changes (default `application/json`).
//!
//! If nothing is redacted and no shape is requested, the patch leaves the body untouched.
//! A payload that is not JSON is an `invalid-event`.

use std::collections::BTreeMap;

use hookd_plugin_sdk::{
    Description, Event, HookResult, Meta, Patch, PluginError, Transform, json, log,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The output fields of the flat shape, in output order, with their default sources.
const FLAT_FIELDS: [(&str, &str); 7] = [
    ("client_id", "$tenant"),
    ("message_id", "$event_id"),
    ("from", "data.from"),
    ("to", "data.to"),
    ("timestamp", "$timestamp"),
    ("type", "$type"),
    ("content", "data.content"),
];

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Shape {
    #[default]
    Keep,
    Flat,
    Chat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    redact: Vec<String>,
    replacement: String,
    shape: Shape,
    fields: BTreeMap<String, String>,
    template: String,
    text_field: String,
    content_type: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redact: Vec::new(),
            replacement: "[REDACTED]".to_owned(),
            shape: Shape::Keep,
            fields: BTreeMap::new(),
            template: "{$type}: {data}".to_owned(),
            text_field: "text".to_owned(),
            content_type: "application/json".to_owned(),
        }
    }
}

impl Config {
    fn parse(config: &str) -> HookResult<Self> {
        let parsed: Self = json::parse_config_or_default(config)?;
        let invalid = |message: String| Err(PluginError::InvalidConfig(message));
        for path in &parsed.redact {
            if path.is_empty() {
                return invalid("`redact` has an empty path".to_owned());
            }
            json::validate_path(path).map_err(PluginError::InvalidConfig)?;
        }
        for (field, source) in &parsed.fields {
            if !FLAT_FIELDS.iter().any(|(name, _)| name == field) {
                return invalid(format!("`fields` has unknown output field `{field}`"));
            }
            if !source.starts_with('$') {
                json::validate_path(source).map_err(PluginError::InvalidConfig)?;
            }
        }
        if parsed.text_field.is_empty() {
            return invalid("`text_field` is empty".to_owned());
        }
        Ok(parsed)
    }
}

/// Replace every value whose member-name path ends with one of `rules`; returns the count.
fn redact(
    value: &mut Value,
    rules: &[Vec<&str>],
    replacement: &str,
    names: &mut Vec<String>,
) -> usize {
    match value {
        Value::Object(map) => {
            let mut count = 0;
            for (name, child) in map.iter_mut() {
                names.push(name.clone());
                let hit = rules.iter().any(|rule| ends_with(names, rule));
                if hit {
                    *child = Value::String(replacement.to_owned());
                    count += 1;
                } else {
                    count += redact(child, rules, replacement, names);
                }
                names.pop();
            }
            count
        }
        Value::Array(items) => items
            .iter_mut()
            .map(|item| redact(item, rules, replacement, names))
            .sum(),
        _ => 0,
    }
}

/// Whether the member-name path `names` ends with the segments of `rule`.
fn ends_with(names: &[String], rule: &[&str]) -> bool {
    rule.len() <= names.len()
        && names[names.len() - rule.len()..]
            .iter()
            .zip(rule)
            .all(|(name, wanted)| name == wanted)
}

/// The value of a source: event metadata for `$name`, otherwise a dot path into `body`.
fn source(event: &Event, body: &Value, source: &str) -> Value {
    match source {
        "$id" => Value::from(event.id.clone()),
        "$event_id" => Value::from(event.event_id.clone()),
        "$type" => Value::from(event.event_type.clone()),
        "$tenant" => Value::from(event.tenant.clone()),
        "$channel" => event.channel.clone().map_or(Value::Null, Value::from),
        "$timestamp" => Value::from(event.timestamp),
        "$attempt" => Value::from(event.attempt),
        path => json::lookup(body, path).cloned().unwrap_or(Value::Null),
    }
}

fn flat(config: &Config, event: &Event, body: &Value) -> Value {
    let mut out = Map::new();
    for (field, default_source) in FLAT_FIELDS {
        let from = config
            .fields
            .get(field)
            .map_or(default_source, String::as_str);
        out.insert(field.to_owned(), source(event, body, from));
    }
    Value::Object(out)
}

fn render(template: &str, event: &Event, body: &Value) -> String {
    let mut text = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        text.push_str(&rest[..open]);
        match source(event, body, &rest[open + 1..open + close]) {
            Value::Null => {}
            Value::String(string) => text.push_str(&string),
            other => text.push_str(&other.to_string()),
        }
        rest = &rest[open + close + 1..];
    }
    text.push_str(rest);
    text
}

struct ReshapeTransform;

impl Meta for ReshapeTransform {
    fn describe() -> Description {
        Description::new(
            "reshape-transform",
            env!("CARGO_PKG_VERSION"),
            &["transform"],
        )
    }

    fn validate_config(config: String) -> Result<(), String> {
        Config::parse(&config)
            .map(drop)
            .map_err(|error| error.message().to_owned())
    }
}

impl Transform for ReshapeTransform {
    fn transform(config: String, event: Event) -> HookResult<Patch> {
        let config = Config::parse(&config)?;
        let mut body = json::parse_payload(&event.payload)?;

        let rules: Vec<Vec<&str>> = config
            .redact
            .iter()
            .map(|path| path.split('.').collect())
            .collect();
        let redacted = redact(&mut body, &rules, &config.replacement, &mut Vec::new());
        if redacted > 0 {
            log::info(&format!("redacted {redacted} field(s)"));
        }

        let output = match config.shape {
            Shape::Keep if redacted == 0 => return Ok(Patch::new()),
            Shape::Keep => body,
            Shape::Flat => flat(&config, &event, &body),
            Shape::Chat => {
                let text = render(&config.template, &event, &body);
                Value::Object(Map::from_iter([(
                    config.text_field.clone(),
                    Value::from(text),
                )]))
            }
        };
        Ok(Patch::new()
            .with_payload(json::to_payload(&output))
            .with_content_type(config.content_type))
    }
}

hookd_plugin_sdk::export_transform!(ReshapeTransform);
