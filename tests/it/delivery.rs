//! Events in, signed deliveries out: signatures, routing, idempotency, logs, test sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::serve::ListenerExt;
use serde_json::json;

use crate::support::{Receiver, TestEngine, eventually};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_delivery_carries_a_valid_standard_webhooks_signature() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine
        .create_webhook(json!({"url": receiver.url, "event_types": ["user.created"]}))
        .await;
    let secret = webhook["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));

    let event = engine
        .send_event("user.created", json!({"name": "Ada", "n": 1}))
        .await;
    let delivery_id = event["deliveries"][0]["id"].as_str().unwrap().to_string();
    let got = receiver.wait_for(1, WAIT).await;
    let request = &got[0];

    // Verified by the public Standard Webhooks library, not by hookd's own signing code.
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    verifier
        .verify(&request.body, &request.headers)
        .expect("signature verifies");
    assert_eq!(request.header("webhook-id"), delivery_id);
    assert_eq!(request.header("content-type"), "application/json");

    let body = request.json();
    assert_eq!(body["type"], "user.created");
    assert_eq!(body["id"], event["id"]);
    assert_eq!(body["data"], json!({"name": "Ada", "n": 1}));
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    // Tampering breaks the signature.
    let mut tampered = request.body.to_vec();
    tampered.push(b' ');
    assert!(verifier.verify(&tampered, &request.headers).is_err());

    let delivery = engine.wait_delivery(&delivery_id, "delivered").await;
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["status_code"], 200);
    assert_eq!(attempts[0]["result"], "delivered");
    assert_eq!(attempts[0]["response_snippet"], "ok");
}

#[tokio::test]
async fn event_types_wildcards_prefixes_and_channels_decide_who_receives_an_event() {
    let engine = TestEngine::start().await;
    let all = Receiver::start().await;
    let users = Receiver::start().await;
    let exact = Receiver::start().await;
    let eu_channel = Receiver::start().await;
    engine
        .create_webhook(json!({"url": all.url, "event_types": ["*"]}))
        .await;
    engine
        .create_webhook(json!({"url": users.url, "event_types": ["user.*"]}))
        .await;
    engine
        .create_webhook(json!({"url": exact.url, "event_types": ["invoice.paid"]}))
        .await;
    engine
        .create_webhook(json!({"url": eu_channel.url, "event_types": ["*"], "channels": ["eu"]}))
        .await;

    let (s, e1) = engine
        .post("/v1/events", json!({"type": "user.created", "payload": {}}))
        .await;
    assert_eq!(s, 202);
    assert_eq!(e1["deliveries"].as_array().unwrap().len(), 2, "all + users");
    let (_, e2) = engine
        .post(
            "/v1/events",
            json!({"type": "invoice.paid", "payload": {}, "channel": "eu"}),
        )
        .await;
    assert_eq!(
        e2["deliveries"].as_array().unwrap().len(),
        3,
        "all + exact + eu"
    );
    let (_, e3) = engine
        .post(
            "/v1/events",
            json!({"type": "invoice.refunded", "payload": {}, "channel": "us"}),
        )
        .await;
    assert_eq!(e3["deliveries"].as_array().unwrap().len(), 1, "all only");

    all.wait_for(3, WAIT).await;
    users.wait_for(1, WAIT).await;
    exact.wait_for(1, WAIT).await;
    eu_channel.wait_for(1, WAIT).await;
    // Give stray deliveries a moment to show up if routing were wrong.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(all.count(), 3);
    assert_eq!(users.count(), 1);
    assert_eq!(users.received()[0].json()["type"], "user.created");
    assert_eq!(exact.count(), 1);
    assert_eq!(eu_channel.count(), 1);
    assert_eq!(eu_channel.received()[0].json()["channel"], "eu");
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_original_event_and_delivers_once() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    engine.create_webhook(json!({"url": receiver.url})).await;

    let body = json!({"type": "user.created", "payload": {"v": 1}, "id": "order-42"});
    let (first_status, first) = engine.post("/v1/events", body.clone()).await;
    assert_eq!(first_status, 202);
    let (second_status, second) = engine.post("/v1/events", body).await;
    assert_eq!(second_status, 200);
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["deliveries"][0]["id"], first["deliveries"][0]["id"]);

    // The header spelling dedupes against the same key.
    let response = engine
        .http
        .post(engine.url("/v1/events"))
        .bearer_auth(crate::support::ACME_KEY)
        .header("idempotency-key", "order-42")
        .json(&json!({"type": "user.created", "payload": {"v": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["idempotent-replayed"], "true");

    // Concurrent repeats of a fresh key still create one event.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (http, url) = (engine.http.clone(), engine.url("/v1/events"));
        handles.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(crate::support::ACME_KEY)
                .json(&json!({"type": "user.created", "payload": {}, "id": "race"}))
                .send()
                .await
                .unwrap();
            let json: serde_json::Value = response.json().await.unwrap();
            json["id"].as_str().unwrap().to_string()
        }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one event for one key: {ids:?}");

    receiver.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.count(), 2, "order-42 once, race once");
    let (_, events) = engine.get("/v1/events").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn events_and_deliveries_are_listed_with_filters_and_cursor_pagination() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    for i in 0..5 {
        engine.send_event("user.created", json!({"i": i})).await;
    }
    engine.send_event("invoice.paid", json!({})).await;
    receiver.wait_for(6, WAIT).await;

    let (_, page1) = engine.get("/v1/events?limit=4").await;
    assert_eq!(page1["data"].as_array().unwrap().len(), 4);
    assert_eq!(page1["done"], false);
    assert_eq!(page1["data"][0]["type"], "invoice.paid", "newest first");
    let iterator = page1["iterator"].as_str().unwrap();
    let (_, page2) = engine
        .get(&format!("/v1/events?limit=4&iterator={iterator}"))
        .await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 2);
    assert_eq!(page2["done"], true);
    assert_eq!(page2["data"][1]["payload"], json!({"i": 0}));

    let (_, typed) = engine.get("/v1/events?type=invoice.paid").await;
    assert_eq!(typed["data"].as_array().unwrap().len(), 1);

    let event_id = page1["data"][0]["id"].as_str().unwrap();
    let (status, one) = engine.get(&format!("/v1/events/{event_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one["deliveries"].as_array().unwrap().len(), 1);

    let wh = webhook["id"].as_str().unwrap();
    engine
        .wait_delivery(one["deliveries"][0]["id"].as_str().unwrap(), "delivered")
        .await;
    let all_delivered = crate::support::eventually(WAIT, "6 delivered", || async {
        let (_, d) = engine
            .get(&format!("/v1/deliveries?webhook_id={wh}&status=delivered"))
            .await;
        (d["data"].as_array().unwrap().len() == 6).then_some(d)
    })
    .await;
    assert!(
        all_delivered["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["webhook_id"] == wh)
    );
    let (_, by_type) = engine.get("/v1/deliveries?event_type=invoice.paid").await;
    assert_eq!(by_type["data"].as_array().unwrap().len(), 1);
    let (_, failed) = engine.get("/v1/deliveries?status=failed").await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 0);
    let (_, future) = engine
        .get("/v1/deliveries?after=2100-01-01T00:00:00Z")
        .await;
    assert_eq!(future["data"].as_array().unwrap().len(), 0);
    let (_, paged) = engine.get("/v1/deliveries?limit=5").await;
    assert_eq!(paged["data"].as_array().unwrap().len(), 5);
    assert_eq!(paged["done"], false);
}

#[tokio::test]
async fn a_test_send_delivers_a_sample_event_now_and_reports_the_outcome() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();

    let (status, outcome) = engine
        .post(
            &format!("/v1/webhooks/{id}/test"),
            json!({"type": "user.created", "payload": {"sample": true}}),
        )
        .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["delivered"], true);
    assert_eq!(outcome["status_code"], 200);
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].json()["data"], json!({"sample": true}));
    let verifier = standardwebhooks::Webhook::new(webhook["secret"].as_str().unwrap()).unwrap();
    verifier.verify(&got[0].body, &got[0].headers).unwrap();

    receiver.respond(503);
    let (_, outcome) = engine
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/test"),
            crate::support::ACME_KEY,
            None,
        )
        .await;
    assert_eq!(outcome["delivered"], false);
    assert_eq!(outcome["status_code"], 503);
    assert_eq!(outcome["error_code"], "http_status");
}

#[tokio::test]
async fn during_a_secret_rotation_both_signatures_verify() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();
    let old_secret = webhook["secret"].as_str().unwrap().to_string();

    let (status, rotated) = engine
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            crate::support::ACME_KEY,
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, old_secret);
    // The secret is never shown again outside create and rotate.
    let (_, fetched) = engine.get(&format!("/v1/webhooks/{id}")).await;
    assert!(fetched.get("secret").is_none());

    engine.send_event("user.created", json!({})).await;
    let got = receiver.wait_for(1, WAIT).await;
    let signature = got[0].header("webhook-signature");
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    for secret in [&old_secret, &new_secret] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&got[0].body, &got[0].headers)
            .unwrap_or_else(|e| panic!("{secret} should verify: {e:?}"));
    }
}

#[tokio::test]
async fn static_headers_are_sent_and_reserved_ones_refused() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    engine
        .create_webhook(json!({"url": receiver.url, "headers": {"X-Team": "payments"}}))
        .await;
    engine.send_event("user.created", json!({})).await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("x-team"), "payments");

    for reserved in ["webhook-signature", "Content-Length", "host"] {
        let (status, err) = engine
            .post(
                "/v1/webhooks",
                json!({"url": receiver.url, "headers": {reserved: "x"}}),
            )
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (422, Some("invalid_header")),
            "{reserved}"
        );
    }
    let (status, err) = engine
        .post(
            "/v1/webhooks",
            json!({"url": receiver.url, "headers": {"x-a": "evil\r\nx-b: 1"}}),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("invalid_header"))
    );
    // Every attempt sends and records them: a value over 8 KiB, headers over 16 KiB in all,
    // or one name twice in two cases are refused.
    let three: serde_json::Map<String, serde_json::Value> = (0..3)
        .map(|i| (format!("x-h{i}"), json!("a".repeat(6000))))
        .collect();
    for headers in [
        json!({"x-big": "a".repeat(8 * 1024 + 1)}),
        serde_json::Value::Object(three),
        json!({"X-Team": "blue", "x-team": "red"}),
    ] {
        let (status, err) = engine
            .post(
                "/v1/webhooks",
                json!({"url": receiver.url, "headers": headers}),
            )
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (422, Some("invalid_header")),
            "{err}"
        );
    }
    engine
        .create_webhook(json!({"url": receiver.url, "headers": {"x-max": "a".repeat(8 * 1024)}}))
        .await;
}

/// Many sends at once to one host reuse their connections: every send beyond the pool's idle
/// cap used to open and close a connection of its own (a cap of 64 against a webhook's 150).
#[tokio::test]
async fn many_sends_at_once_to_one_host_reuse_their_connections() {
    const IN_FLIGHT: usize = 150;
    const EVENTS: usize = 1800;
    let connections = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let counter = connections.clone();
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let answers = answered.clone();
    // Slow enough that the webhook's sends overlap up to its cap.
    let app = axum::Router::new().fallback(move || {
        let answers = answers.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            answers.fetch_add(1, Ordering::SeqCst);
            axum::http::StatusCode::OK
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // One delivery lane, so one connection pool: attempts do not split between two.
    let engine = TestEngine::start_with("worker_nice = 0").await;
    engine
        .create_webhook(json!({"url": url, "max_in_flight": IN_FLIGHT}))
        .await;
    post_in_batches_of_100(&engine, EVENTS).await;
    eventually(Duration::from_secs(60), "every event delivered", || async {
        (answered.load(Ordering::SeqCst) >= EVENTS).then_some(())
    })
    .await;
    // About one connection per send in flight (the client may open a few more while a busy
    // one is being freed); without reuse each round of 150 sends opened up to ~86 more.
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        opened <= 2 * IN_FLIGHT,
        "{opened} connections for {EVENTS} sends at most {IN_FLIGHT} at once"
    );
}

/// A webhook with hundreds of claims open (past 64 its claims skip the head of its queue, where
/// its own claims sit) still delivers every event, and none twice: the receiver fails the first
/// attempt of every fourth delivery it sees, so entries go back into the queue behind the
/// point later claims start from.
#[tokio::test]
async fn a_webhook_with_hundreds_of_claims_open_delivers_every_event_once_retries_included() {
    const EVENTS: usize = 1500;
    #[derive(Default)]
    struct Seen {
        attempts: std::collections::HashMap<String, usize>,
        delivered: std::collections::HashSet<String>,
        failed_first: usize,
        delivered_twice: usize,
    }
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let state = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let state = state.clone();
        async move {
            // Slow enough that the webhook's sends overlap up to its cap.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let id = headers["webhook-id"].to_str().unwrap().to_string();
            let mut seen = state.lock().unwrap();
            let attempts = {
                let attempts = seen.attempts.entry(id.clone()).or_insert(0);
                *attempts += 1;
                *attempts
            };
            if attempts == 1 && seen.attempts.len() % 4 == 0 {
                seen.failed_first += 1;
                return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            if !seen.delivered.insert(id) {
                seen.delivered_twice += 1;
            }
            axum::http::StatusCode::OK
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let engine =
        TestEngine::start_with("worker_nice = 0\nretry_schedule = [\"50ms\", \"50ms\", \"50ms\"]")
            .await;
    engine
        .create_webhook(json!({"url": url, "max_in_flight": 100}))
        .await;
    post_in_batches_of_100(&engine, EVENTS).await;
    eventually(Duration::from_secs(60), "every event delivered", || async {
        (seen.lock().unwrap().delivered.len() >= EVENTS).then_some(())
    })
    .await;
    // Retries past the last one due settle too; then nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.delivered.len(), EVENTS);
    assert_eq!(
        seen.delivered_twice, 0,
        "a delivery was sent again after its 2xx"
    );
    assert_eq!(seen.failed_first, EVENTS / 4);
    assert_eq!(
        seen.attempts.values().sum::<usize>(),
        EVENTS + EVENTS / 4,
        "one retry per failed first attempt"
    );
}

/// Posts `count` `user.created` events (payload `{"n": 0..count}`) through the batch endpoint.
async fn post_in_batches_of_100(engine: &TestEngine, count: usize) {
    for batch in 0..count.div_ceil(100) {
        let events: Vec<_> = (batch * 100..count.min(batch * 100 + 100))
            .map(|n| json!({"type": "user.created", "payload": {"n": n}}))
            .collect();
        let (status, answer) = engine
            .post("/v1/events/batch", json!({"events": events}))
            .await;
        assert_eq!(status, 200, "{answer}");
    }
}

/// One webhook, one slot, a slow receiver: while a delivery is sent the next ones are claimed
/// (on sled, some ahead of the slot that will start them). Paused then, the webhook sends
/// nothing more — not even what was claimed ahead — and resumed, it sends the rest in order.
#[tokio::test]
async fn a_webhook_paused_mid_backlog_sends_nothing_claimed_after_and_resumes_in_order() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(400));
    let webhook = engine
        .create_webhook(json!({"url": receiver.url, "max_in_flight": 1}))
        .await;
    let path = format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap());
    let set_status = |status: &'static str| {
        let (engine, path) = (&engine, &path);
        async move {
            let (code, _) = engine
                .call(
                    "PATCH",
                    path,
                    crate::support::ACME_KEY,
                    Some(json!({ "status": status })),
                )
                .await;
            code
        }
    };
    let mut deliveries = Vec::new();
    for n in 0..6 {
        let event = engine.send_event("user.created", json!({ "n": n })).await;
        deliveries.push(event["deliveries"][0]["id"].as_str().unwrap().to_string());
    }
    // The first has been answered and the second is at the receiver (for 400 ms).
    receiver.wait_for(2, WAIT).await;
    assert_eq!(set_status("paused").await, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(receiver.count(), 2, "nothing sent after the pause");
    engine.wait_delivery(&deliveries[1], "delivered").await;
    for id in &deliveries[2..] {
        let (_, d) = engine.get(&format!("/v1/deliveries/{id}")).await;
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(d["attempt_count"], 0, "{d}");
    }

    receiver.delay(Duration::ZERO);
    assert_eq!(set_status("active").await, 200);
    for id in &deliveries {
        engine.wait_delivery(id, "delivered").await;
    }
    let order: Vec<u64> = receiver
        .received()
        .iter()
        .map(|got| got.json()["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, [0, 1, 2, 3, 4, 5], "sent once each, in order");
}

/// A test send holds one of the webhook's `max_in_flight`: more at once than that are refused
/// (429 `test_send_busy`, Retry-After), so a receiver that asked for one request at a time
/// does not get hundreds from a script pressing "test".
#[tokio::test]
async fn test_sends_hold_the_webhooks_in_flight_cap() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(800));
    let webhook = engine
        .create_webhook(json!({"url": receiver.url, "max_in_flight": 1}))
        .await;
    let path = format!("/v1/webhooks/{}/test", webhook["id"].as_str().unwrap());
    let mut handles = Vec::new();
    for _ in 0..5 {
        let (http, url) = (engine.http.clone(), engine.url(&path));
        handles.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(crate::support::ACME_KEY)
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().get("retry-after").is_some();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (
                status,
                body["code"].as_str().map(str::to_string),
                retry_after,
            )
        }));
    }
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.unwrap());
    }
    answers.sort();
    assert_eq!(answers[0], (200, None, false), "{answers:?}");
    for answer in &answers[1..] {
        assert_eq!(
            answer,
            &(429, Some("test_send_busy".to_string()), true),
            "{answers:?}"
        );
    }
    assert_eq!(receiver.count(), 1);
    // The slot is back once the send finished.
    let (status, _) = engine.post(&path, json!({})).await;
    assert_eq!(status, 200);
}
