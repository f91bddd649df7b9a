//! Each attempt keeps the request as it was sent: headers (secrets and signatures by name
//! only) and the body up to `max_request_capture_bytes`, marked truncated beyond it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{ACME_KEY, Receiver, TestEngine};

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

/// A credential in a webhook's static headers is sent but never shown: a view gives its name
/// with a `null` value, and a PATCH that sends the view's `null` back keeps the value.
#[tokio::test]
async fn a_webhooks_credential_headers_are_sent_never_shown_and_kept_by_a_null_patch() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let created = engine
        .create_webhook(json!({
            "url": receiver.url,
            "headers": {"X-Team": "blue", "Authorization": "Bearer s3cret-token", "x-api-key": "k-123456"},
        }))
        .await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{id}");
    let shown = json!({"x-team": "blue", "authorization": null, "x-api-key": null});
    assert_eq!(created["headers"], shown, "{created}");
    let (_, view) = engine.get(&path).await;
    let (_, list) = engine.get("/v1/webhooks").await;
    assert_eq!(view["headers"], shown);
    assert_eq!(list["data"][0]["headers"], shown);
    for text in [created.to_string(), view.to_string(), list.to_string()] {
        assert!(
            !text.contains("s3cret-token") && !text.contains("k-123456"),
            "{text}"
        );
    }

    // Read, change one header, write back: the credential stays, the dropped key goes.
    let mut headers = view["headers"].clone();
    headers["x-team"] = json!("red");
    headers.as_object_mut().unwrap().remove("x-api-key");
    let (status, patched) = engine
        .call(
            "PATCH",
            &path,
            ACME_KEY,
            Some(json!({ "headers": headers })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["headers"],
        json!({"x-team": "red", "authorization": null})
    );
    engine.send_event("user.created", json!({})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("authorization"), "Bearer s3cret-token");
    assert_eq!(got[0].header("x-team"), "red");
    assert!(!got[0].headers.contains_key("x-api-key"));

    // `null` for a header the webhook does not have has no value to keep.
    let (status, err) = engine
        .call(
            "PATCH",
            &path,
            ACME_KEY,
            Some(json!({"headers": {"x-api-key": null}})),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("invalid_header")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("x-api-key"),
        "{err}"
    );
    // Creating a webhook takes values only.
    let (status, err) = engine
        .post(
            "/v1/webhooks",
            json!({"url": receiver.url, "headers": {"authorization": null}}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
}
