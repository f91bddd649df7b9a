//! Plugin host benchmark: prints medians of the per-call cost of a transform chain (a fresh
//! store and instance per call, as in production) against the same reshape written natively
//! with serde_json, and of compiling a plugin (cold cache) against loading it from the compile
//! cache, with PASS/FAIL for the target (chain ≤ native + 50 µs per call). Run with
//! `cargo bench -p hookd --bench plugin`; needs `plugins/dist/` (run
//! `plugins/build.sh`). For a profile of one phase, `PLUGIN_BENCH_ONLY=hot` (the back-to-back
//! calls) or `PLUGIN_BENCH_ONLY=cold` (the calls after idle) skips the compile figures and the
//! other phase; `PLUGIN_BENCH_CALLS` / `PLUGIN_BENCH_COLD_CALLS` set how many calls are measured.
#![allow(clippy::print_stdout)] // A benchmark reports on stdout.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hookd::plugin::{ChainOutcome, ChainStep, PluginHost, PluginRequest, PluginSettings};
use serde_json::{Value, json};
use tempfile::TempDir;

#[path = "plugin/bare.rs"]
mod bare;
#[path = "shared/reshape.rs"]
mod reshape;
use reshape::native_reshape;

/// The engine's allocator (`src/main.rs`), so that the host's figures are the engine's: with
/// glibc's malloc a cold call spent about a quarter of its CPU in malloc (mostly
/// `malloc_consolidate` walking the previous call's freed chunks).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const COMPONENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../plugins/dist/reshape-transform.wasm"
);
/// Calls measured per figure (`PLUGIN_BENCH_CALLS` overrides it, e.g. for a longer profile).
const DEFAULT_CALLS: usize = 2000;
const COMPILES: usize = 5;
/// Calls measured one at a time after [`COLD_IDLE`] (`PLUGIN_BENCH_COLD_CALLS` overrides it).
const DEFAULT_COLD_CALLS: usize = 200;
/// Idle time before each cold call (a quiet engine at 100 deliveries/s).
const COLD_IDLE: Duration = Duration::from_millis(10);
const CACHED_LOADS: usize = 20;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn percentile(mut samples: Vec<Duration>, p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[index]
}

/// A ~1 KiB Standard Webhooks envelope.
fn body() -> Bytes {
    let items: Vec<Value> = (0..8)
        .map(|i| json!({"sku": format!("sku-{i}"), "qty": i, "price_cents": 1999 + i}))
        .collect();
    let envelope = json!({
        "id": "evt_2a9f0c1e6b",
        "type": "order.created",
        "timestamp": "2025-01-01T00:00:00Z",
        "data": {
            "from": "shop@example.com",
            "to": "customer@example.com",
            "content": "Your order has been received and is being processed.",
            "password": "hunter2",
            "customer": {"name": "Ann Example", "email": "ann@example.com"},
            "items": items,
        },
    });
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

fn request(body: &Bytes) -> PluginRequest {
    PluginRequest {
        delivery_id: "dlv_bench".into(),
        event_id: "evt_2a9f0c1e6b".into(),
        event_type: "order.created".into(),
        tenant: "bench".into(),
        channel: None,
        timestamp_ms: 1_735_689_600_000,
        attempt_time_ms: 1_735_689_601_000,
        attempt: 1,
        url: "https://receiver.example/hook".into(),
        method: "POST".into(),
        content_type: "application/json".into(),
        headers: vec![],
        body: body.clone(),
        signing_secret: b"secret".to_vec(),
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A count from the environment, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Which phases run: all of them, or only `hot` / `cold` (`PLUGIN_BENCH_ONLY`, for profiles).
struct Phases {
    compile: bool,
    hot: bool,
    cold: bool,
}

impl Phases {
    fn from_env() -> Self {
        match std::env::var("PLUGIN_BENCH_ONLY").as_deref() {
            Ok("hot") => Self {
                compile: false,
                hot: true,
                cold: false,
            },
            Ok("cold") => Self {
                compile: false,
                hot: false,
                cold: true,
            },
            _ => Self {
                compile: true,
                hot: true,
                cold: true,
            },
        }
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// Compile time (each sample installs into a fresh state dir: empty compile cache), cached
/// loads (the same bytes installed again) and host reopens (engine creation included).
async fn compile_figures(wasm: &[u8], settings: &PluginSettings) -> BenchResult<()> {
    let mut compiles = Vec::new();
    for _ in 0..COMPILES {
        let dir = tempfile::tempdir()?;
        let host = PluginHost::open(dir.path(), settings.clone())?;
        let started = Instant::now();
        host.install("bench", "reshape", wasm.to_vec()).await?;
        compiles.push(started.elapsed());
        assert_eq!(host.compile_count(), 1);
    }
    let dir = tempfile::tempdir()?;
    let host = PluginHost::open(dir.path(), settings.clone())?;
    host.install("bench", "reshape", wasm.to_vec()).await?;
    let mut cached = Vec::new();
    for i in 0..CACHED_LOADS {
        let started = Instant::now();
        host.install("bench", &format!("copy{i}"), wasm.to_vec())
            .await?;
        cached.push(started.elapsed());
    }
    assert_eq!(host.compile_count(), 1);
    for i in 0..CACHED_LOADS {
        host.remove("bench", &format!("copy{i}")).await;
    }
    drop(host);
    let mut reopens = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let reopened = PluginHost::open(dir.path(), settings.clone())?;
        reopens.push(started.elapsed());
        assert_eq!(reopened.compile_count(), 0);
    }
    println!(
        "compile (install, cold cache, {COMPILES} samples):  median {:?}",
        median(compiles)
    );
    println!(
        "cached load (install, warm cache, {CACHED_LOADS} samples): median {:?}",
        median(cached)
    );
    println!(
        "reopen host with 1 plugin (engine + cached load): median {:?}",
        median(reopens)
    );
    Ok(())
}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The measured host: one state dir with the plugin installed as `reshape`, and the same
/// component in a bare wasmtime host (`bare.rs`) for the floor.
struct Bench {
    host: PluginHost,
    bare: bare::BareHost,
    settings: PluginSettings,
    chain: [ChainStep; 1],
    body: Bytes,
    _dir: TempDir,
}

impl Bench {
    async fn new(wasm: &[u8], settings: &PluginSettings) -> BenchResult<Self> {
        let dir = tempfile::tempdir()?;
        let host = PluginHost::open(dir.path(), settings.clone())?;
        host.install("bench", "reshape", wasm.to_vec()).await?;
        let config = json!({"redact": ["password"], "shape": "flat"}).to_string();
        let body = body();
        Ok(Self {
            host,
            bare: bare::BareHost::new(wasm, &config, &body)?,
            settings: settings.clone(),
            chain: [ChainStep {
                name: "reshape".into(),
                config,
                version: None,
            }],
            body,
            _dir: dir,
        })
    }

    /// One chain run (fresh store + instance, as in production): its wall time, CPU time (when
    /// the host measured it: one run in eight back to back, every run after idle) and output
    /// body.
    async fn run(&self) -> BenchResult<(Duration, Option<Duration>, Bytes)> {
        let started = Instant::now();
        let run = self
            .host
            .run_chain("bench", &self.chain, request(&self.body), &self.settings)
            .await;
        let elapsed = started.elapsed();
        match run.outcome {
            ChainOutcome::Deliver(out) => Ok((elapsed, run.cpu, out.body)),
            other => Err(format!("unexpected outcome {other:?}").into()),
        }
    }

    /// Back to back, a chain call and a native call in turn: chain and native medians, and the
    /// hot PASS/FAIL line. In turn, not one series after the other, because this VM has
    /// episodes of seconds in which memory-heavy code on one vCPU runs ~1.75x slower (chain and
    /// native alike): two series could fall on either side of one, and their difference would
    /// then measure the host rather than the plugin host.
    async fn hot(&self, calls: usize) -> BenchResult<()> {
        let mut wasm_calls = Vec::with_capacity(calls);
        let mut native_calls = Vec::with_capacity(calls);
        let mut plugin_out = None;
        for i in 0..calls + 100 {
            let (elapsed, _, out) = self.run().await?;
            plugin_out.get_or_insert(out);
            let started = Instant::now();
            let native = std::hint::black_box(native_reshape(std::hint::black_box(&self.body)));
            let native_elapsed = started.elapsed();
            if native.is_none() {
                return Err("native reshape failed".into());
            }
            if i >= 100 {
                wasm_calls.push(elapsed);
                native_calls.push(native_elapsed);
            }
        }
        let plugin_out: Value = serde_json::from_slice(plugin_out.as_deref().unwrap_or_default())?;
        let native_out: Value =
            serde_json::from_slice(&native_reshape(&self.body).unwrap_or_default())?;
        if plugin_out != native_out {
            println!("note: native and plugin outputs differ:\n  {plugin_out}\n  {native_out}");
        }
        println!("body {} bytes, {calls} calls each", self.body.len());
        let (chain_median, native_median) =
            (median(wasm_calls.clone()), median(native_calls.clone()));
        println!(
            "transform chain via run_chain (fresh store+instance per call): median {chain_median:?}, p90 {:?}",
            percentile(wasm_calls, 0.9)
        );
        println!(
            "same reshape in native Rust (serde_json):                    median {native_median:?}, p90 {:?}",
            percentile(native_calls, 0.9)
        );
        // The bare host's series after both, so that it does not change their caches.
        let mut bare_calls = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            std::hint::black_box(self.bare.call()?);
            bare_calls.push(started.elapsed());
        }
        println!(
            "same component, bare wasmtime host (bare.rs), fresh store:    median {:?}",
            median(bare_calls)
        );
        let added = chain_median.saturating_sub(native_median);
        println!(
            "{} plugin cost per call: chain median {chain_median:?} - native median {native_median:?} = {added:?} <= 50 µs",
            pass(added <= Duration::from_micros(50))
        );
        Ok(())
    }

    /// One call at a time after 10 ms idle, as a quiet engine runs them (caches, TLBs and
    /// branch predictors have been used by other work in between), and the cold PASS/FAIL line.
    async fn cold(&self, calls: usize) -> BenchResult<()> {
        let mut chain_wall = Vec::with_capacity(calls);
        let mut chain_cpu = Vec::with_capacity(calls);
        let mut native = Vec::with_capacity(calls);
        let (mut bare_wall, mut bare_cpu) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
        let mut bare_phases: [Vec<Duration>; 3] = Default::default();
        for _ in 0..calls {
            tokio::time::sleep(COLD_IDLE).await;
            let (elapsed, cpu, _) = self.run().await?;
            chain_wall.push(elapsed);
            // Runs 10 ms apart: the host measures each one.
            chain_cpu.push(cpu.ok_or("the host did not measure a run after 10 ms idle")?);
            tokio::time::sleep(COLD_IDLE).await;
            let started = Instant::now();
            std::hint::black_box(native_reshape(std::hint::black_box(&self.body)));
            native.push(started.elapsed());
            tokio::time::sleep(COLD_IDLE).await;
            let started = Instant::now();
            let (body, phases) = self.bare.call_timed(thread_cpu)?;
            bare_wall.push(started.elapsed());
            std::hint::black_box(body);
            bare_cpu.push(phases.iter().sum());
            for (all, phase) in bare_phases.iter_mut().zip(phases) {
                all.push(phase);
            }
        }
        let (chain_median, native_median) = (median(chain_cpu), median(native));
        let bare_median = median(bare_cpu);
        println!(
            "cold: the chain after {COLD_IDLE:?} idle, {calls} calls:             median {:?} wall, {chain_median:?} CPU",
            median(chain_wall),
        );
        println!(
            "cold: native reshape after {COLD_IDLE:?} idle:                      median {native_median:?}"
        );
        println!(
            "cold: bare wasmtime host, fresh store, after {COLD_IDLE:?} idle:     median {:?} wall, {bare_median:?} CPU",
            median(bare_wall),
        );
        println!(
            "INFO floor of a fresh instance per call, cold: bare wasmtime CPU {bare_median:?} - native {native_median:?} = {:?}; hookd's chain adds {:?} to the bare host",
            bare_median.saturating_sub(native_median),
            chain_median.saturating_sub(bare_median),
        );
        let [instantiate, transform, teardown] = bare_phases.map(median);
        println!(
            "INFO cold bare host by phase (CPU medians): new store and instantiation {instantiate:?}, transform {transform:?}, drop {teardown:?}"
        );
        let added = chain_median.saturating_sub(native_median);
        println!(
            "{} plugin cost per call, cold (one call after {COLD_IDLE:?} idle): chain CPU median {chain_median:?} - native median {native_median:?} = {added:?} <= 50 µs",
            pass(added <= Duration::from_micros(50))
        );
        Ok(())
    }
}

fn main() -> BenchResult<()> {
    let wasm = std::fs::read(COMPONENT)
        .map_err(|e| format!("{COMPONENT}: {e} (run plugins/build.sh first)"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let settings = PluginSettings::default();
    let phases = Phases::from_env();
    println!(
        "plugin bench: reshape-transform ({} bytes), RUST_BACKTRACE={}",
        wasm.len(),
        std::env::var("RUST_BACKTRACE").unwrap_or_default()
    );
    runtime.block_on(async {
        if phases.compile {
            compile_figures(&wasm, &settings).await?;
        }
        let bench = Bench::new(&wasm, &settings).await?;
        if phases.hot {
            bench
                .hot(env_count("PLUGIN_BENCH_CALLS", DEFAULT_CALLS))
                .await?;
        }
        if phases.cold {
            bench
                .cold(env_count("PLUGIN_BENCH_COLD_CALLS", DEFAULT_COLD_CALLS))
                .await?;
        }
        Ok(())
    })
}
