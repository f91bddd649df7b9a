//! `/openapi.json` as standard tools consume it: `openapi-spec-validator` accepts it,
//! `openapi-python-client` generates a client that then runs one full flow against a real
//! engine and receiver (create a webhook, send an event, read its delivery), and
//! `openapi-typescript` generates types that a strict TypeScript file compiles against.
//!
//! The tools are pinned and installed on first use under `target/` (a Python venv and an npm
//! prefix), reinstalled only when a pin changes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::support::{ACME_KEY, Receiver, TestEngine};

const PYTHON_TOOLS: [&str; 2] = [
    "openapi-spec-validator==0.9.0",
    "openapi-python-client==0.29.1",
];
const NPM_TOOLS: [&str; 2] = ["openapi-typescript@7.13.0", "typescript@5.9.3"];

fn target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients")
}

fn run(what: &str, command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The venv with the pinned Python tools; returns its `bin/`.
fn python_tools() -> PathBuf {
    let dir = target().join("api-clients-venv");
    let stamp = dir.join("installed.txt");
    let pins = PYTHON_TOOLS.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(pins.as_str()) {
        run(
            "python3 -m venv",
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&dir),
        );
        run(
            "pip install",
            Command::new(dir.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(["--retries", "2", "--timeout", "30"])
                .args(PYTHON_TOOLS),
        );
        std::fs::write(&stamp, &pins).unwrap();
    }
    dir.join("bin")
}

/// The npm prefix with the pinned TypeScript tools; returns its `node_modules/.bin`.
fn npm_tools() -> PathBuf {
    let dir = target().join("api-clients-npm");
    let stamp = dir.join("installed.txt");
    let pins = NPM_TOOLS.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(pins.as_str()) {
        std::fs::create_dir_all(&dir).unwrap();
        run(
            "npm install",
            Command::new("npm")
                .args(["install", "--prefix"])
                .arg(&dir)
                .args(["--no-audit", "--no-fund", "--silent", "--save-exact"])
                .args(NPM_TOOLS),
        );
        std::fs::write(&stamp, &pins).unwrap();
    }
    dir.join("node_modules/.bin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_tools_validate_the_document_generate_clients_and_the_python_client_works() {
    let (python, npm) = tokio::task::spawn_blocking(|| (python_tools(), npm_tools()))
        .await
        .unwrap();
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let work = tempfile::tempdir().unwrap();
    let document = engine
        .http
        .get(engine.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let spec = work.path().join("openapi.json");
    std::fs::write(&spec, &document).unwrap();

    let (base, receiver_url) = (engine.base.clone(), receiver.url.clone());
    let dir = work.path().to_path_buf();
    let flow = tokio::task::spawn_blocking(move || {
        let validated = run(
            "openapi-spec-validator",
            Command::new(python.join("openapi-spec-validator")).arg(&spec),
        );
        assert!(String::from_utf8_lossy(&validated.stdout).contains("OK"));

        // Every operation must be generated: the tool says so when it skips one.
        let generated = run(
            "openapi-python-client generate",
            Command::new(python.join("openapi-python-client"))
                .args([
                    "generate",
                    "--meta",
                    "none",
                    "--output-path",
                    "hookd_client",
                    "--path",
                ])
                .arg(&spec)
                .current_dir(&dir),
        );
        let said = String::from_utf8_lossy(&generated.stdout).to_string()
            + &String::from_utf8_lossy(&generated.stderr);
        assert!(
            !said.contains("will not be generated"),
            "operations skipped by openapi-python-client:\n{said}"
        );
        let flow = run(
            "the generated Python client's flow",
            Command::new(python.join("python"))
                .arg(clients_dir().join("python_flow.py"))
                .args([&base, ACME_KEY, &receiver_url])
                .env("PYTHONPATH", &dir),
        );

        run(
            "openapi-typescript",
            Command::new(npm.join("openapi-typescript"))
                .arg(&spec)
                .arg("-o")
                .arg(dir.join("schema.d.ts")),
        );
        std::fs::copy(clients_dir().join("use_types.ts"), dir.join("use_types.ts")).unwrap();
        run(
            "tsc on the generated types",
            Command::new(npm.join("tsc"))
                .args(["--noEmit", "--strict"])
                .arg(dir.join("use_types.ts")),
        );
        flow
    })
    .await
    .unwrap();

    let seen: Value = serde_json::from_slice(&flow.stdout).expect("the flow prints JSON");
    assert_eq!(seen["status"], "delivered", "{seen}");
    assert_eq!(seen["attempts"], serde_json::json!([200]), "{seen}");
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("webhook-id"),
        seen["delivery_id"].as_str().unwrap()
    );
    assert_eq!(got[0].json()["data"]["name"], "Ada");
    let (_, delivery) = engine
        .get(&format!(
            "/v1/deliveries/{}",
            seen["delivery_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(delivery["webhook_id"], seen["webhook_id"]);
}
