//! Real `hookd` processes sharing one PostgreSQL: three nodes under load with one SIGKILLed, a
//! webhook paused through one node, a plugin uploaded and rolled back through different nodes,
//! PostgreSQL itself restarted under load.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::crash::{spawn_hookd_logged, wait_with_timeout};
use crate::support::postgres::{fresh_database, on_postgres, query};
use crate::support::receiver::Received;
use crate::support::{ACME_KEY, Receiver, eventually, test_config_toml};

/// Lease of the nodes in these tests: short, so a dead node's work returns quickly.
const LEASE: Duration = Duration::from_secs(3);
/// `poll_interval` of test configs (`support/postgres.rs`).
const POLL: Duration = Duration::from_millis(500);

/// One `hookd serve` process.
struct Node {
    child: Child,
    base: String,
    /// Its log lines (JSON), as written so far.
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// Nodes on one database; every process still running is killed when the test ends.
struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(url: &str, count: usize, extra_delivery: &str) -> Cluster {
        let nodes = (0..count)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let data = dir.path().join("data");
                let config = dir.path().join("hookd.toml");
                let text = on_postgres(
                    &test_config_toml(&data, extra_delivery, true),
                    url,
                    &format!("{}s", LEASE.as_secs()),
                );
                std::fs::write(&config, text).unwrap();
                let (child, base, log) = spawn_hookd_logged(&config, &data, "info");
                Node {
                    child,
                    base,
                    log,
                    _dir: dir,
                }
            })
            .collect();
        Cluster { nodes }
    }

    fn base(&self, node: usize) -> &str {
        &self.nodes[node].base
    }

    /// How many of the node's log lines so far contain `text`.
    fn log_lines(&self, node: usize, text: &str) -> usize {
        let log = self.nodes[node].log.lock().unwrap();
        log.iter().filter(|line| line.contains(text)).count()
    }

    /// Sends `signal` (`STOP`, `CONT`) to the given nodes.
    fn signal(&self, nodes: &[usize], signal: &str) {
        for node in nodes {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.nodes[*node].child.id().to_string())
                .status()
                .unwrap();
            assert!(status.success(), "kill -{signal}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if node.child.try_wait().ok().flatten().is_some() {
                continue; // killed by the test
            }
            // A node the test stopped (SIGSTOP) first runs again, to hear the TERM.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(node.child.id().to_string())
                .status();
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(node.child.id().to_string())
                .status();
            wait_with_timeout(&mut node.child, Duration::from_secs(20));
        }
    }
}

async fn call(
    http: &reqwest::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http.request(method, url).bearer_auth(ACME_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The event ids a receiver got, each with the webhook-ids it came with.
fn by_event(received: &[Received]) -> HashMap<String, HashSet<String>> {
    let mut events: HashMap<String, HashSet<String>> = HashMap::new();
    for request in received {
        events
            .entry(request.json()["id"].as_str().unwrap().to_string())
            .or_default()
            .insert(request.header("webhook-id"));
    }
    events
}

/// Waits (90 s at most) until `receiver` got every event of `acked`; past that, fails with the
/// stored state of the deliveries still missing, to say where they stopped.
async fn all_delivered(
    receiver: &Receiver,
    acked: &HashSet<String>,
    url: &str,
    webhook: &str,
) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let received = receiver.received();
        let events = by_event(&received);
        let missing: Vec<String> = acked
            .iter()
            .filter(|id| !events.contains_key(*id))
            .cloned()
            .collect();
        if missing.is_empty() {
            return received;
        }
        if Instant::now() >= deadline {
            let rows = query(
                url,
                &format!(
                    "SELECT 'evt_' || replace(event_id::text, '-', '') || ' ' || status || ' attempts=' ||
                            attempts || ' due=' || coalesce(next_attempt_at::text, '-') ||
                            ' lease=' || coalesce(lease_node, '-') || ' until=' ||
                            coalesce(lease_until::text, '-') || ' error=' ||
                            coalesce(last_error, '-') || ' now=' ||
                            (extract(epoch from clock_timestamp()) * 1000)::bigint
                       FROM deliveries
                      WHERE webhook_id = '{}'::uuid
                        AND 'evt_' || replace(event_id::text, '-', '') = ANY(ARRAY['{}'])",
                    webhook.trim_start_matches("wh_"),
                    missing.join("','")
                ),
            )
            .await;
            let rows: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
            panic!(
                "{} acknowledged events not delivered to {webhook} after 90 s; their deliveries: {rows:#?}",
                missing.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Producers posting `user.created` to `base` until `stop`; 202s go into `acked`, other
/// statuses are counted by code. A producer whose node is gone stops.
fn produce(
    http: &reqwest::Client,
    base: &str,
    producers: usize,
    acked: &Arc<Mutex<HashSet<String>>>,
    statuses: &Arc<Mutex<HashMap<u16, usize>>>,
    stop: &Arc<AtomicBool>,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..producers)
        .map(|p| {
            let (http, base) = (http.clone(), base.to_string());
            let (acked, statuses, stop) = (acked.clone(), statuses.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    i += 1;
                    let sent = http
                        .post(format!("{base}/v1/events"))
                        .bearer_auth(ACME_KEY)
                        .json(&json!({"type": "user.created", "payload": {"p": p, "i": i}}))
                        .send()
                        .await;
                    let Ok(response) = sent else { break };
                    let status = response.status().as_u16();
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    if status == 202 {
                        let body: Value = response.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .insert(body["id"].as_str().unwrap().to_string());
                    } else {
                        // Like a real producer, back off a little after a refusal: a 503 is
                        // answered at once, and a loop without a pause would exceed the
                        // tenant's request rate (429) while the database is away.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_acknowledged_event_when_one_is_killed_mid_load() {
    let url = fresh_database();
    let mut cluster = Cluster::start(&url, 3, "max_in_flight_per_webhook = 16");
    let http = reqwest::Client::new();
    let receivers = [Receiver::start().await, Receiver::start().await];
    let mut webhooks = Vec::new();
    for receiver in &receivers {
        // Slow enough that every node has attempts in flight when one dies.
        receiver.delay(Duration::from_millis(100));
        let (status, body) = call(
            &http,
            "POST",
            format!("{}/v1/webhooks", cluster.base(0)),
            Some(json!({"url": receiver.url, "event_types": ["user.*"]})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        webhooks.push(body["id"].as_str().unwrap().to_string());
    }
    // Every node knows both webhooks before the load starts: a node fans an event out to the
    // webhooks it knows, and hears of one created through another node by NOTIFY, a moment
    // after its commit (events accepted in that moment do not go to it).
    for node in 0..3 {
        for webhook in &webhooks {
            eventually(
                Duration::from_secs(10),
                "every node knows the webhooks",
                || async {
                    let url = format!("{}/v1/webhooks/{webhook}", cluster.base(node));
                    (call(&http, "GET", url, None).await.0 == 200).then_some(())
                },
            )
            .await;
        }
    }

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let statuses: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut producers = Vec::new();
    for node in 0..3 {
        producers.extend(produce(
            &http,
            cluster.base(node),
            3,
            &acked,
            &statuses,
            &stop,
            deadline,
        ));
    }
    eventually(Duration::from_secs(20), "load under way", || async {
        (acked.lock().unwrap().len() >= 300 && receivers[0].count() >= 50).then_some(())
    })
    .await;
    let victim = &mut cluster.nodes[2];
    let pid = victim.child.id();
    victim.child.kill().expect("SIGKILL");
    victim.child.wait().unwrap();
    let killed_at = Instant::now();
    let leased: HashSet<String> = query(
        &url,
        &format!(
            "SELECT 'dlv_' || replace(id::text, '-', '') FROM deliveries
              WHERE lease_node LIKE '%-{pid}-%' AND next_attempt_at IS NOT NULL"
        ),
    )
    .await
    .iter()
    .map(|row| row.get(0))
    .collect();
    tokio::time::sleep(Duration::from_secs(1)).await; // load goes on through the survivors
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    for (receiver, webhook) in receivers.iter().zip(&webhooks) {
        let received = all_delivered(receiver, &acked, &url, webhook).await;
        let events = by_event(&received);
        assert!(
            events.values().all(|ids| ids.len() == 1),
            "duplicates only with the same webhook-id"
        );
        eprintln!(
            "3 nodes, one killed: {} acknowledged, {} sends ({} duplicates)",
            acked.len(),
            received.len(),
            received.len() - events.len()
        );
    }

    // The dead node's claims: sent again by the survivors once its leases ran out.
    let all: Vec<Received> = receivers.iter().flat_map(|r| r.received()).collect();
    let bound = LEASE + POLL + Duration::from_secs(3);
    let mut slowest = Duration::ZERO;
    for id in &leased {
        let resent = all
            .iter()
            .filter(|r| r.header("webhook-id") == *id && r.at >= killed_at)
            .map(|r| r.at - killed_at)
            .min()
            .unwrap_or_else(|| panic!("{id}, leased by the dead node, was not sent again"));
        slowest = slowest.max(resent);
    }
    eprintln!(
        "{} deliveries leased by the killed node; all sent by the others within {slowest:?} (bound {bound:?})",
        leased.len()
    );
    assert!(slowest <= bound, "{slowest:?} > {bound:?}");
    let statuses = statuses.lock().unwrap();
    assert!(
        statuses.keys().all(|s| *s == 202),
        "only 202s while the survivors took load: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_paused_through_one_node_stops_on_every_node() {
    let url = fresh_database();
    let cluster = Cluster::start(&url, 3, "");
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    let (status, webhook) = call(
        &http,
        "POST",
        format!("{}/v1/webhooks", cluster.base(0)),
        Some(json!({"url": receiver.url})),
    )
    .await;
    assert_eq!(status, 201);
    let id = webhook["id"].as_str().unwrap().to_string();
    let send_through_each = |n: usize| {
        let http = http.clone();
        let bases: Vec<String> = (0..3).map(|i| cluster.base(i).to_string()).collect();
        async move {
            for base in &bases {
                for _ in 0..n {
                    let (status, _) = call(
                        &http,
                        "POST",
                        format!("{base}/v1/events"),
                        Some(json!({"type": "user.created", "payload": {}})),
                    )
                    .await;
                    assert_eq!(status, 202);
                }
            }
        }
    };
    send_through_each(2).await;
    receiver.wait_for(6, Duration::from_secs(20)).await;

    let (status, _) = call(
        &http,
        "PATCH",
        format!("{}/v1/webhooks/{id}", cluster.base(1)),
        Some(json!({"status": "paused"})),
    )
    .await;
    assert_eq!(status, 200);
    // Every node shows the change (its webhook cache heard the NOTIFY).
    for node in 0..3 {
        eventually(
            Duration::from_secs(10),
            "the node sees the pause",
            || async {
                let (_, w) = call(
                    &http,
                    "GET",
                    format!("{}/v1/webhooks/{id}", cluster.base(node)),
                    None,
                )
                .await;
                (w["status"] == "paused").then_some(())
            },
        )
        .await;
    }
    send_through_each(3).await;
    eventually(Duration::from_secs(10), "9 deliveries queued", || async {
        let (_, page) = call(
            &http,
            "GET",
            format!("{}/v1/deliveries?status=pending", cluster.base(2)),
            None,
        )
        .await;
        (page["data"].as_array().map_or(0, Vec::len) == 9).then_some(())
    })
    .await;
    // Absence takes a wait: several poll intervals, in which every node would have claimed
    // the due deliveries of an active webhook.
    tokio::time::sleep(POLL * 4).await;
    assert_eq!(receiver.count(), 6, "nothing sent while paused");

    let (status, _) = call(
        &http,
        "PATCH",
        format!("{}/v1/webhooks/{id}", cluster.base(2)),
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(status, 200);
    receiver.wait_for(15, Duration::from_secs(20)).await;
}

/// A PostgreSQL server of the test's own (this test restarts it), stopped at the end.
struct PrivateServer {
    dir: PathBuf,
    /// Database `postgres` on it.
    url: String,
}

fn postgres_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}

impl PrivateServer {
    fn start() -> PrivateServer {
        let dir = std::env::temp_dir().join(format!("hookd-pg-restart-{}", rand::random::<u64>()));
        let out = Command::new(postgres_script())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("scripts/postgres.sh runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = String::from_utf8(out.stdout).unwrap().trim().to_string();
        PrivateServer { dir, url: server }
    }
}

/// Fast shutdown of the server in `dir`, `down` without it, then the same server again.
fn restart_server(dir: &std::path::Path, down: Duration) {
    let status = Command::new(postgres_script())
        .arg("restart")
        .arg(dir)
        .arg(down.as_secs().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new(postgres_script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// Freezes a private server's processes (SIGSTOP) until dropped (SIGCONT): a database that
/// stops answering without refusing or closing anything.
struct Frozen(Vec<String>);

impl Frozen {
    fn server(dir: &std::path::Path) -> Frozen {
        let pid_file = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
        let postmaster = pid_file.lines().next().unwrap().trim().to_string();
        let children = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &postmaster])
            .output()
            .unwrap();
        let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        pids.push(postmaster);
        let status = Command::new("kill")
            .arg("-STOP")
            .args(&pids)
            .status()
            .unwrap();
        assert!(status.success());
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").args(&self.0).status();
    }
}

/// A database that stops answering (a frozen host, a partition) gets the same answers as one
/// that is down, within bounds: ingest `503 store_unavailable` with Retry-After after at most
/// ~10 s (it waited as long as the freeze lasted, then answered 202), `/readyz` not ready
/// within ~2 s; once it answers again, ingest resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_gets_bounded_503s_not_hung_requests() {
    let server = PrivateServer::start();
    let cluster = Cluster::start(&server.url, 1, "");
    let http = reqwest::Client::new();
    let event = || json!({"type": "user.created", "payload": {}});
    let events_url = format!("{}/v1/events", cluster.base(0));
    let ingest = || call(&http, "POST", events_url.clone(), Some(event()));
    assert_eq!(ingest().await.0, 202);

    let frozen = Frozen::server(&server.dir);
    let started = Instant::now();
    let ready = http
        .get(format!("{}/readyz", cluster.base(0)))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("readyz answers");
    let ready_after = started.elapsed();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(
        ready_after < Duration::from_secs(5),
        "readyz took {ready_after:?}"
    );

    let started = Instant::now();
    let response = http
        .post(&events_url)
        .bearer_auth(ACME_KEY)
        .json(&event())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("ingest answers");
    let ingest_after = started.elapsed();
    assert!(
        response.headers().contains_key("retry-after"),
        "{:?}",
        response.headers()
    );
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    assert!(
        ingest_after < Duration::from_secs(15),
        "ingest took {ingest_after:?}"
    );
    drop(frozen);

    eventually(
        Duration::from_secs(30),
        "ingest resumes by itself",
        || async { (ingest().await.0 == 202).then_some(()) },
    )
    .await;
    drop(cluster);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_while_postgres_restarts_and_resumes_by_itself() {
    let server = PrivateServer::start();
    let cluster = Cluster::start(&server.url, 1, "");
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    let (status, _) = call(
        &http,
        "POST",
        format!("{}/v1/webhooks", cluster.base(0)),
        Some(json!({"url": receiver.url})),
    )
    .await;
    assert_eq!(status, 201);

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let statuses: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producers = produce(
        &http,
        cluster.base(0),
        4,
        &acked,
        &statuses,
        &stop,
        Instant::now() + Duration::from_secs(60),
    );
    eventually(Duration::from_secs(20), "load under way", || async {
        (acked.lock().unwrap().len() >= 100).then_some(())
    })
    .await;
    let before = acked.lock().unwrap().len();
    // Down for 3 s: a fault, not a wait.
    let dir = server.dir.clone();
    tokio::task::spawn_blocking(move || restart_server(&dir, Duration::from_secs(3)))
        .await
        .unwrap();
    let refused_while_down = statuses.lock().unwrap().get(&503).copied().unwrap_or(0);
    eventually(
        Duration::from_secs(30),
        "ingest resumes by itself",
        || async { (acked.lock().unwrap().len() >= before + 100).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    eprintln!("PostgreSQL restarted under load: {statuses:?}");
    assert!(
        refused_while_down > 0,
        "ingest answered 503 while the database was away"
    );
    // The outage is in the log, but not once per refused request.
    let logged = cluster.log_lines(0, "store unavailable");
    assert!(
        (1..=3).contains(&logged),
        "{logged} log lines for {refused_while_down} refusals"
    );
    assert!(
        statuses.keys().all(|s| *s == 202 || *s == 503),
        "only 202 or 503: {statuses:?}"
    );
    // Never a false 202: every acknowledged event is delivered.
    let acked = acked.lock().unwrap().clone();
    eventually(
        Duration::from_secs(60),
        "every acknowledged event delivered",
        || async {
            let events = by_event(&receiver.received());
            acked.iter().all(|id| events.contains_key(id)).then_some(())
        },
    )
    .await;
    // The nodes stop before their database does.
    drop(cluster);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_gets_503_and_not_ready_and_writes_resume_once_it_is_writable() {
    let url = fresh_database();
    let database = url.rsplit('/').next().unwrap().to_string();
    // Changes to the database go through another one: a read-only database refuses them.
    let server = crate::support::postgres::server_url();
    let cluster = Cluster::start(&url, 1, "");
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    let base = cluster.base(0).to_string();
    let create_webhook = || {
        call(
            &http,
            "POST",
            format!("{base}/v1/webhooks"),
            Some(json!({"url": receiver.url})),
        )
    };
    assert_eq!(create_webhook().await.0, 201);
    let ingest = || async {
        let response = http
            .post(format!("{base}/v1/events"))
            .bearer_auth(ACME_KEY)
            .json(&json!({"type": "user.created", "payload": {}}))
            .send()
            .await
            .expect("the node answers");
        let retry_after = response.headers().contains_key("retry-after");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (status, body, retry_after)
    };
    assert_eq!(ingest().await.0, 202);

    // The server turns read-only under the node (as a primary demoted to a standby does):
    // new sessions default to read-only, and the node's connections are cut.
    query(
        &server,
        &format!("ALTER DATABASE {database} SET default_transaction_read_only = on"),
    )
    .await;
    query(
        &server,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{database}'"
        ),
    )
    .await;
    // Once the node's sessions are read-only, `/readyz` says why, and ingest is refused with
    // a 503 the producer retries (never a 500, never a 202).
    let ready = eventually(Duration::from_secs(20), "not ready", || async {
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        let status = ready.status().as_u16();
        let ready: Value = ready.json().await.unwrap();
        (status == 503
            && ready["message"]
                .as_str()
                .unwrap_or("")
                .contains("accepts no writes"))
        .then_some(ready)
    })
    .await;
    assert_eq!(ready["code"], "not_ready", "{ready}");
    for _ in 0..5 {
        let (status, body, retry_after) = ingest().await;
        assert_eq!(
            (status, body["code"].as_str(), retry_after),
            (503, Some("store_unavailable"), true),
            "{body}"
        );
    }
    // Any other write too (a webhook's creation here), not an internal error.
    let (status, body) = create_webhook().await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    // The node's own check (every 2 s) notices too, and says so once.
    eventually(Duration::from_secs(10), "the node warns", || async {
        (cluster.log_lines(0, "accepts no writes") >= 1).then_some(())
    })
    .await;

    // Writable again, without cutting the node's connections: a session keeps the read-only
    // default it began with, so the node must open new ones by itself.
    query(
        &server,
        &format!("ALTER DATABASE {database} RESET default_transaction_read_only"),
    )
    .await;
    let event = eventually(Duration::from_secs(20), "ingest accepted again", || async {
        let (status, body, _) = ingest().await;
        assert_ne!(status, 500, "{body}");
        (status == 202).then_some(body)
    })
    .await;
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let id = event["id"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(20),
        "the new event delivered",
        || async {
            by_event(&receiver.received())
                .contains_key(&id)
                .then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the node says so", || async {
        (cluster.log_lines(0, "PostgreSQL takes writes again") == 1).then_some(())
    })
    .await;
    assert_eq!(cluster.log_lines(0, "accepts no writes"), 1, "one warning");
}

/// Uploads `component` as the plugin `name` through `base`: the status and answer.
async fn upload_plugin(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    component: &str,
) -> (u16, Value) {
    let response = http
        .put(format!("{base}/v1/plugins/{name}"))
        .bearer_auth(ACME_KEY)
        .body(crate::support::wasm(component))
        .send()
        .await
        .expect("the node answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until the node at `base` runs version `version` of the plugin `name`.
async fn wait_for_plugin_version(http: &reqwest::Client, base: &str, name: &str, version: u64) {
    eventually(
        Duration::from_secs(60),
        &format!("{base} runs version {version} of {name}"),
        || async {
            let (status, info) = call(http, "GET", format!("{base}/v1/plugins/{name}"), None).await;
            (status == 200 && info["version_id"] == version).then_some(())
        },
    )
    .await;
}

/// Sends one event through node 3 while nodes 1 and 2 are stopped (SIGSTOP), so node 3 alone
/// can attempt its delivery; returns the request the receiver got for it.
async fn delivered_by_node_3_alone(
    cluster: &Cluster,
    http: &reqwest::Client,
    receiver: &Receiver,
) -> Received {
    let before = receiver.count();
    cluster.signal(&[0, 1], "STOP");
    let (status, event) = call(
        http,
        "POST",
        format!("{}/v1/events", cluster.base(2)),
        Some(json!({"type": "user.created", "payload": {"n": before}})),
    )
    .await;
    let got = if status == 202 {
        Some(receiver.wait_for(before + 1, Duration::from_secs(30)).await)
    } else {
        None
    };
    cluster.signal(&[0, 1], "CONT");
    assert_eq!(status, 202, "{event}");
    let got = got.unwrap();
    let delivery = event["deliveries"][0]["id"].as_str().unwrap().to_string();
    got.into_iter()
        .find(|r| r.header("webhook-id") == delivery)
        .expect("the event's delivery reached the receiver")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_uploaded_through_node_1_runs_on_node_3_and_a_rollback_through_node_2_reaches_it()
{
    let url = fresh_database();
    let cluster = Cluster::start(&url, 3, "");
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;

    // Two versions uploaded through node 1: reshape-transform, then clock-and-random (which
    // adds `delivery_id` to the body).
    let (status, first) = upload_plugin(&http, cluster.base(0), "stage", "reshape-transform").await;
    assert_eq!(
        (status, first["version_id"].clone()),
        (201, json!(1)),
        "{first}"
    );
    let (status, second) = upload_plugin(&http, cluster.base(0), "stage", "clock-and-random").await;
    assert_eq!(
        (status, second["version_id"].clone()),
        (200, json!(2)),
        "{second}"
    );
    let (status, body) = call(
        &http,
        "POST",
        format!("{}/v1/webhooks", cluster.base(0)),
        Some(json!({"url": receiver.url, "plugins": [{"name": "stage", "config": {}}]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let webhook = body["id"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(10),
        "node 3 knows the webhook",
        || async {
            let url = format!("{}/v1/webhooks/{webhook}", cluster.base(2));
            (call(&http, "GET", url, None).await.0 == 200).then_some(())
        },
    )
    .await;

    // Node 3 heard of the upload, compiled version 2 and runs it.
    wait_for_plugin_version(&http, cluster.base(2), "stage", 2).await;
    let sent = delivered_by_node_3_alone(&cluster, &http, &receiver).await;
    assert!(
        sent.json().get("delivery_id").is_some(),
        "node 3 ran version 2: {}",
        sent.json()
    );

    // A rollback through node 2 reaches node 3.
    let (status, rolled) = call(
        &http,
        "POST",
        format!("{}/v1/plugins/stage/rollback", cluster.base(1)),
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(
        (status, rolled["version_id"].clone()),
        (200, json!(1)),
        "{rolled}"
    );
    wait_for_plugin_version(&http, cluster.base(2), "stage", 1).await;
    let sent = delivered_by_node_3_alone(&cluster, &http, &receiver).await;
    assert!(
        sent.json().get("delivery_id").is_none(),
        "node 3 ran version 1 after the rollback: {}",
        sent.json()
    );
    let (_, versions) = call(
        &http,
        "GET",
        format!("{}/v1/plugins/stage/versions", cluster.base(2)),
        None,
    )
    .await;
    assert_eq!(versions["current"], 1, "{versions}");
    assert_eq!(versions["data"].as_array().map(Vec::len), Some(2));
}

/// A plugin uploaded through one node and attached at once runs on a node that has not acted
/// on the upload's notification yet: it fetches and compiles it then, instead of failing the
/// attempt `plugin_not_found` (a deploy script's upload-then-attach lost deliveries so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_loaded_a_new_plugin_yet_loads_it_for_the_attempt() {
    let url = fresh_database();
    let cluster = Cluster::start(&url, 2, "");
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    // Node 2 sleeps through the upload and the webhook's creation.
    cluster.signal(&[1], "STOP");
    let (status, info) = upload_plugin(&http, cluster.base(0), "fresh", "reshape-transform").await;
    assert_eq!(status, 201, "{info}");
    let (status, body) = call(
        &http,
        "POST",
        format!("{}/v1/webhooks", cluster.base(0)),
        Some(json!({
            "url": receiver.url,
            "retry_schedule": [],
            "plugins": [{"name": "fresh", "config": {"redact": ["secret"]}}],
        })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Node 2 wakes and takes an event at once; node 1 sleeps so node 2 attempts it.
    cluster.signal(&[0], "STOP");
    cluster.signal(&[1], "CONT");
    let (status, event) = call(
        &http,
        "POST",
        format!("{}/v1/events", cluster.base(1)),
        Some(json!({"type": "user.created", "payload": {"secret": "s3cret"}})),
    )
    .await;
    let got = if status == 202 {
        Some(receiver.wait_for(1, Duration::from_secs(30)).await)
    } else {
        None
    };
    cluster.signal(&[0], "CONT");
    assert_eq!(status, 202, "{event}");
    let sent = got.unwrap()[0].json();
    assert_eq!(
        sent["data"]["secret"], "[REDACTED]",
        "the plugin ran: {sent}"
    );
}

/// The shadow report of `name` as the node at `base` reads it.
async fn shadow_report(http: &reqwest::Client, base: &str, name: &str) -> Value {
    let (status, report) = call(
        http,
        "GET",
        format!("{base}/v1/plugins/{name}/shadow"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    report
}

/// Sends events of `kind` through node `node` while the other nodes are stopped, so it alone
/// attempts them, until the shadow report has compared `compared` attempts (a node compares
/// once it has loaded the candidate: the first events may be delivered before that).
async fn compared_by_node_alone(
    cluster: &Cluster,
    http: &reqwest::Client,
    receiver: &Receiver,
    (node, kind): (usize, &str),
    compared: u64,
) {
    let others: Vec<usize> = (0..cluster.nodes.len()).filter(|n| *n != node).collect();
    for _ in 0..30 {
        let before = receiver.count();
        cluster.signal(&others, "STOP");
        let (status, event) = call(
            http,
            "POST",
            format!("{}/v1/events", cluster.base(node)),
            Some(json!({"type": "user.created", "payload": {"kind": kind}})),
        )
        .await;
        let mut counted = false;
        if status == 202 {
            receiver.wait_for(before + 1, Duration::from_secs(30)).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !counted && Instant::now() < deadline {
                let report = shadow_report(http, cluster.base(node), "kinds").await;
                counted = report["compared"].as_u64() >= Some(compared);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster.signal(&others, "CONT");
        assert_eq!(status, 202, "{event}");
        if counted {
            return;
        }
    }
    panic!("node {node} compared no attempt of the candidate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_run_is_summed_over_nodes_and_a_promote_through_one_node_reaches_the_others() {
    let url = fresh_database();
    let cluster = Cluster::start(&url, 3, "");
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    let (status, first) = upload_plugin(&http, cluster.base(0), "kinds", "json-filter").await;
    assert_eq!(status, 201, "{first}");
    let (status, body) = call(
        &http,
        "POST",
        format!("{}/v1/webhooks", cluster.base(0)),
        Some(json!({"url": receiver.url, "plugins": [{"name": "kinds",
            "config": {"path": "data.kind", "allowed": ["a", "b", "c"]}}]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for node in [1, 2] {
        wait_for_plugin_version(&http, cluster.base(node), "kinds", 1).await;
    }

    // The candidate is uploaded through node 2, compared by node 3 and by node 1.
    let response = http
        .put(format!(
            "{}/v1/plugins/kinds?stage=candidate&shadow_attempts=2",
            cluster.base(1)
        ))
        .bearer_auth(ACME_KEY)
        .body(crate::support::wasm("json-filter-next"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    compared_by_node_alone(&cluster, &http, &receiver, (2, "c"), 1).await;
    compared_by_node_alone(&cluster, &http, &receiver, (0, "a"), 2).await;

    // Every node reads the same report: both attempts, summed, and the run complete.
    for node in 0..3 {
        let report = shadow_report(&http, cluster.base(node), "kinds").await;
        assert_eq!(report["state"], "complete", "{report}");
        assert_eq!(
            (report["compared"].clone(), report["same"].clone()),
            (json!(2), json!(1)),
            "{report}"
        );
        assert_eq!(report["differences"]["decision"], 1);
        assert_eq!(report["cases"][0]["candidate"]["decision"], "drop");
    }

    // Promoted through node 3: node 1 runs the candidate, without a restart.
    let (status, promoted) = call(
        &http,
        "POST",
        format!("{}/v1/plugins/kinds/promote", cluster.base(2)),
        None,
    )
    .await;
    assert_eq!((status, promoted["version_id"].clone()), (200, json!(2)));
    wait_for_plugin_version(&http, cluster.base(0), "kinds", 2).await;
    let report = shadow_report(&http, cluster.base(0), "kinds").await;
    assert_eq!(report["state"], "promoted");
}
