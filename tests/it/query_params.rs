//! Unknown query parameters are refused with `400 unknown_parameter` naming each of them, on
//! every `/v1` operation of the live `/openapi.json`; documented ones are taken.

use serde_json::Value;

use crate::support::{ACME_KEY, TestEngine};

#[tokio::test]
async fn every_v1_operation_refuses_undocumented_query_parameters_and_names_them() {
    let engine = TestEngine::start().await;
    let (_, document) = engine.get("/openapi.json").await;
    let mut probed = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, operation) in item.as_object().unwrap() {
            let url = path.replace("{id}", "x").replace("{name}", "x");
            let target = format!("{url}?instanceId=x&page=2");
            let (status, body) = engine
                .call(&method.to_uppercase(), &target, ACME_KEY, None)
                .await;
            assert_eq!(status, 400, "{method} {target}: {body}");
            assert_eq!(
                body["code"], "unknown_parameter",
                "{method} {target}: {body}"
            );
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains("`instanceId`") && message.contains("`page`"),
                "{method} {path}: {message}"
            );
            // The message lists what the operation does take.
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] == "query" {
                    let name = parameter["name"].as_str().unwrap();
                    assert!(message.contains(&format!("`{name}`")), "{path}: {message}");
                }
            }
            assert!(
                operation["responses"]["400"]["description"]
                    .as_str()
                    .unwrap()
                    .contains("unknown_parameter"),
                "{method} {path} documents the refusal"
            );
            probed += 1;
        }
    }
    assert!(probed >= 20, "{probed} operations");

    // Documented parameters pass; a filter that matches nothing gives an empty page.
    let (status, page) = engine
        .get("/v1/deliveries?status=failed&limit=5&event_type=none")
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"], Value::Array(vec![]));
    // The parameters are checked before the key (the answer reveals nothing of any tenant).
    let (status, body) = engine
        .call("GET", "/v1/webhooks?page=2", "wrong", None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("unknown_parameter"))
    );
}
