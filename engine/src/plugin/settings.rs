//! Plugin budgets and limits ([`PluginSettings`]): what one plugin call may use (time, memory,
//! fuel, log bytes, output size), what an upload may be and how its compile is bounded. The engine builds these from its
//! config (per tenant overridable); this module owns only the defaults and their meaning.

use std::time::Duration;

/// Default wall-clock deadline of one plugin call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(100);
/// Default linear-memory cap of one plugin instance (all its memories together).
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 64 << 20;
/// Default cap on captured guest logs (`host.log`, stdout, stderr) per attempt.
pub const DEFAULT_MAX_LOG_BYTES: usize = 4 << 10;
/// Default cap on an uploaded component's size.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 32 << 20;
/// Default time allowed to compile an uploaded component.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time an upload waits for a compile slot before `503 compile_busy`.
pub const DEFAULT_COMPILE_WAIT: Duration = Duration::from_secs(10);
/// Compiles one tenant may run at once (the engine runs [`MAX_CONCURRENT_COMPILES`] in all):
/// a tenant uploading in a loop holds one compile slot, never every one.
pub const COMPILES_PER_TENANT: usize = 1;
/// Compiles running at once across tenants. Each compiles on one thread
/// (`parallel_compilation` is off), in a worker process at a lower scheduling priority.
pub const MAX_CONCURRENT_COMPILES: usize = 2;
/// Most functions a component may define, over all its core modules, checked before compiling
/// (cranelift compiles each one; the Python plugin of `plugins/` has 13,357, the JS one
/// 12,708).
pub const MAX_FUNCTIONS: usize = 100_000;
/// Largest function body a component may have, in bytes, checked before compiling (compile
/// time grows faster than linearly with one function's size; the largest in the Python plugin
/// of `plugins/` is 417 KiB, in the JS one 168 KiB).
pub const MAX_FUNCTION_BODY_BYTES: usize = 1 << 20;
/// Most plugin chains one tenant may run at the same time by default; the default is the
/// number of cores when that is smaller (see [`default_max_concurrent_calls_per_tenant`]).
pub const DEFAULT_MAX_CONCURRENT_CALLS_PER_TENANT: usize = 4;

/// The default per-tenant chain cap: the number of cores, at most
/// [`DEFAULT_MAX_CONCURRENT_CALLS_PER_TENANT`]. A hostile plugin loops until its deadline, so
/// a tenant's slots are that many busy threads: more than the cores takes CPU from every
/// other tenant's deliveries. Measured on 2 cores (`tests/it/plugin_fairness.rs`, one tenant
/// looping at 200 ms deadlines): another tenant's delivery p50 went from ~5 ms to ~28 ms with
/// 2 slots and to ~53 ms with 4; with 32 slots its p99 reached 0.7–1.25 s.
pub fn default_max_concurrent_calls_per_tenant() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, DEFAULT_MAX_CONCURRENT_CALLS_PER_TENANT)
}
/// Default cap on the payload a transform may produce.
pub const DEFAULT_MAX_OUTPUT_PAYLOAD_BYTES: usize = 2 << 20;

/// Budgets for plugin calls and uploads.
///
/// The host is opened with one `PluginSettings` (used for uploads, `meta` calls (with at least
/// a 1 s deadline and 256 MiB of memory, so uploads of JS or Python plugins are not refused
/// for budgets the tenant may well have) and the engine-wide fuel switch); [`PluginHost::run_chain`](super::PluginHost::run_chain) takes the
/// settings in force for the tenant (and webhook) of each attempt, so budgets can be
/// overridden per tenant without reopening the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSettings {
    /// Wall-clock deadline of each plugin call (one hook invocation, instantiation included),
    /// enforced by epoch interruption with a 1 ms ticker: a call is stopped between the
    /// deadline and one tick after it. Exceeding it fails the attempt with `plugin_timeout`.
    pub deadline: Duration,
    /// Linear-memory cap of one plugin instance, summed over its memories. A guest that grows
    /// past it fails the attempt with `plugin_memory`. JS and Python guests need ≥ 128 MiB.
    pub memory_limit_bytes: usize,
    /// Bytes of guest logs (`host.log` messages and stdout/stderr lines) kept per attempt;
    /// beyond it lines are dropped and one truncation marker is appended.
    pub max_log_bytes: usize,
    /// Optional fuel budget per call (`plugin_fuel` when exhausted). Fuel metering is an
    /// engine-wide switch decided when the host is opened: it is compiled in only if the
    /// settings given to [`PluginHost::open`](super::PluginHost::open) have `Some` fuel, because
    /// it slows every call by about half. On a host opened without fuel, a per-call budget is
    /// ignored (the deadline still applies).
    pub fuel: Option<u64>,
    /// Largest accepted component upload, in bytes.
    pub max_upload_bytes: usize,
    /// Time allowed to compile an upload; a slower compile is stopped (its worker process is
    /// killed, freeing its compile slot) and refused as `plugin_invalid`.
    pub compile_timeout: Duration,
    /// Time an upload waits for a compile slot (its tenant's, then the engine's) before it is
    /// refused as `compile_busy` (503 with `Retry-After`).
    pub compile_wait: Duration,
    /// Plugin chains one tenant may run concurrently; further attempts wait for a slot.
    pub max_concurrent_calls_per_tenant: usize,
    /// The tenant's weight in the fair sharing of the host's chain slots (the tenant's
    /// `delivery_weight` quota): while tenants compete, each gets slots in proportion to it.
    pub slot_weight: u64,
    /// Largest payload a transform may return (`plugin_invalid_output` beyond it).
    pub max_output_payload_bytes: usize,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            deadline: DEFAULT_DEADLINE,
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            fuel: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
            compile_wait: DEFAULT_COMPILE_WAIT,
            max_concurrent_calls_per_tenant: default_max_concurrent_calls_per_tenant(),
            slot_weight: 1,
            max_output_payload_bytes: DEFAULT_MAX_OUTPUT_PAYLOAD_BYTES,
        }
    }
}
