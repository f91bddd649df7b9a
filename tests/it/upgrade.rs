//! Data dirs written by older releases open with this hookd, and everything a client saw before
//! is there after — webhooks with their secrets, every event and delivery in its state with its
//! attempts, statistics, idempotency keys — and the deliveries that were queued are sent:
//! - `tests/fixtures/v1-datadir`, from before storage v2 (commit 0d36e24): migrated at start;
//! - `tests/fixtures/v2-json-attempts`, from the last release whose log kept attempt records
//!   as JSON (commit 2803f78): read as it is, next to the binary records written after it.
//!
//! Both were made by `tests/fixtures/v1-datadir/make.py`, with the same webhooks and events.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    ACME_KEY, GLOBEX_KEY, Receiver, TestEngine, eventually, parse_config, test_config_toml,
    utc_date,
};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// Extracts the old data dir into a temp dir (the archive holds `data/`; its contents become
/// the temp dir's, so a restart of the test engine opens the same store).
fn old_data_dir(fixture: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixture.join("datadir.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .arg("--strip-components=1")
        .status()
        .expect("tar runs");
    assert!(status.success());
    dir
}

async fn start_on_old_data(fixture: &Path) -> TestEngine {
    let dir = old_data_dir(fixture);
    let config = parse_config(&test_config_toml(dir.path(), "", true));
    TestEngine::start_in(dir, config).await
}

async fn statuses(engine: &TestEngine) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for status in ["pending", "delivered", "failed"] {
        let (code, page) = engine
            .get(&format!("/v1/deliveries?status={status}&limit=250"))
            .await;
        assert_eq!(code, 200, "{page}");
        out.insert(status.to_string(), page["data"].as_array().unwrap().len());
    }
    out
}

/// When the fixture was made (ms since the epoch): the earliest of its events' ids (UUIDv7,
/// which carry their creation time).
fn fixture_made_ms(manifest: &Value) -> u64 {
    manifest["acme_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let id = &id.as_str().unwrap()["evt_".len()..];
            let (secs, nanos) = uuid::Uuid::parse_str(id)
                .unwrap()
                .get_timestamp()
                .expect("a UUIDv7")
                .to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        })
        .min()
        .unwrap()
}

#[tokio::test]
async fn a_data_dir_of_the_previous_layout_is_migrated_at_start_with_nothing_lost() {
    // The migration gives events new ids (ids name log records since storage v2).
    opens_with_nothing_lost(&fixture("v1-datadir"), false).await;
}

#[tokio::test]
async fn a_data_dir_with_attempt_records_as_json_opens_with_nothing_lost() {
    opens_with_nothing_lost(&fixture("v2-json-attempts"), true).await;
}

async fn opens_with_nothing_lost(fixture: &Path, keeps_event_ids: bool) {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("manifest.json")).unwrap()).unwrap();
    let engine = start_on_old_data(fixture).await;

    // Webhooks keep their ids and (sealed) secrets.
    let (_, listed) = engine.get("/v1/webhooks?limit=250").await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    for hook in manifest["webhooks"].as_object().unwrap().values() {
        assert!(ids.contains(&hook["id"].as_str().unwrap()), "{hook}");
    }
    let (status, globex) = engine
        .call("GET", "/v1/webhooks?limit=250", GLOBEX_KEY, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(globex["data"][0]["id"], manifest["globex_webhook"]["id"]);

    // Every delivery in the state it had, with as many attempts.
    let expected: BTreeMap<String, usize> =
        serde_json::from_value(manifest["acme_statuses"].clone()).unwrap();
    assert_eq!(statuses(&engine).await, expected);
    let (_, events) = engine.get("/v1/events?limit=250").await;
    let events = events["data"].as_array().unwrap().clone();
    assert_eq!(events.len(), 10);
    assert!(
        events
            .iter()
            .all(|e| e["payload"]["text"] == "<b>v1</b>" && e["type"] == "user.created")
    );
    let on_channel = events
        .iter()
        .filter(|e| e["channel"] == "tel-15550100")
        .count();
    assert_eq!(on_channel, 4);
    if keeps_event_ids {
        // Ids handed out before ids were keyed (they show where records are) still name their
        // events; events from now on get keyed ids (checked after the resume below).
        for id in manifest["acme_events"].as_array().unwrap() {
            let id = id.as_str().unwrap();
            let (status, one) = engine.get(&format!("/v1/events/{id}")).await;
            assert_eq!((status, one["id"].as_str()), (200, Some(id)), "{one}");
        }
    }
    let hooks = &manifest["webhooks"];
    for (name, attempts) in manifest["attempts"].as_object().unwrap() {
        let hook = hooks[name]["id"].as_str().unwrap();
        let (_, page) = engine
            .get(&format!("/v1/deliveries?webhook_id={hook}&limit=250"))
            .await;
        let page = page["data"].as_array().unwrap();
        assert_eq!(page.len(), 10, "{name}");
        for delivery in page {
            let id = delivery["id"].as_str().unwrap();
            let (_, one) = engine.get(&format!("/v1/deliveries/{id}")).await;
            let recorded = one["attempts"].as_array().unwrap();
            assert_eq!(
                recorded.len() as u64,
                attempts.as_u64().unwrap(),
                "{name}: {one}"
            );
            // Each attempt reads back whole: what the receiver answered, and where.
            let (code, result) = match name.as_str() {
                "ok" => (200, "delivered"),
                "reject" => (400, "rejected"),
                _ => (500, "exhausted"),
            };
            for (i, attempt) in recorded.iter().enumerate() {
                assert_eq!(attempt["status_code"], code, "{name}: {attempt}");
                assert!(
                    attempt["url"]
                        .as_str()
                        .unwrap()
                        .ends_with(&format!("/{name}")),
                    "{name}: {attempt}"
                );
                if i + 1 == recorded.len() {
                    assert_eq!(attempt["result"], result, "{name}: {attempt}");
                }
            }
        }
    }
    // The fixture was made within one UTC day: that day's window, however long ago.
    let made = fixture_made_ms(&manifest);
    let day = utc_date(made, 0);
    let (status, stats) = engine.get(&format!("/v1/stats?days=1&to={day}")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        stats["totals"], manifest["acme_stats_totals"],
        "statistics carried over as they were"
    );

    // The paused webhook's queued deliveries go out once it points at a receiver and resumes,
    // signed with the secret it had.
    let receiver = Receiver::start().await;
    let paused = hooks["paused"]["id"].as_str().unwrap();
    let (status, _) = engine
        .call(
            "PATCH",
            &format!("/v1/webhooks/{paused}"),
            ACME_KEY,
            Some(json!({"url": receiver.url, "status": "active"})),
        )
        .await;
    assert_eq!(status, 200);
    receiver.wait_for(10, Duration::from_secs(10)).await;
    let secret = hooks["paused"]["secret"].as_str().unwrap();
    let verifier = standardwebhooks::Webhook::new(secret).unwrap();
    for got in receiver.received() {
        verifier
            .verify(&got.body, &got.headers)
            .expect("signed with the old secret");
    }
    eventually(
        Duration::from_secs(10),
        "the resumed deliveries recorded",
        || async {
            let now = statuses(&engine).await;
            (now["pending"] == 0 && now["delivered"] == 20).then_some(())
        },
    )
    .await;

    // Attempts recorded by this hookd read beside the old ones.
    let (_, page) = engine
        .get(&format!("/v1/deliveries?webhook_id={paused}&limit=1"))
        .await;
    let id = page["data"][0]["id"].as_str().unwrap();
    let (_, one) = engine.get(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(one["attempts"][0]["status_code"], 200, "{one}");
    assert_eq!(one["attempts"][0]["result"], "delivered", "{one}");

    // A restart opens the migrated store as it is (nothing migrated twice).
    let engine = engine.restart("").await;
    let after = statuses(&engine).await;
    assert_eq!(after["delivered"], 20);
    assert_eq!(after["failed"], 20);
    if keeps_event_ids {
        for id in manifest["acme_events"].as_array().unwrap() {
            let (status, _) = engine
                .get(&format!("/v1/events/{}", id.as_str().unwrap()))
                .await;
            assert_eq!(status, 200, "{id} after a restart");
        }
    }

    // Idempotency keys still name their events while their window lasts: a migrated event
    // keeps the default window (24 h) from its creation, as before the migration. The
    // fixture's keys run out that long after it was made (its event ids carry the time); from
    // then on a repeat is a new event. Checked last, because a new event adds deliveries.
    let expires_ms = made + hookd::config::DEFAULT_IDEMPOTENCY_WINDOW.as_millis() as u64;
    let now_ms = hookd::ids::now_ms();
    let (status, again) = engine
        .post(
            "/v1/events",
            json!({"type": "user.created", "id": "order-3", "payload": {}}),
        )
        .await;
    if now_ms + 60_000 < expires_ms {
        assert_eq!(status, 200, "the key names its migrated event: {again}");
    } else if now_ms > expires_ms + 60_000 {
        assert_eq!(
            status, 202,
            "a key past its window makes a new event: {again}"
        );
    }
}
