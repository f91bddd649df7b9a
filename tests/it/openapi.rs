//! `/openapi.json` documents exactly what the router serves: every documented operation is
//! answered by its handler with a documented status, every undocumented method on a documented
//! path is a 405, every `/v1` operation needs the bearer key, and errors use `ErrorBody`.
//!
//! The list of routes comes from the document itself, which `api::routes` builds from the same
//! `utoipa_axum::routes!` calls as the router (and `clippy.toml` forbids plain `Router::route`),
//! so there is no second, hand-kept list to fall out of date.

use std::collections::HashSet;

use serde_json::Value;

use crate::support::{ACME_KEY, TestEngine};

/// Methods probed on every documented path (HEAD is answered by axum for every GET).
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn document(engine: &TestEngine) -> Value {
    let response = engine
        .http
        .get(engine.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    response.json().await.unwrap()
}

/// Every (method, path, operation) of the document, methods in upper case.
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("responses").is_some() {
                found.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    found
}

/// A concrete URL path for a templated one: every `{param}` becomes `x`.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push('x');
            }
            '}' => in_param = false,
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

fn documented_statuses(operation: &Value) -> Vec<u16> {
    operation["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(|status| status.parse().expect("numeric statuses"))
        .collect()
}

/// Sends `method path` with no body, with the tenant key or none; returns status and body.
async fn probe(engine: &TestEngine, method: &str, path: &str, key: Option<&str>) -> (u16, String) {
    let mut request = engine.http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        engine.url(path),
    );
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("engine answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn assert_error_body(what: &str, status: u16, text: &str) {
    let json: Value = serde_json::from_str(text)
        .unwrap_or_else(|_| panic!("{what}: {status} with a non-JSON body: {text}"));
    assert!(
        json["code"].is_string() && json["message"].is_string(),
        "{what}: {status} {json}"
    );
}

#[tokio::test]
async fn openapi_json_is_an_openapi_3_document_with_the_bearer_scheme_and_the_error_schema() {
    let engine = TestEngine::start().await;
    let doc = document(&engine).await;

    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "hookd");
    assert_eq!(doc, serde_json::to_value(hookd::api::openapi()).unwrap());

    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http", "{bearer}");
    assert_eq!(bearer["scheme"], "bearer", "{bearer}");

    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["type"], "object", "{error}");
    assert_eq!(error["properties"]["code"]["type"], "string", "{error}");
    assert_eq!(error["properties"]["message"]["type"], "string", "{error}");
    let required: HashSet<&str> = error["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, HashSet::from(["code", "message"]));

    let operations = operations(&doc);
    let mut ids = HashSet::new();
    for (method, path, operation) in &operations {
        let what = format!("{method} {path}");
        let id = operation["operationId"].as_str().unwrap_or_default();
        assert!(
            ids.insert(id.to_string()),
            "{what}: duplicate operationId `{id}`"
        );
        if path.starts_with("/v1/") {
            assert_eq!(
                operation["security"],
                serde_json::json!([{"bearer": []}]),
                "{what} must require the bearer key"
            );
            assert!(operation["responses"]["401"].is_object(), "{what}: no 401");
        } else {
            assert!(
                operation.get("security").is_none(),
                "{what} is unauthenticated"
            );
        }
        for (status, response) in operation["responses"].as_object().unwrap() {
            if status.as_str() >= "400" {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{what} {status}"
                );
            }
            // Every tenant route may answer `rate_limited` and `store_unavailable` with
            // Retry-After; generated clients read it from the document.
            if path.starts_with("/v1/") && (status == "429" || status == "503") {
                assert_eq!(
                    response["headers"]["Retry-After"]["schema"]["type"], "integer",
                    "{what} {status}: {response}"
                );
            }
        }
        if path.starts_with("/v1/") && !path.starts_with("/v1/admin/") {
            assert!(operation["responses"]["429"].is_object(), "{what}: no 429");
        }
    }
    // The operations endpoints document themselves, and the core of the API is there.
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/events"),
        ("PUT", "/v1/plugins/{name}"),
    ] {
        assert!(
            operations.iter().any(|(m, p, _)| m == method && p == path),
            "{method} {path} is not documented"
        );
    }
    // Request bodies, query parameters and path parameters come from the handlers' types.
    let create = &doc["paths"]["/v1/events"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateEvent"
    );
    let list_params: Vec<&str> = doc["paths"]["/v1/deliveries"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "limit",
        "iterator",
        "webhook_id",
        "status",
        "after",
        "before",
    ] {
        assert!(list_params.contains(&name), "{name} in {list_params:?}");
    }
    assert_eq!(
        doc["paths"]["/v1/events/{id}"]["get"]["parameters"][0]["in"],
        "path"
    );
}

#[tokio::test]
async fn every_documented_operation_is_served_and_answers_only_documented_statuses() {
    let engine = TestEngine::start().await;
    let doc = document(&engine).await;
    let operations = operations(&doc);
    assert!(operations.len() >= 20, "{} operations", operations.len());

    for (method, path, operation) in &operations {
        let what = format!("{method} {path}");
        let url = concrete(path);
        let documented = documented_statuses(operation);

        // Without a key: every /v1 operation refuses; the operations endpoints answer.
        let (status, text) = probe(&engine, method, &url, None).await;
        if path.starts_with("/v1/") {
            assert_eq!(status, 401, "{what} without a key: {text}");
            assert_error_body(&what, status, &text);
        } else {
            assert!(
                documented.contains(&status),
                "{what}: undocumented {status}: {text}"
            );
        }

        // With a key, no body and an unknown id: whatever the handler answers is documented.
        let (status, text) = probe(&engine, method, &url, Some(ACME_KEY)).await;
        assert!(
            documented.contains(&status),
            "{what} answered {status}, documented {documented:?}: {text}"
        );
        if status >= 400 {
            assert_error_body(&what, status, &text);
        }
    }
}

#[tokio::test]
async fn the_router_serves_no_method_the_document_leaves_out() {
    let engine = TestEngine::start().await;
    let doc = document(&engine).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = concrete(path);
        for method in METHODS {
            if item.get(method.to_lowercase()).is_some() {
                continue;
            }
            let (status, text) = probe(&engine, method, &url, Some(ACME_KEY)).await;
            assert_eq!(
                status, 405,
                "{method} {path} is served but not documented: {text}"
            );
            assert_error_body(&format!("{method} {path}"), status, &text);
        }
    }
    let (status, text) = probe(&engine, "GET", "/v1/undocumented", Some(ACME_KEY)).await;
    assert_eq!(status, 404, "{text}");
    assert_error_body("GET /v1/undocumented", status, &text);
}
