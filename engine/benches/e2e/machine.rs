//! What this machine charges for the two things every engine thread does per event besides
//! its own work: waking another thread, and arming a short timer. Measured once per run, in
//! this process, before the scenarios, so the engine's CPU figures can be read against them:
//! on a VM these are often several times what they cost on bare metal, and the engine pays
//! them a few times per event and delivery.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
use rustix::time::{
    ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, clock_gettime,
    timerfd_create, timerfd_settime,
};

/// Round trips per wake-up figure, and samples per timer figure, in a measuring run (a smoke
/// run takes a few, only to exercise the probe: unoptimised, the timer's work alone is ~0.5 ms).
pub const SAMPLES: usize = 2_000;
/// Bytes read (one per cache line) per sample of the timer figure: ~15 µs of work here.
const WORK_BYTES: usize = 1 << 20;

/// The figures, µs.
pub struct Machine {
    /// A round trip between two threads (a wake-up each way) on two different cores: wall
    /// time and this process's CPU time per round trip.
    pub wake_cross_wall_us: f64,
    pub wake_cross_cpu_us: f64,
    /// The same with both threads on one core.
    pub wake_same_core_us: f64,
    /// What arming a 1 ms timer and cancelling it adds to ~15 µs of work (median), and the
    /// same for a 5 s timer (one that is not the core's next to expire).
    pub timer_1ms_us: f64,
    pub timer_5s_us: f64,
    /// The work alone (median).
    pub timer_work_us: f64,
}

impl Machine {
    /// Measures with `samples` round trips and timer samples per figure.
    pub fn measure(samples: usize) -> Self {
        let cores = allowed_cores();
        let (first, second) = (cores.first().copied(), cores.get(1).copied());
        // With one core allowed, "across cores" is left to the scheduler.
        let (wake_cross_wall_us, wake_cross_cpu_us) = wake_round_trip(first, second, samples);
        let (wake_same_core_us, _) = wake_round_trip(first, first, samples);
        let (timer_work_us, timer_1ms_us, timer_5s_us) = timer_cost(samples);
        Machine {
            wake_cross_wall_us,
            wake_cross_cpu_us,
            wake_same_core_us,
            timer_1ms_us,
            timer_5s_us,
            timer_work_us,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "info: machine: a wake-up round trip between two threads takes {:.1} µs ({:.1} µs of CPU) across cores, {:.1} µs on one core; arming and cancelling a 1 ms timer adds {:.1} µs to {:.1} µs of work ({:.1} µs for a 5 s timer, which is not the core's next to expire)",
            self.wake_cross_wall_us,
            self.wake_cross_cpu_us,
            self.wake_same_core_us,
            self.timer_1ms_us,
            self.timer_work_us,
            self.timer_5s_us
        )
    }

    pub fn json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 10.0).round() / 10.0;
        serde_json::json!({
            "wake_round_trip_cross_core_us": r(self.wake_cross_wall_us),
            "wake_round_trip_cross_core_cpu_us": r(self.wake_cross_cpu_us),
            "wake_round_trip_same_core_us": r(self.wake_same_core_us),
            "timer_1ms_arm_cancel_us": r(self.timer_1ms_us),
            "timer_5s_arm_cancel_us": r(self.timer_5s_us),
            "timer_work_us": r(self.timer_work_us),
        })
    }
}

fn process_cpu() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The cores this process may run on (empty if that cannot be read).
fn allowed_cores() -> Vec<usize> {
    let allowed = sched_getaffinity(None).unwrap_or_else(|_| CpuSet::new());
    (0..CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .collect()
}

fn pin(core: Option<usize>) {
    if let Some(core) = core {
        let mut set = CpuSet::new();
        set.set(core);
        // Best effort: unpinned, the threads run where the scheduler puts them.
        let _ = sched_setaffinity(None, &set);
    }
}

/// Wall and process CPU µs per round trip of a token between two threads over rendezvous
/// channels (each send wakes the other thread, parked on a futex), the measuring thread on
/// `core` and the other on `peer_core`.
fn wake_round_trip(core: Option<usize>, peer_core: Option<usize>, samples: usize) -> (f64, f64) {
    let (to_peer, peer_rx): (SyncSender<u32>, Receiver<u32>) = sync_channel(0);
    let (to_main, main_rx): (SyncSender<u32>, Receiver<u32>) = sync_channel(0);
    let peer = std::thread::spawn(move || {
        pin(peer_core);
        while let Ok(token) = peer_rx.recv() {
            if to_main.send(token).is_err() {
                break;
            }
        }
    });
    // Measured on a thread of its own, so the caller's affinity is left alone.
    let figures = std::thread::spawn(move || {
        pin(core);
        // Warm up (both threads started and parked once).
        for token in 0..50 {
            to_peer.send(token).expect("peer alive");
            main_rx.recv().expect("peer alive");
        }
        let (wall, cpu) = (Instant::now(), process_cpu());
        for token in 0..samples as u32 {
            to_peer.send(token).expect("peer alive");
            main_rx.recv().expect("peer alive");
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / samples as f64;
        (per(wall.elapsed()), per(process_cpu().saturating_sub(cpu)))
    })
    .join()
    .expect("wake-up probe");
    peer.join().expect("wake-up peer");
    figures
}

/// Median µs of a fixed piece of work, and what arming a timerfd before it and cancelling it
/// after adds, for a 1 ms timer and a 5 s one.
fn timer_cost(samples: usize) -> (f64, f64, f64) {
    let Ok(timer) = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC) else {
        return (f64::NAN, f64::NAN, f64::NAN);
    };
    let buffer = vec![1u8; WORK_BYTES];
    let work = || {
        let mut sum = 0u64;
        for chunk in buffer.chunks(64) {
            sum = sum.wrapping_add(u64::from(chunk[0]));
        }
        std::hint::black_box(sum);
    };
    let set = |after: Duration| {
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: after.as_secs() as _,
                tv_nsec: after.subsec_nanos() as _,
            },
        };
        let _ = timerfd_settime(&timer, TimerfdTimerFlags::empty(), &spec);
    };
    let median_us = |arm: Option<Duration>| {
        let mut times: Vec<f64> = (0..samples)
            .map(|_| {
                let started = Instant::now();
                if let Some(after) = arm {
                    set(after);
                }
                work();
                if arm.is_some() {
                    set(Duration::ZERO);
                }
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    // Alternate the three so that drift in the machine's speed hits each alike.
    let (mut bare, mut short, mut long) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        bare.push(median_us(None));
        short.push(median_us(Some(Duration::from_millis(1))));
        long.push(median_us(Some(Duration::from_secs(5))));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bare = median(bare);
    (bare, median(short) - bare, median(long) - bare)
}

/// Time the hypervisor gave this VM's CPUs to others ("steal" in `/proc/stat`) while a scenario
/// ran: a tail that coincides with it is the host's, not the engine's. Sampled every 10 ms on a
/// thread of its own (a `/proc/stat` read, a few µs each). The same samples give the machine's
/// idle and softirq shares over the run (softirq, loopback TCP, is also in the CPU time of the
/// processes it ran in).
pub struct CpuSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, CpuTicks)>>,
}

/// Steal during a run, in ms: all of it, and the most within any 100 ms; and the share of
/// every CPU's time that was idle and that went to softirq, in percent.
pub struct CpuShares {
    pub total_ms: f64,
    pub most_in_100ms_ms: f64,
    pub idle_pct: f64,
    pub softirq_pct: f64,
}

impl CpuSampler {
    pub fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(ticks) = CpuTicks::read() {
                    samples.push((Instant::now(), ticks));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        CpuSampler { stop, thread }
    }

    pub fn finish(self) -> CpuShares {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        // Clock ticks of 10 ms (USER_HZ 100, as `procs::cpu_seconds` reads them).
        let ms = |ticks: u64| ticks as f64 * 10.0;
        let (mut total, mut idle_pct, mut softirq_pct) = (0.0, 0.0, 0.0);
        if let (Some((_, first)), Some((_, last))) = (samples.first(), samples.last()) {
            total = ms(last.steal.saturating_sub(first.steal));
            let all = last.total.saturating_sub(first.total).max(1) as f64;
            idle_pct = 100.0 * last.idle.saturating_sub(first.idle) as f64 / all;
            softirq_pct = 100.0 * last.softirq.saturating_sub(first.softirq) as f64 / all;
        }
        let mut most = 0.0f64;
        let mut start = 0;
        for end in 0..samples.len() {
            while samples[end].0 - samples[start].0 > Duration::from_millis(100) {
                start += 1;
            }
            most = most.max(ms(samples[end]
                .1
                .steal
                .saturating_sub(samples[start].1.steal)));
        }
        CpuShares {
            total_ms: total,
            most_in_100ms_ms: most,
            idle_pct,
            softirq_pct,
        }
    }
}

/// Columns of `/proc/stat`'s first line (every CPU), in clock ticks.
#[derive(Clone, Copy)]
struct CpuTicks {
    /// idle + iowait.
    idle: u64,
    softirq: u64,
    steal: u64,
    /// Every column up to steal (guest time is counted in user already).
    total: u64,
}

impl CpuTicks {
    fn read() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let columns: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|c| c.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal
        let &[_, _, _, idle, iowait, _, softirq, steal] = columns.as_slice() else {
            return None;
        };
        Some(CpuTicks {
            idle: idle + iowait,
            softirq,
            steal,
            total: columns.iter().sum(),
        })
    }
}
