//! The per-call sandbox: the state of one plugin `Store` ([`StoreState`]) and everything a
//! guest can touch through it: the WASI context with nothing inherited, deterministic clocks
//! and randomness, stdout/stderr and `host.log` captured into the bounded per-attempt
//! [`LogBuffer`], the memory [`Limiter`] that records refusals, and the host functions
//! (`host.log`, `signing-key.mac`).
//!
//! Determinism: the wall clock reads the attempt time from the request and the monotonic clock
//! starts from it; both advance only when the guest sleeps, and a sleep returns at once (it
//! advances the virtual clock instead of blocking a thread, which epoch interruption could
//! not stop). Randomness is a ChaCha PRNG seeded with an HMAC of the delivery id under the
//! host's random key (derived from the engine's secret key): a replay or simulation of the same
//! delivery at the same attempt time sees exactly what production saw, while a receiver, who
//! knows the delivery id (`webhook-id`), cannot predict a plugin's random bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use rand_wasi::SeedableRng as _;
use serde::Serialize;
use sha2::{Sha256, Sha512};
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult, subscribe};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::hookd::plugin::{host, signing_key, types};

/// Largest table (in elements) a guest may grow to.
const MAX_TABLE_ELEMENTS: usize = 250_000;
/// Most core instances, memories or tables one plugin instance may create.
const MAX_INSTANCE_OBJECTS: usize = 100;
/// Largest single `get-random-bytes` request; more traps instead of making the host allocate.
const MAX_RANDOM_REQUEST_BYTES: u64 = 1 << 20;
/// Longest single log message kept (further bytes are cut before the per-attempt budget).
const MAX_LOG_MESSAGE_BYTES: usize = 2 << 10;

/// Severity or source of a captured plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginLogLevel {
    /// `host.log` at trace level.
    Trace,
    /// `host.log` at debug level.
    Debug,
    /// `host.log` at info level.
    Info,
    /// `host.log` at warn level (also the host's truncation marker).
    Warn,
    /// `host.log` at error level.
    Error,
    /// A line the guest wrote to stdout.
    Stdout,
    /// A line the guest wrote to stderr.
    Stderr,
}

impl PluginLogLevel {
    /// The level as a lowercase word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

impl From<types::LogLevel> for PluginLogLevel {
    fn from(level: types::LogLevel) -> Self {
        match level {
            types::LogLevel::Trace => Self::Trace,
            types::LogLevel::Debug => Self::Debug,
            types::LogLevel::Info => Self::Info,
            types::LogLevel::Warn => Self::Warn,
            types::LogLevel::Error => Self::Error,
        }
    }
}

/// One captured log line of a plugin, kept with the delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginLog {
    /// The plugin (chain step) that wrote it; `hookd` for the host's truncation marker.
    pub plugin: String,
    /// Level, or `stdout`/`stderr`.
    pub level: PluginLogLevel,
    /// The text (invalid UTF-8 replaced).
    pub message: String,
}

/// The logs of one attempt, capped at a byte budget shared by every plugin of the chain.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    entries: Vec<PluginLog>,
    used: usize,
    limit: usize,
    truncated: bool,
    /// What a plugin wrote to stdout or stderr after its last newline, by plugin and stream:
    /// a line written in several pieces (`eprint!`, a panic message) is one entry.
    partial: Vec<(String, PluginLogLevel, String)>,
}

impl LogBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            entries: Vec::new(),
            used: 0,
            limit,
            truncated: false,
            partial: Vec::new(),
        }
    }

    /// Takes bytes a plugin wrote to one of its streams: each complete line becomes an entry;
    /// the rest waits for its newline (or the end of the attempt, or the longest entry).
    pub(crate) fn write_stream(&mut self, plugin: &str, level: PluginLogLevel, text: &str) {
        let index = match self
            .partial
            .iter()
            .position(|(p, l, _)| p == plugin && *l == level)
        {
            Some(index) => index,
            None => {
                self.partial.push((plugin.to_owned(), level, String::new()));
                self.partial.len() - 1
            }
        };
        let mut pending = std::mem::take(&mut self.partial[index].2);
        pending.push_str(text);
        let mut rest = pending.as_str();
        while let Some(end) = rest.find('\n') {
            let line = &rest[..end];
            self.push_line(plugin, level, line.strip_suffix('\r').unwrap_or(line));
            rest = &rest[end + 1..];
        }
        if rest.len() >= MAX_LOG_MESSAGE_BYTES {
            self.push_line(plugin, level, rest);
            rest = "";
        }
        self.partial[index].2 = rest.to_owned();
    }

    fn push_line(&mut self, plugin: &str, level: PluginLogLevel, line: &str) {
        if !line.is_empty() {
            self.push(plugin, level, line);
        }
    }

    /// Appends a line, or the part of it that still fits followed by one truncation marker.
    pub(crate) fn push(&mut self, plugin: &str, level: PluginLogLevel, message: &str) {
        if self.truncated {
            return;
        }
        let message = super::policy::truncate(message, MAX_LOG_MESSAGE_BYTES);
        let room = self.limit - self.used;
        if message.len() <= room {
            self.used += message.len();
            self.entries.push(PluginLog {
                plugin: plugin.to_owned(),
                level,
                message: message.to_owned(),
            });
            return;
        }
        let part = super::policy::truncate(message, room);
        if !part.is_empty() {
            self.used += part.len();
            self.entries.push(PluginLog {
                plugin: plugin.to_owned(),
                level,
                message: part.to_owned(),
            });
        }
        self.truncated = true;
        self.entries.push(PluginLog {
            plugin: "hookd".to_owned(),
            level: PluginLogLevel::Warn,
            message: format!(
                "log truncated: the {} bytes allowed per attempt are used up",
                self.limit
            ),
        });
    }

    /// The entries, with every stream's unfinished last line.
    pub(crate) fn into_entries(self) -> Vec<PluginLog> {
        self.finish().0
    }

    /// The entries (with every stream's unfinished last line) and whether they were cut.
    pub(crate) fn finish(mut self) -> (Vec<PluginLog>, bool) {
        for (plugin, level, pending) in std::mem::take(&mut self.partial) {
            self.push_line(
                &plugin,
                level,
                pending.strip_suffix('\r').unwrap_or(&pending),
            );
        }
        (self.entries, self.truncated)
    }
}

/// Shared handle on an attempt's [`LogBuffer`].
pub(crate) type SharedLogs = Arc<Mutex<LogBuffer>>;

/// Locks the log buffer, ignoring poisoning (a panic elsewhere must not lose logs).
pub(crate) fn lock_logs(logs: &SharedLogs) -> MutexGuard<'_, LogBuffer> {
    logs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Caps the linear memory of one instance (all memories together) and remembers whether a
/// growth was refused, so a guest that aborts after a failed allocation (which looks like any
/// other `unreachable` trap) is reported as `plugin_memory`.
#[derive(Debug)]
pub(crate) struct Limiter {
    limit: usize,
    total: usize,
    last_delta: usize,
    refused: bool,
}

impl Limiter {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            total: 0,
            last_delta: 0,
            refused: false,
        }
    }

    /// Whether a memory growth was refused (or failed) during this store's life.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let delta = desired.saturating_sub(current);
        match self.total.checked_add(delta) {
            Some(total) if total <= self.limit => {
                self.total = total;
                self.last_delta = delta;
                Ok(true)
            }
            _ => {
                self.refused = true;
                Ok(false)
            }
        }
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Allowed by us but refused by the instance's own maximum, the pool or the OS: still
        // the guest asking for too much memory.
        self.total = self.total.saturating_sub(self.last_delta);
        self.refused = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCE_OBJECTS
    }

    fn tables(&self) -> usize {
        MAX_INSTANCE_OBJECTS
    }

    fn memories(&self) -> usize {
        MAX_INSTANCE_OBJECTS
    }
}

/// Virtual time of one store: a fixed start (the attempt time) plus the nanoseconds the guest
/// has slept.
#[derive(Debug, Clone)]
pub(crate) struct VirtualClock {
    start_ns: u64,
    slept_ns: Arc<AtomicU64>,
}

impl VirtualClock {
    pub(crate) fn new(attempt_time_ms: u64) -> Self {
        Self {
            start_ns: attempt_time_ms.saturating_mul(1_000_000),
            slept_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ns(&self) -> u64 {
        self.start_ns
            .saturating_add(self.slept_ns.load(Ordering::Relaxed))
    }

    fn advance_to(&self, target_ns: u64) {
        let slept = target_ns.saturating_sub(self.start_ns);
        self.slept_ns.fetch_max(slept, Ordering::Relaxed);
    }
}

impl HostWallClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns())
    }
}

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.now_ns()
    }
}

/// What a plugin's store holds for one attempt.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    logs: SharedLogs,
    plugin: Arc<str>,
    signing_secret: Arc<[u8]>,
    /// Whether a sign hook is running: `signing-key.mac` works only then.
    signing: bool,
    clock: VirtualClock,
    /// When the running call must stop (`None`: never).
    call_deadline: Option<Instant>,
    /// When the running call started.
    call_started: Instant,
    /// Keeps the epoch ticker awake while this store lives (set by [`new_store`]).
    _live: Option<super::runtime::LiveStore>,
}

/// What the sandbox of one plugin call needs to know about the attempt.
pub(crate) struct SandboxParams<'a> {
    pub plugin: Arc<str>,
    pub delivery_id: &'a str,
    pub attempt_time_ms: u64,
    pub memory_limit_bytes: usize,
    pub logs: SharedLogs,
    pub signing_secret: Arc<[u8]>,
    /// The host's secret the random seeds are derived from.
    pub random_key: &'a RandomKey,
}

/// The host's secret the plugins' random seeds are derived from, keyed once: HMAC-SHA256's
/// key schedule (two of the four compressions of a short message) is not redone per store.
#[derive(Clone)]
pub(crate) struct RandomKey(Hmac<Sha256>);

impl RandomKey {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Self(Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length"))
    }

    /// A 32-byte seed: HMAC-SHA256 under the key of `label` and the delivery id.
    fn seed(&self, label: &[u8], delivery_id: &str) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(label);
        mac.update(delivery_id.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl StoreState {
    /// A fresh sandbox: no preopens, env, args or stdin; sockets and name lookups denied;
    /// stdout/stderr captured; deterministic clocks and randomness.
    pub(crate) fn new(params: SandboxParams<'_>) -> Self {
        let clock = VirtualClock::new(params.attempt_time_ms);
        let seed = params
            .random_key
            .seed(b"hookd plugin random v2\0", params.delivery_id);
        let insecure_seed = params
            .random_key
            .seed(b"hookd plugin insecure random v2\0", params.delivery_id);
        let mut seed_bytes = [0u8; 16];
        seed_bytes.copy_from_slice(&insecure_seed[..16]);

        let mut builder = WasiCtx::builder();
        builder
            .stdout(LogSink {
                logs: params.logs.clone(),
                plugin: params.plugin.clone(),
                level: PluginLogLevel::Stdout,
            })
            .stderr(LogSink {
                logs: params.logs.clone(),
                plugin: params.plugin.clone(),
                level: PluginLogLevel::Stderr,
            })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .wall_clock(clock.clone())
            .monotonic_clock(clock.clone())
            .secure_random(rand_wasi::rngs::StdRng::from_seed(seed))
            .insecure_random(rand_wasi::rngs::StdRng::from_seed(insecure_seed))
            .insecure_random_seed(u128::from_le_bytes(seed_bytes))
            .max_random_size(MAX_RANDOM_REQUEST_BYTES);
        Self {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(params.memory_limit_bytes),
            logs: params.logs,
            plugin: params.plugin,
            signing_secret: params.signing_secret,
            signing: false,
            clock,
            call_deadline: None,
            call_started: Instant::now(),
            _live: None,
        }
    }

    /// Starts the clock of the next call: it must stop `budget` from now (never if `None`).
    pub(crate) fn start_call(&mut self, budget: Duration) {
        let now = Instant::now();
        self.call_started = now;
        self.call_deadline = now.checked_add(budget);
    }

    /// What to do at an epoch tick: interrupt a call past its deadline; let a call that has
    /// run for less than one tick go on (most calls end well within a tick, and yielding would
    /// send them to another thread for nothing); yield otherwise.
    fn at_tick(&self) -> UpdateDeadline {
        let now = Instant::now();
        if self.call_deadline.is_some_and(|deadline| now >= deadline) {
            UpdateDeadline::Interrupt
        } else if now.duration_since(self.call_started) < super::runtime::EPOCH_TICK {
            UpdateDeadline::Continue(1)
        } else {
            UpdateDeadline::Yield(1)
        }
    }

    pub(crate) fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Lends the signing secret to `signing-key.mac` for the duration of a sign hook.
    pub(crate) fn set_signing(&mut self, signing: bool) {
        self.signing = signing;
    }
}

/// Creates a store for `state` with the memory limiter and the deadline callback installed.
///
/// The callback runs at every epoch tick while guest code runs: once the call has run for a
/// tick it yields to the executor (the guest resumes on the next poll, possibly on another
/// thread); past the call's deadline it interrupts the call.
///
/// `live` keeps the epoch ticker running while the store exists.
pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    mut state: StoreState,
    live: super::runtime::LiveStore,
) -> Store<StoreState> {
    state._live = Some(live);
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.epoch_deadline_callback(|context| Ok(context.data().at_tick()));
    store
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        lock_logs(&self.logs).push(&self.plugin, level.into(), &message);
    }
}

impl signing_key::Host for StoreState {
    fn mac(&mut self, alg: signing_key::MacAlgorithm, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        if !self.signing {
            return Err(wasmtime::format_err!(
                "signing-key.mac may only be called from the sign hook"
            ));
        }
        // HMAC accepts keys of any length, so these constructors cannot fail.
        let mac = match alg {
            signing_key::MacAlgorithm::HmacSha256 => {
                Hmac::<Sha256>::new_from_slice(&self.signing_secret)
                    .map(|mac| mac.chain_update(&data).finalize().into_bytes().to_vec())
            }
            signing_key::MacAlgorithm::HmacSha512 => {
                Hmac::<Sha512>::new_from_slice(&self.signing_secret)
                    .map(|mac| mac.chain_update(&data).finalize().into_bytes().to_vec())
            }
        };
        mac.map_err(|e| wasmtime::format_err!("cannot key the MAC: {e}"))
    }
}

/// Replaces wasmtime-wasi's `wasi:clocks/monotonic-clock` so that a guest sleep never blocks
/// the host thread: subscriptions are ready at once and move the virtual clock forward.
pub(crate) struct VirtualClocks;

impl HasData for VirtualClocks {
    type Data<'a> = VirtualClockView<'a>;
}

/// The part of [`StoreState`] the virtual monotonic clock needs.
pub(crate) struct VirtualClockView<'a> {
    clock: &'a VirtualClock,
    table: &'a mut ResourceTable,
}

/// Projects a [`StoreState`] onto the view [`VirtualClocks`] binds to.
pub(crate) fn virtual_clock_view(state: &mut StoreState) -> VirtualClockView<'_> {
    VirtualClockView {
        clock: &state.clock,
        table: &mut state.table,
    }
}

/// A pollable that is always ready: a virtual sleep that has already elapsed.
struct Elapsed;

#[wasmtime_wasi::async_trait]
impl Pollable for Elapsed {
    async fn ready(&mut self) {}
}

impl monotonic_clock::Host for VirtualClockView<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(self.clock.now_ns())
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1)
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.clock.advance_to(when);
        let elapsed = self.table.push(Elapsed)?;
        subscribe(self.table, elapsed)
    }

    fn subscribe_duration(
        &mut self,
        duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.clock
            .advance_to(self.clock.now_ns().saturating_add(duration));
        let elapsed = self.table.push(Elapsed)?;
        subscribe(self.table, elapsed)
    }
}

/// Guest stdout or stderr, captured line by line into the attempt's logs. Never blocks and
/// never reports an error to the guest: beyond the budget, output is dropped silently.
#[derive(Clone)]
struct LogSink {
    logs: SharedLogs,
    plugin: Arc<str>,
    level: PluginLogLevel,
}

impl LogSink {
    fn append(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        lock_logs(&self.logs).write_stream(&self.plugin, self.level, &text);
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// How much a guest may write in one go; writes are accepted immediately.
const LOG_SINK_WRITE_BUDGET: usize = 64 << 10;

impl OutputStream for LogSink {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(LOG_SINK_WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogSink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_written_in_pieces_is_one_entry_and_an_unfinished_one_is_kept() {
        let mut logs = LogBuffer::new(1000);
        for piece in [
            "memory allocation of ",
            "1048576",
            " bytes failed\nnote: run",
            " with",
        ] {
            logs.write_stream("mb", PluginLogLevel::Stderr, piece);
        }
        logs.write_stream("mb", PluginLogLevel::Stdout, "out\r\n");
        let lines: Vec<(PluginLogLevel, String)> = logs
            .into_entries()
            .into_iter()
            .map(|e| (e.level, e.message))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    PluginLogLevel::Stderr,
                    "memory allocation of 1048576 bytes failed".to_string()
                ),
                (PluginLogLevel::Stdout, "out".to_string()),
                (PluginLogLevel::Stderr, "note: run with".to_string()),
            ]
        );
    }

    #[test]
    fn log_buffer_keeps_what_fits_then_marks_truncation_once() {
        let mut logs = LogBuffer::new(10);
        logs.push("p", PluginLogLevel::Info, "12345");
        logs.push("p", PluginLogLevel::Info, "6789abcdef");
        logs.push("p", PluginLogLevel::Info, "dropped");
        assert!(logs.truncated);
        let entries = logs.into_entries();
        let texts: Vec<&str> = entries.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(texts[..2], ["12345", "6789a"]);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].plugin, "hookd");
        assert!(entries[2].message.contains("truncated"));
    }

    #[test]
    fn limiter_sums_memories_and_records_refusal() {
        let mut limiter = Limiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 512 << 10, None).unwrap_or(false));
        assert!(limiter.memory_growing(0, 512 << 10, None).unwrap_or(false));
        assert!(!limiter.refused());
        assert!(
            !limiter
                .memory_growing(512 << 10, 576 << 10, None)
                .unwrap_or(true)
        );
        assert!(limiter.refused());
    }

    #[test]
    fn random_seeds_are_the_hmac_of_label_and_delivery_id() {
        let key = [7u8; 32];
        let expected: [u8; 32] = Hmac::<Sha256>::new_from_slice(&key)
            .map(|m| m.chain_update(b"label").chain_update(b"dlv_1").finalize())
            .map(|out| out.into_bytes().into())
            .unwrap_or_default();
        let random_key = RandomKey::new(&key);
        assert_eq!(random_key.seed(b"label", "dlv_1"), expected);
        // Keyed once, used many times: every seed starts from the same keyed state.
        assert_eq!(random_key.seed(b"label", "dlv_1"), expected);
        assert_ne!(random_key.seed(b"label", "dlv_2"), expected);
    }

    #[test]
    fn mac_is_lent_only_during_a_sign_hook() {
        use signing_key::Host as _;
        let mut state = StoreState::new(SandboxParams {
            plugin: Arc::from("p"),
            delivery_id: "dlv_1",
            attempt_time_ms: 0,
            memory_limit_bytes: 1 << 20,
            logs: Arc::new(Mutex::new(LogBuffer::new(100))),
            signing_secret: Arc::from(&b"key"[..]),
            random_key: &RandomKey::new(&[0; 32]),
        });
        let alg = signing_key::MacAlgorithm::HmacSha256;
        assert!(state.mac(alg, b"data".to_vec()).is_err());
        state.set_signing(true);
        let expected = Hmac::<Sha256>::new_from_slice(b"key")
            .map(|m| m.chain_update(b"data").finalize().into_bytes().to_vec())
            .ok();
        assert_eq!(state.mac(alg, b"data".to_vec()).ok(), expected);
        let sha512 = state.mac(signing_key::MacAlgorithm::HmacSha512, b"data".to_vec());
        assert_eq!(sha512.map(|m| m.len()).ok(), Some(64));
    }

    #[test]
    fn virtual_clock_only_moves_forward_when_slept() {
        let clock = VirtualClock::new(1_700_000_000_000);
        assert_eq!(
            HostWallClock::now(&clock),
            Duration::from_millis(1_700_000_000_000)
        );
        clock.advance_to(clock.now_ns() + 5_000);
        clock.advance_to(clock.now_ns() - 1_000); // the past: no change
        assert_eq!(
            HostMonotonicClock::now(&clock),
            1_700_000_000_000_000_000 + 5_000
        );
    }
}
