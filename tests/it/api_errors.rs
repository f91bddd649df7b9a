//! Bad input gets a JSON error with a stable code and a fitting status, never a panic,
//! a plain-text rejection or a 500.

use serde_json::{Value, json};

use crate::support::{ACME_KEY, TestEngine};

async fn raw(
    engine: &TestEngine,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = engine
        .http
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            engine.url(path),
        )
        .bearer_auth(ACME_KEY)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {:?}", &text[..text.len().min(300)]));
    assert!(
        json["code"].is_string() && json["message"].is_string(),
        "{json}"
    );
    (status, json)
}

#[tokio::test]
async fn malformed_and_misdeclared_bodies_get_400_415_and_422() {
    let engine = TestEngine::start().await;
    let json_type = Some("application/json");
    // (path, content type, body, expected status, expected code)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "/v1/events",
            json_type,
            b"{not json".to_vec(),
            400,
            "invalid_json",
        ),
        ("/v1/events", json_type, b"".to_vec(), 400, "invalid_json"),
        (
            "/v1/events",
            json_type,
            vec![0xff, 0xfe, b'{'],
            400,
            "invalid_json",
        ),
        (
            "/v1/events",
            json_type,
            format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            "/v1/events",
            json_type,
            format!(
                r#"{{"type":"a","payload":{}1{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes(),
            422,
            "payload_too_deep",
        ),
        (
            "/v1/events",
            json_type,
            format!(
                r#"{{"type":"a","payload":{}1{}}}"#,
                "[".repeat(200),
                "]".repeat(199)
            )
            .into_bytes(),
            400,
            "invalid_json",
        ),
        (
            "/v1/events",
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/events",
            None,
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/events",
            json_type,
            br#"{"payload": {}}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            "/v1/events",
            json_type,
            br#"{"type": "a", "payload": {}, "extra": 1}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            "/v1/events",
            json_type,
            br#"{"type": "has space", "payload": {}}"#.to_vec(),
            422,
            "invalid_event_type",
        ),
        (
            "/v1/events",
            json_type,
            br#"{"type": "a", "payload": {}, "channel": ""}"#.to_vec(),
            422,
            "invalid_channel",
        ),
        (
            "/v1/webhooks",
            json_type,
            br#"{"url": 5}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            "/v1/webhooks",
            json_type,
            br#"{"url": "https://example.com/", "event_types": []}"#.to_vec(),
            422,
            "invalid_event_type",
        ),
        (
            "/v1/webhooks",
            json_type,
            br#"{"url": "https://example.com/", "secret": "nope"}"#.to_vec(),
            422,
            "invalid_secret",
        ),
        (
            "/v1/webhooks",
            json_type,
            br#"{"url": "https://example.com/", "max_attempts": 0}"#.to_vec(),
            422,
            "invalid_limit",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(60)
            .collect::<String>();
        let (got_status, err) = raw(&engine, "POST", path, content_type, body).await;
        let shown_err: String = err.to_string().chars().take(300).collect();
        assert_eq!(
            (got_status, err["code"].as_str().unwrap()),
            (status, code),
            "{path} {shown}: {shown_err}"
        );
    }
}

#[tokio::test]
async fn oversized_payloads_get_413() {
    let engine = TestEngine::start().await;
    // Just over the 1 MiB payload limit, inside the envelope allowance: the exact check.
    let payload = "x".repeat(1024 * 1024);
    let (status, err) = engine
        .post(
            "/v1/events",
            json!({"type": "user.created", "payload": payload}),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (413, Some("payload_too_large")),
        "{err}"
    );
    // Far over: the body limit refuses it before parsing.
    let body = format!(
        r#"{{"type":"a","payload":"{}"}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    let (status, err) = raw(
        &engine,
        "POST",
        "/v1/events",
        Some("application/json"),
        body.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (413, Some("payload_too_large")),
        "{err}"
    );
    // Just under passes.
    let payload = "x".repeat(1024 * 1024 - 2);
    let (status, _) = engine
        .post(
            "/v1/events",
            json!({"type": "user.created", "payload": payload}),
        )
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn unknown_ids_routes_and_methods_get_json_404_and_405() {
    let engine = TestEngine::start().await;
    for path in [
        "/v1/webhooks/wh_0000000000000000000000000000000a",
        "/v1/webhooks/not-an-id",
        "/v1/events/evt_0000000000000000000000000000000a",
        "/v1/events/../../etc/passwd",
        "/v1/deliveries/dlv_0000000000000000000000000000000a",
        "/v1/nothing-here",
        "/",
    ] {
        let (status, err) = raw(&engine, "GET", path, None, Vec::new()).await;
        assert_eq!(
            (status, err["code"].as_str().unwrap()),
            (404, "not_found"),
            "{path}"
        );
    }
    let (status, err) = raw(
        &engine,
        "PUT",
        "/v1/events",
        Some("application/json"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str().unwrap()),
        (405, "method_not_allowed")
    );
    let (status, err) = raw(&engine, "GET", "/v1/events?limit=0", None, Vec::new()).await;
    assert_eq!(
        (status, err["code"].as_str().unwrap()),
        (400, "invalid_query")
    );
    let (status, err) = raw(&engine, "GET", "/v1/events?limit=abc", None, Vec::new()).await;
    assert_eq!(
        (status, err["code"].as_str().unwrap()),
        (400, "invalid_query")
    );
    let (status, err) = raw(&engine, "GET", "/v1/events?iterator=zzz", None, Vec::new()).await;
    assert_eq!(
        (status, err["code"].as_str().unwrap()),
        (400, "invalid_iterator")
    );
    let (status, err) = raw(
        &engine,
        "GET",
        "/v1/deliveries?status=lost",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str().unwrap()),
        (400, "invalid_query")
    );
    let (status, err) = raw(
        &engine,
        "GET",
        "/v1/events?after=yesterday",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str().unwrap()),
        (400, "invalid_time")
    );
}

/// serde takes a JSON array as a struct's fields in order; a body is an object or refused.
#[tokio::test]
async fn an_array_body_is_refused_where_an_object_is_expected() {
    let engine = TestEngine::start().await;
    let webhook = engine
        .create_webhook(json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    let id = webhook["id"].as_str().unwrap();
    for (method, path, body) in [
        (
            "POST",
            "/v1/events".to_string(),
            json!(["user.created", {"a": 1}, null, "key-1"]),
        ),
        (
            "PATCH",
            format!("/v1/webhooks/{id}"),
            json!(["http://127.0.0.1:9/other"]),
        ),
        ("PATCH", format!("/v1/webhooks/{id}"), json!([])),
        (
            "POST",
            format!("/v1/webhooks/{id}/test"),
            json!(["user.created"]),
        ),
    ] {
        let (status, err) = engine.call(method, &path, ACME_KEY, Some(body)).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (422, Some("invalid_body")),
            "{path}: {err}"
        );
    }
    let (_, after) = engine.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(after["url"], "http://127.0.0.1:9/hook");
}

/// `null` clears what has an empty value and is refused for what has none.
#[tokio::test]
async fn patching_null_clears_description_headers_and_metadata_and_is_refused_for_the_url() {
    let engine = TestEngine::start().await;
    let webhook = engine
        .create_webhook(json!({
            "url": "http://127.0.0.1:9/hook",
            "description": "orders",
            "headers": {"x-team": "billing"},
            "metadata": {"owner": "ana"},
        }))
        .await;
    let path = format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap());
    let (status, cleared) = engine
        .call(
            "PATCH",
            &path,
            ACME_KEY,
            Some(json!({"description": null, "headers": null, "metadata": null})),
        )
        .await;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(
        (
            &cleared["description"],
            &cleared["headers"],
            &cleared["metadata"]
        ),
        (&json!(""), &json!({}), &json!({})),
        "{cleared}"
    );
    for field in ["url", "event_types", "status", "plugins"] {
        let (status, err) = engine
            .call("PATCH", &path, ACME_KEY, Some(json!({ field: null })))
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (422, Some("invalid_body")),
            "{field}: {err}"
        );
    }
}

/// The `Bearer` scheme is case-insensitive (RFC 9110 §11.1); other schemes are refused.
#[tokio::test]
async fn the_bearer_scheme_is_matched_without_regard_to_case() {
    let engine = TestEngine::start().await;
    for (value, expected) in [
        (format!("Bearer {ACME_KEY}"), 200),
        (format!("bearer {ACME_KEY}"), 200),
        (format!("BEARER  {ACME_KEY}"), 200),
        (format!("Basic {ACME_KEY}"), 401),
        (format!("Bearer{ACME_KEY}"), 401),
        ("bearer ".to_string(), 401),
    ] {
        let response = engine
            .http
            .get(engine.url("/v1/webhooks"))
            .header("authorization", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected, "{value}");
    }
}

/// A `type` filter is one exact type: a wildcard matches nothing stored, so it is refused.
#[tokio::test]
async fn a_wildcard_type_filter_is_refused_instead_of_answered_with_nothing() {
    let engine = TestEngine::start().await;
    engine.send_event("user.created", json!({})).await;
    for path in ["/v1/events?type=user.*", "/v1/deliveries?event_type=user.*"] {
        let (status, err) = engine.get(path).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some("invalid_query")),
            "{path}: {err}"
        );
    }
    let (status, page) = engine.get("/v1/events?type=user.created").await;
    assert_eq!(
        (status, page["data"].as_array().map(Vec::len)),
        (200, Some(1))
    );
}

/// A typo inside a webhook's plugin step is refused like one at the top level, not stored as
/// a step with no config that follows the latest version.
#[tokio::test]
async fn unknown_keys_in_a_plugin_step_are_refused() {
    let engine = TestEngine::start().await;
    let webhook = engine
        .create_webhook(json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    let path = format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap());
    for step in [
        json!({"name": "bo", "confg": {"disable": [403]}}),
        json!({"name": "bo", "versoin": 1}),
    ] {
        let (status, err) = engine
            .post(
                "/v1/webhooks",
                json!({"url": "http://127.0.0.1:9/hook", "plugins": [step]}),
            )
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (422, Some("invalid_body")),
            "{err}"
        );
        assert!(
            err["message"].as_str().unwrap().contains("unknown field"),
            "{err}"
        );
        let (status, err) = engine
            .call("PATCH", &path, ACME_KEY, Some(json!({"plugins": [step]})))
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (422, Some("invalid_body")),
            "{err}"
        );
    }
}

/// JSON that parses but that receivers and plugins cannot read (I-JSON, RFC 7493) is refused
/// at ingest and in a test send, instead of being accepted and failing at every attempt.
#[tokio::test]
async fn a_payload_with_a_lone_surrogate_or_a_number_out_of_range_is_refused() {
    let engine = TestEngine::start().await;
    let webhook = engine
        .create_webhook(json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    let test_path = format!("/v1/webhooks/{}/test", webhook["id"].as_str().unwrap());
    for payload in [
        r#"{"note":"\ud800"}"#,
        r#"{"n":1e400}"#,
        r#"{"n":[-1E999]}"#,
    ] {
        for (path, body) in [
            (
                "/v1/events",
                format!(r#"{{"type":"user.created","payload":{payload}}}"#),
            ),
            (test_path.as_str(), format!(r#"{{"payload":{payload}}}"#)),
        ] {
            let (status, err) = raw(
                &engine,
                "POST",
                path,
                Some("application/json"),
                body.into_bytes(),
            )
            .await;
            assert_eq!(
                (status, err["code"].as_str()),
                (422, Some("payload_not_interoperable")),
                "{path} {payload}: {err}"
            );
        }
    }
    // A surrogate pair and a large but finite number are fine.
    let response = engine
        .http
        .post(engine.url("/v1/events"))
        .bearer_auth(ACME_KEY)
        .header("content-type", "application/json")
        .body(r#"{"type":"user.created","payload":{"s":"\ud83d\ude00","n":1e308}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// Two credentials, two idempotency keys or an empty one are refused, not resolved by
/// guessing (the first used to win; an empty key made every retry a new event).
#[tokio::test]
async fn repeated_authorization_or_idempotency_headers_and_an_empty_key_are_refused() {
    let engine = TestEngine::start().await;
    let send = |headers: Vec<(&'static str, String)>| {
        let mut request = engine
            .http
            .post(engine.url("/v1/events"))
            .json(&json!({"type": "user.created", "payload": {}}));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (
                status,
                body["code"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    let bearer = format!("Bearer {ACME_KEY}");
    let cases = [
        (
            vec![
                ("authorization", bearer.clone()),
                ("authorization", "Bearer other".into()),
            ],
            (400, "invalid_authorization"),
        ),
        (
            vec![
                ("authorization", bearer.clone()),
                ("idempotency-key", "a".into()),
                ("idempotency-key", "b".into()),
            ],
            (400, "invalid_idempotency_key"),
        ),
        (
            vec![
                ("authorization", bearer.clone()),
                ("idempotency-key", String::new()),
            ],
            (400, "invalid_idempotency_key"),
        ),
    ];
    for (headers, (status, code)) in cases {
        assert_eq!(send(headers).await, (status, code.to_string()));
    }
    assert_eq!(send(vec![("authorization", bearer)]).await.0, 202);
}
