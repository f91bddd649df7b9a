//! Property-based API fuzzing with schemathesis (PyPI) against the live `/openapi.json` of an
//! in-process engine that holds a webhook, an event and its delivery: every generated request
//! must get an answer that is not a 5xx and that matches the document (status, content type,
//! body schema, headers). Bounded: a fixed seed, a capped number of cases per operation and a
//! time budget.
//!
//! schemathesis is installed on first use into `target/schemathesis-venv` (pinned below),
//! and reinstalled only when the pin changes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{ACME_KEY, TestEngine};

/// The schemathesis release this test is written against (its CLI options and checks).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Cases per operation and phase, and the whole run's time budget (2 cores, shared).
const MAX_EXAMPLES: &str = "25";
const MAX_TIME_SECS: &str = "120";

fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis-venv")
}

/// Creates the venv and installs schemathesis unless that exact pin is installed already;
/// returns the `schemathesis` executable.
fn install_schemathesis() -> PathBuf {
    let dir = venv_dir();
    let exe = dir.join("bin/schemathesis");
    let stamp = dir.join("installed.txt");
    if exe.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(SCHEMATHESIS) {
        return exe;
    }
    // Python 3.12 where there is one: under 3.11 hypothesis sometimes fails inside CPython's
    // `ast` ("recursion depth mismatch") while describing a strategy, an error of the tool.
    let python = ["python3.12", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("python3 is installed");
    let status = Command::new(python)
        .args(["-m", "venv", "--clear"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "creating {} failed", dir.display());
    let status = Command::new(dir.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(["--quiet", "--retries", "2", "--timeout", "30", SCHEMATHESIS])
        .status()
        .unwrap();
    assert!(status.success(), "pip install {SCHEMATHESIS} failed");
    std::fs::write(&stamp, SCHEMATHESIS).unwrap();
    exe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_that_breaks_the_document() {
    let exe = tokio::task::spawn_blocking(install_schemathesis)
        .await
        .unwrap();
    let engine = TestEngine::start().await;
    // Data for the operations that need ids (the run also creates its own).
    let receiver = crate::support::Receiver::start().await;
    let webhook = engine
        .create_webhook(json!({"url": receiver.url, "event_types": ["*"]}))
        .await;
    let event = engine.send_event("user.created", json!({"n": 1})).await;
    let report = tempfile::tempdir().unwrap();

    // schemathesis itself sometimes fails while *generating* a case under Python 3.11
    // (reported as a "Runtime Error" of the run, with no check failed): such a run is repeated
    // once. A failed check is never retried.
    for run in 1..=2 {
        let started = Instant::now();
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("run")
            .arg(engine.url("/openapi.json"))
            .args(["--header", &format!("Authorization: Bearer {ACME_KEY}")])
            .args(["--checks", "all"])
            // Excluded checks, each for a stated reason:
            // - positive_data_acceptance / negative_data_rejection judge whether the document
            //   states every validation rule (event-type and channel syntax, the two time
            //   spellings, webhook filter patterns) as JSON Schema; it states them in prose, so
            //   these flag the document's precision, not the server's behaviour. Their findings
            //   that were real (optional bodies sent as `null`, `days` placed in the path, page
            //   bounds) are fixed and covered by `null_optional_bodies_and_documented_bounds`.
            .args([
                "--exclude-checks",
                "positive_data_acceptance,negative_data_rejection",
            ])
            // Admin routes need an admin key (tests/it/ops.rs covers them); plugin uploads are
            // WebAssembly components, which random bytes never are (plugins.rs and
            // hostile_http.rs cover them).
            .args(["--exclude-path-regex", "^/v1/admin/"])
            .args(["--exclude-operation-id", "put_plugin"])
            // Webhook URLs name hosts that hookd resolves (create-time SSRF check) through the
            // system resolver, which is not on loopback: generated URLs like
            // https://example.com/ would send DNS queries off this machine. Creating and
            // changing webhooks is covered with IP-literal URLs elsewhere (webhooks, ssrf tests);
            // every other operation runs against the loopback webhook made above.
            .args(["--exclude-operation-id", "create_webhook"])
            .args(["--exclude-operation-id", "update_webhook"])
            // The coverage phase is left out: under Python 3.11 (what this machine has)
            // schemathesis 4.32.5 fails inside it while building cases (a KeyError /
            // FlakyFailure out of hypothesis' lambda-source cache), an error of the tool that
            // made runs fail at random; examples and fuzzing run every operation.
            .args(["--phases", "examples,fuzzing"])
            .args(["--max-examples", MAX_EXAMPLES, "--max-time", MAX_TIME_SECS])
            .args(["--seed", "20261123", "--workers", "2"])
            .args(["--request-timeout", "20", "--no-color"])
            .args(["--generation-database", "none"])
            .env("SCHEMATHESIS_REPORT_DIR", report.path())
            .current_dir(report.path())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(600), command.output())
            .await
            .expect("schemathesis finishes within 10 minutes")
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        eprintln!(
            "schemathesis run {run} took {:?}; webhook {} event {}\n{}",
            started.elapsed(),
            webhook["id"],
            event["id"],
            stdout
                .lines()
                .rev()
                .take(25)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        if output.status.success() {
            return;
        }
        let tool_error_only = stdout.contains("Runtime Error") && !stdout.contains("FAILURES");
        assert!(
            run == 1 && tool_error_only,
            "schemathesis found problems:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Regressions for schemathesis findings: optional JSON bodies accept `null` (the document
/// marks them nullable), `days` is a query parameter with its bounds, and page sizes have
/// their documented bounds.
#[tokio::test]
async fn null_optional_bodies_and_documented_bounds() {
    let engine = TestEngine::start().await;
    let receiver = crate::support::Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let id = webhook["id"].as_str().unwrap();
    for path in [
        format!("/v1/webhooks/{id}/test"),
        format!("/v1/webhooks/{id}/rotate-secret"),
    ] {
        let response = engine
            .http
            .post(engine.url(&path))
            .bearer_auth(ACME_KEY)
            .header("content-type", "application/json")
            .body("null")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    let (_, document) = engine.get("/openapi.json").await;
    let stats = &document["paths"]["/v1/stats"]["get"]["parameters"][0];
    assert_eq!(stats["name"], "days");
    assert_eq!(stats["in"], "query");
    assert_eq!(stats["schema"]["maximum"], 90);
    let events = document["paths"]["/v1/events"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let limit = events.iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(250))
    );
    let (status, _) = engine.get("/v1/stats?days=91").await;
    assert_eq!(status, 400);
}
