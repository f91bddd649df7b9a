//! The bare relay role (`e2e --relay <url>`): the least any webhook relay does per event, as a
//! separate process, so that s1 can be read against what this machine allows two HTTP hops.
//!
//! It serves `POST` on 127.0.0.1:0 with axum, answers 202 at once, and posts the same body and
//! `webhook-id` to `<url>` with reqwest, at most [`IN_FLIGHT`] at a time (hookd's default
//! `max_in_flight` per webhook). Nothing is stored, signed, retried or logged: no relay that
//! keeps its promises can cost less per event.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::Semaphore;

/// Deliveries in flight at once, as hookd's default `max_in_flight` per webhook.
const IN_FLIGHT: usize = 8;

#[derive(Clone)]
struct Relay {
    target: Arc<str>,
    http: reqwest::Client,
    slots: Arc<Semaphore>,
}

/// Runs the relay until its parent closes stdin (or it is killed).
pub fn run(target: String) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let relay = Relay {
            target: target.into(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(IN_FLIGHT)
                .build()
                .expect("client"),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
        };
        let app = Router::new().fallback(handle).with_state(relay);
        crate::procs::serve_role("RELAY", app).await;
    });
}

async fn handle(State(relay): State<Relay>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers.get("webhook-id").cloned();
    tokio::spawn(async move {
        let _slot = relay.slots.acquire().await.expect("semaphore open");
        let mut request = relay
            .http
            .post(&*relay.target)
            .header("content-type", "application/json")
            .body(body);
        if let Some(id) = id {
            request = request.header("webhook-id", id);
        }
        match request.send().await {
            Ok(response) => {
                let _ = response.bytes().await;
            }
            Err(err) => eprintln!("relay: delivery failed: {err}"),
        }
    });
    StatusCode::ACCEPTED
}
