//! A tenant's event-type catalogue: the types it declares in config, each with an optional
//! description, JSON Schema and example payload, and whether ingest refuses everything else
//! (`strict_event_types`). Schemas are compiled when the config is validated (a bad schema or
//! an example that fails its own schema is a config error) and hot-reloaded with the rest.
//!
//! Schemas are compiled without any resolver for remote `$ref`s: hookd never fetches a
//! document because a config (or an event) names one.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

/// One entry of `event_types` as written: a name, or a table with details.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawEventType {
    Name(String),
    Full(RawEventTypeDef),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEventTypeDef {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub description: Option<String>,
    /// A JSON Schema (any draft the validator knows; 2020-12 by default) for payloads.
    #[serde(default)]
    pub schema: Option<Value>,
    /// An example payload: shown in the catalogue and sent by test sends of this type.
    #[serde(default)]
    pub example: Option<Value>,
}

/// A declared event type, validated.
#[derive(Clone)]
pub struct EventTypeConfig {
    pub name: String,
    pub description: Option<String>,
    pub schema: Option<Value>,
    pub example: Option<Value>,
    validator: Option<Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for EventTypeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTypeConfig")
            .field("name", &self.name)
            .field("has_schema", &self.schema.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a payload does not fit its type's schema: the first failing place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// JSON Pointer into the payload (`""` for the payload itself), e.g. `/items/0/id`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "at `{path}`: {}", self.message)
    }
}

/// The most problems a refusal lists.
const MAX_VIOLATIONS: usize = 5;

impl EventTypeConfig {
    /// Checks one raw entry; problems are returned as (sub-key, message).
    pub fn from_raw(raw: &RawEventType) -> Result<Self, Vec<(String, String)>> {
        let def = match raw {
            RawEventType::Name(name) => RawEventTypeDef {
                event_type: name.clone(),
                description: None,
                schema: None,
                example: None,
            },
            RawEventType::Full(def) => def.clone(),
        };
        let mut problems = Vec::new();
        if !super::valid_event_type(&def.event_type) {
            problems.push((
                "type".to_string(),
                format!(
                    "`{}` is not an event type (1-128 of a-z A-Z 0-9 . _ - :)",
                    def.event_type
                ),
            ));
        }
        if def.description.as_ref().is_some_and(|d| d.len() > 1024) {
            problems.push((
                "description".to_string(),
                "is at most 1024 bytes".to_string(),
            ));
        }
        let validator = match &def.schema {
            None => None,
            Some(schema) => match jsonschema::validator_for(schema) {
                Ok(validator) => Some(Arc::new(validator)),
                Err(err) => {
                    problems.push((
                        "schema".to_string(),
                        format!("is not a usable JSON Schema: {err}"),
                    ));
                    None
                }
            },
        };
        let entry = EventTypeConfig {
            name: def.event_type,
            description: def.description,
            schema: def.schema,
            example: def.example,
            validator,
        };
        if let Some(example) = &entry.example
            && let Err(violations) = entry.check(example)
        {
            problems.push((
                "example".to_string(),
                format!("does not match the schema {}", violations[0]),
            ));
        }
        if problems.is_empty() {
            Ok(entry)
        } else {
            Err(problems)
        }
    }

    /// Checks a payload against the schema (always passes without one); on failure, the
    /// first few places that fail, in document order.
    pub fn check(&self, payload: &Value) -> Result<(), Vec<SchemaViolation>> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let violations: Vec<SchemaViolation> = validator
            .iter_errors(payload)
            .take(MAX_VIOLATIONS)
            .map(|err| SchemaViolation {
                path: err.instance_path().as_str().to_string(),
                message: err.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full(schema: Value, example: Option<Value>) -> RawEventType {
        RawEventType::Full(RawEventTypeDef {
            event_type: "order.paid".into(),
            description: Some("An order was paid".into()),
            schema: Some(schema),
            example,
        })
    }

    #[test]
    fn payloads_are_checked_against_the_schema_and_name_the_failing_path() {
        let schema = json!({
            "type": "object",
            "required": ["id", "items"],
            "properties": {
                "id": {"type": "integer"},
                "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}}
            }
        });
        let entry =
            EventTypeConfig::from_raw(&full(schema, Some(json!({"id": 1, "items": []})))).unwrap();
        assert!(
            entry
                .check(&json!({"id": 7, "items": [{"sku": "a"}]}))
                .is_ok()
        );
        let violations = entry
            .check(&json!({"id": "seven", "items": [{"sku": "a"}, {}]}))
            .unwrap_err();
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"/id"), "{violations:?}");
        assert!(paths.contains(&"/items/1"), "{violations:?}");
        let missing = entry.check(&json!({"items": []})).unwrap_err();
        assert_eq!(missing[0].path, "");
        assert!(
            missing[0].to_string().starts_with("at `/`"),
            "{}",
            missing[0]
        );
    }

    #[test]
    fn a_bad_schema_an_example_outside_it_and_a_bad_name_are_refused() {
        let problems =
            EventTypeConfig::from_raw(&full(json!({"type": "no-such-type"}), None)).unwrap_err();
        assert_eq!(problems[0].0, "schema");
        let problems = EventTypeConfig::from_raw(&full(
            json!({"type": "object", "required": ["id"]}),
            Some(json!({})),
        ))
        .unwrap_err();
        assert_eq!(problems[0].0, "example");
        let problems =
            EventTypeConfig::from_raw(&RawEventType::Name("bad type!".into())).unwrap_err();
        assert_eq!(problems[0].0, "type");
        let plain = EventTypeConfig::from_raw(&RawEventType::Name("a.b".into())).unwrap();
        assert!(plain.check(&json!("anything")).is_ok());
    }

    #[test]
    fn remote_references_are_not_fetched() {
        let problems = EventTypeConfig::from_raw(&full(
            json!({"$ref": "https://schemas.example/order.json"}),
            None,
        ))
        .unwrap_err();
        assert_eq!(problems[0].0, "schema", "{problems:?}");
    }
}
