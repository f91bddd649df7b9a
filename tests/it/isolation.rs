//! Tenant isolation: tenant B never sees or changes tenant A's resources (404, not 403),
//! and listings never leak.

use serde_json::json;

use crate::support::{ACME_KEY, GLOBEX_KEY, Receiver, TestEngine};

#[tokio::test]
async fn another_tenants_key_gets_404_on_every_route_and_empty_listings() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let wh = webhook["id"].as_str().unwrap();
    let event = engine
        .send_event("user.created", json!({"secret": "acme data"}))
        .await;
    let evt = event["id"].as_str().unwrap();
    let dlv = event["deliveries"][0]["id"].as_str().unwrap();
    receiver
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;

    let foreign: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("GET", format!("/v1/webhooks/{wh}"), None),
        (
            "PATCH",
            format!("/v1/webhooks/{wh}"),
            Some(json!({"description": "pwned"})),
        ),
        ("DELETE", format!("/v1/webhooks/{wh}"), None),
        ("POST", format!("/v1/webhooks/{wh}/test"), None),
        ("POST", format!("/v1/webhooks/{wh}/rotate-secret"), None),
        (
            "POST",
            format!("/v1/webhooks/{wh}/recover"),
            Some(json!({"since": "0"})),
        ),
        ("GET", format!("/v1/events/{evt}"), None),
        ("GET", format!("/v1/deliveries/{dlv}"), None),
        ("POST", format!("/v1/deliveries/{dlv}/retry"), None),
    ];
    for (method, path, body) in foreign {
        let (status, err) = engine.call(method, &path, GLOBEX_KEY, body).await;
        assert_eq!(status, 404, "{method} {path}: {err}");
        assert_eq!(err["code"], "not_found");
        assert!(!err.to_string().contains("acme"), "{err}");
    }
    for path in [
        "/v1/webhooks",
        "/v1/events",
        "/v1/deliveries",
        &format!("/v1/deliveries?webhook_id={wh}"),
    ] {
        let (status, list) = engine.call("GET", path, GLOBEX_KEY, None).await;
        assert_eq!(status, 200);
        assert_eq!(list["data"].as_array().unwrap().len(), 0, "{path}: {list}");
    }
    // Globex's events never fan out to acme's webhooks.
    let (status, theirs) = engine
        .call(
            "POST",
            "/v1/events",
            GLOBEX_KEY,
            Some(json!({"type": "user.created", "payload": {}})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(theirs["deliveries"].as_array().unwrap().len(), 0);

    // And acme's data is untouched.
    let (status, w) = engine
        .call("GET", &format!("/v1/webhooks/{wh}"), ACME_KEY, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(w["description"], "");
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_with_401() {
    let engine = TestEngine::start().await;
    let response = engine
        .http
        .get(engine.url("/v1/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    let (status, body) = engine.call("GET", "/v1/webhooks", "wrong-key", None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let response = engine
        .http
        .get(engine.url("/v1/webhooks"))
        .header("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Ops endpoints need no key.
    let response = engine
        .http
        .get(engine.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
