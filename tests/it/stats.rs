//! Statistics end to end: a known sequence of outcomes against real receivers (and a real
//! filter plugin) gives exact totals, rates, top event types and per-day rows, for the tenant,
//! per webhook and per channel; manual retries move counts between states; the channel scopes
//! of a tenant's day are capped; channel counts are exact after a kill -9 (the sled log
//! replays transitions with their channel); tenants see only their own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::crash::KillOnDrop;
use crate::plugins::wasm;
use crate::support::{ACME_KEY, GLOBEX_KEY, Receiver, TestEngine, eventually, utc_date};

const WAIT: Duration = Duration::from_secs(20);

/// Counts of one UTC day (or of the totals), in the API's field names.
#[derive(Debug, Default, Clone, PartialEq)]
struct Counts {
    events: u64,
    deliveries: u64,
    delivered: u64,
    failed: u64,
    filtered: u64,
    pending: u64,
}

impl Counts {
    fn of(json: &Value) -> Self {
        let n = |field: &str| {
            json[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field}: {json}"))
        };
        Counts {
            events: n("events"),
            deliveries: n("deliveries"),
            delivered: n("delivered"),
            failed: n("failed"),
            filtered: n("filtered"),
            pending: n("pending"),
        }
    }
}

async fn stats(engine: &TestEngine, path: &str) -> Value {
    let (status, body) = engine.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The UTC date of an RFC 3339 timestamp.
fn date(timestamp: &Value) -> String {
    timestamp.as_str().unwrap()[..10].to_string()
}

/// Sends `n` events of a type; returns (event date, delivery id) of each.
async fn send(
    engine: &TestEngine,
    event_type: &str,
    payload: Value,
    n: usize,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let event = engine.send_event(event_type, payload.clone()).await;
        let deliveries = event["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 1, "{event}");
        out.push((
            date(&event["timestamp"]),
            deliveries[0]["id"].as_str().unwrap().to_string(),
        ));
    }
    out
}

#[tokio::test]
async fn stats_count_a_known_sequence_of_outcomes_per_day_and_per_webhook() {
    // A 500 is retried an hour later: that delivery stays pending for the whole test.
    let engine = TestEngine::start_with(r#"retry_schedule = ["1h"]"#).await;
    let ok = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.respond(400);
    let flaky = Receiver::start().await;
    flaky.respond(500);
    let response = engine
        .http
        .put(engine.url("/v1/plugins/only-orders"))
        .bearer_auth(ACME_KEY)
        .body(wasm("json-filter"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    let webhook = |url: &str, event_type: &str| json!({"url": url, "event_types": [event_type]});
    let wh_ok = engine.create_webhook(webhook(&ok.url, "order.paid")).await;
    let wh_bad = engine
        .create_webhook(webhook(&bad.url, "order.refunded"))
        .await;
    let mut filtering = webhook(&ok.url, "user.created");
    filtering["plugins"] =
        json!([{"name": "only-orders", "config": {"path": "data.kind", "allowed": ["order"]}}]);
    let wh_filter = engine.create_webhook(filtering).await;
    let wh_flaky = engine
        .create_webhook(webhook(&flaky.url, "invoice.paid"))
        .await;

    let paid = send(&engine, "order.paid", json!({"kind": "order"}), 3).await;
    let refunded = send(&engine, "order.refunded", json!({"kind": "order"}), 2).await;
    let dropped = send(&engine, "user.created", json!({"kind": "noise"}), 1).await;
    let pending = send(&engine, "invoice.paid", json!({"kind": "order"}), 1).await;

    let mut latencies = Vec::new();
    for (outcomes, status) in [
        (&paid, "delivered"),
        (&refunded, "failed"),
        (&dropped, "filtered"),
    ] {
        for (_, id) in outcomes {
            let delivery = eventually(WAIT, &format!("{id} {status}"), || async {
                let (_, d) = engine.get(&format!("/v1/deliveries/{id}")).await;
                (d["status"] == status).then_some(d)
            })
            .await;
            latencies.push(delivery["attempts"][0]["latency_ms"].as_u64().unwrap());
        }
    }
    let (_, pending_id) = &pending[0];
    let delivery = eventually(WAIT, "the flaky delivery's first attempt", || async {
        let (_, d) = engine.get(&format!("/v1/deliveries/{pending_id}")).await;
        (d["attempt_count"] == 1).then_some(d)
    })
    .await;
    assert_eq!(delivery["status"], "pending", "{delivery}");
    latencies.push(delivery["attempts"][0]["latency_ms"].as_u64().unwrap());

    // Tenant totals.
    let tenant = stats(&engine, "/v1/stats").await;
    let totals = &tenant["totals"];
    assert_eq!(
        Counts::of(totals),
        Counts {
            events: 7,
            deliveries: 7,
            delivered: 3,
            failed: 2,
            filtered: 1,
            pending: 1
        },
        "{tenant}"
    );
    assert_eq!(totals["attempts"], 7);
    assert_eq!(totals["success_rate"], 0.6);
    let mean = latencies.iter().sum::<u64>() as f64 / latencies.len() as f64;
    assert_eq!(
        totals["latency_avg_ms"],
        (mean * 10.0).round() / 10.0,
        "{totals}"
    );
    let p95 = totals["latency_p95_ms"].as_f64().unwrap();
    assert!(
        p95 <= *latencies.iter().max().unwrap() as f64,
        "{p95} {latencies:?}"
    );
    assert_eq!(
        tenant["top_event_types"],
        json!([
            {"type": "order.paid", "count": 3},
            {"type": "order.refunded", "count": 2},
            {"type": "invoice.paid", "count": 1},
            {"type": "user.created", "count": 1},
        ])
    );

    // Per-day rows: seven UTC days, oldest first, each event counted on the day it was created
    // (computed from the events themselves, so a run across midnight is still exact).
    let series = tenant["series"].as_array().unwrap();
    assert_eq!(series.len(), 7);
    assert_eq!(tenant["days"], 7);
    assert_eq!(tenant["to"], series[6]["date"]);
    assert_eq!(tenant["from"], series[0]["date"]);
    let mut expected: BTreeMap<String, Counts> = BTreeMap::new();
    for (outcomes, status) in [
        (&paid, "delivered"),
        (&refunded, "failed"),
        (&dropped, "filtered"),
        (&pending, "pending"),
    ] {
        for (day, _) in outcomes {
            let row = expected.entry(day.clone()).or_default();
            row.events += 1;
            row.deliveries += 1;
            match status {
                "delivered" => row.delivered += 1,
                "failed" => row.failed += 1,
                "filtered" => row.filtered += 1,
                _ => row.pending += 1,
            }
        }
    }
    for row in series {
        let want = expected.remove(&date(&row["date"])).unwrap_or_default();
        assert_eq!(Counts::of(row), want, "{row}");
        if want.events == 0 {
            assert_eq!(row["success_rate"], Value::Null);
            assert_eq!(row["latency_avg_ms"], Value::Null);
        }
    }
    assert!(expected.is_empty(), "days outside the window: {expected:?}");

    // Per webhook.
    let of = |webhook: &Value| format!("/v1/webhooks/{}/stats", webhook["id"].as_str().unwrap());
    let s = stats(&engine, &of(&wh_ok)).await;
    assert_eq!(s["webhook_id"], wh_ok["id"]);
    assert_eq!(
        (
            s["totals"]["events"].as_u64(),
            s["totals"]["delivered"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(s["totals"]["success_rate"], 1.0);
    assert_eq!(
        s["top_event_types"],
        json!([{"type": "order.paid", "count": 3}])
    );
    let s = stats(&engine, &of(&wh_bad)).await;
    assert_eq!(
        (
            s["totals"]["failed"].as_u64(),
            s["totals"]["delivered"].as_u64()
        ),
        (Some(2), Some(0))
    );
    assert_eq!(s["totals"]["success_rate"], 0.0);
    let s = stats(&engine, &of(&wh_filter)).await;
    assert_eq!(s["totals"]["filtered"], 1);
    assert_eq!(s["totals"]["success_rate"], Value::Null);
    let s = stats(&engine, &of(&wh_flaky)).await;
    assert_eq!(
        (
            s["totals"]["pending"].as_u64(),
            s["totals"]["attempts"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // A manual retry takes a failed delivery out of `failed`; delivered now, it counts there.
    bad.respond(200);
    let (_, failed_id) = &refunded[0];
    let (status, _) = engine
        .post(&format!("/v1/deliveries/{failed_id}/retry"), json!({}))
        .await;
    assert_eq!(status, 202);
    engine.wait_delivery(failed_id, "delivered").await;
    let totals = stats(&engine, "/v1/stats").await["totals"].clone();
    assert_eq!(
        Counts::of(&totals),
        Counts {
            events: 7,
            deliveries: 7,
            delivered: 4,
            failed: 1,
            filtered: 1,
            pending: 1
        },
        "{totals}"
    );
    assert_eq!(totals["success_rate"], 0.8);
    assert_eq!(totals["attempts"], 8);
    let s = stats(&engine, &of(&wh_bad)).await;
    assert_eq!(
        (
            s["totals"]["failed"].as_u64(),
            s["totals"]["delivered"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // `days=1` is today alone.
    let today = stats(&engine, "/v1/stats?days=1").await;
    assert_eq!(today["series"].as_array().unwrap().len(), 1);
    assert_eq!(today["from"], today["to"]);
}

#[tokio::test]
async fn stats_belong_to_their_tenant_and_the_query_is_checked() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let wh = webhook["id"].as_str().unwrap();
    let event = engine.send_event("user.created", json!({})).await;
    engine
        .wait_delivery(event["deliveries"][0]["id"].as_str().unwrap(), "delivered")
        .await;
    let (status, _) = engine
        .call(
            "POST",
            "/v1/events",
            GLOBEX_KEY,
            Some(json!({"type": "globex.only", "payload": {}})),
        )
        .await;
    assert_eq!(status, 202);

    let (status, theirs) = engine.call("GET", "/v1/stats", GLOBEX_KEY, None).await;
    assert_eq!(status, 200);
    assert_eq!(theirs["totals"]["events"], 1, "{theirs}");
    assert_eq!(theirs["totals"]["deliveries"], 0);
    assert_eq!(
        theirs["top_event_types"],
        json!([{"type": "globex.only", "count": 1}])
    );
    let mine = stats(&engine, "/v1/stats").await;
    assert_eq!(
        (
            mine["totals"]["events"].as_u64(),
            mine["totals"]["delivered"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        mine["top_event_types"],
        json!([{"type": "user.created", "count": 1}])
    );

    let (status, err) = engine
        .call("GET", &format!("/v1/webhooks/{wh}/stats"), GLOBEX_KEY, None)
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("not_found")),
        "{err}"
    );
    for path in [
        "/v1/webhooks/wh_nope/stats",
        &format!("/v1/webhooks/wh_{}/stats", "0".repeat(32)),
    ] {
        let (status, err) = engine.get(path).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {err}"
        );
    }
    let now = hookd::ids::now_ms();
    let (yesterday, today, tomorrow) = (utc_date(now, -1), utc_date(now, 0), utc_date(now, 1));
    for query in [
        "days=0",
        "days=91",
        "days=week",
        "days=-1",
        "to=",
        "to=2024-13-01",
        "to=2024-1-01",
        "to=yesterday",
        &format!("to={today}T00:00:00Z"),
        &format!("to={tomorrow}"),
        &format!("days=91&to={today}"),
    ] {
        let (status, err) = engine.get(&format!("/v1/stats?{query}")).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some("invalid_query")),
            "{query}: {err}"
        );
    }
    // The routes share the API's JSON errors.
    for (method, path) in [("POST", "/v1/stats"), ("PUT", "/v1/deliveries")] {
        let (status, err) = engine.call(method, path, ACME_KEY, None).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (405, Some("method_not_allowed")),
            "{method} {path}"
        );
    }
    let longest = stats(&engine, &format!("/v1/webhooks/{wh}/stats?days=90")).await;
    assert_eq!(longest["series"].as_array().unwrap().len(), 90);
    assert_eq!(longest["totals"]["delivered"], 1);
    let (status, err) = engine
        .get(&format!("/v1/webhooks/{wh}/stats?to={tomorrow}"))
        .await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_query")));

    // `to` moves the window back: ending today it is the default one; ending yesterday it
    // leaves out today's delivery.
    let ending_today = stats(&engine, &format!("/v1/webhooks/{wh}/stats?to={today}")).await;
    assert_eq!(ending_today["to"], today);
    assert_eq!(ending_today["totals"]["delivered"], 1);
    let before = stats(&engine, &format!("/v1/stats?days=3&to={yesterday}")).await;
    assert_eq!(before["series"].as_array().unwrap().len(), 3);
    assert_eq!(before["to"], yesterday);
    assert_eq!(before["totals"]["events"], 0);
    assert_eq!(before["totals"]["delivered"], 0);
}

/// Sends an event of `tenant` (by key) on `channel`; returns it.
async fn send_on(engine: &TestEngine, key: &str, event_type: &str, channel: Option<&str>) -> Value {
    let mut body = json!({"type": event_type, "payload": {"kind": "order"}});
    if let Some(channel) = channel {
        body["channel"] = json!(channel);
    }
    let (status, event) = engine.call("POST", "/v1/events", key, Some(body)).await;
    assert_eq!(status, 202, "{event}");
    event
}

fn delivery_of(event: &Value) -> String {
    let deliveries = event["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{event}");
    deliveries[0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn channel_stats_count_exactly_what_happened_on_the_channel_and_only_the_tenants() {
    // A 500 is retried every 3 s (up to three times); a 400 fails at once.
    let engine = TestEngine::start_with(r#"retry_schedule = ["3s", "3s", "3s"]"#).await;
    let ok = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.respond(400);
    let flaky = Receiver::start().await;
    flaky.respond(500);
    let webhook = |url: &str, event_type: &str| json!({"url": url, "event_types": [event_type]});
    let wh_ok = engine.create_webhook(webhook(&ok.url, "order.paid")).await;
    engine
        .create_webhook(webhook(&bad.url, "order.refunded"))
        .await;
    engine
        .create_webhook(webhook(&flaky.url, "invoice.paid"))
        .await;

    // `sms:1`: two paid, one refunded (fails), one invoice (fails once, then is delivered).
    let mut on_one = Vec::new();
    for event_type in ["order.paid", "order.paid", "order.refunded", "invoice.paid"] {
        on_one.push(send_on(&engine, ACME_KEY, event_type, Some("sms:1")).await);
    }
    // `sms:2`: one paid; no channel: one paid; the other tenant's `sms:1`: three events.
    let on_two = send_on(&engine, ACME_KEY, "order.paid", Some("sms:2")).await;
    let no_channel = send_on(&engine, ACME_KEY, "order.paid", None).await;
    for _ in 0..3 {
        send_on(&engine, GLOBEX_KEY, "order.paid", Some("sms:1")).await;
    }
    let ids: Vec<String> = on_one.iter().map(delivery_of).collect();
    for (id, status) in ids[..3].iter().zip(["delivered", "delivered", "failed"]) {
        engine.wait_delivery(id, status).await;
    }
    engine
        .wait_delivery(&delivery_of(&on_two), "delivered")
        .await;
    engine
        .wait_delivery(&delivery_of(&no_channel), "delivered")
        .await;
    let retried = &ids[3];
    eventually(WAIT, "the invoice's first attempt", || async {
        let (_, d) = engine.get(&format!("/v1/deliveries/{retried}")).await;
        (d["attempt_count"] == 1).then_some(())
    })
    .await;

    // While the invoice waits for its retry.
    let one = stats(&engine, "/v1/stats?channel=sms:1").await;
    assert_eq!(one["channel"], "sms:1");
    assert_eq!(one["incomplete_days"], json!([]));
    assert!(one.get("webhook_id").is_none(), "{one}");
    let pending_now = Counts {
        events: 4,
        deliveries: 4,
        delivered: 2,
        failed: 1,
        filtered: 0,
        pending: 1,
    };
    assert_eq!(Counts::of(&one["totals"]), pending_now, "{one}");
    assert!(one["totals"]["attempts"].as_u64().unwrap() >= 4, "{one}");

    flaky.respond(200);
    let delivered = engine.wait_delivery(retried, "delivered").await;
    let retried_attempts = delivered["attempt_count"].as_u64().unwrap();
    assert!(retried_attempts >= 2, "{delivered}");
    let one = stats(&engine, "/v1/stats?channel=sms:1&days=30").await;
    let totals = &one["totals"];
    assert_eq!(
        Counts::of(totals),
        Counts {
            events: 4,
            deliveries: 4,
            delivered: 3,
            failed: 1,
            filtered: 0,
            pending: 0
        },
        "{one}"
    );
    assert_eq!(
        totals["attempts"].as_u64(),
        Some(3 + retried_attempts),
        "the retries are attempts of sms:1"
    );
    assert_eq!(totals["success_rate"], 0.75);
    assert_eq!(
        one["top_event_types"],
        json!([
            {"type": "order.paid", "count": 2},
            {"type": "invoice.paid", "count": 1},
            {"type": "order.refunded", "count": 1},
        ])
    );
    // Per day, each event on the day it was created.
    let series = one["series"].as_array().unwrap();
    assert_eq!(series.len(), 30);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for event in &on_one {
        *expected.entry(date(&event["timestamp"])).or_default() += 1;
    }
    for row in series {
        let want = expected.remove(row["date"].as_str().unwrap()).unwrap_or(0);
        assert_eq!(row["events"], want, "{row}");
    }
    assert!(expected.is_empty(), "{expected:?}");

    let two = stats(&engine, "/v1/stats?channel=sms:2").await;
    assert_eq!(
        Counts::of(&two["totals"]),
        Counts {
            events: 1,
            deliveries: 1,
            delivered: 1,
            ..Counts::default()
        },
        "{two}"
    );
    // The tenant counts every channel and none.
    let tenant = stats(&engine, "/v1/stats").await;
    assert_eq!(
        (
            tenant["totals"]["events"].as_u64(),
            tenant["totals"]["delivered"].as_u64()
        ),
        (Some(6), Some(5)),
        "{tenant}"
    );
    assert!(tenant.get("channel").is_none() && tenant.get("incomplete_days").is_none());
    // A channel nobody used: zeros.
    let none = stats(&engine, "/v1/stats?channel=sms:3").await;
    assert_eq!(Counts::of(&none["totals"]), Counts::default());

    // A manual retry moves the failed delivery to delivered in the channel too.
    bad.respond(200);
    let (status, _) = engine
        .post(&format!("/v1/deliveries/{}/retry", ids[2]), json!({}))
        .await;
    assert_eq!(status, 202);
    engine.wait_delivery(&ids[2], "delivered").await;
    let one = stats(&engine, "/v1/stats?channel=sms:1").await;
    assert_eq!(
        (
            one["totals"]["delivered"].as_u64(),
            one["totals"]["failed"].as_u64(),
            one["totals"]["attempts"].as_u64()
        ),
        (Some(4), Some(0), Some(4 + retried_attempts)),
        "{one}"
    );

    // The other tenant's `sms:1` is its own.
    let (status, theirs) = engine
        .call("GET", "/v1/stats?channel=sms:1", GLOBEX_KEY, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        Counts::of(&theirs["totals"]),
        Counts {
            events: 3,
            ..Counts::default()
        },
        "{theirs}"
    );

    // Bad input; channel and webhook do not combine.
    for query in [
        "channel=",
        "channel=sms%201",
        &format!("channel={}", "a".repeat(129)),
    ] {
        let (status, err) = engine.get(&format!("/v1/stats?{query}")).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some("invalid_query")),
            "{query}: {err}"
        );
    }
    let wh = wh_ok["id"].as_str().unwrap();
    let (status, err) = engine
        .get(&format!("/v1/webhooks/{wh}/stats?channel=sms:1"))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("unknown_parameter")),
        "{err}"
    );
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("per webhook and per channel") && message.contains("/v1/stats?channel="),
        "{message}"
    );
}

#[tokio::test]
async fn a_tenants_channel_scopes_are_capped_per_day_and_the_answer_says_so() {
    let engine = TestEngine::start().await;
    let ok = Receiver::start().await;
    // As many channels as are counted per day, one event each, no webhook yet.
    let cap = 1000;
    let events: Vec<Value> = (0..cap)
        .map(|i| json!({"type": "filler", "channel": format!("c:{i}"), "payload": {}}))
        .collect();
    let (status, answer) = engine
        .post("/v1/events/batch", json!({"events": events}))
        .await;
    assert_eq!(status, 200);
    let results = answer["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["status"] == 202), "{answer}");
    let (_, first) = engine
        .get(&format!(
            "/v1/events/{}",
            results[0]["id"].as_str().unwrap()
        ))
        .await;
    let day = date(&first["timestamp"]);

    // One channel more that day, with a delivery; and one more event on a counted channel.
    engine
        .create_webhook(json!({"url": ok.url, "event_types": ["capped.sent"]}))
        .await;
    let over = send_on(&engine, ACME_KEY, "capped.sent", Some("c:over")).await;
    engine.wait_delivery(&delivery_of(&over), "delivered").await;
    let counted = send_on(&engine, ACME_KEY, "capped.sent", Some("c:0")).await;
    engine
        .wait_delivery(&delivery_of(&counted), "delivered")
        .await;
    // The cap is per UTC day: everything above must have happened on one day.
    assert_eq!(
        (date(&over["timestamp"]), date(&counted["timestamp"])),
        (day.clone(), day.clone()),
        "the test ran across midnight UTC; run it again"
    );

    // The channel past the cap has no figures of its own; the day is named as incomplete.
    let beyond = stats(&engine, "/v1/stats?channel=c:over&days=1").await;
    assert_eq!(Counts::of(&beyond["totals"]), Counts::default(), "{beyond}");
    assert_eq!(beyond["incomplete_days"], json!([day]));
    // A channel counted before the cap keeps counting, outcomes included.
    let zero = stats(&engine, "/v1/stats?channel=c:0&days=1").await;
    assert_eq!(
        Counts::of(&zero["totals"]),
        Counts {
            events: 2,
            deliveries: 1,
            delivered: 1,
            ..Counts::default()
        },
        "{zero}"
    );
    assert_eq!(zero["incomplete_days"], json!([day]));
    let last = stats(&engine, &format!("/v1/stats?channel=c:{}&days=1", cap - 1)).await;
    assert_eq!(last["totals"]["events"], 1, "{last}");
    // The tenant and the webhook count everything, whatever the channel.
    let tenant = stats(&engine, "/v1/stats?days=1").await;
    assert_eq!(
        (
            tenant["totals"]["events"].as_u64(),
            tenant["totals"]["delivered"].as_u64()
        ),
        (Some(cap + 2), Some(2)),
        "{tenant}"
    );
    // The cap is per tenant: the other tenant's first channel of the day is counted.
    let (status, _) = engine
        .call(
            "POST",
            "/v1/events",
            GLOBEX_KEY,
            Some(json!({"type": "capped.sent", "channel": "c:over", "payload": {}})),
        )
        .await;
    assert_eq!(status, 202);
    let (_, theirs) = engine
        .call("GET", "/v1/stats?channel=c:over&days=1", GLOBEX_KEY, None)
        .await;
    assert_eq!(theirs["totals"]["events"], 1, "{theirs}");
    assert_eq!(theirs["incomplete_days"], json!([]));
}

/// `GET path` of the real binary at `base`, as ACME.
async fn get_real(http: &reqwest::Client, base: &str, path: &str) -> Value {
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth(ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

// Multi-threaded: the receiver keeps answering while the test thread waits on the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_stats_are_exact_after_a_kill_9_and_a_restart() {
    use crate::crash::{spawn_hookd, spawn_with_webhook};

    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();
    let real = spawn_with_webhook(&http, &receiver.url).await;
    let mut first = KillOnDrop(real.child);
    let per_channel = 15u64;
    for i in 0..per_channel * 2 {
        let channel = if i % 2 == 0 { "sms:a" } else { "sms:b" };
        let response = http
            .post(format!("{}/v1/events", real.base))
            .bearer_auth(ACME_KEY)
            .json(&json!({"type": "user.created", "channel": channel, "payload": {"i": i}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    receiver.wait_for((per_channel * 2) as usize, WAIT).await;
    eventually(WAIT, "every delivery counted as delivered", || {
        let (http, base) = (http.clone(), real.base.clone());
        async move {
            let stats = get_real(&http, &base, "/v1/stats").await;
            (stats["totals"]["delivered"] == per_channel * 2).then_some(())
        }
    })
    .await;
    // Killed right after the last outcomes, before they are all synced: at start the log is
    // replayed from the last checkpoint, transitions included (with their channel).
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let (child, base) = spawn_hookd(&real.config, &real.data);
    let _second = KillOnDrop(child);

    // An outcome lost with the process makes its delivery due again: it is sent once more and
    // counted once as delivered, so the figures settle to exactly what happened.
    for channel in ["sms:a", "sms:b"] {
        let path = format!("/v1/stats?channel={channel}");
        let settled = eventually(WAIT, &format!("{channel} settled"), || {
            let (http, base, path) = (http.clone(), base.clone(), path.clone());
            async move {
                let stats = get_real(&http, &base, &path).await;
                (stats["totals"]["pending"] == 0).then_some(stats)
            }
        })
        .await;
        let totals = &settled["totals"];
        assert_eq!(
            Counts::of(totals),
            Counts {
                events: per_channel,
                deliveries: per_channel,
                delivered: per_channel,
                ..Counts::default()
            },
            "{settled}"
        );
        assert!(totals["attempts"].as_u64().unwrap() >= per_channel);
    }
    let tenant = get_real(&http, &base, "/v1/stats").await;
    assert_eq!(tenant["totals"]["delivered"], per_channel * 2, "{tenant}");
}
