//! The programs in `examples/` against a real engine: the Python and Node receivers verify
//! hookd's deliveries with the public `standardwebhooks` libraries, record them and refuse
//! forged requests; `producer.sh` creates a webhook and sends events with curl.
//!
//! The receivers' dependencies are installed on first use into `examples/receiver-python/.venv`
//! and `examples/receiver-node/node_modules` (gitignored), and again only when
//! `requirements.txt` or `package-lock.json` changes.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hookd::config::hash_api_key;
use serde_json::{Value, json};

use crate::support::{TestEngine, eventually, parse_config, test_config_toml};

const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(30);
/// The dev tenant's key, which `producer.sh` uses by default.
const DEV_KEY: &str = "hookd-dev-key";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[tokio::test]
async fn example_receivers_verify_deliveries_refuse_forgeries_and_the_producer_works() {
    let examples = examples_dir();
    let (python, ()) = std::thread::scope(|s| {
        let python = s.spawn(|| install_python_receiver(&examples.join("receiver-python")));
        let node = s.spawn(|| install_node_receiver(&examples.join("receiver-node")));
        (join(python), join(node))
    });

    // A third tenant `dev` with the development key, as in config/hookd.toml, for the producer.
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = test_config_toml(data_dir.path(), "", true);
    config.push_str(&format!(
        "[[tenants]]\nid = \"dev\"\napi_keys = [\"sha256:{}\"]\n",
        hex::encode(hash_api_key(DEV_KEY))
    ));
    let engine = TestEngine::start_in(data_dir, parse_config(&config)).await;

    let out = tempfile::tempdir().unwrap();
    let receivers = [
        ExampleReceiver::start(
            "receiver-python",
            Command::new(&python).arg(examples.join("receiver-python/receiver.py")),
            random_secret(32),
            out.path(),
        )
        .await,
        ExampleReceiver::start(
            "receiver-node",
            Command::new("node").arg(examples.join("receiver-node/receiver.js")),
            random_secret(48),
            out.path(),
        )
        .await,
    ];

    // One webhook per receiver, each with its own known secret.
    let mut webhook_ids = Vec::new();
    for receiver in &receivers {
        let webhook = engine
            .create_webhook(json!({
                "url": receiver.url,
                "event_types": ["user.created"],
                "secret": receiver.secret,
            }))
            .await;
        assert_eq!(webhook["secret"], receiver.secret.as_str());
        webhook_ids.push(webhook["id"].as_str().unwrap().to_string());
    }

    // Non-ASCII text checks that the libraries verify the exact UTF-8 bytes hookd signed.
    let mut sent = Vec::new();
    for n in 0..3 {
        let payload = json!({"n": n, "name": "Zoë Ada ✓", "nested": {"list": [1, 2.5, null]}});
        let event = engine.send_event("user.created", payload.clone()).await;
        let deliveries: HashMap<String, String> = event["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let webhook = d["webhook_id"].as_str().unwrap().to_string();
                (webhook, d["id"].as_str().unwrap().to_string())
            })
            .collect();
        sent.push((
            event["id"].as_str().unwrap().to_string(),
            payload,
            deliveries,
        ));
    }

    for (receiver, webhook_id) in receivers.iter().zip(&webhook_ids) {
        let recorded = receiver
            .wait_for_events(sent.iter().map(|(id, _, _)| id.as_str()))
            .await;
        for (event_id, payload, deliveries) in &sent {
            let record = &recorded[event_id];
            let delivery_id = &deliveries[webhook_id];
            assert_eq!(
                record["webhook_id"],
                delivery_id.as_str(),
                "{}",
                receiver.name
            );
            assert_eq!(record["event"]["type"], "user.created", "{}", receiver.name);
            assert_eq!(&record["event"]["data"], payload, "{}", receiver.name);
            // The receiver's 204 is what hookd logged.
            let delivery = engine.wait_delivery(delivery_id, "delivered").await;
            let attempts = delivery["attempts"].as_array().unwrap();
            assert_eq!(
                attempts.last().unwrap()["status_code"],
                204,
                "{}",
                receiver.name
            );
        }
    }

    // Requests the test signs itself: only the correctly signed one is accepted.
    let http = reqwest::Client::new();
    for receiver in &receivers {
        let body =
            json!({"id": "evt_from_test", "type": "user.created", "data": {"forged": false}})
                .to_string();
        let good = sign(&receiver.secret, "msg_good", &body);
        let wrong_secret = sign(&random_secret(32), "msg_wrong_secret", &body);
        let tampered = sign(&receiver.secret, "msg_tampered", &body);
        let tampered_body = body.replace("false", "true ");
        let cases = [
            ("signed with another secret", &wrong_secret, &body, 400),
            ("body changed after signing", &tampered, &tampered_body, 400),
            ("signed with the webhook's secret", &good, &body, 204),
        ];
        for (what, headers, body, expected) in cases {
            let mut request = http.post(&receiver.url).body(body.clone());
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let status = request.send().await.expect("receiver answers").status();
            assert_eq!(status, expected, "{}: {what}", receiver.name);
        }
        let ids: HashSet<String> = receiver
            .records()
            .iter()
            .map(|r| r["webhook_id"].as_str().unwrap().to_string())
            .collect();
        assert!(ids.contains("msg_good"), "{}: {ids:?}", receiver.name);
        assert!(!ids.contains("msg_wrong_secret"), "{}", receiver.name);
        assert!(!ids.contains("msg_tampered"), "{}", receiver.name);
    }

    // producer.sh with its defaults except hookd's address, delivering to the Node receiver.
    let node = &receivers[1];
    let producer = tokio::process::Command::new("bash")
        .arg(examples.join("producer.sh"))
        .env("HOOKD_URL", &engine.base)
        .env("RECEIVER_URL", &node.url)
        .env("HOOKD_WEBHOOK_SECRET", &node.secret)
        .env_remove("HOOKD_API_KEY")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let producer = tokio::time::timeout(WAIT, producer)
        .await
        .expect("producer.sh finishes")
        .expect("producer.sh starts (bash and curl are installed)");
    let stdout = String::from_utf8_lossy(&producer.stdout);
    assert!(
        producer.status.success(),
        "producer.sh failed ({}):\n{stdout}\n{}",
        producer.status,
        String::from_utf8_lossy(&producer.stderr)
    );
    // The answers it printed: the webhook, then each event with its deliveries.
    let answers: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert_eq!(answers.len(), 4, "{stdout}");
    assert_eq!(answers[0]["url"], node.url.as_str());
    let produced: Vec<&str> = answers[1..]
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    let recorded = node.wait_for_events(produced.iter().copied()).await;
    let mut types: Vec<&str> = produced
        .iter()
        .map(|id| recorded[*id]["event"]["type"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(types, ["invoice.paid", "user.created", "user.deleted"]);
}

/// A receiver from `examples/` running as a child process, killed when dropped.
struct ExampleReceiver {
    name: &'static str,
    url: String,
    secret: String,
    events_file: PathBuf,
    child: Child,
}

impl ExampleReceiver {
    /// Starts `command --port 0 --events-file <out>/<name>.jsonl` and reads its address from
    /// its first line of stdout. Its later output goes to the test's captured stderr.
    async fn start(name: &'static str, command: &mut Command, secret: String, out: &Path) -> Self {
        let events_file = out.join(format!("{name}.jsonl"));
        let mut child = command
            .args(["--port", "0", "--events-file"])
            .arg(&events_file)
            .env("HOOKD_WEBHOOK_SECRET", &secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("{name} starts: {err}"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for line in lines.map_while(Result::ok) {
                eprintln!("[{name}] {line}");
            }
        });
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
            }
        });
        // From here on the guard kills the child, whatever happens.
        let mut receiver = ExampleReceiver {
            name,
            url: String::new(),
            secret,
            events_file,
            child,
        };
        let first = tokio::time::timeout(WAIT, rx).await;
        let port = match &first {
            Ok(Ok(line)) => line
                .strip_prefix("listening on 127.0.0.1:")
                .and_then(|port| port.parse::<u16>().ok()),
            _ => None,
        };
        let Some(port) = port else {
            panic!(
                "{name} did not print `listening on 127.0.0.1:<port>` first (got {first:?}, \
                 exit status {:?})",
                receiver.child.try_wait()
            );
        };
        receiver.url = format!("http://127.0.0.1:{port}/hook");
        receiver
    }

    /// Complete JSON lines of the events file (a line being appended is skipped).
    fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events_file).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|line| serde_json::from_str(line).expect("the events file holds JSON lines"))
            .collect()
    }

    /// Waits until every one of `event_ids` is recorded; returns the records by event id.
    async fn wait_for_events<'a>(
        &self,
        event_ids: impl IntoIterator<Item = &'a str>,
    ) -> HashMap<String, Value> {
        let wanted: Vec<&str> = event_ids.into_iter().collect();
        let what = format!("{} records events {wanted:?}", self.name);
        eventually(WAIT, &what, || async {
            let by_id: HashMap<String, Value> = self
                .records()
                .into_iter()
                .filter_map(|r| Some((r["event"]["id"].as_str()?.to_string(), r)))
                .collect();
            wanted
                .iter()
                .all(|id| by_id.contains_key(*id))
                .then_some(by_id)
        })
        .await
    }
}

impl Drop for ExampleReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `whsec_` and base64 of `len` random bytes (Standard Webhooks: 24 to 64).
fn random_secret(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// Standard Webhooks headers for `body`, signed now with `secret`.
fn sign(secret: &str, webhook_id: &str, body: &str) -> Vec<(String, String)> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(webhook_id, timestamp, body.as_bytes())
        .unwrap();
    vec![
        ("webhook-id".into(), webhook_id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        ("webhook-signature".into(), signature),
        ("content-type".into(), "application/json".into()),
    ]
}

/// Creates `.venv` and installs `requirements.txt` unless that exact file is installed
/// already; returns the venv's python.
fn install_python_receiver(dir: &Path) -> PathBuf {
    let python = dir.join(".venv/bin/python");
    let stamp = dir.join(".venv/installed-requirements.txt");
    let requirements = std::fs::read(dir.join("requirements.txt")).unwrap();
    if python.exists() && std::fs::read(&stamp).ok().as_ref() == Some(&requirements) {
        return python;
    }
    run_install(
        Command::new("python3")
            .args(["-m", "venv", "--clear", ".venv"])
            .current_dir(dir),
        "creating examples/receiver-python/.venv (python3 -m venv)",
    );
    run_install(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(["--quiet", "--retries", "2", "--timeout", "20"])
            .args(["-r", "requirements.txt"])
            .current_dir(dir),
        "installing the Python receiver's dependencies from PyPI \
         (pip install -r examples/receiver-python/requirements.txt)",
    );
    std::fs::write(&stamp, requirements).unwrap();
    python
}

/// Runs `npm ci` unless `node_modules` holds exactly what `package-lock.json` pins.
fn install_node_receiver(dir: &Path) {
    let stamp = dir.join("node_modules/.installed-package-lock.json");
    let lock = std::fs::read(dir.join("package-lock.json")).unwrap();
    if std::fs::read(&stamp).ok().as_ref() == Some(&lock) {
        return;
    }
    run_install(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .args(["--fetch-retries=2", "--fetch-retry-mintimeout=2000"])
            .args(["--fetch-retry-maxtimeout=10000", "--fetch-timeout=20000"])
            .current_dir(dir),
        "installing the Node receiver's dependencies from the npm registry \
         (npm ci in examples/receiver-node)",
    );
    std::fs::write(&stamp, lock).unwrap();
}

/// Runs an install step to completion within `INSTALL_TIMEOUT`; a failure fails the test with
/// the step's output, never skips it.
fn run_install(command: &mut Command, what: &str) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{what}: cannot run {command:?}: {err}"));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            // Not joining the pipes: a grandchild may still hold them open.
            panic!(
                "{what}: no answer within {INSTALL_TIMEOUT:?}; is the package registry reachable?"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        panic!(
            "{what} failed ({status}); is the package registry reachable?\n{}{}",
            stdout.join().unwrap(),
            stderr.join().unwrap()
        );
    }
}

/// Joins a thread, passing its panic (and message) on to the test.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
