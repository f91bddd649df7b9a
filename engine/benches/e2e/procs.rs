//! Child processes of the bench (the real release `hookd`, the receiver and relay roles), killed by
//! pid when dropped, and what `/proc` says about them (CPU seconds, peak RSS).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hookd::config::hash_api_key;

pub const API_KEY: &str = "bench-key";

/// The engine binary (`--engine PATH`; default: the release `hookd` of this build).
pub static ENGINE: OnceLock<PathBuf> = OnceLock::new();

fn engine_binary() -> &'static Path {
    ENGINE.get_or_init(|| PathBuf::from(env!("CARGO_BIN_EXE_hookd")))
}

/// A child process killed (SIGKILL, by its pid) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    _stdin: Option<ChildStdin>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9 and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts this bench binary again in the receiver role; returns it with its base URL.
pub fn spawn_receiver() -> (Proc, String) {
    spawn_role(&["--receiver"], "RECEIVER")
}

/// Starts this bench binary again as a bare relay to `target`; returns it with its base URL.
pub fn spawn_relay(target: &str) -> (Proc, String) {
    spawn_role(&["--relay", target], "RELAY")
}

/// This bench binary again with `args`; it prints `<label> <address>` once it listens
/// ([`serve_role`]), and exits when its stdin (held by the returned [`Proc`]) closes.
fn spawn_role(args: &[&str], label: &str) -> (Proc, String) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("{args:?} starts: {err}"));
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap_or_else(|err| panic!("{args:?} prints its address: {err}"));
    let addr = line
        .trim()
        .strip_prefix(label)
        .map(str::trim_start)
        .unwrap_or_else(|| panic!("unexpected line {line:?} from {args:?}"))
        .to_string();
    (
        Proc {
            child,
            _stdin: stdin,
        },
        format!("http://{addr}"),
    )
}

/// Serves `app` on 127.0.0.1:0 as a role of this binary: prints `<label> <address>` for
/// [`spawn_role`], then serves until the parent closes this process's stdin (a bench that
/// dies takes its children with it).
pub async fn serve_role(label: &str, app: axum::Router) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    println!("{label} {}", listener.local_addr().expect("address"));
    let parent_gone = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    });
    tokio::select! {
        served = axum::serve(listener, app) => served.expect("serve"),
        _ = parent_gone => {}
    }
}

/// The tenant's quotas, raised so that they are not what the bench measures (32 producers
/// exceed the default 1,000 requests/s; scenario 5 holds a million pending deliveries).
/// Left out for an `--engine` of another build unless `BENCH_QUOTAS=1` says it has quotas
/// (a release before them refuses the section).
const BENCH_QUOTAS: &str = r#"
[quotas]
api_requests_per_sec = 1000000
api_burst = 1000000
pending_deliveries = 100000000
stored_bytes = 1099511627776
"#;

/// The engine's config: one tenant, loopback allowed, each webhook at the default in-flight
/// cap (8), the engine-wide cap and the tenant's quotas generous enough that they are not what
/// the bench measures.
pub fn write_config(dir: &Path, data: &Path, attempt_timeout: &str) -> PathBuf {
    let this_build = engine_binary() == Path::new(env!("CARGO_BIN_EXE_hookd"))
        || std::env::var_os("BENCH_QUOTAS").is_some_and(|v| v == "1");
    let quotas = if this_build { BENCH_QUOTAS } else { "" };
    let text = format!(
        r#"
data_dir = "{data}"
[delivery]
retry_schedule = ["1s", "2s", "5s", "10s"]
attempt_timeout = "{attempt_timeout}"
max_in_flight = 1024
[ssrf]
allow_http = true
allow = ["127.0.0.1/32"]
[security]
secret_key = "ZTJlLWJlbmNoLXNlY3JldC1rZXktZm9yLWhvb2tkISE="
{quotas}
[[tenants]]
id = "bench"
api_keys = ["sha256:{key}"]
"#,
        data = data.display(),
        key = hex::encode(hash_api_key(API_KEY)),
    );
    let path = dir.join("hookd.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts the release `hookd serve` on a free loopback port and waits until `/healthz`
/// answers (at most 60 s). Its log (level warn) goes to `<dir>/hookd.log`.
pub async fn spawn_engine(
    dir: &Path,
    config: &Path,
    data: &Path,
    http: &reqwest::Client,
) -> (Proc, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hookd.log"))
        .expect("log file");
    let child = Command::new(engine_binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(config)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("hookd starts");
    let proc = Proc {
        child,
        _stdin: None,
    };
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return (proc, base);
        }
        if Instant::now() > deadline {
            let tail = std::fs::read_to_string(dir.join("hookd.log")).unwrap_or_default();
            panic!("hookd did not answer /healthz within 60 s; log:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// utime + stime of a process in seconds (clock ticks of 100 Hz, Linux's USER_HZ).
pub fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat_cpu_seconds(&stat))
        .unwrap_or(0.0)
}

/// Each live thread of a process as its role and the text of `file` in its `/proc` task
/// directory; the role is the thread's name without its trailing number (`sled-io-3` →
/// `sled-io`).
fn thread_files(pid: u32, file: &str) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let text = std::fs::read_to_string(task.path().join(file)).ok()?;
            let role = name
                .trim_end()
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
            Some((role.to_string(), text))
        })
        .collect()
}

/// CPU seconds of a process's live threads by role ([`thread_files`]).
pub fn cpu_seconds_by_thread(pid: u32) -> BTreeMap<String, f64> {
    let mut by_role = BTreeMap::new();
    for (role, stat) in thread_files(pid, "stat") {
        *by_role.entry(role).or_insert(0.0) += stat_cpu_seconds(&stat);
    }
    by_role
}

/// Context switches of a process's live threads by role ([`thread_files`]): `[all,
/// involuntary]`, where involuntary means the thread was preempted rather than waiting.
pub fn switches_by_thread(pid: u32) -> BTreeMap<String, [u64; 2]> {
    let mut by_role = BTreeMap::new();
    for (role, status) in thread_files(pid, "status") {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (voluntary, involuntary) = (
            field("voluntary_ctxt_switches:"),
            field("nonvoluntary_ctxt_switches:"),
        );
        let counts = by_role.entry(role).or_insert([0, 0]);
        counts[0] += voluntary + involuntary;
        counts[1] += involuntary;
    }
    by_role
}

/// utime + stime of a `/proc/.../stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> f64 {
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields after "(comm)": state is index 0, utime is field 14 overall → index 11.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// A `Vm*` line of /proc/<pid>/status in MiB (VmHWM = peak RSS, VmRSS = now).
pub fn vm_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// Disk space a directory tree uses, in MiB (allocated blocks).
pub fn dir_mib(path: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(path: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(path) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.blocks() * 512,
                Err(_) => 0,
            })
            .sum()
    }
    walk(path) as f64 / (1024.0 * 1024.0)
}
