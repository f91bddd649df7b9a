//! The delivery runtime: the dispatcher and every attempt run on async workers of their own,
//! so that a long poll of a delivery never holds a worker that accepts events or serves the
//! API. It has two lanes of workers, one per core each:
//!
//! - `hookd-delivery`, at the API's priority: while the machine has spare CPU, every attempt
//!   starts here, so deliveries never wait behind other busy threads;
//! - `hookd-deliv-low`, at `[delivery] worker_nice` (default 5): while the machine's CPU is
//!   saturated (busy ≥ 95 % over a 200 ms sample, and for a second after), new attempts start
//!   here, so the kernel serves producers' 202s first and the durable deliveries trail.
//!
//! Measured before the lanes (e2e bench, the two fixed levels alternated, 22 runs each): all
//! deliveries at nice 5 made them wait behind every busy normal thread even at half load
//! (weights 335 : 1024; s6 e2e p99 median 13.4 ms, but 77-314 ms in 5 of 22 runs) while
//! buying fan-out ingest under saturation (s2 median 3,356 events/s); all at nice 0 kept s6's
//! tail (median 10.9 ms, worst 39 ms) and lost a quarter of s2's ingest (2,555/s). With the
//! lanes (4 runs alternated with both): s2 3,303/s, s6 p99 median 8.9 ms, worst 13 ms.
//!
//! Each lane sends with its own HTTP client (`DeliveryClient::send` picks it by the current
//! thread's lane), so a pooled connection's I/O task also runs at the priority of the lane
//! that opened it. An attempt stays on the lane it started on. `worker_nice = 0` gives a
//! single lane at the API's priority. A backlog that keeps growing meets ingest's optional
//! back-pressure (`[quotas] max_delivery_lag_secs`, `lag.rs`) either way. A lane's nice value
//! is fixed: an unprivileged process may raise its threads' nice but not lower it again, so
//! each level has threads of its own.
//!
//! The normal lane is a runtime of its own, not the API's. One runtime for both was measured
//! (e2e bench, 7 rounds alternated, same binary): in scenario 1 it saved context switches
//! (1.18 per event against 1.51) and idle cores (13 % against 17 %) for 7 % more deliveries/s
//! (medians 11.7k against 10.9k/s) at the same engine CPU per event; but in scenario 3 (a
//! plugin on every delivery, CPU-bound) deliveries fell behind ingest in all 7 rounds (e2e p50
//! 140-556 ms against 6-7 ms in 6 of 7) and the engine spent 17 µs more per delivery (medians
//! 191 against 174 µs). In 3 of those rounds the yielding lane never ran, so the lag is not the
//! lanes' doing: in one runtime the 32 producers' requests and 8 deliveries share two workers
//! by task readiness, and ingest took the larger share (8.9k-10.6k events/s accepted against
//! 6.9k-8.5k deliveries/s); as threads of their own, the kernel gives deliveries their share.
//! One worker per runtime (the API's and each lane's) was measured too (4 rounds alternated):
//! 1.18 context switches per event against 1.50 and 8 % less engine CPU per event in
//! scenario 1 (medians 89.5 against 97 µs) but as many idle cores (17 %) and no more
//! deliveries/s beyond the noise, while scenario 3's deliveries fell behind ingest in 2 of 4
//! rounds (e2e p50 88-102 ms): a lane of one worker cannot use both cores when deliveries need
//! them.
//!
//! The workers keep the normal scheduling policy. `SCHED_BATCH` for the whole engine was
//! measured (e2e bench scenario 1, 8 rounds alternated): a quarter fewer context switches per
//! event (1.88 to 1.3-1.6; the delivery workers preempted 0.35 to 0.1 times per event) and a
//! lower e2e p50, but the same engine CPU per event (median 181 µs both) and ~5 % fewer
//! deliveries/s.
//!
//! Guest calls that outlast one epoch tick finish on the plugin pool's threads, at
//! [`guest_nice`]: never above the deliveries' priority and at least [`MIN_GUEST_NICE`], so a
//! tenant's plugin looping to its deadline yields to every other tenant's deliveries and to
//! the API.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Handle, Runtime};

/// The default nice value of the yielding lane (`[delivery] worker_nice`; 0 is normal, the
/// API's priority, and leaves a single lane; 19 the lowest).
pub const DEFAULT_WORKER_NICE: i32 = 5;

/// The least nice value of the threads where guest calls that outlast a tick finish.
pub const MIN_GUEST_NICE: i32 = 5;

/// The nice value of the plugin pool's threads for a yielding lane at `worker_nice`.
pub fn guest_nice(worker_nice: i32) -> i32 {
    worker_nice.max(MIN_GUEST_NICE)
}

/// Share of the machine's CPU time busy over one sample at or above which it is saturated.
const SATURATED_BUSY: f64 = 0.95;
/// How often the machine's CPU time is read (`/proc/stat`).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How long the machine counts as saturated after its last saturated sample.
const HOLD_SATURATED: Duration = Duration::from_secs(1);

/// The lanes of delivery workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// At the API's priority.
    Normal,
    /// At `worker_nice`, while the CPU is saturated.
    Yielding,
}

thread_local! {
    static LANE: Cell<Lane> = const { Cell::new(Lane::Normal) };
}

impl Lane {
    /// The lane of the calling thread (`Normal` outside the delivery workers).
    pub fn current() -> Lane {
        LANE.with(Cell::get)
    }

    /// The lane's position in per-lane arrays (the delivery client's connection pools).
    pub fn index(self) -> usize {
        match self {
            Lane::Normal => 0,
            Lane::Yielding => 1,
        }
    }
}

/// Owns the delivery workers; shuts them down (without blocking) when dropped.
#[derive(Debug)]
pub struct DeliveryRuntime {
    normal: Option<Runtime>,
    yielding: Option<Runtime>,
    lanes: Lanes,
}

/// Where the next attempt starts: the handles of both lanes and whether the machine is
/// saturated (cheap to clone).
#[derive(Debug, Clone)]
pub struct Lanes {
    normal: Handle,
    yielding: Option<Handle>,
    saturated: Arc<AtomicBool>,
}

impl Lanes {
    /// The runtime the next attempt is spawned on.
    pub fn for_next_attempt(&self) -> &Handle {
        match &self.yielding {
            Some(yielding) if self.saturated.load(Ordering::Relaxed) => yielding,
            _ => &self.normal,
        }
    }
}

impl DeliveryRuntime {
    /// The lanes' workers, one per core each: the normal lane at nice 0, the yielding lane at
    /// `nice` (none if `nice` is 0), and the sampler that chooses between them, which tells
    /// `on_saturation` each time the machine starts or stops counting as saturated.
    pub fn start(
        nice: i32,
        on_saturation: impl Fn(bool) + Send + 'static,
    ) -> std::io::Result<Self> {
        let normal = lane_runtime("hookd-delivery", 0, Lane::Normal)?;
        let yielding = if nice > 0 {
            Some(lane_runtime("hookd-deliv-low", nice, Lane::Yielding)?)
        } else {
            None
        };
        let saturated = Arc::new(AtomicBool::new(false));
        if yielding.is_some() {
            normal.spawn(sample_saturation(saturated.clone(), on_saturation));
        }
        let lanes = Lanes {
            normal: normal.handle().clone(),
            yielding: yielding.as_ref().map(|r| r.handle().clone()),
            saturated,
        };
        Ok(Self {
            normal: Some(normal),
            yielding,
            lanes,
        })
    }

    /// The normal lane's runtime (the dispatcher runs there).
    pub fn handle(&self) -> &Handle {
        &self.lanes.normal
    }

    pub fn lanes(&self) -> Lanes {
        self.lanes.clone()
    }
}

fn lane_runtime(name: &str, nice: i32, lane: Lane) -> std::io::Result<Runtime> {
    Builder::new_multi_thread()
        .thread_name(name)
        .on_thread_start(move || {
            set_current_thread_nice(nice);
            LANE.with(|current| current.set(lane));
        })
        .enable_all()
        .build()
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
        for runtime in [self.normal.take(), self.yielding.take()]
            .into_iter()
            .flatten()
        {
            runtime.shutdown_background();
        }
    }
}

/// The machine's CPU time so far (`/proc/stat`'s first line, in clock ticks): busy and total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    /// From the text of `/proc/stat`: idle and iowait are free time; user, nice, system, irq,
    /// softirq and steal are busy (stolen time is not ours to use).
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().next()?;
        let mut fields = line.split_ascii_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        if ticks.len() < 8 {
            return None;
        }
        let total: u64 = ticks.iter().sum();
        let free = ticks[3] + ticks[4];
        Some(Self {
            busy: total - free,
            total,
        })
    }

    fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The busy share of the time between `earlier` and `self` (`None` if no time passed).
    fn busy_share_since(&self, earlier: &Self) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total).filter(|t| *t > 0)?;
        let busy = self.busy.saturating_sub(earlier.busy);
        Some(busy as f64 / total as f64)
    }
}

/// Whether the machine is saturated: since a sample at or above [`SATURATED_BUSY`], for
/// [`HOLD_SATURATED`] after the last one.
#[derive(Debug, Default)]
struct Saturation {
    last_saturated: Option<Instant>,
}

impl Saturation {
    fn observe(&mut self, busy_share: f64, now: Instant) -> bool {
        if busy_share >= SATURATED_BUSY {
            self.last_saturated = Some(now);
        }
        self.last_saturated
            .is_some_and(|at| now.duration_since(at) < HOLD_SATURATED)
    }
}

/// Shortest stretch of time a sample of the CPU may cover. `/proc/stat` counts in clock ticks
/// (10 ms per core): over a millisecond or two it reads either nothing or one tick, and a busy
/// tick then reads as "every core busy". That happened at start-up, when a first sample was
/// taken right after the first reading: in 9 of 38 runs of the e2e bench's s1 (at ~65 % of
/// two cores) the engine put its first second of attempts on the yielding lane; 0 of 28 since.
const MIN_SAMPLE: Duration = Duration::from_millis(100);

/// Turns readings of the CPU time into the saturated state, one sample at a time.
#[derive(Debug)]
struct Sampler {
    last: CpuTimes,
    last_at: Instant,
    saturation: Saturation,
}

impl Sampler {
    fn new(first: CpuTimes, at: Instant) -> Self {
        Self {
            last: first,
            last_at: at,
            saturation: Saturation::default(),
        }
    }

    /// Whether the machine counts as saturated after the reading `now` taken at `at`; `None`
    /// (nothing learned) while less than [`MIN_SAMPLE`] has passed since the sample's start.
    fn sample(&mut self, now: CpuTimes, at: Instant) -> Option<bool> {
        if at.saturating_duration_since(self.last_at) < MIN_SAMPLE {
            return None;
        }
        let busy = now.busy_share_since(&self.last)?;
        self.last = now;
        self.last_at = at;
        Some(self.saturation.observe(busy, at))
    }
}

/// Samples the machine's CPU every [`SAMPLE_EVERY`] into `saturated` (and tells `on_change`
/// when it flips), until its runtime shuts down. Where `/proc/stat` cannot be read the machine
/// never counts as saturated (one lane).
async fn sample_saturation(saturated: Arc<AtomicBool>, on_change: impl Fn(bool)) {
    let Some(first) = CpuTimes::read() else {
        return;
    };
    let mut sampler = Sampler::new(first, Instant::now());
    // The first sample a whole period after the first reading (`interval` ticks at once).
    let start = tokio::time::Instant::now() + SAMPLE_EVERY;
    let mut every = tokio::time::interval_at(start, SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(now) = CpuTimes::read() else {
            return;
        };
        if let Some(is) = sampler.sample(now, Instant::now())
            && saturated.swap(is, Ordering::Relaxed) != is
        {
            on_change(is);
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

    /// Runs `f` on `handle`'s workers and returns what it saw there.
    async fn on<T: Send + 'static>(handle: &Handle, f: fn() -> T) -> T {
        handle.spawn(async move { f() }).await.unwrap()
    }

    fn where_am_i() -> (Option<String>, i32, Lane) {
        let (name, nice) = thread_and_nice();
        (name, nice, Lane::current())
    }

    #[tokio::test]
    async fn each_lane_runs_at_its_priority_and_the_yielding_lane_takes_attempts_only_while_saturated()
     {
        for nice in [DEFAULT_WORKER_NICE, 0, 19] {
            let runtime = DeliveryRuntime::start(nice, |_| {}).unwrap();
            let lanes = runtime.lanes();
            assert_eq!(
                on(runtime.handle(), where_am_i).await,
                (Some("hookd-delivery".to_string()), 0, Lane::Normal)
            );
            match &lanes.yielding {
                Some(yielding) => {
                    assert!(nice > 0);
                    assert_eq!(
                        on(yielding, where_am_i).await,
                        (Some("hookd-deliv-low".to_string()), nice, Lane::Yielding)
                    );
                }
                None => assert_eq!(nice, 0, "a yielding lane below the API's priority"),
            }
            // The threads that accept events keep normal priority and are in no lane.
            assert_eq!(where_am_i().1, 0);
            assert_eq!(Lane::current(), Lane::Normal);

            // Attempts start on the normal lane unless the machine is saturated.
            lanes.saturated.store(false, Ordering::Relaxed);
            assert_eq!(
                on(lanes.for_next_attempt(), Lane::current).await,
                Lane::Normal
            );
            lanes.saturated.store(true, Ordering::Relaxed);
            let expected = if nice > 0 {
                Lane::Yielding
            } else {
                Lane::Normal
            };
            assert_eq!(on(lanes.for_next_attempt(), Lane::current).await, expected);

            // A task still running is simply dropped: no panic, no wait.
            runtime.handle().spawn(std::future::pending::<()>());
            drop(runtime);
        }
    }

    #[test]
    fn cpu_times_come_from_the_first_line_of_proc_stat() {
        let earlier = CpuTimes::parse(
            "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\nintr 1 2\n",
        )
        .unwrap();
        assert_eq!(
            earlier,
            CpuTimes {
                busy: 160,
                total: 1000
            }
        );
        let later = CpuTimes::parse("cpu  290 5 50 810 40 3 2 0 0 0\n").unwrap();
        assert_eq!(later.busy_share_since(&earlier), Some(0.95));
        assert_eq!(later.busy_share_since(&later), None);
        for bad in ["", "intr 1 2\n", "cpu 1 2 3\n", "cpu  1 2 x 4 5 6 7 8\n"] {
            assert_eq!(CpuTimes::parse(bad), None, "{bad:?}");
        }
        // This machine's own file parses (the engine runs on Linux).
        assert!(CpuTimes::read().is_some_and(|t| t.total > 0 && t.busy <= t.total));
    }

    #[test]
    fn saturation_holds_for_a_second_after_the_last_saturated_sample() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut saturation = Saturation::default();
        assert!(!saturation.observe(0.94, at(0)));
        assert!(saturation.observe(0.95, at(200)));
        assert!(saturation.observe(0.10, at(400)));
        assert!(saturation.observe(0.10, at(1_199)));
        assert!(!saturation.observe(0.10, at(1_200)));
        assert!(saturation.observe(1.0, at(1_400)));
        assert!(!saturation.observe(0.5, at(2_400)));
    }

    #[test]
    fn a_sample_shorter_than_the_minimum_tells_nothing() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let times = |busy, total| CpuTimes { busy, total };
        let mut sampler = Sampler::new(times(1_000, 2_000), at(0));
        // One busy tick 2 ms after the first reading: it is not "every core busy".
        assert_eq!(sampler.sample(times(1_001, 2_001), at(2)), None);
        // The sample goes on from the first reading: 21 busy ticks of 40 over 200 ms.
        assert_eq!(sampler.sample(times(1_021, 2_040), at(200)), Some(false));
        // A whole sample with every tick busy is saturated, and holds.
        assert_eq!(sampler.sample(times(1_061, 2_080), at(400)), Some(true));
        assert_eq!(sampler.sample(times(1_062, 2_081), at(401)), None);
        assert_eq!(sampler.sample(times(1_062, 2_120), at(600)), Some(true));
        // No tick counted at all in a long stretch: nothing learned either.
        assert_eq!(sampler.sample(times(1_062, 2_120), at(800)), None);
    }

    #[test]
    fn the_sampler_sees_every_cpu_busy_as_saturated() {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count()
            .max(1);
        let told = Arc::new(AtomicBool::new(false));
        let tell = told.clone();
        let runtime = DeliveryRuntime::start(DEFAULT_WORKER_NICE, move |is| {
            if is {
                tell.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
        let saturated = runtime.lanes().saturated;
        let stop = Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = (0..cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !told.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        for spinner in spinners {
            spinner.join().unwrap();
        }
        assert!(
            saturated.load(Ordering::Relaxed),
            "{cpus} threads spinning for 5 s did not read as saturated"
        );
        assert!(told.load(Ordering::Relaxed), "the change was not told");
        drop(runtime);
    }

    #[test]
    fn guest_threads_are_never_above_the_deliveries_and_at_least_min_guest_nice() {
        assert_eq!(guest_nice(DEFAULT_WORKER_NICE), MIN_GUEST_NICE);
        assert_eq!(guest_nice(MIN_GUEST_NICE), MIN_GUEST_NICE);
        assert_eq!(guest_nice(12), 12);
        assert_eq!(guest_nice(19), 19);
    }
}
