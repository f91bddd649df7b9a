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

/// A `hookd` process killed when the test ends, passed or not.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary on a fresh data dir (test config, loopback allowed) with one webhook to
/// `receiver_url`; `dir` holds the config and the data dir for restarts.
pub struct RealEngine {
    pub dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
    pub data: std::path::PathBuf,
    pub child: Child,
    pub base: String,
}

pub async fn spawn_with_webhook(http: &reqwest::Client, receiver_url: &str) -> RealEngine {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("hookd.toml");
    std::fs::write(&config, test_config_toml(&data, "", true)).unwrap();
    let (child, base) = spawn_hookd(&config, &data);
    let response = http
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(ACME_KEY)
        .json(&json!({ "url": receiver_url }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    RealEngine {
        dir,
        config,
        data,
        child,
        base,
    }
}

// Multi-threaded: the receivers keep answering while the test thread blocks in
// `wait_with_timeout` or while spawning (a blocked current-thread runtime stalls them, which
// made hookd's graceful stop wait on attempts to a receiver that could not answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();
    let RealEngine {
        dir: _dir,
        config,
        data,
        mut child,
        base,
    } = spawn_with_webhook(&http, &receiver.url).await;

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

/// The acknowledged events of the crash loop: event id → type.
type Acked = Arc<Mutex<HashMap<String, String>>>;

/// Posts events to `base` until the process stops answering; records every 202.
async fn produce(http: reqwest::Client, base: String, producer: usize, acked: Acked) {
    for i in 0u64.. {
        let event_type = if i.is_multiple_of(2) {
            "user.created"
        } else {
            "order.paid"
        };
        let sent = http
            .post(format!("{base}/v1/events"))
            .bearer_auth(ACME_KEY)
            .timeout(Duration::from_secs(10))
            .json(&json!({"type": event_type, "payload": {"producer": producer, "i": i}}))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 202 => {
                let Ok(body) = r.json::<serde_json::Value>().await else {
                    break; // killed between the status line and the body: not counted
                };
                acked.lock().unwrap().insert(
                    body["id"].as_str().unwrap().to_string(),
                    event_type.to_string(),
                );
            }
            Ok(r) => panic!("unexpected answer {}", r.status()),
            Err(_) => break, // the process is gone
        }
    }
}

/// Event id → the distinct `webhook-id`s it arrived with, and the number of sends.
fn arrivals(receiver: &Receiver) -> (HashMap<String, HashSet<String>>, usize) {
    let received = receiver.received();
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    for request in &received {
        ids.entry(request.json()["id"].as_str().unwrap().to_string())
            .or_default()
            .insert(request.header("webhook-id"));
    }
    (ids, received.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_of_20_kill_9s_under_ingest_loses_no_acknowledged_event() {
    const KILLS: usize = 20;
    let test_started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("hookd.toml");
    std::fs::write(&config, test_config_toml(&data, "", true)).unwrap();
    // A small delay keeps attempts in flight when the process dies.
    let every = Receiver::start().await;
    every.delay(Duration::from_millis(15));
    let orders = Receiver::start().await;
    orders.delay(Duration::from_millis(15));
    let http = reqwest::Client::new();
    let acked: Acked = Arc::default();
    let mut starts = Vec::new();

    for round in 0..=KILLS {
        let started = Instant::now();
        let (mut child, base, log) = spawn_hookd_logged(&config, &data, "info");
        // The store opened cleanly: the process is up, ready, and logged no error.
        eventually(Duration::from_secs(30), "hookd ready", || async {
            let r = http.get(format!("{base}/readyz")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        starts.push(started.elapsed());
        let errors: Vec<String> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(r#""level":"ERROR""#))
            .cloned()
            .collect();
        assert!(errors.is_empty(), "round {round}: {errors:#?}");
        assert!(
            log.lock()
                .unwrap()
                .iter()
                .any(|line| line.contains(r#""level":"INFO""#)),
            "the log format is the one the error check reads"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: hookd exited"
        );
        if round == 0 {
            for body in [
                json!({"url": every.url}),
                json!({"url": orders.url, "event_types": ["order.*"]}),
            ] {
                let r = http
                    .post(format!("{base}/v1/webhooks"))
                    .bearer_auth(ACME_KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        }
        if round == KILLS {
            // The last run drains.
            eventually(
                Duration::from_secs(60),
                "every acknowledged event delivered to every matching webhook",
                || async {
                    let acked = acked.lock().unwrap().clone();
                    let (every_ids, _) = arrivals(&every);
                    let (orders_ids, _) = arrivals(&orders);
                    let done = acked.iter().all(|(id, event_type)| {
                        every_ids.contains_key(id)
                            && (event_type != "order.paid" || orders_ids.contains_key(id))
                    });
                    done.then_some(())
                },
            )
            .await;
            // Nothing is left behind: no delivery stays pending or in flight (a claim that died
            // with a process is simply due again).
            eventually(
                Duration::from_secs(30),
                "no unfinished delivery",
                || async {
                    let mut left = 0;
                    for status in ["pending", "in_flight", "failed"] {
                        let page: serde_json::Value = http
                            .get(format!("{base}/v1/deliveries?status={status}"))
                            .bearer_auth(ACME_KEY)
                            .send()
                            .await
                            .ok()?
                            .json()
                            .await
                            .ok()?;
                        left += page["data"].as_array()?.len();
                    }
                    (left == 0).then_some(())
                },
            )
            .await;
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        let producers: Vec<_> = (0..4)
            .map(|p| tokio::spawn(produce(http.clone(), base.clone(), p, acked.clone())))
            .collect();
        // A random moment: mid-flush, mid-attempt, or right after start.
        let delay = rand::random_range(50..700);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for producer in producers {
            tokio::time::timeout(Duration::from_secs(15), producer)
                .await
                .expect("producers stop once the process is gone")
                .unwrap();
        }
    }

    let acked = acked.lock().unwrap().clone();
    let (every_ids, every_sends) = arrivals(&every);
    let (orders_ids, orders_sends) = arrivals(&orders);
    // Matching: only order.* events reach the filtered webhook.
    let order_events = acked.values().filter(|t| *t == "order.paid").count();
    for request in orders.received() {
        assert_eq!(request.json()["type"], "order.paid");
    }
    // Duplicates only as resends of the same delivery: one webhook-id per (event, webhook).
    for ids in [&every_ids, &orders_ids] {
        assert!(
            ids.values().all(|webhook_ids| webhook_ids.len() == 1),
            "one webhook-id per event and webhook"
        );
    }
    let every_webhook_ids: HashSet<&String> = every_ids.values().flatten().collect();
    assert!(
        orders_ids
            .values()
            .flatten()
            .all(|id| !every_webhook_ids.contains(id)),
        "each webhook gets its own delivery ids"
    );
    let mut sorted = starts.clone();
    sorted.sort();
    eprintln!(
        "crash loop: {KILLS} kill -9s, {} acknowledged ({order_events} order.paid); delivered: \
         {} events / {every_sends} sends to `*` ({} duplicates), {} events / {orders_sends} sends \
         to `order.*` ({} duplicates); start to ready median {:?}, max {:?}; test took {:?}",
        acked.len(),
        every_ids.len(),
        every_sends - every_ids.len(),
        orders_ids.len(),
        orders_sends - orders_ids.len(),
        sorted[sorted.len() / 2],
        sorted.last().unwrap(),
        test_started.elapsed(),
    );
    assert!(acked.len() >= KILLS, "ingest made progress between kills");
}
