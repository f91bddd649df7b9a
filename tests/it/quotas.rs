//! Per-tenant quotas, each one at its limit, over it (`429` naming it, nothing written), and
//! after a config reload raising it; secret rotations capped at `secrets_per_webhook`.

use std::time::Duration;

use hookd::config::{Config, hash_api_key};
use serde_json::{Value, json};

use crate::support::{
    ACME_KEY, GLOBEX_KEY, Receiver, TestEngine, eventually, test_config_toml, wasm,
};

const WAIT: Duration = Duration::from_secs(10);
const ADMIN_KEY: &str = "quota-admin-key";

/// An engine whose config file (test defaults plus `quotas`, a `[quotas]` table body) it
/// watches; returns the engine and the file.
async fn engine_with_quotas(quotas: &str) -> (TestEngine, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookd.toml");
    std::fs::write(&path, config_text(&dir.path().join("data"), quotas)).unwrap();
    let config = Config::load(&path).unwrap();
    (TestEngine::start_in(dir, config).await, path)
}

fn config_text(data: &std::path::Path, quotas: &str) -> String {
    format!(
        "admin_api_keys = [\"sha256:{}\"]\n{}\n[quotas]\n{quotas}\n",
        hex::encode(hash_api_key(ADMIN_KEY)),
        test_config_toml(data, "", true)
    )
}

/// Rewrites the `[quotas]` table and waits until the engine applied it.
async fn reload_quotas(engine: &TestEngine, path: &std::path::Path, quotas: &str) {
    let applied = |ready: &Value| ready["config"]["applied"].as_u64().unwrap_or(0);
    let (_, before) = engine.call("GET", "/readyz", ACME_KEY, None).await;
    let text = config_text(&engine.data_dir.path().join("data"), quotas);
    std::fs::write(path, text).unwrap();
    eventually(WAIT, "the raised quota applies", || async {
        let (_, ready) = engine.call("GET", "/readyz", ACME_KEY, None).await;
        (applied(&ready) > applied(&before)).then_some(())
    })
    .await;
}

/// Asserts a `429 quota_exceeded` naming `quota` with its limit and the current use.
fn assert_over(status: u16, body: &Value, quota: &str, limit: u64, current: u64) {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "quota_exceeded", "{body}");
    assert_eq!(body["quota"]["quota"], quota, "{body}");
    assert_eq!(body["quota"]["limit"], limit, "{body}");
    assert_eq!(body["quota"]["current"], current, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(quota) && message.contains(&limit.to_string()),
        "{message}"
    );
}

async fn event_count(engine: &TestEngine) -> usize {
    let (_, events) = engine.get("/v1/events?limit=250").await;
    events["data"].as_array().unwrap().len()
}

#[tokio::test]
async fn the_webhooks_quota_refuses_one_more_and_a_reload_raises_it() {
    let (engine, path) = engine_with_quotas("webhooks = 2").await;
    let receiver = Receiver::start().await;
    for _ in 0..2 {
        engine.create_webhook(json!({"url": receiver.url})).await;
    }
    let (status, body) = engine
        .post("/v1/webhooks", json!({"url": receiver.url}))
        .await;
    assert_over(status, &body, "webhooks", 2, 2);
    let (_, list) = engine.get("/v1/webhooks").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "nothing written");
    // Another tenant has its own count.
    let (status, _) = engine
        .call(
            "POST",
            "/v1/webhooks",
            GLOBEX_KEY,
            Some(json!({"url": receiver.url})),
        )
        .await;
    assert_eq!(status, 201);

    reload_quotas(&engine, &path, "webhooks = 3").await;
    engine.create_webhook(json!({"url": receiver.url})).await;
    let (status, body) = engine
        .post("/v1/webhooks", json!({"url": receiver.url}))
        .await;
    assert_over(status, &body, "webhooks", 3, 3);
}

#[tokio::test]
async fn the_fan_out_quota_refuses_an_event_matching_too_many_webhooks() {
    let (engine, path) = engine_with_quotas("deliveries_per_event = 2").await;
    let receiver = Receiver::start().await;
    for _ in 0..2 {
        engine.create_webhook(json!({"url": receiver.url})).await;
    }
    // At the limit: two deliveries.
    let event = engine.send_event("user.created", json!({})).await;
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 2);
    engine.create_webhook(json!({"url": receiver.url})).await;
    let (status, body) = engine
        .post("/v1/events", json!({"type": "user.created", "payload": {}}))
        .await;
    assert_over(status, &body, "deliveries_per_event", 2, 3);
    // In a batch, the event gets the refusal in its slot.
    let (status, batch) = engine
        .post(
            "/v1/events/batch",
            json!({"events": [{"type": "user.created", "payload": {}}]}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["results"][0]["status"], 429, "{batch}");
    assert_eq!(
        batch["results"][0]["error"]["quota"]["quota"],
        "deliveries_per_event"
    );
    assert_eq!(event_count(&engine).await, 1, "nothing written");

    reload_quotas(&engine, &path, "deliveries_per_event = 3").await;
    let event = engine.send_event("user.created", json!({})).await;
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_pending_deliveries_quota_counts_queued_deliveries_and_frees_as_they_finish() {
    let (engine, path) = engine_with_quotas("pending_deliveries = 3").await;
    let receiver = Receiver::start().await;
    // Paused: deliveries stay pending.
    let webhook = engine
        .create_webhook(json!({"url": receiver.url, "disabled": false}))
        .await;
    let id = webhook["id"].as_str().unwrap();
    let (status, _) = engine
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            ACME_KEY,
            Some(json!({"status": "paused"})),
        )
        .await;
    assert_eq!(status, 200);
    for _ in 0..3 {
        engine.send_event("user.created", json!({})).await;
    }
    let (status, body) = engine
        .post("/v1/events", json!({"type": "user.created", "payload": {}}))
        .await;
    assert_over(status, &body, "pending_deliveries", 3, 3);
    assert_eq!(event_count(&engine).await, 3, "nothing written");
    // The admin view shows the use against the quota.
    let (status, tenants) = engine
        .call("GET", "/v1/admin/tenants", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200, "{tenants}");
    let acme = tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "acme")
        .unwrap()
        .clone();
    assert_eq!(
        acme["quotas"]["pending_deliveries"],
        json!({"limit": 3, "used": 3}),
        "{acme}"
    );
    assert_eq!(acme["quotas"]["webhooks"], json!({"limit": 100, "used": 1}));

    reload_quotas(&engine, &path, "pending_deliveries = 5").await;
    // Room for one more event, then a batch of three: the first fits, the rest are refused
    // in their slots.
    engine.send_event("user.created", json!({})).await;
    let (_, batch) = engine
        .post(
            "/v1/events/batch",
            json!({"events": [
                {"type": "user.created", "payload": {"n": 1}},
                {"type": "user.created", "payload": {"n": 2}},
                {"type": "user.created", "payload": {"n": 3}},
            ]}),
        )
        .await;
    let statuses: Vec<&Value> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses, [&json!(202), &json!(429), &json!(429)], "{batch}");
    assert_eq!(batch["results"][1]["error"]["quota"]["current"], 5);

    // Delivering frees the quota.
    engine
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            ACME_KEY,
            Some(json!({"status": "active"})),
        )
        .await;
    receiver.wait_for(5, WAIT).await;
    eventually(WAIT, "delivered deliveries no longer count", || async {
        let (status, _) = engine
            .post("/v1/events", json!({"type": "user.created", "payload": {}}))
            .await;
        (status == 202).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_stored_bytes_quota_counts_payload_bytes() {
    let (engine, path) = engine_with_quotas("stored_bytes = 100").await;
    // 40 bytes of payload each.
    let payload = json!({"pad": "x".repeat(30)});
    assert_eq!(payload.to_string().len(), 40);
    for _ in 0..2 {
        engine.send_event("user.created", payload.clone()).await;
    }
    let (status, body) = engine
        .post(
            "/v1/events",
            json!({"type": "user.created", "payload": payload}),
        )
        .await;
    assert_over(status, &body, "stored_bytes", 100, 80);
    assert_eq!(body["quota"]["requested"], 40);
    assert_eq!(event_count(&engine).await, 2, "nothing written");
    // A smaller event still fits exactly.
    let exact = json!({"pad": "x".repeat(10)});
    assert_eq!(exact.to_string().len(), 20);
    engine.send_event("user.created", exact).await;

    reload_quotas(&engine, &path, "stored_bytes = 1000").await;
    engine.send_event("user.created", payload).await;
}

#[tokio::test]
async fn the_request_rate_answers_429_with_retry_after_per_tenant() {
    let (engine, path) = engine_with_quotas("api_requests_per_sec = 1\napi_burst = 5").await;
    let get = |key: &'static str| {
        let request = engine.http.get(engine.url("/v1/webhooks")).bearer_auth(key);
        async move { request.send().await.unwrap() }
    };
    for _ in 0..5 {
        assert_eq!(get(ACME_KEY).await.status(), 200);
    }
    let limited = get(ACME_KEY).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    // Another tenant's bucket is its own.
    assert_eq!(get(GLOBEX_KEY).await.status(), 200);

    reload_quotas(&engine, &path, "api_requests_per_sec = 1000").await;
    for _ in 0..20 {
        assert_eq!(get(ACME_KEY).await.status(), 200);
    }
}

/// Issue 12: 6 rotations left 7 signatures; 2,000 meant 2,000 HMACs per attempt.
#[tokio::test]
async fn fifty_rotations_leave_at_most_three_signatures_that_all_verify() {
    let (engine, path) = engine_with_quotas("").await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();
    let rotate = || async {
        let (status, rotated) = engine
            .call(
                "POST",
                &format!("/v1/webhooks/{id}/rotate-secret"),
                ACME_KEY,
                None,
            )
            .await;
        assert_eq!(status, 200, "{rotated}");
        rotated
    };
    let mut secrets = vec![webhook["secret"].as_str().unwrap().to_string()];
    for _ in 0..50 {
        let rotated = rotate().await;
        assert!(
            rotated["signing_secrets"].as_u64().unwrap() <= 3,
            "{rotated}"
        );
        secrets.push(rotated["secret"].as_str().unwrap().to_string());
    }
    engine.send_event("user.created", json!({})).await;
    assert_signatures(&receiver.wait_for(1, WAIT).await[0], &secrets, 3);

    // A reload raising the quota: rotations keep five.
    reload_quotas(&engine, &path, "secrets_per_webhook = 5").await;
    for _ in 0..5 {
        secrets.push(rotate().await["secret"].as_str().unwrap().to_string());
    }
    engine.send_event("user.created", json!({})).await;
    assert_signatures(&receiver.wait_for(2, WAIT).await[1], &secrets, 5);
}

/// `got` carries `count` signatures, the first by the newest of `secrets`, the next by the one
/// before, and so on, each verifying on its own; the next older secret verifies none.
fn assert_signatures(got: &crate::support::receiver::Received, secrets: &[String], count: usize) {
    let newest_first: Vec<&String> = secrets.iter().rev().collect();
    let header = got.header("webhook-signature");
    let signatures: Vec<&str> = header.split(' ').collect();
    assert_eq!(signatures.len(), count, "{header}");
    for (signature, secret) in signatures.iter().zip(&newest_first) {
        let mut headers = got.headers.clone();
        headers.insert("webhook-signature", signature.parse().unwrap());
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&got.body, &headers)
            .unwrap_or_else(|e| panic!("{signature} does not verify: {e:?}"));
    }
    let expired = standardwebhooks::Webhook::new(newest_first[count]).unwrap();
    assert!(
        expired.verify(&got.body, &got.headers).is_err(),
        "an expired secret still signs"
    );
}

/// Uploads `component` as the tenant's plugin `name`.
async fn upload_plugin(
    engine: &TestEngine,
    key: &str,
    name: &str,
    component: &str,
) -> (u16, Value) {
    crate::plugins::upload(engine, key, name, wasm(component)).await
}

/// acme's `plugins` and `plugin_bytes` in the admin view: (limit, used) of each.
async fn plugin_quota_use(engine: &TestEngine) -> [(u64, u64); 2] {
    let (status, tenants) = engine
        .call("GET", "/v1/admin/tenants", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200, "{tenants}");
    let acme = tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "acme")
        .unwrap()
        .clone();
    ["plugins", "plugin_bytes"].map(|quota| {
        let q = &acme["quotas"][quota];
        (q["limit"].as_u64().unwrap(), q["used"].as_u64().unwrap())
    })
}

#[tokio::test]
async fn the_plugin_quotas_refuse_one_more_plugin_or_byte_and_a_reload_raises_them() {
    let filter = wasm("json-filter").len() as u64;
    let trap = wasm("trap").len() as u64;
    let bytes = filter + trap;
    let (engine, path) = engine_with_quotas(&format!("plugins = 1\nplugin_bytes = {bytes}")).await;
    let (status, body) = upload_plugin(&engine, ACME_KEY, "first", "json-filter").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = upload_plugin(&engine, ACME_KEY, "second", "trap").await;
    assert_over(status, &body, "plugins", 1, 1);
    let (_, list) = engine.get("/v1/plugins").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "nothing written");
    assert_eq!(plugin_quota_use(&engine).await, [(1, 1), (bytes, filter)]);
    // Replacing a plugin is not one more; another tenant has its own count.
    let (status, body) = upload_plugin(&engine, ACME_KEY, "first", "trap").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = upload_plugin(&engine, GLOBEX_KEY, "first", "json-filter").await;
    assert_eq!(status, 201, "{body}");

    // A reload raising `plugins`: now the bytes are what stops a third plugin.
    reload_quotas(
        &engine,
        &path,
        &format!("plugins = 3\nplugin_bytes = {bytes}"),
    )
    .await;
    let (status, body) = upload_plugin(&engine, ACME_KEY, "second", "json-filter").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = upload_plugin(&engine, ACME_KEY, "third", "trap").await;
    assert_over(status, &body, "plugin_bytes", bytes, bytes);
    assert_eq!(body["quota"]["requested"], trap, "{body}");
    assert_eq!(plugin_quota_use(&engine).await, [(3, 2), (bytes, bytes)]);
}

/// Issue 10: a queue that grows faster than it drains pushes back on its producer — and only on
/// that tenant — while the lag is shown on `/readyz`; ingest is accepted again once it drains.
#[tokio::test]
async fn a_tenant_whose_deliveries_trail_past_its_lag_quota_is_pushed_back_until_they_catch_up() {
    let (engine, _path) = engine_with_quotas("max_delivery_lag_secs = 1").await;
    let slow = Receiver::start().await;
    slow.delay(Duration::from_millis(150));
    engine
        .create_webhook(json!({"url": slow.url, "max_in_flight": 1}))
        .await;
    let post_event = |key: &'static str| {
        let request = engine
            .http
            .post(engine.url("/v1/events"))
            .bearer_auth(key)
            .json(&json!({"type": "order.paid", "payload": {"n": 1}}));
        async move { request.send().await.unwrap() }
    };
    // One delivery at a time, 150 ms each: the 20th starts ~3 s after it was due.
    for _ in 0..20 {
        assert_eq!(post_event(ACME_KEY).await.status(), 202);
    }
    let refused = eventually(WAIT, "acme's ingest pushed back", || async {
        let response = post_event(ACME_KEY).await;
        (response.status() == 429).then_some(response)
    })
    .await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "delivery_lag_exceeded", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_delivery_lag_secs"),
        "{body}"
    );
    let (_, ready) = engine.call("GET", "/readyz", ACME_KEY, None).await;
    assert!(ready["delivery_lag_ms"].as_u64().unwrap() > 1000, "{ready}");
    // Another tenant is not behind, so it is not pushed back.
    assert_eq!(post_event(GLOBEX_KEY).await.status(), 202);

    // The receiver speeds up; once the backlog drains acme is accepted again, and nothing
    // accepted before was lost.
    slow.delay(Duration::ZERO);
    eventually(WAIT, "acme accepted again", || async {
        (post_event(ACME_KEY).await.status() == 202).then_some(())
    })
    .await;
    let (_, events) = engine.get("/v1/events?limit=250").await;
    let sent = events["data"].as_array().unwrap().len();
    eventually(WAIT, "every accepted event delivered", || async {
        (slow.count() >= sent).then_some(())
    })
    .await;
    // Every attempt's lag is in the histogram.
    let metrics = engine
        .http
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = metrics
        .lines()
        .find(|l| l.starts_with("hookd_delivery_lag_seconds_count{tenant=\"acme\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no lag histogram for acme in {metrics}"));
    assert!(count >= sent as f64, "{count} < {sent}");
}

/// A backlog a paused webhook held on purpose is not lag: resuming it does not push the
/// tenant's producers back (every ingest was refused for as long as the pause had lasted).
#[tokio::test]
async fn resuming_a_paused_webhooks_backlog_is_not_counted_as_delivery_lag() {
    let (engine, _path) = engine_with_quotas("max_delivery_lag_secs = 1").await;
    let receiver = Receiver::start().await;
    let webhook = engine
        .create_webhook(json!({"url": receiver.url, "max_in_flight": 2}))
        .await;
    let path = format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap());
    let patch = |status: &'static str| {
        engine.call("PATCH", &path, ACME_KEY, Some(json!({"status": status})))
    };
    assert_eq!(patch("paused").await.0, 200);
    for _ in 0..30 {
        let (status, _) = engine
            .post(
                "/v1/events",
                json!({"type": "order.paid", "payload": {"n": 1}}),
            )
            .await;
        assert_eq!(status, 202);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(patch("active").await.0, 200);
    // While the held backlog drains, the tenant's producers are still accepted.
    let mut refused = 0;
    for _ in 0..20 {
        let (status, _) = engine
            .post(
                "/v1/events",
                json!({"type": "order.paid", "payload": {"n": 2}}),
            )
            .await;
        refused += usize::from(status == 429);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(refused, 0, "ingest refused while a resumed backlog drained");
    receiver.wait_for(50, WAIT).await;
}
