//! Retention end to end: the background task purges old finished records (never a pending
//! delivery or its event), `DELETE /v1/deliveries?before=` does the same on demand for one
//! tenant (or one channel of it), and statistics survive both. Data dir sizes are printed
//! (`--nocapture`): sled reclaims the space of removed keys gradually, so they are reported,
//! not asserted.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::support::{
    ACME_KEY, GLOBEX_KEY, Receiver, TestEngine, eventually, parse_config, test_config_toml,
};

const WAIT: Duration = Duration::from_secs(20);

/// Bytes of every file under `dir`.
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn first_delivery(event: &Value, webhook: &Value) -> String {
    event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["webhook_id"] == webhook["id"])
        .unwrap_or_else(|| panic!("no delivery to {} in {event}", webhook["id"]))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status_of(engine: &TestEngine, key: &str, path: &str) -> u16 {
    engine.call("GET", path, key, None).await.0
}

#[tokio::test]
async fn the_retention_task_purges_old_finished_records_and_keeps_pending_ones() {
    let data_dir = tempfile::tempdir().unwrap();
    // Records older than 1 s go, looked for every 100 ms; a 500 is retried only in an hour.
    let text = test_config_toml(data_dir.path(), r#"retry_schedule = ["1h"]"#, true)
        + "\n[limits]\nretention = \"1s\"\nretention_interval = \"100ms\"\n";
    let engine = TestEngine::start_in(data_dir, parse_config(&text)).await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.respond(500);
    let wh_ok = engine.create_webhook(json!({"url": ok.url})).await;
    let wh_failing = engine
        .create_webhook(json!({"url": failing.url, "event_types": ["invoice.paid"]}))
        .await;

    let payload = json!({"blob": "x".repeat(4096)});
    let done = engine.send_event("order.paid", payload.clone()).await;
    // Goes to both webhooks: one delivery finishes, the other stays pending.
    let mixed = engine.send_event("invoice.paid", payload).await;
    let done_id = first_delivery(&done, &wh_ok);
    let mixed_ok = first_delivery(&mixed, &wh_ok);
    let mixed_pending = first_delivery(&mixed, &wh_failing);
    let before = dir_size(engine.data_dir.path());

    for (event, delivery) in [(&done, &done_id), (&mixed, &mixed_ok)] {
        eventually(WAIT, &format!("{delivery} purged"), || async {
            (status_of(&engine, ACME_KEY, &format!("/v1/deliveries/{delivery}")).await == 404)
                .then_some(())
        })
        .await;
        assert!(
            ok.received()
                .iter()
                .any(|r| r.header("webhook-id") == *delivery),
            "{event}: purged only after it was delivered"
        );
    }
    // The event goes once none of its deliveries is left; on PostgreSQL that is the purge's
    // next statement, so it is waited for like the deliveries.
    let event = |e: &Value| format!("/v1/events/{}", e["id"].as_str().unwrap());
    eventually(WAIT, "the finished event purged", || async {
        (status_of(&engine, ACME_KEY, &event(&done)).await == 404).then_some(())
    })
    .await;

    // Several more passes later, the pending delivery and its event are still there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, pending) = engine.get(&format!("/v1/deliveries/{mixed_pending}")).await;
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["attempts"].as_array().unwrap().len(), 1);
    let (status, kept) = engine.get(&event(&mixed)).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["deliveries"].as_array().unwrap().len(), 1, "{kept}");
    let (_, list) = engine.get("/v1/deliveries").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");

    // Statistics are counters, not rows: they still count what was purged.
    let (_, stats) = engine.get("/v1/stats").await;
    let totals = &stats["totals"];
    assert_eq!(
        (
            totals["events"].as_u64(),
            totals["deliveries"].as_u64(),
            totals["delivered"].as_u64(),
            totals["pending"].as_u64()
        ),
        (Some(2), Some(3), Some(2), Some(1)),
        "{stats}"
    );
    eprintln!(
        "data dir: {before} bytes before the purge, {} after",
        dir_size(engine.data_dir.path())
    );
}

/// A quiet engine with nothing queued: its old records sit in the log segment still being
/// written, which cannot be deleted whole; the retention task sweeps them out of it.
#[tokio::test]
async fn old_records_go_on_a_quiet_engine_with_nothing_queued() {
    let data_dir = tempfile::tempdir().unwrap();
    let text = test_config_toml(data_dir.path(), "", true)
        + "\n[limits]\nretention = \"1s\"\nretention_interval = \"100ms\"\n";
    let engine = TestEngine::start_in(data_dir, parse_config(&text)).await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let event = engine.send_event("order.paid", json!({"n": 1})).await;
    let delivery = first_delivery(&event, &webhook);
    engine.wait_delivery(&delivery, "delivered").await;
    let event_path = format!("/v1/events/{}", event["id"].as_str().unwrap());
    for path in [format!("/v1/deliveries/{delivery}"), event_path] {
        eventually(WAIT, &format!("{path} purged"), || async {
            (status_of(&engine, ACME_KEY, &path).await == 404).then_some(())
        })
        .await;
    }
    let (_, stats) = engine.get("/v1/stats").await;
    assert_eq!(stats["totals"]["delivered"], 1, "{stats}");
}

/// A reload that shortens `retention_interval` applies at once: the task does not first sit
/// out the interval it was waiting for.
#[tokio::test]
async fn a_shorter_retention_interval_applies_at_the_reload_not_after_the_old_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookd.toml");
    let config = |interval: &str| {
        test_config_toml(&dir.path().join("data"), "", true)
            + &format!("\n[limits]\nretention = \"1s\"\nretention_interval = \"{interval}\"\n")
    };
    std::fs::write(&path, config("1h")).unwrap();
    let loaded = hookd::config::Config::load(&path).unwrap();
    let engine = TestEngine::start_in(tempfile::tempdir().unwrap(), loaded).await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let event = engine.send_event("order.paid", json!({"n": 1})).await;
    let delivery = first_delivery(&event, &webhook);
    engine.wait_delivery(&delivery, "delivered").await;
    // Older than the retention now, but the next pass is an hour away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let path_of = format!("/v1/deliveries/{delivery}");
    assert_eq!(status_of(&engine, ACME_KEY, &path_of).await, 200);

    std::fs::write(&path, config("100ms")).unwrap();
    eventually(WAIT, "purged after the reload", || async {
        (status_of(&engine, ACME_KEY, &path_of).await == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn delete_deliveries_before_purges_only_the_tenants_finished_deliveries() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["1h"]"#).await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.respond(500);
    let wh_ok = engine.create_webhook(json!({"url": ok.url})).await;
    let wh_failing = engine
        .create_webhook(json!({"url": failing.url, "event_types": ["invoice.paid"]}))
        .await;
    let (status, globex_webhook) = engine
        .call(
            "POST",
            "/v1/webhooks",
            GLOBEX_KEY,
            Some(json!({"url": ok.url})),
        )
        .await;
    assert_eq!(status, 201, "{globex_webhook}");

    let payload = json!({"blob": "x".repeat(2048)});
    let mut finished = Vec::new();
    for _ in 0..40 {
        let event = engine.send_event("order.paid", payload.clone()).await;
        finished.push(first_delivery(&event, &wh_ok));
    }
    let (status, once) = engine
        .post(
            "/v1/events",
            json!({"type": "order.paid", "payload": {}, "id": "order-7"}),
        )
        .await;
    assert_eq!(status, 202);
    finished.push(first_delivery(&once, &wh_ok));
    let mixed = engine.send_event("invoice.paid", payload.clone()).await;
    finished.push(first_delivery(&mixed, &wh_ok));
    let pending = first_delivery(&mixed, &wh_failing);
    let (status, theirs) = engine
        .call(
            "POST",
            "/v1/events",
            GLOBEX_KEY,
            Some(json!({"type": "order.paid", "payload": {}})),
        )
        .await;
    assert_eq!(status, 202);
    let theirs_delivery = theirs["deliveries"][0]["id"].as_str().unwrap().to_string();
    ok.wait_for(finished.len() + 1, WAIT).await;
    for id in &finished {
        engine.wait_delivery(id, "delivered").await;
    }
    engine.wait_delivery(&pending, "pending").await;
    let (_, stats_before) = engine.get("/v1/stats").await;
    let size_before = dir_size(engine.data_dir.path());

    // Bad input.
    for (query, code) in [
        ("?before=yesterday", "invalid_time"),
        ("?before=2026-13-01T00:00:00Z", "invalid_time"),
        ("", "invalid_query"),
    ] {
        let (status, err) = engine
            .call("DELETE", &format!("/v1/deliveries{query}"), ACME_KEY, None)
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some(code)),
            "{query}: {err}"
        );
    }

    // Nothing was created before an hour ago.
    let hour_ago = humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(3600));
    let (status, none) = engine
        .call(
            "DELETE",
            &format!("/v1/deliveries?before={hour_ago}"),
            ACME_KEY,
            None,
        )
        .await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none, json!({"deliveries": 0, "attempts": 0, "events": 0}));

    // Everything finished up to now goes; the pending delivery and its event stay.
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1;
    let (status, purged) = engine
        .call(
            "DELETE",
            &format!("/v1/deliveries?before={now_ms}"),
            ACME_KEY,
            None,
        )
        .await;
    assert_eq!(status, 200, "{purged}");
    let n = finished.len() as u64;
    assert_eq!(
        purged,
        json!({"deliveries": n, "attempts": n, "events": n - 1})
    );
    for id in &finished {
        assert_eq!(
            status_of(&engine, ACME_KEY, &format!("/v1/deliveries/{id}")).await,
            404
        );
    }
    let (_, list) = engine.get("/v1/deliveries").await;
    let left: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [pending.as_str()]);
    let (_, events) = engine.get("/v1/events").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events["data"][0]["id"], mixed["id"]);
    let (_, by_webhook) = engine
        .get(&format!(
            "/v1/deliveries?webhook_id={}",
            wh_ok["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        by_webhook["data"].as_array().unwrap().len(),
        0,
        "{by_webhook}"
    );
    // The purged event's idempotency key no longer names a deleted event.
    let (status, again) = engine
        .post(
            "/v1/events",
            json!({"type": "order.paid", "payload": {}, "id": "order-7"}),
        )
        .await;
    assert_eq!(status, 202, "{again}");
    assert_ne!(again["id"], once["id"]);
    engine
        .wait_delivery(&first_delivery(&again, &wh_ok), "delivered")
        .await;

    // The other tenant's records were not touched; its own purge takes only its own.
    let delivery = format!("/v1/deliveries/{theirs_delivery}");
    assert_eq!(status_of(&engine, GLOBEX_KEY, &delivery).await, 200);
    let (status, theirs_purged) = engine
        .call(
            "DELETE",
            &format!("/v1/deliveries?before={now_ms}"),
            GLOBEX_KEY,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        theirs_purged,
        json!({"deliveries": 1, "attempts": 1, "events": 1})
    );
    assert_eq!(status_of(&engine, GLOBEX_KEY, &delivery).await, 404);
    assert_eq!(
        status_of(&engine, ACME_KEY, &format!("/v1/deliveries/{pending}")).await,
        200
    );

    // Statistics are unchanged by the purge (the repeat of order-7 is one new event).
    let (_, stats_after) = engine.get("/v1/stats").await;
    let (before, after) = (&stats_before["totals"], &stats_after["totals"]);
    assert_eq!(after["events"], before["events"].as_u64().unwrap() + 1);
    assert_eq!(
        after["delivered"],
        before["delivered"].as_u64().unwrap() + 1
    );
    assert_eq!(after["failed"], before["failed"]);
    assert_eq!(before["delivered"], n);
    eprintln!(
        "data dir: {size_before} bytes before purging {n} deliveries, {} after",
        dir_size(engine.data_dir.path())
    );
}

#[tokio::test]
async fn delete_deliveries_of_one_channel_leaves_other_channels_pending_ones_and_other_tenants() {
    let engine = TestEngine::start_with(r#"retry_schedule = ["1h"]"#).await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.respond(500);
    let wh_ok = engine.create_webhook(json!({"url": ok.url})).await;
    let wh_failing = engine
        .create_webhook(json!({"url": failing.url, "event_types": ["invoice.paid"]}))
        .await;
    let (status, globex_webhook) = engine
        .call(
            "POST",
            "/v1/webhooks",
            GLOBEX_KEY,
            Some(json!({"url": ok.url})),
        )
        .await;
    assert_eq!(status, 201, "{globex_webhook}");
    let send = |key: &'static str, event_type: &'static str, channel: Option<&'static str>| {
        let engine = &engine;
        async move {
            let mut body = json!({"type": event_type, "payload": {"n": 1}});
            if let Some(channel) = channel {
                body["channel"] = json!(channel);
            }
            let (status, event) = engine.call("POST", "/v1/events", key, Some(body)).await;
            assert_eq!(status, 202, "{event}");
            event
        }
    };
    // On `sms:1`: two finished events and one with a finished and a pending delivery.
    let gone = [
        send(ACME_KEY, "order.paid", Some("sms:1")).await,
        send(ACME_KEY, "order.paid", Some("sms:1")).await,
    ];
    let mixed = send(ACME_KEY, "invoice.paid", Some("sms:1")).await;
    // Elsewhere: another channel, no channel, and the other tenant's `sms:1`.
    let other_channel = send(ACME_KEY, "order.paid", Some("sms:2")).await;
    let no_channel = send(ACME_KEY, "order.paid", None).await;
    let theirs = send(GLOBEX_KEY, "order.paid", Some("sms:1")).await;
    let kept = [
        first_delivery(&other_channel, &wh_ok),
        first_delivery(&no_channel, &wh_ok),
    ];
    let theirs_delivery = theirs["deliveries"][0]["id"].as_str().unwrap().to_string();
    let mixed_ok = first_delivery(&mixed, &wh_ok);
    let pending = first_delivery(&mixed, &wh_failing);
    let purged: Vec<String> = gone
        .iter()
        .map(|e| first_delivery(e, &wh_ok))
        .chain([mixed_ok.clone()])
        .collect();
    for id in purged.iter().chain(&kept) {
        engine.wait_delivery(id, "delivered").await;
    }
    eventually(WAIT, "the other tenant's delivery", || async {
        let (_, d) = engine
            .call(
                "GET",
                &format!("/v1/deliveries/{theirs_delivery}"),
                GLOBEX_KEY,
                None,
            )
            .await;
        (d["status"] == "delivered").then_some(())
    })
    .await;
    engine.wait_delivery(&pending, "pending").await;

    // A malformed channel is refused.
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1;
    let (status, err) = engine
        .call(
            "DELETE",
            &format!("/v1/deliveries?before={now_ms}&channel=sms%201"),
            ACME_KEY,
            None,
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_query")),
        "{err}"
    );

    let (status, answer) = engine
        .call(
            "DELETE",
            &format!("/v1/deliveries?before={now_ms}&channel=sms:1"),
            ACME_KEY,
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    // Three finished deliveries of `sms:1`, and the two events left without deliveries.
    assert_eq!(answer, json!({"deliveries": 3, "attempts": 3, "events": 2}));
    for id in &purged {
        assert_eq!(
            status_of(&engine, ACME_KEY, &format!("/v1/deliveries/{id}")).await,
            404,
            "{id}"
        );
    }
    let event = |e: &Value| format!("/v1/events/{}", e["id"].as_str().unwrap());
    for e in &gone {
        assert_eq!(status_of(&engine, ACME_KEY, &event(e)).await, 404);
    }
    // The pending delivery of `sms:1` and its event stay.
    let (status, still) = engine.get(&format!("/v1/deliveries/{pending}")).await;
    assert_eq!((status, still["status"].as_str()), (200, Some("pending")));
    let (status, mixed_now) = engine.get(&event(&mixed)).await;
    assert_eq!(status, 200, "{mixed_now}");
    // Other channels and no channel stay, and so does the other tenant's `sms:1`.
    for id in &kept {
        assert_eq!(
            status_of(&engine, ACME_KEY, &format!("/v1/deliveries/{id}")).await,
            200,
            "{id}"
        );
    }
    for e in [&other_channel, &no_channel] {
        assert_eq!(status_of(&engine, ACME_KEY, &event(e)).await, 200);
    }
    assert_eq!(
        status_of(
            &engine,
            GLOBEX_KEY,
            &format!("/v1/deliveries/{theirs_delivery}")
        )
        .await,
        200
    );
    assert_eq!(status_of(&engine, GLOBEX_KEY, &event(&theirs)).await, 200);
    let (_, list) = engine.get("/v1/deliveries?channel=sms:1").await;
    let left: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [pending.as_str()], "{list}");

    // Once more: nothing of `sms:1` is left to purge; then `sms:2` alone.
    let purge = |channel: &'static str| {
        let engine = &engine;
        async move {
            engine
                .call(
                    "DELETE",
                    &format!("/v1/deliveries?before={now_ms}&channel={channel}"),
                    ACME_KEY,
                    None,
                )
                .await
        }
    };
    assert_eq!(
        purge("sms:1").await,
        (200, json!({"deliveries": 0, "attempts": 0, "events": 0}))
    );
    assert_eq!(
        purge("sms:2").await,
        (200, json!({"deliveries": 1, "attempts": 1, "events": 1}))
    );
    assert_eq!(
        status_of(&engine, ACME_KEY, &format!("/v1/deliveries/{}", kept[1])).await,
        200,
        "the event without a channel is no channel's"
    );
}
