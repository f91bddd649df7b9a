//! End-to-end benchmark (issue 4): the real release `hookd` as its own process with a temp
//! data dir, a receiver in another process (this binary re-run with `--receiver`) on
//! 127.0.0.1, and a load generator here. Every run measures the loopback ceiling (the same
//! generator posting the same body straight to the receiver) before and after scenario 1 and
//! prints each hookd figure also as a ratio to the mean of the two; then a table, PASS/FAIL per
//! target, and one JSON line.
//!
//! `cargo bench -p hookd --bench e2e` (= `-- --all`), `-- --scenario 1,3`, `-- --help`.
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a tiny smoke run.
#![allow(clippy::print_stdout, clippy::print_stderr)]
// A benchmark reports on stdout.
// The load generator is an HTTP client of its own, like tests/it.
#![allow(clippy::disallowed_methods)]

#[path = "e2e/machine.rs"]
mod machine;
#[path = "e2e/nodes.rs"]
mod nodes;
#[path = "e2e/procs.rs"]
mod procs;
#[path = "e2e/receiver.rs"]
mod receiver;
#[path = "e2e/relay.rs"]
mod relay;
#[path = "shared/reshape.rs"]
mod reshape;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use procs::{
    API_KEY, Proc, cpu_seconds, cpu_seconds_by_thread, dir_mib, spawn_engine, spawn_receiver,
    spawn_relay, switches_by_thread, vm_mib,
};

const HELP: &str = "\
e2e: end-to-end benchmark of the release hookd (issue 4)

  cargo bench -p hookd --bench e2e [-- OPTIONS]

  --all             every scenario but 7 (the default under `cargo bench`)
  --scenario LIST   comma-separated: 1, 1b (scenario 1 through the batch route), 2, 3, 4, 5, 6,
                    7 (history); the loopback ceiling and scenario 1 always run (others compare
                    with them)
  --events N        events per scenario 1-4 and 7 run (default 20000; scenario 2 uses N/4)
  --backlog N       events of scenario 5 (default 1000000)
  --history N       events of history scenario 7 puts between its two runs (default 1000000)
  --s5-budget SECS  time cap of scenario 5's drain (default 240)
  --s6-rate N       offer scenario 6 at N events/s instead of half of s1's rate (to compare two
                    engines at one rate; the check then names the rate as set)
  --engine PATH     the hookd binary to run (default: this build's release binary), e.g. an
                    older release, for a before/after in one session
  --backend postgres  also run scenario 1's shape on PostgreSQL (started here, durable): one
                    node and --nodes nodes sharing the database, next to sled's scenario 1
  --nodes N         nodes of the shared-database run (default 3)
  --pg-backlog N    events of the PostgreSQL backlog, drained by one node (default 100000)
  --help            this text

Scenario 5 with its default backlog of a million and scenario 7 take minutes each; alone:
  cargo bench -p hookd --bench e2e -- --scenario 5
  cargo bench -p hookd --bench e2e -- --scenario 7

Environment:
  BENCH_QUOTAS=1    give an --engine of another build the bench's raised tenant quotas (left
                    out otherwise: a release before quotas refuses the section)
  BENCH_CONCURRENCY=N  N producers (and ceiling senders) instead of 32, for a diagnosis only;
                    the header and the s1 lines print the value used
";

/// Unix time in ns (the receiver compares it with the send time in the payload).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Producers (and the ceiling's senders) at once: 32, the issue's figure. `BENCH_CONCURRENCY`
/// changes it for a diagnosis only (how much of s1's idle time the closed loop leaves); the
/// header and the s1 lines print the value used.
fn concurrency() -> usize {
    static VALUE: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
        std::env::var("BENCH_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(32)
    });
    *VALUE
}
/// Longest a load generation may take; a stuck engine ends the run instead of the bench.
const GENERATE_LIMIT: Duration = Duration::from_secs(300);
/// Padding that makes an event's payload ~1 KiB.
const PAD: &str = concat!(
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ",
    "ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco ",
    "laboris nisi ut aliquip ex ea commodo consequat duis aute irure dolor in reprehenderit in ",
    "voluptate velit esse cillum dolore eu fugiat nulla pariatur excepteur sint occaecat cupidat ",
    "non proident sunt in culpa qui officia deserunt mollit anim id est laborum lorem ipsum dolo ",
    "sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore m ",
    "magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi ut aliqu ",
    "ex ea commodo consequat duis aute irure dolor in reprehenderit in voluptate velit esse cillu ",
    "dolore eu fugiat nulla pariatur excepteur sint occaecat cupidatat non proident sunt in culpa",
);

/// An event's payload (~1 KiB): the send time rides in `content`, which the reshape plugin's
/// flat shape keeps.
fn payload(seq: usize, sent_ns: u64) -> String {
    format!(
        r#"{{"from":"shop@example.com","to":"customer@example.com","content":"T{sent_ns}","seq":{seq},"password":"hunter2","pad":"{PAD}"}}"#
    )
}

fn event_json(seq: usize, sent_ns: u64) -> String {
    format!(
        r#"{{"type":"order.created","payload":{}}}"#,
        payload(seq, sent_ns)
    )
}

/// The Standard Webhooks body hookd sends for an event (what the ceiling run posts).
fn envelope(seq: usize, sent_ns: u64) -> String {
    format!(
        r#"{{"id":"evt_0000000000000000000000{seq:06}","type":"order.created","timestamp":"2026-01-01T00:00:00Z","data":{}}}"#,
        payload(seq, sent_ns)
    )
}

#[derive(Clone)]
enum Target {
    /// `POST /v1/events`, one event per request.
    Single(String),
    /// `POST /v1/events/batch` with this many events per request.
    Batch(String, usize),
    /// The receiver itself (the loopback ceiling).
    Direct(String),
}

#[derive(Default)]
struct Ingested {
    accepted: usize,
    refused: usize,
    first_send_ns: u64,
    wall: Duration,
    /// Per request (a batch is one request).
    accept_us: Vec<u32>,
    /// The engine stopped answering, or the run hit [`GENERATE_LIMIT`].
    aborted: bool,
}

impl Ingested {
    fn per_sec(&self) -> f64 {
        self.accepted as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Sends `events` events to `target`: `concurrency()` keep-alive workers back to back, or
/// open-loop at `rate` events/s (at most 512 requests outstanding).
async fn generate(
    http: &reqwest::Client,
    target: &Target,
    events: usize,
    rate: Option<f64>,
) -> Ingested {
    let per_request = match target {
        Target::Batch(_, size) => *size,
        _ => 1,
    };
    let requests = events.div_ceil(per_request);
    let next = Arc::new(AtomicUsize::new(0));
    // Set when the engine stops answering (a transport error or the deadline): every worker
    // stops instead of waiting out the client timeout on each remaining request.
    let abort = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + GENERATE_LIMIT;
    let first_send_ns = now_ns();
    let send_one = {
        let http = http.clone();
        let target = target.clone();
        let abort = abort.clone();
        move |request: usize| {
            let http = http.clone();
            let target = target.clone();
            let abort = abort.clone();
            async move {
                let sent = now_ns();
                let t0 = Instant::now();
                let lo = request * per_request;
                let hi = (lo + per_request).min(events);
                let builder = match &target {
                    Target::Single(base) => http
                        .post(format!("{base}/v1/events"))
                        .bearer_auth(API_KEY)
                        .body(event_json(lo, sent)),
                    Target::Batch(base, _) => {
                        let items: Vec<String> = (lo..hi).map(|s| event_json(s, sent)).collect();
                        http.post(format!("{base}/v1/events/batch"))
                            .bearer_auth(API_KEY)
                            .body(format!(r#"{{"events":[{}]}}"#, items.join(",")))
                    }
                    Target::Direct(url) => http
                        .post(url)
                        .header("webhook-id", format!("msg_{lo}"))
                        .body(envelope(lo, sent)),
                };
                let response = builder
                    .header("content-type", "application/json")
                    .send()
                    .await;
                let (accepted, refused) = match response {
                    Ok(r) if r.status().is_success() => match &target {
                        Target::Batch(..) => {
                            let body: Value = r.json().await.unwrap_or(Value::Null);
                            let ok = body["results"]
                                .as_array()
                                .map(|rs| rs.iter().filter(|x| x["status"] == 202).count())
                                .unwrap_or(0);
                            (ok, hi - lo - ok)
                        }
                        _ => {
                            let _ = r.bytes().await;
                            (1, 0)
                        }
                    },
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        eprintln!("refused: {status} {text}");
                        (0, hi - lo)
                    }
                    Err(err) => {
                        if !abort.swap(true, Ordering::SeqCst) {
                            eprintln!("  request failed ({err}); the generator stops");
                        }
                        (0, hi - lo)
                    }
                };
                (accepted, refused, t0.elapsed().as_micros() as u32)
            }
        }
    };
    let mut result = Ingested {
        first_send_ns,
        ..Default::default()
    };
    match rate {
        None => {
            let workers: Vec<_> = (0..concurrency())
                .map(|_| {
                    let next = next.clone();
                    let send_one = send_one.clone();
                    let abort = abort.clone();
                    tokio::spawn(async move {
                        let mut mine = Vec::new();
                        loop {
                            let request = next.fetch_add(1, Ordering::Relaxed);
                            if request >= requests
                                || abort.load(Ordering::SeqCst)
                                || Instant::now() > deadline
                            {
                                break mine;
                            }
                            mine.push(send_one(request).await);
                        }
                    })
                })
                .collect();
            for worker in workers {
                for (a, r, us) in worker.await.expect("worker") {
                    result.accepted += a;
                    result.refused += r;
                    result.accept_us.push(us);
                }
            }
        }
        Some(rate) => {
            let outstanding = Arc::new(Semaphore::new(512));
            let mut tasks = Vec::with_capacity(requests);
            for request in 0..requests {
                if abort.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let due = start + Duration::from_secs_f64(request as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let permit = outstanding.clone().acquire_owned().await.expect("open");
                let send_one = send_one.clone();
                tasks.push(tokio::spawn(async move {
                    let out = send_one(request).await;
                    drop(permit);
                    out
                }));
            }
            for task in tasks {
                let (a, r, us) = task.await.expect("request task");
                result.accepted += a;
                result.refused += r;
                result.accept_us.push(us);
            }
        }
    }
    result.wall = start.elapsed();
    result.aborted = abort.load(Ordering::SeqCst) || Instant::now() > deadline;
    result
}

fn percentile(samples: &mut [u32], q: f64) -> u32 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// The receiver process and a client for its control routes.
struct Rx {
    proc: Proc,
    base: String,
    http: reqwest::Client,
}

impl Rx {
    async fn ctl(&self, path: &str) {
        self.http
            .post(format!("{}/ctl/{path}", self.base))
            .send()
            .await
            .expect("receiver control");
    }

    async fn get(&self, what: &str) -> Value {
        self.http
            .get(format!("{}/ctl/{what}", self.base))
            .send()
            .await
            .expect("receiver answers")
            .json()
            .await
            .expect("receiver JSON")
    }

    /// Waits until `path` (or "ALL") has `expected` distinct ids; gives up after `stall` without
    /// progress or at `deadline`. Returns the counts.
    async fn wait_for(&self, path: &str, expected: usize, stall: Duration, deadline: Instant) {
        let (mut last, mut since) = (0, Instant::now());
        loop {
            let counts = self.get("counts").await;
            let got = counts[path]["distinct"].as_u64().unwrap_or(0) as usize;
            if got >= expected || Instant::now() > deadline {
                return;
            }
            if got != last {
                (last, since) = (got, Instant::now());
            } else if since.elapsed() > stall {
                eprintln!("  {path}: no progress for {stall:?} at {got}/{expected}; giving up");
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/hook/{path}", self.base)
    }
}

/// A fresh engine: temp dir, config, the release binary.
struct Engine {
    proc: Proc,
    base: String,
    data: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Engine {
    async fn start(http: &reqwest::Client, attempt_timeout: &str) -> Engine {
        // The previous scenario's data dir was just deleted and its writes may still be in the
        // page cache: write them out first, or the kernel does it during this scenario and
        // its fsyncs stall behind them (seen as 70-140 ms syncs and an s6 p99 near 100 ms).
        rustix::fs::sync();
        let dir = tempfile::Builder::new()
            .prefix("hookd-e2e-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let config = procs::write_config(dir.path(), &data, attempt_timeout);
        let (proc, base) = spawn_engine(dir.path(), &config, &data, http).await;
        Engine {
            proc,
            base,
            data,
            config,
            dir,
        }
    }

    /// kill -9, then the same binary on the same data dir.
    async fn kill_and_restart(&mut self, http: &reqwest::Client) {
        self.proc.kill();
        let (proc, base) = spawn_engine(self.dir.path(), &self.config, &self.data, http).await;
        (self.proc, self.base) = (proc, base);
    }

    async fn create_webhook(&self, http: &reqwest::Client, mut body: Value) -> String {
        if body.get("event_types").is_none() {
            body["event_types"] = json!(["*"]);
        }
        let r = http
            .post(format!("{}/v1/webhooks", self.base))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("engine answers");
        let status = r.status();
        let answer: Value = r.json().await.expect("JSON");
        assert_eq!(status.as_u16(), 201, "create webhook: {answer}");
        answer["id"].as_str().unwrap_or_default().to_string()
    }
}

/// One scenario's figures.
#[derive(Default, Clone)]
struct Figures {
    name: String,
    events: usize,
    ingest_eps: f64,
    accept_p50_us: u32,
    accept_p99_us: u32,
    deliveries: u64,
    deliveries_per_s: f64,
    e2e_us: [u64; 4],
    lost: i64,
    duplicates: u64,
    engine_cpu_s: f64,
    receiver_cpu_s: f64,
    generator_cpu_s: f64,
    engine_peak_rss_mib: f64,
    data_mib: f64,
    /// Every event was offered and accepted (no refusal, the engine kept answering).
    complete: bool,
    extra: serde_json::Map<String, Value>,
}

impl Figures {
    fn json(&self, ceiling: f64) -> Value {
        let mut v = json!({
            "events": self.events,
            "ingest_events_per_s": self.ingest_eps.round(),
            "ingest_ratio_to_ceiling": ratio(self.ingest_eps, ceiling),
            "accept_p50_us": self.accept_p50_us,
            "accept_p99_us": self.accept_p99_us,
            "deliveries": self.deliveries,
            "deliveries_per_s": self.deliveries_per_s.round(),
            "deliveries_ratio_to_ceiling": ratio(self.deliveries_per_s, ceiling),
            "e2e_p50_us": self.e2e_us[0], "e2e_p90_us": self.e2e_us[1],
            "e2e_p99_us": self.e2e_us[2], "e2e_max_us": self.e2e_us[3],
            "lost": self.lost, "duplicates": self.duplicates, "complete": self.complete,
            "engine_cpu_s": round2(self.engine_cpu_s),
            "receiver_cpu_s": round2(self.receiver_cpu_s),
            "generator_cpu_s": round2(self.generator_cpu_s),
            "engine_peak_rss_mib": round2(self.engine_peak_rss_mib),
            "data_dir_mib": round2(self.data_mib),
        });
        for (k, x) in &self.extra {
            v[k] = x.clone();
        }
        v
    }

    fn row(&self, ceiling: f64) {
        println!(
            "{:<5} {:>8} {:>9.0} {:>5.2} {:>6} {:>7} {:>9.0} {:>5.2} {:>7} {:>7} {:>7} {:>8} {:>4} {:>4} {:>6.1} {:>6.1} {:>7.0}",
            self.name,
            self.events,
            self.ingest_eps,
            ratio(self.ingest_eps, ceiling),
            self.accept_p50_us,
            self.accept_p99_us,
            self.deliveries_per_s,
            ratio(self.deliveries_per_s, ceiling),
            self.e2e_us[0],
            self.e2e_us[1],
            self.e2e_us[2],
            self.e2e_us[3],
            self.lost,
            self.duplicates,
            self.engine_cpu_s,
            self.engine_peak_rss_mib,
            self.data_mib,
        );
    }
}

/// Engine CPU per delivery of a run, in µs.
fn per_delivery_us(f: &Figures) -> f64 {
    f.engine_cpu_s / f.deliveries.max(1) as f64 * 1e6
}

fn ratio(x: f64, ceiling: f64) -> f64 {
    round2(x / ceiling.max(1e-9))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn header() {
    println!(
        "{:<5} {:>8} {:>9} {:>5} {:>6} {:>7} {:>9} {:>5} {:>7} {:>7} {:>7} {:>8} {:>4} {:>4} {:>6} {:>6} {:>7}",
        "scen",
        "events",
        "ingest/s",
        "xceil",
        "acc50",
        "acc99",
        "deliv/s",
        "xceil",
        "e2e50",
        "e2e90",
        "e2e99",
        "e2emax",
        "lost",
        "dup",
        "cpu_s",
        "rssMiB",
        "diskMiB"
    );
}

/// Fills the delivery figures of `f` from the receiver's stats for this scenario.
async fn delivery_figures(
    rx: &Rx,
    path: &str,
    expected: usize,
    ingest: &Ingested,
    f: &mut Figures,
) {
    let stats = rx.get("stats").await;
    let s = &stats[path];
    let total = s["total"].as_u64().unwrap_or(0);
    let distinct = s["distinct"].as_u64().unwrap_or(0);
    let last = s["last_ns"].as_u64().unwrap_or(0);
    f.deliveries = distinct;
    f.deliveries_per_s =
        distinct as f64 / ((last.saturating_sub(ingest.first_send_ns)) as f64 / 1e9).max(1e-9);
    f.e2e_us = ["p50_us", "p90_us", "p99_us", "max_us"].map(|k| s[k].as_u64().unwrap_or(0));
    f.lost = expected as i64 - distinct as i64;
    f.duplicates = total - distinct;
}

fn ingest_figures(ingest: &mut Ingested, f: &mut Figures) {
    f.events = ingest.accepted;
    f.complete = !ingest.aborted && ingest.refused == 0;
    f.ingest_eps = ingest.per_sec();
    f.accept_p50_us = percentile(&mut ingest.accept_us, 0.5);
    f.accept_p99_us = percentile(&mut ingest.accept_us, 0.99);
    if ingest.refused > 0 {
        f.extra.insert("refused".into(), json!(ingest.refused));
    }
    if ingest.aborted {
        println!(
            "  {}: the engine stopped answering; figures cover what was sent",
            f.name
        );
        f.extra
            .insert("engine_stopped_answering".into(), json!(true));
    }
}

struct Bench {
    http: reqwest::Client,
    rx: Rx,
    events: usize,
}

/// (sum, count) of a histogram of the engine's `/metrics`, over every label set.
async fn histogram_totals(http: &reqwest::Client, base: &str, name: &str) -> (f64, f64) {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    let sum_of = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum_of(&format!("{name}_sum")),
        sum_of(&format!("{name}_count")),
    )
}

/// A Prometheus histogram from the engine's `/metrics`, summed over its label sets: the
/// cumulative count at each bucket bound (`+Inf` last), plus the sum and count.
#[derive(Default, Clone)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    async fn read(http: &reqwest::Client, base: &str, name: &str) -> Histogram {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        let mut h = Histogram::default();
        let bucket = format!("{name}_bucket{{");
        for line in text.lines() {
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            if line.starts_with(&bucket) {
                let le = line
                    .split("le=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(|le| le.parse::<f64>().unwrap_or(f64::INFINITY))
                    .unwrap_or(f64::INFINITY);
                match h.buckets.iter_mut().find(|(bound, _)| *bound == le) {
                    Some((_, n)) => *n += value,
                    None => h.buckets.push((le, value)),
                }
            } else if line.starts_with(&format!("{name}_sum")) {
                h.sum += value;
            } else if line.starts_with(&format!("{name}_count")) {
                h.count += value;
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    /// The cumulative count at bucket bound `le` (0 when there is no such bucket).
    fn within(&self, le: f64) -> f64 {
        self.buckets
            .iter()
            .find(|(bound, _)| *bound == le)
            .map_or(0.0, |(_, n)| *n)
    }

    /// What was recorded between `earlier` and `self`.
    fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| (le, n - earlier.within(le)))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The `q` quantile in µs, interpolated linearly inside its bucket (as Prometheus's
    /// `histogram_quantile`); the plugin buckets are 25 µs wide where chains run.
    fn quantile_us(&self, q: f64) -> f64 {
        let total = self.buckets.last().map_or(0.0, |(_, n)| *n);
        if total <= 0.0 {
            return 0.0;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return lower * 1e6;
                }
                let width = n - below;
                let share = if width > 0.0 {
                    (rank - below) / width
                } else {
                    1.0
                };
                return (lower + (le - lower) * share) * 1e6;
            }
            (lower, below) = (le, n);
        }
        lower * 1e6
    }

    fn mean_us(&self) -> f64 {
        self.sum / self.count.max(1.0) * 1e6
    }
}

/// The plugin chain's run time, CPU time and slot wait histograms.
struct PluginHistograms {
    wall: Histogram,
    cpu: Histogram,
    wait: Histogram,
}

impl PluginHistograms {
    async fn read(http: &reqwest::Client, base: &str) -> Self {
        PluginHistograms {
            wall: Histogram::read(http, base, "hookd_plugin_chain_seconds").await,
            cpu: Histogram::read(http, base, "hookd_plugin_chain_cpu_seconds").await,
            wait: Histogram::read(http, base, "hookd_plugin_slot_wait_seconds").await,
        }
    }

    fn since(&self, earlier: &PluginHistograms) -> Self {
        PluginHistograms {
            wall: self.wall.since(&earlier.wall),
            cpu: self.cpu.since(&earlier.cpu),
            wait: self.wait.since(&earlier.wait),
        }
    }

    /// Medians (and the wall time's p90 and mean) into `extra`, keys prefixed by `prefix`.
    fn record(&self, prefix: &str, extra: &mut serde_json::Map<String, Value>) {
        let mut put = |key: &str, value: f64| {
            extra.insert(format!("{prefix}_{key}"), json!(round2(value)));
        };
        put("p50_us", self.wall.quantile_us(0.5));
        put("p90_us", self.wall.quantile_us(0.9));
        put("mean_us", self.wall.mean_us());
        put("cpu_p50_us", self.cpu.quantile_us(0.5));
        put("cpu_mean_us", self.cpu.mean_us());
        put("slot_wait_p50_us", self.wait.quantile_us(0.5));
    }
}

/// Mean time an attempt held its webhook's slot, and mean HTTP exchange, in ms (an engine
/// without the slot metric reports 0).
async fn slot_figures(http: &reqwest::Client, base: &str, f: &mut Figures) {
    let (slot_sum, slot_count) = histogram_totals(http, base, "hookd_attempt_slot_seconds").await;
    let (http_sum, http_count) =
        histogram_totals(http, base, "hookd_delivery_latency_seconds").await;
    f.extra.insert(
        "slot_mean_ms".into(),
        json!(round2(slot_sum / slot_count.max(1.0) * 1e3)),
    );
    f.extra.insert(
        "http_mean_ms".into(),
        json!(round2(http_sum / http_count.max(1.0) * 1e3)),
    );
    // The store's syncs to disk: a p99 tail on this shared disk is often its stalls.
    let syncs = Histogram::read(http, base, "hookd_store_sync_seconds").await;
    f.extra.insert("syncs".into(), json!(syncs.count));
    f.extra.insert(
        "sync_mean_ms".into(),
        json!(round2(syncs.sum / syncs.count.max(1.0) * 1e3)),
    );
    f.extra.insert(
        "sync_p99_ms".into(),
        json!(round2(syncs.quantile_us(0.99) / 1e3)),
    );
    f.extra.insert(
        "syncs_over_10ms".into(),
        json!(syncs.count - syncs.within(0.01)),
    );
    f.extra.insert(
        "syncs_over_25ms".into(),
        json!(syncs.count - syncs.within(0.025)),
    );
}

impl Bench {
    /// The generator posting the same body straight to the receiver: one hop.
    async fn ceiling(&self) -> Figures {
        self.direct("ceil", &self.rx.url("ceiling"), None).await
    }

    /// The generator posting the same body to a bare relay that forwards it to the receiver
    /// (`relay.rs`): two hops and nothing else, the least any relay costs on this machine.
    async fn relay_floor(&self) -> Figures {
        let (relay, base) = spawn_relay(&self.rx.url("relay"));
        self.direct("relay", &format!("{base}/relay"), Some(&relay))
            .await
    }

    /// The generator posting to `url` without an engine; figures over every receipt, with
    /// `relay`'s CPU (if one forwards) as the engine's.
    async fn direct(&self, name: &str, url: &str, relay: Option<&Proc>) -> Figures {
        self.rx.ctl("reset").await;
        let gen0 = cpu_seconds(std::process::id());
        let rx0 = cpu_seconds(self.rx.proc.pid());
        let mut ingest = generate(
            &self.http,
            &Target::Direct(url.to_string()),
            self.events,
            None,
        )
        .await;
        let mut f = Figures {
            name: name.into(),
            ..Default::default()
        };
        ingest_figures(&mut ingest, &mut f);
        let deadline = Instant::now() + Duration::from_secs(60);
        self.rx
            .wait_for("ALL", ingest.accepted, Duration::from_secs(10), deadline)
            .await;
        delivery_figures(&self.rx, "ALL", self.events, &ingest, &mut f).await;
        if let Some(relay) = relay {
            f.engine_cpu_s = cpu_seconds(relay.pid());
            let switches: u64 = switches_by_thread(relay.pid()).values().map(|c| c[0]).sum();
            f.extra.insert(
                "engine_switches_per_event".into(),
                json!(round2(switches as f64 / f.deliveries.max(1) as f64)),
            );
        }
        f.receiver_cpu_s = cpu_seconds(self.rx.proc.pid()) - rx0;
        f.generator_cpu_s = cpu_seconds(std::process::id()) - gen0;
        f
    }

    /// A fresh engine with `hooks` webhooks (path, extra fields), `events` events through
    /// `target`; figures over the receipts of `measured` ("ALL" or one path).
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        name: &str,
        hooks: &[(&str, Value)],
        measured: &str,
        per_event: usize,
        events: usize,
        batch: Option<usize>,
        rate: Option<f64>,
        plugin: Option<&[u8]>,
    ) -> Figures {
        self.rx.ctl("reset").await;
        let engine = Engine::start(&self.http, "2s").await;
        if let Some(wasm) = plugin {
            let r = self
                .http
                .put(format!("{}/v1/plugins/reshape", engine.base))
                .bearer_auth(API_KEY)
                .body(wasm.to_vec())
                .send()
                .await
                .expect("upload");
            assert!(r.status().is_success(), "plugin upload: {}", r.status());
        }
        for (path, extra) in hooks {
            let mut body = extra.clone();
            body["url"] = json!(self.rx.url(path));
            engine.create_webhook(&self.http, body).await;
        }
        let threads0 = cpu_seconds_by_thread(engine.proc.pid());
        let switches0 = switches_by_thread(engine.proc.pid());
        let (e0, r0, g0) = (
            cpu_seconds(engine.proc.pid()),
            cpu_seconds(self.rx.proc.pid()),
            cpu_seconds(std::process::id()),
        );
        let target = match batch {
            Some(size) => Target::Batch(engine.base.clone(), size),
            None => Target::Single(engine.base.clone()),
        };
        let steal = machine::CpuSampler::start();
        let mut ingest = generate(&self.http, &target, events, rate).await;
        let mut f = Figures {
            name: name.into(),
            ..Default::default()
        };
        ingest_figures(&mut ingest, &mut f);
        let expected = ingest.accepted * per_event;
        let deadline = Instant::now() + Duration::from_secs(120);
        self.rx
            .wait_for(measured, expected, Duration::from_secs(15), deadline)
            .await;
        delivery_figures(&self.rx, measured, expected, &ingest, &mut f).await;
        let steal = steal.finish();
        f.extra
            .insert("steal_ms".into(), json!(round2(steal.total_ms)));
        f.extra.insert(
            "steal_most_in_100ms_ms".into(),
            json!(round2(steal.most_in_100ms_ms)),
        );
        f.extra
            .insert("machine_idle_pct".into(), json!(round2(steal.idle_pct)));
        f.extra.insert(
            "machine_softirq_pct".into(),
            json!(round2(steal.softirq_pct)),
        );
        f.engine_cpu_s = cpu_seconds(engine.proc.pid()) - e0;
        f.receiver_cpu_s = cpu_seconds(self.rx.proc.pid()) - r0;
        f.generator_cpu_s = cpu_seconds(std::process::id()) - g0;
        let by_thread: serde_json::Map<String, Value> = cpu_seconds_by_thread(engine.proc.pid())
            .into_iter()
            .map(|(role, s)| {
                let used = s - threads0.get(&role).copied().unwrap_or(0.0);
                (
                    role,
                    json!((used / f.deliveries.max(1) as f64 * 1e6).round() as u64),
                )
            })
            .filter(|(_, us)| us.as_u64().unwrap_or(0) > 0)
            .collect();
        f.extra
            .insert("engine_cpu_us_by_thread".into(), Value::Object(by_thread));
        let per_event = |n: u64| round2(n as f64 / f.deliveries.max(1) as f64);
        let switches: serde_json::Map<String, Value> = switches_by_thread(engine.proc.pid())
            .into_iter()
            .map(|(role, [all, involuntary])| {
                let [all0, involuntary0] = switches0.get(&role).copied().unwrap_or([0, 0]);
                (
                    role,
                    json!([
                        per_event(all.saturating_sub(all0)),
                        per_event(involuntary.saturating_sub(involuntary0))
                    ]),
                )
            })
            .filter(|(_, counts)| counts[0].as_f64().unwrap_or(0.0) > 0.0)
            .collect();
        f.extra.insert(
            "engine_switches_per_event_by_thread".into(),
            Value::Object(switches),
        );
        f.engine_peak_rss_mib = vm_mib(engine.proc.pid(), "VmHWM:");
        f.data_mib = dir_mib(&engine.data);
        slot_figures(&self.http, &engine.base, &mut f).await;
        if plugin.is_some() {
            let loaded = PluginHistograms::read(&self.http, &engine.base).await;
            f.extra
                .insert("plugin_chains".into(), json!(loaded.wall.count));
            loaded.record("plugin_chain", &mut f.extra);
            // Under load the chain's wall time includes waiting for a CPU; also measure it
            // with the engine otherwise idle: 200 events paced at 100/s.
            let quiet = generate(&self.http, &target, 200, Some(100.0)).await;
            self.rx
                .wait_for(
                    measured,
                    expected + quiet.accepted,
                    Duration::from_secs(15),
                    Instant::now() + Duration::from_secs(30),
                )
                .await;
            PluginHistograms::read(&self.http, &engine.base)
                .await
                .since(&loaded)
                .record("plugin_chain_quiet", &mut f.extra);
            f.extra.insert(
                "rss_after_mib".into(),
                json!(round2(vm_mib(engine.proc.pid(), "VmRSS:"))),
            );
        } else {
            f.extra.insert(
                "rss_after_mib".into(),
                json!(round2(vm_mib(engine.proc.pid(), "VmRSS:"))),
            );
        }
        f
    }

    /// Scenario 5: backlog while the receiver is down, drain, kill -9, restart.
    async fn backlog(&self, events: usize, budget: Duration) -> Figures {
        let started = Instant::now();
        self.rx.ctl("reset").await;
        // "Down" = the receiver holds every request until it comes up: the engine keeps at
        // most its in-flight cap (64) attempts open and the rest of the backlog stays queued,
        // instead of failing fast and measuring the retry schedule. Timeout 5 m (the max).
        self.rx.ctl("down").await;
        let mut engine = Engine::start(&self.http, "5m").await;
        engine
            .create_webhook(&self.http, json!({"url": self.rx.url("s5")}))
            .await;
        let e0 = cpu_seconds(engine.proc.pid());
        println!("  s5: ingesting {events} events through the batch route (receiver down)...");
        // First a tenth, to compare memory at a tenth of the backlog with memory at all of it.
        let tenth = (events / 10).max(1);
        let target = Target::Batch(engine.base.clone(), 1000);
        let first = generate(&self.http, &target, tenth, None).await;
        let pid = engine.proc.pid();
        let rss_tenth = vm_mib(pid, "VmRSS:");
        println!("  s5: {} pending: RSS {rss_tenth:.1} MiB", first.accepted);
        let mut ingest = generate(&self.http, &target, events - tenth, None).await;
        ingest.accepted += first.accepted;
        ingest.refused += first.refused;
        ingest.aborted |= first.aborted;
        ingest.wall += first.wall;
        ingest.first_send_ns = first.first_send_ns;
        ingest.accept_us.extend(first.accept_us);
        let mut f = Figures {
            name: "5".into(),
            ..Default::default()
        };
        ingest_figures(&mut ingest, &mut f);
        let payload_mib =
            (payload(events / 2, now_ns()).len() * ingest.accepted) as f64 / (1024.0 * 1024.0);
        f.extra
            .insert("tenth_rss_mib".into(), json!(round2(rss_tenth)));
        f.extra
            .insert("payload_mib".into(), json!(round2(payload_mib)));
        let (rss_now, rss_peak, disk) = (
            vm_mib(pid, "VmRSS:"),
            vm_mib(pid, "VmHWM:"),
            dir_mib(&engine.data),
        );
        println!(
            "  s5: backlog of {} in {:.1} s ({:.0}/s); RSS now {rss_now:.1} MiB, peak {rss_peak:.1} MiB; data dir {disk:.0} MiB",
            ingest.accepted,
            ingest.wall.as_secs_f64(),
            ingest.per_sec()
        );
        f.extra
            .insert("backlog_rss_mib".into(), json!(round2(rss_now)));
        f.extra
            .insert("backlog_peak_rss_mib".into(), json!(round2(rss_peak)));
        f.extra
            .insert("backlog_data_mib".into(), json!(round2(disk)));

        // Receiver up: drain half the backlog (bounded), then kill -9 with the rest queued.
        let up_ns = now_ns();
        let up = Instant::now();
        self.rx.ctl("up").await;
        let half = ingest.accepted / 2;
        let drain_cap = budget.saturating_sub(started.elapsed()) / 2;
        self.rx
            .wait_for(
                "ALL",
                half,
                Duration::from_secs(15),
                Instant::now() + drain_cap,
            )
            .await;
        let counts = self.rx.get("counts").await;
        let drained = counts["ALL"]["distinct"].as_u64().unwrap_or(0);
        let drain_rate = drained as f64 / (up.elapsed().as_secs_f64()).max(1e-9);
        println!(
            "  s5: drained {drained} in {:.1} s ({drain_rate:.0}/s); kill -9",
            up.elapsed().as_secs_f64()
        );
        f.extra
            .insert("drain_per_s".into(), json!(drain_rate.round()));
        f.extra.insert("drained_before_kill".into(), json!(drained));
        f.deliveries_per_s = drain_rate;
        let cpu_before_kill = cpu_seconds(pid) - e0;
        let peak_before_kill = vm_mib(pid, "VmHWM:");

        let before_total = self.rx.get("counts").await["ALL"]["total"]
            .as_u64()
            .unwrap_or(0);
        let restart = Instant::now();
        engine.kill_and_restart(&self.http).await;
        let first_delivery = loop {
            let total = self.rx.get("counts").await["ALL"]["total"]
                .as_u64()
                .unwrap_or(0);
            if total > before_total {
                break Some(restart.elapsed());
            }
            if restart.elapsed() > Duration::from_secs(60) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let first_s = first_delivery
            .map(|d| d.as_secs_f64())
            .unwrap_or(f64::INFINITY);
        println!("  s5: restart → first delivery {first_s:.3} s");
        f.extra
            .insert("restart_to_first_delivery_s".into(), json!(round2(first_s)));
        let e1 = cpu_seconds(engine.proc.pid());
        let rest_cap = budget.saturating_sub(started.elapsed());
        self.rx
            .wait_for(
                "ALL",
                ingest.accepted,
                Duration::from_secs(15),
                Instant::now() + rest_cap,
            )
            .await;
        let stats = self.rx.get("stats").await;
        let s = &stats["ALL"];
        let (total, distinct) = (
            s["total"].as_u64().unwrap_or(0),
            s["distinct"].as_u64().unwrap_or(0),
        );
        f.deliveries = distinct;
        f.duplicates = total - distinct;
        f.lost = ingest.accepted as i64 - distinct as i64;
        let last = s["last_ns"].as_u64().unwrap_or(0);
        f.extra.insert(
            "drain_overall_per_s".into(),
            json!(
                (distinct as f64 / ((last.saturating_sub(up_ns)) as f64 / 1e9).max(1e-9)).round()
            ),
        );
        f.extra.insert(
            "fully_drained".into(),
            json!(distinct as usize >= ingest.accepted),
        );
        // Latency is not meaningful for a backlog (it includes the time down).
        f.engine_cpu_s = cpu_before_kill + cpu_seconds(engine.proc.pid()) - e1;
        f.engine_peak_rss_mib = peak_before_kill.max(vm_mib(engine.proc.pid(), "VmHWM:"));
        f.data_mib = dir_mib(&engine.data);
        f
    }
}

impl Bench {
    /// Scenario 7: `events` measured on an empty store, `history` more delivered through
    /// batches, the same `events` measured again on the same engine.
    async fn history(&self, events: usize, history: usize) -> (Figures, Figures) {
        self.rx.ctl("reset").await;
        let engine = Engine::start(&self.http, "2s").await;
        engine
            .create_webhook(&self.http, json!({"url": self.rx.url("s7")}))
            .await;
        let measure = |name: &'static str, delivered_before: usize| {
            let engine = &engine;
            async move {
                let e0 = cpu_seconds(engine.proc.pid());
                let mut ingest = generate(
                    &self.http,
                    &Target::Single(engine.base.clone()),
                    events,
                    None,
                )
                .await;
                let mut f = Figures {
                    name: name.into(),
                    ..Default::default()
                };
                ingest_figures(&mut ingest, &mut f);
                let expected = delivered_before + ingest.accepted;
                self.rx
                    .wait_for(
                        "ALL",
                        expected,
                        Duration::from_secs(15),
                        Instant::now() + Duration::from_secs(120),
                    )
                    .await;
                let counts = self.rx.get("counts").await;
                let got = counts["ALL"]["distinct"].as_u64().unwrap_or(0) as usize;
                f.deliveries = (got - delivered_before) as u64;
                f.lost = ingest.accepted as i64 - f.deliveries as i64;
                f.engine_cpu_s = cpu_seconds(engine.proc.pid()) - e0;
                f.engine_peak_rss_mib = vm_mib(engine.proc.pid(), "VmHWM:");
                f.data_mib = dir_mib(&engine.data);
                (f, got)
            }
        };
        let (before, delivered) = measure("7a", 0).await;
        println!("  s7: {history} events of history through batches...");
        let fill = generate(
            &self.http,
            &Target::Batch(engine.base.clone(), 1000),
            history,
            None,
        )
        .await;
        self.rx
            .wait_for(
                "ALL",
                delivered + fill.accepted,
                Duration::from_secs(30),
                Instant::now() + Duration::from_secs(1800),
            )
            .await;
        let counts = self.rx.get("counts").await;
        let delivered = counts["ALL"]["distinct"].as_u64().unwrap_or(0) as usize;
        println!(
            "  s7: history of {} delivered; data dir {:.0} MiB",
            fill.accepted,
            dir_mib(&engine.data)
        );
        let (after, _) = measure("7b", delivered).await;
        (before, after)
    }
}

/// Median of the native reshape over the body hookd would send, one call after each 10 ms
/// idle (as the quiet engine runs its chains: caches cold), in µs.
async fn native_reshape_cold_us() -> f64 {
    let body = envelope(1, now_ns()).into_bytes();
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = Instant::now();
        std::hint::black_box(reshape::native_reshape(std::hint::black_box(&body)));
        samples.push(t.elapsed().as_nanos() as u32);
    }
    percentile(&mut samples, 0.5) as f64 / 1000.0
}

/// Median of the native reshape over the body hookd would send, in µs.
fn native_reshape_us() -> f64 {
    let body = envelope(1, now_ns()).into_bytes();
    let mut samples: Vec<u32> = (0..3000)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(reshape::native_reshape(std::hint::black_box(&body)));
            (t.elapsed().as_nanos()) as u32
        })
        .collect();
    percentile(&mut samples, 0.5) as f64 / 1000.0
}

/// `plugins/dist/reshape-transform.wasm`, built by `plugins/build.sh` if missing.
fn reshape_wasm() -> Vec<u8> {
    let plugins = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let wasm = plugins.join("dist/reshape-transform.wasm");
    if !wasm.exists() {
        println!("  building plugins (plugins/build.sh)...");
        let status = std::process::Command::new("bash")
            .arg(plugins.join("build.sh"))
            .status()
            .expect("run plugins/build.sh");
        assert!(status.success(), "plugins/build.sh failed");
    }
    std::fs::read(&wasm).expect("reshape-transform.wasm")
}

struct Check {
    what: String,
    pass: bool,
}

fn check(checks: &mut Vec<Check>, what: String, pass: bool) {
    checks.push(Check { what, pass });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--receiver") {
        receiver::run();
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--relay") {
        relay::run(args.get(i + 1).cloned().expect("--relay <url>"));
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return;
    }
    let value = |flag: &str| -> Option<String> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let under_cargo_bench = args.iter().any(|a| a == "--bench");
    let smoke = !under_cargo_bench && args.is_empty();
    let mut scenarios: Vec<String> = match value("--scenario") {
        Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        None if smoke => vec!["1".into()],
        None => ["1", "1b", "2", "3", "4", "5", "6"]
            .map(String::from)
            .to_vec(),
    };
    if !scenarios.contains(&"1".to_string()) {
        scenarios.insert(0, "1".into());
    }
    let events: usize = value("--events")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 300 } else { 20_000 });
    let backlog: usize = value("--backlog")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let history: usize = value("--history")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if let Some(engine) = value("--engine") {
        let _ = procs::ENGINE.set(PathBuf::from(engine));
    }
    if let Some(rate) = value("--s6-rate").and_then(|v| v.parse::<f64>().ok()) {
        let _ = S6_RATE.set(rate);
    }
    let s5_budget = Duration::from_secs(
        value("--s5-budget")
            .and_then(|v| v.parse().ok())
            .unwrap_or(240),
    );
    let postgres = (value("--backend").as_deref() == Some("postgres")).then(|| PostgresRun {
        nodes: value("--nodes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(3usize)
            .max(1),
        pending: value("--pg-backlog")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000),
    });
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(run(
        scenarios, events, backlog, history, s5_budget, smoke, postgres,
    ));
}

/// Scenario 6's offered rate when `--s6-rate` sets it.
static S6_RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// What `--backend postgres` runs: scenario 1's shape on one node and on `nodes`, and a
/// backlog of `pending` events.
struct PostgresRun {
    nodes: usize,
    pending: usize,
}

async fn run(
    scenarios: Vec<String>,
    events: usize,
    backlog: usize,
    history: usize,
    s5_budget: Duration,
    smoke: bool,
    postgres: Option<PostgresRun>,
) {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let (rx_proc, rx_base) = spawn_receiver();
    let rx = Rx {
        proc: rx_proc,
        base: rx_base,
        http: http.clone(),
    };
    let bench = Bench {
        http: http.clone(),
        rx,
        events,
    };
    println!(
        "e2e bench: hookd {} | {} cores | RUST_BACKTRACE={} | concurrency {} | {events} events per run{}",
        procs::ENGINE
            .get()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_hookd").to_string()),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::env::var("RUST_BACKTRACE").unwrap_or_default(),
        concurrency(),
        if smoke {
            " (smoke run; use `cargo bench` for figures)"
        } else {
            ""
        },
    );
    let want = |s: &str| scenarios.iter().any(|x| x == s);
    let ceiling = bench.ceiling().await;
    // Blocking std threads and busy work: off the runtime's workers.
    let samples = if smoke { 20 } else { machine::SAMPLES };
    let machine = tokio::task::spawn_blocking(move || machine::Machine::measure(samples))
        .await
        .expect("the machine probe");
    let mut checks = Vec::new();
    check(&mut checks, machine.line(), true);
    let one_hook = |path: &'static str| vec![(path, json!({}))];

    let s1 = bench
        .run("1", &one_hook("s1"), "ALL", 1, events, None, None, None)
        .await;
    // The ceiling again right after s1: every ratio is to the mean of the two, so a machine
    // that speeds up or slows down during the run moves the ceiling with s1 (one measurement
    // alone ranged 37k-60k/s between runs of an hour on this machine).
    let mut ceiling_after = bench.ceiling().await;
    ceiling_after.name = "ceil2".into();
    let ceil = (ceiling.deliveries_per_s + ceiling_after.deliveries_per_s) / 2.0;
    println!(
        "loopback ceiling (generator → receiver, one hop): {ceil:.0} req/s, the mean of {:.0} \
         before s1 and {:.0} after",
        ceiling.deliveries_per_s, ceiling_after.deliveries_per_s
    );
    header();
    ceiling.row(ceil);
    ceiling_after.row(ceil);
    let mut all: Vec<Figures> = vec![ceiling.clone(), ceiling_after.clone()];
    s1.row(ceil);
    check(
        &mut checks,
        format!(
            "s1 deliveries/s {:.0} >= 25% of ceiling {ceil:.0} ({:.0}%), lost {}",
            s1.deliveries_per_s,
            100.0 * s1.deliveries_per_s / ceil,
            s1.lost
        ),
        s1.deliveries_per_s >= 0.25 * ceil && s1.lost == 0 && s1.complete,
    );
    check(
        &mut checks,
        format!(
            "s1 keeps pace: deliveries/s {:.0} >= 90% of accepted/s {:.0} ({:.0}%)",
            s1.deliveries_per_s,
            s1.ingest_eps,
            100.0 * s1.deliveries_per_s / s1.ingest_eps.max(1e-9)
        ),
        s1.deliveries_per_s >= 0.9 * s1.ingest_eps,
    );
    check(
        &mut checks,
        format!(
            "s1 e2e p50 {:.1} ms <= 250 ms at {} producers",
            s1.e2e_us[0] as f64 / 1000.0,
            concurrency()
        ),
        s1.e2e_us[0] <= 250_000,
    );
    let s1_cpu = per_delivery_us(&s1);
    check(
        &mut checks,
        format!("s1 engine CPU per event + delivery {s1_cpu:.0} µs <= 120 µs"),
        s1_cpu <= 120.0,
    );
    // What the bench's own processes cost per event at s1's rate: they do the mirror image of
    // hookd's HTTP work (the generator sends with reqwest, as hookd's client sends a delivery;
    // the receiver serves with axum, as hookd's API serves an event), and share the cores with
    // it. (The bare relay below does that work for less at its higher rate: more requests per
    // wake-up.)
    let http_floor = (s1.receiver_cpu_s + s1.generator_cpu_s) / s1.deliveries.max(1) as f64 * 1e6;
    let by_thread = s1
        .extra
        .get("engine_cpu_us_by_thread")
        .and_then(Value::as_object)
        .map(|m| {
            let mut roles: Vec<_> = m.iter().collect();
            roles.sort_by_key(|(_, us)| std::cmp::Reverse(us.as_u64()));
            roles
                .iter()
                .map(|(role, us)| format!("{role} {us}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    check(
        &mut checks,
        format!(
            "info: s1 engine CPU per event + delivery by thread (µs): {by_thread}; the same \
             HTTP work (one request sent with reqwest, one served with axum) costs the bench's \
             generator and receiver {http_floor:.0} µs per event in this run"
        ),
        true,
    );
    // What those costs allow on this machine: with every core busy, the engine and the bench's
    // own processes share the cores, so s1 cannot pass cores / (engine + generator + receiver
    // CPU per event); and the engine CPU per event at which that bound reaches 25 % of the ceiling.
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let cpu_bound = cores * 1e6 / (s1_cpu + http_floor).max(1e-9);
    let engine_for_quarter = cores * 1e6 / (0.25 * ceil).max(1e-9) - http_floor;
    check(
        &mut checks,
        format!(
            "info: s1 CPU bound: {cores:.0} cores / ({s1_cpu:.0} + {http_floor:.0} µs per event) = \
             {cpu_bound:.0}/s ({:.0}% of ceiling) with no core ever idle; 25% of the ceiling \
             needs the engine at <= {engine_for_quarter:.0} µs per event + delivery",
            100.0 * cpu_bound / ceil
        ),
        true,
    );
    // How busy the machine really was: the share of the cores s1 left idle (64 producers
    // instead of 32 leave as much: it is not the closed loop's concurrency).
    let x = |f: &Figures, k: &str| f.extra.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let (idle_pct, softirq_pct) = (x(&s1, "machine_idle_pct"), x(&s1, "machine_softirq_pct"));
    let engine_for_quarter_here =
        cores * (1.0 - idle_pct / 100.0) * 1e6 / (0.25 * ceil).max(1e-9) - http_floor;
    check(
        &mut checks,
        format!(
            "info: during s1 the machine's cores were {idle_pct:.0}% idle ({softirq_pct:.0}% in \
             softirq, loopback TCP, which the processes' CPU times above include); at that idle \
             share, 25% of the ceiling needs the engine at <= {engine_for_quarter_here:.0} µs per \
             event + delivery"
        ),
        true,
    );
    // The same load through a bare relay (two hops, nothing stored, signed or logged):
    // the most that any relay reaches on this machine in this run, and what it costs.
    let relay = bench.relay_floor().await;
    relay.row(ceil);
    check(
        &mut checks,
        format!(
            "info: a bare relay (axum in, 202, reqwest out, 8 in flight; no store, no signature) \
             delivers {:.0}/s ({:.0}% of ceiling, lost {}) at {:.0} µs CPU per event + delivery; \
             s1 reaches {:.0}% of it at {s1_cpu:.0} µs",
            relay.deliveries_per_s,
            100.0 * relay.deliveries_per_s / ceil,
            relay.lost,
            per_delivery_us(&relay),
            100.0 * s1.deliveries_per_s / relay.deliveries_per_s.max(1e-9),
        ),
        true,
    );
    // Hand-offs between threads: each is a context switch, and on a VM whose idle vCPUs halt
    // at once, waking a thread on another vCPU is slow (`perf bench sched pipe` on the 2-vCPU
    // machine this was written on: a round trip 56 µs across the vCPUs, 5 µs pinned to one).
    let switches = s1
        .extra
        .get("engine_switches_per_event_by_thread")
        .and_then(Value::as_object)
        .map(|m| {
            let mut roles: Vec<_> = m
                .iter()
                .map(|(role, c)| {
                    (
                        role,
                        c[0].as_f64().unwrap_or(0.0),
                        c[1].as_f64().unwrap_or(0.0),
                    )
                })
                .collect();
            roles.sort_by(|a, b| b.1.total_cmp(&a.1));
            let total: f64 = roles.iter().map(|r| r.1).sum();
            let by_role = roles
                .iter()
                .map(|(role, all, involuntary)| {
                    format!("{role} {all:.2} ({involuntary:.2} preempted)")
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("{total:.2}: {by_role}")
        })
        .unwrap_or_default();
    check(
        &mut checks,
        format!(
            "info: s1 context switches per event + delivery {switches}; the bare relay {:.2}",
            relay
                .extra
                .get("engine_switches_per_event")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        ),
        true,
    );
    all.push(relay);
    let (syncs, sync_ms) = (x(&s1, "syncs"), x(&s1, "sync_mean_ms"));
    let s1_seconds = s1.events as f64 / s1.ingest_eps.max(1e-9);
    check(
        &mut checks,
        format!(
            "info: s1 group commits {syncs:.0}, {:.1} events each, one every {:.2} ms; a sync \
             (log + sled flush) takes {sync_ms:.2} ms of it on average, and each of the {} \
             producers waits a group's cycle for its 202 (accept p50 {:.2} ms)",
            s1.events as f64 / syncs.max(1.0),
            s1_seconds * 1e3 / syncs.max(1.0),
            concurrency(),
            f64::from(s1.accept_p50_us) / 1e3,
        ),
        true,
    );
    let (slot_ms, http_ms) = (x(&s1, "slot_mean_ms"), x(&s1, "http_mean_ms"));
    check(
        &mut checks,
        format!(
            "info: s1 slot {slot_ms:.2} ms per attempt = HTTP exchange {http_ms:.2} ms + {:.2} ms \
             of hookd's own before the send (claim to request); the default max_in_flight of 8 \
             allows one webhook {:.0} deliveries/s at that slot, s1 ran at {:.0}/s",
            (slot_ms - http_ms).max(0.0),
            8.0 / (slot_ms.max(1e-6) / 1e3),
            s1.deliveries_per_s,
        ),
        true,
    );
    all.push(s1.clone());
    let s1_rate = s1.deliveries_per_s;
    if let Some(postgres) = postgres {
        let figures = nodes::run(&bench, postgres.nodes, events, postgres.pending, &s1).await;
        for f in &figures {
            f.row(ceil);
        }
        nodes::checks(&mut checks, &figures);
        all.extend(figures);
    }

    if want("1b") {
        let f = bench
            .run(
                "1b",
                &one_hook("s1b"),
                "ALL",
                1,
                events,
                Some(100),
                None,
                None,
            )
            .await;
        f.row(ceil);
        check(
            &mut checks,
            format!(
                "info: s1 through batches of 100: deliveries/s {:.0} ({:.2}x s1), ingest {:.0}/s ({:.2}x s1), lost {}",
                f.deliveries_per_s,
                f.deliveries_per_s / s1_rate,
                f.ingest_eps,
                f.ingest_eps / s1.ingest_eps,
                f.lost
            ),
            f.lost == 0,
        );
        all.push(f);
    }
    if want("2") {
        let hooks: Vec<(&str, Value)> =
            ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9"]
                .iter()
                .map(|p| (*p, json!({})))
                .collect();
        let f = bench
            .run(
                "2",
                &hooks,
                "ALL",
                10,
                (events / 4).max(10),
                None,
                None,
                None,
            )
            .await;
        f.row(ceil);
        check(
            &mut checks,
            format!(
                "s2 deliveries/s {:.0} >= 2x s1 {s1_rate:.0} ({:.2}x), lost {}",
                f.deliveries_per_s,
                f.deliveries_per_s / s1_rate,
                f.lost
            ),
            f.deliveries_per_s >= 2.0 * s1_rate && f.lost == 0 && f.complete,
        );
        // Storage v2's target: 4x the 240-844 events/s the previous store took with fan-out 10.
        check(
            &mut checks,
            format!(
                "s2 fan-out x10 ingest {:.0} events/s >= 4 x 844 = 3376",
                f.ingest_eps
            ),
            f.ingest_eps >= 3376.0,
        );
        all.push(f);
    }
    if want("3") {
        let wasm = reshape_wasm();
        let hooks = vec![(
            "s3",
            json!({"plugins": [{"name": "reshape", "config": {"redact": ["password"], "shape": "flat"}}]}),
        )];
        let mut f = bench
            .run("3", &hooks, "ALL", 1, events, None, None, Some(&wasm))
            .await;
        f.row(ceil);
        let (native, native_cold) = (native_reshape_us(), native_reshape_cold_us().await);
        let x = |k: &str| f.extra.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let (quiet_cpu, quiet_wall) = (
            x("plugin_chain_quiet_cpu_p50_us"),
            x("plugin_chain_quiet_p50_us"),
        );
        let (loaded_cpu, loaded_wall) = (x("plugin_chain_cpu_p50_us"), x("plugin_chain_p50_us"));
        let chain_cpu_mean = x("plugin_chain_cpu_mean_us");
        let added = quiet_cpu - native_cold;
        let loaded_added = loaded_cpu - native;
        let cpu_added = per_delivery_us(&f) - per_delivery_us(&s1);
        f.extra
            .insert("native_reshape_us".into(), json!(round2(native)));
        f.extra
            .insert("native_reshape_cold_us".into(), json!(round2(native_cold)));
        f.extra
            .insert("plugin_added_us".into(), json!(round2(added)));
        f.extra.insert(
            "engine_cpu_added_per_delivery_us".into(),
            json!(round2(cpu_added)),
        );
        // The plugin's cost per attempt is the chain's CPU time (its wall time also counts any
        // time the thread was descheduled), against the native reshape in the same state:
        // back to back under load, one call after 10 ms idle on the quiet engine.
        check(
            &mut checks,
            format!(
                "s3 under load: plugin chain median CPU {loaded_cpu:.1} µs/attempt - native {native:.1} µs = {loaded_added:.1} µs <= 50 µs \
                 [wall median {loaded_wall:.0} µs]"
            ),
            loaded_added <= 50.0,
        );
        check(
            &mut checks,
            format!(
                "s3 quiet engine (100 events/s): plugin chain median CPU {quiet_cpu:.1} µs/attempt - native after 10 ms idle {native_cold:.1} µs = {added:.1} µs <= 50 µs \
                 [wall median {quiet_wall:.0} µs]"
            ),
            added <= 50.0,
        );
        check(
            &mut checks,
            format!(
                "s3 engine CPU per delivery {:.0} µs - s1's {:.0} µs = {cpu_added:.0} µs <= 60 µs",
                per_delivery_us(&f),
                per_delivery_us(&s1),
            ),
            cpu_added <= 60.0,
        );
        // Where that difference goes: the chains' own CPU time (exact, from the engine's
        // histogram sum), and the rest, which is the engine's other work per delivery at s3's
        // lower delivery rate (smaller group commits, more wake-ups per delivery).
        f.extra.insert(
            "plugin_chain_cpu_share_of_added_us".into(),
            json!(round2(chain_cpu_mean)),
        );
        check(
            &mut checks,
            format!(
                "info: of those {cpu_added:.0} µs, the chains' own CPU is {chain_cpu_mean:.0} µs per delivery (mean); \
                 the other {:.0} µs is the rest of the engine at s3's rate, {:.0}% of s1's",
                cpu_added - chain_cpu_mean,
                100.0 * f.deliveries_per_s / s1_rate,
            ),
            true,
        );
        // The same comparison at one offered rate and arrival pattern: s3 and s1's shape without
        // the plugin, both paced at 90% of the rate s3 delivered, so group commits, wake-ups and
        // caches are shared by as many events in both; what remains between the two is the
        // plugin's own cost in the engine.
        let matched_rate = (0.9 * f.deliveries_per_s).max(100.0);
        let paced_with = bench
            .run(
                "3p",
                &hooks,
                "ALL",
                1,
                events,
                None,
                Some(matched_rate),
                Some(&wasm),
            )
            .await;
        paced_with.row(ceil);
        let paced_without = bench
            .run(
                "3n",
                &one_hook("s3n"),
                "ALL",
                1,
                events,
                None,
                Some(matched_rate),
                None,
            )
            .await;
        paced_without.row(ceil);
        let (with_cpu, without_cpu) = (
            per_delivery_us(&paced_with),
            per_delivery_us(&paced_without),
        );
        let matched_added = with_cpu - without_cpu;
        f.extra.insert(
            "engine_cpu_added_per_delivery_at_one_rate_us".into(),
            json!(round2(matched_added)),
        );
        check(
            &mut checks,
            format!(
                "s3 at one rate ({matched_rate:.0}/s offered to both): engine CPU per delivery {with_cpu:.0} µs with the plugin - {without_cpu:.0} µs without = {matched_added:.0} µs <= 60 µs",
            ),
            matched_added <= 60.0
                && [&paced_with, &paced_without]
                    .iter()
                    .all(|p| p.lost == 0 && p.complete),
        );
        // The engine moves new attempts to its lower-priority lane while the machine's CPU is
        // saturated (`delivery/runtime.rs`); there they are preempted by every normal thread
        // and cost more CPU each. The paced run with the plugin sits near saturation on two
        // cores, so say how much of each run went that way: a difference above is then the
        // lane's, not only the plugin's.
        let yielding = |f: &Figures| {
            f.extra
                .get("engine_cpu_us_by_thread")
                .and_then(|m| m.get("hookd-deliv-low"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        check(
            &mut checks,
            format!(
                "info: of those, the yielding lane (hookd-deliv-low, taken while the machine is saturated) ran {} µs per delivery with the plugin and {} µs without",
                yielding(&paced_with),
                yielding(&paced_without),
            ),
            true,
        );
        let rss_after = |f: &Figures| {
            f.extra
                .get("rss_after_mib")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        check(
            &mut checks,
            format!(
                "s3 RSS with the plugin: peak {:.0} MiB, after {:.0} MiB; s1 without: peak {:.0} MiB, after {:.0} MiB; \
                 peak with <= peak without + 100 MB ({:.0} MB more)",
                f.engine_peak_rss_mib,
                rss_after(&f),
                s1.engine_peak_rss_mib,
                rss_after(&s1),
                (f.engine_peak_rss_mib - s1.engine_peak_rss_mib) * 1.048_576,
            ),
            (f.engine_peak_rss_mib - s1.engine_peak_rss_mib) * 1.048_576 <= 100.0,
        );
        check(
            &mut checks,
            format!(
                "s3 deliveries/s {:.0} >= 80% of s1 ({:.0}%), lost {}",
                f.deliveries_per_s,
                100.0 * f.deliveries_per_s / s1_rate,
                f.lost
            ),
            f.deliveries_per_s >= 0.8 * s1_rate && f.lost == 0 && f.complete,
        );
        // Both runs are CPU-bound on cores shared with the bench's generator and receiver, so s3
        // reaches at most s1's CPU per event (engine, generator, receiver) over the same plus
        // the chains' own CPU: the plugin's cost even if the engine added nothing around it.
        let s1_per_event = s1_cpu + http_floor;
        check(
            &mut checks,
            format!(
                "info: s3 at most {:.0}% of s1 while both are CPU-bound: s1's {s1_per_event:.0} µs \
                 per event (engine, generator and receiver) over the same + the chains' own \
                 {chain_cpu_mean:.0} µs",
                100.0 * s1_per_event / (s1_per_event + chain_cpu_mean).max(1e-9)
            ),
            true,
        );
        all.push(f);
        all.push(paced_with);
        all.push(paced_without);
    }
    if want("4") {
        let hooks = vec![
            ("s4", json!({})),
            ("fail", json!({"timeout_ms": 1000})),
            ("hang", json!({"timeout_ms": 1000})),
        ];
        let f = bench
            .run("4", &hooks, "/hook/s4", 1, events, None, None, None)
            .await;
        f.row(ceil);
        check(
            &mut checks,
            format!(
                "s4 healthy webhook {:.0}/s >= 80% of s1 ({:.0}%), lost {}, all {} events accepted: {}",
                f.deliveries_per_s,
                100.0 * f.deliveries_per_s / s1_rate,
                f.lost,
                events,
                f.complete
            ),
            f.deliveries_per_s >= 0.8 * s1_rate && f.lost == 0 && f.complete,
        );
        all.push(f);
    }
    if want("6") {
        let (rate, set_by) = match S6_RATE.get() {
            Some(&rate) => (rate, "set by --s6-rate"),
            None => (0.5 * s1_rate.min(s1.ingest_eps), "50% of s1"),
        };
        let n = ((rate * 10.0) as usize).clamp(500, 50_000);
        let mut f = bench
            .run("6", &one_hook("s6"), "ALL", 1, n, None, Some(rate), None)
            .await;
        f.extra.insert("offered_rate".into(), json!(rate.round()));
        f.row(ceil);
        check(
            &mut checks,
            format!(
                "s6 at {rate:.0}/s ({set_by}): e2e p99 {:.2} ms <= 10 ms, lost {}",
                f.e2e_us[2] as f64 / 1000.0,
                f.lost
            ),
            f.e2e_us[2] <= 10_000 && f.lost == 0 && f.complete,
        );
        let x = |k: &str| f.extra.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        check(
            &mut checks,
            format!(
                "info: s6 store syncs {:.0}, p99 {:.2} ms, {:.0} over 10 ms, {:.0} over 25 ms (a disk stall shows here first: one sync of ~20 ms can hold enough events behind it to move the p99); \
                 CPU time the hypervisor gave to others during the run {:.0} ms, at most {:.0} ms within 100 ms (a host stall shows here)",
                x("syncs"),
                x("sync_p99_ms"),
                x("syncs_over_10ms"),
                x("syncs_over_25ms"),
                x("steal_ms"),
                x("steal_most_in_100ms_ms")
            ),
            true,
        );
        all.push(f);
    }
    if want("7") {
        let (before, after) = bench.history(events, history).await;
        before.row(ceil);
        after.row(ceil);
        let (a, b) = (per_delivery_us(&before), per_delivery_us(&after));
        check(
            &mut checks,
            format!(
                "s7 engine CPU per event + delivery after {history} events of history {b:.0} µs <= 1.1 x on an empty store {a:.0} µs ({:.2}x)",
                b / a.max(1e-9)
            ),
            b <= 1.1 * a && before.lost == 0 && after.lost == 0,
        );
        all.push(before);
        all.push(after);
    }
    if want("5") {
        let f = bench.backlog(backlog, s5_budget).await;
        f.row(ceil);
        let x = |k: &str| f.extra.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        check(
            &mut checks,
            format!(
                "s5 peak RSS {:.0} MiB <= 300 MB with {} pending",
                f.engine_peak_rss_mib, f.events
            ),
            f.engine_peak_rss_mib * 1.048_576 <= 300.0,
        );
        check(
            &mut checks,
            format!(
                "s5 RSS with all pending {:.0} MiB <= 1.3 x RSS with a tenth pending {:.0} MiB ({:.2}x)",
                x("backlog_rss_mib"),
                x("tenth_rss_mib"),
                x("backlog_rss_mib") / x("tenth_rss_mib")
            ),
            x("backlog_rss_mib") <= 1.3 * x("tenth_rss_mib"),
        );
        check(
            &mut checks,
            format!(
                "s5 data dir {:.0} MiB <= 1.6 x payload bytes {:.0} MiB ({:.2}x)",
                x("backlog_data_mib"),
                x("payload_mib"),
                x("backlog_data_mib") / x("payload_mib")
            ),
            x("backlog_data_mib") <= 1.6 * x("payload_mib"),
        );
        check(
            &mut checks,
            format!(
                "s5 drain {:.0}/s >= 80% of s1 ({:.0}%)",
                x("drain_per_s"),
                100.0 * x("drain_per_s") / s1_rate
            ),
            x("drain_per_s") >= 0.8 * s1_rate,
        );
        check(
            &mut checks,
            format!(
                "s5 restart -> first delivery {:.2} s <= 5 s",
                x("restart_to_first_delivery_s")
            ),
            x("restart_to_first_delivery_s") <= 5.0,
        );
        check(
            &mut checks,
            format!(
                "s5 lost {} (fully drained: {}), duplicates {} (at-least-once after kill -9)",
                f.lost, f.extra["fully_drained"], f.duplicates
            ),
            f.lost == 0 && f.complete,
        );
        all.push(f);
    }

    println!(
        "columns: µs for latencies; xceil = ratio to the loopback ceiling; cpu_s = engine CPU seconds"
    );
    for f in &all {
        println!(
            "  cpu split {:<4}: engine {:.1} s, receiver {:.1} s, generator {:.1} s",
            f.name, f.engine_cpu_s, f.receiver_cpu_s, f.generator_cpu_s
        );
    }
    for c in &checks {
        let verdict = if smoke {
            "SMOKE (no verdict)"
        } else if c.what.starts_with("info:") {
            "INFO"
        } else if c.pass {
            "PASS"
        } else {
            "FAIL"
        };
        println!("{verdict} {}", c.what);
    }
    let scenarios: serde_json::Map<String, Value> =
        all.iter().map(|f| (f.name.clone(), f.json(ceil))).collect();
    let report = json!({
        "bench": "e2e",
        "ceiling_per_s": ceil.round(),
        "ceiling_before_s1_per_s": ceiling.deliveries_per_s.round(),
        "ceiling_after_s1_per_s": ceiling_after.deliveries_per_s.round(),
        "elapsed_s": round2(started.elapsed().as_secs_f64()),
        "smoke": smoke,
        "machine": machine.json(),
        "scenarios": scenarios,
        "checks": checks.iter().map(|c| json!({"check": c.what, "pass": c.pass})).collect::<Vec<_>>(),
    });
    println!("{report}");
    if smoke {
        assert_eq!(all[1].lost, 0, "smoke run lost events");
    }
}
