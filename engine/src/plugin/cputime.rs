//! CPU time spent in a future: the sum, over its polls, of the polling thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`), whichever threads poll it. A plugin chain's wall time includes
//! any time its thread was descheduled; this is what the chain itself cost.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// CPU nanoseconds accumulated by [`measured`] futures.
#[derive(Debug, Default)]
pub(crate) struct CpuTime {
    nanos: AtomicU64,
}

impl CpuTime {
    pub(crate) fn total(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// This thread's CPU time so far (a syscall of ~1 µs; not in the vDSO).
fn thread_cpu() -> Duration {
    let now = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// `job`, adding the CPU time of each of its polls to `into`.
pub(crate) fn measured<F: Future>(job: F, into: Arc<CpuTime>) -> Measured<F> {
    Measured {
        job: Box::pin(job),
        into,
    }
}

/// See [`measured`].
pub(crate) struct Measured<F> {
    job: Pin<Box<F>>,
    into: Arc<CpuTime>,
}

impl<F: Future> Future for Measured<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = thread_cpu();
        let polled = self.job.as_mut().poll(cx);
        let spent = thread_cpu().saturating_sub(started);
        self.into.nanos.fetch_add(
            u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns `amount` of this thread's CPU time.
    fn burn(amount: Duration) {
        let started = thread_cpu();
        while thread_cpu().saturating_sub(started) < amount {
            std::hint::black_box(0u64);
        }
    }

    #[tokio::test]
    async fn counts_the_cpu_of_every_poll_but_not_the_time_asleep() {
        let cpu = Arc::new(CpuTime::default());
        measured(
            async {
                burn(Duration::from_millis(10));
                tokio::time::sleep(Duration::from_millis(50)).await;
                burn(Duration::from_millis(10));
            },
            cpu.clone(),
        )
        .await;
        let total = cpu.total();
        assert!(
            total >= Duration::from_millis(20) && total < Duration::from_millis(40),
            "{total:?}"
        );
    }
}
