//! Plugin versions on either backend: every upload is a stored version, listed newest first;
//! a rollback swaps the live version under load with nothing lost; a webhook's pinned version
//! holds across uploads and restarts; the catalogue keeps a bounded history; plugin files of an
//! older hookd move into the catalogue at start.

use std::sync::Arc;
use std::time::Duration;

use hookd::ids::{WebhookId, now_ms};
use hookd::secrets::Keyring;
use hookd::store::{
    KEEP_PLUGIN_VERSIONS, PluginAttachment, PluginStage, Store, WebhookRecord, WebhookSecret,
    WebhookStatus,
};
use serde_json::{Value, json};

use crate::plugins::upload;
use crate::support::{
    ACME_KEY, Receiver, TestEngine, distinct, parse_config, test_config_toml, wasm,
};

const WAIT: Duration = Duration::from_secs(30);

/// The `uploaded_by` of versions uploaded with [`ACME_KEY`].
fn acme_uploader() -> String {
    hex::encode(hookd::config::hash_api_key(ACME_KEY))[..12].to_string()
}

async fn put(engine: &TestEngine, name: &str, bytes: Vec<u8>) -> Value {
    let (status, info) = upload(engine, ACME_KEY, name, bytes).await;
    assert!(status == 201 || status == 200, "{name}: {status} {info}");
    info
}

/// Whether a request came out of `clock-and-random` (it adds `delivery_id` to the body)
/// rather than `reshape-transform` with `{}` (the envelope as it was).
fn ran_clock(request: &crate::support::receiver::Received) -> bool {
    request.json().get("delivery_id").is_some()
}

#[tokio::test]
async fn every_upload_is_a_version_and_a_rollback_swaps_under_load_with_nothing_lost() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let first = put(&engine, "stage", wasm("reshape-transform")).await;
    assert_eq!(first["version_id"], 1);
    let second = put(&engine, "stage", wasm("clock-and-random")).await;
    assert_eq!(second["version_id"], 2);
    // The same bytes again: idempotent, no new version.
    let again = put(&engine, "stage", wasm("clock-and-random")).await;
    assert_eq!(again["version_id"], 2);

    let (status, listed) = engine.get("/v1/plugins/stage/versions").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["current"], 2);
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{listed}");
    assert_eq!(
        (data[0]["id"].clone(), data[1]["id"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(data[0]["sha256"], second["sha256"]);
    assert_eq!(data[1]["sha256"], first["sha256"]);
    assert_eq!(data[0]["current"], true);
    assert_eq!(data[1]["current"], false);
    assert_eq!(data[0]["uploaded_by"], acme_uploader());
    assert_eq!(data[1]["size_bytes"], wasm("reshape-transform").len());

    // One attempt at a time, so the receiver sees attempts in the order they ran.
    engine
        .create_webhook(json!({"url": receiver.url, "max_in_flight": 1,
            "plugins": [{"name": "stage", "config": {}}]}))
        .await;
    let count = 40;
    let mut ids = Vec::new();
    for i in 0..count {
        if i == count / 2 {
            let (status, rolled) = engine
                .post("/v1/plugins/stage/rollback", json!({"version": 1}))
                .await;
            assert_eq!(status, 200, "{rolled}");
            assert_eq!(rolled["version_id"], 1);
            assert_eq!(rolled["sha256"], first["sha256"]);
        }
        let event = engine.send_event("user.created", json!({"i": i})).await;
        ids.push(event["deliveries"][0]["id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = receiver.wait_for(count, WAIT).await;
    let delivered: Vec<String> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(got.len(), count, "one request per event");
    let versions: Vec<bool> = got.iter().map(ran_clock).collect();
    let switches = versions.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        versions[0] && !versions[count - 1] && switches == 1,
        "version 2, then version 1 after the rollback, in order: {versions:?}"
    );
    assert_eq!(delivered, ids, "every event delivered once, in order");
    let (_, live) = engine.get("/v1/plugins/stage").await;
    assert_eq!(live["version_id"], 1);
    let (_, listed) = engine.get("/v1/plugins/stage/versions").await;
    assert_eq!(listed["current"], 1);
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);

    // Refusals, each with its code.
    let (status, body) = engine
        .post("/v1/plugins/stage/rollback", json!({"version": 99}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("plugin_version_not_found")),
        "{body}"
    );
    let (status, body) = engine
        .post("/v1/plugins/nothing/rollback", json!({"version": 1}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, body) = engine
        .post(
            "/v1/plugins/stage/rollback",
            json!({"version": 1, "force": true}),
        )
        .await;
    assert!(status == 400 || status == 422, "{status} {body}");
    let (status, body) = engine.get("/v1/plugins/nothing/versions").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
}

#[tokio::test]
async fn a_pinned_version_holds_across_an_upload_and_a_restart_loads_the_current_version() {
    let engine = TestEngine::start().await;
    let (pinned_receiver, following_receiver) = (Receiver::start().await, Receiver::start().await);
    put(&engine, "stage", wasm("clock-and-random")).await;
    put(&engine, "stage", wasm("reshape-transform")).await;
    let (status, refused) = engine
        .post(
            "/v1/webhooks",
            json!({"url": pinned_receiver.url,
                "plugins": [{"name": "stage", "config": {}, "version": 7}]}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("plugin_version_not_found")),
        "{refused}"
    );
    let pinned = engine
        .create_webhook(json!({"url": pinned_receiver.url,
            "plugins": [{"name": "stage", "config": {}, "version": 1}]}))
        .await;
    assert_eq!(pinned["plugins"][0]["version"], 1);
    engine
        .create_webhook(json!({"url": following_receiver.url,
            "plugins": [{"name": "stage", "config": {}}]}))
        .await;

    // A third version: the follower runs it, the pinned webhook keeps version 1.
    let third = put(&engine, "stage", distinct(&wasm("reshape-transform"), "v3")).await;
    assert_eq!(third["version_id"], 3);
    engine.send_event("user.created", json!({"n": 1})).await;
    let pinned_got = pinned_receiver.wait_for(1, WAIT).await;
    let following_got = following_receiver.wait_for(1, WAIT).await;
    assert!(
        ran_clock(&pinned_got[0]),
        "the pinned webhook runs version 1"
    );
    assert!(
        !ran_clock(&following_got[0]),
        "the other runs the current version"
    );

    // After a restart: the current version from the store, the pin still held.
    let engine = engine.restart("").await;
    let (_, live) = engine.get("/v1/plugins/stage").await;
    assert_eq!(live["version_id"], 3, "{live}");
    assert_eq!(live["sha256"], third["sha256"]);
    engine.send_event("user.created", json!({"n": 2})).await;
    let pinned_got = pinned_receiver.wait_for(2, WAIT).await;
    let following_got = following_receiver.wait_for(2, WAIT).await;
    assert!(ran_clock(&pinned_got[1]));
    assert!(!ran_clock(&following_got[1]));
    let (_, listed) = engine.get("/v1/plugins/stage/versions").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);

    // The pinned webhook keeps the plugin in use.
    let (status, _) = engine
        .call("DELETE", "/v1/plugins/stage", ACME_KEY, None)
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn plugin_files_of_an_older_hookd_move_into_the_catalogue_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("plugins/plugins/acme");
    std::fs::create_dir_all(&legacy).unwrap();
    std::fs::write(legacy.join("old.wasm"), wasm("reshape-transform")).unwrap();
    std::fs::write(
        legacy.join("old.json"),
        br#"{"created_ms":1,"updated_ms":1}"#,
    )
    .unwrap();
    let config = parse_config(&test_config_toml(dir.path(), "", true));
    let engine = TestEngine::start_in(dir, config).await;
    let (status, info) = engine.get("/v1/plugins/old").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["version_id"], 1);
    assert_eq!(info["uploaded_by"], "migrated");
    assert!(
        !legacy.join("old.wasm").exists(),
        "the file moved into the catalogue"
    );
    assert!(!legacy.join("old.json").exists());
    let receiver = Receiver::start().await;
    engine
        .create_webhook(json!({"url": receiver.url, "plugins": [{"name": "old", "config": {}}]}))
        .await;
    engine.send_event("user.created", json!({"n": 1})).await;
    receiver.wait_for(1, WAIT).await;
    let engine = engine.restart("").await;
    let (status, info) = engine.get("/v1/plugins/old").await;
    assert_eq!(
        (status, info["version_id"].clone()),
        (200, json!(1)),
        "{info}"
    );
}

fn webhook_pinning(name: &str, version: u64) -> WebhookRecord {
    WebhookRecord {
        id: WebhookId::new(),
        url: "http://127.0.0.1:9/hook".into(),
        description: String::new(),
        event_types: vec!["*".into()],
        channels: None,
        secrets: vec![WebhookSecret::new(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            1,
        )],
        headers: Default::default(),
        sealed_headers: Default::default(),
        status: WebhookStatus::Active,
        disabled_reason: None,
        max_attempts: None,
        retry_schedule_ms: None,
        timeout_ms: None,
        max_in_flight: None,
        rate_limit_per_sec: None,
        metadata: Default::default(),
        plugins: vec![PluginAttachment {
            name: name.into(),
            config: json!({}),
            version: Some(version),
        }],
        failing_since: None,
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

/// The store alone (either backend): bounded history, pins and the current version kept,
/// rollback, candidates, delete.
#[tokio::test]
async fn the_catalogue_keeps_a_bounded_history_plus_current_candidate_and_pinned_versions() {
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&test_config_toml(dir.path(), "", true));
    let store: Arc<dyn Store> = hookd::store::open(&config, Arc::new(Keyring::random()))
        .await
        .expect("the store opens");
    store
        .insert_webhook("acme", &webhook_pinning("p", 2))
        .await
        .unwrap();
    let total = KEEP_PLUGIN_VERSIONS as u64 + 5;
    for i in 1..=total {
        let bytes = format!("component {i}").into_bytes();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let version = store
            .put_plugin_version("acme", "p", &sha, &bytes, "abc", PluginStage::Current)
            .await
            .unwrap();
        assert_eq!(version.id, i);
    }
    let ids: Vec<u64> = store
        .plugin_versions("acme", "p")
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    let mut expected: Vec<u64> = (total - KEEP_PLUGIN_VERSIONS as u64 + 1..=total)
        .rev()
        .collect();
    expected.push(2); // pinned by the webhook
    assert_eq!(ids, expected);
    assert_eq!(
        store.plugin_bytes("acme", "p", 2).await.unwrap(),
        Some(b"component 2".to_vec())
    );
    assert_eq!(store.plugin_bytes("acme", "p", 1).await.unwrap(), None);

    // Rollback to the pinned one; a candidate leaves the current version alone.
    let head = store
        .set_plugin_current("acme", "p", 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.current.id, 2);
    assert!(
        store
            .set_plugin_current("acme", "p", 1)
            .await
            .unwrap()
            .is_none()
    );
    let bytes = b"a candidate".to_vec();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let candidate = store
        .put_plugin_version("acme", "p", &sha, &bytes, "abc", PluginStage::Candidate)
        .await
        .unwrap();
    let head = store.plugin_head("acme", "p").await.unwrap().unwrap();
    assert_eq!(
        (head.current.id, head.candidate.as_ref().map(|c| c.id)),
        (2, Some(candidate.id))
    );
    let heads = store.plugin_heads().await.unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0], head);
    assert!(store.plugin_head("globex", "p").await.unwrap().is_none());

    assert!(store.delete_plugin("acme", "p").await.unwrap());
    assert!(!store.delete_plugin("acme", "p").await.unwrap());
    assert!(store.plugin_versions("acme", "p").await.unwrap().is_empty());
    assert!(store.plugin_heads().await.unwrap().is_empty());
    if !crate::support::postgres::enabled() {
        let left = std::fs::read_dir(dir.path().join("plugin-store/acme"))
            .map(|entries| entries.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "no component file outlives its versions");
    }
    store.close().await.unwrap();
}

/// A new current version (upload, rollback, promote) must keep working for the webhooks that
/// follow the current one: one that lacks a hook they run (a filter gone lets through what it
/// dropped) or refuses their config is refused, naming them, unless `?force=true`. Webhooks
/// pinning a version are not its business.
#[tokio::test]
async fn a_version_that_would_change_what_attached_webhooks_run_is_refused_unless_forced() {
    let engine = TestEngine::start().await;
    put(&engine, "only", wasm("json-filter")).await;
    let webhook = engine
        .create_webhook(json!({"url": "http://127.0.0.1:9/hook",
            "plugins": [{"name": "only", "config": {"path": "data.kind", "allowed": ["a"]}}]}))
        .await;
    let id = webhook["id"].as_str().unwrap();
    // No filter hook at all; a filter that refuses the attached config.
    for (component, needle) in [("body-says-ok", "filter"), ("trap", "refuses the config")] {
        let (status, err) = upload(&engine, ACME_KEY, "only", wasm(component)).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (409, Some("plugin_incompatible")),
            "{component}: {err}"
        );
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains(id) && message.contains(needle),
            "{message}"
        );
    }
    let (_, versions) = engine.get("/v1/plugins/only/versions").await;
    assert_eq!(
        versions["data"].as_array().unwrap().len(),
        1,
        "nothing stored: {versions}"
    );

    // A compatible version goes in; a forced one too, and rolling back to it is checked.
    let (status, _) = upload(&engine, ACME_KEY, "only", wasm("json-filter-next")).await;
    assert_eq!(status, 200);
    let (status, forced) = upload(&engine, ACME_KEY, "only?force=true", wasm("trap")).await;
    assert_eq!(status, 200, "{forced}");
    let trap_version = forced["version_id"].clone();
    // Back from it is checked too: trap runs transform and sign besides its filter.
    let (status, err) = engine
        .post("/v1/plugins/only/rollback", json!({"version": 1}))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("plugin_incompatible")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("transform, sign"),
        "{err}"
    );
    let (status, body) = engine
        .post(
            "/v1/plugins/only/rollback?force=true",
            json!({"version": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, err) = engine
        .post(
            "/v1/plugins/only/rollback",
            json!({"version": trap_version}),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("plugin_incompatible")),
        "{err}"
    );
    // A webhook pinning version 1 alone does not hold the plugin back.
    let (status, _) = engine
        .call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            ACME_KEY,
            Some(json!({"plugins": [{"name": "only", "version": 1,
                "config": {"path": "data.kind", "allowed": ["a"]}}]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = engine
        .post(
            "/v1/plugins/only/rollback",
            json!({"version": trap_version}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}
