//! The SSRF guard end to end. Private and link-local addresses are only named where
//! nothing is sent (refusal at create time). Connect-time checks use loopback URLs while the
//! engine's allow-list does not include loopback, so a broken guard could only reach this
//! machine.

use std::time::Duration;

use serde_json::json;

use crate::support::{Receiver, TestEngine, parse_config, test_config_toml};

#[tokio::test]
async fn private_link_local_and_odd_spellings_are_refused_when_a_webhook_is_created() {
    let engine = TestEngine::start().await;
    for url in [
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "http://0xa9fea9fe/",
        "http://2852039166/",
        "http://0251.0376.0251.0376/",
        "http://0.0.0.0/",
        "http://127.0.0.2/",
        // RFC 8215 local-use NAT64: translated into networks of the operator's choosing.
        "http://[64:ff9b:1::a9fe:a9fe]/",
        "http://[64:ff9b:1:7f00:1::]/",
    ] {
        let (status, err) = engine.post("/v1/webhooks", json!({"url": url})).await;
        assert_eq!(status, 422, "{url}: {err}");
        assert_eq!(err["code"], "blocked_address", "{url}: {err}");
        // The tenant is told the address is refused, not what it is.
        let message = err["message"].as_str().unwrap();
        for leak in [
            "10.0", "192.168", "172.16", "169.254", "::1", "fd00", "64:ff9b", "127.0",
        ] {
            assert!(!message.contains(leak), "{url}: {message}");
        }
    }
    for url in [
        "ftp://example.com/",
        "not a url",
        "http://user:pw@example.com/",
        "http://",
        "https://:443/",
    ] {
        let (status, err) = engine.post("/v1/webhooks", json!({"url": url})).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (422, Some("invalid_url")),
            "{url}: {err}"
        );
    }
}

#[tokio::test]
async fn https_is_required_unless_the_config_allows_http() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        test_config_toml(dir.path(), "", false).replace("allow_http = true", "allow_http = false");
    let engine = TestEngine::start_in(dir, parse_config(&text)).await;
    let (status, err) = engine
        .post("/v1/webhooks", json!({"url": "http://example.com/"}))
        .await;
    assert_eq!((status, err["code"].as_str()), (422, Some("invalid_url")));
    assert!(err["message"].as_str().unwrap().contains("https"));
}

/// Turning `allow_http` off stops sends to webhooks made while it was on (they kept sending
/// payloads and signatures in clear): each attempt fails `insecure_scheme` with nothing sent,
/// and is retried, so moving the webhook to https in time loses nothing.
#[tokio::test]
async fn turning_allow_http_off_stops_sends_to_existing_http_webhooks() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let dir = engine.data_dir.path().to_path_buf();
    let https_only =
        test_config_toml(&dir, "", true).replace("allow_http = true", "allow_http = false");
    engine.engine().config().replace(parse_config(&https_only));

    let event = engine.send_event("user.created", json!({})).await;
    let id = event["deliveries"][0]["id"].as_str().unwrap();
    let d = engine.wait_delivery(id, "failed").await;
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "retried on the schedule: {d}");
    for attempt in attempts {
        assert_eq!(attempt["error_code"], "insecure_scheme", "{d}");
    }
    let path = format!("/v1/webhooks/{}/test", webhook["id"].as_str().unwrap());
    let (status, test) = engine.post(&path, json!({})).await;
    assert_eq!(status, 200, "{test}");
    assert_eq!(test["error_code"], "insecure_scheme", "{test}");
    assert_eq!(receiver.count(), 0, "nothing was sent in clear");
}

#[tokio::test]
async fn the_connect_time_check_refuses_loopback_when_it_is_no_longer_allowed() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    // Created while loopback is allow-listed: by IP literal and by a name that resolves to it.
    let literal = engine.create_webhook(json!({"url": receiver.url})).await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let named = engine
        .create_webhook(json!({"url": by_name, "event_types": ["*"]}))
        .await;

    // The admin removes loopback from the allow-list (as if DNS now pointed elsewhere).
    let dir = engine.data_dir.path().to_path_buf();
    let strict = parse_config(&test_config_toml(&dir, "", false));
    engine.engine().config().replace(strict);

    let event = engine.send_event("user.created", json!({})).await;
    for delivery in event["deliveries"].as_array().unwrap() {
        let d = engine
            .wait_delivery(delivery["id"].as_str().unwrap(), "failed")
            .await;
        assert_eq!(d["attempts"][0]["error_code"], "blocked_address", "{d}");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "not retried");
        let message = d["attempts"][0]["error_message"].as_str().unwrap();
        assert!(
            !message.contains("127.0.0"),
            "the address is not echoed: {message}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.count(), 0, "nothing reached the receiver");
    let _ = (literal, named);
}
