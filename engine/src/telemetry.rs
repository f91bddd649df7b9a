//! Logging setup (tracing) and metrics. Field names across the engine: `tenant`, `event_id`,
//! `webhook_id`, `delivery_id`, `attempt`, `error`. Secrets and API keys are never logged.
//!
//! [`Metrics`] is one engine's Prometheus recorder (served at `/metrics`), a value passed to
//! the parts that record, never a global: tests run several engines in one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use tracing_subscriber::EnvFilter;

use crate::ids::now_ms;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // tokio-postgres logs every statement's parameters at debug level (payloads, sealed
        // secrets): never below info, whatever RUST_LOG asks.
        .add_directive("tokio_postgres=info".parse().expect("a valid directive"));
    // Colours only on a terminal: a file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Metric names (Prometheus). Labels: `tenant` (admin-defined ids), `version` (a plugin
/// component's SHA-256 prefix), `outcome`, `error_code`, `result`; never a tenant's resource
/// names or ids (webhooks, plugin names), API keys, secrets or URLs.
pub const EVENTS_INGESTED: &str = "hookd_events_ingested_total";
pub const ATTEMPTS: &str = "hookd_attempts_total";
pub const DELIVERY_LATENCY: &str = "hookd_delivery_latency_seconds";
pub const ATTEMPTS_IN_FLIGHT: &str = "hookd_attempts_in_flight";
pub const QUEUE_DUE: &str = "hookd_queue_due";
pub const QUEUE_SCHEDULED: &str = "hookd_queue_scheduled";
pub const CPU_SATURATED: &str = "hookd_cpu_saturated";
pub const PLUGIN_CALLS: &str = "hookd_plugin_calls_total";
pub const PLUGIN_CHAIN: &str = "hookd_plugin_chain_seconds";
pub const PLUGIN_SLOT_WAIT: &str = "hookd_plugin_slot_wait_seconds";
pub const ATTEMPT_SLOT: &str = "hookd_attempt_slot_seconds";
pub const DELIVERY_LAG: &str = "hookd_delivery_lag_seconds";
pub const PLUGIN_CHAIN_CPU: &str = "hookd_plugin_chain_cpu_seconds";
/// Per plugin: hook calls by `tenant`, `version` (the component's SHA-256 prefix, which
/// `GET /v1/plugins` maps to the plugin's name) and `outcome`.
pub const PLUGIN_HOOK_CALLS: &str = "hookd_plugin_hook_calls_total";
/// Per plugin: wall time of hook calls by `tenant`, `version`.
pub const PLUGIN_HOOK_SECONDS: &str = "hookd_plugin_hook_seconds";
pub const CONFIG_RELOADS: &str = "hookd_config_reloads_total";
/// API requests answered, by `method`, `route` (the matched route's template, e.g.
/// `/v1/webhooks/{id}`, or `unmatched`) and `status`.
pub const HTTP_REQUESTS: &str = "hookd_http_requests_total";
/// 1, labelled with the running `version`.
pub const BUILD_INFO: &str = "hookd_build_info";
/// Each sync of the embedded store to disk (the log's `fdatasync`, then sled's flush).
pub const STORE_SYNC: &str = "hookd_store_sync_seconds";

/// Bucket bounds of the HTTP latency of attempts, in seconds (from 0.5 ms: a receiver on the
/// same network answers in about a millisecond).
const DELIVERY_LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bucket bounds of plugin chain runs and slot waits, in seconds: 25 µs steps up to 300 µs,
/// where a normal chain runs (so a median read from the histogram is within a few µs), then
/// coarser up to the deadlines (100 ms a plugin by default).
const PLUGIN_CHAIN_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_075, 0.000_1, 0.000_125, 0.000_15, 0.000_175, 0.000_2, 0.000_25,
    0.000_3, 0.000_4, 0.000_5, 0.000_75, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Bucket bounds of the store's syncs, in seconds: a healthy disk syncs in well under a
/// millisecond; tens of milliseconds are stalls an acknowledgement waits through.
const STORE_SYNC_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How often the queue gauges are sampled from the store (and the recorder kept tidy).
pub const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Most schedule entries one sample reads; past that the queue gauges stop counting.
pub const MAX_QUEUE_SAMPLE_ENTRIES: usize = 200_000;

/// One engine's metrics: its own Prometheus recorder, never the process-global one, so
/// several engines in one process (tests) keep separate counts. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Each tenant's series of the per-event and per-attempt path, registered on first use.
    tenants: Arc<RwLock<HashMap<String, Arc<TenantSeries>>>>,
    engine: Arc<EngineSeries>,
}

/// The handles of one tenant's series that every event or attempt records. Looked up by
/// tenant once per record instead of through the recorder's registry, which hashes and
/// allocates the labels on every call (~3 % of the delivery workers' CPU in the e2e bench's
/// profile). A handle is the series itself: recording on it is what the macros do. Each is
/// registered on its first record, as before, so a series appears once it has a sample.
#[derive(Debug, Default)]
struct TenantSeries {
    ingested: OnceLock<Counter>,
    latency: OnceLock<Histogram>,
    lag: OnceLock<Histogram>,
    slot: OnceLock<Histogram>,
    /// `hookd_attempts_total` by outcome, then error code.
    attempts: Mutex<CountersByOutcome>,
    chain: OnceLock<Histogram>,
    chain_cpu: OnceLock<Histogram>,
    chain_slot_wait: OnceLock<Histogram>,
    /// `hookd_plugin_calls_total` by outcome, then error code.
    chains: Mutex<CountersByOutcome>,
    /// Per plugin version (the component's SHA-256 prefix): its hook calls' series.
    plugins: Mutex<HashMap<String, PluginSeries>>,
}

/// Counters labelled `tenant`, `outcome`, `error_code`, by outcome, then error code.
type CountersByOutcome = HashMap<&'static str, HashMap<String, Counter>>;

/// One plugin version's series of a tenant: hook calls by outcome, and their wall time.
#[derive(Debug)]
struct PluginSeries {
    seconds: Histogram,
    calls: HashMap<&'static str, Counter>,
}

/// The engine's own series that every attempt or sync records (no tenant label).
#[derive(Debug)]
struct EngineSeries {
    in_flight: Gauge,
    store_sync: OnceLock<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(DELIVERY_LATENCY.to_string()),
                DELIVERY_LATENCY_BUCKETS,
            )
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(PLUGIN_CHAIN.to_string()),
                    PLUGIN_CHAIN_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(PLUGIN_SLOT_WAIT.to_string()),
                    PLUGIN_CHAIN_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(PLUGIN_CHAIN_CPU.to_string()),
                    PLUGIN_CHAIN_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(PLUGIN_HOOK_SECONDS.to_string()),
                    PLUGIN_CHAIN_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(ATTEMPT_SLOT.to_string()),
                    PLUGIN_CHAIN_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(DELIVERY_LAG.to_string()),
                    DELIVERY_LATENCY_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(STORE_SYNC.to_string()),
                    STORE_SYNC_BUCKETS,
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let in_flight = metrics::with_local_recorder(&recorder, || gauge!(ATTEMPTS_IN_FLIGHT));
        let metrics = Metrics {
            handle: recorder.handle(),
            recorder: Arc::new(recorder),
            tenants: Arc::default(),
            engine: Arc::new(EngineSeries {
                in_flight,
                store_sync: OnceLock::new(),
            }),
        };
        metrics.with(|| {
            describe_counter!(EVENTS_INGESTED, "Events accepted (202), by tenant");
            describe_counter!(
                ATTEMPTS,
                "Delivery attempts by tenant, outcome (delivered, failed, exhausted, rejected, filtered) and error_code"
            );
            describe_histogram!(
                DELIVERY_LATENCY,
                Unit::Seconds,
                "HTTP latency of delivery attempts, by tenant"
            );
            describe_gauge!(ATTEMPTS_IN_FLIGHT, "Delivery attempts running now");
            describe_histogram!(
                STORE_SYNC,
                Unit::Seconds,
                "Each sync of the embedded store to disk (the log's fdatasync, then sled's flush): what a 202 and an API change wait for"
            );
            describe_histogram!(
                DELIVERY_LAG,
                Unit::Seconds,
                "How long after its due time each attempt started (the delivery lag), by tenant"
            );
            describe_histogram!(
                ATTEMPT_SLOT,
                Unit::Seconds,
                "How long an attempt held one of its webhook's in-flight slots: from the claim until the receiver answered (or the attempt ended without sending), by tenant (compare with the HTTP latency)"
            );
            describe_gauge!(
                QUEUE_DUE,
                "Queued deliveries due now, including those in flight (sampled every 10 s)"
            );
            describe_gauge!(
                QUEUE_SCHEDULED,
                "Queued deliveries, due now or later (sampled every 10 s)"
            );
            describe_gauge!(
                CPU_SATURATED,
                "1 while the machine's CPU reads as saturated (every core busy) and new delivery attempts start on the lower-priority lane ([delivery] worker_nice); always 0 with worker_nice = 0"
            );
            describe_counter!(
                PLUGIN_CALLS,
                "Plugin chain runs (attempts, test sends, simulations) by tenant, outcome (deliver, filtered, failed) and error_code"
            );
            describe_histogram!(
                PLUGIN_CHAIN,
                Unit::Seconds,
                "Wall time of plugin chain runs once their plugin slots were granted, by tenant"
            );
            describe_histogram!(
                PLUGIN_CHAIN_CPU,
                Unit::Seconds,
                "CPU time of plugin chain runs (their wall time without the time their thread was descheduled), by tenant; sampled: one run in eight under load, every run of a quiet engine"
            );
            describe_histogram!(
                PLUGIN_SLOT_WAIT,
                Unit::Seconds,
                "Time plugin chains waited for a plugin slot before running, by tenant"
            );
            describe_counter!(
                PLUGIN_HOOK_CALLS,
                "Hook calls of each plugin (filter, transform, sign, on-response) by tenant, version (the first 12 hex digits of the plugin component's SHA-256; GET /v1/plugins shows each plugin's sha256) and outcome (ok, filtered, a plugin_* failure code, or an on-response decision: default, delivered, retry, fail, disable)"
            );
            describe_histogram!(
                PLUGIN_HOOK_SECONDS,
                Unit::Seconds,
                "Wall time of each plugin's hook calls (a plugin's first call of an attempt includes creating its instance), by tenant and version (the component's SHA-256 prefix)"
            );
            describe_counter!(CONFIG_RELOADS, "Config reloads by result (applied, refused)");
            describe_counter!(
                HTTP_REQUESTS,
                "API requests answered, by method, route (the route's template, or unmatched) and status"
            );
            describe_gauge!(BUILD_INFO, "1, labelled with the running hookd version");
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Series that exist before their first event, so dashboards and alerts see zeros.
            for result in ["applied", "refused"] {
                counter!(CONFIG_RELOADS, "result" => result).increment(0);
            }
            gauge!(ATTEMPTS_IN_FLIGHT).set(0.0);
            gauge!(QUEUE_DUE).set(0.0);
            gauge!(QUEUE_SCHEDULED).set(0.0);
            gauge!(CPU_SATURATED).set(0.0);
        });
        metrics
    }

    /// Runs `record` with this engine's recorder as the `metrics` macros' target.
    fn with<T>(&self, record: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self.recorder.as_ref(), record)
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets so memory stays bounded between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The tenant's series handles.
    fn tenant(&self, tenant: &str) -> Arc<TenantSeries> {
        if let Some(series) = self
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
        {
            return series.clone();
        }
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        tenants.entry(tenant.to_owned()).or_default().clone()
    }

    /// Records `took` in the tenant's histogram `name`, kept in the series' cell that `cell`
    /// picks and registered with this engine's recorder on its first record.
    fn record_tenant_histogram(
        &self,
        tenant: &str,
        cell: fn(&TenantSeries) -> &OnceLock<Histogram>,
        name: &'static str,
        took: Duration,
    ) {
        let series = self.tenant(tenant);
        self.tenant_histogram(cell(&series), name, tenant)
            .record(took.as_secs_f64());
    }

    /// The tenant's histogram `name` kept in `cell`, registered with this engine's recorder on
    /// its first use.
    fn tenant_histogram<'a>(
        &self,
        cell: &'a OnceLock<Histogram>,
        name: &'static str,
        tenant: &str,
    ) -> &'a Histogram {
        cell.get_or_init(|| self.with(|| histogram!(name, "tenant" => tenant.to_owned())))
    }

    /// An event was accepted (written and flushed).
    pub fn event_ingested(&self, tenant: &str) {
        let series = self.tenant(tenant);
        let ingested = series
            .ingested
            .get_or_init(|| self.with(|| counter!(EVENTS_INGESTED, "tenant" => tenant.to_owned())));
        ingested.increment(1);
    }

    /// An attempt was recorded with `outcome` (the attempt's `result`).
    pub fn attempt_finished(&self, tenant: &str, outcome: &'static str, error_code: Option<&str>) {
        let series = self.tenant(tenant);
        self.count_by_outcome(&series.attempts, ATTEMPTS, tenant, outcome, error_code);
    }

    /// Increments the counter `name` of `tenant`, `outcome` and `error_code` ("none" without
    /// one), kept in `counters` and registered with this engine's recorder on its first use.
    fn count_by_outcome(
        &self,
        counters: &Mutex<CountersByOutcome>,
        name: &'static str,
        tenant: &str,
        outcome: &'static str,
        error_code: Option<&str>,
    ) {
        let error_code = error_code.unwrap_or("none");
        let mut counters = counters.lock().unwrap_or_else(PoisonError::into_inner);
        let by_code = counters.entry(outcome).or_default();
        if let Some(counter) = by_code.get(error_code) {
            counter.increment(1);
            return;
        }
        let counter = self.with(|| {
            counter!(
                name,
                "tenant" => tenant.to_owned(),
                "outcome" => outcome,
                "error_code" => error_code.to_owned()
            )
        });
        counter.increment(1);
        by_code.insert(error_code.to_owned(), counter);
    }

    /// How long an attempt's HTTP exchange took (also when it failed).
    pub fn delivery_latency(&self, tenant: &str, latency: Duration) {
        self.record_tenant_histogram(tenant, |series| &series.latency, DELIVERY_LATENCY, latency);
    }

    /// One sync of the embedded store to disk.
    pub fn store_synced(&self, took: Duration) {
        self.engine
            .store_sync
            .get_or_init(|| self.with(|| histogram!(STORE_SYNC)))
            .record(took.as_secs_f64());
    }

    /// How long after its due time an attempt started.
    pub fn delivery_lag(&self, tenant: &str, lag: Duration) {
        self.record_tenant_histogram(tenant, |series| &series.lag, DELIVERY_LAG, lag);
    }

    /// How long an attempt held its webhook's in-flight slot.
    pub fn attempt_slot(&self, tenant: &str, held: Duration) {
        self.record_tenant_histogram(tenant, |series| &series.slot, ATTEMPT_SLOT, held);
    }

    /// Counts an attempt as in flight until the guard is dropped (also when its task is
    /// aborted at shutdown).
    pub fn attempt_in_flight(&self) -> InFlight {
        let gauge = self.engine.in_flight.clone();
        gauge.increment(1.0);
        InFlight(gauge)
    }

    /// A plugin chain ran for `duration` (using `cpu` of CPU time, when it was measured) after
    /// waiting `waited` for its plugin slots: `outcome` is `deliver`, `filtered` or `failed`.
    pub fn plugin_chain_ran(
        &self,
        tenant: &str,
        outcome: &'static str,
        error_code: Option<&'static str>,
        duration: Duration,
        waited: Duration,
        cpu: Option<Duration>,
    ) {
        let series = self.tenant(tenant);
        self.count_by_outcome(&series.chains, PLUGIN_CALLS, tenant, outcome, error_code);
        let cells = [
            (&series.chain, PLUGIN_CHAIN, Some(duration)),
            (&series.chain_slot_wait, PLUGIN_SLOT_WAIT, Some(waited)),
            (&series.chain_cpu, PLUGIN_CHAIN_CPU, cpu),
        ];
        for (cell, name, took) in cells {
            if let Some(took) = took {
                self.tenant_histogram(cell, name, tenant)
                    .record(took.as_secs_f64());
            }
        }
    }

    /// Each plugin's hook calls of one chain or response run (per-plugin metrics). Labels are
    /// bounded to tenant, version and outcome: a plugin is named by its component's SHA-256
    /// prefix, not by the name its tenant gave it (`/metrics` never shows tenants' resource
    /// names; `tests/it/isolation.rs`).
    pub fn plugin_calls(&self, tenant: &str, calls: &[crate::plugin::PluginCall]) {
        if calls.is_empty() {
            return;
        }
        let series = self.tenant(tenant);
        let mut plugins = series
            .plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for call in calls {
            if !plugins.contains_key(&call.version) {
                let seconds = self.with(|| {
                    histogram!(
                        PLUGIN_HOOK_SECONDS,
                        "tenant" => tenant.to_owned(),
                        "version" => call.version.clone()
                    )
                });
                let calls = HashMap::new();
                plugins.insert(call.version.clone(), PluginSeries { seconds, calls });
            }
            let Some(version) = plugins.get_mut(&call.version) else {
                continue;
            };
            version
                .calls
                .entry(call.outcome)
                .or_insert_with(|| {
                    self.with(|| {
                        counter!(
                            PLUGIN_HOOK_CALLS,
                            "tenant" => tenant.to_owned(),
                            "version" => call.version.clone(),
                            "outcome" => call.outcome
                        )
                    })
                })
                .increment(1);
            version.seconds.record(call.duration.as_secs_f64());
        }
    }

    /// The latest sample of the schedule.
    pub fn set_queue(&self, due: usize, scheduled: usize) {
        self.with(|| {
            gauge!(QUEUE_DUE).set(due as f64);
            gauge!(QUEUE_SCHEDULED).set(scheduled as f64);
        });
    }

    /// Whether new delivery attempts start on the yielding lane (`delivery/runtime.rs`).
    pub fn set_cpu_saturated(&self, saturated: bool) {
        self.with(|| gauge!(CPU_SATURATED).set(if saturated { 1.0 } else { 0.0 }));
    }

    /// An API request was answered.
    pub fn http_request(&self, method: &axum::http::Method, route: Option<&str>, status: u16) {
        use axum::http::Method;
        // Bounded label values: the standard methods, the router's templates, the status.
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        let route = route.unwrap_or("unmatched").to_string();
        self.with(|| {
            counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status.to_string())
                .increment(1)
        });
    }

    /// A config reload was applied, or refused (the old config stays).
    pub fn record_config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.with(|| counter!(CONFIG_RELOADS, "result" => result).increment(1));
    }
}

/// An attempt in flight; dropping it decrements `hookd_attempts_in_flight`.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Samples the schedule into the queue gauges every [`QUEUE_SAMPLE_INTERVAL`] (reading at most
/// [`MAX_QUEUE_SAMPLE_ENTRIES`] entries) and keeps the recorder tidy, until `shutdown`. Scrapes
/// never scan the store.
pub async fn run_sampler(
    store: std::sync::Arc<dyn Store>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        match store
            .schedule_counts(now_ms(), MAX_QUEUE_SAMPLE_ENTRIES)
            .await
        {
            Ok(counts) => metrics.set_queue(counts.due, counts.scheduled),
            Err(err) => warn!(error = %err, "could not sample the delivery queues"),
        }
        metrics.run_upkeep();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(QUEUE_SAMPLE_INTERVAL) => {}
        }
    }
}

impl crate::store::SyncObserver for Metrics {
    fn synced(&self, took: Duration) {
        self.store_synced(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the one sample line of `series` whose labels contain every `label`.
    fn sample(text: &str, series: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .find(|line| {
                line.strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with('{'))
                    && labels.iter().all(|label| line.contains(label))
            })
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    /// Tenant `acme`'s sample of the counter `series` with `outcome` and `error_code`.
    fn by_outcome(text: &str, series: &str, outcome: &str, code: &str) -> Option<f64> {
        let (outcome, code) = (
            format!(r#"outcome="{outcome}""#),
            format!(r#"error_code="{code}""#),
        );
        sample(text, series, &[r#"tenant="acme""#, &outcome, &code])
    }

    #[test]
    fn cached_series_count_per_tenant_outcome_and_code_and_per_engine() {
        let (metrics, other_engine) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            metrics.event_ingested("acme");
            metrics.attempt_finished("acme", "success", None);
        }
        metrics.event_ingested("globex");
        metrics.attempt_finished("acme", "failed", Some("http_status"));
        metrics.attempt_finished("acme", "failed", Some("timeout"));
        metrics.attempt_finished("acme", "failed", Some("timeout"));
        metrics.delivery_latency("acme", Duration::from_millis(2));
        metrics.delivery_latency("acme", Duration::from_millis(4));
        other_engine.event_ingested("acme");

        let text = metrics.render();
        let acme = r#"tenant="acme""#;
        assert_eq!(sample(&text, EVENTS_INGESTED, &[acme]), Some(3.0));
        assert_eq!(
            sample(&text, EVENTS_INGESTED, &[r#"tenant="globex""#]),
            Some(1.0)
        );
        let attempts = |outcome: &str, code: &str| by_outcome(&text, ATTEMPTS, outcome, code);
        assert_eq!(attempts("success", "none"), Some(3.0));
        assert_eq!(attempts("failed", "http_status"), Some(1.0));
        assert_eq!(attempts("failed", "timeout"), Some(2.0));
        let latency_count = format!("{DELIVERY_LATENCY}_count");
        assert_eq!(sample(&text, &latency_count, &[acme]), Some(2.0));
        // Series appear on their first record only.
        assert_eq!(
            sample(&text, &format!("{DELIVERY_LAG}_count"), &[acme]),
            None
        );
        assert_eq!(sample(&text, &latency_count, &[r#"tenant="globex""#]), None);
        // Each engine its own series.
        let other = other_engine.render();
        assert_eq!(sample(&other, EVENTS_INGESTED, &[acme]), Some(1.0));
        assert_eq!(sample(&other, ATTEMPTS, &[acme]), None);
    }

    #[test]
    fn cached_plugin_and_engine_series_count_per_label() {
        let metrics = Metrics::new();
        let call = |version: &str, outcome: &'static str, ms: u64| crate::plugin::PluginCall {
            plugin: "reshape".to_owned(),
            version: version.to_owned(),
            outcome,
            duration: Duration::from_millis(ms),
        };
        let ms = Duration::from_millis;
        for _ in 0..2 {
            metrics.plugin_chain_ran("acme", "deliver", None, ms(1), ms(0), Some(ms(1)));
            metrics.plugin_calls("acme", &[call("aaa", "ok", 1), call("bbb", "filtered", 2)]);
        }
        metrics.plugin_chain_ran("acme", "failed", Some("plugin_trap"), ms(1), ms(2), None);
        metrics.plugin_calls("acme", &[call("aaa", "plugin_trap", 3)]);
        metrics.plugin_calls("globex", &[call("aaa", "ok", 1)]);
        let in_flight = [metrics.attempt_in_flight(), metrics.attempt_in_flight()];
        metrics.store_synced(ms(1));

        let text = metrics.render();
        let acme = r#"tenant="acme""#;
        let chains = |outcome: &str, code: &str| by_outcome(&text, PLUGIN_CALLS, outcome, code);
        assert_eq!(chains("deliver", "none"), Some(2.0));
        assert_eq!(chains("failed", "plugin_trap"), Some(1.0));
        let count = |name: &str| format!("{name}_count");
        assert_eq!(sample(&text, &count(PLUGIN_CHAIN), &[acme]), Some(3.0));
        assert_eq!(sample(&text, &count(PLUGIN_SLOT_WAIT), &[acme]), Some(3.0));
        assert_eq!(sample(&text, &count(PLUGIN_CHAIN_CPU), &[acme]), Some(2.0));
        let hook = |tenant: &str, version: &str, outcome: &str| {
            let labels = [
                format!(r#"tenant="{tenant}""#),
                format!(r#"version="{version}""#),
                format!(r#"outcome="{outcome}""#),
            ];
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            sample(&text, PLUGIN_HOOK_CALLS, &labels)
        };
        assert_eq!(hook("acme", "aaa", "ok"), Some(2.0));
        assert_eq!(hook("acme", "aaa", "plugin_trap"), Some(1.0));
        assert_eq!(hook("acme", "bbb", "filtered"), Some(2.0));
        assert_eq!(hook("globex", "aaa", "ok"), Some(1.0));
        assert_eq!(hook("globex", "bbb", "filtered"), None);
        let seconds = count(PLUGIN_HOOK_SECONDS);
        assert_eq!(
            sample(&text, &seconds, &[acme, r#"version="aaa""#]),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, &seconds, &[acme, r#"version="bbb""#]),
            Some(2.0)
        );
        assert_eq!(sample(&text, ATTEMPTS_IN_FLIGHT, &[]), None, "no labels");
        assert!(text.contains(&format!("\n{ATTEMPTS_IN_FLIGHT} 2\n")));
        assert_eq!(sample(&text, &count(STORE_SYNC), &[]), None, "no labels");
        assert!(text.contains(&format!("\n{}_count 1\n", STORE_SYNC)));
        drop(in_flight);
        assert!(
            metrics
                .render()
                .contains(&format!("\n{ATTEMPTS_IN_FLIGHT} 0\n"))
        );
    }
}
