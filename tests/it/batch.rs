//! `POST /v1/events/batch`: many events in one request and one group commit, per-event
//! results in order, idempotency per event, refusals with a JSON code.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::crash::{RealEngine, spawn_hookd, spawn_with_webhook};
use crate::support::{ACME_KEY, GLOBEX_KEY, Receiver, TestEngine, eventually};

const WAIT: Duration = Duration::from_secs(10);

fn batch(events: Vec<Value>) -> Value {
    json!({ "events": events })
}

fn statuses(answer: &Value) -> Vec<u64> {
    answer["results"]
        .as_array()
        .expect("results array")
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn every_event_of_a_batch_is_delivered_once_with_a_valid_signature() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine
        .create_webhook(json!({"url": receiver.url, "event_types": ["user.created"]}))
        .await;
    let verifier = standardwebhooks::Webhook::new(webhook["secret"].as_str().unwrap()).unwrap();

    let events = (0..50)
        .map(|n| json!({"type": "user.created", "payload": {"n": n}}))
        .collect();
    let (status, answer) = engine.post("/v1/events/batch", batch(events)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(statuses(&answer), vec![202; 50]);
    let ids: Vec<String> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        50,
        "ids are distinct"
    );

    let got = receiver.wait_for(50, WAIT).await;
    // No extra delivery arrives shortly after (bounded wait; proves "once", not timing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 50);
    let mut seen_n = HashSet::new();
    for request in &got {
        verifier
            .verify(&request.body, &request.headers)
            .expect("signature verifies");
        let body = request.json();
        let index = body["data"]["n"].as_u64().unwrap() as usize;
        assert_eq!(
            body["id"],
            ids[index].as_str(),
            "event id matches its result"
        );
        seen_n.insert(index);
    }
    assert_eq!(seen_n.len(), 50);

    // Each stored event can be read back like a single ingest's.
    let (status, event) = engine.get(&format!("/v1/events/{}", ids[7])).await;
    assert_eq!(status, 200);
    assert_eq!(event["payload"], json!({"n": 7}));
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_invalid_event_is_refused_alone_with_its_code_in_place() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    engine
        .create_webhook(json!({"url": receiver.url, "event_types": ["user.created"]}))
        .await;
    let events = vec![
        json!({"type": "user.created", "payload": {"n": 0}}),
        json!({"type": "bad type!", "payload": {}}),
        json!({"type": "user.created", "payload": {"n": 2}}),
        json!({"type": "hookd.delivery.failing", "payload": {}}),
        json!({"payload": {}}),
        json!({"type": "user.created", "payload": {}, "channel": "no spaces"}),
        json!({"type": "user.created", "payload": {"n": 6}, "unknown": 1}),
        json!({"type": "user.created", "payload": {"n": 7}}),
    ];
    let (status, answer) = engine.post("/v1/events/batch", batch(events)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        statuses(&answer),
        vec![202, 422, 202, 422, 422, 422, 422, 202]
    );
    let codes: Vec<Value> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["code"].clone())
        .collect();
    assert_eq!(codes[1], "invalid_event_type");
    assert_eq!(codes[3], "reserved_event_type");
    assert_eq!(codes[4], "invalid_body");
    assert_eq!(codes[5], "invalid_channel");
    assert_eq!(codes[6], "invalid_body");
    assert!(answer["results"][1]["id"].is_null());
    assert!(answer["results"][0]["error"].is_null());

    let got = receiver.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 3);
    let mut ns: Vec<u64> = got
        .iter()
        .map(|r| r.json()["data"]["n"].as_u64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, vec![0, 2, 7]);
}

#[tokio::test]
async fn idempotency_holds_within_a_batch_across_batches_and_with_single_ingest() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    engine
        .create_webhook(json!({"url": receiver.url, "event_types": ["user.created"]}))
        .await;
    let (status, single) = engine
        .post(
            "/v1/events",
            json!({"type": "user.created", "payload": {"k": "s"}, "id": "key-s"}),
        )
        .await;
    assert_eq!(status, 202);

    let events = vec![
        json!({"type": "user.created", "payload": {"k": "a"}, "id": "key-a"}),
        json!({"type": "user.created", "payload": {"k": "a2"}, "id": "key-a"}),
        json!({"type": "user.created", "payload": {"k": "s2"}, "id": "key-s"}),
        json!({"type": "user.created", "payload": {"k": "b"}, "id": "key-b"}),
    ];
    let (status, first) = engine.post("/v1/events/batch", batch(events.clone())).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(statuses(&first), vec![202, 200, 200, 202]);
    let r = &first["results"];
    assert_eq!(
        r[1]["id"], r[0]["id"],
        "a repeat inside the batch names the first"
    );
    assert_eq!(
        r[2]["id"], single["id"],
        "a repeat of a single ingest names it"
    );

    // The same batch again: nothing new, the same ids.
    let (status, again) = engine.post("/v1/events/batch", batch(events)).await;
    assert_eq!(status, 200);
    assert_eq!(statuses(&again), vec![200, 200, 200, 200]);
    for i in 0..4 {
        assert_eq!(again["results"][i]["id"], first["results"][i]["id"]);
    }

    receiver.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut kinds: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.json()["data"]["k"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["a", "b", "s"],
        "first payload per key, once each"
    );
}

#[tokio::test]
async fn empty_oversized_and_malformed_batches_are_refused_with_a_json_code() {
    let engine = TestEngine::start().await;
    let (status, err) = engine.post("/v1/events/batch", batch(vec![])).await;
    assert_eq!((status, err["code"].as_str()), (422, Some("empty_batch")));

    let too_many = (0..1001)
        .map(|_| json!({"type": "user.created", "payload": {}}))
        .collect();
    let (status, err) = engine.post("/v1/events/batch", batch(too_many)).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (413, Some("batch_too_large"))
    );

    let (status, err) = engine
        .post("/v1/events/batch", json!({"type": "user.created"}))
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["code"], "invalid_body");

    // A body over the batch limit (32 MiB) is refused before it is parsed.
    let huge = "x".repeat(33 * 1024 * 1024);
    let response = engine
        .http
        .post(engine.url("/v1/events/batch"))
        .bearer_auth(ACME_KEY)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"events":[{{"type":"a","payload":"{huge}"}}]}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let err: Value = response.json().await.unwrap();
    assert_eq!(err["code"], "payload_too_large");

    let (status, err) = engine
        .call("POST", "/v1/events/batch", "wrong-key", Some(batch(vec![])))
        .await;
    assert_eq!(status, 401);
    assert_eq!(err["code"], "unauthorized");

    // Nothing was stored by any of these.
    let (_, list) = engine.get("/v1/events").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_batch_reaches_only_its_own_tenants_webhooks_and_keys() {
    let engine = TestEngine::start().await;
    let acme_rx = Receiver::start().await;
    let globex_rx = Receiver::start().await;
    engine
        .create_webhook(json!({"url": acme_rx.url, "event_types": ["*"]}))
        .await;
    let (status, _) = engine
        .call(
            "POST",
            "/v1/webhooks",
            GLOBEX_KEY,
            Some(json!({"url": globex_rx.url, "event_types": ["*"]})),
        )
        .await;
    assert_eq!(status, 201);

    let events = |who: &str| {
        batch(vec![
            json!({"type": "user.created", "payload": {"who": who}, "id": "shared-key"}),
            json!({"type": "user.created", "payload": {"who": who}}),
        ])
    };
    let (status, acme) = engine
        .call("POST", "/v1/events/batch", ACME_KEY, Some(events("acme")))
        .await;
    assert_eq!(status, 200);
    let (status, globex) = engine
        .call(
            "POST",
            "/v1/events/batch",
            GLOBEX_KEY,
            Some(events("globex")),
        )
        .await;
    assert_eq!(status, 200);
    // The same idempotency key in another tenant is another event.
    assert_eq!(statuses(&globex), vec![202, 202]);
    assert_ne!(acme["results"][0]["id"], globex["results"][0]["id"]);

    acme_rx.wait_for(2, WAIT).await;
    globex_rx.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (rx, who) in [(&acme_rx, "acme"), (&globex_rx, "globex")] {
        let got = rx.received();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|r| r.json()["data"]["who"] == who));
    }
    // globex cannot read acme's batch events.
    let id = acme["results"][1]["id"].as_str().unwrap();
    let (status, _) = engine
        .call("GET", &format!("/v1/events/{id}"), GLOBEX_KEY, None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn kill_9_after_batch_answers_loses_no_accepted_event() {
    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();
    let RealEngine {
        dir: _dir,
        config,
        data,
        mut child,
        base,
    } = spawn_with_webhook(&http, &receiver.url).await;

    // Producers post batches of 50 until the process dies; only 202 results count.
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..4 {
        let (http, base, acked) = (http.clone(), base.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut i = 0;
            while Instant::now() < deadline {
                let events: Vec<Value> = (0..50)
                    .map(|_| {
                        i += 1;
                        json!({"type": "user.created", "payload": {"p": p, "i": i}})
                    })
                    .collect();
                let sent = http
                    .post(format!("{base}/v1/events/batch"))
                    .bearer_auth(ACME_KEY)
                    .json(&batch(events))
                    .send()
                    .await;
                let Ok(response) = sent else { break }; // the process is gone
                let Ok(answer) = response.json::<Value>().await else {
                    break;
                };
                let mut acked = acked.lock().unwrap();
                for result in answer["results"].as_array().into_iter().flatten() {
                    if result["status"] == 202 {
                        acked.insert(result["id"].as_str().unwrap().to_string());
                    }
                }
            }
        }));
    }
    eventually(WAIT, "some batches acknowledged", || async {
        (acked.lock().unwrap().len() >= 500).then_some(())
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for producer in producers {
        producer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let (mut child, _base) = spawn_hookd(&config, &data);
    eventually(
        Duration::from_secs(60),
        "every accepted event of every batch delivered",
        || async {
            let delivered: HashSet<String> = receiver
                .received()
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap().to_string())
                .collect();
            acked.is_subset(&delivered).then_some(())
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}
