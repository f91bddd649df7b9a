//! Replay: one event to the webhooks matching it now or to one named webhook, and deliveries
//! by filter in bounded requests with a dry-run count; always new deliveries with new
//! `webhook-id`s, never another tenant's.

use std::time::Duration;

use serde_json::json;

use crate::support::{GLOBEX_KEY, Receiver, TestEngine};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_event_is_replayed_to_matching_webhooks_or_one_named_webhook_with_a_new_webhook_id() {
    let engine = TestEngine::start().await;
    let (first, second) = (Receiver::start().await, Receiver::start().await);
    let a = engine
        .create_webhook(json!({"url": first.url, "event_types": ["user.*"]}))
        .await;
    let event = engine
        .post(
            "/v1/events",
            json!({"type": "user.created", "channel": "tel:15550100", "payload": {"n": 1}}),
        )
        .await
        .1;
    let original = first.wait_for(1, WAIT).await;
    // A webhook created since also matches now; replay goes to both.
    let b = engine
        .create_webhook(json!({"url": second.url, "event_types": ["user.created"]}))
        .await;
    let id = event["id"].as_str().unwrap();
    let (status, replayed) = engine
        .post(&format!("/v1/events/{id}/replay"), json!(null))
        .await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["replay_of"], id);
    assert_ne!(replayed["event"]["id"], id);
    assert_eq!(replayed["event"]["channel"], "tel:15550100");
    assert_eq!(replayed["event"]["deliveries"].as_array().unwrap().len(), 2);
    let again = first.wait_for(2, WAIT).await;
    second.wait_for(1, WAIT).await;
    assert_ne!(
        again[1].header("webhook-id"),
        original[0].header("webhook-id")
    );
    assert_eq!(again[1].json()["data"], json!({"n": 1}));
    assert_eq!(again[1].json()["type"], "user.created");

    // To one named webhook only.
    let (status, replayed) = engine
        .post(
            &format!("/v1/events/{id}/replay"),
            json!({"webhook_id": b["id"]}),
        )
        .await;
    assert_eq!(status, 202, "{replayed}");
    let deliveries = replayed["event"]["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["webhook_id"], b["id"]);
    second.wait_for(2, WAIT).await;
    assert_eq!(first.count(), 2);

    // Unknown event or webhook, and another tenant: 404.
    let (status, _) = engine
        .post(
            &format!("/v1/events/{id}/replay"),
            json!({"webhook_id": "wh_nope"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, err) = engine
        .call(
            "POST",
            &format!("/v1/events/{id}/replay"),
            GLOBEX_KEY,
            Some(json!({"webhook_id": a["id"]})),
        )
        .await;
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn deliveries_are_replayed_by_filter_in_bounded_requests_after_a_dry_run_count() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    receiver.respond(400);
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let mut failed = Vec::new();
    for n in 0..5 {
        let event = engine
            .post(
                "/v1/events",
                json!({"type": "order.paid", "channel": if n < 3 { "a" } else { "b" }, "payload": {"n": n}}),
            )
            .await
            .1;
        failed.push(event["deliveries"][0]["id"].as_str().unwrap().to_string());
    }
    for id in &failed {
        engine.wait_delivery(id, "failed").await;
    }
    receiver.respond(200);

    let filter = json!({"webhook_id": webhook["id"], "status": "failed", "channel": "a"});
    let mut dry = filter.clone();
    dry["dry_run"] = json!(true);
    let (status, count) = engine.post("/v1/deliveries/replay", dry).await;
    assert_eq!(status, 200, "{count}");
    assert_eq!(
        (&count["matched"], &count["replayed"]),
        (&json!(3), &json!(0))
    );
    assert_eq!(receiver.count(), 5, "a dry run sends nothing");

    // Two, then the rest with the iterator.
    let mut first = filter.clone();
    first["limit"] = json!(2);
    let (status, page) = engine.post("/v1/deliveries/replay", first.clone()).await;
    assert_eq!(status, 202, "{page}");
    assert_eq!(page["replayed"], 2);
    let iterator = page["iterator"].as_str().unwrap().to_string();
    let mut rest = first;
    rest["iterator"] = json!(iterator);
    let (_, page2) = engine.post("/v1/deliveries/replay", rest).await;
    assert_eq!(
        (&page2["replayed"], &page2["iterator"]),
        (&json!(1), &json!(null))
    );
    let replays: Vec<_> = page["replays"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["replays"].as_array().unwrap())
        .cloned()
        .collect();
    let origins: Vec<&str> = replays
        .iter()
        .map(|r| r["replay_of"].as_str().unwrap())
        .collect();
    // Channel a: the first three events, newest first.
    assert_eq!(origins, [&failed[2], &failed[1], &failed[0]]);
    for replay in &replays {
        engine
            .wait_delivery(replay["delivery_id"].as_str().unwrap(), "delivered")
            .await;
    }
    let got = receiver.wait_for(8, WAIT).await;
    let ids: std::collections::HashSet<String> =
        got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 8, "every replay has its own webhook-id");

    // Bounds, and tenants.
    let (status, err) = engine
        .post("/v1/deliveries/replay", json!({"limit": 1001}))
        .await;
    assert_eq!((status, err["code"].as_str()), (422, Some("invalid_limit")));
    let (status, theirs) = engine
        .call(
            "POST",
            "/v1/deliveries/replay",
            GLOBEX_KEY,
            Some(json!({"status": "failed"})),
        )
        .await;
    assert_eq!((status, &theirs["matched"]), (202, &json!(0)));
    let (status, _) = engine
        .call(
            "POST",
            "/v1/deliveries/replay",
            GLOBEX_KEY,
            Some(json!({"webhook_id": webhook["id"], "dry_run": true})),
        )
        .await;
    assert_eq!(status, 200, "another tenant's webhook filters to nothing");
    // The deliveries list filters by channel too.
    let (_, list) = engine.get("/v1/deliveries?channel=b&status=failed").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["data"][0]["channel"], "b");
}

/// A deleted webhook's deliveries have nowhere to go: a retry is refused and a replay by filter
/// skips them, so nothing is queued where
/// nothing claims (such deliveries stayed `pending` for good, across restarts).
#[tokio::test]
async fn a_deleted_webhooks_deliveries_are_neither_retried_nor_replayed() {
    let engine = TestEngine::start().await;
    let (kept, gone) = (Receiver::start().await, Receiver::start().await);
    engine.create_webhook(json!({"url": kept.url})).await;
    let deleted = engine.create_webhook(json!({"url": gone.url})).await;
    let deleted_id = deleted["id"].as_str().unwrap();
    let event = engine.send_event("user.created", json!({})).await;
    let mut delivery_of_deleted = None;
    for delivery in event["deliveries"].as_array().unwrap() {
        let id = delivery["id"].as_str().unwrap();
        engine.wait_delivery(id, "delivered").await;
        if delivery["webhook_id"] == deleted["id"] {
            delivery_of_deleted = Some(id.to_string());
        }
    }
    let delivery_of_deleted = delivery_of_deleted.expect("a delivery to each webhook");
    let (status, _) = engine
        .call(
            "DELETE",
            &format!("/v1/webhooks/{deleted_id}"),
            crate::support::ACME_KEY,
            None,
        )
        .await;
    assert_eq!(status, 204);

    let (status, err) = engine
        .post(
            &format!("/v1/deliveries/{delivery_of_deleted}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("webhook_deleted")),
        "{err}"
    );
    let (status, replayed) = engine
        .post("/v1/deliveries/replay", json!({"webhook_id": deleted_id}))
        .await;
    assert_eq!(
        (status, &replayed["replayed"]),
        (202, &json!(0)),
        "{replayed}"
    );
    let (status, replayed) = engine
        .post("/v1/deliveries/replay", json!({"status": "delivered"}))
        .await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(
        replayed["replayed"], 1,
        "only the live webhook's: {replayed}"
    );
    kept.wait_for(2, WAIT).await;
    // The replay's outcome is recorded just after the receiver answered.
    crate::support::eventually(WAIT, "nothing left pending", || async {
        let (_, pending) = engine.get("/v1/deliveries?status=pending").await;
        (pending["data"] == json!([])).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gone.count(),
        1,
        "nothing more reached the deleted webhook's URL"
    );

    // A retry that raced the delete (queued after it, behind the API's check) is settled by
    // the dispatcher instead of waiting for good.
    let id = hookd::ids::DeliveryId::parse(&delivery_of_deleted).unwrap();
    engine
        .engine()
        .store()
        .requeue("acme", &id, hookd::ids::now_ms())
        .await
        .unwrap()
        .expect("the delivery exists");
    let settled = engine.wait_delivery(&delivery_of_deleted, "failed").await;
    assert_eq!(settled["last_error"], "webhook_deleted", "{settled}");
    assert_eq!(gone.count(), 1, "and nothing was sent");
}
