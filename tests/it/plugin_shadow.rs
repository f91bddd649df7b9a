//! Shadow runs of candidate plugin versions, on either backend: real components from
//! `plugins/dist` uploaded over the API, a real receiver, the report read back through
//! `GET /v1/plugins/{name}/shadow`. The candidate's outcome is never sent: every event is
//! delivered by the current version, while the report counts what the candidate would have
//! done, exactly, up to the planned number of attempts.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::plugins::upload;
use crate::support::{
    ACME_KEY, Receiver, TestEngine, distinct, eventually, parse_config, test_config_toml_with, wasm,
};

const WAIT: Duration = Duration::from_secs(60);
const KINDS: [&str; 3] = ["a", "b", "c"];

/// `json-filter` delivering every kind: what the current version runs with.
fn kinds_config() -> Value {
    json!({"path": "data.kind", "allowed": KINDS})
}

async fn put_current(engine: &TestEngine, name: &str, component: Vec<u8>) {
    let (status, info) = upload(engine, ACME_KEY, name, component).await;
    assert!(status == 201 || status == 200, "{name}: {status} {info}");
}

/// An engine whose plugin `kinds` (`json-filter`, current) runs on one webhook delivering
/// every kind to `receiver`.
async fn kinds_engine() -> (TestEngine, Receiver) {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    put_current(&engine, "kinds", wasm("json-filter")).await;
    engine
        .create_webhook(json!({"url": receiver.url,
            "plugins": [{"name": "kinds", "config": kinds_config()}]}))
        .await;
    (engine, receiver)
}

/// Uploads `component` as the candidate of `name`, to shadow `attempts` attempts.
async fn put_candidate(
    engine: &TestEngine,
    name: &str,
    component: Vec<u8>,
    attempts: u64,
) -> (u16, Value) {
    upload(
        engine,
        ACME_KEY,
        &format!("{name}?stage=candidate&shadow_attempts={attempts}"),
        component,
    )
    .await
}

/// The report once it has compared `n` attempts.
async fn report_after(engine: &TestEngine, name: &str, n: u64) -> Value {
    eventually(WAIT, &format!("{n} attempts compared"), || async {
        let (status, report) = engine.get(&format!("/v1/plugins/{name}/shadow")).await;
        assert_eq!(status, 200, "{report}");
        (report["compared"].as_u64() >= Some(n)).then_some(report)
    })
    .await
}

/// Sends one event per kind in `kinds`; returns the event ids by kind.
async fn send_kinds(engine: &TestEngine, kinds: &[&str]) -> Vec<(String, String)> {
    let mut sent = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let event = engine
            .send_event("user.created", json!({"kind": kind, "i": i}))
            .await;
        sent.push((kind.to_string(), event["id"].as_str().unwrap().to_string()));
    }
    sent
}

fn kinds(n: usize) -> Vec<&'static str> {
    (0..n).map(|i| KINDS[i % 3]).collect()
}

#[tokio::test]
async fn a_candidate_dropping_one_event_in_three_is_counted_exactly_while_every_event_is_delivered()
{
    let (engine, receiver) = kinds_engine().await;

    let (status, started) = put_candidate(&engine, "kinds", wasm("json-filter-next"), 30).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["state"], "running");
    assert_eq!(
        (
            started["candidate_version"].clone(),
            started["current_version"].clone()
        ),
        (json!(2), json!(1))
    );
    assert_eq!(started["attempts"], 30);
    assert_eq!(started["compared"], 0);
    let (_, versions) = engine.get("/v1/plugins/kinds/versions").await;
    assert_eq!(versions["current"], 1, "{versions}");
    assert_eq!(versions["data"][0]["candidate"], true, "{versions}");
    let (_, live) = engine.get("/v1/plugins/kinds").await;
    assert_eq!(live["version_id"], 1, "the current version keeps serving");

    let sent = send_kinds(&engine, &kinds(30)).await;
    let got = receiver.wait_for(30, WAIT).await;
    assert_eq!(
        got.len(),
        30,
        "every event is delivered by the current version"
    );
    let delivered_kinds: Vec<String> = got
        .iter()
        .map(|r| r.json()["data"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        delivered_kinds.iter().filter(|k| *k == "c").count(),
        10,
        "the kinds the candidate drops are delivered"
    );

    let report = report_after(&engine, "kinds", 30).await;
    assert_eq!(report["state"], "complete", "{report}");
    assert_eq!(report["compared"], 30);
    assert_eq!(report["same"], 20, "{report}");
    assert_eq!(report["differing"], 10, "{report}");
    assert_eq!(
        report["differences"],
        json!({"decision": 10, "error": 0, "headers": 0, "body": 0, "url": 0})
    );
    assert_eq!(report["candidate_errors"], 0);
    assert_eq!(report["current_errors"], 0);
    assert!(report["durations"]["candidate_total_us"].as_u64().unwrap() > 0);
    assert!(report["ended_at"].is_string());
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    let dropped: HashSet<String> = sent
        .iter()
        .filter(|(kind, _)| kind == "c")
        .map(|(_, id)| id.clone())
        .collect();
    let reported: HashSet<String> = cases
        .iter()
        .map(|c| c["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reported, dropped, "the differing cases are the `c` events");
    for case in cases {
        assert_eq!(case["differences"], json!(["decision"]), "{case}");
        assert_eq!(case["current"]["decision"], "deliver");
        assert_eq!(case["candidate"]["decision"], "drop");
        assert!(case["current"]["body_sha256"].is_string());
        assert!(case["delivery_id"].as_str().unwrap().starts_with("dlv_"));
    }

    // The candidate's calls are in the per-plugin metrics under its own version label: 20
    // kept, 10 dropped; the current version's 30 real calls are counted once.
    let text = crate::metrics::scrape(&engine).await;
    let label =
        |sha: &Value| sha.as_str().unwrap()[..hookd::plugin::VERSION_LABEL_DIGITS].to_string();
    let (candidate, current) = (
        label(&versions["data"][0]["sha256"]),
        label(&versions["data"][1]["sha256"]),
    );
    let calls = |version: &str, outcome: &str| {
        crate::metrics::count(
            &text,
            "hookd_plugin_hook_calls_total",
            &[
                ("tenant", "acme"),
                ("version", version),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(
        (calls(&candidate, "ok"), calls(&candidate, "filtered")),
        (20.0, 10.0),
        "{text}"
    );
    assert_eq!(
        (calls(&current, "ok"), calls(&current, "filtered")),
        (30.0, 0.0)
    );

    // Beyond the planned attempts nothing more is compared, and delivery goes on.
    send_kinds(&engine, &["c", "a"]).await;
    receiver.wait_for(32, WAIT).await;
    let (_, after) = engine.get("/v1/plugins/kinds/shadow").await;
    assert_eq!(after["compared"], 30, "{after}");
    assert_eq!(after["state"], "complete");
}

#[tokio::test]
async fn promote_makes_the_candidate_current_and_discard_drops_it() {
    let (engine, receiver) = kinds_engine().await;

    // Refusals first, each with its code.
    let (status, body) = put_candidate(&engine, "nothing", wasm("json-filter"), 3).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("no_current_version")),
        "{body}"
    );
    let (status, body) = put_candidate(&engine, "kinds", wasm("json-filter"), 3).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("candidate_is_current")),
        "{body}"
    );
    for query in [
        "?stage=candidate&shadow_attempts=0",
        "?stage=candidate&shadow_attempts=10001",
        "?shadow_attempts=5",
    ] {
        let (status, body) = upload(
            &engine,
            ACME_KEY,
            &format!("kinds{query}"),
            wasm("json-filter-next"),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_query")),
            "{query}: {body}"
        );
    }
    let (status, body) = upload(
        &engine,
        ACME_KEY,
        "kinds?stage=later",
        wasm("json-filter-next"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = engine.get("/v1/plugins/kinds/shadow").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("no_shadow")));
    let (status, body) = engine.get("/v1/plugins/nothing/shadow").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    for action in ["promote", "discard"] {
        let (status, body) = engine
            .post(&format!("/v1/plugins/kinds/{action}"), json!({}))
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("no_candidate")),
            "{action}: {body}"
        );
        let (status, body) = engine
            .post(&format!("/v1/plugins/nothing/{action}"), json!({}))
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_found")),
            "{action}: {body}"
        );
    }

    // A shadow run cannot compare on-response: refused whichever side exports it.
    let (status, body) = put_candidate(&engine, "kinds", wasm("body-says-ok"), 3).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("shadow_unsupported")),
        "{body}"
    );
    put_current(&engine, "says", wasm("body-says-ok")).await;
    let (status, body) = put_candidate(&engine, "says", wasm("response-probe"), 3).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("shadow_unsupported")),
        "{body}"
    );

    // Shadow, then promote: the candidate serves at once, without a restart.
    let (status, first) = put_candidate(&engine, "kinds", wasm("json-filter-next"), 3).await;
    assert_eq!(status, 202);
    // The same candidate again (a retried deploy step) goes on with the same run.
    let (status, again) = put_candidate(&engine, "kinds", wasm("json-filter-next"), 3).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(
        again["candidate_version"], first["candidate_version"],
        "{again}"
    );
    let (_, versions) = engine.get("/v1/plugins/kinds/versions").await;
    assert_eq!(versions["data"].as_array().unwrap().len(), 2, "{versions}");
    send_kinds(&engine, &KINDS).await;
    receiver.wait_for(3, WAIT).await;
    let report = report_after(&engine, "kinds", 3).await;
    assert_eq!(
        (report["same"].clone(), report["differing"].clone()),
        (json!(2), json!(1))
    );
    let (status, promoted) = engine.post("/v1/plugins/kinds/promote", json!({})).await;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["version_id"], 2);
    assert_eq!(promoted["version"], "0.2.0-rc.1");
    let (_, report) = engine.get("/v1/plugins/kinds/shadow").await;
    assert_eq!(report["state"], "promoted", "{report}");
    let (_, versions) = engine.get("/v1/plugins/kinds/versions").await;
    assert_eq!(versions["current"], 2);
    assert!(
        versions["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["candidate"] == false),
        "{versions}"
    );
    let sent = send_kinds(&engine, &["c", "a"]).await;
    let got = receiver.wait_for(4, WAIT).await;
    assert_eq!(got.last().unwrap().json()["data"]["kind"], "a");
    let (_, c_event) = engine.get(&format!("/v1/events/{}", sent[0].1)).await;
    let c_delivery = c_event["deliveries"][0]["id"].as_str().unwrap().to_string();
    engine.wait_delivery(&c_delivery, "filtered").await;

    // Discard: the candidate goes, the current version stays, the report says so.
    let same_code = distinct(&wasm("json-filter-next"), "discarded");
    let (status, started) = put_candidate(&engine, "kinds", same_code, 50).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["candidate_version"], 3);
    let (status, discarded) = engine.post("/v1/plugins/kinds/discard", json!({})).await;
    assert_eq!(status, 200, "{discarded}");
    assert_eq!(discarded["state"], "discarded");
    assert_eq!(discarded["candidate_version"], 3);
    let (_, versions) = engine.get("/v1/plugins/kinds/versions").await;
    assert_eq!(versions["current"], 2);
    assert!(
        versions["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["candidate"] == false),
        "{versions}"
    );
    let (status, body) = engine.post("/v1/plugins/kinds/discard", json!({})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("no_candidate")));
    send_kinds(&engine, &["a"]).await;
    receiver.wait_for(5, WAIT).await;
    let (_, report) = engine.get("/v1/plugins/kinds/shadow").await;
    assert_eq!(report["state"], "discarded");
    assert_eq!(
        report["compared"], 0,
        "a discarded candidate runs no more: {report}"
    );

    // A rollback to the candidate's version promotes it too.
    let rolled = distinct(&wasm("json-filter"), "rolled");
    let (status, started) = put_candidate(&engine, "kinds", rolled, 50).await;
    assert_eq!(
        (status, started["candidate_version"].clone()),
        (202, json!(4))
    );
    let (status, body) = engine
        .post("/v1/plugins/kinds/rollback", json!({"version": 4}))
        .await;
    assert_eq!(
        (status, body["version_id"].clone()),
        (200, json!(4)),
        "{body}"
    );
    let (_, report) = engine.get("/v1/plugins/kinds/shadow").await;
    assert_eq!(report["state"], "promoted", "{report}");
    let (status, body) = engine.post("/v1/plugins/kinds/promote", json!({})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("no_candidate")));
}

#[tokio::test]
async fn a_looping_or_trapping_candidate_never_fails_or_delays_a_delivery() {
    let data_dir = tempfile::tempdir().unwrap();
    let deadline = Duration::from_secs(3);
    let config = parse_config(&test_config_toml_with(
        data_dir.path(),
        "",
        true,
        r#"deadline = "3s""#,
    ));
    let engine = TestEngine::start_in(data_dir, config).await;
    let receiver = Receiver::start().await;
    put_current(&engine, "gate", wasm("json-filter")).await;
    engine
        .create_webhook(json!({"url": receiver.url,
            "plugins": [{"name": "gate", "config": kinds_config()}]}))
        .await;

    for (component, code, round) in [
        ("infinite-loop", "plugin_timeout", 1),
        ("trap", "plugin_trap", 2),
    ] {
        let (status, body) = put_candidate(&engine, "gate", wasm(component), 3).await;
        assert_eq!(status, 202, "{component}: {body}");
        // Each delivery arrives well before one candidate run could end (its deadline).
        for kind in KINDS {
            let before = receiver.count();
            let sent_at = Instant::now();
            send_kinds(&engine, &[kind]).await;
            receiver.wait_for(before + 1, WAIT).await;
            let took = sent_at.elapsed();
            assert!(
                took < deadline,
                "{component}: a delivery took {took:?}, as long as the candidate's deadline"
            );
        }
        let report = report_after(&engine, "gate", 3).await;
        assert_eq!(report["candidate_errors"], 3, "{component}: {report}");
        assert_eq!(report["current_errors"], 0);
        assert_eq!(report["differences"]["error"], 3);
        for case in report["cases"].as_array().unwrap() {
            assert_eq!(case["current"]["decision"], "deliver");
            assert_eq!(case["candidate"]["decision"], "error");
            assert_eq!(case["candidate"]["error_code"], code, "{case}");
            if code == "plugin_timeout" {
                let took = case["candidate"]["duration_us"].as_u64().unwrap();
                assert!(took >= 2_900_000, "the loop ran to its deadline: {took} µs");
            }
        }
        let (status, _) = engine.post("/v1/plugins/gate/discard", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(receiver.count(), 3 * round);
    }
    // Every attempt delivered at the first try (once the last outcomes are recorded: the
    // receiver may answer before the attempt is written).
    let deliveries = eventually(WAIT, "6 deliveries recorded", || async {
        let (_, listed) = engine.get("/v1/deliveries?limit=10").await;
        let data = listed["data"].as_array().cloned().unwrap_or_default();
        (data.len() == 6 && data.iter().all(|d| d["status"] != "pending")).then_some(data)
    })
    .await;
    for delivery in &deliveries {
        assert_eq!(delivery["status"], "delivered", "{delivery}");
        assert_eq!(delivery["attempt_count"], 1, "{delivery}");
    }
}

#[tokio::test]
async fn a_shadow_report_survives_a_restart_and_the_run_goes_on() {
    let (engine, receiver) = kinds_engine().await;
    let (status, _) = put_candidate(&engine, "kinds", wasm("json-filter-next"), 6).await;
    assert_eq!(status, 202);
    send_kinds(&engine, &KINDS).await;
    receiver.wait_for(3, WAIT).await;
    let before = report_after(&engine, "kinds", 3).await;
    assert_eq!(before["state"], "running");

    let engine = engine.restart("").await;
    let (status, after) = engine.get("/v1/plugins/kinds/shadow").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["compared"], 3, "{after}");
    assert_eq!(after["differing"], 1);
    assert_eq!(after["cases"], before["cases"]);
    assert_eq!(after["state"], "running");

    // The restarted engine loaded the candidate again and compares the rest.
    send_kinds(&engine, &KINDS).await;
    receiver.wait_for(6, WAIT).await;
    let done = report_after(&engine, "kinds", 6).await;
    assert_eq!(done["state"], "complete", "{done}");
    assert_eq!(
        (done["same"].clone(), done["differing"].clone()),
        (json!(4), json!(2))
    );
    assert_eq!(done["cases"].as_array().unwrap().len(), 2);
}

/// A new current version during a run: the run restarts against it (the report names the
/// version it compares with, and no count mixes two); a current with the candidate's bytes
/// ends the run as promoted (it compared the version with itself, reporting "all same").
#[tokio::test]
async fn a_new_current_version_during_a_run_restarts_it_or_ends_it_as_promoted() {
    let (engine, _receiver) = kinds_engine().await;
    let (status, started) = put_candidate(&engine, "kinds", wasm("json-filter-next"), 50).await;
    assert_eq!(status, 202, "{started}");
    send_kinds(&engine, &KINDS).await;
    report_after(&engine, "kinds", 3).await;

    // Another build of the current plugin: version 3, compared from now on.
    put_current(&engine, "kinds", distinct(&wasm("json-filter"), "rebuild")).await;
    let (_, report) = engine.get("/v1/plugins/kinds/shadow").await;
    assert_eq!(report["current_version"], 3, "{report}");
    assert_eq!(report["compared"], 0, "{report}");
    assert_eq!(report["state"], "running", "{report}");
    send_kinds(&engine, &KINDS).await;
    let report = report_after(&engine, "kinds", 3).await;
    assert_eq!(report["current_version"], 3, "{report}");

    // The candidate's own bytes made current: nothing left to compare.
    put_current(&engine, "kinds", wasm("json-filter-next")).await;
    let (_, report) = engine.get("/v1/plugins/kinds/shadow").await;
    assert_eq!(report["state"], "promoted", "{report}");
}
