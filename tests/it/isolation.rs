//! Tenant isolation: tenant B never sees or changes tenant A's resources (404, not 403),
//! and listings never leak.

use serde_json::json;

use crate::support::{ACME_KEY, GLOBEX_KEY, Receiver, TestEngine};

#[tokio::test]
async fn another_tenants_key_gets_404_on_every_route_and_empty_listings() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let wh = webhook["id"].as_str().unwrap();
    let event = engine
        .send_event("user.created", json!({"secret": "acme data"}))
        .await;
    let evt = event["id"].as_str().unwrap();
    let dlv = event["deliveries"][0]["id"].as_str().unwrap();
    receiver
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;

    let foreign: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("GET", format!("/v1/webhooks/{wh}"), None),
        (
            "PATCH",
            format!("/v1/webhooks/{wh}"),
            Some(json!({"description": "pwned"})),
        ),
        ("DELETE", format!("/v1/webhooks/{wh}"), None),
        ("POST", format!("/v1/webhooks/{wh}/test"), None),
        ("POST", format!("/v1/webhooks/{wh}/rotate-secret"), None),
        (
            "POST",
            format!("/v1/webhooks/{wh}/recover"),
            Some(json!({"since": "0"})),
        ),
        ("GET", format!("/v1/events/{evt}"), None),
        ("GET", format!("/v1/deliveries/{dlv}"), None),
        ("POST", format!("/v1/deliveries/{dlv}/retry"), None),
    ];
    for (method, path, body) in foreign {
        let (status, err) = engine.call(method, &path, GLOBEX_KEY, body).await;
        assert_eq!(status, 404, "{method} {path}: {err}");
        assert_eq!(err["code"], "not_found");
        assert!(!err.to_string().contains("acme"), "{err}");
    }
    for path in [
        "/v1/webhooks",
        "/v1/events",
        "/v1/deliveries",
        &format!("/v1/deliveries?webhook_id={wh}"),
    ] {
        let (status, list) = engine.call("GET", path, GLOBEX_KEY, None).await;
        assert_eq!(status, 200);
        assert_eq!(list["data"].as_array().unwrap().len(), 0, "{path}: {list}");
    }
    // Globex's events never fan out to acme's webhooks.
    let (status, theirs) = engine
        .call(
            "POST",
            "/v1/events",
            GLOBEX_KEY,
            Some(json!({"type": "user.created", "payload": {}})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(theirs["deliveries"].as_array().unwrap().len(), 0);

    // And acme's data is untouched.
    let (status, w) = engine
        .call("GET", &format!("/v1/webhooks/{wh}"), ACME_KEY, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(w["description"], "");
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_with_401() {
    let engine = TestEngine::start().await;
    let response = engine
        .http
        .get(engine.url("/v1/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    let (status, body) = engine.call("GET", "/v1/webhooks", "wrong-key", None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let response = engine
        .http
        .get(engine.url("/v1/webhooks"))
        .header("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Ops endpoints need no key.
    let response = engine
        .http
        .get(engine.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Everything of tenant A a response to tenant B must not contain.
struct Marks {
    webhook: String,
    event: String,
    delivery: String,
    secret: String,
    plugin: &'static str,
    url_path: &'static str,
    description: &'static str,
    event_type: &'static str,
    payload: &'static str,
}

impl Marks {
    fn all(&self) -> Vec<&str> {
        vec![
            &self.webhook,
            &self.event,
            &self.delivery,
            &self.secret["whsec_".len()..],
            self.plugin,
            self.url_path,
            self.description,
            self.event_type,
            self.payload,
        ]
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for mark in self.all() {
            assert!(
                !text.contains(mark),
                "{what} shows `{mark}` of tenant A: {text}"
            );
        }
    }
}

/// An id of the same kind as `id` that names nothing (its last hex digit changed).
fn nonexistent(id: &str) -> String {
    let (head, last) = id.split_at(id.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}

/// Sends `method path` with B's key (JSON `{}` for bodies); returns status and raw body.
async fn as_b(engine: &TestEngine, method: &str, path: &str) -> (u16, String) {
    let mut request = engine
        .http
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            engine.url(path),
        )
        .bearer_auth(GLOBEX_KEY);
    if matches!(method, "POST" | "PATCH") {
        request = request.json(&json!({}));
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The isolation matrix, driven by the live `/openapi.json` so a new route is covered without
/// editing this test: every operation with a path id, called with B's key on A's ids, is a 404
/// `not_found` that shows nothing of A; every listing, stats and search route with B's key
/// (with A's ids in every id-like query parameter) shows nothing of A; admin routes are 403;
/// `/metrics` labels carry only tenant ids and stable codes; and A's data is intact after.
#[tokio::test]
async fn every_documented_route_isolates_tenants_with_another_tenants_key() {
    let data_dir = tempfile::tempdir().unwrap();
    let text = crate::support::test_config_toml(data_dir.path(), "", true).replace(
        r#"event_types = ["user.created"]"#,
        r#"event_types = ["user.created", "acme.private.kind"]"#,
    );
    let engine = TestEngine::start_in(data_dir, crate::support::parse_config(&text)).await;
    let receiver = Receiver::start().await;
    crate::plugins::install(&engine, "acme-private-filter", "json-filter").await;
    let webhook = engine
        .create_webhook(json!({
            "url": format!("{}/acme-private-path", receiver.url),
            "description": "acme-private-description",
            "event_types": ["acme.private.kind"],
            "plugins": [{"name": "acme-private-filter", "config": {"path": "data.kind", "allowed": ["x"]}}],
        }))
        .await;
    let event = engine
        .send_event(
            "acme.private.kind",
            json!({"kind": "x", "note": "acme-private-payload"}),
        )
        .await;
    let marks = Marks {
        webhook: webhook["id"].as_str().unwrap().to_string(),
        event: event["id"].as_str().unwrap().to_string(),
        delivery: event["deliveries"][0]["id"].as_str().unwrap().to_string(),
        secret: webhook["secret"].as_str().unwrap().to_string(),
        plugin: "acme-private-filter",
        url_path: "acme-private-path",
        description: "acme-private-description",
        event_type: "acme.private.kind",
        payload: "acme-private-payload",
    };
    engine.wait_delivery(&marks.delivery, "delivered").await;

    let response = engine
        .http
        .get(engine.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let document: serde_json::Value = response.json().await.unwrap();
    let mut with_id = 0;
    let mut listings = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            if operation.get("responses").is_none() || !path.starts_with("/v1/") {
                continue;
            }
            if path.starts_with("/v1/admin/") {
                let (status, body) = as_b(&engine, &method, path).await;
                assert_eq!(status, 403, "{method} {path}: {body}");
                marks.assert_absent(&format!("{method} {path}"), &body);
                continue;
            }
            if path.contains('{') {
                // A's id in every path parameter, chosen by the collection it names.
                let concrete = path
                    .replace(
                        "/v1/webhooks/{id}",
                        &format!("/v1/webhooks/{}", marks.webhook),
                    )
                    .replace("/v1/events/{id}", &format!("/v1/events/{}", marks.event))
                    .replace(
                        "/v1/deliveries/{id}",
                        &format!("/v1/deliveries/{}", marks.delivery),
                    )
                    .replace(
                        "/v1/plugins/{name}",
                        &format!("/v1/plugins/{}", marks.plugin),
                    );
                assert!(
                    !concrete.contains('{'),
                    "{method} {path}: a new kind of path id; teach this matrix which resource it names"
                );
                let (status, body) = as_b(&engine, &method, &concrete).await;
                if method == "PUT" {
                    // Upload is an upsert in B's own namespace: B may name a plugin like A's
                    // (here with a body that is no component); A's plugin is checked below.
                    assert!(
                        (400..500).contains(&status),
                        "{method} {path}: {status} {body}"
                    );
                } else if status == 422 {
                    // The body `{}` was refused before any lookup (checked below to be the
                    // same answer as for an id that exists nowhere).
                    assert!(body.contains("\"invalid_"), "{method} {path}: {body}");
                } else {
                    assert_eq!(status, 404, "{method} {path}: {body}");
                    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(error["code"], "not_found", "{method} {path}: {body}");
                }
                // An error may name the id B itself sent, and nothing else: the answer is
                // the one B gets for an id that exists nowhere (same kind, one digit changed).
                let (real, fake) = [&marks.webhook, &marks.event, &marks.delivery]
                    .into_iter()
                    .find(|id| concrete.contains(id.as_str()))
                    .map(|id| (id.clone(), nonexistent(id)))
                    .unwrap_or_else(|| (marks.plugin.to_string(), "no-such-plugin".to_string()));
                let (fake_status, fake_body) =
                    as_b(&engine, &method, &concrete.replace(&real, &fake)).await;
                assert_eq!(
                    (status, body.replace(&real, &fake)),
                    (fake_status, fake_body),
                    "{method} {path}: A's resource is distinguishable from none"
                );
                marks.assert_absent(
                    &format!("{method} {concrete}"),
                    &body.replace(&real, "<requested id>"),
                );
                with_id += 1;
            } else if method == "GET" || method == "DELETE" {
                // Listings, stats, search (and purge): A's ids in every id-like query parameter.
                let mut query = Vec::new();
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    let name = parameter["name"].as_str().unwrap();
                    let value = match name {
                        n if n.contains("webhook") => marks.webhook.clone(),
                        n if n.contains("event_type") || n == "type" => marks.event_type.into(),
                        n if n.contains("event") => marks.event.clone(),
                        n if n.contains("delivery") => marks.delivery.clone(),
                        "before" => "2999-01-01T00:00:00Z".into(),
                        _ => continue,
                    };
                    query.push(format!("{name}={value}"));
                }
                for target in [path.clone(), format!("{path}?{}", query.join("&"))] {
                    let (status, body) = as_b(&engine, &method, &target).await;
                    assert!(status < 500, "{method} {target}: {status} {body}");
                    marks.assert_absent(&format!("{method} {target}"), &body);
                    if status == 200 && method == "GET" {
                        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                        if let Some(items) = value["data"].as_array() {
                            assert!(items.is_empty(), "{target}: {body}");
                        }
                        if let Some(totals) = value["totals"].as_object() {
                            for (counter, n) in totals {
                                assert!(
                                    n.is_null() || n == 0,
                                    "{target}: B's {counter} counts A's data: {body}"
                                );
                            }
                        }
                    }
                }
                listings += 1;
            }
        }
    }
    assert!(
        with_id >= 12,
        "only {with_id} operations with ids were probed"
    );
    assert!(listings >= 5, "only {listings} listings were probed");

    // /metrics is an operator route (no key, like /healthz; keep it off the tenant-facing
    // network): its labels are tenant ids and stable codes, never A's resources.
    let metrics = engine
        .http
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    marks.assert_absent("/metrics", &metrics);
    // A request's `route` is one of the router's templates (all documented), never a path.
    let (_, document) = engine.get("/openapi.json").await;
    let templates: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .chain(["unmatched"])
        .collect();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        // The label set ends at the line's last `}` (a route template has braces of its own).
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
        else {
            continue;
        };
        for pair in labels.0.split(',') {
            let (name, value) = pair.split_once('=').unwrap();
            let value = value.trim_matches('"');
            match name {
                "le" | "quantile" => {}
                "tenant" => assert!(["acme", "globex"].contains(&value), "{line}"),
                "route" => assert!(templates.contains(&value), "{line}"),
                "method" => assert!(
                    [
                        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"
                    ]
                    .contains(&value),
                    "{line}"
                ),
                _ => assert!(
                    value.chars().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || "_.+-".contains(c)),
                    "label {name} is not a stable code: {line}"
                ),
            }
        }
    }

    // Nothing B did changed A's data.
    let (status, w) = engine.get(&format!("/v1/webhooks/{}", marks.webhook)).await;
    assert_eq!(
        (status, w["description"].as_str()),
        (200, Some(marks.description))
    );
    let (status, d) = engine
        .get(&format!("/v1/deliveries/{}", marks.delivery))
        .await;
    assert_eq!((status, d["status"].as_str()), (200, Some("delivered")));
    let (status, _) = engine.get(&format!("/v1/events/{}", marks.event)).await;
    assert_eq!(status, 200);
    let (status, _) = engine.get(&format!("/v1/plugins/{}", marks.plugin)).await;
    assert_eq!(status, 200);
    assert_eq!(
        receiver.count(),
        1,
        "B's calls sent nothing to A's receiver"
    );
}

/// The offset bits of an id's hidden part (where a record-counting id would count).
fn offset_field(id: &str) -> i128 {
    let value = u128::from_str_radix(&id[4..], 16).unwrap();
    ((value >> 18) & 0xffff_ffff) as i128
}

#[tokio::test]
async fn event_ids_do_not_count_what_other_tenants_wrote_between_them() {
    let engine = TestEngine::start().await;
    let mut ids = Vec::new();
    for round in 0..3 {
        let event = engine.send_event("user.created", json!({"n": round})).await;
        ids.push(event["id"].as_str().unwrap().to_string());
        // Globex writes `round` events before acme's next one (a few ms apart, so that ids
        // made by a clock's counter do not share a millisecond).
        for n in 0..round {
            let (status, body) = engine
                .call(
                    "POST",
                    "/v1/events",
                    GLOBEX_KEY,
                    Some(json!({"type": "user.created", "payload": {"n": n}})),
                )
                .await;
            assert_eq!(status, 202, "{body}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let last = engine.send_event("user.created", json!({"n": 3})).await;
    ids.push(last["id"].as_str().unwrap().to_string());
    // Ids that name records in write order would step by acme's record plus 0, 1, 2 of
    // globex's: equal second differences. These say nothing of the sort.
    let at: Vec<i128> = ids.iter().map(|id| offset_field(id)).collect();
    let steps: Vec<i128> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        !(steps[2] - steps[1] == steps[1] - steps[0] && steps[1] > steps[0]),
        "acme's ids step by {steps:?}: they count globex's records"
    );
    for id in &ids {
        let (status, event) = engine.get(&format!("/v1/events/{id}")).await;
        assert_eq!((status, event["id"].as_str()), (200, Some(id.as_str())));
    }
}
