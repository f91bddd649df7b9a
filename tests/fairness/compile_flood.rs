//! A compile flood (issue 12), measured end to end on the real binary: `hookd serve` in a
//! process of its own (so its resident memory is the engine's alone, with its allocator),
//! uploads compiled in its `hookd plugin compile-worker` children.
//!
//! Tenant A (`acme`) uploads distinct large components in a loop, 10 uploads at once: the
//! 12 MB JavaScript plugin, each copy with its own custom section, so every one really compiles
//! (nothing comes from the compile cache). Tenant B (`globex`) uploads small plugins one at a
//! time and posts events one at a time to a webhook whose chain runs a plugin. The test prints
//! B's upload times and e2e delivery latencies alone (before and after the flood, pooled, so a
//! change in the shared machine's load between phases does not decide the result) and during
//! the flood, and asserts: B's median upload time during the flood within 3 × its median
//! alone, no delivery of B's waiting behind a compile (its slowest under [`NO_STALL`]) and the
//! bulk of them barely slower (p95 within 2 × alone + 10 ms),
//! A's surplus uploads refused as `503 compile_busy` with `Retry-After` (not queued without
//! bound), at most two compiles at once, every compile that runs past a second on Linux's idle
//! scheduling policy, uploads loaded from the compile cache on the engine's low-priority load
//! threads, and the engine's resident memory bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{
    ACME_KEY, GLOBEX_KEY, Receiver, compile_worker_pids, compile_workers, distinct, eventually,
    test_config_toml_with, wasm,
};
use crate::tenants::{ALONE, settle_earlier_writes};
use crate::threads::{self, stat_field, threads_named};

/// A's uploads in flight at once.
const FLOODERS: usize = 10;
/// B's uploads per phase.
const B_UPLOADS: usize = 5;
/// B's events per phase.
const B_EVENTS: usize = 300;
/// The slowest of B's deliveries during the flood stays under this: one that waited behind a
/// compile of A's (each takes seconds: ~25 s of CPU for the JavaScript component in a test
/// build) would pass it.
const NO_STALL: Duration = Duration::from_secs(1);
/// How much the engine's peak resident memory may pass its resident memory before the flood.
/// The engine holds at most one of A's bodies at a time (A's queued uploads are not read) and
/// loads at most three of A's versions (A uploads under three names), each ~12 MB of component
/// plus its compiled code; the compiles themselves happen in the workers.
const PEAK_GROWTH_BOUND_MIB: f64 = 250.0;
const WAIT: Duration = Duration::from_secs(30);
/// Added to twice B's delivery p95 alone for its bound during the flood. A compile that yields
/// the CPU at once (idle policy) still shares the two cores' caches and memory bandwidth with
/// B's engine threads: B's median rose 25–35 % during the flood with the idle policy, 50–60 %
/// with nice 19 alone, and on a tail of ~10 ms (a debug build's work) the ratio alone was
/// decided by noise (2.01× in one CI run). The bound is on p95 (the 15th-largest of 300), not
/// p99: in one CI run three of B's 300 deliveries during the flood took over 44 ms against a
/// p99 of 12 ms alone, with the median up only 20 % (7.6 → 9.2 ms), while during the flood
/// the engine's own CPU barely moves (26 → 28 % of a core, sampled per thread: the one
/// compile runs on the idle policy, the refused uploads cost nothing seen) — stalls of the
/// shared machine, which a p99 of 300 counts from the third on. A stall of B behind one of
/// A's compiles is what [`NO_STALL`] bounds.
const SHARED_CORES_ALLOWANCE: Duration = Duration::from_millis(10);

/// The least CPU time the engine's plugin-load threads run during the test (see the end).
const LOADS_RAN_AT_LEAST: Duration = Duration::from_millis(10);

/// Linux's number for the idle scheduling policy (`sched(7)`).
const SCHED_IDLE: u32 = 5;

/// The scheduling policy of worker `pid`'s thread named `compile` (field 41 of its `stat`),
/// `None` while it has none (still reading its input) or once it has exited.
fn compile_thread_policy(pid: u32) -> Option<u32> {
    threads_named(pid, "compile")
        .iter()
        .find_map(|task| stat_field(task, 41))
}

/// The engine's (`pid`'s) threads that load uploads from the compile cache (named
/// `hookd-plugin-load`, cut to 15 bytes by the kernel): each one's nice value and CPU time.
fn load_threads(pid: u32) -> Vec<(i32, u64)> {
    threads::nice_and_cpu_ns(pid, "hookd-plugin-lo")
}

/// `hookd serve` in a process of its own, killed when dropped.
struct Engine {
    process: std::process::Child,
    base: String,
    http: reqwest::Client,
    data: tempfile::TempDir,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Engine {
    fn start() -> Engine {
        use std::io::BufRead as _;
        let shm = std::path::Path::new("/dev/shm");
        let data = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let config = data.path().join("hookd.toml");
        let text = test_config_toml_with(
            &data.path().join("data"),
            "",
            true,
            "compile_timeout = \"120s\"\ncompile_wait = \"2s\"",
        );
        std::fs::write(&config, text).unwrap();
        let mut process = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("hookd starts");
        let stdout = process.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
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
        Engine {
            process,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            data,
        }
    }

    /// `VmRSS` or `VmHWM` of the engine process, in MiB.
    fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// CPU seconds the engine process used so far (user + system, its threads only).
    fn cpu_s(&self) -> f64 {
        let process = std::path::PathBuf::from(format!("/proc/{}", self.process.id()));
        let ticks = |n: usize| stat_field::<f64>(&process, n).unwrap_or(0.0);
        // utime and stime (fields 14 and 15), in ticks of 1/100 s on Linux.
        (ticks(14) + ticks(15)) / 100.0
    }

    async fn call(
        &self,
        path: &str,
        key: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }
}

async fn upload(engine: &Engine, key: &str, name: &str, bytes: Vec<u8>) -> (u16, bool) {
    let response = engine
        .http
        .put(format!("{}/v1/plugins/{name}", engine.base))
        .bearer_auth(key)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    (status, retry_after)
}

/// B's upload times of `B_UPLOADS` distinct small plugins, one at a time.
async fn b_uploads(engine: &Engine, phase: &str) -> Vec<Duration> {
    let mut times = Vec::new();
    for i in 0..B_UPLOADS {
        let started = Instant::now();
        let bytes = distinct(&wasm("json-filter"), &format!("b-{phase}-{i}"));
        let (status, _) = upload(engine, GLOBEX_KEY, &format!("u{i}"), bytes).await;
        assert!(status == 201 || status == 200, "B's upload: {status}");
        times.push(started.elapsed());
    }
    times
}

/// B's e2e latencies (POST to arrival), sorted.
async fn b_latencies(engine: &Engine, receiver: &Receiver) -> Vec<Duration> {
    let mut out = Vec::with_capacity(B_EVENTS);
    for i in 0..B_EVENTS {
        let before = receiver.count();
        let sent = Instant::now();
        let (status, body) = engine
            .call(
                "/v1/events",
                GLOBEX_KEY,
                json!({"type": "b.ping", "payload": {"kind": "a", "i": i}}),
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

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// What A's uploads got.
#[derive(Default)]
struct Flood {
    installed: AtomicUsize,
    busy: AtomicUsize,
    busy_without_retry_after: AtomicUsize,
    other: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_the_compiler_does_not_stall_another_tenants_uploads_or_deliveries() {
    let _alone = ALONE.lock().await;
    settle_earlier_writes();
    let engine = Engine::start();
    let data = engine.data.path().to_path_buf();
    let loaded_before: u64 = load_threads(engine.process.id())
        .iter()
        .map(|&(_, ran)| ran)
        .sum();
    let receiver = Receiver::start().await;
    let (status, _) = upload(&engine, GLOBEX_KEY, "f", wasm("json-filter")).await;
    assert_eq!(status, 201);
    let (status, body) = engine
        .call(
            "/v1/webhooks",
            GLOBEX_KEY,
            json!({
                "url": receiver.url,
                "plugins": [{"name": "f", "config": {"path": "data.kind", "allowed": ["a"]}}],
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // B alone (after a warm-up of each).
    b_uploads(&engine, "warm").await;
    b_latencies(&engine, &receiver).await;
    let cpu_alone = engine.cpu_s();
    let alone_started = Instant::now();
    let mut uploads_alone = b_uploads(&engine, "alone").await;
    let mut events_alone = b_latencies(&engine, &receiver).await;
    let cpu_alone = (engine.cpu_s() - cpu_alone) / alone_started.elapsed().as_secs_f64();
    let rss_before = engine.memory_mib("VmRSS:");

    // A floods: 10 uploads at once, each a new large component, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = Arc::new(Flood::default());
    let js = Arc::new(wasm("js-filter"));
    // A's uploads run on a runtime of their own, so preparing and sending its 12 MB bodies
    // does not delay B's client in this process (the engine is another process).
    let attacker = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut flooders = tokio::task::JoinSet::new();
    for task in 0..FLOODERS {
        let url = engine.base.clone();
        let (stop, flood, js) = (stop.clone(), flood.clone(), js.clone());
        let engine_http = reqwest::Client::new();
        flooders.spawn_on(
            async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let bytes = distinct(&js, &format!("a-{task}-{n}"));
                    n += 1;
                    let response = engine_http
                        .put(format!("{url}/v1/plugins/big{}", task % 3))
                        .bearer_auth(ACME_KEY)
                        .body(bytes)
                        .send()
                        .await
                        .unwrap();
                    let counter = match response.status().as_u16() {
                        200 | 201 => &flood.installed,
                        503 if response.headers().contains_key("retry-after") => &flood.busy,
                        503 => &flood.busy_without_retry_after,
                        _ => &flood.other,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            },
            attacker.handle(),
        );
    }
    let attacker = std::thread::spawn(move || {
        attacker.block_on(async { while flooders.join_next().await.is_some() {} });
    });
    eventually(WAIT, "A's compile runs", || {
        let running = compile_workers(&data);
        async move { (running > 0).then_some(()) }
    })
    .await;
    // The most compile workers seen at once, sampled every 10 ms during the flood, and the
    // scheduling policy of the compile thread of each worker seen for over 2 s (a compile
    // moves to the idle policy after 1 s: `LONG_COMPILE`).
    let most_workers = Arc::new(AtomicUsize::new(0));
    let long_policies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = {
        let (stop, most, data) = (stop.clone(), most_workers.clone(), data.clone());
        let long_policies = long_policies.clone();
        tokio::spawn(async move {
            let mut first_seen = std::collections::HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                let pids = compile_worker_pids(&data);
                most.fetch_max(pids.len(), Ordering::SeqCst);
                for pid in pids {
                    let seen = *first_seen.entry(pid).or_insert_with(Instant::now);
                    if seen.elapsed() > Duration::from_secs(2)
                        && let Some(policy) = compile_thread_policy(pid)
                    {
                        long_policies.lock().unwrap().push(policy);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let flood_started = Instant::now();
    let cpu_flood = engine.cpu_s();
    let uploads_flooded = b_uploads(&engine, "flood").await;
    let events_flooded = b_latencies(&engine, &receiver).await;
    let flood_for = flood_started.elapsed();
    let cpu_flood = (engine.cpu_s() - cpu_flood) / flood_for.as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let most_workers = most_workers.load(Ordering::SeqCst);
    let long_policies = std::mem::take(&mut *long_policies.lock().unwrap());
    // A's last uploads end with their compile (each at most `compile_timeout`).
    tokio::task::spawn_blocking(move || attacker.join())
        .await
        .unwrap()
        .expect("A's uploads ended");
    let (rss_after, peak) = (engine.memory_mib("VmRSS:"), engine.memory_mib("VmHWM:"));
    eventually(WAIT, "A's last compile is over", || {
        let running = compile_workers(&data);
        async move { (running == 0).then_some(()) }
    })
    .await;
    uploads_alone.extend(b_uploads(&engine, "after").await);
    events_alone.extend(b_latencies(&engine, &receiver).await);
    events_alone.sort();

    let (installed, busy) = (
        flood.installed.load(Ordering::SeqCst),
        flood.busy.load(Ordering::SeqCst),
    );
    eprintln!(
        "A's flood over {flood_for:?}: {installed} installed, {busy} refused as compile_busy, {} other",
        flood.other.load(Ordering::SeqCst)
    );
    eprintln!(
        "engine CPU (its own process, not the workers): {:.0}% of a core while B alone, {:.0}% during the flood",
        cpu_alone * 100.0,
        cpu_flood * 100.0
    );
    eprintln!("B's uploads alone {uploads_alone:?}, during the flood {uploads_flooded:?}");
    let summary = |sorted: &[Duration]| {
        format!(
            "p50 {:?} p95 {:?} p99 {:?} max {:?}",
            percentile(sorted, 0.5),
            percentile(sorted, 0.95),
            percentile(sorted, 0.99),
            percentile(sorted, 1.0),
        )
    };
    eprintln!(
        "B's e2e latency alone {}; during the flood {}",
        summary(&events_alone),
        summary(&events_flooded),
    );
    eprintln!(
        "engine process RSS {rss_before:.0} MiB before the flood, {rss_after:.0} MiB after, peak {peak:.0} MiB"
    );

    assert!(busy > 0, "A's surplus uploads were refused, not queued");
    assert_eq!(flood.busy_without_retry_after.load(Ordering::SeqCst), 0);
    assert_eq!(
        flood.other.load(Ordering::SeqCst),
        0,
        "A's uploads: 2xx or 503"
    );
    assert!(most_workers <= 2, "{most_workers} compiles at once");
    assert!(
        !long_policies.is_empty() && long_policies.iter().all(|&p| p == SCHED_IDLE),
        "the scheduling policies of compiles running over 2 s: {long_policies:?} (5 is SCHED_IDLE)"
    );
    let (normal, flooded) = (
        median(uploads_alone.clone()),
        median(uploads_flooded.clone()),
    );
    assert!(
        flooded <= 3 * normal,
        "B's uploads took {flooded:?} (median) during the flood, alone {normal:?}"
    );
    let slowest = percentile(&events_flooded, 1.0);
    assert!(
        slowest < NO_STALL,
        "one of B's deliveries took {slowest:?} during the flood: it waited behind a compile"
    );
    let (p95_alone, p95_flooded) = (
        percentile(&events_alone, 0.95),
        percentile(&events_flooded, 0.95),
    );
    assert!(
        p95_flooded <= 2 * p95_alone + SHARED_CORES_ALLOWANCE,
        "B's delivery p95 during the flood {p95_flooded:?} > 2 × alone {p95_alone:?} + {SHARED_CORES_ALLOWANCE:?}"
    );
    // Every upload (B's, and A's install) was hashed and loaded from the compile cache on
    // the low-priority load threads, not at normal priority beside B's deliveries.
    let loaders = load_threads(engine.process.id());
    assert!(
        !loaders.is_empty() && loaders.iter().all(|&(nice, _)| nice == 10),
        "the engine's plugin-load threads (nice, ns run): {loaders:?}"
    );
    // Loading B's uploads (~126 KB each) and A's install (12 MB) takes well over the bound;
    // a thread's start and its waits take microseconds.
    let loading =
        Duration::from_nanos(loaders.iter().map(|&(_, ran)| ran).sum::<u64>() - loaded_before);
    eprintln!(
        "the engine's plugin-load threads (nice, ns run): {loaders:?}, {loading:?} in this test"
    );
    assert!(
        loading > LOADS_RAN_AT_LEAST,
        "the uploads were loaded elsewhere: the load threads ran for {loading:?}"
    );
    assert!(
        peak - rss_before <= PEAK_GROWTH_BOUND_MIB,
        "the engine's peak RSS {peak:.0} MiB, {rss_before:.0} MiB before the flood"
    );
}
