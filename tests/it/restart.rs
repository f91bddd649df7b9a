//! Restart with deliveries pending: nothing is lost and resends keep their webhook-id.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use crate::crash::{KillOnDrop, spawn_hookd_logged};
use crate::support::{ACME_KEY, Receiver, TestEngine, eventually, files, test_config_toml};

#[tokio::test]
async fn pending_deliveries_survive_a_restart_and_keep_their_webhook_id() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(200));
    engine
        .create_webhook(json!({"url": receiver.url, "max_in_flight": 1}))
        .await;
    let mut expected = HashSet::new();
    for i in 0..8 {
        let event = engine.send_event("user.created", json!({"i": i})).await;
        expected.insert(event["deliveries"][0]["id"].as_str().unwrap().to_string());
    }
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let engine = engine.restart("").await;

    let received = eventually(
        Duration::from_secs(20),
        "every delivery after restart",
        || async {
            let seen: HashSet<String> = receiver
                .received()
                .iter()
                .map(|r| r.header("webhook-id"))
                .collect();
            (seen == expected).then_some(receiver.received())
        },
    )
    .await;
    // A resend is the same delivery: same webhook-id, same body.
    let mut bodies: HashMap<String, bytes::Bytes> = HashMap::new();
    for request in &received {
        let previous = bodies.insert(request.header("webhook-id"), request.body.clone());
        if let Some(previous) = previous {
            assert_eq!(previous, request.body);
        }
    }
    for id in &expected {
        engine.wait_delivery(id, "delivered").await;
    }
}

/// Bytes of the data dir damaged on disk after a clean stop (one event's payload, another's
/// stored type): the first delivery fails as `event_missing` and the second is left aside, each
/// once, instead of being claimed again at once forever; the rest are delivered. sled only
/// (it edits the embedded store's log files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_log_records_fail_or_set_aside_their_deliveries_instead_of_spinning() {
    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("hookd.toml");
    std::fs::write(&config, test_config_toml(&data, "", true)).unwrap();
    let (child, base, _) = spawn_hookd_logged(&config, &data, "info");
    let mut child = KillOnDrop(child);
    let call = |method: &str, path: String, body: serde_json::Value| {
        http.request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(ACME_KEY)
            .json(&body)
            .send()
    };
    let hook: serde_json::Value = call("POST", "/v1/webhooks".into(), json!({"url": receiver.url}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hook_path = format!("/v1/webhooks/{}", hook["id"].as_str().unwrap());
    let paused = call("PATCH", hook_path.clone(), json!({"status": "paused"}))
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    let mut delivery_of = Vec::new();
    for (event_type, payload) in [
        ("order.paid", json!({"n": 1})),
        ("order.paid", json!({"marker": "PAYLOAD-7f3a-DAMAGED"})),
        ("meta.b9c2.damaged", json!({"n": 2})),
        ("order.paid", json!({"n": 3})),
    ] {
        let answer = call(
            "POST",
            "/v1/events".into(),
            json!({"type": event_type, "payload": payload}),
        )
        .await
        .unwrap();
        assert_eq!(answer.status(), 202);
        let event: serde_json::Value = answer.json().await.unwrap();
        delivery_of.push(event["deliveries"][0]["id"].as_str().unwrap().to_string());
    }
    // A clean stop (SIGTERM), then one byte changed in each marker.
    let term = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    assert!(crate::crash::wait_with_timeout(&mut child.0, Duration::from_secs(30)).success());
    let mut damaged = 0;
    for segment in files(&data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
    {
        let mut bytes = std::fs::read(&segment).unwrap();
        for marker in [&b"PAYLOAD-7f3a-DAMAGED"[..], &b"meta.b9c2.damaged"[..]] {
            if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
                bytes[at] ^= 0x01;
                damaged += 1;
            }
        }
        std::fs::write(&segment, bytes).unwrap();
    }
    assert_eq!(damaged, 2, "each marker is in the log once");

    let (child, base, log) = spawn_hookd_logged(&config, &data, "info");
    let child = KillOnDrop(child);
    let call = |method: &str, path: String, body: serde_json::Value| {
        http.request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(ACME_KEY)
            .json(&body)
            .send()
    };
    let resumed = call("PATCH", hook_path, json!({"status": "active"}))
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let delivery = |id: String| {
        let request = http
            .get(format!("{base}/v1/deliveries/{id}"))
            .bearer_auth(ACME_KEY)
            .send();
        async move {
            let answer = request.await.unwrap();
            (
                answer.status().as_u16(),
                answer.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let failed = eventually(
        Duration::from_secs(20),
        "the damaged payload's delivery fails",
        || async {
            let (_, d) = delivery(delivery_of[1].clone()).await;
            (d["status"] == "failed").then_some(d)
        },
    )
    .await;
    assert_eq!(failed["last_error"], "event_missing", "{failed}");
    for id in [&delivery_of[0], &delivery_of[3]] {
        eventually(
            Duration::from_secs(20),
            "the intact events are delivered",
            || async {
                let (_, d) = delivery(id.clone()).await;
                (d["status"] == "delivered").then_some(())
            },
        )
        .await;
    }
    assert_eq!(
        delivery(delivery_of[2].clone()).await.0,
        404,
        "a damaged record reads as absent"
    );
    assert_eq!(receiver.count(), 2, "only the intact events were sent");

    // Over the next 2 s the engine is idle: the stale entry was set aside, not claimed again.
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.0.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu() - before;
    assert!(ticks < 50, "an idle engine used {ticks} clock ticks in 2 s");
    let lines = log.lock().unwrap().clone();
    let set_aside = lines
        .iter()
        .filter(|l| l.contains("it is left aside"))
        .count();
    assert_eq!(
        set_aside, 1,
        "the stale entry is looked at once: {lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("damaged; the delivery fails"))
            .count(),
        1
    );
    drop(child);
}

/// A stop waits up to `[delivery] shutdown_grace` for attempts in flight: one that ends within
/// it is recorded and never sent again; one still running when it ends is abandoned and sent
/// again after the restart, with the same webhook-id.
#[tokio::test]
async fn a_stop_waits_the_shutdown_grace_for_attempts_in_flight_and_resends_the_rest() {
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(1500));
    let waits = r#"shutdown_grace = "5s"
attempt_timeout = "10s""#;
    let engine = TestEngine::start_with(waits).await;
    engine.create_webhook(json!({"url": receiver.url})).await;
    let event = engine.send_event("user.created", json!({"n": 1})).await;
    let delivery = event["deliveries"][0]["id"].as_str().unwrap().to_string();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // The receiver is still answering when the stop begins: the stop waits for it.
    let engine = engine.restart(waits).await;
    let (_, seen) = engine.get(&format!("/v1/deliveries/{delivery}")).await;
    assert_eq!(seen["status"], "delivered", "{seen}");
    assert_eq!(seen["attempts"].as_array().unwrap().len(), 1, "{seen}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 1, "a finished attempt is not sent again");

    // No grace: the attempt in flight is abandoned at once and sent again after the restart.
    let abandons = r#"shutdown_grace = "0s"
attempt_timeout = "10s""#;
    let engine = engine.restart(abandons).await;
    receiver.delay(Duration::from_secs(3));
    let event = engine.send_event("user.created", json!({"n": 2})).await;
    let delivery = event["deliveries"][0]["id"].as_str().unwrap().to_string();
    receiver.wait_for(2, Duration::from_secs(10)).await;
    receiver.delay(Duration::ZERO);
    let engine = engine.restart(abandons).await;
    let seen = engine.wait_delivery(&delivery, "delivered").await;
    let sends: Vec<String> = receiver.received()[1..]
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(
        sends,
        [delivery.clone(), delivery],
        "sent again, same webhook-id"
    );
    assert_eq!(seen["attempts"].as_array().unwrap().len(), 1, "{seen}");
}
