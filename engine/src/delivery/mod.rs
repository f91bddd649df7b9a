//! Delivery: getting each queued delivery to its webhook's URL.
//!
//! - `dispatcher.rs` owns the in-memory claims on the durable per-webhook queues and decides
//!   what runs when (per-webhook in-flight cap and rate limit, per-tenant cap).
//! - `attempt.rs` runs one attempt through its stages: load, `prepare.rs` (render, plugins,
//!   sign), send (`client.rs`, the only outbound HTTP client, under one of the engine-wide
//!   delivery permits that `permits.rs` shares fairly between tenants), `judge.rs` (what the
//!   try means),
//!   record (`recorder.rs`, group commit), `consequences.rs` (`operational.rs` events, webhook
//!   health).
//! - `retry.rs` is the pure retry policy.

pub mod attempt;
pub mod capture;
pub mod client;
pub mod consequences;
pub mod dispatcher;
pub mod judge;
pub mod operational;
pub mod permits;
pub mod prepare;
pub mod recorder;
pub mod retry;
pub mod runtime;

use std::sync::Arc;

use crate::config::SharedConfig;
use crate::store::Store;

pub use client::DeliveryClient;
pub use dispatcher::{DispatchHandle, Dispatcher};
pub use recorder::Recorder;

/// What an attempt needs, shared by all attempts.
#[derive(Debug, Clone)]
pub struct DeliveryContext {
    pub store: Arc<dyn Store>,
    pub config: SharedConfig,
    pub client: DeliveryClient,
    /// The engine-wide delivery permits (`[delivery] max_in_flight`), held only while sending.
    pub permits: permits::FairPermits,
    /// Turns for CPU work on large bodies (signing here, parsing and rendering in the API).
    pub offload: crate::offload::Offload,
    pub dispatch: DispatchHandle,
    /// Writes attempt outcomes (group commit).
    pub recorder: Recorder,
    pub plugins: crate::plugin::PluginHost,
    /// For operational events, which take the same durable path as producers' events.
    pub ingest: crate::ingest::Ingest,
    pub metrics: crate::telemetry::Metrics,
    /// Every tenant's delivery lag, observed as attempts start (read by ingest's back-pressure).
    pub lag: crate::lag::DeliveryLag,
    /// Test sends in flight per webhook (each holds one of the webhook's `max_in_flight`).
    pub test_sends: attempt::TestSendSlots,
}

/// A response body as stored in the attempt log: control characters other than whitespace
/// replaced, so a hostile receiver cannot smuggle terminal escapes into logs and UIs.
pub fn sanitize_snippet(body: &str) -> String {
    body.chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}
