//! Plugin host benchmark: prints medians of the per-call cost of a transform chain (a fresh
//! store and instance per call, as in production) against the same reshape written natively
//! with serde_json, and of compiling a plugin (cold cache) against loading it from the compile
//! cache. Run with `cargo bench -p hookd --bench plugin`; needs `plugins/dist/` (run
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
const CALLS: usize = 2000;
const COMPILES: usize = 5;
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
        }];
        let mut wasm_calls = Vec::with_capacity(CALLS);
        let mut expected = None;
        for i in 0..CALLS + 100 {
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

        // The part of run_chain that is not wasm: one hop to the blocking pool and back.
        let mut hops = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let started = Instant::now();
            tokio::task::spawn_blocking(|| std::hint::black_box(1)).await?;
            hops.push(started.elapsed());
        }

        let mut native_calls = Vec::with_capacity(CALLS);
        for i in 0..CALLS + 100 {
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
        let plugin_out: Value = serde_json::from_slice(expected.as_deref().unwrap_or_default())?;
        let native_out: Value = serde_json::from_slice(&native_reshape(&body).unwrap_or_default())?;
        if plugin_out != native_out {
            println!("note: native and plugin outputs differ:\n  {plugin_out}\n  {native_out}");
        }

        println!("body {} bytes, {CALLS} calls each", body.len());
        println!(
            "transform chain via run_chain (fresh store+instance per call): median {:?}, p90 {:?}",
            median(wasm_calls.clone()),
            percentile(wasm_calls, 0.9)
        );
        println!(
            "  of which a spawn_blocking round trip:                      median {:?}",
            median(hops)
        );
        println!(
            "same reshape in native Rust (serde_json):                    median {:?}, p90 {:?}",
            median(native_calls.clone()),
            percentile(native_calls, 0.9)
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
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
