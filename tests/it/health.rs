//! Webhook health on the webhook object: last success and failure, last error code,
//! consecutive failures, `failing_since` and the 24 h success rate, kept as attempts happen.

use std::time::Duration;

use serde_json::json;

use crate::support::{Receiver, TestEngine, eventually};

#[tokio::test]
async fn health_follows_failures_and_the_success_that_ends_them() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap().to_string();
    assert_eq!(webhook["health"]["consecutive_failures"], 0);
    assert_eq!(webhook["health"]["success_rate_24h"], json!(null));

    receiver.respond(503);
    let event = engine.send_event("user.created", json!({})).await;
    let delivery = event["deliveries"][0]["id"].as_str().unwrap().to_string();
    receiver.wait_for(2, Duration::from_secs(10)).await;
    let failing = eventually(
        Duration::from_secs(10),
        "two failures in health",
        || async {
            let (_, w) = engine.get(&format!("/v1/webhooks/{id}")).await;
            (w["health"]["consecutive_failures"].as_u64() >= Some(2)).then_some(w)
        },
    )
    .await;
    let health = &failing["health"];
    assert_eq!(health["last_error_code"], "http_status");
    assert_eq!(health["success_rate_24h"], 0.0);
    assert!(health["failing_since"].is_string() && health["last_failure_at"].is_string());
    assert_eq!(health["last_success_at"], json!(null));

    receiver.respond(200);
    let done = engine.wait_delivery(&delivery, "delivered").await;
    let attempts = done["attempts"].as_array().unwrap().len() as u64;
    let (_, list) = engine.get("/v1/webhooks").await;
    let health = &list["data"][0]["health"];
    assert_eq!(health["consecutive_failures"], 0);
    assert_eq!(health["failing_since"], json!(null));
    assert!(health["last_success_at"].is_string());
    assert_eq!(health["attempts_24h"], attempts);
    let rate = health["success_rate_24h"].as_f64().unwrap();
    assert!((rate - 1.0 / attempts as f64).abs() < 0.001, "{rate}");
    // The last failure is still on record.
    assert_eq!(health["last_error_code"], "http_status");
}
