//! hookd: a webhook delivery engine.
//!
//! The engine is a value: [`start`] runs one on a listener you bound and returns a
//! [`RunningEngine`] to ask for its address or shut it down, so tests run whole engines
//! in-process on `127.0.0.1:0`. See `ARCHITECTURE.md` for the path of an event through the
//! modules.

pub mod api;
pub mod config;
pub mod delivery;
pub mod fanout;
pub mod ids;
pub mod ingest;
pub mod lag;
pub mod offload;
pub mod outbound;
pub mod plugin;
pub mod quota;
pub mod resolver;
pub mod retention;
pub mod secrets;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, SharedConfig};
use crate::delivery::{DeliveryClient, DeliveryContext, Dispatcher};
use crate::ingest::Ingest;
use crate::plugin::PluginHost;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store ({path}): {source}")]
    Store {
        path: std::path::PathBuf,
        source: StoreError,
    },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the plugin host: {0}")]
    Plugins(#[from] plugin::PluginError),
    #[error("cannot start the delivery workers: {0}")]
    DeliveryRuntime(std::io::Error),
    #[error("the listener has no local address: {0}")]
    Listener(std::io::Error),
    #[error("{0}")]
    NoSecretKey(String),
    #[error(
        "the secret key does not open the webhook secrets in {path}: {problem}. Was the data directory copied from another installation, or {env} / [security] secret_key changed? Put the old key into [security] previous_secret_keys to re-seal"
    )]
    WrongSecretKey {
        path: std::path::PathBuf,
        env: &'static str,
        // Not a `source`: the message already says it, and `{:#}` would repeat it.
        problem: StoreError,
    },
}

/// How much longer than `[delivery] shutdown_grace` (the attempts' share) a stop may take in
/// all: the rest of the tasks ending and the store's flush.
pub const SHUTDOWN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The purpose the plugin host's random key is derived from the secret key with: plugins'
/// `wasi:random` is seeded from it and the delivery id, so it is deterministic per delivery
/// (on every node, across restarts) and unpredictable to receivers.
const PLUGIN_RANDOM_KEY_PURPOSE: &str = "hookd plugin random key v1";

/// A running engine.
#[derive(Debug)]
pub struct RunningEngine {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    /// Background tasks with a name for shutdown diagnostics.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    store: Arc<dyn Store>,
    config: SharedConfig,
    plugins: PluginHost,
    metrics: Metrics,
    /// Asks the config watcher to reload now; `None` when the config has no file.
    reload_requests: Option<config::watch::ReloadRequests>,
    /// Dropped after the tasks above: the dispatcher and its attempts run on it.
    _deliveries: delivery::runtime::DeliveryRuntime,
}

impl RunningEngine {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live configuration (swap it to reconfigure the engine).
    pub fn config(&self) -> &SharedConfig {
        &self.config
    }

    /// Reloads the config file when asked (`SIGHUP`), changed or not; `None` when the config
    /// was not loaded from a file.
    pub fn reload_requests(&self) -> Option<config::watch::ReloadRequests> {
        self.reload_requests.clone()
    }

    /// The store (tests reach behind the API with it).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The plugin host (tests read its compile counter).
    pub fn plugins(&self) -> &PluginHost {
        &self.plugins
    }

    /// This engine's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting requests, lets attempts in flight finish (bounded), flushes the store
    /// and returns once every task has ended and the data dir is released.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the engine stops (after `shutdown` or the token passed to [`start`]).
    ///
    /// Once stopping, every task gets `[delivery] shutdown_grace` plus [`SHUTDOWN_MARGIN`] in
    /// all (attempts in flight get the grace); a task still running then is logged by name and
    /// aborted, so a stop is always bounded. The store is flushed last either way.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        let grace = self.config.current().delivery.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace + SHUTDOWN_MARGIN;
        for (name, mut task) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(_) => tracing::debug!(task = name, "stopped"),
                Err(_) => {
                    warn!(task = name, "still running at the shutdown limit; aborted");
                    task.abort();
                }
            }
        }
        if let Err(err) = self.store.release_claims().await {
            warn!(error = %err, "could not release claims; they return when their lease ends");
        }
        if let Err(err) = self.store.close().await {
            warn!(error = %err, "closing the store failed");
        }
        info!("engine stopped; store flushed");
    }
}

/// Starts an engine on `listener` with `config`. `shutdown` stops it (also reachable through
/// [`RunningEngine::shutdown`]).
pub async fn start(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<RunningEngine, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let keyring = config.security.keyring().map_err(StartError::NoSecretKey)?;
    let store_location = match config.store.backend {
        config::StoreBackend::Sled => config.data_dir.clone(),
        config::StoreBackend::Postgres => "PostgreSQL".into(),
    };
    let store = store::open(&config, Arc::new(keyring))
        .await
        .map_err(|source| StartError::Store {
            path: store_location.clone(),
            source,
        })?;
    // Plaintext secrets of older records and secrets under a previous key get the current key;
    // a key that opens nothing stops the start here instead of producing wrong signatures.
    match store.reseal_webhooks().await {
        Ok(0) => {}
        Ok(n) => info!(
            webhooks = n,
            "webhook secrets re-sealed with the current secret key"
        ),
        Err(problem @ StoreError::Secret { .. }) => {
            return Err(StartError::WrongSecretKey {
                path: store_location,
                env: config::SECRET_KEY_ENV,
                problem,
            });
        }
        Err(source) => {
            return Err(StartError::Store {
                path: store_location,
                source,
            });
        }
    }
    store.set_min_free_bytes(config.limits.min_free_disk_bytes);
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let local_addr = listener.local_addr().map_err(StartError::Listener)?;
    let plugins = PluginHost::open_with(
        &config.data_dir.join("plugins"),
        config.plugins.settings.clone(),
        plugin::HostOptions {
            catalogue: Some(store.clone()),
            random_key: config.security.derived_key(PLUGIN_RANDOM_KEY_PURPOSE),
            compile_worker: config.plugins.compile_worker.clone(),
            guest_nice: delivery::runtime::guest_nice(config.delivery.worker_nice),
        },
    )?;
    let mut tasks = Vec::new();
    // Uploaded plugins: the store's catalogue, loaded now and followed (other nodes' uploads).
    if let Some(follower) = plugins.follow_catalogue(shutdown.clone()).await? {
        tasks.push(("plugin catalogue follower", follower));
    }
    if let Some(dir) = &config.plugins.admin_dir {
        tasks.push((
            "plugin directory watcher",
            plugins.watch_dir(dir.clone(), shutdown.clone()),
        ));
    }
    let sessions = api::console::Sessions::from_config(&config)
        .ok_or_else(|| StartError::NoSecretKey("no secret key for console sessions".into()))?;
    let config = SharedConfig::new(config);
    let metrics = Metrics::new();
    store.set_sync_observer(Arc::new(metrics.clone()));

    let (dispatch, dispatch_rx) = Dispatcher::channel();
    // The store tells the dispatcher about work it made due, once it is durable.
    store.set_listener(Arc::new(dispatch.clone()));
    let delivery_lag = lag::DeliveryLag::default();
    let (ingest, ingest_task) = Ingest::start(store.clone(), delivery_lag.clone());
    let (recorder, recorder_task) = delivery::Recorder::start(store.clone());
    let delivery = DeliveryContext {
        store: store.clone(),
        config: config.clone(),
        client: DeliveryClient::new(config.clone()),
        permits: delivery::permits::FairPermits::new(config.current().delivery.max_in_flight),
        offload: offload::Offload::new(),
        dispatch: dispatch.clone(),
        recorder,
        plugins: plugins.clone(),
        ingest: ingest.clone(),
        metrics: metrics.clone(),
        lag: delivery_lag,
        test_sends: Default::default(),
    };
    let saturation_metrics = metrics.clone();
    let deliveries = delivery::runtime::DeliveryRuntime::start(
        config.current().delivery.worker_nice,
        move |saturated| saturation_metrics.set_cpu_saturated(saturated),
    )
    .map_err(StartError::DeliveryRuntime)?;
    let dispatcher = Dispatcher::new(delivery.clone(), dispatch_rx, deliveries.lanes());
    let reload_dispatch = dispatch.clone();
    let reload_metrics = metrics.clone();
    let (reload_store, reload_config) = (store.clone(), config.clone());
    let retention_reloaded = Arc::new(tokio::sync::Notify::new());
    let reload_retention = retention_reloaded.clone();
    let on_reload: config::watch::ReloadHook = Box::new(move |applied| {
        reload_metrics.record_config_reload(applied);
        if applied {
            reload_store.set_min_free_bytes(reload_config.current().limits.min_free_disk_bytes);
            reload_dispatch.config_changed();
            reload_retention.notify_one();
        }
    });
    let reload_requests =
        config::watch::spawn(config.clone(), shutdown.clone(), on_reload).map(|(watcher, asks)| {
            tasks.push(("config watcher", watcher));
            asks
        });
    let dispatcher_task = deliveries.handle().spawn(dispatcher.run(shutdown.clone()));

    let app = api::router(api::AppState::new(api::Services {
        store: store.clone(),
        config: config.clone(),
        ingest,
        dispatch,
        delivery,
        started: std::time::Instant::now(),
        quotas: quota::Quotas::new(store.clone()),
        metrics: metrics.clone(),
        sessions,
    }));
    let serve_limits = {
        let limits = &config.current().limits;
        api::serve::ServeLimits {
            header_read_timeout: limits.header_read_timeout,
            body_read_timeout: limits.body_read_timeout,
        }
    };
    let server_task = tokio::spawn(api::serve::serve(
        listener,
        app,
        serve_limits,
        shutdown.clone(),
    ));
    {
        let config = config.current();
        let config_file = config.source.as_deref().map(|p| p.display().to_string());
        info!(
            config = config_file.as_deref().unwrap_or("(none)"),
            data_dir = %config.data_dir.display(),
            "listening on {local_addr}"
        );
    }
    // The ingest writer ends when its last handle is dropped: the server's, then the
    // dispatcher's (attempts emit operational events), so all three end after shutdown; the
    // attempt recorder likewise ends with the last delivery context (server and dispatcher).
    tasks.extend([
        ("HTTP server", server_task),
        ("ingest writer", ingest_task),
        ("dispatcher", dispatcher_task),
        ("attempt recorder", recorder_task),
    ]);
    // Retention purges old finished records every `limits.retention_interval`.
    tasks.push((
        "retention",
        retention::spawn(
            store.clone(),
            config.clone(),
            retention_reloaded,
            shutdown.clone(),
        ),
    ));
    tasks.push((
        "queue sampler",
        tokio::spawn(telemetry::run_sampler(
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        )),
    ));
    Ok(RunningEngine {
        local_addr,
        shutdown,
        tasks,
        store,
        config,
        plugins,
        metrics,
        reload_requests,
        _deliveries: deliveries,
    })
}
