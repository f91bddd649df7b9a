//! A full or read-only data dir: ingest answers 503 with a stable code and never a false
//! 202, `/readyz` says why, reads keep working, and ingest resumes when space returns, all
//! without a restart. The disk is real: a size-limited tmpfs mounted for the test (the test
//! machine and CI run as root in a container, where `mount -t tmpfs` works) and filled with
//! a real file until writes fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::crash::{spawn_hookd, wait_with_timeout};
use crate::support::{TestEngine, parse_config, test_config_toml};

/// Size of the test file system and the reserve the engine keeps free on it.
const TMPFS_SIZE: &str = "48m";
const RESERVE_BYTES: u64 = 16 * 1024 * 1024;

/// A tmpfs mounted on a fresh temp dir; unmounted on drop.
struct SmallDisk {
    root: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> SmallDisk {
        let root = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
            .arg(root.path())
            .output()
            .expect("runs mount");
        assert!(
            out.status.success(),
            "this test mounts a {TMPFS_SIZE} tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { root }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// Writes a filler file until the file system refuses (ENOSPC), then frees `leave`
    /// bytes of it. Returns the filler's path.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(err) => {
                    assert_eq!(err.raw_os_error(), Some(28), "expected ENOSPC: {err}");
                    break;
                }
            }
        }
        file.set_len(written.saturating_sub(leave)).unwrap();
        file.sync_all().unwrap();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.root.path())
            .status();
    }
}

fn config_text(data: &Path, reserve: u64) -> String {
    format!(
        "{}\n[limits]\nmin_free_disk_bytes = {reserve}\n",
        test_config_toml(data, "", true)
    )
}

async fn start(data: &Path, reserve: u64) -> TestEngine {
    // The engine's own temp dir is unused: the data lives on the small disk.
    TestEngine::start_in(
        tempfile::tempdir().unwrap(),
        parse_config(&config_text(data, reserve)),
    )
    .await
}

async fn ingest(engine: &TestEngine, n: u32) -> (u16, Value) {
    engine
        .post(
            "/v1/events",
            json!({"type": "user.created", "payload": {"n": n}}),
        )
        .await
}

async fn event_numbers(engine: &TestEngine) -> Vec<u64> {
    let (status, page) = engine.get("/v1/events?limit=250").await;
    assert_eq!(status, 200, "{page}");
    let mut numbers: Vec<u64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["n"].as_u64().unwrap())
        .collect();
    numbers.sort_unstable();
    numbers
}

#[tokio::test]
async fn a_full_data_dir_refuses_ingest_with_503_storage_full_and_recovers_when_space_returns() {
    let disk = SmallDisk::mount();
    let data = disk.path().join("data");
    let engine = start(&data, RESERVE_BYTES).await;
    assert_eq!(ingest(&engine, 1).await.0, 202);

    // Someone else fills the disk; half the reserve is left.
    let filler = disk.fill_leaving(RESERVE_BYTES / 2);
    for n in 2..=4 {
        let (status, err) = ingest(&engine, n).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (503, Some("storage_full")),
            "{err}"
        );
    }
    let (status, ready) = engine.get("/readyz").await;
    assert_eq!(
        (status, ready["code"].as_str()),
        (503, Some("storage_full"))
    );
    // Reads still work.
    assert_eq!(event_numbers(&engine).await, vec![1]);
    let (status, _) = engine.get("/v1/stats").await;
    assert_eq!(status, 200);

    // Space returns: ingest resumes in the same process.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(ingest(&engine, 5).await.0, 202);
    let (status, _) = engine.get("/readyz").await;
    assert_eq!(status, 200);

    // What was acknowledged is on disk, and only that.
    let mut engine = engine;
    engine.engine.take().unwrap().shutdown().await;
    let engine = start(&data, RESERVE_BYTES).await;
    assert_eq!(event_numbers(&engine).await, vec![1, 5]);
    engine.engine.unwrap().shutdown().await;
}

/// A file system that turns read-only under a running store (ext4's `errors=remount-ro`)
/// cannot be staged with `mount -o remount,ro` while sled holds files open for writing
/// (EBUSY). So a read-only tmpfs is mounted over the data dir path: what the engine checks
/// before each commit (`statvfs` of the data dir) sees a real read-only file system, while
/// sled's open files stay where they were. Unmounting it makes the path writable again.
#[tokio::test]
async fn a_read_only_data_dir_refuses_ingest_with_503_storage_read_only_until_writable_again() {
    let disk = SmallDisk::mount();
    let data = disk.path().join("data");
    let engine = start(&data, RESERVE_BYTES).await;
    assert_eq!(ingest(&engine, 1).await.0, 202);

    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, err) = ingest(&engine, 2).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (503, Some("storage_read_only")),
        "{err}"
    );
    let (status, ready) = engine.get("/readyz").await;
    assert_eq!(
        (status, ready["code"].as_str()),
        (503, Some("storage_read_only"))
    );
    assert_eq!(event_numbers(&engine).await, vec![1]);

    assert!(
        Command::new("umount")
            .arg(&data)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(ingest(&engine, 3).await.0, 202);
    let mut engine = engine;
    engine.engine.take().unwrap().shutdown().await;
    let engine = start(&data, RESERVE_BYTES).await;
    assert_eq!(event_numbers(&engine).await, vec![1, 3]);
    engine.engine.unwrap().shutdown().await;
}

/// Without the reserve, sled itself meets the full disk: ingest must never answer 202 for an
/// event it could not make durable, nor panic or hang, and the engine must keep answering.
/// sled 0.34 keeps that I/O error (its later flushes never return), so hookd refuses events
/// until a restart and `/readyz` says so. Runs the real binary: after such a failure hookd
/// leaks its store handle to stop in bounded time, which keeps the data dir locked for the
/// rest of the process, so the restart must be a new process, as it would be in production.
#[tokio::test]
async fn without_a_reserve_sled_meeting_a_full_disk_gives_503_never_a_false_202() {
    let disk = SmallDisk::mount();
    let data = disk.path().join("data");
    let config = disk.path().join("hookd.toml");
    std::fs::write(&config, config_text(&data, 0)).unwrap();
    let http = reqwest::Client::new();
    let post = |base: String, body: Value| {
        let http = http.clone();
        async move {
            let response = http
                .post(format!("{base}/v1/events"))
                .bearer_auth(crate::support::ACME_KEY)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("hookd answers within 30 s");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (mut child, base) = spawn_hookd(&config, &data);
    let (status, _) = post(
        base.clone(),
        json!({"type": "user.created", "payload": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 202);
    let filler = disk.fill_leaving(0);
    // Events big enough that sled must grow its files.
    let pad = "x".repeat(256 * 1024);
    let mut acked = vec![1u64];
    let mut refused = 0;
    for n in 2..=12u64 {
        let body = json!({"type": "user.created", "payload": {"n": n, "pad": pad}});
        match post(base.clone(), body).await {
            (202, _) => acked.push(n),
            (503, err) => {
                assert_eq!(err["code"], "store_unavailable", "{err}");
                refused += 1;
            }
            (other, err) => panic!("unexpected {other}: {err}"),
        }
    }
    assert!(refused > 0, "a full disk refused nothing");
    std::fs::remove_file(&filler).unwrap();
    // Space is back, but this process refuses at once (no hang) and says why.
    let started = std::time::Instant::now();
    let (status, err) = post(base.clone(), json!({"type": "user.created", "payload": {}})).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (503, Some("store_unavailable")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["code"], "not_ready", "{ready}");
    // SIGTERM stops it in bounded time (no flush that never returns).
    let stopping = std::time::Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_with_timeout(&mut child, Duration::from_secs(30));
    eprintln!(
        "failed store: SIGTERM to exit {:?} ({exit})",
        stopping.elapsed()
    );

    // A new process recovers every acknowledged event and takes new ones.
    let (mut child, base) = spawn_hookd(&config, &data);
    let page: Value = http
        .get(format!("{base}/v1/events?limit=250"))
        .bearer_auth(crate::support::ACME_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: Vec<u64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["n"].as_u64().unwrap_or(0))
        .collect();
    for n in &acked {
        assert!(stored.contains(n), "acked event {n} lost: {stored:?}");
    }
    eprintln!("full disk without reserve: acked {acked:?}, refused {refused}, stored {stored:?}");
    let (status, _) = post(
        base.clone(),
        json!({"type": "user.created", "payload": {"n": 99}}),
    )
    .await;
    assert_eq!(status, 202);
    let _ = child.kill();
    let _ = child.wait();
}
