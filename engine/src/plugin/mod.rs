//! The WebAssembly plugin host: tenants' component plugins (filter, transform and sign hooks of
//! `hookd:plugin@0.1.0`, and the `on-response` hook of `hookd:plugin@0.2.0`, see `wit/`) loaded,
//! checked, stored and run under hard budgets.
//!
//! [`PluginHost`] is the only entry point. It owns:
//! - one wasmtime engine (cranelift, pooling allocator, epoch deadlines from a 1 ms ticker,
//!   optional fuel) and the compile cache on disk (`runtime.rs`);
//! - the load pipeline shared by uploads, restarts and the admin directory: size → the
//!   tenant's plugin quotas → component check → code bounds → a compile slot of the tenant and
//!   of the engine (bounded wait) → compile in a worker process killed past its timeout →
//!   import allow-list → link → export check → `meta.describe` + validation → quotas again →
//!   store a new version → publish by atomic swap (`compile.rs`, `runtime.rs`, `registry.rs`);
//!   a failed load leaves the previous version live;
//! - the link to the store's plugin catalogue (`catalogue.rs`): uploads are stored there as
//!   versions, every node loads the current ones at start and follows the catalogue's change
//!   notifications (compile through the same pipeline, then the atomic swap), rollbacks, and
//!   versions pinned by webhooks loaded when first run. A host opened without a store (unit
//!   tests, `hookd plugin check`) keeps uploads as files in its state directory (`persist.rs`),
//!   which is also the layout a data dir of an older hookd is migrated from;
//! - the per-attempt chain runner under a per-tenant concurrency quota and engine-wide slots
//!   shared fairly by tenant weight, with a fresh sandboxed store per plugin per attempt
//!   (`chain.rs`, `sandbox.rs`): guest code runs as async wasmtime calls that yield at every
//!   1 ms epoch tick, first on the caller's thread and, past one tick, on a small dedicated
//!   thread pool (`runtime.rs`); random numbers come from the host's key and the delivery id;
//! - the `on-response` runner, after the send, under the same slots, budgets and sandbox
//!   (`response.rs`);
//! - shadow runs: a candidate version run beside the current one on the next attempts, off
//!   the delivery path, its differences counted in the store (`shadow.rs`);
//! - the output policy every transform patch and sign header passes (`policy.rs`);
//! - the admin plugin directory watcher (`watch.rs`).
//!
//! It does not own: the engine's config (it receives [`PluginSettings`]), SSRF checks (the
//! engine must re-check a url a plugin changed, see [`ChainOutcome::Deliver`]), Standard
//! Webhooks signing (done by the engine after the chain), or storing attempts and logs.
//!
//! The compile cache is wasmtime's own (`Config::cache`) rooted at
//! `<state_dir>/plugin-cache/`: entries are keyed by SHA-256 of the component and the engine
//! settings, written by temp file + rename and never rewritten. It is used instead of
//! `Component::deserialize_file` because deserializing is `unsafe` in wasmtime (the bytes are
//! trusted to be its own output) and this workspace forbids `unsafe`. The trust model is the
//! same: whoever can write the state directory can run code as hookd.

mod bindings;
mod catalogue;
mod chain;
mod compile;
mod cputime;
mod error;
mod persist;
pub use persist::check_plugin_name;
mod policy;
mod registry;
mod response;
mod runtime;
mod sandbox;
mod settings;
mod shadow;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::delivery::permits::FairPermits;
use crate::offload::LowPriorityThreads;
use crate::quota::QuotaExceeded;
use crate::store::Store;

pub use catalogue::PluginVersions;
pub use chain::{
    ChainOutcome, ChainRun, ChainStep, PluginCall, PluginRequest, VERSION_LABEL_DIGITS,
};
pub use compile::WORKER_ARGS as COMPILE_WORKER_ARGS;
pub use error::{PluginError, PluginFailureCode, PluginLoadError};
pub use policy::{OutboundRequest, PROTECTED_HEADERS};
pub use registry::{PluginInfo, PluginSource};
pub use response::{MAX_DECISION_MESSAGE_BYTES, PluginResponse, ResponseDecision, ResponseRun};
pub use runtime::{EPOCH_TICK, compile_worker};
pub use sandbox::{PluginLog, PluginLogLevel};
pub use settings::PluginSettings;
pub use shadow::{
    DEFAULT_SHADOW_ATTEMPTS, MAX_SHADOW_ATTEMPTS, ShadowAttempt, ShadowError, ShadowPlan,
};

use compile::CompileGate;
use registry::{Entry, Registry};
use runtime::{LoadedPlugin, Runtime};
use settings::MAX_CONCURRENT_COMPILES;

/// The plugin host. Cheap to clone (one shared inner); dropping the last clone stops the epoch
/// ticker.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    registry: Registry,
    state_dir: PathBuf,
    cache_dir: PathBuf,
    settings: PluginSettings,
    compile_gate: CompileGate,
    /// Where an upload is hashed and loaded from the compile cache: CPU one tenant's upload
    /// causes (~175 ms for the 12 MB JavaScript component in a release build, measured per
    /// thread; a compile-cache hit costs this whole load and no compile), so it runs at the
    /// offload threads' low priority, one thread per engine compile slot.
    load_threads: LowPriorityThreads,
    /// The `hookd` program uploads are compiled in (`compile.rs`), if any.
    compile_worker: Option<PathBuf>,
    /// The store's plugin catalogue uploads are kept in; `None`: files in `state_dir`.
    catalogue: Option<Arc<dyn Store>>,
    /// Serializes persist + publish so the disk and the registry agree on the last writer
    /// (and quota checks see every install before theirs).
    publish_lock: tokio::sync::Mutex<()>,
    /// Serializes bringing plugins in line with the catalogue (`catalogue.rs`): the start's
    /// load and the follower's notified changes, which can name the same plugin at once
    /// (PostgreSQL's first heads comparison names every plugin), load it once, not twice.
    /// Taken before `publish_lock`.
    sync_lock: tokio::sync::Mutex<()>,
    tenant_slots: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    /// Chains running at once across tenants (see [`MAX_CONCURRENT_CHAINS`]), shared fairly
    /// between tenants by their weight.
    chain_slots: FairPermits,
    /// Which chain runs have their CPU time measured (`cputime.rs`).
    cpu_sampler: cputime::Sampler,
    /// Candidates compared on this node, and the shadow slots (`shadow.rs`).
    shadows: shadow::Shadows,
}

/// The slots a chain (or a response run) holds while it runs: the tenant's and the host's.
type ChainPermits = (
    tokio::sync::OwnedSemaphorePermit,
    crate::delivery::permits::SendPermit,
);

/// How long a plugin of the admin directory waits for a compile slot (uploads wait
/// `compile_wait`): the operator's plugins are loaded in turn, never refused as busy.
const ADMIN_DIR_COMPILE_WAIT: Duration = Duration::from_secs(3600);

/// How a host is opened, beyond its budgets.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// The store whose plugin catalogue keeps uploads (versions shared by every node; see
    /// [`PluginHost::follow_catalogue`]). `None`: uploads are files in the state directory.
    pub catalogue: Option<Arc<dyn Store>>,
    /// The secret plugins' random numbers are derived from, with each delivery id: stable
    /// across restarts and nodes (the engine derives it from its secret key), never shown.
    /// `None`: a fresh random key for this host (determinism per delivery holds while it
    /// lives).
    pub random_key: Option<[u8; 32]>,
    /// A `hookd` binary to compile uploads in (`hookd plugin compile-worker`, killed past
    /// `compile_timeout`). `None`: compiles run on the blocking pool, and a timed-out compile
    /// keeps its compile slot until it ends.
    pub compile_worker: Option<PathBuf>,
    /// The nice value of the threads guest calls finish on (0 is normal). The engine passes
    /// `delivery::runtime::guest_nice` of its delivery workers' (`[delivery] worker_nice`):
    /// never above the deliveries, and at least 5, so a tenant's guest code looping to its
    /// deadline yields to every other tenant's deliveries and to the API.
    pub guest_nice: i32,
}

/// What a tenant may install: its `plugins` and `plugin_bytes` quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginQuota {
    /// Plugins the tenant may have.
    pub plugins: u64,
    /// Bytes of components the tenant may have.
    pub bytes: u64,
}

/// A tenant's compile slot, taken before an upload's body is read
/// ([`PluginHost::compile_slot`]) and given to [`PluginHost::install_within`]; given back when
/// dropped.
pub struct CompileSlot(compile::TenantSlot);

impl std::fmt::Debug for CompileSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompileSlot")
    }
}

/// What an upload brings besides its bytes.
#[derive(Default)]
struct Upload {
    /// The tenant's quotas (`None`: none applies).
    quota: Option<PluginQuota>,
    /// The tenant's compile slot, if the caller took it already.
    slot: Option<CompileSlot>,
    /// Who uploaded it (recorded in the stored version).
    uploaded_by: String,
    /// The webhooks following the plugin's current version, checked against the new one.
    attached: Vec<Attached>,
}

/// A webhook step that runs a plugin's current version: what a new current version must keep
/// working ([`PluginHost::check_compatible`]).
#[derive(Debug, Clone)]
pub struct Attached {
    pub webhook_id: String,
    /// The step's config, as JSON text.
    pub config: String,
}

/// What a tenant's uploaded plugins use of its quotas (plugins from the admin directory are
/// the operator's and do not count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PluginUsage {
    /// Uploaded plugins.
    pub plugins: u64,
    /// Their components' bytes.
    pub bytes: u64,
}

/// Chains that may run at once across all tenants. Chains are pure CPU work, so more than a
/// few per core only adds latency; the cap also keeps the instance pool (1000 component and
/// core instances) from running out with chains of up to ~8 plugins. The slots are shared
/// fairly between tenants (the delivery permits' [`FairPermits`]: a freed slot goes to the
/// waiting tenant holding the fewest for its weight, and 1/16 of them are kept for tenants
/// below their share, so a newcomer does not wait for a busy tenant's chains to end). Each
/// tenant is further capped by `max_concurrent_calls_per_tenant` (default: the cores), since
/// the scarce resource under the slots is CPU: more looping chains than cores slow everyone.
pub const MAX_CONCURRENT_CHAINS: usize = 32;

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("state_dir", &self.inner.state_dir)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl PluginHost {
    /// Opens the host: one wasmtime engine (cranelift, pooling allocator, epoch interruption,
    /// `pagemap_scan` where the kernel has it), starts the epoch ticker, and loads every
    /// persisted plugin from `state_dir/plugins/<tenant>/<name>.wasm` through the compile cache
    /// in `state_dir/plugin-cache/`, so a restart compiles nothing that was compiled before.
    ///
    /// A persisted plugin that no longer loads is logged and skipped. Blocking: call it at
    /// startup (it runs guest `meta.describe` on its own thread, so it is safe to call from
    /// async code, but it does not yield).
    pub fn open(state_dir: &Path, settings: PluginSettings) -> Result<Self, PluginError> {
        Self::open_with(state_dir, settings, HostOptions::default())
    }

    /// [`open`](Self::open) with a random key and a compile worker (see [`HostOptions`]).
    pub fn open_with(
        state_dir: &Path,
        settings: PluginSettings,
        options: HostOptions,
    ) -> Result<Self, PluginError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PluginError::Io { path, source }
        };
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let state_dir = state_dir.canonicalize().map_err(io_err(state_dir))?;
        let plugins_dir = state_dir.join(persist::PLUGINS_DIR);
        let cache_dir = state_dir.join(persist::CACHE_DIR);
        std::fs::create_dir_all(&plugins_dir).map_err(io_err(&plugins_dir))?;
        std::fs::create_dir_all(&cache_dir).map_err(io_err(&cache_dir))?;

        let random_key = options.random_key.unwrap_or_else(rand::random);
        let runtime = Runtime::new(&cache_dir, &settings, random_key, options.guest_nice)?;
        let host = Self {
            inner: Arc::new(Inner {
                runtime,
                registry: Registry::default(),
                state_dir,
                cache_dir,
                compile_gate: CompileGate::new(),
                load_threads: LowPriorityThreads::new(MAX_CONCURRENT_COMPILES, "hookd-plugin-load"),
                compile_worker: options.compile_worker,
                catalogue: options.catalogue,
                publish_lock: tokio::sync::Mutex::new(()),
                sync_lock: tokio::sync::Mutex::new(()),
                tenant_slots: Mutex::new(HashMap::new()),
                chain_slots: FairPermits::new(MAX_CONCURRENT_CHAINS),
                cpu_sampler: cputime::Sampler::new(),
                shadows: shadow::Shadows::default(),
                settings,
            }),
        };
        if host.inner.catalogue.is_some() {
            // Loaded from the catalogue by `follow_catalogue`.
            return Ok(host);
        }
        // Guest code may call WASI functions that block on a Tokio runtime internally, which
        // panics on a runtime worker thread: load on a plain thread.
        std::thread::scope(|scope| {
            scope
                .spawn(|| host.load_persisted(&plugins_dir))
                .join()
                .map_err(|_| PluginError::Engine("loading persisted plugins panicked".into()))
        })?;
        Ok(host)
    }

    fn load_persisted(&self, plugins_dir: &Path) {
        let (found, skipped) = persist::scan(plugins_dir);
        for path in skipped {
            tracing::warn!(path = %path.display(), "ignoring plugin file with an invalid tenant or plugin name");
        }
        for (tenant, name, path) in found {
            let wasm = match std::fs::read(&path) {
                Ok(wasm) => wasm,
                Err(error) => {
                    tracing::error!(%tenant, plugin = %name, %error, "cannot read stored plugin");
                    continue;
                }
            };
            let sha256 = sha256_hex(&wasm);
            match self.inner.runtime.load(&wasm, sha256, &self.inner.settings) {
                Ok(plugin) => {
                    let (_, meta_path) =
                        persist::plugin_paths(&self.inner.state_dir, &tenant, &name);
                    let meta = persist::load_meta(&meta_path);
                    let now = now_ms();
                    self.inner.registry.publish(
                        &tenant,
                        &name,
                        Entry {
                            plugin: Arc::new(plugin),
                            created_ms: if meta.created_ms == 0 {
                                now
                            } else {
                                meta.created_ms
                            },
                            updated_ms: if meta.updated_ms == 0 {
                                now
                            } else {
                                meta.updated_ms
                            },
                            last_error: meta.last_error,
                            source: PluginSource::Upload,
                            stored: None,
                        },
                    );
                }
                Err(error) => {
                    tracing::error!(%tenant, plugin = %name, %error, "stored plugin no longer loads; skipped");
                }
            }
        }
    }

    /// Installs (or replaces) a tenant's plugin from an upload.
    ///
    /// Pipeline: size → is a component → compile (blocking pool, `compile_timeout`) → import
    /// allow-list (only `hookd:plugin/host`, `hookd:plugin/signing-key`, `hookd:plugin/types`
    /// and the WASI 0.2 subset toolchains link; the error names the offending import) → export
    /// check (`meta` plus at least one of `filter`, `transform`, `sign` of
    /// `hookd:plugin@0.1.0` or `on-response` of `hookd:plugin@0.2.0`) → `meta.describe` checked against the exports → persist → publish
    /// by atomic swap. Any failure leaves the previous version live and is recorded as its
    /// `last_error`.
    ///
    /// No quota applies: uploads through the API use [`install_within`](Self::install_within).
    pub async fn install(
        &self,
        tenant: &str,
        name: &str,
        wasm: Vec<u8>,
    ) -> Result<PluginInfo, PluginLoadError> {
        self.upload(tenant, name, wasm, Upload::default()).await
    }

    /// [`install`](Self::install) within the tenant's plugin quotas: refused as
    /// [`PluginLoadError::QuotaExceeded`] (before compiling, and again atomically before
    /// publishing) if the tenant would have more plugins or component bytes than `quota`.
    /// Replacing a plugin counts only the growth in bytes. `slot`: the tenant's compile slot if
    /// the caller took it already ([`compile_slot`](Self::compile_slot)).
    pub async fn install_within(
        &self,
        tenant: &str,
        name: &str,
        wasm: Vec<u8>,
        quota: PluginQuota,
        slot: Option<CompileSlot>,
    ) -> Result<PluginInfo, PluginLoadError> {
        self.install_as(tenant, name, wasm, quota, slot, "", Vec::new())
            .await
    }

    /// [`install_within`](Self::install_within), recording who uploaded it in the stored
    /// version (`uploaded_by`: the API key's hash prefix, see [`crate::store::PluginVersion`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn install_as(
        &self,
        tenant: &str,
        name: &str,
        wasm: Vec<u8>,
        quota: PluginQuota,
        slot: Option<CompileSlot>,
        uploaded_by: &str,
        attached: Vec<Attached>,
    ) -> Result<PluginInfo, PluginLoadError> {
        let upload = Upload {
            quota: Some(quota),
            slot,
            uploaded_by: uploaded_by.to_owned(),
            attached,
        };
        self.upload(tenant, name, wasm, upload).await
    }

    /// Waits at most `compile_wait` for the tenant's compile slot (one compile per tenant at
    /// once): the API takes it before reading an upload's body, so the uploads a tenant queues
    /// are not read into memory. [`PluginLoadError::CompileBusy`] if none freed up.
    pub async fn compile_slot(&self, tenant: &str) -> Result<CompileSlot, PluginLoadError> {
        self.inner
            .compile_gate
            .tenant_slot(tenant, self.inner.settings.compile_wait)
            .await
            .map(CompileSlot)
    }

    /// Whether installing `name` (of `size` bytes, if known yet) stays within `quota`: the
    /// API asks before taking a compile slot and reading the body.
    pub fn check_quota(
        &self,
        tenant: &str,
        name: &str,
        size: Option<usize>,
        quota: PluginQuota,
    ) -> Result<(), PluginLoadError> {
        self.check_quota_for(tenant, name, size.unwrap_or(0), quota)
    }

    async fn upload(
        &self,
        tenant: &str,
        name: &str,
        wasm: Vec<u8>,
        upload: Upload,
    ) -> Result<PluginInfo, PluginLoadError> {
        let result = self
            .install_from(tenant, name, wasm, PluginSource::Upload, upload)
            .await;
        if let Err(error) = &result
            && error.is_about_the_component()
        {
            self.record_error(tenant, name, error).await;
        }
        result
    }

    /// The tenant's use of its plugin quotas (uploaded plugins only).
    pub fn usage(&self, tenant: &str) -> PluginUsage {
        self.inner.registry.usage(tenant, None)
    }

    /// `Err` if installing `size` bytes as `name` would pass `quota`.
    fn check_quota_for(
        &self,
        tenant: &str,
        name: &str,
        size: usize,
        quota: PluginQuota,
    ) -> Result<(), PluginLoadError> {
        let now = self.inner.registry.usage(tenant, None);
        let others = self.inner.registry.usage(tenant, Some(name));
        let replacing = now.plugins > others.plugins;
        let old_bytes = now.bytes - others.bytes;
        let added_plugins = u64::from(!replacing);
        let added_bytes = (size as u64).saturating_sub(old_bytes);
        if added_plugins > 0 {
            QuotaExceeded::check("plugins", quota.plugins, now.plugins, added_plugins)
                .map_err(PluginLoadError::QuotaExceeded)?;
        }
        if added_bytes > 0 {
            QuotaExceeded::check("plugin_bytes", quota.bytes, now.bytes, added_bytes)
                .map_err(PluginLoadError::QuotaExceeded)?;
        }
        Ok(())
    }

    async fn install_from(
        &self,
        tenant: &str,
        name: &str,
        wasm: Vec<u8>,
        source: PluginSource,
        upload: Upload,
    ) -> Result<PluginInfo, PluginLoadError> {
        let Upload {
            quota,
            slot,
            uploaded_by,
            attached,
        } = upload;
        persist::check_tenant(tenant).map_err(PluginLoadError::invalid)?;
        persist::check_plugin_name(name).map_err(PluginLoadError::invalid)?;
        let limit = self.inner.settings.max_upload_bytes;
        if wasm.len() > limit {
            return Err(PluginLoadError::TooLarge {
                size: wasm.len(),
                limit,
            });
        }
        // Checked before compiling (an upload over quota costs no compile), and again below
        // under the publish lock, where concurrent uploads are serialized.
        if let Some(quota) = quota {
            self.check_quota_for(tenant, name, wasm.len(), quota)?;
        }
        // The operator's admin-directory plugins wait their turn rather than fail to load.
        let wait = match source {
            PluginSource::Upload => self.inner.settings.compile_wait,
            PluginSource::AdminDir => ADMIN_DIR_COMPILE_WAIT,
        };
        let (plugin, wasm) = self.load_blocking(tenant, wasm, slot, wait).await?;
        self.check_compatible(tenant, name, &plugin, &attached)
            .await?;

        let _publishing = self.inner.publish_lock.lock().await;
        if let Some(quota) = quota {
            self.check_quota_for(tenant, name, wasm.len(), quota)?;
        }
        let now = now_ms();
        let created_ms = self
            .inner
            .registry
            .entry(tenant, name)
            .map_or(now, |e| e.created_ms);
        let stored = match source {
            PluginSource::Upload => {
                let meta = persist::StoredMeta {
                    created_ms,
                    updated_ms: now,
                    last_error: None,
                };
                self.store_upload(tenant, name, &plugin, wasm, meta, &uploaded_by)
                    .await?
            }
            PluginSource::AdminDir => None,
        };
        let info = self.inner.registry.publish(
            tenant,
            name,
            Entry {
                plugin,
                created_ms,
                updated_ms: now,
                last_error: None,
                source,
                stored,
            },
        );
        tracing::info!(%tenant, plugin = %name, version = %info.version, sha256 = %info.sha256, "plugin installed");
        drop(_publishing);
        if source == PluginSource::Upload {
            self.follow_new_current(tenant, name).await;
        }
        Ok(info)
    }

    /// Compiles and checks a component within the compile bounds (see `compile.rs`): its code
    /// is measured first, then it waits (at most `wait` for each) for a compile slot of the
    /// tenant and of the engine, compiles in the worker process (killed past
    /// `compile_timeout`), and is hashed, loaded from the compile cache and checked on the
    /// low-priority load threads (which compile it themselves where there is no worker).
    async fn load_blocking(
        &self,
        tenant: &str,
        wasm: Vec<u8>,
        slot: Option<CompileSlot>,
        wait: Duration,
    ) -> Result<(Arc<LoadedPlugin>, Vec<u8>), PluginLoadError> {
        runtime::check_component_header(&wasm)?;
        compile::check_code_bounds(&wasm)?;
        let settings = &self.inner.settings;
        let gate = &self.inner.compile_gate;
        let asked = Instant::now();
        let slot = match slot {
            Some(CompileSlot(slot)) => slot,
            None => gate.tenant_slot(tenant, wait).await?,
        };
        let permit = gate.engine_slot(slot, wait).await?;
        let timeout = settings.compile_timeout;
        let started = Instant::now();
        let waited = started.duration_since(asked);
        if let Some(program) = &self.inner.compile_worker {
            compile::compile_in_worker(
                program,
                &self.inner.cache_dir,
                self.inner.runtime.fuel_enabled(),
                &wasm,
                timeout,
            )
            .await?;
        }
        let compiled = started.elapsed();
        let misses_before = self.inner.runtime.cache_misses();
        let inner = self.inner.clone();
        let job = self.inner.load_threads.try_run(move || {
            // Held until the load really ends, even if the caller stopped waiting.
            let _permit = permit;
            let sha256 = sha256_hex(&wasm);
            inner
                .runtime
                .load(&wasm, sha256, &inner.settings)
                .map(|plugin| (Arc::new(plugin), wasm))
        });
        let left = timeout.saturating_sub(started.elapsed());
        let loaded = match tokio::time::timeout(left, job).await {
            Ok(Ok(result)) => result,
            Ok(Err(_panic)) => Err(PluginLoadError::invalid(
                "loading the plugin failed unexpectedly (the loader panicked)",
            )),
            Err(_) => Err(PluginLoadError::invalid(format!(
                "compiling took longer than {} ms",
                timeout.as_millis()
            ))),
        };
        tracing::debug!(
            %tenant,
            slot_wait_ms = waited.as_millis() as u64,
            worker_ms = compiled.as_millis() as u64,
            load_ms = (started.elapsed() - compiled).as_millis() as u64,
            "plugin compiled and loaded"
        );
        if self.inner.compile_worker.is_some() && self.inner.runtime.cache_misses() > misses_before
        {
            tracing::warn!(%tenant, "the compile worker's result was not found in the compile cache: compiled again in the engine");
        }
        loaded
    }

    async fn record_error(&self, tenant: &str, name: &str, error: &PluginLoadError) {
        let message = error.to_string();
        if !self.inner.registry.record_error(tenant, name, &message) {
            return;
        }
        let Some(entry) = self.inner.registry.entry(tenant, name) else {
            return;
        };
        // With a catalogue the last error stays in memory: it is this node's (another node
        // may have loaded the same version).
        if entry.source != PluginSource::Upload || self.inner.catalogue.is_some() {
            return;
        }
        let (_, meta_path) = persist::plugin_paths(&self.inner.state_dir, tenant, name);
        let meta = persist::StoredMeta {
            created_ms: entry.created_ms,
            updated_ms: entry.updated_ms,
            last_error: Some(message),
        };
        let _publishing = self.inner.publish_lock.lock().await;
        let saved =
            tokio::task::spawn_blocking(move || persist::save_meta(&meta_path, &meta)).await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::warn!(%tenant, plugin = %name, "cannot persist the plugin's last error");
        }
    }

    /// A tenant's plugin: version, SHA-256, hooks, size, times, last error.
    pub fn info(&self, tenant: &str, name: &str) -> Option<PluginInfo> {
        self.inner
            .registry
            .entry(tenant, name)
            .map(|entry| entry.info(name))
    }

    /// A tenant's plugins, sorted by name.
    pub fn list(&self, tenant: &str) -> Vec<PluginInfo> {
        self.inner.registry.list(tenant)
    }

    /// Unloads and deletes a tenant's plugin; false if there was none. Attempts already
    /// running finish with it. (A plugin from the admin directory is unloaded until its file
    /// changes again; its file is not touched.)
    pub async fn remove(&self, tenant: &str, name: &str) -> bool {
        self.delete(tenant, name).await.unwrap_or_else(|error| {
            tracing::warn!(%tenant, plugin = %name, %error, "cannot delete the plugin");
            false
        })
    }

    /// [`remove`](Self::remove), with the store's failure as an `Err` (the API answers 503).
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<bool, PluginLoadError> {
        let _publishing = self.inner.publish_lock.lock().await;
        let valid =
            persist::check_tenant(tenant).is_ok() && persist::check_plugin_name(name).is_ok();
        if let Some(store) = &self.inner.catalogue {
            let deleted = valid
                && store
                    .delete_plugin(tenant, name)
                    .await
                    .map_err(|e| PluginLoadError::Storage(e.to_string()))?;
            let removed = self.inner.registry.remove(tenant, name, None).is_some();
            return Ok(removed || deleted);
        }
        let removed = self.inner.registry.remove(tenant, name, None).is_some();
        let deleted = if valid {
            let state_dir = self.inner.state_dir.clone();
            let (tenant, name) = (tenant.to_owned(), name.to_owned());
            tokio::task::spawn_blocking(move || persist::delete(&state_dir, &tenant, &name))
                .await
                .unwrap_or(false)
        } else {
            false
        };
        Ok(removed || deleted)
    }

    /// Checks a plugin config before it is attached to a webhook (`meta.validate-config`, in a
    /// fresh instance under the host's budgets). An unknown plugin is
    /// [`PluginLoadError::NotFound`]; a refused config is [`PluginLoadError::InvalidConfig`].
    pub async fn validate_config(
        &self,
        tenant: &str,
        name: &str,
        config: &str,
    ) -> Result<(), PluginLoadError> {
        self.validate_attachment(tenant, name, None, config).await
    }

    /// Whether `new`, made the current version of `name`, keeps working for the webhooks in
    /// `attached` (those following the current version): it exports every hook the current
    /// version does (a filter that disappears would let through what it dropped), and its
    /// `validate-config` takes each attached config. Nothing to check without attachments.
    pub(crate) async fn check_compatible(
        &self,
        tenant: &str,
        name: &str,
        new: &Arc<LoadedPlugin>,
        attached: &[Attached],
    ) -> Result<(), PluginLoadError> {
        if attached.is_empty() {
            return Ok(());
        }
        let webhooks = |list: &[&Attached]| {
            let mut ids: Vec<&str> = list.iter().map(|a| a.webhook_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            let more = ids.len().saturating_sub(5);
            let mut text = ids[..ids.len().min(5)].join(", ");
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            text
        };
        if let Some(current) = self.inner.registry.get(tenant, name) {
            let lost: Vec<&str> = current
                .description
                .hooks
                .iter()
                .filter(|hook| !new.description.hooks.contains(hook))
                .map(String::as_str)
                .collect();
            if !lost.is_empty() {
                let all: Vec<&Attached> = attached.iter().collect();
                return Err(PluginLoadError::Incompatible(format!(
                    "this version does not export {} that the current version runs for webhooks \
                     {}; nothing was changed (add ?force=true to make it current anyway)",
                    lost.join(", "),
                    webhooks(&all)
                )));
            }
        }
        let mut refused: Vec<&Attached> = Vec::new();
        let mut first_reason = String::new();
        for step in attached {
            let (inner, plugin, config) = (self.inner.clone(), new.clone(), step.config.clone());
            let job = async move {
                inner
                    .runtime
                    .validate_config(&plugin, &config, &inner.settings)
                    .await
            };
            let verdict = self
                .run_job(job)
                .await
                .map_err(|e| PluginLoadError::InvalidConfig(format!("validate-config failed: {e}")))
                .and_then(|checked| checked);
            if let Err(error) = verdict {
                if first_reason.is_empty() {
                    first_reason = error.to_string();
                }
                refused.push(step);
            }
        }
        if refused.is_empty() {
            return Ok(());
        }
        Err(PluginLoadError::Incompatible(format!(
            "this version refuses the config of webhooks {} ({first_reason}); nothing was \
             changed (fix their configs, or add ?force=true to make it current anyway)",
            webhooks(&refused)
        )))
    }

    /// [`validate_config`](Self::validate_config) against a stored version of the plugin
    /// (`None`: the live one), loading it if no attempt ran it yet: a webhook pinning a version
    /// is checked against that version ([`PluginLoadError::VersionNotFound`] if not stored).
    pub async fn validate_attachment(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
        config: &str,
    ) -> Result<(), PluginLoadError> {
        let plugin = self.resolve(tenant, name, version).await?;
        let inner = self.inner.clone();
        let config = config.to_owned();
        let job = async move {
            inner
                .runtime
                .validate_config(&plugin, &config, &inner.settings)
                .await
        };
        self.run_job(job)
            .await
            .map_err(|e| PluginLoadError::InvalidConfig(format!("validate-config failed: {e}")))?
    }

    /// Runs a webhook's chain for one attempt: all filters in chain order, then all transforms
    /// in chain order, then all sign hooks on the final bytes.
    ///
    /// Each step gets one fresh store and instance for the attempt (never reused: a trap
    /// poisons an instance), created under `settings` (the tenant's budgets) from the plugin
    /// version's `InstancePre`. The chain first waits for a slot under the tenant's
    /// concurrency quota (`max_concurrent_calls_per_tenant`) and the host's
    /// ([`MAX_CONCURRENT_CHAINS`], shared fairly by `settings.slot_weight`); it then runs on the caller's thread for at most one epoch
    /// tick and, if the guests are still running, finishes on the plugin thread pool (see
    /// `run_job`). [`ChainRun::waited`] and [`ChainRun::duration`] report the two parts.
    /// Plugins are resolved once at the start, so an upload during the attempt does not affect
    /// it. An empty chain delivers the request unchanged. A missing plugin fails with
    /// [`PluginFailureCode::NotFound`] (retryable: it may be re-uploaded).
    ///
    /// If the outcome's url differs from `request.url`, the engine must run its SSRF guard on
    /// it again: this host only checks its syntax.
    pub async fn run_chain(
        &self,
        tenant: &str,
        chain: &[ChainStep],
        request: PluginRequest,
        settings: &PluginSettings,
    ) -> ChainRun {
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        let finish = |outcome,
                      logs: Option<sandbox::LogBuffer>,
                      waited: Duration,
                      cpu,
                      calls: Vec<PluginCall>| {
            let (logs, logs_truncated) = match logs {
                Some(buffer) => buffer.finish(),
                None => (Vec::new(), false),
            };
            ChainRun {
                outcome,
                logs,
                logs_truncated,
                duration: started.elapsed().saturating_sub(waited),
                waited,
                cpu,
                calls,
            }
        };

        let mut steps = Vec::with_capacity(chain.len());
        for step in chain {
            match self.resolve(tenant, &step.name, step.version).await {
                Ok(plugin) => steps.push((step.clone(), plugin)),
                Err(error) => {
                    let (code, message) = match error {
                        PluginLoadError::NotFound => (
                            PluginFailureCode::NotFound,
                            format!("plugin {:?} is not installed", step.name),
                        ),
                        PluginLoadError::VersionNotFound { version } => (
                            PluginFailureCode::NotFound,
                            format!("plugin {:?} has no stored version {version}", step.name),
                        ),
                        other => (
                            PluginFailureCode::Error,
                            format!("plugin {:?} did not load: {other}", step.name),
                        ),
                    };
                    let outcome = ChainOutcome::Failed {
                        plugin: step.name.clone(),
                        code,
                        message,
                    };
                    return finish(outcome, None, waited, None, Vec::new());
                }
            }
        }
        if steps.is_empty() {
            return finish(
                ChainOutcome::Deliver(request.into_outbound()),
                None,
                waited,
                None,
                Vec::new(),
            );
        }

        let permits = self.chain_permits(tenant, settings).await;
        waited = started.elapsed();
        let Ok(permit) = permits else {
            let outcome = ChainOutcome::Failed {
                plugin: "hookd".into(),
                code: PluginFailureCode::Error,
                message: "plugin host is shutting down".into(),
            };
            return finish(outcome, None, waited, None, Vec::new());
        };
        let inner = self.inner.clone();
        let settings = settings.clone();
        let job = async move {
            let _permit = permit;
            chain::run(&inner.runtime, &steps, request, &settings).await
        };
        let cpu = self.inner.cpu_sampler.take();
        let cpu_total = |cpu: &Option<Arc<cputime::CpuTime>>| cpu.as_ref().map(|c| c.total());
        match self.run_job(cputime::measured(job, cpu.clone())).await {
            Ok((outcome, logs, calls)) => {
                finish(outcome, Some(logs), waited, cpu_total(&cpu), calls)
            }
            Err(error) => {
                tracing::error!(%tenant, %error, "plugin chain panicked");
                let outcome = ChainOutcome::Failed {
                    plugin: "hookd".into(),
                    code: PluginFailureCode::Error,
                    message: "the plugin host failed while running the chain".into(),
                };
                finish(outcome, None, waited, cpu_total(&cpu), Vec::new())
            }
        }
    }

    /// Waits for a plugin slot of the tenant (`max_concurrent_calls_per_tenant`) and one of the
    /// host's ([`MAX_CONCURRENT_CHAINS`], shared fairly by `settings.slot_weight`); `Err` when
    /// the host is shutting down.
    async fn chain_permits(
        &self,
        tenant: &str,
        settings: &PluginSettings,
    ) -> Result<ChainPermits, tokio::sync::AcquireError> {
        let slots = self.tenant_slots(tenant, settings.max_concurrent_calls_per_tenant);
        let tenant_permit = slots.acquire_owned().await?;
        let global_permit = self
            .inner
            .chain_slots
            .acquire(tenant, settings.slot_weight)
            .await;
        Ok((tenant_permit, global_permit))
    }

    /// Whether any plugin of `chain` exports `on-response` (then the engine keeps what it sent
    /// for [`run_on_response`](Self::run_on_response)).
    pub fn handles_responses(&self, tenant: &str, chain: &[ChainStep]) -> bool {
        chain.iter().any(|step| {
            self.inner
                .registry
                .get(tenant, &step.name)
                .is_some_and(|plugin| plugin.on_response.is_some())
        })
    }

    /// Runs the `on-response` hooks of a webhook's chain on the receiver's answer: the plugins
    /// that export it, in chain order, each in a fresh store and instance under `settings`
    /// (the same budgets, sandbox and slots as [`run_chain`](Self::run_chain)), until one
    /// decides something other than `default`. `request` is the request as sent (its
    /// `webhook-*` headers are left out of what the plugins see).
    ///
    /// Never fails the attempt: a plugin that fails here counts as `default` and its error is
    /// in [`ResponseRun::logs`]; so does the host shutting down. Plugins are resolved now; one
    /// removed since the send is skipped.
    pub async fn run_on_response(
        &self,
        tenant: &str,
        chain: &[ChainStep],
        mut request: PluginRequest,
        response: PluginResponse,
        settings: &PluginSettings,
    ) -> ResponseRun {
        let started = Instant::now();
        let mut steps: Vec<(ChainStep, Arc<LoadedPlugin>)> = Vec::with_capacity(chain.len());
        for step in chain {
            // The version the step pins, or the live one.
            if let Ok(plugin) = self.resolve(tenant, &step.name, step.version).await
                && plugin.on_response.is_some()
            {
                steps.push((step.clone(), plugin));
            }
        }
        if steps.is_empty() {
            return ResponseRun::default();
        }
        request
            .headers
            .retain(|(name, _)| !name.to_ascii_lowercase().starts_with("webhook-"));
        request.signing_secret = Vec::new();
        let event = request.event();
        let Ok(permit) = self.chain_permits(tenant, settings).await else {
            return response::failed_run(
                "the plugin host is shutting down",
                PluginFailureCode::Error,
            );
        };
        let waited = started.elapsed();
        let ran = steps.len();
        let inner = self.inner.clone();
        let settings = settings.clone();
        let job = async move {
            let _permit = permit;
            let response = response::guest_response(response);
            response::run(&inner.runtime, &steps, event, response, &settings).await
        };
        match self.run_job(job).await {
            Ok((decision, logs, calls)) => ResponseRun {
                decision,
                ran,
                logs: logs.into_entries(),
                duration: started.elapsed().saturating_sub(waited),
                waited,
                calls,
            },
            Err(error) => {
                tracing::error!(%tenant, %error, "on-response hooks panicked");
                response::failed_run(
                    "the plugin host failed while running the response hooks",
                    PluginFailureCode::Error,
                )
            }
        }
    }

    /// Runs guest work: first here, on the caller's thread, for at most one epoch tick (most
    /// chains finish well within it, and then cost no thread hop at all); if the guest is
    /// still running at the tick it yields, and the rest of the job moves to the plugin
    /// thread pool, so a slow or looping guest never holds an engine worker longer than one
    /// tick. A panic in the job becomes an `Err`.
    async fn run_job<F>(&self, job: F) -> Result<F::Output, String>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut job = Box::pin(job);
        let first = std::future::poll_fn(|cx| {
            let polled =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.as_mut().poll(cx)));
            Poll::Ready(polled)
        })
        .await;
        match first {
            Ok(Poll::Ready(output)) => Ok(output),
            Ok(Poll::Pending) => self
                .inner
                .runtime
                .pool()
                .handle()
                .spawn(job)
                .await
                .map_err(|join| join.to_string()),
            Err(_) => Err("the job panicked".into()),
        }
    }

    /// The tenant's concurrency semaphore, resized if the quota changed (attempts holding a
    /// slot of the old one finish normally).
    fn tenant_slots(&self, tenant: &str, quota: usize) -> Arc<Semaphore> {
        let quota = quota.max(1);
        let mut slots = self
            .inner
            .tenant_slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((size, semaphore)) = slots.get(tenant)
            && *size == quota
        {
            return semaphore.clone();
        }
        let semaphore = Arc::new(Semaphore::new(quota));
        slots.insert(tenant.to_owned(), (quota, semaphore.clone()));
        semaphore
    }

    /// Watches the admin plugin directory `dir` (one folder per tenant, `<name>.wasm` files):
    /// loads every plugin in it now, then (debounced) loads new and changed files and unloads
    /// removed ones. A broken file is logged and the version already loaded stays. Plugins
    /// from the directory are not copied into the state directory: the directory is their
    /// source. Stops when `shutdown` is cancelled.
    pub fn watch_dir(
        &self,
        dir: PathBuf,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(watch::run(self.clone(), dir, shutdown))
    }

    /// How many times cranelift compiled a component since this host was opened (loads served
    /// by the compile cache do not count).
    pub fn compile_count(&self) -> u64 {
        self.inner.runtime.compile_count()
    }

    /// Loads a plugin from the admin directory (no persistence).
    async fn install_admin(
        &self,
        tenant: &str,
        name: &str,
        wasm: Vec<u8>,
    ) -> Result<PluginInfo, PluginLoadError> {
        let result = self
            .install_from(
                tenant,
                name,
                wasm,
                PluginSource::AdminDir,
                Upload::default(),
            )
            .await;
        if let Err(error) = &result {
            self.inner
                .registry
                .record_error(tenant, name, &error.to_string());
        }
        result
    }

    /// Unloads an admin-directory plugin (not an uploaded one of the same name).
    fn unload_admin(&self, tenant: &str, name: &str) -> bool {
        self.inner
            .registry
            .remove(tenant, name, Some(PluginSource::AdminDir))
            .is_some()
    }
}
