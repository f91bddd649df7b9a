//! The wasmtime side of the host: the one [`Engine`] (cranelift, pooling allocator, epoch
//! interruption with a 1 ms ticker thread, fuel only if asked for, compile cache on disk),
//! the [`Linker`] with exactly the imports plugins may use, the small dedicated thread pool
//! guest code moves to when it runs longer than one tick ([`PluginPool`]), and the load
//! pipeline every new component goes through (component check → compile → import allow-list →
//! link → export check → `meta.describe` + validation), producing a [`LoadedPlugin`] that keeps
//! its `InstancePre` and per-interface export indices for every later call.
//!
//! Every call into a guest is asynchronous: it runs on a wasmtime fiber, and at each epoch tick
//! the store's deadline callback either yields to the executor (so the caller can move the call
//! elsewhere, and other tasks get the thread) or, past the call's deadline, interrupts it.
//!
//! It also owns the mapping of wasmtime errors to [`PluginFailureCode`]s, by downcasting
//! [`wasmtime::Trap`] and consulting the store's memory limiter.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Cache, CacheConfig, Config, Enabled, Engine, OptLevel, Store, Trap};

use super::bindings::Plugin;
use super::bindings::exports::hookd::plugin::{filter, meta, sign, transform};
use super::bindings::v2::exports::hookd::plugin0_2_0::on_response;
use super::error::{PluginError, PluginFailureCode, PluginLoadError};
use super::policy::truncate;
use super::sandbox::{self, LogBuffer, SandboxParams, StoreState, VirtualClocks};
use super::settings::PluginSettings;

/// Interval of the epoch ticker: the granularity of call deadlines, and the longest a guest runs
/// on the thread that called it before yielding (see `PluginHost::run_chain`).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// WIT package every plugin export and hookd import belongs to.
pub const PACKAGE: &str = "hookd:plugin";
/// Package version of every hookd import and of the `meta`, `filter`, `transform` and `sign`
/// exports: `hookd:plugin@0.1.0`, which 0.2.0 reuses unchanged.
pub const PACKAGE_VERSION: &str = "0.1.0";
/// Package version of the `on-response` export (`hookd:plugin@0.2.0`, `wit/v0.2.0`).
pub const RESPONSE_PACKAGE_VERSION: &str = "0.2.0";
/// Longest error message taken from a guest or a wasmtime error.
const MAX_FAILURE_MESSAGE_BYTES: usize = 1024;
/// Linear memory kept resident in a pool slot between instances (faster fresh instances).
const KEEP_RESIDENT_BYTES: usize = 4 << 20;
/// Table bytes kept resident in a pool slot between instances (reset by memset, not madvise).
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;
/// Table elements per pooled table (componentized Python/JS guests have large tables).
const POOL_TABLE_ELEMENTS: usize = 100_000;

/// hookd interfaces a plugin may import.
const HOOKD_IMPORTS: &[&str] = &["types", "host", "signing-key"];

/// WASI 0.2 interfaces a plugin may import: what Rust, Python and JavaScript toolchains link.
/// All are served by a context that grants nothing: no preopened directories (so the
/// filesystem interfaces can open nothing), no environment, no arguments, closed stdin,
/// sockets and name lookups denied. `wasi:http` is deliberately absent.
const WASI_IMPORTS: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// The hooks a plugin can implement, in the order they run: the chain before the send, then
/// `on-response` (0.2.0) after the receiver answered.
pub const HOOKS: &[&str] = &["filter", "transform", "sign", "on-response"];

/// What a plugin says about itself (`meta.describe`), after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The plugin's own name for itself.
    pub name: String,
    /// The plugin's version string.
    pub version: String,
    /// Hooks it implements, in chain order (a subset of `filter`, `transform`, `sign`,
    /// `on-response`).
    pub hooks: Vec<String>,
}

/// One compiled, linked and checked plugin version, shared by every attempt that uses it.
pub(crate) struct LoadedPlugin {
    pub sha256: String,
    pub size_bytes: usize,
    pub description: Description,
    pub pre: InstancePre<StoreState>,
    pub meta: meta::GuestIndices,
    pub filter: Option<filter::GuestIndices>,
    pub transform: Option<transform::GuestIndices>,
    pub sign: Option<sign::GuestIndices>,
    /// `hookd:plugin/on-response@0.2.0`, when the component exports it.
    pub on_response: Option<on_response::GuestIndices>,
}

/// Why one call into a plugin failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallFailure {
    pub code: PluginFailureCode,
    pub message: String,
}

impl CallFailure {
    pub(crate) fn new(code: PluginFailureCode, message: impl AsRef<str>) -> Self {
        Self {
            code,
            message: truncate(message.as_ref(), MAX_FAILURE_MESSAGE_BYTES).to_owned(),
        }
    }
}

/// Where in a call a wasmtime error happened; decides what a non-trap error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallPhase {
    /// Creating the instance (start functions run here too).
    Instantiate,
    /// Inside an exported function.
    Call,
}

/// Maps a wasmtime error from a plugin store to a failure code.
///
/// A refused memory growth wins over whatever trap followed it (guests usually abort with a
/// plain `unreachable` when an allocation fails); then the trap code decides; any other error
/// inside a call is the guest's doing (e.g. it called `exit`) and counts as a trap, while one
/// during instantiation is the host's (e.g. the instance pool is exhausted).
pub(crate) fn classify(
    err: &wasmtime::Error,
    store: &Store<StoreState>,
    phase: CallPhase,
) -> CallFailure {
    let message = format!("{err:#}");
    if store.data().limiter().refused() {
        return CallFailure::new(
            PluginFailureCode::Memory,
            format!("memory limit exceeded: {message}"),
        );
    }
    let code = match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginFailureCode::Timeout,
        Some(Trap::OutOfFuel) => PluginFailureCode::Fuel,
        Some(_) => PluginFailureCode::Trap,
        None if phase == CallPhase::Call => PluginFailureCode::Trap,
        None => PluginFailureCode::Error,
    };
    let message = match code {
        PluginFailureCode::Timeout => format!("deadline exceeded: {message}"),
        PluginFailureCode::Fuel => format!("fuel exhausted: {message}"),
        _ => message,
    };
    CallFailure::new(code, message)
}

/// Ticks the engine's epoch every [`EPOCH_TICK`] while guest code may be running, and sleeps
/// otherwise: its thread blocks on a timer (a `timerfd`) that runs only while a plugin
/// store exists. Creating the first store starts the timer ([`EpochTicker::store_created`]);
/// the first tick that finds no store stops it.
///
/// Why a timer and not a sleeping thread that is woken: waking a parked thread is a futex
/// wake to another CPU, 23 µs on the caller after 10 ms idle on this kind of VM (plugin bench,
/// cold phase), and the thread then ticked twice more before parking again; starting a timer
/// is a local syscall, and at a low call rate the ticker wakes once per chain instead of three
/// times. A 1 ms timer wake-up costs ~12–25 µs of CPU here, which an engine should pay only
/// while a guest may run. Stops when dropped.
pub(crate) struct EpochTicker {
    shared: Arc<TickerShared>,
}

struct TickerShared {
    /// Plugin stores alive now (each one may be running guest code).
    live_stores: AtomicUsize,
    /// Whether the timer runs (or is about to be started by the store that set this).
    running: AtomicBool,
    stop: AtomicBool,
    /// Ticks so far (tests read it).
    ticks: AtomicU64,
    timer: OwnedFd,
}

impl TickerShared {
    /// Starts the timer: a tick in [`EPOCH_TICK`], then every [`EPOCH_TICK`].
    fn start_timer(&self) {
        let tick = Timespec {
            tv_sec: 0,
            tv_nsec: EPOCH_TICK.as_nanos() as _,
        };
        self.set_timer(tick);
    }

    fn stop_timer(&self) {
        self.set_timer(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
    }

    fn set_timer(&self, every: Timespec) {
        let spec = Itimerspec {
            it_interval: every,
            it_value: every,
        };
        // Fails only for an invalid descriptor or value, neither of which can happen here.
        let _ = timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec);
    }

    /// The ticker thread: one epoch tick per expiry of the timer, until the ticker is dropped.
    fn run(&self, engine: &Engine) {
        let mut expirations = [0u8; 8];
        while !self.stop.load(Ordering::Acquire) {
            match rustix::io::read(&self.timer, &mut expirations) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                // Not expected of a timerfd; tick on a plain sleep rather than never again.
                Err(_) => std::thread::sleep(EPOCH_TICK),
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            engine.increment_epoch();
            self.ticks.fetch_add(1, Ordering::Relaxed);
            if self.live_stores.load(Ordering::SeqCst) == 0 {
                self.stop_timer();
                self.running.store(false, Ordering::SeqCst);
                // A store created since the check may have seen `running` still set and left
                // the timer alone: start it again for that store.
                if self.live_stores.load(Ordering::SeqCst) > 0
                    && !self.running.swap(true, Ordering::SeqCst)
                {
                    self.start_timer();
                }
            }
        }
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<Self, PluginError> {
        let timer = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC)
            .map_err(|e| PluginError::Engine(format!("cannot create the epoch timer: {e}")))?;
        let shared = Arc::new(TickerShared {
            live_stores: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            timer,
        });
        let ticking = shared.clone();
        std::thread::Builder::new()
            .name("hookd-plugin-epoch".into())
            .spawn(move || ticking.run(&engine))
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self { shared })
    }

    /// A plugin store was created: tick while it lives (the guard's drop ends that).
    pub(crate) fn store_created(&self) -> LiveStore {
        self.shared.live_stores.fetch_add(1, Ordering::SeqCst);
        // An atomic swap when the timer runs; one local syscall when it does not.
        if !self.shared.running.swap(true, Ordering::SeqCst) {
            self.shared.start_timer();
        }
        LiveStore {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // The next expiry (within a tick) ends the thread's wait.
        self.shared.start_timer();
    }
}

/// Held by a plugin store while it lives: keeps the epoch ticker awake.
pub(crate) struct LiveStore {
    shared: Arc<TickerShared>,
}

impl Drop for LiveStore {
    fn drop(&mut self) {
        self.shared.live_stores.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The engine, linker and compile cache of one [`PluginHost`](super::PluginHost).
pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: Cache,
    component_builds: AtomicU64,
    fuel_enabled: bool,
    pool: PluginPool,
    ticker: EpochTicker,
    random_key: sandbox::RandomKey,
}

/// The small dedicated thread pool (one thread per core, at most [`MAX_POOL_THREADS`]) where
/// guest calls that outlast one epoch tick finish, and where `meta` calls run. Its own tokio
/// runtime, so a busy guest never occupies the engine's async workers; calls on it yield at
/// every tick, so they share its threads in turn. Its threads run below normal priority
/// (`HostOptions::guest_nice`), never above the delivery workers: at normal priority against
/// deliveries at nice 5, a tenant's chain looping to its deadline took most of a core from the
/// other tenants' deliveries.
pub(crate) struct PluginPool {
    runtime: Option<tokio::runtime::Runtime>,
}

/// Most threads of the [`PluginPool`].
const MAX_POOL_THREADS: usize = 4;

impl PluginPool {
    fn new(nice: i32) -> Result<Self, PluginError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_POOL_THREADS);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("hookd-plugin")
            .on_thread_start(move || crate::delivery::runtime::set_current_thread_nice(nice))
            .enable_time()
            .build()
            .map_err(|e| PluginError::Engine(format!("cannot start the plugin threads: {e}")))?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the pool's runtime lives until drop")
            .handle()
    }

    /// Runs `job` on the pool and waits for it on this thread. Only for threads that are not
    /// async workers (the blocking pool, plain threads).
    pub(crate) fn block_on<F: Future>(&self, job: F) -> F::Output {
        self.handle().block_on(job)
    }
}

impl Drop for PluginPool {
    fn drop(&mut self) {
        // The host may be dropped inside an async context, where a blocking shutdown panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The wasmtime engine of a host, and its compile cache in `cache_dir`. The compile worker
/// (`compile.rs`) builds its engine here too: the cache keys entries by the engine's settings,
/// so both must build it the same way for the host to find what the worker compiled.
pub(crate) fn build_engine(cache_dir: &Path, fuel: bool) -> Result<(Engine, Cache), PluginError> {
    let engine_err = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));

    let mut cache_config = CacheConfig::new();
    cache_config
        .with_directory(cache_dir)
        // Never rewrite an entry (wasmtime would otherwise recompress hot entries).
        .with_optimized_compression_usage_counter_threshold(u64::MAX);
    let cache = Cache::new(cache_config).map_err(engine_err)?;

    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
        .table_elements(POOL_TABLE_ELEMENTS)
        // PAGEMAP_SCAN makes resetting a slot cheaper but needs Linux >= 6.7: use it when
        // the kernel has it, instead of failing to start where it does not.
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .cranelift_opt_level(OptLevel::Speed)
        // One thread per compile: a compile must not take every core (compile.rs bounds how
        // many run at once).
        .parallel_compilation(false)
        .epoch_interruption(true)
        .consume_fuel(fuel)
        .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool))
        .cache(Some(cache.clone()));
    let engine = Engine::new(&config).map_err(engine_err)?;
    Ok((engine, cache))
}

/// The compile worker's entry point (`hookd plugin compile-worker`): compiles the component on
/// stdin into the compile cache at `cache_dir`. `Err` is the reason to report.
pub fn compile_worker(cache_dir: &Path, fuel: bool) -> Result<(), String> {
    let (engine, _cache) = build_engine(cache_dir, fuel).map_err(|e| e.to_string())?;
    super::compile::run_worker(&engine, std::io::stdin().lock())
}

/// Cache misses of the compile cache so far (a load after the worker compiled must not miss).
pub(crate) fn cache_misses(cache: &Cache) -> u64 {
    cache.cache_misses() as u64
}

impl Runtime {
    /// Builds the engine with its compile cache in `cache_dir` (absolute), the key that seeds
    /// plugins' random numbers (see `sandbox`), and the pool's threads at `guest_nice`.
    pub(crate) fn new(
        cache_dir: &Path,
        settings: &PluginSettings,
        random_key: [u8; 32],
        guest_nice: i32,
    ) -> Result<Self, PluginError> {
        let engine_err = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        let fuel_enabled = settings.fuel.is_some();
        let (engine, cache) = build_engine(cache_dir, fuel_enabled)?;

        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        Plugin::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |state| state,
        )
        .map_err(engine_err)?;
        // Replace the real monotonic clock: its sleeps would block the host thread where
        // epoch interruption cannot stop them.
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::add_to_linker::<
            StoreState,
            VirtualClocks,
        >(&mut linker, sandbox::virtual_clock_view)
        .map_err(engine_err)?;
        linker.allow_shadowing(false);

        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Self {
            engine,
            linker,
            cache,
            component_builds: AtomicU64::new(0),
            fuel_enabled,
            pool: PluginPool::new(guest_nice)?,
            ticker,
            random_key: sandbox::RandomKey::new(&random_key),
        })
    }

    /// The key plugins' random numbers are derived from (with the delivery id).
    pub(crate) fn random_key(&self) -> &sandbox::RandomKey {
        &self.random_key
    }

    /// The thread pool guest calls finish on.
    pub(crate) fn pool(&self) -> &PluginPool {
        &self.pool
    }

    /// Compile cache misses so far (each one a compile whose result was stored).
    pub(crate) fn cache_misses(&self) -> u64 {
        cache_misses(&self.cache)
    }

    /// Whether fuel metering is compiled in (the compile worker must build the same engine).
    pub(crate) fn fuel_enabled(&self) -> bool {
        self.fuel_enabled
    }

    /// How many components cranelift really compiled (finished builds that were not cache
    /// hits; a build still running counts once it ends, hit or not).
    pub(crate) fn compile_count(&self) -> u64 {
        let builds = self.component_builds.load(Ordering::SeqCst);
        builds.saturating_sub(self.cache.cache_hits() as u64)
    }

    /// Compiles (or loads from the cache) a component.
    pub(crate) fn compile(&self, wasm: &[u8]) -> Result<Component, PluginLoadError> {
        let built = Component::new(&self.engine, wasm);
        self.component_builds.fetch_add(1, Ordering::SeqCst);
        built.map_err(|e| PluginLoadError::invalid(format!("does not compile: {e:#}")))
    }

    /// The whole load pipeline after the size check: returns a plugin ready to run, or why
    /// not. Blocking (compiles and runs the guest's `meta.describe`).
    pub(crate) fn load(
        &self,
        wasm: &[u8],
        sha256: String,
        settings: &PluginSettings,
    ) -> Result<LoadedPlugin, PluginLoadError> {
        check_component_header(wasm)?;
        let component = self.compile(wasm)?;
        check_imports(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginLoadError::invalid(format!("cannot be linked: {e:#}")))?;

        let meta_name = export_name("meta");
        if component.get_export_index(None, &meta_name).is_none() {
            return Err(PluginLoadError::invalid(format!(
                "missing export {meta_name} (exports: {})",
                export_list(&self.engine, &component)
            )));
        }
        let bind_err = |name: &str, e: wasmtime::Error| {
            PluginLoadError::invalid(format!("export {} is malformed: {e:#}", export_name(name)))
        };
        let meta = meta::GuestIndices::new(&pre).map_err(|e| bind_err("meta", e))?;
        let has = |hook: &str| {
            component
                .get_export_index(None, export_name(hook).as_str())
                .is_some()
        };
        let filter = has("filter")
            .then(|| filter::GuestIndices::new(&pre))
            .transpose()
            .map_err(|e| bind_err("filter", e))?;
        let transform = has("transform")
            .then(|| transform::GuestIndices::new(&pre))
            .transpose()
            .map_err(|e| bind_err("transform", e))?;
        let sign = has("sign")
            .then(|| sign::GuestIndices::new(&pre))
            .transpose()
            .map_err(|e| bind_err("sign", e))?;
        let on_response = has("on-response")
            .then(|| on_response::GuestIndices::new(&pre))
            .transpose()
            .map_err(|e| bind_err("on-response", e))?;
        if filter.is_none() && transform.is_none() && sign.is_none() && on_response.is_none() {
            return Err(PluginLoadError::invalid(format!(
                "exports no hook: expected at least one of {}, {}, {}, {} (exports: {})",
                export_name("filter"),
                export_name("transform"),
                export_name("sign"),
                export_name("on-response"),
                export_list(&self.engine, &component)
            )));
        }

        let mut plugin = LoadedPlugin {
            sha256,
            size_bytes: wasm.len(),
            description: Description {
                name: String::new(),
                version: String::new(),
                hooks: Vec::new(),
            },
            pre,
            meta,
            filter,
            transform,
            sign,
            on_response,
        };
        plugin.description = self.pool.block_on(self.describe(&plugin, settings))?;
        Ok(plugin)
    }

    /// Instantiates the plugin once, type-checks every exported hook and calls
    /// `meta.describe`, checking its answer against the real exports.
    async fn describe(
        &self,
        plugin: &LoadedPlugin,
        settings: &PluginSettings,
    ) -> Result<Description, PluginLoadError> {
        let fail = |what: &str, f: CallFailure| {
            PluginLoadError::invalid(format!("{what} failed: {}: {}", f.code, f.message))
        };
        let settings = &meta_settings(settings);
        let mut store = self.meta_store(settings);
        let instance = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| {
                fail(
                    "instantiation",
                    classify(&e, &store, CallPhase::Instantiate),
                )
            })?;
        let wrong_type = |hook: &str, e: wasmtime::Error| {
            PluginLoadError::invalid(format!(
                "export {} does not match {PACKAGE}@{}: {e:#}",
                export_name(hook),
                interface_version(hook)
            ))
        };
        if let Some(indices) = &plugin.filter {
            indices
                .load(&mut store, &instance)
                .map_err(|e| wrong_type("filter", e))?;
        }
        if let Some(indices) = &plugin.transform {
            indices
                .load(&mut store, &instance)
                .map_err(|e| wrong_type("transform", e))?;
        }
        if let Some(indices) = &plugin.sign {
            indices
                .load(&mut store, &instance)
                .map_err(|e| wrong_type("sign", e))?;
        }
        if let Some(indices) = &plugin.on_response {
            indices
                .load(&mut store, &instance)
                .map_err(|e| wrong_type("on-response", e))?;
        }
        let guest = plugin
            .meta
            .load(&mut store, &instance)
            .map_err(|e| wrong_type("meta", e))?;
        self.arm(&mut store, settings);
        let raw = guest
            .call_describe(&mut store)
            .await
            .map_err(|e| fail("meta.describe", classify(&e, &store, CallPhase::Call)))?;

        let exported: Vec<String> = [
            ("filter", plugin.filter.is_some()),
            ("transform", plugin.transform.is_some()),
            ("sign", plugin.sign.is_some()),
            ("on-response", plugin.on_response.is_some()),
        ]
        .iter()
        .filter(|(_, present)| *present)
        .map(|(hook, _)| (*hook).to_owned())
        .collect();
        validate_description(&raw.name, &raw.version, &raw.hooks, &exported)?;
        Ok(Description {
            name: raw.name,
            version: raw.version,
            hooks: exported,
        })
    }

    /// Runs `meta.validate-config` in a fresh instance.
    pub(crate) async fn validate_config(
        &self,
        plugin: &LoadedPlugin,
        config: &str,
        settings: &PluginSettings,
    ) -> Result<(), PluginLoadError> {
        let fail = |f: CallFailure| {
            PluginLoadError::InvalidConfig(format!(
                "validate-config failed: {}: {}",
                f.code, f.message
            ))
        };
        let settings = &meta_settings(settings);
        let mut store = self.meta_store(settings);
        let instance = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| fail(classify(&e, &store, CallPhase::Instantiate)))?;
        let guest = plugin
            .meta
            .load(&mut store, &instance)
            .map_err(|e| fail(classify(&e, &store, CallPhase::Instantiate)))?;
        self.arm(&mut store, settings);
        match guest.call_validate_config(&mut store, config).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(PluginLoadError::InvalidConfig(
                truncate(&message, MAX_FAILURE_MESSAGE_BYTES).to_owned(),
            )),
            Err(e) => Err(fail(classify(&e, &store, CallPhase::Call))),
        }
    }

    /// A store for `meta` calls (upload and attach time, not a delivery): logs are dropped.
    fn meta_store(&self, settings: &PluginSettings) -> Store<StoreState> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut store = sandbox::new_store(
            &self.engine,
            StoreState::new(SandboxParams {
                plugin: Arc::from("meta"),
                delivery_id: "meta",
                attempt_time_ms: now_ms,
                memory_limit_bytes: settings.memory_limit_bytes,
                logs: Arc::new(std::sync::Mutex::new(LogBuffer::new(0))),
                signing_secret: Arc::from(&b""[..]),
                random_key: &self.random_key,
            }),
            self.ticker.store_created(),
        );
        self.arm(&mut store, settings);
        store
    }

    /// A store for one plugin of one delivery attempt.
    pub(crate) fn call_store(&self, params: SandboxParams<'_>) -> Store<StoreState> {
        sandbox::new_store(
            &self.engine,
            StoreState::new(params),
            self.ticker.store_created(),
        )
    }

    /// Gives the next call its own deadline (and fuel budget, if fuel is on). The store's
    /// deadline callback (`sandbox::new_store`) runs at every epoch tick: it yields until the
    /// deadline has passed, then interrupts the call (`Trap::Interrupt`, `plugin_timeout`).
    pub(crate) fn arm(&self, store: &mut Store<StoreState>, settings: &PluginSettings) {
        store.data_mut().start_call(settings.deadline);
        store.set_epoch_deadline(1);
        if self.fuel_enabled {
            // A fuel-enabled engine traps at once with no fuel: "no budget" means unlimited.
            // Setting fuel cannot fail on a fuel-enabled engine.
            let _ = store.set_fuel(settings.fuel.unwrap_or(u64::MAX));
        }
    }
}

/// Smallest deadline of a `meta` call (upload and attach time, off the hot path).
const META_MIN_DEADLINE: Duration = Duration::from_secs(1);
/// Smallest memory budget of a `meta` call: JS and Python guests need ≥ 128 MiB, and a
/// tenant may have a larger budget than the host default; an upload must not be refused for
/// that. Deliveries still run under the tenant's own budget.
const META_MIN_MEMORY_BYTES: usize = 256 << 20;

/// The budgets of `meta` calls: the host's, raised to the minimums above.
fn meta_settings(settings: &PluginSettings) -> PluginSettings {
    PluginSettings {
        deadline: settings.deadline.max(META_MIN_DEADLINE),
        memory_limit_bytes: settings.memory_limit_bytes.max(META_MIN_MEMORY_BYTES),
        ..settings.clone()
    }
}

/// The full export name of a hookd interface, e.g. `hookd:plugin/filter@0.1.0` or
/// `hookd:plugin/on-response@0.2.0`.
pub(crate) fn export_name(interface: &str) -> String {
    format!("{PACKAGE}/{interface}@{}", interface_version(interface))
}

/// The package version a hookd interface belongs to: `on-response` is 0.2.0's, everything
/// else 0.1.0's (which 0.2.0 reuses).
fn interface_version(interface: &str) -> &'static str {
    if interface == "on-response" {
        RESPONSE_PACKAGE_VERSION
    } else {
        PACKAGE_VERSION
    }
}

/// Refuses bytes that are not a binary WebAssembly component (a core module, text, junk).
pub(crate) fn check_component_header(wasm: &[u8]) -> Result<(), PluginLoadError> {
    match wasm {
        [0x00, 0x61, 0x73, 0x6d, _, _, 0x01, 0x00, ..] => Ok(()),
        [0x00, 0x61, 0x73, 0x6d, ..] => Err(PluginLoadError::invalid(
            "a core WebAssembly module, not a component (build for wasm32-wasip2)",
        )),
        _ => Err(PluginLoadError::invalid("not a WebAssembly component")),
    }
}

/// Refuses any import outside the hookd interfaces and the WASI 0.2 subset, naming it.
fn check_imports(engine: &Engine, component: &Component) -> Result<(), PluginLoadError> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) || !import_allowed(name) {
            return Err(PluginLoadError::invalid(format!(
                "import {name} is not allowed (plugins may import {PACKAGE}/host, \
                 {PACKAGE}/signing-key and WASI 0.2 cli, io, clocks, random, filesystem and \
                 sockets; files, environment and network are denied at run time anyway)"
            )));
        }
    }
    Ok(())
}

/// Whether an import name (`ns:pkg/iface@version`) is on the allow-list.
pub(crate) fn import_allowed(name: &str) -> bool {
    let Some((path, version)) = name.split_once('@') else {
        return false;
    };
    if let Some(interface) = path.strip_prefix("hookd:plugin/") {
        return version == PACKAGE_VERSION && HOOKD_IMPORTS.contains(&interface);
    }
    WASI_IMPORTS.contains(&path) && is_wasi_0_2(version)
}

/// `0.2.x` (any patch release, with or without a pre-release tag).
fn is_wasi_0_2(version: &str) -> bool {
    version
        .strip_prefix("0.2.")
        .and_then(|rest| rest.split(['-', '+']).next())
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
}

/// The component's export names, for error messages.
fn export_list(engine: &Engine, component: &Component) -> String {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Checks `meta.describe`'s answer: a sane name and version, and hooks that are exactly the
/// hook interfaces the component exports.
fn validate_description(
    name: &str,
    version: &str,
    claimed: &[String],
    exported: &[String],
) -> Result<(), PluginLoadError> {
    let bad = |what: String| PluginLoadError::invalid(format!("meta.describe: {what}"));
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(bad(format!("unusable name {:?}", truncate(name, 64))));
    }
    if version.len() > 64 || version.chars().any(char::is_control) {
        return Err(bad(format!("unusable version {:?}", truncate(version, 64))));
    }
    for hook in claimed {
        if !HOOKS.contains(&hook.as_str()) {
            return Err(bad(format!("unknown hook {:?}", truncate(hook, 64))));
        }
        if !exported.contains(hook) {
            return Err(bad(format!(
                "claims hook {hook:?} but does not export {}",
                export_name(hook)
            )));
        }
    }
    for hook in exported {
        if !claimed.contains(hook) {
            return Err(bad(format!(
                "exports {} but does not list {hook:?} in its hooks",
                export_name(hook)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to 10 s for `done`, checking every 10 ms.
    fn within_10s(mut done: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn the_epoch_ticker_ticks_while_a_store_lives_and_stops_at_the_first_tick_without_one() {
        let ticker = EpochTicker::start(Engine::default()).unwrap();
        let ticks = || ticker.shared.ticks.load(Ordering::Relaxed);
        // Still: no tick for 200 ms.
        let still = || {
            let before = ticks();
            std::thread::sleep(Duration::from_millis(200));
            ticks() == before
        };
        let ticking = || {
            let from = ticks();
            within_10s(|| ticks() >= from + 5)
        };
        // At rest after start: no store has existed, so it never ticked.
        assert!(still(), "the ticker ticks at rest");
        assert_eq!(ticks(), 0);

        let store = ticker.store_created();
        assert!(ticking(), "a new store did not start the ticker");
        drop(store);
        let dropped_at = ticks();
        assert!(within_10s(still), "the ticker never stopped");
        // At the first tick without a store, or the one after if that tick raced the drop:
        // not the 100 of a grace that kept it waking between the deliveries of a quiet engine.
        let after = ticks() - dropped_at;
        assert!(after <= 2, "{after} ticks after the last store");

        // Stopped, a new store starts it again.
        let store = ticker.store_created();
        assert!(
            ticking(),
            "a store created while stopped did not start the ticker"
        );
        drop(store);

        // Stores created and dropped from two threads while the ticker stops and starts
        // (each store lives ~0.5 ms, about half a tick): a store created just as a tick
        // stops the timer still gets ticks.
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..400 {
                        let store = ticker.store_created();
                        std::thread::sleep(Duration::from_micros(500));
                        drop(store);
                        std::thread::sleep(Duration::from_micros(700));
                    }
                });
            }
        });
        let _store = ticker.store_created();
        assert!(ticking(), "a store created after the churn gets no ticks");
    }

    #[test]
    fn import_allow_list() {
        for ok in [
            "hookd:plugin/host@0.1.0",
            "hookd:plugin/signing-key@0.1.0",
            "hookd:plugin/types@0.1.0",
            "wasi:cli/environment@0.2.0",
            "wasi:io/streams@0.2.6",
            "wasi:filesystem/preopens@0.2.3",
            "wasi:sockets/tcp@0.2.0",
            "wasi:clocks/wall-clock@0.2.10-rc.1",
        ] {
            assert!(import_allowed(ok), "{ok} refused");
        }
        for bad in [
            "hookd:plugin/host@0.2.0",
            "hookd:plugin/filter@0.1.0",
            "wasi:http/outgoing-handler@0.2.0",
            "wasi:http/types@0.2.6",
            "wasi:cli/environment@0.3.0",
            "wasi:cli/environment",
            "wasi:io/streams@0.2.",
            "evil:thing/x@1.0.0",
            "wasi:keyvalue/store@0.2.0",
            "host",
        ] {
            assert!(!import_allowed(bad), "{bad} allowed");
        }
    }

    #[test]
    fn guest_calls_finish_on_pool_threads_at_the_nice_value_given() {
        let thread_and_nice = || {
            (
                std::thread::current().name().map(str::to_string),
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap(),
            )
        };
        for nice in [5, 0] {
            let pool = PluginPool::new(nice).unwrap();
            let on_pool = pool.handle().spawn(async move { thread_and_nice() });
            let (name, ran_at) = pool.block_on(on_pool).unwrap();
            assert_eq!(name.as_deref(), Some("hookd-plugin"));
            assert_eq!(ran_at, nice);
        }
        // The calling thread keeps its own priority.
        assert_eq!(thread_and_nice().1, 0);
    }

    #[test]
    fn component_header_check() {
        assert!(check_component_header(b"\0asm\x0d\0\x01\0rest").is_ok());
        let core = check_component_header(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(matches!(core, PluginLoadError::Invalid { reason } if reason.contains("core")));
        assert!(check_component_header(b"hello").is_err());
        assert!(check_component_header(b"").is_err());
    }

    #[test]
    fn description_must_match_exports() {
        let hooks = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(
            validate_description("p", "1.0.0", &hooks(&["filter"]), &hooks(&["filter"])).is_ok()
        );
        assert!(validate_description("p", "1", &hooks(&["sign"]), &hooks(&["filter"])).is_err());
        assert!(validate_description("p", "1", &hooks(&[]), &hooks(&["filter"])).is_err());
        assert!(validate_description("p", "1", &hooks(&["bogus"]), &hooks(&["filter"])).is_err());
        assert!(validate_description("", "1", &hooks(&["filter"]), &hooks(&["filter"])).is_err());
        let both = hooks(&["filter", "on-response"]);
        assert!(validate_description("p", "1", &both, &both).is_ok());
        assert!(validate_description("p", "1", &hooks(&["filter"]), &both).is_err());
    }

    #[test]
    fn on_response_is_exported_from_0_2_0_and_the_rest_from_0_1_0() {
        assert_eq!(export_name("filter"), "hookd:plugin/filter@0.1.0");
        assert_eq!(export_name("meta"), "hookd:plugin/meta@0.1.0");
        assert_eq!(export_name("on-response"), "hookd:plugin/on-response@0.2.0");
    }
}
