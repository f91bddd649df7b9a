//! Compiling an upload under bounds, so one tenant's uploads cannot stall another's:
//! - **before compiling**, the component's code is measured ([`check_code_bounds`]: functions
//!   over all its core modules, the largest function body) and refused past the bounds;
//! - **compile slots** ([`CompileGate`]): at most [`COMPILES_PER_TENANT`] compile per tenant and
//!   [`MAX_CONCURRENT_COMPILES`] in all; an upload waits for its tenant's slot, then the
//!   engine's, for at most `compile_wait` each and is otherwise refused as `compile_busy`. The
//!   API takes the tenant's slot before it reads the upload's body (a tenant's queued uploads
//!   cost the engine neither memory nor CPU) and the engine's once the body is in (a slow
//!   client cannot keep an engine slot from other tenants);
//! - **an abandonable compile** ([`compile_in_worker`]): cranelift cannot be stopped once it
//!   runs (wasmtime has no cancellation for `Component::new`; a thread cannot be killed), so the
//!   compile runs in a child `hookd plugin compile-worker` process that writes the shared
//!   compile cache and exits. Past `compile_timeout` the child is killed and the slot is free at
//!   once; on success the host loads the component from the cache without compiling.
//!   The worker runs one compile thread (`parallel_compilation` is off in every engine) at a
//!   lower scheduling priority ([`WORKER_NICE`]), so a compile never takes every core from the
//!   engine's async workers; a compile still running after [`LONG_COMPILE`] (a large
//!   component) moves to Linux's `SCHED_IDLE` policy (nice 19 where that is refused). A
//!   niced thread still keeps a core until its time slice ends when an engine thread wakes
//!   (a few ms per wake-up, measured as a doubled delivery p99 on two cores); an idle-policy
//!   thread gives it up at once. So a tenant compiling large components back to back leaves
//!   the CPU to the engine and to other tenants' small uploads (measured in
//!   `tests/fairness/compile_flood.rs`).
//!
//! Without a worker program (a host embedded in tests or benchmarks, see
//! [`HostOptions::compile_worker`](super::HostOptions)), the compile runs on the blocking pool
//! and a timed-out compile keeps its slot until it really ends.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::PluginLoadError;
use super::settings::{
    COMPILES_PER_TENANT, MAX_CONCURRENT_COMPILES, MAX_FUNCTION_BODY_BYTES, MAX_FUNCTIONS,
};

/// The worker process's nice value (0 is normal, 19 the lowest): the kernel then gives the
/// engine's threads the cores first while a compile runs.
pub(crate) const WORKER_NICE: i32 = 10;

/// How long a compile runs at [`WORKER_NICE`] before it moves to the `SCHED_IDLE` policy (or
/// [`LONG_COMPILE_NICE`]). The small plugins of `plugins/` compile in well under it.
pub(crate) const LONG_COMPILE: Duration = Duration::from_secs(1);
/// The nice value of a compile past [`LONG_COMPILE`] where the `SCHED_IDLE` policy is refused.
pub(crate) const LONG_COMPILE_NICE: i32 = 19;

/// The command line of the worker, after the program: `plugin compile-worker`.
pub const WORKER_ARGS: [&str; 2] = ["plugin", "compile-worker"];

/// Refuses a component with more than [`MAX_FUNCTIONS`] functions or a function body larger
/// than [`MAX_FUNCTION_BODY_BYTES`], over all the core modules it nests. A component that does
/// not parse is left to the compiler, which says why.
pub(crate) fn check_code_bounds(wasm: &[u8]) -> Result<(), PluginLoadError> {
    let mut functions = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(wasmparser::Payload::CodeSectionStart { count, .. }) => {
                functions = functions.saturating_add(count as usize);
                if functions > MAX_FUNCTIONS {
                    return Err(PluginLoadError::TooComplex(format!(
                        "it defines more than {MAX_FUNCTIONS} functions"
                    )));
                }
            }
            Ok(wasmparser::Payload::CodeSectionEntry(body)) => {
                let size = body.range().len();
                if size > MAX_FUNCTION_BODY_BYTES {
                    return Err(PluginLoadError::TooComplex(format!(
                        "a function body is {size} bytes, more than the {MAX_FUNCTION_BODY_BYTES} allowed"
                    )));
                }
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// The compile slots: one semaphore per tenant ([`COMPILES_PER_TENANT`]) and one for the
/// engine ([`MAX_CONCURRENT_COMPILES`]). Taking the tenant's first means a tenant's queued
/// uploads wait behind its own compile, never in the engine's queue ahead of other tenants.
pub(crate) struct CompileGate {
    engine: Arc<Semaphore>,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A compile slot of a tenant, given back when dropped.
pub(crate) struct TenantSlot {
    _permit: OwnedSemaphorePermit,
}

/// A compile slot of a tenant and of the engine, given back when dropped.
pub(crate) struct CompilePermit {
    _tenant: TenantSlot,
    _engine: OwnedSemaphorePermit,
}

fn busy(wait: Duration) -> PluginLoadError {
    PluginLoadError::CompileBusy {
        retry_after: wait.max(Duration::from_secs(1)),
    }
}

fn closed(_: tokio::sync::AcquireError) -> PluginLoadError {
    PluginLoadError::invalid("the plugin host is shutting down")
}

impl CompileGate {
    pub(crate) fn new() -> Self {
        Self {
            engine: Arc::new(Semaphore::new(MAX_CONCURRENT_COMPILES)),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn tenant(&self, tenant: &str) -> Arc<Semaphore> {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(COMPILES_PER_TENANT)))
            .clone()
    }

    /// Waits at most `wait` for a compile slot of `tenant`; `compile_busy` (retry after
    /// `wait`, at least a second) if none freed up.
    pub(crate) async fn tenant_slot(
        &self,
        tenant: &str,
        wait: Duration,
    ) -> Result<TenantSlot, PluginLoadError> {
        tokio::time::timeout(wait, self.tenant(tenant).acquire_owned())
            .await
            .map_err(|_| busy(wait))?
            .map(|permit| TenantSlot { _permit: permit })
            .map_err(closed)
    }

    /// With the tenant's slot, waits at most `wait` for one of the engine's.
    pub(crate) async fn engine_slot(
        &self,
        tenant: TenantSlot,
        wait: Duration,
    ) -> Result<CompilePermit, PluginLoadError> {
        let engine = tokio::time::timeout(wait, self.engine.clone().acquire_owned())
            .await
            .map_err(|_| busy(wait))?
            .map_err(closed)?;
        Ok(CompilePermit {
            _tenant: tenant,
            _engine: engine,
        })
    }

    /// Both slots, each within `wait`.
    #[cfg(test)]
    pub(crate) async fn acquire(
        &self,
        tenant: &str,
        wait: Duration,
    ) -> Result<CompilePermit, PluginLoadError> {
        let slot = self.tenant_slot(tenant, wait).await?;
        self.engine_slot(slot, wait).await
    }
}

/// Compiles `wasm` in a child `program plugin compile-worker` process that stores the result in
/// the compile cache at `cache_dir` (built with the same engine settings as this host's, so
/// the host's next load of `wasm` is a cache hit). The child is killed past `timeout`, and if
/// this future is dropped (the client went away).
pub(crate) async fn compile_in_worker(
    program: &Path,
    cache_dir: &Path,
    fuel: bool,
    wasm: &[u8],
    timeout: Duration,
) -> Result<(), PluginLoadError> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(WORKER_ARGS)
        .arg("--cache-dir")
        .arg(cache_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if fuel {
        command.arg("--fuel");
    }
    let run = async {
        let mut child = command.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            // A worker that exits early (it refused the input) closes the pipe: its exit
            // status and message below say why.
            let _ = stdin.write_all(wasm).await;
        }
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(timeout, run).await {
        // Dropping `run` dropped the child: killed (and reaped by tokio in the background).
        Err(_) => {
            return Err(PluginLoadError::invalid(format!(
                "compiling took longer than {} ms",
                timeout.as_millis()
            )));
        }
        Ok(Err(error)) => {
            tracing::error!(program = %program.display(), %error, "cannot run the plugin compile worker");
            return Err(PluginLoadError::Storage(format!(
                "cannot run the plugin compiler: {error}"
            )));
        }
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(());
    }
    let message = String::from_utf8_lossy(&output.stderr);
    let mut message = message.trim();
    if message.len() > MAX_WORKER_MESSAGE_BYTES {
        let mut end = MAX_WORKER_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message = &message[..end];
    }
    Err(PluginLoadError::invalid(if message.is_empty() {
        format!("the compiler stopped ({})", output.status)
    } else {
        message.to_owned()
    }))
}

/// Longest reason taken from a worker's output (the tenant reads it in the upload's answer).
const MAX_WORKER_MESSAGE_BYTES: usize = 4096;

/// The worker's side: reads one component from `input` and compiles it with `engine` (whose
/// compile cache stores it) on a thread of its own at [`WORKER_NICE`], moved to the idle
/// policy once the compile has run for [`LONG_COMPILE`]. `Err` is the message for the host
/// (the upload's `plugin_invalid` reason).
pub(crate) fn run_worker(
    engine: &wasmtime::Engine,
    mut input: impl std::io::Read,
) -> Result<(), String> {
    use std::os::unix::thread::JoinHandleExt as _;
    use std::sync::mpsc::RecvTimeoutError;

    let mut wasm = Vec::new();
    input
        .read_to_end(&mut wasm)
        .map_err(|e| format!("cannot read the component: {e}"))?;
    let engine = engine.clone();
    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let (done_tx, done) = std::sync::mpsc::sync_channel(1);
    let compile = std::thread::Builder::new()
        .name("compile".into())
        .spawn(move || {
            let tid = rustix::thread::gettid();
            let _ = rustix::process::setpriority_process(Some(tid), WORKER_NICE);
            let _ = started_tx.send(tid);
            let compiled = wasmtime::component::Component::new(&engine, &wasm)
                .map(drop)
                .map_err(|e| format!("does not compile: {e:#}"));
            let _ = done_tx.send(compiled);
        })
        .map_err(|e| format!("cannot start the compile thread: {e}"))?;
    let stopped = || "the compile thread stopped".to_string();
    let tid = started.recv().map_err(|_| stopped())?;
    match done.recv_timeout(LONG_COMPILE) {
        Ok(compiled) => return compiled,
        Err(RecvTimeoutError::Disconnected) => return Err(stopped()),
        Err(RecvTimeoutError::Timeout) => {}
    }
    if !set_idle_policy(compile.as_pthread_t()) {
        let _ = rustix::process::setpriority_process(Some(tid), LONG_COMPILE_NICE);
    }
    done.recv().map_err(|_| stopped())?
}

/// Moves `thread` (of this process) to the `SCHED_IDLE` policy; `false` where that is refused.
fn set_idle_policy(thread: std::os::unix::thread::RawPthread) -> bool {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_schedule_policy_param,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    // The crate also sets the calling thread's nice value to the policy's (0, this thread's
    // own), after the policy; so the policy is read back rather than trusted from the result.
    let _ = set_thread_priority_and_policy(thread, thread_priority::ThreadPriority::Min, idle);
    thread_schedule_policy_param(thread).is_ok_and(|(policy, _)| policy == idle)
}
