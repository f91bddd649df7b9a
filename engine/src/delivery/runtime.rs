//! The delivery runtime: the dispatcher and every attempt run on async workers of their own,
//! at a lower scheduling priority than the workers that accept events and serve the API.
//!
//! While the machine has spare CPU this changes nothing. When it is saturated (a fan-out
//! burst: every accepted event makes ten deliveries), the kernel gives the producers' path
//! the CPU first, so a 202 does not wait behind deliveries that are durable and can run a few
//! milliseconds later; the deliveries take the rest and catch up once the burst ends. The
//! price is paid under sustained saturation: producers that alone could fill the machine are
//! no longer slowed by the deliveries, so the deliveries trail them (e2e bench s1: e2e p50
//! 30-180 ms instead of 5-20, deliveries 87-100 % of the accepted rate instead of 98-100).
//! `[delivery] worker_nice = 0` chooses the other side: equal priority. A backlog that keeps
//! growing meets ingest's optional back-pressure (`[quotas] max_delivery_lag_secs`, `lag.rs`)
//! as before.

use tokio::runtime::{Builder, Handle, Runtime};

/// The default nice value of the delivery workers (`[delivery] worker_nice`; 0 is normal, 19
/// the lowest): against a busy normal-priority thread the kernel gives them about a third of a
/// core (weights 335 : 1024). 0 gives deliveries the API's priority, as before the split.
pub const DEFAULT_WORKER_NICE: i32 = 5;

/// Owns the delivery workers; shuts them down (without blocking) when dropped.
#[derive(Debug)]
pub struct DeliveryRuntime {
    runtime: Option<Runtime>,
}

impl DeliveryRuntime {
    /// One worker per core, as the main runtime has, each at `nice`.
    pub fn start(nice: i32) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .thread_name("hookd-delivery")
            .on_thread_start(move || set_current_thread_nice(nice))
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the delivery runtime lives until drop")
            .handle()
    }
}

/// Sets the calling thread's nice value (per thread on Linux). Where that is not permitted, the
/// thread keeps its priority.
pub(crate) fn set_current_thread_nice(nice: i32) {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice);
}

impl Drop for DeliveryRuntime {
    fn drop(&mut self) {
        // The engine may be dropped inside an async context, where a blocking shutdown panics.
        // By then its tasks have ended or been aborted (`RunningEngine::wait`).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_and_nice() -> (Option<String>, i32) {
        (
            std::thread::current().name().map(str::to_string),
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("a thread's own priority is readable"),
        )
    }

    #[tokio::test]
    async fn deliveries_run_on_their_own_lower_priority_workers_and_it_drops_inside_async_code() {
        for nice in [DEFAULT_WORKER_NICE, 0, 19] {
            let runtime = DeliveryRuntime::start(nice).unwrap();
            let (name, ran_at) = runtime
                .handle()
                .spawn(async { thread_and_nice() })
                .await
                .unwrap();
            assert_eq!(name.as_deref(), Some("hookd-delivery"));
            assert_eq!(ran_at, nice);
            // The workers that accept events keep normal priority.
            assert_eq!(thread_and_nice().1, 0);
            // A task still running is simply dropped: no panic, no wait.
            runtime.handle().spawn(std::future::pending::<()>());
            drop(runtime);
        }
    }
}
