//! Faulty receivers, each next to a healthy webhook in the same engine: the faulty attempt is
//! recorded with a stable status or error code and retried as the policy says, and the healthy
//! webhook keeps its latency. Every receiver is a real server on loopback; the raw TCP ones
//! misbehave below HTTP (silence, resets, trickled bytes, broken TLS).
//!
//! The latency bound: the faulty webhook's attempt timeout is 4 s, and the healthy webhook's
//! slowest delivery (202 to arrival) must stay under 2 s, so no faulty attempt's hang was added
//! to it (generous: the machine is shared; typical figures are tens of ms). Figures are
//! printed (`--nocapture`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Receiver, TestEngine, eventually};

const WAIT: Duration = Duration::from_secs(20);
/// The faulty webhook's attempt timeout.
const FAULTY_TIMEOUT_MS: u64 = 4000;
/// The healthy webhook's slowest delivery must stay under this (half the faulty timeout).
const HEALTHY_MAX: Duration = Duration::from_millis(2000);
const EVENTS: usize = 25;

/// One engine with a healthy webhook and a faulty one at `faulty_url`.
struct Setup {
    engine: TestEngine,
    healthy: Receiver,
    faulty_id: String,
}

impl Setup {
    async fn start(faulty_url: &str, extra_delivery: &str) -> Self {
        let engine = TestEngine::start_with(extra_delivery).await;
        let healthy = Receiver::start().await;
        let faulty = engine
            // Room for every event at once, so a retry never queues behind first attempts.
            .create_webhook(json!({
                "url": faulty_url,
                "timeout_ms": FAULTY_TIMEOUT_MS,
                "max_in_flight": 2 * EVENTS,
            }))
            .await;
        engine.create_webhook(json!({"url": healthy.url})).await;
        Setup {
            engine,
            healthy,
            faulty_id: faulty["id"].as_str().unwrap().to_string(),
        }
    }

    /// Sends [`EVENTS`] events 20 ms apart while the faulty webhook fails, and measures each
    /// one's time from the POST to its arrival at the healthy receiver. Asserts the bound.
    async fn healthy_latency(&self, mode: &str) {
        let mut sent = HashMap::new();
        for i in 0..EVENTS {
            let started = Instant::now();
            let event = self
                .engine
                .send_event("user.created", json!({"i": i}))
                .await;
            sent.insert(event["id"].as_str().unwrap().to_string(), started);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = self.healthy.wait_for(EVENTS, WAIT).await;
        let mut latencies: Vec<Duration> = got
            .iter()
            .map(|r| r.at.duration_since(sent[r.json()["id"].as_str().unwrap()]))
            .collect();
        latencies.sort();
        let (p50, max) = (latencies[latencies.len() / 2], *latencies.last().unwrap());
        eprintln!(
            "faulty receiver [{mode}]: healthy webhook p50 {:.1} ms, max {:.1} ms over {EVENTS} events",
            p50.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
        assert!(
            max < HEALTHY_MAX,
            "[{mode}] the healthy webhook took {max:?} (bound {HEALTHY_MAX:?})"
        );
    }

    /// The faulty webhook's oldest delivery once it has `n` attempts.
    async fn first_faulty_delivery(&self, n: usize) -> Value {
        let (_, page) = self
            .engine
            .get(&format!("/v1/deliveries?webhook_id={}", self.faulty_id))
            .await;
        let oldest = page["data"].as_array().unwrap().last().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        eventually(WAIT, &format!("{n} attempts recorded"), || async {
            let (_, d) = self.engine.get(&format!("/v1/deliveries/{oldest}")).await;
            (d["attempts"].as_array().unwrap().len() >= n).then_some(d)
        })
        .await
    }
}

/// Asserts a failed first attempt with `code` (and no status) and a retry scheduled.
fn assert_failed_first(d: &Value, code: &str) {
    let first = &d["attempts"][0];
    assert_eq!(first["error_code"], code, "{d}");
    assert_eq!(first["result"], "failed", "{d}");
    assert!(first["status_code"].is_null(), "{d}");
    assert!(first["next_attempt_at"].is_string(), "retry scheduled: {d}");
}

/// [`assert_failed_first`], and the retry was made.
fn assert_retried_failure(d: &Value, code: &str) {
    assert_failed_first(d, code);
    assert_eq!(d["attempts"][1]["attempt"], 2, "retried: {d}");
}

/// Waits until a receiver saw more connections than there were events: some delivery was
/// tried again (cheaper than waiting out a second hanging attempt).
async fn wait_for_a_retry(count: impl Fn() -> usize) {
    eventually(WAIT, "a second try of some delivery", || async {
        (count() > EVENTS).then_some(())
    })
    .await;
}

/// A raw TCP server on 127.0.0.1 running `handle` for each connection; counts connections.
async fn raw_server<F, Fut>(handle: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handle(stream));
        }
    });
    (addr, connections)
}

/// Reads one HTTP request (headers and a content-length body).
async fn read_request(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_receiver_hanging_past_the_timeout_is_cut_and_retried() {
    let hanging = Receiver::start().await;
    hanging.delay(Duration::from_secs(60));
    let setup = Setup::start(&hanging.url, "").await;
    setup.healthy_latency("hangs past the timeout").await;
    let d = setup.first_faulty_delivery(1).await;
    assert_failed_first(&d, "timeout");
    wait_for_a_retry(|| hanging.count()).await;
    let latency = d["attempts"][0]["latency_ms"].as_u64().unwrap();
    assert!(
        (FAULTY_TIMEOUT_MS - 100..FAULTY_TIMEOUT_MS + 3000).contains(&latency),
        "cut at the timeout: {latency} ms"
    );
}

#[tokio::test]
async fn a_receiver_that_accepts_and_never_answers_is_cut_and_retried() {
    let (addr, connections) = raw_server(|mut stream| async move {
        read_request(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    })
    .await;
    let setup = Setup::start(&format!("http://{addr}/hook"), "").await;
    setup.healthy_latency("accepts, never answers").await;
    let d = setup.first_faulty_delivery(1).await;
    assert_failed_first(&d, "timeout");
    wait_for_a_retry(|| connections.load(Ordering::SeqCst)).await;
}

#[tokio::test]
async fn a_receiver_resetting_the_connection_is_recorded_and_retried() {
    let (addr, connections) = raw_server(|mut stream| async move {
        read_request(&mut stream).await;
        // SO_LINGER 0: closing sends RST instead of FIN.
        stream.set_zero_linger().unwrap();
        drop(stream);
    })
    .await;
    let setup = Setup::start(&format!("http://{addr}/hook"), "").await;
    setup.healthy_latency("resets the connection").await;
    let d = setup.first_faulty_delivery(2).await;
    assert_retried_failure(&d, "connection_reset");
    assert!(connections.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn a_receiver_trickling_its_answer_byte_by_byte_is_cut_by_the_total_timeout() {
    let (addr, connections) = raw_server(|mut stream| async move {
        read_request(&mut stream).await;
        // A valid answer, one byte every 250 ms: the head alone needs ~9 s.
        for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let setup = Setup::start(&format!("http://{addr}/hook"), "").await;
    setup.healthy_latency("answers byte by byte").await;
    let d = setup.first_faulty_delivery(1).await;
    assert_failed_first(&d, "timeout");
    wait_for_a_retry(|| connections.load(Ordering::SeqCst)).await;
    let latency = d["attempts"][0]["latency_ms"].as_u64().unwrap();
    assert!(latency < FAULTY_TIMEOUT_MS + 3000, "{latency} ms");
}

#[tokio::test]
async fn a_200_whose_body_trickles_forever_is_delivered_and_the_read_is_cut_by_the_timeout() {
    let (addr, _) = raw_server(|mut stream| async move {
        read_request(&mut stream).await;
        // The status decides; the body then comes one byte every 100 ms, never ending.
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n";
        if stream.write_all(head).await.is_err() {
            return;
        }
        while stream.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let setup = Setup::start(&format!("http://{addr}/hook"), "").await;
    setup.healthy_latency("200, body trickles").await;
    let d = setup.first_faulty_delivery(1).await;
    assert_eq!(d["status"], "delivered", "{d}");
    let first = &d["attempts"][0];
    assert_eq!(first["status_code"], 200, "{d}");
    // The snippet holds what arrived before the total timeout cut the read.
    let snippet = first["response_snippet"].as_str().unwrap();
    assert!(
        !snippet.is_empty() && snippet.len() < 4096 && snippet.bytes().all(|b| b == b'x'),
        "{d}"
    );
}

#[tokio::test]
async fn a_500_is_recorded_with_its_status_and_retried() {
    let failing = Receiver::start().await;
    failing.respond(500);
    let setup = Setup::start(&failing.url, "").await;
    setup.healthy_latency("500").await;
    let d = setup.first_faulty_delivery(2).await;
    let first = &d["attempts"][0];
    assert_eq!(
        (first["status_code"].as_u64(), first["error_code"].as_str()),
        (Some(500), Some("http_status")),
        "{d}"
    );
    assert_eq!(first["result"], "failed");
    assert_eq!(first["response_snippet"], "ok");
    assert!(first["next_attempt_at"].is_string());
}

/// A status with `Retry-After: 2` under a 100 ms schedule: only the header can hold the retry
/// back for two seconds.
async fn retry_after_is_honoured(status: u16) {
    let failing = Receiver::start().await;
    failing.respond_with_retry_after(status, "2");
    let setup = Setup::start(
        &failing.url,
        "retry_schedule = [\"100ms\"]\nretry_jitter_percent = 0",
    )
    .await;
    setup
        .healthy_latency(&format!("{status} with Retry-After"))
        .await;
    let got = failing.wait_for(2, WAIT).await;
    let d = setup.first_faulty_delivery(2).await;
    let first = &d["attempts"][0];
    assert_eq!(first["status_code"], status, "{d}");
    assert_eq!(first["result"], "failed", "{d}");
    // The first two requests of one delivery are one second apart, not one hour.
    let id = got[0].header("webhook-id");
    let retried = eventually(WAIT, "the retry", || async {
        let got = failing.received();
        let same: Vec<_> = got
            .into_iter()
            .filter(|r| r.header("webhook-id") == id)
            .collect();
        (same.len() >= 2).then_some(same)
    })
    .await;
    let gap = retried[1].at.duration_since(retried[0].at);
    assert!(
        gap >= Duration::from_millis(1950) && gap < Duration::from_secs(10),
        "Retry-After 2 s honoured: waited {gap:?}"
    );
}

#[tokio::test]
async fn a_503_with_retry_after_is_retried_when_it_says() {
    retry_after_is_honoured(503).await;
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_when_it_says() {
    retry_after_is_honoured(429).await;
}

/// Answers every request with `status` and `location`, counting requests.
async fn redirecting_server(status: u16, location: String) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let (counter, location) = (counter.clone(), location.clone());
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut response = (StatusCode::from_u16(status).unwrap(), "moved").into_response();
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
            response
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

#[tokio::test]
async fn redirects_are_recorded_and_never_followed() {
    // The Location targets are loopback: another receiver that counts hits (allow-listed, so
    // only the never-follow rule keeps requests away) and 127.0.0.2 (not allow-listed).
    let target = Receiver::start().await;
    let blocked = TcpListener::bind(format!("127.0.0.2:{}", target.port()))
        .await
        .ok();
    for (status, location) in [
        (301, target.url.clone()),
        (302, target.url.replace("127.0.0.1", "127.0.0.2")),
        (307, target.url.clone()),
    ] {
        let (url, hits) = redirecting_server(status, location).await;
        let setup = Setup::start(&url, "").await;
        setup.healthy_latency(&format!("redirect {status}")).await;
        let d = setup.first_faulty_delivery(2).await;
        let first = &d["attempts"][0];
        assert_eq!(first["status_code"], status, "{d}");
        assert_eq!(first["error_code"], "http_status", "{d}");
        assert_eq!(first["result"], "failed", "{d}");
        assert!(first["next_attempt_at"].is_string(), "{d}");
        assert!(hits.load(Ordering::SeqCst) >= 2);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(target.count(), 0, "a redirect was followed");
    if let Some(blocked) = blocked {
        let accepted = tokio::time::timeout(Duration::from_millis(10), blocked.accept()).await;
        assert!(accepted.is_err(), "a redirect to 127.0.0.2 was followed");
    }
}

#[tokio::test]
async fn a_huge_response_body_is_read_only_up_to_the_cap() {
    const TOTAL: usize = 50 * 1024 * 1024;
    let streamed = Arc::new(AtomicUsize::new(0));
    let counter = streamed.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            let chunks = futures::stream::iter((0..TOTAL / 65536).map(move |_| {
                counter.fetch_add(65536, Ordering::SeqCst);
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 65536]))
            }));
            Response::new(Body::from_stream(chunks))
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let setup = Setup::start(&url, "").await;
    setup.healthy_latency("50 MB body").await;
    let d = setup.first_faulty_delivery(1).await;
    let first = &d["attempts"][0];
    assert_eq!(first["status_code"], 200, "{d}");
    assert_eq!(first["result"], "delivered", "{d}");
    let snippet = first["response_snippet"].as_str().unwrap();
    assert_eq!(
        snippet.len(),
        4096,
        "stored snippet capped at max_response_body_bytes"
    );
    let latency = first["latency_ms"].as_u64().unwrap();
    let sent = streamed.load(Ordering::SeqCst);
    eprintln!(
        "50 MB body: attempt latency {latency} ms, {:.1} MB produced by the receiver across {EVENTS} attempts",
        sent as f64 / 1e6
    );
    assert!(latency < FAULTY_TIMEOUT_MS, "{latency} ms");
    // Each attempt stops reading after the cap; at most socket buffers' worth is produced,
    // never the whole body per attempt.
    assert!(
        sent < EVENTS * TOTAL / 4,
        "{sent} bytes produced for {EVENTS} attempts"
    );
}

/// An https webhook served by a raw TCP server that reads the ClientHello then `answer`s.
async fn broken_tls(answer: &'static [u8], mode: &str) {
    let (addr, connections) = raw_server(move |mut stream| async move {
        let mut hello = [0u8; 1024];
        let _ = stream.read(&mut hello).await;
        let _ = stream.write_all(answer).await;
        drop(stream);
    })
    .await;
    let setup = Setup::start(&format!("https://{addr}/hook"), "").await;
    setup.healthy_latency(mode).await;
    let d = setup.first_faulty_delivery(2).await;
    assert_retried_failure(&d, "tls");
    assert!(connections.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn a_tls_handshake_closed_after_the_client_hello_is_a_tls_error_and_retried() {
    broken_tls(b"", "TLS closed after ClientHello").await;
}

#[tokio::test]
async fn a_tls_handshake_answered_with_garbage_is_a_tls_error_and_retried() {
    broken_tls(
        b"HTTP/1.1 400 Bad Request\r\n\r\nthis is not TLS",
        "TLS garbage",
    )
    .await;
}

#[tokio::test]
async fn a_closed_port_is_connect_refused_and_retried() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let setup = Setup::start(&format!("http://{addr}/hook"), "").await;
    setup.healthy_latency("closed port").await;
    let d = setup.first_faulty_delivery(2).await;
    assert_retried_failure(&d, "connect_refused");
}

/// A plain-http receiver that reads the request and writes `answer` (then closes).
async fn answering(answer: Vec<u8>) -> String {
    let answer: Arc<[u8]> = answer.into();
    let (addr, _) = raw_server(move |mut stream| {
        let answer = answer.clone();
        async move {
            read_request(&mut stream).await;
            let _ = stream.write_all(&answer).await;
        }
    })
    .await;
    format!("http://{addr}/hook")
}

#[tokio::test]
async fn a_receiver_answering_garbage_is_an_invalid_response_and_retried() {
    let url = answering(b"this is not HTTP at all\r\n\r\n".to_vec()).await;
    let setup = Setup::start(&url, "").await;
    setup.healthy_latency("garbage instead of HTTP").await;
    let d = setup.first_faulty_delivery(2).await;
    assert_retried_failure(&d, "invalid_response");
}

#[tokio::test]
async fn a_receiver_answering_a_1_mb_header_is_an_invalid_response_and_retried() {
    let mut answer = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    answer.extend(vec![b'a'; 1024 * 1024]);
    answer.extend(b"\r\ncontent-length: 0\r\n\r\n");
    let setup = Setup::start(&answering(answer).await, "").await;
    setup.healthy_latency("1 MB header").await;
    let d = setup.first_faulty_delivery(2).await;
    assert_retried_failure(&d, "invalid_response");
}

#[tokio::test]
async fn a_receiver_closing_before_answering_is_connection_closed_and_retried() {
    let setup = Setup::start(&answering(Vec::new()).await, "").await;
    setup.healthy_latency("closes before answering").await;
    let d = setup.first_faulty_delivery(2).await;
    assert_retried_failure(&d, "connection_closed");
}

/// Regression: a webhook allowed more attempts than the engine-wide cap (64 vs 16) filled the
/// cap with hanging attempts and then re-took every freed slot, so another webhook's
/// deliveries waited indefinitely (15 of 40 still undelivered 10 s later). Freed slots now go
/// to waiting webhooks in turn.
#[tokio::test]
async fn a_hanging_webhook_holding_every_global_slot_does_not_starve_another() {
    let hanging = Receiver::start().await;
    hanging.delay(Duration::from_secs(60));
    let engine = TestEngine::start_with("max_in_flight = 16").await;
    let healthy = Receiver::start().await;
    engine
        .create_webhook(json!({
            "url": hanging.url,
            "timeout_ms": FAULTY_TIMEOUT_MS,
            "max_in_flight": 64,
        }))
        .await;
    engine.create_webhook(json!({"url": healthy.url})).await;
    for i in 0..40 {
        engine.send_event("user.created", json!({"i": i})).await;
    }
    // The tenant alone holds every delivery permit but the reserve kept for other tenants
    // (1/16 of the cap, at least one: `delivery/permits.rs`).
    hanging.wait_for(15, WAIT).await;
    let saturated = Instant::now();
    // The hanging attempts free their slots at each 4 s timeout and the healthy webhook gets
    // every other freed slot, so it finishes at one of those timeouts: the third or the
    // fourth after the cap filled (12.0 and 16.0 s in runs of this test alone; once in CI the
    // fourth fell just past a bound of exactly four). Bound: five timeouts; without turns the
    // hanging webhook's 40 deliveries x 4 attempts hold the cap for ~40 s.
    healthy
        .wait_for(40, Duration::from_millis(FAULTY_TIMEOUT_MS * 5))
        .await;
    eprintln!(
        "global cap taken by a hanging webhook: the healthy one had all 40 after {:?}",
        saturated.elapsed()
    );
}
