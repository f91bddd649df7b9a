//! The `on-response` hook (`hookd:plugin@0.2.0`) in the host, against real components:
//! `body-says-ok` (the example) and `response-probe` (a fixture that returns what its config
//! says, traps, loops or fails), beside 0.1.0 components on the same chain.

use super::*;

/// A receiver's answer with a JSON body.
fn answer(status: u16, body: Value) -> PluginResponse {
    PluginResponse {
        status,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-probe".into(), "seen".into()),
        ],
        body: serde_json::to_vec(&body).expect("json"),
        body_truncated: false,
    }
}

async fn respond(
    host: &PluginHost,
    chain: &[ChainStep],
    response: PluginResponse,
    settings: &PluginSettings,
) -> ResponseRun {
    host.run_on_response(
        FIXTURES,
        chain,
        request("dlv_r", json!({"kind": "a"})),
        response,
        settings,
    )
    .await
}

#[track_caller]
fn decided(run: &ResponseRun) -> (&str, &ResponseDecision) {
    match &run.decision {
        Some((plugin, decision)) => (plugin.as_str(), decision),
        None => panic!("expected a decision, got none (logs: {:?})", run.logs),
    }
}

#[tokio::test]
async fn a_0_2_0_component_declares_on_response_and_a_0_1_0_one_does_not() {
    let host = fixture("body-says-ok").await;
    let info = host.info(FIXTURES, "body-says-ok").expect("installed");
    assert_eq!(info.hooks, vec!["on-response".to_string()]);
    let host = fixture("response-probe").await;
    let info = host.info(FIXTURES, "response-probe").expect("installed");
    assert_eq!(info.hooks, vec!["filter".to_string(), "on-response".into()]);
    let host = fixture("json-filter").await;
    let info = host.info(FIXTURES, "json-filter").expect("installed");
    assert_eq!(info.hooks, vec!["filter".to_string()]);
    let chain = [step(
        "json-filter",
        json!({"path": "data.kind", "allowed": ["a"]}),
    )];
    assert!(!host.handles_responses(FIXTURES, &chain));
    let run = respond(host, &chain, answer(500, json!({})), &test_settings()).await;
    assert_eq!((run.ran, run.decision), (0, None));
}

#[tokio::test]
async fn body_says_ok_reads_the_body_and_the_configured_statuses() {
    let host = fixture("body-says-ok").await;
    let settings = test_settings();
    let config = json!({"retry_after": 30, "fail": [422], "disable": [403]});
    let chain = [step("body-says-ok", config)];
    assert!(host.handles_responses(FIXTURES, &chain));

    let run = respond(host, &chain, answer(200, json!({"ok": false})), &settings).await;
    assert_eq!(
        decided(&run),
        (
            "body-says-ok",
            &ResponseDecision::Retry {
                after: Some(Duration::from_secs(30))
            }
        )
    );
    assert!(
        run.logs.iter().any(|l| l.message.contains("not ok")),
        "{:?}",
        run.logs
    );

    let run = respond(host, &chain, answer(500, json!({"ok": true})), &settings).await;
    assert_eq!(decided(&run).1, &ResponseDecision::Delivered);

    let run = respond(
        host,
        &chain,
        answer(422, json!({"error": "bad"})),
        &settings,
    )
    .await;
    assert_eq!(
        decided(&run).1,
        &ResponseDecision::Fail {
            message: "the receiver answered 422: bad".into()
        }
    );

    let run = respond(
        host,
        &chain,
        answer(403, json!({"message": "closed"})),
        &settings,
    )
    .await;
    assert_eq!(
        decided(&run).1,
        &ResponseDecision::Disable {
            reason: "the receiver answered 403: closed".into()
        }
    );

    // Nothing to read: hookd's own rules.
    let run = respond(host, &chain, answer(503, json!("busy")), &settings).await;
    assert_eq!((run.ran, run.decision), (1, None));
}

#[tokio::test]
async fn the_hook_sees_the_status_headers_and_body_but_not_hookd_signature_headers() {
    let host = fixture("response-probe").await;
    let mut sent = request("dlv_seen", json!({"kind": "a"}));
    sent.headers
        .push(("webhook-signature".into(), "v1,secret".into()));
    let mut response = answer(201, json!({"n": 1}));
    response.body_truncated = true;
    let run = host
        .run_on_response(
            FIXTURES,
            &[step("response-probe", json!({"do": "default"}))],
            sent,
            response,
            &test_settings(),
        )
        .await;
    assert_eq!(run.decision, None);
    let seen = run
        .logs
        .iter()
        .find(|l| l.message.starts_with("saw "))
        .unwrap_or_else(|| panic!("the probe logs what it saw: {:?}", run.logs));
    assert_eq!(
        seen.message,
        "saw status=201 headers=[content-type,x-probe] body_bytes=7 body_truncated=true \
         request_headers=1 x-probe=seen"
    );
}

#[tokio::test]
async fn the_first_decision_other_than_default_wins_in_chain_order() {
    let host = fixture("response-probe").await;
    fixture("body-says-ok").await;
    fixture("json-filter").await;
    let chain = [
        // 0.1.0: runs before the send only.
        step(
            "json-filter",
            json!({"path": "data.kind", "allowed": ["a"]}),
        ),
        step("response-probe", json!({"do": "default"})),
        step("body-says-ok", json!({})),
    ];
    let before = run(host, &chain, request("dlv_mix", json!({"kind": "a"}))).await;
    delivered(&before);
    let run = respond(
        host,
        &chain,
        answer(200, json!({"ok": false})),
        &test_settings(),
    )
    .await;
    assert_eq!(run.ran, 2, "json-filter has no response hook");
    assert_eq!(
        decided(&run),
        ("body-says-ok", &ResponseDecision::Retry { after: None })
    );
}

#[tokio::test]
async fn a_failing_response_hook_counts_as_default_and_is_logged() {
    let host = fixture("response-probe").await;
    fixture("body-says-ok").await;
    let settings = PluginSettings {
        deadline: Duration::from_millis(200),
        ..test_settings()
    };
    for (action, code) in [
        ("panic", "plugin_trap"),
        ("loop", "plugin_timeout"),
        ("error", "plugin_error"),
    ] {
        let chain = [step("response-probe", json!({"do": action}))];
        let run = respond(host, &chain, answer(500, json!({"ok": true})), &settings).await;
        assert_eq!(run.decision, None, "{action}");
        let failed = run
            .logs
            .iter()
            .find(|l| l.plugin == "hookd")
            .unwrap_or_else(|| panic!("{action}: the failure is logged: {:?}", run.logs));
        assert!(
            failed.message.contains(&format!(
                "plugin `response-probe` on-response failed ({code})"
            )) && failed.message.contains("default verdict applies"),
            "{action}: {}",
            failed.message
        );
        // The next plugin still decides.
        let chain = [
            step("response-probe", json!({"do": action})),
            step("body-says-ok", json!({})),
        ];
        let run = respond(host, &chain, answer(500, json!({"ok": true})), &settings).await;
        assert_eq!(
            decided(&run),
            ("body-says-ok", &ResponseDecision::Delivered)
        );
    }
}

#[tokio::test]
async fn every_decision_of_the_probe_maps() {
    let host = fixture("response-probe").await;
    let settings = test_settings();
    let cases = [
        (json!({"do": "delivered"}), ResponseDecision::Delivered),
        (
            json!({"do": "retry"}),
            ResponseDecision::Retry { after: None },
        ),
        (
            json!({"do": "retry", "after": 7}),
            ResponseDecision::Retry {
                after: Some(Duration::from_secs(7)),
            },
        ),
        (
            json!({"do": "fail", "message": "nope"}),
            ResponseDecision::Fail {
                message: "nope".into(),
            },
        ),
        (
            json!({"do": "disable", "message": "gone\nfor good"}),
            ResponseDecision::Disable {
                reason: "gone for good".into(),
            },
        ),
    ];
    for (config, expected) in cases {
        let chain = [step("response-probe", config.clone())];
        let run = respond(host, &chain, answer(200, json!({})), &settings).await;
        assert_eq!(decided(&run).1, &expected, "{config}");
    }
}
