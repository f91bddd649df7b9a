//! The event-type catalogue: declared types (description, JSON Schema, example) and types seen
//! in events, `strict_event_types` refusing undeclared types and payloads failing their
//! schema (naming the failing path), test sends using the type's example, and reloads.

use serde_json::{Value, json};

use crate::support::{Receiver, TestEngine, parse_config, test_config_toml};

/// Acme's `event_types` with a detailed entry, strict or not.
fn catalogue_config(dir: &std::path::Path, strict: bool) -> hookd::config::Config {
    let text = test_config_toml(dir, "", true).replace(
        "event_types = [\"user.created\"]\n",
        &format!(
            r#"strict_event_types = {strict}
[[tenants.event_types]]
type = "user.created"
[[tenants.event_types]]
type = "order.paid"
description = "An order was paid <b>in full</b>"
example = {{ id = 42, items = [{{ sku = "A-1", qty = 2 }}] }}
[tenants.event_types.schema]
type = "object"
required = ["id", "items"]
properties.id.type = "integer"
properties.items.type = "array"
properties.items.items.type = "object"
properties.items.items.required = ["sku"]
"#
        ),
    );
    parse_config(&text)
}

async fn start(strict: bool) -> TestEngine {
    let dir = tempfile::tempdir().unwrap();
    let config = catalogue_config(dir.path(), strict);
    TestEngine::start_in(dir, config).await
}

fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == name)
        .unwrap_or_else(|| panic!("{name} in {list}"))
}

#[tokio::test]
async fn the_catalogue_lists_declared_types_with_details_and_types_only_seen() {
    let engine = start(false).await;
    engine.send_event("user.created", json!({})).await;
    engine.send_event("user.created", json!({})).await;
    engine.send_event("legacy.thing", json!({})).await;
    let (status, list) = engine.get("/v1/event-types").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["strict"], false);
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["user.created", "order.paid", "legacy.thing"]);
    let paid = find(&list, "order.paid");
    assert_eq!(paid["declared"], true);
    assert_eq!(paid["description"], "An order was paid <b>in full</b>");
    assert_eq!(paid["example"]["items"][0]["sku"], "A-1");
    assert_eq!(paid["schema"]["required"], json!(["id", "items"]));
    assert_eq!(paid["events_30d"], 0);
    let created = find(&list, "user.created");
    assert_eq!(created["events_30d"], 2);
    assert!(created["last_seen_day"].is_string());
    let legacy = find(&list, "legacy.thing");
    assert_eq!(
        (&legacy["declared"], &legacy["events_30d"]),
        (&json!(false), &json!(1))
    );

    // Without strictness nothing is refused, schema or not.
    let (status, _) = engine
        .post(
            "/v1/events",
            json!({"type": "order.paid", "payload": {"id": "x"}}),
        )
        .await;
    assert_eq!(status, 202);
    // Another tenant sees its own (empty) catalogue.
    let (_, theirs) = engine
        .call("GET", "/v1/event-types", crate::support::GLOBEX_KEY, None)
        .await;
    assert_eq!(theirs["data"], json!([]));
}

#[tokio::test]
async fn strict_tenants_refuse_undeclared_types_and_payloads_failing_the_schema() {
    let engine = start(true).await;
    let (status, err) = engine
        .post("/v1/events", json!({"type": "user.deleted", "payload": {}}))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("unknown_event_type")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("order.paid"),
        "{err}"
    );

    let (status, err) = engine
        .post(
            "/v1/events",
            json!({"type": "order.paid", "payload": {"id": "seven", "items": [{"sku": "a"}, {"qty": 1}]}}),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (422, Some("payload_schema")),
        "{err}"
    );
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("`/id`") && message.contains("`/items/1`"),
        "{message}"
    );

    let (status, _) = engine
        .post(
            "/v1/events",
            json!({"type": "order.paid", "payload": {"id": 7, "items": []}}),
        )
        .await;
    assert_eq!(status, 202);
    // A declared type without a schema takes any payload.
    let (status, _) = engine
        .post(
            "/v1/events",
            json!({"type": "user.created", "payload": [1, "x"]}),
        )
        .await;
    assert_eq!(status, 202);

    // In a batch each event is judged alone.
    let (status, batch) = engine
        .post(
            "/v1/events/batch",
            json!({"events": [
                {"type": "order.paid", "payload": {"id": 1, "items": []}},
                {"type": "nope", "payload": {}},
                {"type": "order.paid", "payload": {"items": []}},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 202);
    assert_eq!(results[1]["error"]["code"], "unknown_event_type");
    assert_eq!(results[2]["error"]["code"], "payload_schema");
    assert!(
        results[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at `/`"),
        "{batch}"
    );

    // A reload that drops strictness applies to the next event.
    let dir = tempfile::tempdir().unwrap();
    let mut relaxed = catalogue_config(dir.path(), false);
    relaxed.data_dir = engine.data_dir.path().to_path_buf();
    engine.engine().config().replace(relaxed);
    let (status, _) = engine
        .post("/v1/events", json!({"type": "user.deleted", "payload": {}}))
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn test_sends_of_a_declared_type_carry_its_example() {
    let engine = start(false).await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();
    let (status, outcome) = engine
        .post(
            &format!("/v1/webhooks/{id}/test"),
            json!({"type": "order.paid"}),
        )
        .await;
    assert_eq!(
        (status, &outcome["delivered"]),
        (200, &json!(true)),
        "{outcome}"
    );
    let got = receiver
        .wait_for(1, std::time::Duration::from_secs(5))
        .await;
    let body = got[0].json();
    assert_eq!(body["type"], "order.paid");
    assert_eq!(
        body["data"],
        json!({"id": 42, "items": [{"sku": "A-1", "qty": 2}]})
    );
    // An explicit payload wins; an undeclared type gets the sample.
    engine
        .post(
            &format!("/v1/webhooks/{id}/test"),
            json!({"type": "order.paid", "payload": {"mine": true}}),
        )
        .await;
    engine
        .post(&format!("/v1/webhooks/{id}/test"), json!({"type": "x.y"}))
        .await;
    let got = receiver
        .wait_for(3, std::time::Duration::from_secs(5))
        .await;
    assert_eq!(got[1].json()["data"], json!({"mine": true}));
    assert!(got[2].json()["data"]["message"].is_string());
}

#[test]
fn config_problems_in_the_catalogue_are_reported_with_their_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    let text = test_config_toml(dir.path(), "", true).replace(
        "event_types = [\"user.created\"]\n",
        r#"event_types = [
  "user.created",
  "user.created",
  { type = "a.b", schema = { type = "wat" } },
  { type = "c.d", schema = { type = "integer" }, example = "text" },
  "bad type",
]
"#,
    );
    let errors = hookd::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "tenants[0].event_types[1]",
            "tenants[0].event_types[2].schema",
            "tenants[0].event_types[3].example",
            "tenants[0].event_types[4]",
        ],
        "{errors}"
    );
}
