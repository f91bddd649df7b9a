//! Tests of the plugin host against the real guest components in `plugins/dist/` (built by
//! `plugins/build.sh`): the examples working, every hostile fixture's limit obeyed and
//! violated, the upload pipeline's refusals, hot replacement, the compile cache across a
//! restart, tenant isolation and the admin directory watcher.
//!
//! Debug-profile compiles are slow, so every test shares one host and installs each component
//! once into the `fixtures` tenant ([`fixture`]); tests that need their own tenant or host
//! install again, which the compile cache serves without compiling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::OnceCell;

use super::*;

mod limits;
mod response;

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/dist");
/// The tenant every shared fixture is installed into.
const FIXTURES: &str = "fixtures";
/// A delivery's signing secret (the bytes after `whsec_`).
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn wasm(name: &str) -> Vec<u8> {
    let path = format!("{DIST}/{name}.wasm");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run plugins/build.sh to build the components)"))
}

/// Settings for tests: defaults, except generous time budgets (debug builds on a busy
/// 2-core machine). Tests about the deadline set their own.
fn test_settings() -> PluginSettings {
    PluginSettings {
        compile_timeout: Duration::from_secs(900),
        deadline: Duration::from_secs(20),
        ..PluginSettings::default()
    }
}

struct Shared {
    host: PluginHost,
    _dir: tempfile::TempDir,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();
/// One install per fixture name, shared by every test.
type Installs = HashMap<&'static str, Arc<OnceCell<PluginInfo>>>;
static INSTALLED: Mutex<Option<Installs>> = Mutex::new(None);

/// The host shared by the tests.
async fn shared() -> &'static PluginHost {
    &SHARED
        .get_or_init(|| async {
            let dir = tempfile::tempdir().expect("temp dir");
            let host = PluginHost::open(dir.path(), test_settings()).expect("open host");
            Shared { host, _dir: dir }
        })
        .await
        .host
}

/// The compile cache of the shared host.
async fn shared_cache_dir() -> std::path::PathBuf {
    shared().await;
    SHARED
        .get()
        .map(|s| s._dir.path().join(persist::CACHE_DIR))
        .expect("shared host")
}

/// The shared host with `name` installed (once per test binary) in the `fixtures` tenant.
async fn fixture(name: &'static str) -> &'static PluginHost {
    let host = shared().await;
    let cell = {
        let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        installed
            .get_or_insert_with(HashMap::new)
            .entry(name)
            .or_default()
            .clone()
    };
    cell.get_or_init(|| async {
        host.install(FIXTURES, name, wasm(name))
            .await
            .unwrap_or_else(|e| panic!("installing {name}: {e}"))
    })
    .await;
    host
}

/// An attempt of a Standard Webhooks envelope around `data`.
fn request(delivery_id: &str, data: Value) -> PluginRequest {
    let body = json!({
        "id": "evt_1",
        "type": "invoice.paid",
        "timestamp": "2025-01-01T00:00:00Z",
        "data": data,
    });
    PluginRequest {
        delivery_id: delivery_id.into(),
        event_id: "evt_1".into(),
        event_type: "invoice.paid".into(),
        tenant: FIXTURES.into(),
        channel: None,
        timestamp_ms: 1_735_689_600_000,
        attempt_time_ms: 1_735_689_601_000,
        attempt: 1,
        url: "https://receiver.example/hook".into(),
        method: "POST".into(),
        content_type: "application/json".into(),
        headers: vec![("x-static".into(), "1".into())],
        body: Bytes::from(serde_json::to_vec(&body).expect("json")),
        signing_secret: SECRET.to_vec(),
    }
}

fn step(name: &str, config: Value) -> ChainStep {
    ChainStep {
        name: name.into(),
        config: config.to_string(),
        version: None,
    }
}

async fn run(host: &PluginHost, chain: &[ChainStep], request: PluginRequest) -> ChainRun {
    host.run_chain(FIXTURES, chain, request, &test_settings())
        .await
}

async fn run_with(
    host: &PluginHost,
    chain: &[ChainStep],
    request: PluginRequest,
    settings: &PluginSettings,
) -> ChainRun {
    host.run_chain(FIXTURES, chain, request, settings).await
}

#[track_caller]
fn delivered(run: &ChainRun) -> &OutboundRequest {
    match &run.outcome {
        ChainOutcome::Deliver(request) => request,
        other => panic!("expected delivery, got {other:?} (logs: {:?})", run.logs),
    }
}

#[track_caller]
fn failure(run: &ChainRun) -> (PluginFailureCode, &str) {
    match &run.outcome {
        ChainOutcome::Failed { code, message, .. } => (*code, message.as_str()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[track_caller]
fn body_json(request: &OutboundRequest) -> Value {
    serde_json::from_slice(&request.body).expect("body is JSON")
}

#[track_caller]
fn invalid_reason(result: Result<PluginInfo, PluginLoadError>) -> String {
    match result {
        Err(PluginLoadError::Invalid { reason }) => reason,
        other => panic!("expected plugin_invalid, got {other:?}"),
    }
}

fn header<'a>(request: &'a OutboundRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// Examples

#[tokio::test]
async fn json_filter_delivers_matching_events_and_drops_others() {
    let host = fixture("json-filter").await;
    let chain = [step(
        "json-filter",
        json!({"path": "data.kind", "allowed": ["a"]}),
    )];

    let run1 = run(host, &chain, request("dlv_1", json!({"kind": "a"}))).await;
    let out = delivered(&run1);
    assert_eq!(out.url, "https://receiver.example/hook");
    assert_eq!(out.headers, vec![("x-static".to_string(), "1".to_string())]);

    let run2 = run(host, &chain, request("dlv_2", json!({"kind": "b"}))).await;
    assert_eq!(
        run2.outcome,
        ChainOutcome::Filtered {
            plugin: "json-filter".into()
        }
    );

    let mut not_json = request("dlv_3", json!({}));
    not_json.body = Bytes::from_static(b"not json");
    let run3 = run(host, &chain, not_json).await;
    let (code, _) = failure(&run3);
    assert_eq!(code, PluginFailureCode::InvalidEvent);
    assert!(!code.is_retryable());
}

#[tokio::test]
async fn an_unchanged_body_is_not_copied() {
    let host = fixture("json-filter").await;
    let chain = [step(
        "json-filter",
        json!({"path": "data.kind", "allowed": ["a"]}),
    )];
    let req = request("dlv_same", json!({"kind": "a"}));
    let body_ptr = req.body.as_ptr();
    let result = run(host, &chain, req).await;
    assert_eq!(delivered(&result).body.as_ptr(), body_ptr);
}

#[tokio::test]
async fn reshape_transform_redacts_and_reshapes() {
    let host = fixture("reshape-transform").await;
    let data = json!({"from": "ann", "to": "bob", "content": "hi", "password": "hunter2",
                      "card": {"number": "4111", "exp": "12/30"}});

    let redact = [step(
        "reshape-transform",
        json!({"redact": ["password", "card.number"]}),
    )];
    let result = run(host, &redact, request("dlv_r1", data.clone())).await;
    let body = body_json(delivered(&result));
    assert_eq!(body["data"]["password"], "[REDACTED]");
    assert_eq!(body["data"]["card"]["number"], "[REDACTED]");
    assert_eq!(body["data"]["card"]["exp"], "12/30");
    assert_eq!(body["data"]["content"], "hi");

    let flat = [step(
        "reshape-transform",
        json!({"shape": "flat", "redact": ["password"]}),
    )];
    let result = run(host, &flat, request("dlv_r2", data.clone())).await;
    let out = delivered(&result);
    assert_eq!(out.content_type, "application/json");
    let body = body_json(out);
    assert_eq!(body["from"], "ann");
    assert_eq!(body["to"], "bob");
    assert_eq!(body["content"], "hi");
    assert_eq!(body["type"], "invoice.paid");
    assert_eq!(body["message_id"], "evt_1");
    assert!(!body.to_string().contains("hunter2"));

    let chat = [step(
        "reshape-transform",
        json!({"shape": "chat", "template": "{$type}: {data.content}"}),
    )];
    let result = run(host, &chat, request("dlv_r3", data)).await;
    assert_eq!(
        body_json(delivered(&result)),
        json!({"text": "invoice.paid: hi"})
    );
}

#[tokio::test]
async fn github_signer_header_verifies_with_an_independent_hmac() {
    let host = fixture("github-signer").await;
    let chain = [step("github-signer", json!({}))];
    let req = request("dlv_s1", json!({"n": 1}));
    let body = req.body.clone();
    let result = run(host, &chain, req).await;
    let out = delivered(&result);

    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("hmac key");
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(header(out, "x-hub-signature-256"), Some(expected.as_str()));
    assert_eq!(out.body, body);
}

#[tokio::test]
async fn the_chain_runs_filters_then_transforms_then_signs_the_final_bytes() {
    fixture("json-filter").await;
    fixture("reshape-transform").await;
    let host = fixture("github-signer").await;
    // Listed in the "wrong" order on purpose: the host orders hooks, not the list.
    let chain = [
        step("github-signer", json!({})),
        step("reshape-transform", json!({"shape": "chat"})),
        step(
            "json-filter",
            json!({"path": "data.kind", "allowed": ["a"]}),
        ),
    ];
    let result = run(host, &chain, request("dlv_c1", json!({"kind": "a"}))).await;
    let out = delivered(&result);
    assert!(
        body_json(out).get("text").is_some(),
        "transform did not run"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("hmac key");
    mac.update(&out.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(header(out, "x-hub-signature-256"), Some(expected.as_str()));

    // The filter runs first: a dropped event is never transformed or signed.
    let result = run(host, &chain, request("dlv_c2", json!({"kind": "z"}))).await;
    assert_eq!(
        result.outcome,
        ChainOutcome::Filtered {
            plugin: "json-filter".into()
        }
    );
}

#[tokio::test]
async fn js_and_python_filters_work_with_a_larger_memory_budget() {
    let host = shared().await;
    let settings = PluginSettings {
        memory_limit_bytes: 256 << 20,
        ..test_settings()
    };
    for name in ["js-filter", "py-filter"] {
        let info = host
            .install("polyglot", name, wasm(name))
            .await
            .unwrap_or_else(|e| panic!("installing {name}: {e}"));
        assert_eq!(info.hooks, vec!["filter".to_string()]);
        let chain = [step(name, json!({"path": "data.kind", "allowed": ["a"]}))];
        let ok = host
            .run_chain(
                "polyglot",
                &chain,
                request("dlv_p1", json!({"kind": "a"})),
                &settings,
            )
            .await;
        delivered(&ok);
        let dropped = host
            .run_chain(
                "polyglot",
                &chain,
                request("dlv_p2", json!({"kind": "b"})),
                &settings,
            )
            .await;
        assert_eq!(
            dropped.outcome,
            ChainOutcome::Filtered {
                plugin: name.into()
            },
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile fixtures: each limit obeyed and violated

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_deadline() {
    let host = fixture("infinite-loop").await;
    let settings = PluginSettings {
        deadline: Duration::from_millis(100),
        ..test_settings()
    };
    let result = run_with(
        host,
        &[step("infinite-loop", json!({}))],
        request("dlv_l1", json!({})),
        &settings,
    )
    .await;
    let (code, message) = failure(&result);
    assert_eq!(code, PluginFailureCode::Timeout, "{message}");
    assert!(code.is_retryable());
    eprintln!("infinite loop stopped after {:?}", result.duration);
    // Generous upper bound: the deadline plus a tick, on a loaded machine, in a debug build.
    assert!(
        result.duration < Duration::from_secs(5),
        "took {:?}",
        result.duration
    );
}

#[tokio::test]
async fn a_memory_bomb_under_the_cap_passes_and_over_it_is_plugin_memory() {
    let host = fixture("memory-bomb").await;
    let under = run(
        host,
        &[step("memory-bomb", json!({"mib": 8}))],
        request("dlv_m1", json!({})),
    )
    .await;
    delivered(&under);

    let over = run(
        host,
        &[step("memory-bomb", json!({"mib": 200}))],
        request("dlv_m2", json!({})),
    )
    .await;
    assert_eq!(failure(&over).0, PluginFailureCode::Memory);

    // A per-tenant override raises the cap.
    let bigger = PluginSettings {
        memory_limit_bytes: 512 << 20,
        ..test_settings()
    };
    let allowed = run_with(
        host,
        &[step("memory-bomb", json!({"mib": 200}))],
        request("dlv_m3", json!({})),
        &bigger,
    )
    .await;
    delivered(&allowed);
}

#[tokio::test]
async fn traps_and_plugin_errors_map_to_stable_codes() {
    let host = fixture("trap").await;
    let cases = [
        ("panic", "filter", Some(PluginFailureCode::Trap)),
        ("unreachable", "filter", Some(PluginFailureCode::Trap)),
        ("abort", "transform", Some(PluginFailureCode::Trap)),
        ("panic", "sign", Some(PluginFailureCode::Trap)),
        ("internal", "filter", Some(PluginFailureCode::Error)),
        ("retry-later", "transform", Some(PluginFailureCode::Error)),
        ("invalid-config", "sign", Some(PluginFailureCode::Error)),
        (
            "invalid-event",
            "filter",
            Some(PluginFailureCode::InvalidEvent),
        ),
        ("ok", "filter", None),
    ];
    for (mode, hook, expected) in cases {
        let chain = [step("trap", json!({"mode": mode, "hook": hook}))];
        let result = run(host, &chain, request("dlv_t", json!({}))).await;
        match expected {
            Some(code) => {
                let (got, message) = failure(&result);
                assert_eq!(got, code, "mode {mode} in {hook}: {message}");
                if let ChainOutcome::Failed { plugin, .. } = &result.outcome {
                    assert_eq!(plugin, "trap");
                }
            }
            None => {
                delivered(&result);
            }
        }
    }
    let dropped = run(
        host,
        &[step("trap", json!({"mode": "drop"}))],
        request("dlv_t", json!({})),
    )
    .await;
    assert_eq!(
        dropped.outcome,
        ChainOutcome::Filtered {
            plugin: "trap".into()
        }
    );
}

#[tokio::test]
async fn guest_stderr_is_captured_into_the_attempt_logs() {
    let host = fixture("trap").await;
    let chain = [step("trap", json!({"mode": "panic", "hook": "filter"}))];
    let result = run(host, &chain, request("dlv_stderr", json!({}))).await;
    assert_eq!(failure(&result).0, PluginFailureCode::Trap);
    assert!(
        result
            .logs
            .iter()
            .any(|l| l.level == PluginLogLevel::Stderr && l.message.contains("trap fixture")),
        "panic message not captured: {:?}",
        result.logs
    );
}

#[tokio::test]
async fn a_trap_does_not_poison_the_next_attempt() {
    let host = fixture("trap").await;
    let bad = [step("trap", json!({"mode": "panic", "hook": "filter"}))];
    let fixed = [step("trap", json!({"mode": "ok"}))];
    assert_eq!(
        failure(&run(host, &bad, request("dlv_p", json!({}))).await).0,
        PluginFailureCode::Trap
    );
    delivered(&run(host, &fixed, request("dlv_p", json!({}))).await);
}

#[tokio::test]
async fn oversized_output_is_refused_and_a_small_one_passes() {
    let host = fixture("oversized-output").await;
    let small = run(
        host,
        &[step("oversized-output", json!({"bytes": 1000}))],
        request("dlv_o1", json!({})),
    )
    .await;
    assert_eq!(delivered(&small).body.len(), 1000);

    let big = run(
        host,
        &[step("oversized-output", json!({}))],
        request("dlv_o2", json!({})),
    )
    .await;
    let (code, message) = failure(&big);
    assert_eq!(code, PluginFailureCode::InvalidOutput, "{message}");
    assert!(message.contains("payload"), "{message}");
}

#[tokio::test]
async fn header_injection_is_refused_and_a_valid_header_passes() {
    let host = fixture("header-injection").await;
    for mode in [
        "all",
        "crlf",
        "lf",
        "nul",
        "name-crlf",
        "webhook-signature",
        "webhook-id",
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "remove-webhook-signature",
    ] {
        let result = run(
            host,
            &[step("header-injection", json!({"mode": mode}))],
            request("dlv_h", json!({})),
        )
        .await;
        assert_eq!(
            failure(&result).0,
            PluginFailureCode::InvalidOutput,
            "mode {mode}"
        );
    }
    let valid = run(
        host,
        &[step("header-injection", json!({"mode": "valid"}))],
        request("dlv_h", json!({})),
    )
    .await;
    assert_eq!(header(delivered(&valid), "x-plugin"), Some("ok"));
}

#[tokio::test]
async fn a_changed_url_is_syntax_checked_and_left_to_the_engine_ssrf_guard() {
    let host = fixture("url-to-blocked").await;
    // Syntactically fine: the host passes it on (the engine re-runs its SSRF guard).
    let loopback = run(
        host,
        &[step(
            "url-to-blocked",
            json!({"url": "http://127.0.0.1:9/x"}),
        )],
        request("dlv_u1", json!({})),
    )
    .await;
    assert_eq!(delivered(&loopback).url, "http://127.0.0.1:9/x");

    for bad in [
        "file:///etc/passwd",
        "not a url",
        "http://user:pw@example.com/",
    ] {
        let result = run(
            host,
            &[step("url-to-blocked", json!({"url": bad}))],
            request("dlv_u2", json!({})),
        )
        .await;
        assert_eq!(
            failure(&result).0,
            PluginFailureCode::InvalidOutput,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn the_sandbox_denies_files_env_and_network() {
    let host = fixture("sandbox-probe").await;
    let result = run(
        host,
        &[step("sandbox-probe", json!({}))],
        request("dlv_sb", json!({})),
    )
    .await;
    let report = body_json(delivered(&result));
    for probe in [
        "file", "read_dir", "env_var", "env_vars", "args", "tcp", "dns",
    ] {
        assert_eq!(report[probe]["denied"], true, "{probe}: {report}");
    }
    assert_eq!(report["all_denied"], true);
}

/// The default probes could pass for the wrong reason (nothing listens on 127.0.0.1:80, so a
/// refused connection also reads "denied"): here every target really exists on the host, a
/// file with known content, a variable set in this process, a socket that accepts, and the
/// probe must still see none of them.
#[tokio::test]
async fn the_sandbox_denies_targets_that_exist_on_the_host() {
    let host = fixture("sandbox-probe").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("host-secret.txt");
    std::fs::write(&file, "host-only content").expect("write");
    assert!(std::env::var("PATH").is_ok(), "PATH is set on the host");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).expect("nonblocking");
    let config = json!({
        "path": file.display().to_string(),
        "dir": dir.path().display().to_string(),
        "env": "PATH",
        "tcp": listener.local_addr().expect("addr").to_string(),
        "dns": "localhost",
    });
    let result = run(
        host,
        &[step("sandbox-probe", config)],
        request("dlv_sb_real", json!({})),
    )
    .await;
    let report = body_json(delivered(&result));
    assert_eq!(report["all_denied"], true, "{report}");
    assert!(
        !report.to_string().contains("host-only content"),
        "{report}"
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the guest's connect reached the host's socket"
    );
}

#[tokio::test]
async fn clocks_and_random_are_deterministic_per_delivery_and_attempt_time() {
    let host = fixture("clock-and-random").await;
    let chain = [step("clock-and-random", json!({}))];
    let first = body_json(delivered(
        &run(host, &chain, request("dlv_same", json!({}))).await,
    ));
    let again = body_json(delivered(
        &run(host, &chain, request("dlv_same", json!({}))).await,
    ));
    assert_eq!(first, again);
    let attempt_time = request("x", json!({})).attempt_time_ms;
    assert_eq!(first["wall_clock_ms"], attempt_time);
    assert_eq!(first["std_system_time_ms"], attempt_time);
    assert_eq!(first["attempt_time"], attempt_time);

    let other = body_json(delivered(
        &run(host, &chain, request("dlv_other", json!({}))).await,
    ));
    assert_ne!(first["random_bytes"], other["random_bytes"]);
    assert_ne!(first["random_u64"], other["random_u64"]);
}

#[tokio::test]
async fn logs_are_captured_and_capped() {
    let host = fixture("memory-bomb").await;
    let chain = [step("memory-bomb", json!({"mib": 2}))];
    let roomy = run(host, &chain, request("dlv_log", json!({}))).await;
    delivered(&roomy);
    assert!(!roomy.logs.is_empty(), "memory-bomb logs its progress");
    assert!(roomy.logs.iter().all(|l| l.plugin == "memory-bomb"));
    assert!(!roomy.logs_truncated);

    let tight = PluginSettings {
        max_log_bytes: 8,
        ..test_settings()
    };
    let capped = run_with(host, &chain, request("dlv_log", json!({})), &tight).await;
    delivered(&capped);
    assert!(capped.logs_truncated);
    let kept: usize = capped
        .logs
        .iter()
        .filter(|l| l.plugin != "hookd")
        .map(|l| l.message.len())
        .sum();
    assert!(kept <= 8);
    assert_eq!(capped.logs.last().map(|l| l.plugin.as_str()), Some("hookd"));
}

// ---------------------------------------------------------------------------------------------
// Upload pipeline

#[tokio::test]
async fn a_component_with_a_forbidden_import_is_refused_naming_it() {
    let host = shared().await;
    let reason = invalid_reason(host.install("uploads", "bad", wasm("bad-import")).await);
    assert!(reason.contains("evil:net/socket@0.1.0"), "{reason}");
    assert!(host.info("uploads", "bad").is_none());
}

#[tokio::test]
async fn a_component_of_another_world_is_refused_naming_the_missing_export() {
    let host = shared().await;
    let reason = invalid_reason(host.install("uploads", "wrong", wasm("wrong-world")).await);
    assert!(reason.contains("hookd:plugin/meta@0.1.0"), "{reason}");
}

#[tokio::test]
async fn junk_core_modules_oversized_uploads_and_bad_names_are_refused() {
    let host = shared().await;
    let reason = invalid_reason(host.install("uploads", "junk", b"hello".to_vec()).await);
    assert!(reason.contains("not a WebAssembly component"), "{reason}");
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let reason = invalid_reason(host.install("uploads", "core", core_module).await);
    assert!(reason.contains("core"), "{reason}");
    let too_big = vec![0; test_settings().max_upload_bytes + 1];
    assert!(matches!(
        host.install("uploads", "big", too_big).await,
        Err(PluginLoadError::TooLarge { .. })
    ));
    for name in ["Bad", "../x", "", "a.b"] {
        invalid_reason(host.install("uploads", name, wasm("json-filter")).await);
    }
    invalid_reason(host.install("../other", "x", wasm("json-filter")).await);
}

#[tokio::test]
async fn an_upload_replaces_atomically_and_a_failed_upload_keeps_the_old_version() {
    fixture("json-filter").await;
    let host = fixture("trap").await;
    let tenant = "replace";
    let first = host
        .install(tenant, "p", wasm("json-filter"))
        .await
        .expect("first version");
    assert_eq!(first.hooks, vec!["filter".to_string()]);

    // A broken upload: refused, the old version stays live, the error is recorded.
    invalid_reason(host.install(tenant, "p", wasm("bad-import")).await);
    let info = host.info(tenant, "p").expect("still there");
    assert_eq!(info.sha256, first.sha256);
    assert!(
        info.last_error
            .as_deref()
            .is_some_and(|e| e.contains("evil:net")),
        "{info:?}"
    );
    let chain = [step("p", json!({"path": "data.kind", "allowed": ["a"]}))];
    let still_old = host
        .run_chain(
            tenant,
            &chain,
            request("dlv_x", json!({"kind": "a"})),
            &test_settings(),
        )
        .await;
    delivered(&still_old);

    // A good upload replaces it.
    let second = host
        .install(tenant, "p", wasm("trap"))
        .await
        .expect("second version");
    assert_ne!(second.sha256, first.sha256);
    assert_eq!(second.created_ms, first.created_ms);
    assert!(second.last_error.is_none());
    assert_eq!(
        second.hooks,
        vec!["filter".to_string(), "transform".into(), "sign".into()]
    );
    let new_version = host
        .run_chain(
            tenant,
            &[step("p", json!({"mode": "drop"}))],
            request("dlv_x", json!({})),
            &test_settings(),
        )
        .await;
    assert_eq!(
        new_version.outcome,
        ChainOutcome::Filtered { plugin: "p".into() }
    );

    assert!(host.remove(tenant, "p").await);
    assert!(!host.remove(tenant, "p").await);
    let gone = host
        .run_chain(
            tenant,
            &chain,
            request("dlv_x", json!({})),
            &test_settings(),
        )
        .await;
    assert_eq!(failure(&gone).0, PluginFailureCode::NotFound);
}

#[tokio::test]
async fn validate_config_asks_the_plugin_and_knows_unknown_plugins() {
    let host = fixture("json-filter").await;
    host.validate_config(
        FIXTURES,
        "json-filter",
        r#"{"path":"data.kind","allowed":["a"]}"#,
    )
    .await
    .expect("valid config");
    assert!(matches!(
        host.validate_config(FIXTURES, "json-filter", r#"{"path": 3}"#)
            .await,
        Err(PluginLoadError::InvalidConfig(_))
    ));
    assert_eq!(
        host.validate_config(FIXTURES, "no-such-plugin", "{}").await,
        Err(PluginLoadError::NotFound)
    );
}

#[tokio::test]
async fn tenants_never_see_each_others_plugins() {
    let host = fixture("json-filter").await;
    host.install("tenant-a", "only-a", wasm("json-filter"))
        .await
        .expect("install");
    assert!(host.info("tenant-a", "only-a").is_some());
    assert!(host.info("tenant-b", "only-a").is_none());
    assert!(host.list("tenant-b").is_empty());
    assert_eq!(host.list("tenant-a").len(), 1);
    let chain = [step(
        "only-a",
        json!({"path": "data.kind", "allowed": ["a"]}),
    )];
    let other = host
        .run_chain(
            "tenant-b",
            &chain,
            request("dlv_i", json!({"kind": "a"})),
            &test_settings(),
        )
        .await;
    assert_eq!(failure(&other).0, PluginFailureCode::NotFound);
    assert!(!host.remove("tenant-b", "only-a").await);
    assert!(host.info("tenant-a", "only-a").is_some());
}

#[tokio::test]
async fn a_restart_loads_plugins_from_the_cache_without_compiling() {
    // The component is compiled once in this binary (by the shared host); this state
    // directory shares its compile cache, so no host here compiles it again.
    fixture("json-filter").await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(
        shared_cache_dir().await,
        dir.path().join(persist::CACHE_DIR),
    )
    .expect("symlink the shared cache");
    let first = PluginHost::open(dir.path(), test_settings()).expect("open");
    let info = first
        .install("acme", "f", wasm("json-filter"))
        .await
        .expect("install");
    assert_eq!(first.compile_count(), 0, "the shared cache was not used");
    drop(first);

    let reopened = PluginHost::open(dir.path(), test_settings()).expect("reopen");
    assert_eq!(reopened.compile_count(), 0);
    let restored = reopened.info("acme", "f").expect("restored");
    assert_eq!(restored.sha256, info.sha256);
    assert_eq!(restored.created_ms, info.created_ms);
    assert_eq!(restored.source, PluginSource::Upload);
    let chain = [step("f", json!({"path": "data.kind", "allowed": ["a"]}))];
    let result = reopened
        .run_chain(
            "acme",
            &chain,
            request("dlv_r", json!({"kind": "a"})),
            &test_settings(),
        )
        .await;
    delivered(&result);
}

#[tokio::test]
async fn a_fuel_budget_stops_a_loop_as_plugin_fuel() {
    fixture("infinite-loop").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = PluginSettings {
        fuel: Some(10_000_000),
        deadline: Duration::from_secs(60),
        ..test_settings()
    };
    let host = PluginHost::open(dir.path(), settings.clone()).expect("open");
    host.install("acme", "loop", wasm("infinite-loop"))
        .await
        .expect("install");
    let result = host
        .run_chain(
            "acme",
            &[step("loop", json!({}))],
            request("dlv_f", json!({})),
            &settings,
        )
        .await;
    assert_eq!(failure(&result).0, PluginFailureCode::Fuel);
}

#[tokio::test]
async fn the_admin_directory_loads_changes_and_unloads_plugins() {
    fixture("json-filter").await;
    fixture("trap").await;
    let host = shared().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let tenant_dir = dir.path().join("admin-tenant");
    std::fs::create_dir_all(&tenant_dir).expect("mkdir");
    std::fs::write(tenant_dir.join("watched.wasm"), wasm("json-filter")).expect("write");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = host.watch_dir(dir.path().to_path_buf(), shutdown.clone());

    let eventually = |what: &'static str, check: Box<dyn Fn() -> bool + Send>| async move {
        for _ in 0..600 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting until {what}");
    };
    let h = host.clone();
    eventually(
        "the initial file is loaded",
        Box::new(move || h.info("admin-tenant", "watched").is_some()),
    )
    .await;
    let first = host.info("admin-tenant", "watched").expect("loaded");
    assert_eq!(first.source, PluginSource::AdminDir);

    // A broken file: logged, the old version stays.
    std::fs::write(tenant_dir.join("watched.wasm"), b"garbage").expect("write");
    let h = host.clone();
    eventually(
        "the broken file is recorded",
        Box::new(move || {
            h.info("admin-tenant", "watched")
                .is_some_and(|i| i.last_error.is_some())
        }),
    )
    .await;
    assert_eq!(
        host.info("admin-tenant", "watched").map(|i| i.sha256),
        Some(first.sha256.clone())
    );

    // A new version replaces it.
    std::fs::write(tenant_dir.join("watched.wasm"), wasm("trap")).expect("write");
    let h = host.clone();
    let old = first.sha256.clone();
    eventually(
        "the new version is loaded",
        Box::new(move || {
            h.info("admin-tenant", "watched")
                .is_some_and(|i| i.sha256 != old)
        }),
    )
    .await;

    // Removing the file unloads it.
    std::fs::remove_file(tenant_dir.join("watched.wasm")).expect("rm");
    let h = host.clone();
    eventually(
        "the plugin is unloaded",
        Box::new(move || h.info("admin-tenant", "watched").is_none()),
    )
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("watcher stops")
        .expect("watcher task");
}

#[tokio::test]
async fn an_empty_chain_delivers_unchanged_and_a_missing_plugin_is_not_found() {
    let host = shared().await;
    let req = request("dlv_e", json!({"a": 1}));
    let expected = req.clone().into_outbound();
    let result = run(host, &[], req).await;
    assert_eq!(delivered(&result), &expected);

    let missing = run(
        host,
        &[step("nope", json!({}))],
        request("dlv_e", json!({})),
    )
    .await;
    let (code, _) = failure(&missing);
    assert_eq!(code, PluginFailureCode::NotFound);
    assert_eq!(code.as_str(), "plugin_not_found");
    assert!(code.is_retryable());
}
