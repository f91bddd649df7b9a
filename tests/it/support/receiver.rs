//! A real HTTP receiver on 127.0.0.1: records every request and answers as told.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Debug, Clone)]
struct Behaviour {
    status: u16,
    delay: Duration,
    retry_after: Option<String>,
    /// A JSON body to answer with (else `ok` as text).
    json: Option<String>,
}

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Option<Behaviour>>>,
}

pub struct Receiver {
    pub url: String,
    shared: Shared,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Receiver {
    /// Starts a receiver answering 200 immediately.
    pub async fn start() -> Self {
        let shared = Shared::default();
        *shared.behaviour.lock().unwrap() = Some(Behaviour {
            status: 200,
            delay: Duration::ZERO,
            retry_after: None,
            json: None,
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        Receiver {
            url,
            shared,
            shutdown,
        }
    }

    pub fn port(&self) -> u16 {
        self.url
            .split(':')
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn respond(&self, status: u16) {
        self.with(|b| {
            b.status = status;
            b.retry_after = None;
            b.json = None;
        });
    }

    /// Answers `status` with `body` as `application/json` (and an `x-receiver: test` header).
    pub fn respond_json(&self, status: u16, body: serde_json::Value) {
        self.with(|b| {
            b.status = status;
            b.retry_after = None;
            b.json = Some(body.to_string());
        });
    }

    pub fn respond_with_retry_after(&self, status: u16, retry_after: &str) {
        self.with(|b| {
            b.status = status;
            b.retry_after = Some(retry_after.to_string());
        });
    }

    pub fn delay(&self, delay: Duration) {
        self.with(|b| b.delay = delay);
    }

    fn with(&self, change: impl FnOnce(&mut Behaviour)) {
        change(self.shared.behaviour.lock().unwrap().as_mut().unwrap());
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        super::eventually(
            timeout,
            &format!("{n} requests at the receiver"),
            || async {
                let got = self.received();
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn record(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let behaviour = shared.behaviour.lock().unwrap().clone().unwrap();
    shared.received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let status = StatusCode::from_u16(behaviour.status).unwrap();
    if let Some(json) = behaviour.json {
        let headers = [("content-type", "application/json"), ("x-receiver", "test")];
        return (status, headers, json).into_response();
    }
    match behaviour.retry_after {
        Some(value) => (status, [("retry-after", value)], "retry later").into_response(),
        None => (status, "ok").into_response(),
    }
}
