//! kill -9 of the real binary under load: every event that got a 202 is delivered after a
//! restart; duplicates only with the same webhook-id.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{ACME_KEY, Receiver, eventually, test_config_toml};

/// Starts `hookd serve` on 127.0.0.1:0 and returns it with its base URL (read from its log).
pub fn spawn_hookd(config: &Path, data: &Path) -> (Child, String) {
    let (child, base, _) = spawn_hookd_logged(config, data, "info");
    (child, base)
}

/// [`spawn_hookd`] at log level `rust_log`, keeping every line it logs.
pub fn spawn_hookd_logged(
    config: &Path,
    data: &Path,
    rust_log: &str,
) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let lines = log.clone();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--config")
        .arg(config)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hookd binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line.clone());
            if !sent && let Some(rest) = line.split("listening on ").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("hookd logs its address");
    (child, format!("http://{addr}"), log)
}

#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("hookd.toml");
    std::fs::write(&config, test_config_toml(&data, "", true)).unwrap();
    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();

    let (mut child, base) = spawn_hookd(&config, &data);
    let response = http
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(ACME_KEY)
        .json(&json!({"url": receiver.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // Producers post events until the process dies; only 202s count as acknowledged.
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..8 {
        let (http, base, acked) = (http.clone(), base.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut i = 0;
            while Instant::now() < deadline {
                i += 1;
                let sent = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(ACME_KEY)
                    .json(&json!({"type": "user.created", "payload": {"producer": p, "i": i}}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .insert(body["id"].as_str().unwrap().to_string());
                    }
                    Ok(_) => {}
                    Err(_) => break, // the process is gone
                }
            }
        }));
    }
    eventually(
        Duration::from_secs(10),
        "some events acknowledged",
        || async { (acked.lock().unwrap().len() >= 200).then_some(()) },
    )
    .await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for producer in producers {
        producer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let (mut child, _base, log) = spawn_hookd_logged(&config, &data, "info");
    let received = eventually(
        Duration::from_secs(60),
        "every acknowledged event delivered",
        || async {
            let received = receiver.received();
            let delivered: HashSet<String> = received
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap().to_string())
                .collect();
            acked.is_subset(&delivered).then_some(received)
        },
    )
    .await;

    // Duplicates are allowed only as resends of the same delivery (same webhook-id).
    let mut webhook_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for request in &received {
        webhook_ids
            .entry(request.json()["id"].as_str().unwrap().to_string())
            .or_default()
            .insert(request.header("webhook-id"));
    }
    assert!(
        webhook_ids.values().all(|ids| ids.len() == 1),
        "one webhook-id per event"
    );
    let duplicates = received.len() - webhook_ids.len();
    eprintln!(
        "kill -9: {} acknowledged, {} delivered events, {} duplicate sends",
        acked.len(),
        webhook_ids.len(),
        duplicates
    );

    // SIGTERM: a graceful stop with exit status 0.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let stopping = Instant::now();
    let exit = wait_with_timeout(&mut child, Duration::from_secs(30));
    let tail: Vec<String> = log.lock().unwrap().iter().rev().take(8).cloned().collect();
    assert_eq!(
        exit.code(),
        Some(0),
        "graceful shutdown exits 0; last log lines: {tail:#?}"
    );
    eprintln!("SIGTERM to exit: {:?}", stopping.elapsed());
    if stopping.elapsed() > Duration::from_secs(1) {
        eprintln!("slow stop; last log lines: {tail:#?}");
    }
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
