//! Unknown query parameters are refused: every `/v1` operation accepts exactly the query
//! parameters its OpenAPI operation documents, and a request naming any other gets `400
//! unknown_parameter` naming all of them. A misspelt filter (`?webhookId=`, `?instanceId=`,
//! `?page=2`) would otherwise be ignored and return unfiltered results.
//!
//! The accepted names are read from the same document `/openapi.json` serves, so the check and
//! the description cannot disagree: adding a parameter to a handler's `IntoParams` type is
//! what makes it accepted.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{OpenApi, RefOr};

use super::ApiError;

/// The documented query parameters of every `/v1` operation, by method and path template.
#[derive(Debug, Clone, Default)]
pub struct QueryRules(Arc<HashMap<(Method, String), BTreeSet<String>>>);

impl QueryRules {
    /// Reads the query parameters of every `/v1` operation of `document`.
    pub fn from_document(document: &OpenApi) -> Self {
        let mut rules = HashMap::new();
        for (path, item) in &document.paths.paths {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations: [(Method, &Option<Operation>); 5] = [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let names = operation
                    .parameters
                    .iter()
                    .flatten()
                    .filter_map(|p| match p {
                        RefOr::T(p) if p.parameter_in == ParameterIn::Query => Some(p.name.clone()),
                        _ => None,
                    })
                    .collect();
                rules.insert((method, path.clone()), names);
            }
        }
        QueryRules(Arc::new(rules))
    }

    /// The names in `query` that `method path` does not document, in order, each once.
    /// `None` for an operation without rules (not under `/v1`).
    fn unknown(&self, method: &Method, path: &str, query: &str) -> Option<Vec<String>> {
        let known = self.0.get(&(method.clone(), path.to_string()))?;
        let mut unknown: Vec<String> = Vec::new();
        for (name, _) in url::form_urlencoded::parse(query.as_bytes()) {
            if !known.contains(name.as_ref()) && !unknown.iter().any(|u| *u == name) {
                unknown.push(name.into_owned());
            }
        }
        Some(unknown)
    }

    /// The documented names of `method path`, for the error message.
    fn known(&self, method: &Method, path: &str) -> Vec<String> {
        self.0
            .get(&(method.clone(), path.to_string()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Parameters refused on purpose where a user may well try them: (path, parameter, why).
const REFUSED_ON_PURPOSE: &[(&str, &str, &str)] = &[(
    "/v1/webhooks/{id}/stats",
    "channel",
    "statistics are kept per webhook and per channel, not per webhook and channel: ask \
     `GET /v1/stats?channel=` for a channel's",
)];

/// Why `path` refuses one of `unknown`, if it does so on purpose.
fn refusal_reason(path: &str, unknown: &[String]) -> Option<&'static str> {
    REFUSED_ON_PURPOSE
        .iter()
        .find(|(p, name, _)| *p == path && unknown.iter().any(|u| u == name))
        .map(|(_, _, why)| *why)
}

/// The message of `400 unknown_parameter`.
fn message(unknown: &[String], known: &[String]) -> String {
    let quote = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = if unknown.len() == 1 {
        "unknown query parameter"
    } else {
        "unknown query parameters"
    };
    if known.is_empty() {
        format!(
            "{what} {}: this operation takes no query parameters",
            quote(unknown)
        )
    } else {
        format!(
            "{what} {}: this operation takes {}",
            quote(unknown),
            quote(known)
        )
    }
}

/// Route layer: refuses a `/v1` request that names an undocumented query parameter.
pub async fn refuse_unknown_parameters(
    State(rules): State<QueryRules>,
    request: Request,
    next: Next,
) -> Response {
    if let (Some(query), Some(path)) = (
        request.uri().query(),
        request.extensions().get::<MatchedPath>(),
    ) {
        let method = request.method();
        // HEAD is answered by the GET handler.
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        if let Some(unknown) = rules.unknown(method, path.as_str(), query)
            && !unknown.is_empty()
        {
            let known = rules.known(method, path.as_str());
            let mut text = message(&unknown, &known);
            if let Some(why) = refusal_reason(path.as_str(), &unknown) {
                text = format!("{text} ({why})");
            }
            return ApiError::bad_request("unknown_parameter", text).into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> QueryRules {
        let mut map = HashMap::new();
        map.insert(
            (Method::GET, "/v1/deliveries".to_string()),
            BTreeSet::from(["limit".to_string(), "status".to_string()]),
        );
        map.insert(
            (Method::GET, "/v1/webhooks/{id}".to_string()),
            BTreeSet::new(),
        );
        QueryRules(Arc::new(map))
    }

    #[test]
    fn every_unknown_name_is_reported_once_in_order() {
        let rules = rules();
        let unknown = rules
            .unknown(
                &Method::GET,
                "/v1/deliveries",
                "instanceId=x&limit=5&page=2&instanceId=y",
            )
            .unwrap();
        assert_eq!(unknown, ["instanceId", "page"]);
        assert_eq!(
            message(&unknown, &rules.known(&Method::GET, "/v1/deliveries")),
            "unknown query parameters `instanceId`, `page`: this operation takes `limit`, `status`"
        );
        let none = rules
            .unknown(&Method::GET, "/v1/deliveries", "status=failed&limit=1")
            .unwrap();
        assert!(none.is_empty());
        // Percent-encoded names are compared decoded.
        let encoded = rules
            .unknown(&Method::GET, "/v1/deliveries", "st%61tus=failed&x%20y=1")
            .unwrap();
        assert_eq!(encoded, ["x y"]);
    }

    #[test]
    fn operations_without_parameters_refuse_any_and_other_paths_have_no_rules() {
        let rules = rules();
        let unknown = rules
            .unknown(&Method::GET, "/v1/webhooks/{id}", "expand=1")
            .unwrap();
        assert_eq!(
            message(&unknown, &rules.known(&Method::GET, "/v1/webhooks/{id}")),
            "unknown query parameter `expand`: this operation takes no query parameters"
        );
        assert!(rules.unknown(&Method::GET, "/healthz", "x=1").is_none());
    }
}
