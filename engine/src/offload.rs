//! CPU work proportional to a body's size (parsing, rendering and signing JSON of up to tens of
//! MiB) runs off the async workers once the body passes [`INLINE_BYTES`], so one tenant's large
//! requests cannot stall the workers every other tenant's requests and deliveries run on. Small
//! bodies stay inline: a trip to another thread costs more than the work.
//!
//! Off the workers it is still CPU, so [`Offload`] bounds and ranks it:
//! - at most one core fewer than the machine has runs such work at once (`cores − 1`, at least
//!   one), in turns shared fairly between tenants (the same fair permits as deliveries,
//!   `delivery::permits`), so a tenant looping on large requests gets its share of those turns;
//! - it runs on threads of its own at a lower scheduling priority ([`LowPriorityThreads`],
//!   [`WORKER_NICE`]), so while the machine is busy the async workers (everyone's requests and
//!   deliveries) go first and the large jobs take what is left. (Tenants' plugin chains run at
//!   the delivery workers' priority instead: they are part of a delivery, `plugin/runtime.rs`.)

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::delivery::permits::FairPermits;

/// Bodies up to this size are handled on the async worker.
pub const INLINE_BYTES: usize = 64 * 1024;

/// Who large work is done for when no tenant is known yet (shared as one more tenant).
pub const ENGINE: &str = "";

/// The nice value of the offload threads (0 is normal, 19 the lowest priority): the kernel
/// gives them about a tenth of a core's time against a busy normal-priority thread.
pub const WORKER_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The engine's budget for large CPU work: fair turns and the threads that run them. Cheap to
/// clone; the threads end when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Offload {
    permits: FairPermits,
    threads: LowPriorityThreads,
}

impl Offload {
    /// `cores − 1` (at least one) threads and turns.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cores.saturating_sub(1).max(1);
        Offload {
            permits: FairPermits::new(threads),
            threads: LowPriorityThreads::new(threads, "hookd-offload"),
        }
    }

    /// Runs `work` (whose cost grows with `bytes`) for `tenant`: inline for a small body, else
    /// on an offload thread once the tenant's turn comes.
    pub async fn by_size<R, F>(&self, tenant: &str, bytes: usize, work: F) -> R
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        if bytes <= INLINE_BYTES {
            return work();
        }
        let _turn = self.permits.acquire(tenant, 1).await;
        self.threads.run(work).await
    }
}

impl Default for Offload {
    fn default() -> Self {
        Self::new()
    }
}

/// A fixed set of threads at [`WORKER_NICE`] priority running CPU-bound jobs (work a tenant
/// caused that everyone else's requests should not wait behind). Callers bound how many jobs
/// they hand it at once; a job beyond the thread count waits for a thread. Cheap to clone; the
/// threads end when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct LowPriorityThreads {
    jobs: Arc<Mutex<mpsc::Sender<Job>>>,
}

impl LowPriorityThreads {
    pub fn new(threads: usize, name: &str) -> Self {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || worker(&receiver))
                .expect("the low-priority threads start");
        }
        LowPriorityThreads {
            jobs: Arc::new(Mutex::new(sender)),
        }
    }

    /// Runs `work` on one of the threads and returns its result (a panic in it is resumed
    /// here).
    pub async fn run<R, F>(&self, work: F) -> R
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        match self.try_run(work).await {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Runs `work` on one of the threads: its result, or the panic that ended it.
    pub async fn try_run<R, F>(&self, work: F) -> std::thread::Result<R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = done.send(outcome);
        });
        // The threads end only when every sender is gone, and `self` holds one.
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job)
            .expect("the low-priority threads outlive their handles");
        result
            .await
            .expect("a low-priority thread answers every job")
    }
}

/// One low-priority thread: lowers its own priority, then runs jobs until the handles are gone.
fn worker(jobs: &Mutex<mpsc::Receiver<Job>>) {
    crate::delivery::runtime::set_current_thread_nice(WORKER_NICE);
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_work_runs_on_a_lower_priority_thread_and_small_work_inline() {
        let offload = Offload::new();
        let here = std::thread::current().id();
        let (thread, nice) = offload
            .by_size("t", INLINE_BYTES + 1, || {
                (
                    std::thread::current().name().map(str::to_string),
                    rustix::process::getpriority_process(Some(rustix::thread::gettid())),
                )
            })
            .await;
        assert_eq!(thread.as_deref(), Some("hookd-offload"));
        assert_eq!(nice.unwrap(), WORKER_NICE);
        let inline = offload
            .by_size("t", 10, move || std::thread::current().id())
            .await;
        assert_eq!(inline, here);
    }

    #[tokio::test]
    async fn a_panic_in_the_work_reaches_the_caller() {
        let offload = Offload::new();
        let caught = tokio::spawn(async move {
            offload
                .by_size("t", INLINE_BYTES + 1, || panic!("boom"))
                .await
        })
        .await;
        assert!(caught.unwrap_err().is_panic());
    }
}
