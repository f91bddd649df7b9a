//! `/metrics`: Prometheus counters, gauges and histograms move by exactly what the engine did,
//! and each engine in a process keeps its own.

use std::time::Duration;

use serde_json::json;

use crate::plugins::wasm;
use crate::support::{ACME_KEY, Receiver, TestEngine, eventually};

const WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn scrape(engine: &TestEngine) -> String {
    let response = engine
        .http
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        response.headers()
    );
    response.text().await.unwrap()
}

/// The value of the sample `name` whose labels include all of `labels`; `None` when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let present: Vec<(&str, &str)> = series_labels
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (series_name == name && labels.iter().all(|l| present.contains(l)))
                .then(|| value.parse().unwrap())
        })
}

pub(crate) fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_ingested_events_attempts_latency_and_plugin_runs() {
    let engine = TestEngine::start().await;
    let ok = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.respond(400);

    // /metrics needs no key, and the series exist before anything happened.
    let before = scrape(&engine).await;
    for name in [
        "hookd_attempts_in_flight",
        "hookd_queue_due",
        "hookd_queue_scheduled",
    ] {
        assert_eq!(sample(&before, name, &[]), Some(0.0), "{name} in {before}");
    }
    assert_eq!(
        sample(
            &before,
            "hookd_config_reloads_total",
            &[("result", "applied")]
        ),
        Some(0.0)
    );
    // 0 or 1: other tests may keep every core busy (`delivery/runtime.rs` tests the sampler).
    let saturated = sample(&before, "hookd_cpu_saturated", &[]);
    assert!(
        matches!(saturated, Some(v) if v == 0.0 || v == 1.0),
        "hookd_cpu_saturated {saturated:?} in {before}"
    );

    let uploaded = engine
        .http
        .put(engine.url("/v1/plugins/kind-filter"))
        .bearer_auth(ACME_KEY)
        .body(wasm("json-filter"))
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);
    engine
        .create_webhook(json!({"url": ok.url, "event_types": ["user.*"]}))
        .await;
    engine
        .create_webhook(json!({"url": bad.url, "event_types": ["order.*"]}))
        .await;
    engine
        .create_webhook(json!({
            "url": ok.url,
            "event_types": ["audit.*"],
            "plugins": [{"name": "kind-filter", "config": {"path": "data.kind", "allowed": ["order"]}}]
        }))
        .await;

    let mut deliveries = Vec::new();
    for (event_type, payload, outcome) in [
        ("user.created", json!({"n": 1}), "delivered"),
        ("user.created", json!({"n": 2}), "delivered"),
        ("order.paid", json!({"n": 3}), "failed"),
        ("audit.logged", json!({"kind": "noise"}), "filtered"),
    ] {
        let event = engine.send_event(event_type, payload).await;
        let id = event["deliveries"][0]["id"].as_str().unwrap().to_string();
        deliveries.push((id, outcome));
    }
    for (id, outcome) in &deliveries {
        engine.wait_delivery(id, outcome).await;
    }

    // The attempt is counted before its slot is released: wait for the gauge to settle, then
    // scrape again. One scrape is not a snapshot: the exporter reads every counter before the
    // gauges, so the scrape that first shows the gauge at 0 may have read the counters just
    // before the last attempt was counted (seen once in CI).
    eventually(WAIT, "no attempt in flight", || async {
        let text = scrape(&engine).await;
        (sample(&text, "hookd_attempts_in_flight", &[]) == Some(0.0)).then_some(())
    })
    .await;
    let text = scrape(&engine).await;
    let acme = ("tenant", "acme");
    assert_eq!(count(&text, "hookd_events_ingested_total", &[acme]), 4.0);
    assert_eq!(
        count(
            &text,
            "hookd_attempts_total",
            &[acme, ("outcome", "delivered"), ("error_code", "none")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            "hookd_attempts_total",
            &[acme, ("outcome", "rejected"), ("error_code", "http_status")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            "hookd_attempts_total",
            &[acme, ("outcome", "filtered"), ("error_code", "none")]
        ),
        1.0,
        "{text}"
    );
    // Three attempts went over HTTP; the filtered one never left the engine.
    assert_eq!(
        count(&text, "hookd_delivery_latency_seconds_count", &[acme]),
        3.0,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            "hookd_delivery_latency_seconds_bucket",
            &[acme, ("le", "+Inf")]
        ),
        3.0,
        "{text}"
    );
    // Timed at full precision, not in the attempt log's whole milliseconds (which made every
    // loopback answer under 1 ms count as 0): the sum is not a whole number of ms.
    let sum_ms = count(&text, "hookd_delivery_latency_seconds_sum", &[acme]) * 1e3;
    assert!(
        sum_ms > 0.0 && (sum_ms - sum_ms.round()).abs() > 1e-6,
        "{sum_ms} ms\n{text}"
    );
    assert_eq!(
        count(
            &text,
            "hookd_plugin_calls_total",
            &[acme, ("outcome", "filtered"), ("error_code", "none")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        count(&text, "hookd_plugin_chain_seconds_count", &[acme]),
        1.0,
        "{text}"
    );
    // Secrets, keys and URLs never become labels.
    assert!(!text.contains(ACME_KEY) && !text.contains("whsec_") && !text.contains("http://"));

    // The hook the config reloader calls.
    let metrics = engine.engine().metrics();
    metrics.record_config_reload(true);
    metrics.record_config_reload(false);
    metrics.record_config_reload(false);
    let text = scrape(&engine).await;
    let reloads = |result| count(&text, "hookd_config_reloads_total", &[("result", result)]);
    assert_eq!((reloads("applied"), reloads("refused")), (1.0, 2.0));
}

#[tokio::test]
async fn two_engines_in_one_process_keep_separate_metrics() {
    let first = TestEngine::start().await;
    let second = TestEngine::start().await;
    first.send_event("user.created", json!({})).await;
    first.send_event("user.created", json!({})).await;
    second.send_event("user.created", json!({})).await;
    let acme = [("tenant", "acme")];
    assert_eq!(
        count(&scrape(&first).await, "hookd_events_ingested_total", &acme),
        2.0
    );
    assert_eq!(
        count(&scrape(&second).await, "hookd_events_ingested_total", &acme),
        1.0
    );
}

#[tokio::test]
async fn per_plugin_metrics_count_each_plugins_calls_by_version_and_outcome() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.respond_json(200, json!({"ok": true}));
    let mut versions = std::collections::HashMap::new();
    for (name, component) in [
        ("reshape", "reshape-transform"),
        ("says-ok", "body-says-ok"),
        ("probe", "response-probe"),
    ] {
        let (status, info) = crate::plugins::upload(&engine, ACME_KEY, name, wasm(component)).await;
        assert_eq!(status, 201, "{info}");
        let sha = info["sha256"].as_str().unwrap();
        versions.insert(name, sha[..hookd::plugin::VERSION_LABEL_DIGITS].to_string());
    }
    engine
        .create_webhook(json!({"url": receiver.url,
            "plugins": [{"name": "reshape", "config": {}}, {"name": "says-ok"}]}))
        .await;
    engine
        .create_webhook(
            json!({"url": receiver.url, "plugins": [{"name": "probe", "config": {"do": "panic"}}]}),
        )
        .await;
    let event = engine.send_event("user.created", json!({"n": 1})).await;
    for d in event["deliveries"].as_array().unwrap() {
        engine
            .wait_delivery(d["id"].as_str().unwrap(), "delivered")
            .await;
    }

    let text = eventually(WAIT, "the response hooks' calls counted", || async {
        let text = scrape(&engine).await;
        let done = count(
            &text,
            "hookd_plugin_hook_calls_total",
            &[
                ("version", versions["probe"].as_str()),
                ("outcome", "plugin_trap"),
            ],
        ) >= 1.0;
        done.then_some(text)
    })
    .await;
    let calls = |plugin: &str, outcome: &str| {
        count(
            &text,
            "hookd_plugin_hook_calls_total",
            &[
                ("tenant", "acme"),
                ("version", versions[plugin].as_str()),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(calls("reshape", "ok"), 1.0, "{text}");
    assert_eq!(calls("says-ok", "delivered"), 1.0, "{text}");
    // The probe's filter ran (ok), then its response hook trapped (the default verdict held).
    assert_eq!(calls("probe", "ok"), 1.0, "{text}");
    assert_eq!(calls("probe", "plugin_trap"), 1.0, "{text}");
    assert_eq!(calls("says-ok", "retry"), 0.0);
    for (plugin, n) in [("reshape", 1.0), ("says-ok", 1.0), ("probe", 2.0)] {
        let labels = [("tenant", "acme"), ("version", versions[plugin].as_str())];
        assert_eq!(
            count(&text, "hookd_plugin_hook_seconds_count", &labels),
            n,
            "{plugin}: {text}"
        );
        assert!(count(&text, "hookd_plugin_hook_seconds_sum", &labels) > 0.0);
    }
    // Plugins are named by version only: /metrics never shows a tenant's plugin names.
    for name in ["reshape", "says-ok", "probe"] {
        assert!(!text.contains(&format!("\"{name}\"")), "{name} in {text}");
    }
}

/// sled only (PostgreSQL's syncs are the server's): every acknowledged event waited for one
/// sync of the store, and each is on `/metrics`.
#[tokio::test]
async fn each_sync_of_the_embedded_store_is_timed() {
    let engine = TestEngine::start().await;
    let before = count(
        &scrape(&engine).await,
        "hookd_store_sync_seconds_count",
        &[],
    );
    for n in 0..3 {
        engine.send_event("user.created", json!({ "n": n })).await;
    }
    // An event is answered once the log is synced; its sync is timed when sled's flush after it
    // ends, a moment later.
    let text = eventually(WAIT, "three more syncs timed", || async {
        let text = scrape(&engine).await;
        (count(&text, "hookd_store_sync_seconds_count", &[]) >= before + 3.0).then_some(text)
    })
    .await;
    let after = count(&text, "hookd_store_sync_seconds_count", &[]);
    assert!(count(&text, "hookd_store_sync_seconds_sum", &[]) > 0.0);
    assert_eq!(
        count(&text, "hookd_store_sync_seconds_bucket", &[("le", "+Inf")]),
        after
    );
}

/// Every API answer is counted by method, route template (never an id) and status.
#[tokio::test]
async fn api_requests_are_counted_by_method_route_template_and_status() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();
    for _ in 0..3 {
        engine.send_event("user.created", json!({})).await;
    }
    engine.get(&format!("/v1/webhooks/{id}")).await;
    engine.call("GET", "/v1/webhooks", "wrong-key", None).await;
    engine.get("/v1/no-such-route").await;
    let text = scrape(&engine).await;
    let requests = |method, route, status| {
        count(
            &text,
            "hookd_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("POST", "/v1/events", "202"), 3.0, "{text}");
    assert_eq!(requests("POST", "/v1/webhooks", "201"), 1.0);
    assert_eq!(requests("GET", "/v1/webhooks/{id}", "200"), 1.0);
    assert_eq!(requests("GET", "/v1/webhooks", "401"), 1.0);
    assert_eq!(requests("GET", "unmatched", "404"), 1.0);
    assert!(!text.contains(id), "no resource id in a label");
    assert_eq!(
        count(
            &text,
            "hookd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}
