//! Plugins end to end: real components from `plugins/dist` (built by `plugins/build.sh`),
//! uploaded over the API, attached to webhooks, run at attempt time, against a real receiver.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{
    ACME_KEY, GLOBEX_KEY, Receiver, TestEngine, eventually, parse_config, test_config_toml_with,
};

const WAIT: Duration = Duration::from_secs(20);

pub use crate::support::wasm;

/// Uploads `bytes` as the plugin `name` of the key's tenant: the status and the answer.
pub async fn upload(engine: &TestEngine, key: &str, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let response = engine
        .http
        .put(engine.url(&format!("/v1/plugins/{name}")))
        .bearer_auth(key)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

pub async fn install(engine: &TestEngine, name: &str, component: &str) {
    let (status, info) = upload(engine, ACME_KEY, name, wasm(component)).await;
    assert!(status == 201 || status == 200, "{name}: {info}");
}

fn first_delivery(event: &Value) -> String {
    event["deliveries"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn filter_transform_and_signer_plugins_shape_what_the_receiver_gets() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    install(&engine, "kind-filter", "json-filter").await;
    install(&engine, "reshape", "reshape-transform").await;
    install(&engine, "github", "github-signer").await;
    let webhook = engine
        .create_webhook(json!({
            "url": receiver.url,
            "plugins": [
                {"name": "kind-filter", "config": {"path": "data.kind", "allowed": ["order"]}},
                {"name": "reshape", "config": {"redact": ["card"], "shape": "flat"}},
                {"name": "github"}
            ]
        }))
        .await;
    let secret = webhook["secret"].as_str().unwrap().to_string();

    let dropped = engine
        .send_event("user.created", json!({"kind": "noise"}))
        .await;
    let kept = engine
        .send_event(
            "user.created",
            json!({"kind": "order", "from": "ada", "to": "bob", "content": "hi", "card": "4242"}),
        )
        .await;

    let filtered = engine
        .wait_delivery(&first_delivery(&dropped), "filtered")
        .await;
    assert_eq!(filtered["filtered_by"], "kind-filter");
    assert_eq!(filtered["attempts"][0]["result"], "filtered");
    let delivered = engine
        .wait_delivery(&first_delivery(&kept), "delivered")
        .await;
    assert!(
        delivered["attempts"][0]["plugin_logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("reshape")),
        "{delivered}"
    );

    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "the dropped event never reached the receiver");
    let body = got[0].json();
    assert_eq!(body["client_id"], "acme");
    assert_eq!(body["from"], "ada");
    assert_eq!(body["to"], "bob");
    assert_eq!(body["content"], "hi");
    assert_eq!(body["message_id"], kept["id"]);
    // The card number is gone as a value (its digits may still turn up inside an id or a
    // timestamp, so the quoted value is what is looked for).
    let sent = String::from_utf8_lossy(&got[0].body);
    assert!(!sent.contains("\"4242\""), "{sent}");
    // hookd's own signature covers the transformed bytes.
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .unwrap();
    // The signer's header, checked independently with the webhook secret.
    let key = hookd::signing::decode_secret(&secret).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(&got[0].body);
    assert_eq!(
        got[0].header("x-hub-signature-256"),
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
}

#[tokio::test]
async fn a_broken_plugin_fails_attempts_with_a_stable_code_until_a_fixed_version_is_uploaded() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["300ms"]"#).await;
    let receiver = Receiver::start().await;
    install(&engine, "gate", "infinite-loop").await;
    engine
        .create_webhook(
            json!({"url": receiver.url, "max_attempts": 20, "plugins": [{"name": "gate"}]}),
        )
        .await;
    let event = engine
        .send_event("user.created", json!({"kind": "order"}))
        .await;
    let delivery_id = first_delivery(&event);
    let first = eventually(WAIT, "a plugin_timeout attempt", || async {
        let (_, d) = engine.get(&format!("/v1/deliveries/{delivery_id}")).await;
        (!d["attempts"].as_array().unwrap().is_empty()).then_some(d)
    })
    .await;
    assert_eq!(
        first["attempts"][0]["error_code"], "plugin_timeout",
        "{first}"
    );
    assert_eq!(first["status"], "pending", "retried on schedule");

    // Hot swap by upload: the next attempt runs the fixed plugin, no restart. (json-filter
    // refuses the webhook's empty config, so the upload is forced, then the config fixed.)
    let (status, _) = upload(&engine, ACME_KEY, "gate", wasm("json-filter")).await;
    assert_eq!(
        status, 409,
        "a version refusing the attached config needs force"
    );
    let (status, _) = upload(&engine, ACME_KEY, "gate?force=true", wasm("json-filter")).await;
    assert_eq!(status, 200);
    // (json-filter without config refuses; attach a valid config to the same name)
    let (_, webhooks) = engine.get("/v1/webhooks").await;
    let id = webhooks["data"][0]["id"].as_str().unwrap();
    let (status, body) = engine
        .call("PATCH", &format!("/v1/webhooks/{id}"), ACME_KEY, Some(json!({"plugins": [{"name": "gate", "config": {"path": "data.kind", "allowed": ["order"]}}]})))
        .await;
    assert_eq!(status, 200, "{body}");
    let d = engine.wait_delivery(&delivery_id, "delivered").await;
    let attempts = d["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2);
    assert_eq!(receiver.received()[0].header("webhook-id"), delivery_id);
}

#[tokio::test]
async fn hostile_plugins_get_their_codes_and_never_stop_other_webhooks() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["1h"]"#).await;
    let healthy = Receiver::start().await;
    let victim = Receiver::start().await;
    engine.create_webhook(json!({"url": healthy.url})).await;
    let cases = [
        ("bomb", "memory-bomb", json!({"mib": 200}), "plugin_memory"),
        (
            "trap",
            "trap",
            json!({"mode": "panic", "hook": "filter"}),
            "plugin_trap",
        ),
        (
            "retry",
            "trap",
            json!({"mode": "retry-later", "hook": "filter"}),
            "plugin_error",
        ),
        (
            "huge",
            "oversized-output",
            json!({"bytes": 3_000_000}),
            "plugin_invalid_output",
        ),
        (
            "inject",
            "header-injection",
            json!({"mode": "all"}),
            "plugin_invalid_output",
        ),
        (
            "forge",
            "header-injection",
            json!({"mode": "webhook-signature"}),
            "plugin_invalid_output",
        ),
    ];
    let mut expected = Vec::new();
    for (name, component, config, code) in cases {
        install(&engine, name, component).await;
        let webhook = engine
            .create_webhook(
                json!({"url": victim.url, "plugins": [{"name": name, "config": config}]}),
            )
            .await;
        expected.push((webhook["id"].as_str().unwrap().to_string(), code));
    }
    let event = engine.send_event("user.created", json!({"k": 1})).await;
    healthy.wait_for(1, WAIT).await;
    for (webhook_id, code) in expected {
        let delivery = event["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["webhook_id"] == webhook_id.as_str())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let d = eventually(WAIT, &format!("{code} recorded"), || async {
            let (_, d) = engine.get(&format!("/v1/deliveries/{delivery}")).await;
            (!d["attempts"].as_array().unwrap().is_empty()).then_some(d)
        })
        .await;
        assert_eq!(d["attempts"][0]["error_code"], code, "{d}");
    }
    assert_eq!(victim.count(), 0, "no hostile plugin's request went out");
    // The engine is still fine.
    let again = engine.send_event("user.created", json!({})).await;
    assert!(!again["id"].is_null());
    healthy.wait_for(2, WAIT).await;
}

#[tokio::test]
async fn a_url_a_plugin_chooses_passes_the_ssrf_guard_again() {
    // Only 127.0.0.1 is allow-listed; the plugin redirects to 127.0.0.2 (loopback, so a broken
    // guard could only ever reach this machine).
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    install(&engine, "redirect", "url-to-blocked").await;
    let target = format!("http://127.0.0.2:{}/hook", receiver.port());
    engine
        .create_webhook(json!({"url": receiver.url, "plugins": [{"name": "redirect", "config": {"url": target}}]}))
        .await;
    let event = engine.send_event("user.created", json!({})).await;
    let d = engine
        .wait_delivery(&first_delivery(&event), "failed")
        .await;
    assert_eq!(d["attempts"][0]["error_code"], "blocked_address", "{d}");
    assert_eq!(receiver.count(), 0);
}

#[tokio::test]
async fn bad_uploads_are_refused_with_a_reason_and_the_old_version_stays() {
    let engine = TestEngine::start().await;
    install(&engine, "f", "json-filter").await;
    let (_, before) = engine.get("/v1/plugins/f").await;
    for (bytes, needle) in [
        (wasm("bad-import"), "evil:net/socket"),
        (wasm("wrong-world"), "hookd:plugin/meta"),
        (b"definitely not wasm".to_vec(), ""),
    ] {
        let (status, err) = upload(&engine, ACME_KEY, "f", bytes).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some("plugin_invalid")),
            "{err}"
        );
        assert!(err["message"].as_str().unwrap().contains(needle), "{err}");
    }
    let (_, after) = engine.get("/v1/plugins/f").await;
    assert_eq!(
        after["sha256"], before["sha256"],
        "the old version is still live"
    );
    assert!(after["last_error"].is_string());
    assert_eq!(after["hooks"], json!(["filter"]));

    // A bad name has its own code; a form or a compressed upload is named as such.
    let (status, err) = upload(&engine, ACME_KEY, "My.Filter", wasm("json-filter")).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_plugin_name")),
        "{err}"
    );
    for (header, value, needle) in [
        (
            "content-type",
            "multipart/form-data; boundary=x",
            "--data-binary",
        ),
        ("content-encoding", "gzip", "compressed"),
    ] {
        let response = engine
            .http
            .put(engine.url("/v1/plugins/f"))
            .bearer_auth(ACME_KEY)
            .header(header, value)
            .body(wasm("json-filter"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let err: Value = response.json().await.unwrap();
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some("plugin_invalid")),
            "{err}"
        );
        assert!(err["message"].as_str().unwrap().contains(needle), "{err}");
    }

    let (status, err) = engine
        .post("/v1/webhooks", json!({"url": "https://example.com/", "plugins": [{"name": "f", "config": {"nope": 1}}]}))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("plugin_invalid_config")),
        "{err}"
    );
    let (status, err) = engine
        .post(
            "/v1/webhooks",
            json!({"url": "https://example.com/", "plugins": [{"name": "missing"}]}),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("plugin_not_found")),
        "{err}"
    );
}

#[tokio::test]
async fn plugins_are_private_to_their_tenant() {
    let engine = TestEngine::start().await;
    install(&engine, "mine", "json-filter").await;
    let (status, _) = engine
        .call("GET", "/v1/plugins/mine", GLOBEX_KEY, None)
        .await;
    assert_eq!(status, 404);
    let (_, list) = engine.call("GET", "/v1/plugins", GLOBEX_KEY, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let (status, err) = engine
        .call("POST", "/v1/webhooks", GLOBEX_KEY, Some(json!({"url": "https://example.com/", "plugins": [{"name": "mine", "config": {"path": "a", "allowed": ["b"]}}]})))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("plugin_not_found"))
    );
    let (status, _) = engine
        .call("DELETE", "/v1/plugins/mine", GLOBEX_KEY, None)
        .await;
    assert_eq!(status, 404);
    // Globex's own plugin of the same name does not replace acme's.
    let (status, _) = upload(&engine, GLOBEX_KEY, "mine", wasm("trap")).await;
    assert_eq!(status, 201);
    let (_, ours) = engine.get("/v1/plugins/mine").await;
    assert_eq!(ours["hooks"], json!(["filter"]));
}

#[tokio::test]
async fn simulate_shows_the_decision_request_and_logs_without_sending() {
    let engine = TestEngine::start().await;
    install(&engine, "reshape", "reshape-transform").await;
    install(&engine, "f", "json-filter").await;
    let (status, out) = engine
        .post(
            "/v1/plugins/reshape/simulate",
            json!({"config": {"redact": ["password"]}, "event": {"type": "user.created", "payload": {"user": "ada", "password": "hunter2"}}}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["decision"], "deliver");
    let body = out["request"]["body"].as_str().unwrap();
    assert!(
        body.contains("[REDACTED]") && !body.contains("hunter2"),
        "{body}"
    );
    assert!(
        out["request"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "webhook-signature")
    );
    assert!(out["duration_ms"].as_f64().unwrap() > 0.0);

    let (_, out) = engine
        .post(
            "/v1/plugins/f/simulate",
            json!({"config": {"path": "data.kind", "allowed": ["x"]}, "event": {"type": "a", "payload": {"kind": "y"}}}),
        )
        .await;
    assert_eq!(out["decision"], "filtered");
    assert_eq!(out["filtered_by"], "f");
}

/// Simulating a real webhook's chain signs with its real secrets: the answer shows signatures
/// and credentials by name only, as the attempt log does, so it is no signing oracle.
#[tokio::test]
async fn simulating_a_webhooks_chain_shows_no_signature_or_credential() {
    let engine = TestEngine::start().await;
    install(&engine, "github", "github-signer").await;
    let webhook = engine
        .create_webhook(json!({
            "url": "http://127.0.0.1:9/hook",
            "headers": {"x-api-key": "k-98765", "x-team": "blue"},
            "plugins": [{"name": "github"}],
        }))
        .await;
    let id = webhook["id"].as_str().unwrap();
    let (status, out) = engine
        .post(
            "/v1/plugins/github/simulate",
            json!({"webhook_id": id, "event": {"type": "a", "payload": {"amount": 1000000}}}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let headers = out["request"]["headers"].as_array().unwrap();
    let value = |name: &str| -> Value {
        headers
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {out}"))["value"]
            .clone()
    };
    for secret in ["webhook-signature", "x-hub-signature-256", "x-api-key"] {
        assert_eq!(value(secret), Value::Null, "{secret}: {out}");
    }
    assert_eq!(value("x-team"), "blue");
    assert!(
        value("webhook-id")
            .as_str()
            .unwrap()
            .starts_with("dlv_simulate_")
    );
    assert!(!out.to_string().contains("k-98765"), "{out}");
}

#[tokio::test]
async fn javascript_and_python_filters_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config_toml_with(
        dir.path(),
        "",
        true,
        "memory_limit_bytes = 268435456\ndeadline = \"2s\"",
    );
    let engine = TestEngine::start_in(dir, parse_config(&text)).await;
    let receiver = Receiver::start().await;
    receiver.respond_json(200, json!({"ok": true}));
    // The JavaScript filter (built by componentize-js against 0.1.0, untouched by 0.2.0) shares
    // its chain with a 0.2.0 response plugin.
    install(&engine, "says-ok", "body-says-ok").await;
    let mut js_webhook = String::new();
    for (name, component) in [("js", "js-filter"), ("py", "py-filter")] {
        let (status, info) = upload(&engine, ACME_KEY, name, wasm(component)).await;
        assert_eq!(status, 201, "{info}");
        let mut plugins =
            vec![json!({"name": name, "config": {"path": "data.kind", "allowed": ["keep"]}})];
        if name == "js" {
            plugins.push(json!({"name": "says-ok"}));
        }
        let webhook = engine
            .create_webhook(json!({"url": receiver.url, "plugins": plugins}))
            .await;
        if name == "js" {
            js_webhook = webhook["id"].as_str().unwrap().to_string();
        }
    }
    let dropped = engine
        .send_event("user.created", json!({"kind": "skip"}))
        .await;
    let kept = engine
        .send_event("user.created", json!({"kind": "keep"}))
        .await;
    for d in dropped["deliveries"].as_array().unwrap() {
        engine
            .wait_delivery(d["id"].as_str().unwrap(), "filtered")
            .await;
    }
    for d in kept["deliveries"].as_array().unwrap() {
        let delivered = engine
            .wait_delivery(d["id"].as_str().unwrap(), "delivered")
            .await;
        let by_plugin = if d["webhook_id"] == js_webhook.as_str() {
            json!("plugin:says-ok")
        } else {
            Value::Null
        };
        assert_eq!(
            delivered["attempts"][0]["verdict_by"], by_plugin,
            "{delivered}"
        );
    }
    assert_eq!(receiver.count(), 2);
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.json()["data"]["kind"] == "keep")
    );
}

#[tokio::test]
async fn a_restart_loads_plugins_from_the_compile_cache() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    install(&engine, "reshape", "reshape-transform").await;
    // Compiled by the compile worker process, which wrote the cache the engine loaded it from.
    assert_eq!(engine.engine().plugins().compile_count(), 0);
    let cache = engine.data_dir.path().join("plugins/plugin-cache");
    let entries = walk_files(&cache);
    assert!(entries > 0, "the worker wrote the compile cache");
    engine
        .create_webhook(json!({"url": receiver.url, "plugins": [{"name": "reshape", "config": {"shape": "flat"}}]}))
        .await;
    let engine = engine.restart("").await;
    let event = engine
        .send_event("user.created", json!({"from": "a"}))
        .await;
    engine
        .wait_delivery(&first_delivery(&event), "delivered")
        .await;
    assert_eq!(
        engine.engine().plugins().compile_count(),
        0,
        "nothing recompiled after restart"
    );
    assert_eq!(receiver.received()[0].json()["from"], "a");
}

/// Files under `dir`, recursively.
fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() { walk_files(&path) } else { 1 }
        })
        .sum()
}

/// Sends `count` events, one every `gap`, while `swap` runs halfway; returns the delivery ids.
async fn flow_with_swap<F: std::future::Future<Output = ()>>(
    engine: &TestEngine,
    count: usize,
    gap: Duration,
    swap: F,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut swap = Some(swap);
    for i in 0..count {
        if i == count / 2 {
            swap.take().unwrap().await;
        }
        let event = engine.send_event("user.created", json!({"i": i})).await;
        ids.push(first_delivery(&event));
        tokio::time::sleep(gap).await;
    }
    ids
}

#[tokio::test]
async fn an_upload_hot_swaps_a_plugin_while_events_flow_and_nothing_is_lost() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    install(&engine, "stage", "reshape-transform").await;
    engine
        .create_webhook(json!({"url": receiver.url, "plugins": [{"name": "stage", "config": {}}]}))
        .await;
    let ids = flow_with_swap(&engine, 30, Duration::from_millis(20), async {
        install(&engine, "stage", "clock-and-random").await;
    })
    .await;
    let got = receiver.wait_for(ids.len(), WAIT).await;
    let seen: std::collections::HashSet<String> =
        got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| seen.contains(id)),
        "every event delivered"
    );
    let new_version = got
        .iter()
        .filter(|r| r.json().get("delivery_id").is_some())
        .count();
    assert!(
        new_version > 0 && new_version < got.len(),
        "both versions served: {new_version}/{}",
        got.len()
    );
    // Requests after the swap all ran the new version.
    assert!(got.last().unwrap().json().get("delivery_id").is_some());
}

#[tokio::test]
async fn the_admin_plugin_directory_is_watched_and_applied_live() {
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin");
    std::fs::create_dir_all(admin.join("acme")).unwrap();
    std::fs::write(admin.join("acme/stage.wasm"), wasm("reshape-transform")).unwrap();
    let text = test_config_toml_with(
        dir.path(),
        "",
        true,
        &format!("admin_dir = \"{}\"", admin.display()),
    );
    let engine = TestEngine::start_in(dir, parse_config(&text)).await;
    let receiver = Receiver::start().await;
    let info = eventually(WAIT, "admin plugin loaded", || async {
        let (status, info) = engine.get("/v1/plugins/stage").await;
        (status == 200).then_some(info)
    })
    .await;
    assert_eq!(info["source"], "admin_dir");
    engine
        .create_webhook(json!({"url": receiver.url, "plugins": [{"name": "stage", "config": {}}]}))
        .await;
    let path = admin.join("acme/stage.wasm");
    let ids = flow_with_swap(&engine, 30, Duration::from_millis(30), async {
        // Written whole then renamed in, as deploy tools do.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, wasm("clock-and-random")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        eventually(WAIT, "new version live", || async {
            let (_, now) = engine.get("/v1/plugins/stage").await;
            (now["sha256"] != info["sha256"]).then_some(())
        })
        .await;
    })
    .await;
    let got = receiver.wait_for(ids.len(), WAIT).await;
    assert!(
        got.last().unwrap().json().get("delivery_id").is_some(),
        "the new file serves"
    );

    // A broken file is refused and the live version stays.
    let (_, live) = engine.get("/v1/plugins/stage").await;
    std::fs::write(&path, b"broken").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, still) = engine.get("/v1/plugins/stage").await;
    assert_eq!(still["sha256"], live["sha256"]);
    let event = engine.send_event("user.created", json!({})).await;
    engine
        .wait_delivery(&first_delivery(&event), "delivered")
        .await;

    // Removing the file unloads the plugin.
    std::fs::remove_file(&path).unwrap();
    eventually(WAIT, "plugin unloaded", || async {
        let (status, _) = engine.get("/v1/plugins/stage").await;
        (status == 404).then_some(())
    })
    .await;
}
