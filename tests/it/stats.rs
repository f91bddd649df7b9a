//! Statistics end to end: a known sequence of outcomes against real receivers (and a real
//! filter plugin) gives exact totals, rates, top event types and per-day rows, for the tenant
//! and per webhook; manual retries move counts between states; tenants see only their own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::plugins::wasm;
use crate::support::{ACME_KEY, GLOBEX_KEY, Receiver, TestEngine, eventually};

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
    for query in ["days=0", "days=91", "days=week", "days=-1"] {
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
}
