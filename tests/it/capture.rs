//! Each attempt keeps the request as it was sent: headers (secrets and signatures by name
//! only) and the body up to `max_request_capture_bytes`, marked truncated beyond it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Receiver, TestEngine};

#[tokio::test]
async fn an_attempt_shows_the_request_as_sent_without_its_secrets() {
    let engine = TestEngine::start_with("max_request_capture_bytes = 200").await;
    let receiver = Receiver::start().await;
    engine
        .create_webhook(json!({
            "url": receiver.url,
            "headers": {"x-team": "blue", "authorization": "Bearer s3cret-token"},
        }))
        .await;
    let small = engine.send_event("user.created", json!({"n": 1})).await;
    let big = engine
        .send_event("user.created", json!({"text": "é".repeat(300)}))
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;

    for (event, truncated) in [(&small, false), (&big, true)] {
        let id = event["deliveries"][0]["id"].as_str().unwrap();
        let delivery = engine.wait_delivery(id, "delivered").await;
        let request = &delivery["attempts"][0]["request"];
        let sent = got
            .iter()
            .find(|r| r.header("webhook-id") == id)
            .expect("the receiver got it");
        assert_eq!(request["method"], "POST");
        assert_eq!(request["url"], receiver.url);
        let header = |name: &str| -> Value {
            request["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {request}"))["value"]
                .clone()
        };
        assert_eq!(header("x-team"), "blue");
        assert_eq!(header("webhook-id"), id);
        assert_eq!(
            header("webhook-timestamp"),
            sent.header("webhook-timestamp")
        );
        assert_eq!(header("authorization"), Value::Null);
        assert_eq!(header("webhook-signature"), Value::Null);
        assert!(!delivery.to_string().contains("s3cret-token"));
        assert!(
            !delivery
                .to_string()
                .contains(&sent.header("webhook-signature"))
        );
        assert_eq!(request["body_bytes"], sent.body.len());
        assert_eq!(request["body_truncated"], truncated);
        let body = request["body"].as_str().unwrap();
        assert!(body.len() <= 200);
        assert!(
            std::str::from_utf8(&sent.body).unwrap().starts_with(body),
            "the kept body is what was sent"
        );
        if !truncated {
            assert_eq!(body.as_bytes(), &sent.body[..]);
        }
    }
}
