//! CPU time spent in a future: the sum, over its polls, of the polling thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`), whichever threads poll it. A plugin chain's wall time includes
//! any time its thread was descheduled; this is what the chain itself cost.
//!
//! Reading that clock is a syscall that takes the scheduler's run-queue lock: two reads cost
//! ~3 µs, 1.2 % of the engine's CPU at the e2e bench's plugin load (perf, scenario 3). So a
//! [`Sampler`] picks which runs are measured: every [`SAMPLE_EVERY`]th run, and any run that
//! starts after [`QUIET_GAP`] without a measured one (so a quiet engine measures every run).
//! Counting, not timing, picks the runs under load: "the first run after each millisecond"
//! was tried and measured chains ~40 % dearer than the rest, because it favours runs that
//! follow an idle gap, whose caches are cold.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

/// Under load, one run in this many is measured.
pub(crate) const SAMPLE_EVERY: u64 = 8;
/// A run that starts this long after the last measured one is measured too.
pub(crate) const QUIET_GAP: Duration = Duration::from_millis(5);

/// Picks the runs whose CPU time is measured (see the module doc).
#[derive(Debug)]
pub(crate) struct Sampler {
    origin: Instant,
    runs: AtomicU64,
    /// When the last measured run started: nanoseconds after `origin`.
    last: AtomicU64,
}

impl Sampler {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            runs: AtomicU64::new(0),
            last: AtomicU64::new(0),
        }
    }

    /// Whether the run starting now is measured; if so, it gets the CPU meter to fill.
    pub(crate) fn take(&self) -> Option<Arc<CpuTime>> {
        self.take_at(self.origin.elapsed())
    }

    /// [`take`](Self::take) for a run starting `now` after the sampler was made.
    fn take_at(&self, now: Duration) -> Option<Arc<CpuTime>> {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let gap = now.saturating_sub(self.last.load(Ordering::Relaxed));
        let quiet_gap = u64::try_from(QUIET_GAP.as_nanos()).unwrap_or(u64::MAX);
        if !run.is_multiple_of(SAMPLE_EVERY) && gap < quiet_gap {
            return None;
        }
        // Racing runs may both store: either time will do.
        self.last.store(now, Ordering::Relaxed);
        Some(Arc::new(CpuTime::default()))
    }
}

/// `job`, adding the CPU time of each of its polls to `into` when there is one (a run the
/// [`Sampler`] picked); otherwise `job` as it is, at no cost.
pub(crate) fn measured<F: Future>(job: F, into: Option<Arc<CpuTime>>) -> Measured<F> {
    Measured {
        job: Box::pin(job),
        into,
    }
}

/// See [`measured`].
pub(crate) struct Measured<F> {
    job: Pin<Box<F>>,
    into: Option<Arc<CpuTime>>,
}

impl<F: Future> Future for Measured<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `Measured` is `Unpin`: the job is pinned in its own box.
        let this = self.get_mut();
        let Some(into) = &this.into else {
            return this.job.as_mut().poll(cx);
        };
        let started = thread_cpu();
        let polled = this.job.as_mut().poll(cx);
        let spent = thread_cpu().saturating_sub(started);
        into.nanos.fetch_add(
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
            Some(cpu.clone()),
        )
        .await;
        let total = cpu.total();
        assert!(
            total >= Duration::from_millis(20) && total < Duration::from_millis(40),
            "{total:?}"
        );
    }

    #[test]
    fn the_sampler_measures_one_run_in_eight_under_load_and_every_run_of_a_quiet_engine() {
        let sampler = Sampler::new();
        // Under load (a run every 100 µs): runs 0, 8, 16, … are measured.
        let measured: Vec<u64> = (0..32)
            .filter(|&i| sampler.take_at(Duration::from_micros(100 * i)).is_some())
            .collect();
        assert_eq!(measured, vec![0, 8, 16, 24]);
        // Quiet (a run every 10 ms): each one.
        let quiet = (1..=20)
            .filter(|&i| sampler.take_at(Duration::from_millis(10 * i)).is_some())
            .count();
        assert_eq!(quiet, 20);
        // The real clock: the first run of a new sampler is measured.
        assert!(Sampler::new().take().is_some());
    }
}
