//! One tenant cannot hurt another (issue 12), measured end to end on a real engine.
//!
//! Tenant A (`acme`) attacks with everything the issue lists at once: 20 webhooks pointed at a
//! tarpit on 127.0.0.1 (accepts TCP, never answers; `timeout_ms` 30 s, `max_in_flight` 64,
//! 1280 sends wanted against the engine's 256 delivery permits), plus a webhook whose plugin
//! loops until its deadline on every attempt. Tenant B (`globex`) has one healthy webhook and
//! posts events one at a time; each sample is the time from B's POST to the arrival at B's
//! receiver (ingest flush, dispatch, signing, send). The test prints B's p50/p99 alone and
//! under attack and asserts p99 under attack ≤ 2 × p99 alone. "Alone" is measured before the
//! attack and again after it (pooled), so a change in the shared machine's load between the
//! phases does not decide the result. Each attack runs three rounds, each between two phases of
//! B alone, and the median round decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::TcpListener;

use hookd::delivery::runtime::{DEFAULT_WORKER_NICE, guest_nice};

use crate::support::{
    ACME_KEY, GLOBEX_KEY, Receiver, TestEngine, eventually, parse_config, test_config_toml_with,
    wasm,
};
use crate::threads;

/// The measurements of this binary run one at a time.
pub(crate) static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes back the dirty pages that earlier tests (of this binary or of the ones cargo ran
/// before it) left in the page cache, so the kernel's writeback does not land in the fsyncs of
/// the measurement that follows. Called by each measurement once it holds [`ALONE`].
pub(crate) fn settle_earlier_writes() {
    let _ = std::process::Command::new("sync").status();
}

const WAIT: Duration = Duration::from_secs(30);
const ADMIN_KEY: &str = "fairness-admin-key";
/// B's samples per phase (p99 of 300 is the third-largest, so one stall of the shared machine
/// does not make it).
const B_SAMPLES: usize = 300;
/// The engine-wide delivery permits (the default) and the reserve kept for newcomers (1/16).
const PERMITS: usize = 256;
const RESERVE: usize = PERMITS / 16;

/// The least CPU time the guest threads run while B is measured under attack: A's loop runs
/// 100 ms per call, all but its first epoch tick on them, dozens of calls (see the end).
const GUESTS_RAN_AT_LEAST: Duration = Duration::from_secs(1);

/// CPU time run so far by the guest threads (`hookd-plugin`) of every engine in this process.
fn guest_threads_cpu() -> Duration {
    let ran = threads::nice_and_cpu_ns(std::process::id(), "hookd-plugin")
        .iter()
        .map(|&(_, ran)| ran)
        .sum();
    Duration::from_nanos(ran)
}

/// A TCP listener that accepts connections, reads what comes and never answers; counts the
/// connections open (a connection the engine closes, e.g. at its timeout, stops counting).
struct Tarpit {
    url: String,
    open: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
}

impl Tarpit {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let (count, token) = (open.clone(), stop.clone());
        tokio::spawn(async move {
            let mut held = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((mut socket, _)) = accepted else { continue };
                        count.fetch_add(1, Ordering::SeqCst);
                        let count = count.clone();
                        held.spawn(async move {
                            use tokio::io::AsyncReadExt as _;
                            let mut sink = [0u8; 4096];
                            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                            count.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                }
            }
            // Dropping the connections closes them: the engine's attempts end.
            held.shutdown().await;
            count.store(0, Ordering::SeqCst);
        });
        Tarpit { url, open, stop }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// B's latencies for `samples` events posted one at a time, sorted.
async fn b_latencies(engine: &TestEngine, receiver: &Receiver, samples: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let before = receiver.count();
        let sent = Instant::now();
        let (status, body) = engine
            .call(
                "POST",
                "/v1/events",
                GLOBEX_KEY,
                Some(json!({"type": "b.ping", "payload": {"i": i}})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let got = receiver.wait_for(before + 1, WAIT).await;
        out.push(got[before].at.saturating_duration_since(sent));
    }
    out.sort();
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, sorted: &[Duration]) {
    eprintln!(
        "B e2e latency {name}: p50 {:?}, p99 {:?}, max {:?} ({} samples)",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        sorted[sorted.len() - 1],
        sorted.len()
    );
}

/// Rounds of each attack, each measured against B alone just before and just after it.
const ROUNDS: usize = 3;

/// B's p99 under attack over its p99 alone (the phases just before and after the attack,
/// pooled), round by round; the bound holds for the median round.
#[derive(Default)]
struct Rounds(Vec<f64>);

impl Rounds {
    /// Prints one round's phases and keeps its ratio.
    fn push(&mut self, alone_before: &[Duration], alone_after: &[Duration], attacked: &[Duration]) {
        let mut alone: Vec<Duration> = alone_before.iter().chain(alone_after).copied().collect();
        alone.sort();
        eprintln!("round {}:", self.0.len() + 1);
        report("alone, before the attack", alone_before);
        report("alone, after the attack", alone_after);
        report("alone (both)", &alone);
        report("under attack", attacked);
        let (p99_alone, p99_attacked) = (percentile(&alone, 0.99), percentile(attacked, 0.99));
        self.0
            .push(p99_attacked.as_secs_f64() / p99_alone.as_secs_f64());
    }

    /// Asserts B's p99 `under` attack ≤ 2 × alone in the median round.
    fn assert_median_within_2x(mut self, under: &str) {
        self.0.sort_by(f64::total_cmp);
        let (ratios, median) = (&self.0, self.0[self.0.len() / 2]);
        eprintln!("B's p99 {under} / alone, by round (sorted): {ratios:.2?}");
        assert!(
            median <= 2.0,
            "B's p99 {under} is {median:.2} × alone in the median round ({ratios:.2?})"
        );
    }
}

/// `sending` of a tenant in the admin view: the delivery permits it holds.
async fn sending(engine: &TestEngine, tenant: &str) -> usize {
    let (status, tenants) = engine
        .call("GET", "/v1/admin/tenants", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200, "{tenants}");
    tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == tenant)
        .and_then(|t| t["sending"].as_u64())
        .unwrap() as usize
}

async fn plugin_timeouts(engine: &TestEngine) -> f64 {
    let text = engine
        .http
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("hookd_plugin_calls_total")
                && l.contains("tenant=\"acme\"")
                && l.contains("plugin_timeout")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The data dir is on tmpfs when the machine has one: these tests measure CPU and permits, and
/// a shared disk's fsync stalls (other processes writing) would decide p99 instead.
async fn start_engine() -> TestEngine {
    let shm = std::path::Path::new("/dev/shm");
    let data_dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let text = format!(
        "admin_api_keys = [\"sha256:{}\"]\n{}",
        hex::encode(hookd::config::hash_api_key(ADMIN_KEY)),
        test_config_toml_with(
            data_dir.path(),
            // A's looping plugin is retried at once, so it loops the whole time.
            r#"retry_schedule = ["10ms", "10ms", "10ms", "10ms", "10ms", "10ms", "10ms", "10ms"]"#,
            true,
            "deadline = \"100ms\"",
        )
    );
    // A's plugins may keep one core of this 2-core machine busy, not both: how many plugin
    // calls a tenant runs at once is the plugin host's share (`max_concurrent_calls_per_tenant`,
    // by default the number of cores); this test measures what delivery permits, ingest and
    // the offloaded work do for B with that share set as an operator of a 2-core host would.
    let acme = "id = \"acme\"\n";
    let at = text.find(acme).expect("the test config has acme") + acme.len();
    let text = format!(
        "{}{}",
        &text[..at],
        text[at..].replacen(
            "[[tenants]]",
            "[tenants.plugins]\nmax_concurrent_calls_per_tenant = 1\n[[tenants]]",
            1
        )
    );
    TestEngine::start_in(data_dir, parse_config(&text)).await
}

/// A's attack: 20 webhooks at the tarpit and one with a plugin that loops to its deadline.
async fn attack(engine: &TestEngine, tarpit: &Tarpit, events: usize) -> Vec<String> {
    let response = engine
        .http
        .put(engine.url("/v1/plugins/spin"))
        .bearer_auth(ACME_KEY)
        .body(wasm("infinite-loop"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    // The looping webhook first: A's tarpit webhooks want more attempts than A may have in
    // progress, and a tenant's queues get room in turn only as its attempts finish.
    let looping = engine
        .create_webhook(json!({"url": tarpit.url, "plugins": [{"name": "spin"}]}))
        .await;
    let mut ids = vec![looping["id"].as_str().unwrap().to_string()];
    for _ in 0..20 {
        let webhook = engine
            .create_webhook(json!({"url": tarpit.url, "timeout_ms": 30_000, "max_in_flight": 64}))
            .await;
        ids.push(webhook["id"].as_str().unwrap().to_string());
    }
    let batch: Vec<Value> = (0..events)
        .map(|i| json!({"type": "user.created", "payload": {"i": i}}))
        .collect();
    let (status, body) = engine
        .post("/v1/events/batch", json!({ "events": batch }))
        .await;
    assert_eq!(status, 200, "{body}");
    ids
}

/// Two workers, like hookd on this 2-core machine. The attack runs in [`ROUNDS`] rounds,
/// each measured against B alone before and after it, and the bound holds for the median
/// round: on this shared virtual machine one burst of the host's noise in a phase of 300
/// samples can move a single p99 by more than the engine does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_attacking_with_a_tarpit_and_a_looping_plugin_does_not_slow_another() {
    let _alone = ALONE.lock().await;
    settle_earlier_writes();
    let engine = start_engine().await;
    let b_receiver = Receiver::start().await;
    let (status, body) = engine
        .call(
            "POST",
            "/v1/webhooks",
            GLOBEX_KEY,
            Some(json!({"url": b_receiver.url})),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let started = Instant::now();
    let phase = |name: &str| eprintln!("{:>8.1?} {name}", started.elapsed());
    // B alone (after a warm-up).
    b_latencies(&engine, &b_receiver, 5).await;
    let mut alone_before = b_latencies(&engine, &b_receiver, B_SAMPLES).await;
    phase("B alone measured");
    let mut rounds = Rounds::default();
    for _ in 0..ROUNDS {
        let attacked = tarpit_round(&engine, &b_receiver, &phase).await;
        let alone_after = b_latencies(&engine, &b_receiver, B_SAMPLES).await;
        phase("B alone measured");
        rounds.push(&alone_before, &alone_after, &attacked);
        alone_before = alone_after;
    }
    rounds.assert_median_within_2x("while A attacks");
}

/// One round of A's attack: starts it, checks that A holds every permit but the reserve and
/// that its plugin loops on threads below normal priority, measures B meanwhile, and ends it
/// (A's webhooks deleted, the tarpit gone, A's plugin calls over). Returns B's latencies
/// under attack, sorted.
async fn tarpit_round(
    engine: &TestEngine,
    b_receiver: &Receiver,
    phase: &impl Fn(&str),
) -> Vec<Duration> {
    let tarpit = Tarpit::start().await;
    // A attacks: 40 events × 20 tarpit webhooks = 800 sends of 30 s each, and the loop.
    let a_webhooks = attack(engine, &tarpit, 40).await;
    phase("A's attack posted");
    eventually(WAIT, "A holds every permit but the reserve", || async {
        (tarpit.open() >= PERMITS - RESERVE).then_some(())
    })
    .await;
    eventually(WAIT, "A's plugin loops", || async {
        (plugin_timeouts(engine).await >= 2.0).then_some(())
    })
    .await;
    phase("A holds its permits and loops");
    // Permits are held only by sends: every one A holds is a connection at the tarpit (its
    // looping attempts and those waiting for a permit hold none).
    assert_eq!(sending(engine, "acme").await, tarpit.open());
    assert_eq!(
        tarpit.open(),
        PERMITS - RESERVE,
        "A alone gets all but the reserve"
    );

    let b_received_before = b_receiver.count();
    let loops_before = plugin_timeouts(engine).await;
    let guests_ran_before = guest_threads_cpu();
    let attacked = b_latencies(engine, b_receiver, B_SAMPLES).await;
    let loops_during = plugin_timeouts(engine).await - loops_before;
    let guests_ran = guest_threads_cpu().saturating_sub(guests_ran_before);
    phase("B measured under attack");

    // A still holds its permits while B is idle again, and B holds none.
    assert_eq!(sending(engine, "globex").await, 0);
    assert_eq!(sending(engine, "acme").await, PERMITS - RESERVE);
    assert_eq!(b_receiver.count(), b_received_before + B_SAMPLES);

    // The attack ends: A's webhooks go, the tarpit lets go.
    for id in &a_webhooks {
        let (status, _) = engine
            .call("DELETE", &format!("/v1/webhooks/{id}"), ACME_KEY, None)
            .await;
        assert_eq!(status, 204);
    }
    drop(tarpit);
    eventually(WAIT, "A's sends are over", || async {
        (sending(engine, "acme").await == 0).then_some(())
    })
    .await;
    // ...and so are its attempts still queued for the plugin (each loops its 100 ms).
    let quiet_since = tokio::time::Instant::now() + WAIT;
    let mut last = plugin_timeouts(engine).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = plugin_timeouts(engine).await;
        if now == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < quiet_since,
            "A's plugin kept looping"
        );
        last = now;
    }

    eprintln!(
        "A: {loops_during} plugin calls stopped at their deadline during B's samples, \
         {guests_ran:?} of CPU on the guest threads"
    );
    assert!(
        loops_during >= 2.0,
        "A's plugin kept looping while B was measured"
    );
    // A's loop ran where guest calls finish, on threads below normal priority and never above
    // the delivery workers': at normal priority against deliveries at nice 5 it took most of
    // a core from B's deliveries (`plugin/runtime.rs`).
    let guests = threads::nice_and_cpu_ns(std::process::id(), "hookd-plugin");
    let expected = guest_nice(DEFAULT_WORKER_NICE);
    assert!(expected > 0, "guest calls finish below normal priority");
    assert!(
        !guests.is_empty() && guests.iter().all(|&(nice, _)| nice == expected),
        "the guest threads (nice, ns run): {guests:?}"
    );
    assert!(
        guests_ran >= GUESTS_RAN_AT_LEAST,
        "A's loop ran {guests_ran:?} on the guest threads"
    );
    attacked
}

/// The issue's CPU attack: simulate with a 1 MiB event on a webhook with the most secrets its
/// quota allows (after 50 rotations: 3), in two loops at once, i.e. one HMAC per secret over
/// 1 MiB per request, and a 1 MiB request and answer to parse and render. (With `webhook_id`,
/// simulate runs that webhook's chain, here none, whatever plugin the path names.)
///
/// A's simulations keep one core of this 2-core machine busy (at the offload threads' lower
/// priority), and on this shared virtual machine a busy core alone, even one running only a
/// `SCHED_IDLE` process, moves B's p99 to ~1.5 × alone. One burst of the host's noise in a
/// phase of 300 samples can then decide a single comparison (a CI run once read 2.1 ×), so
/// the attack runs in [`ROUNDS`] rounds, each between two phases of B alone, and the
/// bound holds for the median round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_simulating_1_mib_events_in_a_loop_does_not_slow_another() {
    let _alone = ALONE.lock().await;
    settle_earlier_writes();
    let engine = start_engine().await;
    let b_receiver = Receiver::start().await;
    let a_receiver = Receiver::start().await;
    let (status, body) = engine
        .call(
            "POST",
            "/v1/webhooks",
            GLOBEX_KEY,
            Some(json!({"url": b_receiver.url})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let webhook = engine.create_webhook(json!({"url": a_receiver.url})).await;
    let id = webhook["id"].as_str().unwrap().to_string();
    for _ in 0..50 {
        let (status, _) = engine
            .call(
                "POST",
                &format!("/v1/webhooks/{id}/rotate-secret"),
                ACME_KEY,
                None,
            )
            .await;
        assert_eq!(status, 200);
    }

    // 1 MiB of payload (a JSON string), simulated on A's webhook in two loops.
    let payload = json!({"blob": "x".repeat(1024 * 1024 - 12)});
    let request = Arc::new(
        serde_json::to_vec(
            &json!({"webhook_id": id, "event": {"type": "a.big", "payload": payload}}),
        )
        .unwrap(),
    );
    let url = engine.url("/v1/plugins/any/simulate");

    b_latencies(&engine, &b_receiver, 5).await;
    let mut alone_before = b_latencies(&engine, &b_receiver, B_SAMPLES).await;
    let mut rounds = Rounds::default();
    for _ in 0..ROUNDS {
        let simulations = Simulations::start(url.clone(), request.clone()).await;
        let attacked = b_latencies(&engine, &b_receiver, B_SAMPLES).await;
        let during = simulations.stop().await;
        let alone_after = b_latencies(&engine, &b_receiver, B_SAMPLES).await;
        eprintln!("A: {during} simulations of 1 MiB with 3 signatures while B was measured");
        assert!(during >= 2, "A kept simulating while B was measured");
        rounds.push(&alone_before, &alone_after, &attacked);
        alone_before = alone_after;
    }
    rounds.assert_median_within_2x("while A simulates 1 MiB events");
}

/// A's simulate loops. The attacker is its own client: its loops run on a thread and runtime
/// of their own, as a remote client's would, not on the engine's workers.
struct Simulations {
    stop: tokio_util::sync::CancellationToken,
    simulated: Arc<AtomicUsize>,
    started_with: usize,
    thread: std::thread::JoinHandle<()>,
}

impl Simulations {
    /// Starts the loops and returns once two simulations have been answered.
    async fn start(url: String, request: Arc<Vec<u8>>) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let simulated = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, simulated) = (stop.clone(), simulated.clone());
            std::thread::Builder::new()
                .name("attacker".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(simulate_loops(url, request, stop, simulated));
                })
                .unwrap()
        };
        eventually(WAIT, "A's simulations run", || async {
            (simulated.load(Ordering::SeqCst) >= 2).then_some(())
        })
        .await;
        let started_with = simulated.load(Ordering::SeqCst);
        Simulations {
            stop,
            simulated,
            started_with,
            thread,
        }
    }

    /// Stops the loops (their requests in progress finish); returns how many simulations were
    /// answered since `start` returned.
    async fn stop(self) -> usize {
        let during = self.simulated.load(Ordering::SeqCst) - self.started_with;
        self.stop.cancel();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        during
    }
}

/// Two loops posting `request` to `url` until `stop`; the first answer is checked for three
/// signatures, the rest are read and dropped.
async fn simulate_loops(
    url: String,
    request: Arc<Vec<u8>>,
    stop: tokio_util::sync::CancellationToken,
    simulated: Arc<AtomicUsize>,
) {
    let http = reqwest::Client::new();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (http, url, request) = (http.clone(), url.clone(), request.clone());
        let (stop, simulated) = (stop.clone(), simulated.clone());
        loops.spawn(async move {
            while !stop.is_cancelled() {
                let response = http
                    .post(&url)
                    .bearer_auth(ACME_KEY)
                    .header("content-type", "application/json")
                    .body(request.as_ref().clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let body = response.bytes().await.unwrap();
                if simulated.fetch_add(1, Ordering::SeqCst) == 0 {
                    let out: Value = serde_json::from_slice(&body).unwrap();
                    // Signed (three secrets sign; the value is shown by name only).
                    let signature = out["request"]["headers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|h| h["name"] == "webhook-signature")
                        .map(|h| h["value"].clone());
                    assert_eq!(signature, Some(Value::Null), "signed, not shown");
                }
            }
        });
    }
    while let Some(done) = loops.join_next().await {
        done.unwrap();
    }
}
