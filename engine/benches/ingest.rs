//! Ingest throughput: group commit (the engine's path) against one fsync per event.
//!
//! `cargo bench --bench ingest` prints medians of three runs each:
//! - `fsync_per_event`: one writer, one `append_events` (one durable write) per event (the
//!   naive baseline);
//! - `group_commit`: 64 concurrent submitters through `Ingest` (one flush per group);
//! - `http_ingest`: 64 concurrent HTTP producers against a real engine on 127.0.0.1
//!   (JSON parsing, auth, fan-out to one webhook, durable write, 202), with accept latency.
//!
//! Nothing is delivered: the webhook points at a closed loopback port and is disabled, so the
//! figures are ingest alone.
//!
//! `cargo bench --bench ingest -- --pending N` instead fills one store with N events of 1 KiB,
//! each leaving one delivery pending (groups of 500, nothing delivered), and prints the
//! process's RSS at every tenth: the store's memory against its backlog. This binary uses the
//! system allocator, so it runs under a heap profiler as it is (`heaptrack <bench binary>
//! --pending 200000`).

#![allow(clippy::print_stdout, clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookd::ids::now_ms;
use hookd::ingest::Ingest;
use hookd::store::{NewEvent, Store};
use serde_json::value::RawValue;

const RUN: Duration = Duration::from_secs(3);
const CONCURRENCY: usize = 64;

fn event(payload: &str) -> NewEvent {
    NewEvent {
        tenant: "bench".into(),
        event_type: "bench.event".into(),
        channel: None,
        idempotency_key: None,
        idempotency_window_ms: 0,
        created_at: now_ms(),
        payload: RawValue::from_string(payload.to_string()).unwrap(),
        webhooks: Vec::new(),
    }
}

async fn open_store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(
        hookd::store::SledStore::open_with_cache(
            dir,
            Arc::new(hookd::secrets::Keyring::random()),
            64 * 1024 * 1024,
        )
        .unwrap(),
    )
}

fn payload_1k() -> String {
    format!(r#"{{"data":"{}"}}"#, "x".repeat(1000))
}

async fn fsync_per_event() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let payload = payload_1k();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        store.append_events(vec![event(&payload)]).await.unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn group_commit() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    // No deliveries run here, so they are never behind: after a group the writer waits only
    // until as many requests are back as came for it (at most `LINGER`).
    let (ingest, _writer) = Ingest::start(store, hookd::lag::DeliveryLag::default());
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = payload_1k();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (ingest, count, stop, payload) =
            (ingest.clone(), count.clone(), stop.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                ingest.submit(event(&payload)).await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn http_ingest() -> (f64, Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let key_hash = hex::encode(hookd::config::hash_api_key("bench-key"));
    let text = format!(
        "data_dir = \"{}\"\n[ssrf]\nallow_http = true\nallow = [\"127.0.0.1/32\"]\n[security]\nsecret_key = \"ZTJlLWJlbmNoLXNlY3JldC1rZXktZm9yLWhvb2tkISE=\"\n[quotas]\napi_requests_per_sec = 1000000\napi_burst = 1000000\npending_deliveries = 100000000\n[[tenants]]\nid = \"bench\"\napi_keys = [\"sha256:{key_hash}\"]\n",
        dir.path().display()
    );
    let config = hookd::config::Config::parse(std::path::Path::new("bench.toml"), &text).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine = hookd::start(config, listener, Default::default())
        .await
        .unwrap();
    let base = format!("http://{}", engine.local_addr());
    let http = reqwest::Client::new();
    let body = format!(r#"{{"type":"bench.event","payload":{}}}"#, payload_1k());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, base, body, stop) = (http.clone(), base.clone(), body.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let response = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth("bench-key")
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    engine.shutdown().await;
    (rate, p50, p99)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Resident set size of this process (Linux), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Fills a store with `count` pending deliveries and prints RSS as the backlog grows.
async fn pending_backlog(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let webhook = hookd::ids::WebhookId::new();
    let payload = payload_1k();
    let start = Instant::now();
    let mut done = 0;
    println!("pending 0: RSS {:.1} MiB", rss_mib());
    while done < count {
        let group: Vec<NewEvent> = (0..500.min(count - done))
            .map(|_| NewEvent {
                webhooks: vec![webhook.clone()],
                ..event(&payload)
            })
            .collect();
        done += group.len();
        store.append_events(group).await.unwrap();
        if done % (count / 10).max(1) == 0 {
            println!(
                "pending {done}: RSS {:.1} MiB, {:.0} events/s",
                rss_mib(),
                done as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    store.close().await.unwrap();
    println!("closed: RSS {:.1} MiB", rss_mib());
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--pending") {
        let count = args
            .get(at + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(200_000);
        pending_backlog(count).await;
        return;
    }
    println!(
        "RUST_BACKTRACE={:?}; 1 KiB payloads; {CONCURRENCY} concurrent; {RUN:?} per run; median of 3",
        std::env::var("RUST_BACKTRACE").ok()
    );
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..3 {
        a.push(fsync_per_event().await);
        b.push(group_commit().await);
        let (rate, p50, p99) = http_ingest().await;
        c.push(rate);
        p50s.push(p50.as_secs_f64() * 1000.0);
        p99s.push(p99.as_secs_f64() * 1000.0);
    }
    let (a, b, c) = (median(a), median(b), median(c));
    println!("{:<32} {:>12.0} events/s", "fsync_per_event (1 writer)", a);
    println!(
        "{:<32} {:>12.0} events/s  ({:.1}x)",
        "group_commit (Ingest)",
        b,
        b / a
    );
    println!(
        "{:<32} {:>12.0} events/s  accept p50 {:.2} ms, p99 {:.2} ms",
        "http_ingest (engine, HTTP)",
        c,
        median(p50s),
        median(p99s)
    );
}
