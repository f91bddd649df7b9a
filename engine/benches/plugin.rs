//! Plugin host benchmark: prints medians of the per-call cost of a transform chain (a fresh
//! store and instance per call, as in production) against the same reshape written natively
//! with serde_json, and of compiling a plugin (cold cache) against loading it from the compile
//! cache, with PASS/FAIL for the target (chain ≤ native + 50 µs per call). Run with
//! `cargo bench -p hookd --bench plugin`; needs `plugins/dist/` (run
//! `plugins/build.sh`).
#![allow(clippy::print_stdout)] // A benchmark reports on stdout.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hookd::plugin::{ChainOutcome, ChainStep, PluginHost, PluginRequest, PluginSettings};
use serde_json::{Value, json};

#[path = "shared/reshape.rs"]
mod reshape;
use reshape::native_reshape;

const COMPONENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../plugins/dist/reshape-transform.wasm"
);
/// Calls measured per figure (`PLUGIN_BENCH_CALLS` overrides it, e.g. for a longer profile).
const DEFAULT_CALLS: usize = 2000;
const COMPILES: usize = 5;
/// Calls measured one at a time after [`COLD_IDLE`].
const COLD_CALLS: usize = 200;
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let wasm = std::fs::read(COMPONENT)
        .map_err(|e| format!("{COMPONENT}: {e} (run plugins/build.sh first)"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let settings = PluginSettings::default();
    let calls: usize = std::env::var("PLUGIN_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CALLS);
    println!(
        "plugin bench: reshape-transform ({} bytes), RUST_BACKTRACE={}",
        wasm.len(),
        std::env::var("RUST_BACKTRACE").unwrap_or_default()
    );

    runtime.block_on(async {
        // Compile time: each sample installs into a fresh state dir (empty compile cache).
        let mut compiles = Vec::new();
        for _ in 0..COMPILES {
            let dir = tempfile::tempdir()?;
            let host = PluginHost::open(dir.path(), settings.clone())?;
            let started = Instant::now();
            host.install("bench", "reshape", wasm.clone()).await?;
            compiles.push(started.elapsed());
            assert_eq!(host.compile_count(), 1);
        }

        // Cached load: install the same bytes again on a host whose cache has them, and
        // reopen a state dir holding the plugin (engine creation included).
        let dir = tempfile::tempdir()?;
        let host = PluginHost::open(dir.path(), settings.clone())?;
        host.install("bench", "reshape", wasm.clone()).await?;
        let mut cached = Vec::new();
        for i in 0..CACHED_LOADS {
            let started = Instant::now();
            host.install("bench", &format!("copy{i}"), wasm.clone())
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

        // Per call: a one-step transform chain, fresh store + instance every call.
        let host = PluginHost::open(dir.path(), settings.clone())?;
        let body = body();
        let chain = [ChainStep {
            name: "reshape".into(),
            config: json!({"redact": ["password"], "shape": "flat"}).to_string(),
            version: None,
        }];
        let mut wasm_calls = Vec::with_capacity(calls);
        let mut expected = None;
        for i in 0..calls + 100 {
            let started = Instant::now();
            let run = host
                .run_chain("bench", &chain, request(&body), &settings)
                .await;
            let elapsed = started.elapsed();
            let ChainOutcome::Deliver(out) = run.outcome else {
                return Err(format!("unexpected outcome {:?}", run.outcome).into());
            };
            expected.get_or_insert(out.body);
            if i >= 100 {
                wasm_calls.push(elapsed);
            }
        }

        let mut native_calls = Vec::with_capacity(calls);
        for i in 0..calls + 100 {
            let started = Instant::now();
            let out = std::hint::black_box(native_reshape(std::hint::black_box(&body)));
            let elapsed = started.elapsed();
            if out.is_none() {
                return Err("native reshape failed".into());
            }
            if i >= 100 {
                native_calls.push(elapsed);
            }
        }
        // The same one call at a time after 10 ms idle, as a quiet engine runs them: caches,
        // TLBs and branch predictors have been used by other work in between.
        let mut cold_chain = Vec::with_capacity(COLD_CALLS);
        let mut cold_chain_cpu = Vec::with_capacity(COLD_CALLS);
        let mut cold_native = Vec::with_capacity(COLD_CALLS);
        for _ in 0..COLD_CALLS {
            tokio::time::sleep(COLD_IDLE).await;
            let started = Instant::now();
            let run = host
                .run_chain("bench", &chain, request(&body), &settings)
                .await;
            cold_chain.push(started.elapsed());
            cold_chain_cpu.push(run.cpu);
            tokio::time::sleep(COLD_IDLE).await;
            let started = Instant::now();
            std::hint::black_box(native_reshape(std::hint::black_box(&body)));
            cold_native.push(started.elapsed());
        }

        let plugin_out: Value = serde_json::from_slice(expected.as_deref().unwrap_or_default())?;
        let native_out: Value = serde_json::from_slice(&native_reshape(&body).unwrap_or_default())?;
        if plugin_out != native_out {
            println!("note: native and plugin outputs differ:\n  {plugin_out}\n  {native_out}");
        }

        println!("body {} bytes, {calls} calls each", body.len());
        let (chain_median, native_median) = (median(wasm_calls.clone()), median(native_calls.clone()));
        println!(
            "transform chain via run_chain (fresh store+instance per call): median {:?}, p90 {:?}",
            chain_median,
            percentile(wasm_calls, 0.9)
        );
        println!(
            "same reshape in native Rust (serde_json):                    median {:?}, p90 {:?}",
            median(native_calls.clone()),
            percentile(native_calls, 0.9)
        );
        let (cold_chain_median, cold_native_median) =
            (median(cold_chain_cpu.clone()), median(cold_native));
        println!(
            "cold: the chain after {COLD_IDLE:?} idle, {COLD_CALLS} calls:             median {:?} wall, {cold_chain_median:?} CPU",
            median(cold_chain),
        );
        println!(
            "cold: native reshape after {COLD_IDLE:?} idle:                      median {cold_native_median:?}"
        );
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
        let added = chain_median.saturating_sub(native_median);
        println!(
            "{} plugin cost per call: chain median {chain_median:?} - native median {native_median:?} = {added:?} <= 50 µs",
            if added <= Duration::from_micros(50) {
                "PASS"
            } else {
                "FAIL"
            }
        );
        let cold_added = cold_chain_median.saturating_sub(cold_native_median);
        println!(
            "{} plugin cost per call, cold (one call after {COLD_IDLE:?} idle): chain CPU median {cold_chain_median:?} - native median {cold_native_median:?} = {cold_added:?} <= 50 µs",
            if cold_added <= Duration::from_micros(50) {
                "PASS"
            } else {
                "FAIL"
            }
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
