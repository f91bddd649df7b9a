//! Restart with deliveries pending: nothing is lost and resends keep their webhook-id.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use crate::support::{Receiver, TestEngine, eventually};

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
