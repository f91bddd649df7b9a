//! Failure handling: retries with the same webhook-id, Retry-After, permanent failures,
//! 410 Gone, manual retry, recover, isolation from a hanging receiver.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Receiver, TestEngine, eventually};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_failed_delivery_is_retried_with_the_same_webhook_id_until_it_succeeds() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.respond(500);
    engine.create_webhook(json!({"url": receiver.url})).await;
    let event = engine.send_event("user.created", json!({"k": "v"})).await;
    let delivery_id = event["deliveries"][0]["id"].as_str().unwrap().to_string();

    receiver.wait_for(2, WAIT).await;
    receiver.respond(200);
    let delivery = engine.wait_delivery(&delivery_id, "delivered").await;

    let got = receiver.received();
    assert!(got.len() >= 3, "two failures then a success");
    assert!(got.iter().all(|r| r.header("webhook-id") == delivery_id));
    // Each try is signed anew with its own timestamp, same body.
    assert!(got.iter().all(|r| r.body == got[0].body));
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), got.len());
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts[0]["error_code"], "http_status");
    assert_eq!(attempts[0]["result"], "failed");
    assert!(attempts[0]["next_attempt_at"].is_string());
    assert_eq!(attempts.last().unwrap()["result"], "delivered");
    assert_eq!(delivery["attempt_count"], got.len());
    // The schedule is 50 ms, 100 ms, ...: the second try waits at least the first delay.
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(45));
}

#[tokio::test]
async fn retries_stop_when_the_schedule_is_exhausted() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.respond(503);
    engine
        .create_webhook(json!({"url": receiver.url, "max_attempts": 3}))
        .await;
    let event = engine.send_event("user.created", json!({})).await;
    let delivery_id = event["deliveries"][0]["id"].as_str().unwrap();
    let delivery = engine.wait_delivery(delivery_id, "failed").await;
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[2]["result"], "exhausted");
    assert!(delivery["next_attempt_at"].is_null());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.count(), 3);
}

#[tokio::test]
async fn retry_after_from_the_receiver_lengthens_the_wait_and_never_shortens_it() {
    // A short schedule: only Retry-After can hold the second try back for two seconds.
    let engine =
        TestEngine::start_with("retry_schedule = [\"100ms\"]\nretry_jitter_percent = 0").await;
    let receiver = Receiver::start().await;
    receiver.respond_with_retry_after(429, "2");
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    engine.send_event("user.created", json!({})).await;
    receiver.wait_for(1, WAIT).await;
    receiver.respond(200);
    let got = receiver.wait_for(2, WAIT).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_millis(1950), "waited {gap:?}");
    assert!(gap < Duration::from_secs(6), "waited {gap:?}");

    // A longer schedule: `Retry-After: 0` does not bring the retry forward (answered to every
    // attempt, it would spend the whole schedule at once).
    let (status, _) = engine
        .call(
            "PATCH",
            &format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap()),
            crate::support::ACME_KEY,
            Some(json!({"retry_schedule": ["2s"]})),
        )
        .await;
    assert_eq!(status, 200);
    receiver.respond_with_retry_after(503, "0");
    engine.send_event("user.created", json!({})).await;
    receiver.wait_for(3, WAIT).await;
    receiver.respond(200);
    let got = receiver.wait_for(4, WAIT).await;
    let gap = got[3].at.duration_since(got[2].at);
    assert!(gap >= Duration::from_millis(1950), "waited {gap:?}");
}

#[tokio::test]
async fn a_non_retryable_4xx_fails_the_delivery_at_once() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.respond(400);
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let event = engine.send_event("user.created", json!({})).await;
    let delivery_id = event["deliveries"][0]["id"].as_str().unwrap();
    let delivery = engine.wait_delivery(delivery_id, "failed").await;
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(delivery["attempts"][0]["result"], "rejected");
    assert_eq!(delivery["last_status_code"], 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1);
    // A 400 does not disable the webhook.
    let (_, w) = engine
        .get(&format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap()))
        .await;
    assert_eq!(w["status"], "active");
}

#[tokio::test]
async fn gone_410_disables_the_webhook_until_it_is_re_enabled() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.respond(410);
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();
    let event = engine.send_event("user.created", json!({})).await;
    engine
        .wait_delivery(event["deliveries"][0]["id"].as_str().unwrap(), "failed")
        .await;
    // The disable is a consequence written after the outcome is recorded (a transaction later
    // on PostgreSQL), so it may trail the delivery's `failed` by a moment.
    let w = eventually(WAIT, "the webhook disabled by the 410", || async {
        let (_, w) = engine.get(&format!("/v1/webhooks/{id}")).await;
        (w["status"] == "disabled").then_some(w)
    })
    .await;
    assert!(w["disabled_reason"].as_str().unwrap().contains("410"));

    // Disabled webhooks get no new deliveries.
    let event = engine.send_event("user.created", json!({})).await;
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 0);

    receiver.respond(200);
    let (status, w) = engine
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            crate::support::ACME_KEY,
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(w["status"], "active");
    assert!(w["disabled_reason"].is_null());
    let event = engine.send_event("user.created", json!({})).await;
    engine
        .wait_delivery(event["deliveries"][0]["id"].as_str().unwrap(), "delivered")
        .await;
}

#[tokio::test]
async fn a_paused_webhook_queues_its_events_and_sends_them_when_resumed() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();
    let patch = |status: &'static str| {
        let (engine, path) = (&engine, format!("/v1/webhooks/{id}"));
        async move {
            engine
                .call(
                    "PATCH",
                    &path,
                    crate::support::ACME_KEY,
                    Some(json!({ "status": status })),
                )
                .await
        }
    };
    let (status, w) = patch("paused").await;
    assert_eq!(status, 200);
    assert_eq!(w["status"], "paused");

    // Paused: events still fan out to it and wait, nothing is sent.
    let mut deliveries = Vec::new();
    for n in 0..5 {
        let event = engine.send_event("user.created", json!({ "n": n })).await;
        assert_eq!(event["deliveries"].as_array().unwrap().len(), 1);
        deliveries.push(event["deliveries"][0]["id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 0);
    let (_, d) = engine
        .get(&format!("/v1/deliveries/{}", deliveries[0]))
        .await;
    assert_eq!(d["status"], "pending");

    let (status, w) = patch("active").await;
    assert_eq!(status, 200);
    assert!(w["disabled_reason"].is_null());
    for id in &deliveries {
        engine.wait_delivery(id, "delivered").await;
    }
    assert_eq!(receiver.received().len(), 5);
}

/// A run of failures belongs to a receiver: pointing the webhook at a new URL starts afresh,
/// so the new URL's first failure does not disable it for the old one's.
#[tokio::test]
async fn a_new_url_starts_a_fresh_run_of_failures() {
    let engine =
        TestEngine::start_with("disable_after = \"1s\"\nretry_schedule = [\"1500ms\"]").await;
    let (old, new) = (Receiver::start().await, Receiver::start().await);
    old.respond(500);
    new.respond(500);
    // Attempts to spare: the first event's retry may still meet the new URL failing.
    let webhook = engine
        .create_webhook(json!({"url": old.url, "max_attempts": 6}))
        .await;
    let path = format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap());
    let first = engine.send_event("user.created", json!({})).await;
    old.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _) = engine
        .call(
            "PATCH",
            &path,
            crate::support::ACME_KEY,
            Some(json!({"url": new.url})),
        )
        .await;
    assert_eq!(status, 200);
    // The pending retry and a new event go to the new URL, which fails once, then recovers.
    engine.send_event("user.created", json!({})).await;
    new.wait_for(1, WAIT).await;
    new.respond(200);
    let (_, w) = engine.get(&path).await;
    assert_eq!(w["status"], "active", "one failure at the new URL: {w}");
    engine
        .wait_delivery(first["deliveries"][0]["id"].as_str().unwrap(), "delivered")
        .await;
}

#[tokio::test]
async fn a_webhook_failing_longer_than_disable_after_is_disabled_with_a_reason() {
    let engine = TestEngine::start_with(r#"disable_after = "300ms""#).await;
    let receiver = Receiver::start().await;
    receiver.respond(500);
    let webhook = engine
        .create_webhook(json!({"url": receiver.url, "max_attempts": 50}))
        .await;
    let id = webhook["id"].as_str().unwrap();
    engine.send_event("user.created", json!({})).await;
    let w = eventually(WAIT, "webhook disabled", || async {
        let (_, w) = engine.get(&format!("/v1/webhooks/{id}")).await;
        (w["status"] == "disabled").then_some(w)
    })
    .await;
    assert!(
        w["disabled_reason"].as_str().unwrap().contains("failed"),
        "{w}"
    );
    // While disabled nothing more is sent.
    let before = receiver.count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.count(), before);
}

/// A manual retry or recover of a disabled webhook would queue what nothing sends: refused
/// with a code and the way out; once the webhook is active again both send at once.
#[tokio::test]
async fn retry_and_recover_of_a_disabled_webhook_are_refused_until_it_is_enabled() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.respond(400);
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{id}");
    let mut deliveries = Vec::new();
    for _ in 0..2 {
        let event = engine.send_event("user.created", json!({})).await;
        let delivery_id = event["deliveries"][0]["id"].as_str().unwrap().to_string();
        engine.wait_delivery(&delivery_id, "failed").await;
        deliveries.push(delivery_id);
    }
    receiver.respond(200);
    let (status, _) = engine
        .call(
            "PATCH",
            &path,
            crate::support::ACME_KEY,
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, 200);
    let retry = format!("/v1/deliveries/{}/retry", deliveries[0]);
    let recover = (
        format!("{path}/recover"),
        json!({"since": "2000-01-01T00:00:00Z"}),
    );
    let (status, err) = engine.post(&retry, json!({})).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("webhook_disabled")),
        "{err}"
    );
    assert!(err["message"].as_str().unwrap().contains("active"), "{err}");
    let (status, err) = engine.post(&recover.0, recover.1.clone()).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("webhook_disabled")),
        "{err}"
    );
    let (_, d) = engine
        .get(&format!("/v1/deliveries/{}", deliveries[0]))
        .await;
    assert_eq!(d["status"], "failed", "nothing was queued: {d}");
    // Replays skip it (bulk) or are refused (named), for the same reason.
    let (status, bulk) = engine
        .post("/v1/deliveries/replay", json!({"webhook_id": id}))
        .await;
    assert_eq!((status, &bulk["replayed"]), (202, &json!(0)), "{bulk}");
    let (status, err) = engine
        .post(
            &format!("/v1/events/{}/replay", d["event_id"].as_str().unwrap()),
            json!({"webhook_id": id}),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("webhook_disabled")),
        "{err}"
    );
    assert_eq!(receiver.count(), 2);

    let (status, _) = engine
        .call(
            "PATCH",
            &path,
            crate::support::ACME_KEY,
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, d) = engine.post(&retry, json!({})).await;
    assert_eq!(status, 202, "{d}");
    engine.wait_delivery(&deliveries[0], "delivered").await;
    let (status, r) = engine.post(&recover.0, recover.1).await;
    assert_eq!((status, &r["requeued"]), (202, &json!(1)), "{r}");
    engine.wait_delivery(&deliveries[1], "delivered").await;
}

#[tokio::test]
async fn manual_retry_and_recover_resend_failed_deliveries() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.respond(400);
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let event = engine.send_event("user.created", json!({})).await;
        let delivery_id = event["deliveries"][0]["id"].as_str().unwrap().to_string();
        engine.wait_delivery(&delivery_id, "failed").await;
        deliveries.push(delivery_id);
    }
    receiver.respond(200);

    let (status, d) = engine
        .call(
            "POST",
            &format!("/v1/deliveries/{}/retry", deliveries[0]),
            crate::support::ACME_KEY,
            None,
        )
        .await;
    assert_eq!(status, 202, "{d}");
    let d = engine.wait_delivery(&deliveries[0], "delivered").await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 2);

    let (status, r) = engine
        .post(
            &format!("/v1/webhooks/{id}/recover"),
            json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["requeued"], 2);
    for delivery_id in &deliveries[1..] {
        engine.wait_delivery(delivery_id, "delivered").await;
    }
    // Same webhook-id on the resend as on the failed try.
    let got = receiver.received();
    for delivery_id in &deliveries {
        assert_eq!(
            got.iter()
                .filter(|r| r.header("webhook-id") == *delivery_id)
                .count(),
            2
        );
    }

    // A delivered delivery can be resent on request too.
    let (status, _) = engine
        .call(
            "POST",
            &format!("/v1/deliveries/{}/retry", deliveries[0]),
            crate::support::ACME_KEY,
            None,
        )
        .await;
    assert_eq!(status, 202);
    receiver.wait_for(7, WAIT).await;
}

#[tokio::test]
async fn a_hanging_receiver_does_not_delay_another_webhook() {
    let engine = TestEngine::start().await;
    let hanging = Receiver::start().await;
    hanging.delay(Duration::from_secs(30));
    let healthy = Receiver::start().await;
    let slow = engine
        .create_webhook(json!({"url": hanging.url, "timeout_ms": 1500, "max_in_flight": 2}))
        .await;
    engine.create_webhook(json!({"url": healthy.url})).await;

    // Fill the hanging webhook's slots first, then measure the healthy one.
    for _ in 0..5 {
        engine.send_event("user.created", json!({})).await;
    }
    hanging.wait_for(2, WAIT).await;
    let started = Instant::now();
    for _ in 0..20 {
        engine.send_event("user.created", json!({})).await;
    }
    healthy.wait_for(25, WAIT).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "healthy webhook took {elapsed:?}, as long as the hanging one's timeout"
    );
    assert!(
        hanging.count() <= 2 + 2,
        "the hanging webhook is capped at 2 in flight"
    );

    // The hanging attempts end as timeouts and are retried.
    let (_, page) = engine
        .get(&format!(
            "/v1/deliveries?webhook_id={}",
            slow["id"].as_str().unwrap()
        ))
        .await;
    let first = page["data"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let delivery = eventually(WAIT, "a timeout recorded", || async {
        let (_, d) = engine.get(&format!("/v1/deliveries/{first}")).await;
        (!d["attempts"].as_array().unwrap().is_empty()).then_some(d)
    })
    .await;
    assert_eq!(delivery["attempts"][0]["error_code"], "timeout");
}

#[tokio::test]
async fn a_webhook_rate_limit_spaces_out_its_deliveries() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    engine
        .create_webhook(json!({"url": receiver.url, "rate_limit_per_sec": 5}))
        .await;
    for _ in 0..10 {
        engine.send_event("user.created", json!({})).await;
    }
    let got = receiver.wait_for(10, WAIT).await;
    // A burst of 5, then one every 200 ms: the tenth cannot come sooner than ~1 s after the first.
    let span = got[9].at.duration_since(got[0].at);
    assert!(
        span >= Duration::from_millis(900),
        "10 deliveries in {span:?} at 5/s"
    );
}

#[tokio::test]
async fn a_webhook_retry_schedule_replaces_the_tenants_and_is_validated_like_config() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.respond(503);
    // The tenant's schedule is 50 ms, 100 ms, 150 ms; this webhook waits 400 ms, once.
    let webhook = engine
        .create_webhook(json!({"url": receiver.url, "retry_schedule": ["400ms"]}))
        .await;
    assert_eq!(webhook["retry_schedule"], json!(["400ms"]));
    let event = engine.send_event("user.created", json!({})).await;
    let delivery_id = event["deliveries"][0]["id"].as_str().unwrap().to_string();
    let delivery = engine.wait_delivery(&delivery_id, "failed").await;
    let got = receiver.received();
    assert_eq!(got.len(), 2, "one retry: the schedule has one delay");
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(390));
    assert_eq!(delivery["attempts"][1]["result"], "exhausted");

    // null goes back to the tenant's schedule; [] means no retries.
    let id = webhook["id"].as_str().unwrap();
    let (status, w) = engine
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            crate::support::ACME_KEY,
            Some(json!({"retry_schedule": null})),
        )
        .await;
    assert_eq!((status, &w["retry_schedule"]), (200, &json!(null)));
    let (status, w) = engine
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            crate::support::ACME_KEY,
            Some(json!({"retry_schedule": []})),
        )
        .await;
    assert_eq!((status, &w["retry_schedule"]), (200, &json!([])));

    // The same rules as config: durations of at most 30 days, at most 50. (A delay of
    // millennia was accepted once: its next attempt fell past year 9999, the attempt panicked
    // formatting it, and the delivery was resent ~20 times a second.)
    for (schedule, place) in [
        (json!(["5s", "soon"]), "`retry_schedule[1]`"),
        (json!(vec!["1s"; 51]), "`retry_schedule`"),
        (json!(["5s", "10000years"]), "`retry_schedule[1]`"),
        (json!(["31d"]), "`retry_schedule[0]`"),
    ] {
        let (status, err) = engine
            .post(
                "/v1/webhooks",
                json!({"url": receiver.url, "retry_schedule": schedule}),
            )
            .await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["code"], "invalid_retry_schedule");
        assert!(err["message"].as_str().unwrap().contains(place), "{err}");
    }
}
