//! The receiver role (`e2e --receiver`): a separate process with a small axum server on
//! 127.0.0.1:0 that records, per path, every request's receipt time, the send time carried in
//! its body (`"content":"T<unix ns>"`, which survives the reshape plugin) and its `webhook-id`.
//!
//! Paths: `/hook/fail` answers 500, `/hook/hang` never answers (the engine's timeout ends it),
//! every other `/hook/...` answers 200 — unless the receiver is "down" (`POST /ctl/down`), when
//! it holds requests until `POST /ctl/up`. `GET /ctl/counts` (cheap, for polling) and
//! `GET /ctl/stats` (with latency percentiles) report; `POST /ctl/reset` forgets everything.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::now_ns;

#[derive(Default)]
struct PathStats {
    total: u64,
    failed: u64,
    ids: HashSet<String>,
    latency_us: Vec<u32>,
    first_ns: u64,
    last_ns: u64,
}

#[derive(Clone, Default)]
struct Shared {
    paths: Arc<Mutex<HashMap<String, PathStats>>>,
    down: Arc<AtomicBool>,
}

/// Runs the receiver until its parent closes stdin (or it is killed).
pub fn run() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let shared = Shared::default();
        let app = Router::new().fallback(handle).with_state(shared);
        crate::procs::serve_role("RECEIVER", app).await;
    });
}

/// The send time a body carries, in unix ns.
fn sent_ns(body: &[u8]) -> Option<u64> {
    const MARK: &[u8] = b"\"content\":\"T";
    let at = body.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// One path's counts, with latency percentiles (µs) if `latency`.
fn summary(s: &PathStats, latency: bool) -> Value {
    let mut v = json!({"total": s.total, "distinct": s.ids.len(), "failed": s.failed,
        "first_ns": s.first_ns, "last_ns": s.last_ns});
    if latency {
        let mut lat = s.latency_us.clone();
        lat.sort_unstable();
        let pct = |q: f64| {
            if lat.is_empty() {
                0
            } else {
                lat[((lat.len() - 1) as f64 * q).round() as usize]
            }
        };
        v["p50_us"] = json!(pct(0.5));
        v["p90_us"] = json!(pct(0.9));
        v["p99_us"] = json!(pct(0.99));
        v["max_us"] = json!(lat.last().copied().unwrap_or(0));
    }
    v
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    match (method, path.as_str()) {
        (Method::POST, "/ctl/down") => {
            shared.down.store(true, Ordering::SeqCst);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, "/ctl/up") => {
            shared.down.store(false, Ordering::SeqCst);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, "/ctl/reset") => {
            shared.paths.lock().unwrap().clear();
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/ctl/counts") => {
            let paths = shared.paths.lock().unwrap();
            let mut all = PathStats::default();
            let mut counts = serde_json::Map::new();
            for (p, s) in paths.iter() {
                counts.insert(p.clone(), summary(s, false));
                all.total += s.total;
                all.failed += s.failed;
                all.first_ns = min_nonzero(all.first_ns, s.first_ns);
                all.last_ns = all.last_ns.max(s.last_ns);
            }
            let distinct: usize = paths.values().map(|s| s.ids.len()).sum();
            let mut all = summary(&all, false);
            all["distinct"] = json!(distinct);
            counts.insert("ALL".into(), all);
            axum::Json(Value::Object(counts)).into_response()
        }
        (Method::GET, "/ctl/stats") => {
            let paths = shared.paths.lock().unwrap();
            let mut all = PathStats::default();
            let mut stats = serde_json::Map::new();
            for (p, s) in paths.iter() {
                stats.insert(p.clone(), summary(s, true));
                all.total += s.total;
                all.failed += s.failed;
                all.first_ns = min_nonzero(all.first_ns, s.first_ns);
                all.last_ns = all.last_ns.max(s.last_ns);
                all.latency_us.extend_from_slice(&s.latency_us);
            }
            let distinct: usize = paths.values().map(|s| s.ids.len()).sum();
            let mut all = summary(&all, true);
            all["distinct"] = json!(distinct);
            stats.insert("ALL".into(), all);
            axum::Json(Value::Object(stats)).into_response()
        }
        (Method::POST, "/hook/hang") => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        (Method::POST, "/hook/fail") => {
            let mut paths = shared.paths.lock().unwrap();
            paths.entry(path.clone()).or_default().failed += 1;
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        (Method::POST, p) if p.starts_with("/hook/") => {
            while shared.down.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let now = now_ns();
            let latency_us = sent_ns(&body)
                .map(|sent| (now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let mut paths = shared.paths.lock().unwrap();
            let stats = paths.entry(path.clone()).or_default();
            stats.total += 1;
            stats.ids.insert(id);
            if let Some(latency) = latency_us {
                stats.latency_us.push(latency);
            }
            if stats.first_ns == 0 {
                stats.first_ns = now;
            }
            stats.last_ns = now;
            (StatusCode::OK, "ok").into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
