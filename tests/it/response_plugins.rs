//! The `on-response` hook end to end (`hookd:plugin@0.2.0`): real components from
//! `plugins/dist` (`body-says-ok`, `response-probe`, and 0.1.0 ones beside them), uploaded over
//! the API, deciding what a real receiver's answers mean. One test per decision, each checked
//! in the attempt log (`result`, `verdict_by`, `error_code`) and in what the receiver saw.

use std::time::Duration;

use serde_json::{Value, json};

use crate::plugins::install;
use crate::support::{Receiver, TestEngine, eventually, parse_config, test_config_toml_with};

const WAIT: Duration = Duration::from_secs(20);

fn first_delivery(event: &Value) -> String {
    event["deliveries"][0]["id"].as_str().unwrap().to_string()
}

/// The delivery's attempts once it has at least `n`.
async fn attempts(engine: &TestEngine, delivery_id: &str, n: usize) -> Vec<Value> {
    eventually(WAIT, &format!("{n} attempts of {delivery_id}"), || async {
        let (_, d) = engine.get(&format!("/v1/deliveries/{delivery_id}")).await;
        let attempts = d["attempts"].as_array().cloned().unwrap_or_default();
        (attempts.len() >= n).then_some(attempts)
    })
    .await
}

#[tokio::test]
async fn a_200_whose_body_says_not_ok_is_retried_until_it_says_ok() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["200ms"]"#).await;
    let receiver = Receiver::start().await;
    receiver.respond_json(200, json!({"ok": false, "error": "queue full"}));
    install(&engine, "says-ok", "body-says-ok").await;
    engine
        .create_webhook(
            json!({"url": receiver.url, "max_attempts": 10, "plugins": [{"name": "says-ok"}]}),
        )
        .await;
    let event = engine.send_event("user.created", json!({"n": 1})).await;
    let delivery_id = first_delivery(&event);

    let first = attempts(&engine, &delivery_id, 1).await;
    assert_eq!(first[0]["status_code"], 200);
    assert_eq!(first[0]["result"], "failed", "{first:?}");
    assert_eq!(first[0]["verdict_by"], "plugin:says-ok");
    assert_eq!(first[0]["error_code"], "response_verdict");
    assert_eq!(
        first[0]["error_message"], "plugin:says-ok asked to retry",
        "{first:?}"
    );
    assert!(
        first[0]["plugin_logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("body says not ok")),
        "{first:?}"
    );

    receiver.respond_json(200, json!({"ok": true}));
    let delivered = engine.wait_delivery(&delivery_id, "delivered").await;
    let last = delivered["attempts"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["result"], "delivered");
    assert_eq!(last["verdict_by"], "plugin:says-ok");
    assert_eq!(last["error_code"], Value::Null);
    assert!(receiver.count() >= 2);
}

#[tokio::test]
async fn a_500_marked_delivered_by_a_plugin_is_recorded_as_its_verdict() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["1h"]"#).await;
    let receiver = Receiver::start().await;
    // The receiver processed the event but answers 500 anyway.
    receiver.respond_json(500, json!({"ok": true}));
    install(&engine, "says-ok", "body-says-ok").await;
    engine
        .create_webhook(json!({"url": receiver.url, "plugins": [{"name": "says-ok"}]}))
        .await;
    // The same receiver without the plugin: hookd's own rules (a 500 is retried).
    let plain = engine.create_webhook(json!({"url": receiver.url})).await;
    let event = engine.send_event("user.created", json!({"n": 1})).await;
    let deliveries = event["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    for d in deliveries {
        let id = d["id"].as_str().unwrap();
        let attempt = attempts(&engine, id, 1).await.remove(0);
        assert_eq!(attempt["status_code"], 500);
        if d["webhook_id"] == plain["id"] {
            assert_eq!(attempt["result"], "failed", "{attempt}");
            assert_eq!(attempt["verdict_by"], Value::Null);
            assert_eq!(attempt["error_code"], "http_status");
        } else {
            assert_eq!(attempt["result"], "delivered", "{attempt}");
            assert_eq!(attempt["verdict_by"], "plugin:says-ok");
            // The status error stays in the log: a non-2xx is never silently delivered.
            assert_eq!(attempt["error_code"], "http_status");
            assert_eq!(
                attempt["error_message"],
                "plugin:says-ok marked the answer delivered"
            );
            let (_, delivery) = engine.get(&format!("/v1/deliveries/{id}")).await;
            assert_eq!(delivery["status"], "delivered");
        }
    }
}

#[tokio::test]
async fn a_plugin_retry_is_never_sooner_than_the_schedule() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["1500ms"]"#).await;
    let soon = Receiver::start().await;
    let later = Receiver::start().await;
    soon.respond_json(200, json!({"ok": false}));
    later.respond_json(200, json!({"ok": false}));
    install(&engine, "says-ok", "body-says-ok").await;
    // Asks for 0 s: the schedule's 1.5 s wins.
    engine
        .create_webhook(json!({"url": soon.url, "max_attempts": 2,
            "plugins": [{"name": "says-ok", "config": {"retry_after": 0}}]}))
        .await;
    // Asks for 3 s, later than the schedule: honoured.
    engine
        .create_webhook(json!({"url": later.url, "max_attempts": 2,
            "plugins": [{"name": "says-ok", "config": {"retry_after": 3}}]}))
        .await;
    let event = engine.send_event("user.created", json!({"n": 1})).await;

    for (receiver, at_least) in [(&soon, 1500), (&later, 3000)] {
        let got = receiver.wait_for(2, WAIT).await;
        let gap = got[1].at.duration_since(got[0].at);
        assert!(
            gap >= Duration::from_millis(at_least),
            "retried after {gap:?}, sooner than {at_least} ms"
        );
    }
    for d in event["deliveries"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        let done = engine.wait_delivery(id, "failed").await;
        let tries = done["attempts"].as_array().unwrap();
        assert_eq!(tries.len(), 2);
        assert_eq!(tries[0]["result"], "failed");
        let planned = tries[0]["next_attempt_at"].as_str().unwrap();
        let started = tries[0]["started_at"].as_str().unwrap();
        let gap = humantime::parse_rfc3339(planned)
            .unwrap()
            .duration_since(humantime::parse_rfc3339(started).unwrap())
            .unwrap();
        assert!(gap >= Duration::from_millis(1500), "planned after {gap:?}");
        // No attempts left: exhausted, still the plugin's verdict.
        assert_eq!(tries[1]["result"], "exhausted");
        assert_eq!(tries[1]["verdict_by"], "plugin:says-ok");
    }
}

#[tokio::test]
async fn a_plugin_can_fail_a_delivery_now_or_disable_the_webhook_with_its_reason() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["100ms"]"#).await;
    let failing = Receiver::start().await;
    let closing = Receiver::start().await;
    // 503 would be retried by default; this receiver means "never".
    failing.respond_json(503, json!({"error": "unknown account"}));
    closing.respond_json(403, json!({"error": "account closed"}));
    install(&engine, "says-ok", "body-says-ok").await;
    let config = json!({"fail": [503], "disable": [403]});
    engine
        .create_webhook(
            json!({"url": failing.url, "plugins": [{"name": "says-ok", "config": config}]}),
        )
        .await;
    let closed = engine
        .create_webhook(
            json!({"url": closing.url, "plugins": [{"name": "says-ok", "config": config}]}),
        )
        .await;
    let event = engine.send_event("user.created", json!({"n": 1})).await;

    for d in event["deliveries"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        let done = engine.wait_delivery(id, "failed").await;
        let tries = done["attempts"].as_array().unwrap();
        assert_eq!(tries.len(), 1, "not retried: {done}");
        assert_eq!(tries[0]["result"], "rejected");
        assert_eq!(tries[0]["verdict_by"], "plugin:says-ok");
        if d["webhook_id"] == closed["id"] {
            assert_eq!(
                tries[0]["error_message"],
                "plugin:says-ok disabled the webhook: plugin `says-ok`: the receiver answered \
                 403: account closed"
            );
        } else {
            assert_eq!(
                tries[0]["error_message"],
                "plugin:says-ok failed it: the receiver answered 503: unknown account"
            );
        }
    }
    let id = closed["id"].as_str().unwrap();
    let webhook = eventually(WAIT, "the webhook disabled", || async {
        let (_, w) = engine.get(&format!("/v1/webhooks/{id}")).await;
        (w["status"] == "disabled").then_some(w)
    })
    .await;
    assert_eq!(
        webhook["disabled_reason"],
        "plugin `says-ok`: the receiver answered 403: account closed"
    );
    // Nothing more goes to a disabled webhook.
    let before = closing.count();
    engine.send_event("user.created", json!({"n": 2})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(closing.count(), before);
}

#[tokio::test]
async fn a_trapping_or_looping_response_plugin_leaves_the_default_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config_toml_with(
        dir.path(),
        r#"retry_schedule = ["1h"]"#,
        true,
        r#"deadline = "300ms""#,
    );
    let engine = TestEngine::start_in(dir, parse_config(&text)).await;
    let ok = Receiver::start().await;
    let broken = Receiver::start().await;
    ok.respond_json(200, json!({"ok": false}));
    broken.respond_json(500, json!({"ok": true}));
    install(&engine, "probe", "response-probe").await;
    let mut code_of = std::collections::HashMap::new();
    for (action, code) in [("panic", "plugin_trap"), ("loop", "plugin_timeout")] {
        let config = json!({"do": action});
        for receiver in [&ok, &broken] {
            let webhook = engine
                .create_webhook(
                    json!({"url": receiver.url, "plugins": [{"name": "probe", "config": config}]}),
                )
                .await;
            code_of.insert(webhook["id"].as_str().unwrap().to_string(), code);
        }
    }
    let event = engine.send_event("user.created", json!({"n": 1})).await;
    let deliveries = event["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 4);
    for d in deliveries {
        let code = code_of[d["webhook_id"].as_str().unwrap()];
        let id = d["id"].as_str().unwrap();
        let attempt = attempts(&engine, id, 1).await.remove(0);
        assert_eq!(attempt["verdict_by"], Value::Null, "{attempt}");
        // hookd's own rules: the 200 is delivered, the 500 retried.
        let expected = if attempt["status_code"] == 200 {
            "delivered"
        } else {
            "failed"
        };
        assert_eq!(attempt["result"], expected, "{code}: {attempt}");
        let logs = attempt["plugin_logs"].as_array().unwrap();
        assert!(
            logs.iter().any(|l| {
                let l = l.as_str().unwrap();
                l.contains(&format!("plugin `probe` on-response failed ({code})"))
            }),
            "{code}: {logs:?}"
        );
    }
    // The probe's filter ran before the send, and every request went out.
    assert_eq!(ok.count(), 2);
    assert_eq!(broken.count(), 2);
}

#[tokio::test]
async fn components_of_0_1_0_and_0_2_0_run_on_one_chain() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["200ms"]"#).await;
    let receiver = Receiver::start().await;
    receiver.respond_json(200, json!({"ok": false}));
    // Built against 0.1.0 (they export only 0.1.0 interfaces) …
    install(&engine, "kind-filter", "json-filter").await;
    install(&engine, "reshape", "reshape-transform").await;
    // … and against 0.2.0.
    install(&engine, "says-ok", "body-says-ok").await;
    for (name, hooks) in [
        ("kind-filter", json!(["filter"])),
        ("reshape", json!(["transform"])),
        ("says-ok", json!(["on-response"])),
    ] {
        let (status, info) = engine.get(&format!("/v1/plugins/{name}")).await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["hooks"], hooks, "{info}");
    }
    engine
        .create_webhook(json!({
            "url": receiver.url,
            "max_attempts": 10,
            "plugins": [
                {"name": "kind-filter", "config": {"path": "data.kind", "allowed": ["order"]}},
                {"name": "says-ok"},
                {"name": "reshape", "config": {"redact": ["card"]}}
            ]
        }))
        .await;
    let dropped = engine
        .send_event("user.created", json!({"kind": "noise"}))
        .await;
    let kept = engine
        .send_event("user.created", json!({"kind": "order", "card": "4242"}))
        .await;
    let filtered = engine
        .wait_delivery(&first_delivery(&dropped), "filtered")
        .await;
    assert_eq!(filtered["attempts"][0]["verdict_by"], Value::Null);

    let id = first_delivery(&kept);
    let first = attempts(&engine, &id, 1).await;
    assert_eq!(first[0]["result"], "failed");
    assert_eq!(first[0]["verdict_by"], "plugin:says-ok");
    receiver.respond_json(200, json!({"ok": true}));
    engine.wait_delivery(&id, "delivered").await;
    let got = receiver.received();
    assert!(got.len() >= 2);
    for request in &got {
        let body = request.json();
        assert_eq!(body["data"]["kind"], "order", "the filter ran");
        assert_eq!(body["data"]["card"], "[REDACTED]", "the transform ran");
    }
}

#[tokio::test]
async fn a_test_send_reports_the_response_plugins_decision_without_applying_it() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    install(&engine, "says-ok", "body-says-ok").await;
    let webhook = engine
        .create_webhook(json!({"url": receiver.url,
            "plugins": [{"name": "says-ok", "config": {"disable": [403]}}]}))
        .await;
    let test = format!("/v1/webhooks/{}/test", webhook["id"].as_str().unwrap());

    // A 200 whose body says not ok: not delivered, by the plugin's verdict.
    receiver.respond_json(200, json!({"ok": false}));
    let (status, outcome) = engine.post(&test, json!({})).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["status_code"], 200);
    assert_eq!(outcome["delivered"], false, "{outcome}");
    assert_eq!(outcome["verdict_by"], "plugin:says-ok");
    assert_eq!(outcome["response_decision"], "retry");
    assert_eq!(outcome["error_code"], "response_verdict");
    assert_eq!(outcome["error_message"], "plugin:says-ok asked to retry");

    // A 500 whose body says ok: delivered by the plugin, the status still shown.
    receiver.respond_json(500, json!({"ok": true}));
    let (_, outcome) = engine.post(&test, json!({})).await;
    assert_eq!(outcome["status_code"], 500);
    assert_eq!(outcome["delivered"], true, "{outcome}");
    assert_eq!(outcome["response_decision"], "delivered");
    assert_eq!(outcome["error_code"], "http_status");

    // `disable` is reported, not applied: the webhook stays active.
    receiver.respond_json(403, json!({"error": "account closed"}));
    let (_, outcome) = engine.post(&test, json!({})).await;
    assert_eq!(outcome["delivered"], false);
    assert_eq!(outcome["response_decision"], "disable", "{outcome}");
    let message = outcome["error_message"].as_str().unwrap();
    assert!(
        message
            .starts_with("plugin:says-ok would disable the webhook (not applied to a test send)"),
        "{message}"
    );
    let (_, after) = engine
        .get(&format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap()))
        .await;
    assert_eq!(after["status"], "active", "{after}");

    // A webhook without a response plugin answers as before: no verdict fields.
    let plain = engine.create_webhook(json!({"url": receiver.url})).await;
    receiver.respond_json(200, json!({"ok": false}));
    let (_, outcome) = engine
        .post(
            &format!("/v1/webhooks/{}/test", plain["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(outcome["delivered"], true, "{outcome}");
    assert!(outcome.get("verdict_by").is_none(), "{outcome}");
    assert_eq!(receiver.count(), 4);
}
