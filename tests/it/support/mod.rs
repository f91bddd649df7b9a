//! Test harness: a real engine in-process on 127.0.0.1:0 with a temp data dir, a real HTTP
//! receiver whose behaviour can change mid-test, and bounded polling.
//!
//! The store backend comes from `HOOKD_TEST_BACKEND`: `sled` (default) or `postgres`, which
//! needs `HOOKD_TEST_POSTGRES_URL` (a server `scripts/test.sh` starts). Under `postgres` every
//! data dir gets a database of its own, named after the dir, so a restart on the same data dir
//! finds the same database.

#![allow(dead_code)]

pub mod browser;
pub mod postgres;
pub mod receiver;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use hookd::RunningEngine;
use hookd::config::{Config, hash_api_key};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use receiver::Receiver;

pub const ACME_KEY: &str = "acme-test-key";
pub const GLOBEX_KEY: &str = "globex-test-key";
/// `[security] secret_key` of test configs (base64 of 32 bytes).
pub const TEST_SECRET_KEY: &str = "dGVzdC1zZWNyZXQta2V5LWZvci1ob29rZC10ZXN0cyE=";

/// The bytes of `plugins/dist/<name>.wasm`, building the components once if needed.
pub fn wasm(name: &str) -> Vec<u8> {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let dist = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/dist");
    BUILT.get_or_init(|| {
        if !std::path::Path::new(&format!("{dist}/json-filter.wasm")).exists() {
            let status = std::process::Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../plugins/build.sh"
            ))
            .status()
            .expect("plugins/build.sh runs");
            assert!(status.success(), "plugins/build.sh failed");
        }
    });
    std::fs::read(format!("{dist}/{name}.wasm")).unwrap_or_else(|e| panic!("{name}.wasm: {e}"))
}

/// `component` made distinct by a custom section holding `tag` appended at its end: the same
/// plugin, with a hash the compile cache has never seen (so installing it compiles it).
pub fn distinct(component: &[u8], tag: &str) -> Vec<u8> {
    let leb = |mut n: usize, out: &mut Vec<u8>| loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    let name = b"hookd-test";
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // a custom section
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// The UTC date (`YYYY-MM-DD`) of a time in ms since the epoch, `days` days later (or earlier).
pub fn utc_date(ms: u64, days: i64) -> String {
    let at = ms.saturating_add_signed(days * 86_400_000);
    hookd::ids::rfc3339(at)[..10].to_string()
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Config text for tests: two tenants, millisecond retries, loopback allowed.
pub fn test_config_toml(data_dir: &Path, extra_delivery: &str, allow_loopback: bool) -> String {
    test_config_toml_with(data_dir, extra_delivery, allow_loopback, "")
}

/// [`test_config_toml`] with more keys for the `[plugins]` table. Plugin budgets are generous
/// by default: tests assert what a plugin did, not how fast a loaded machine ran it (the
/// deadline's own tests set it explicitly).
pub fn test_config_toml_with(
    data_dir: &Path,
    extra_delivery: &str,
    allow_loopback: bool,
    extra_plugins: &str,
) -> String {
    let plugin_defaults: String = [r#"deadline = "1s""#, r#"compile_timeout = "5m""#]
        .iter()
        .filter(|line| !extra_plugins.contains(line.split(' ').next().unwrap()))
        .map(|line| format!("{line}\n"))
        .collect();
    let allow = if allow_loopback {
        r#"allow = ["127.0.0.1/32"]"#
    } else {
        ""
    };
    // Test defaults, unless `extra_delivery` sets the same key.
    let defaults: String = [
        r#"retry_schedule = ["50ms", "100ms", "150ms"]"#,
        "retry_jitter_percent = 0",
        r#"attempt_timeout = "2s""#,
    ]
    .iter()
    .filter(|line| !extra_delivery.contains(line.split(' ').next().unwrap()))
    .map(|line| format!("{line}\n"))
    .collect();
    let store = postgres::store_section(data_dir);
    format!(
        r#"
data_dir = "{data}"
{store}
[delivery]
{defaults}
{extra_delivery}
[ssrf]
allow_http = true
{allow}
[plugins]
{plugin_defaults}
{extra_plugins}
[security]
secret_key = "{secret_key}"
[[tenants]]
id = "acme"
api_keys = ["sha256:{acme}"]
event_types = ["user.created"]
[[tenants]]
id = "globex"
api_keys = ["sha256:{globex}"]
"#,
        data = data_dir.display(),
        acme = hex::encode(hash_api_key(ACME_KEY)),
        globex = hex::encode(hash_api_key(GLOBEX_KEY)),
        secret_key = TEST_SECRET_KEY,
    )
}

/// A test config; uploads compile in the `hookd` binary's worker, as under `hookd serve`.
pub fn parse_config(text: &str) -> Config {
    let mut config = Config::parse(Path::new("test.toml"), text).expect("test config is valid");
    config.plugins.compile_worker = Some(env!("CARGO_BIN_EXE_hookd").into());
    config
}

/// An engine running in this test process.
pub struct TestEngine {
    pub engine: Option<RunningEngine>,
    pub base: String,
    pub http: reqwest::Client,
    pub data_dir: tempfile::TempDir,
}

impl TestEngine {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// `extra_delivery`: more keys for the `[delivery]` table.
    pub async fn start_with(extra_delivery: &str) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let config = parse_config(&test_config_toml(data_dir.path(), extra_delivery, true));
        Self::start_in(data_dir, config).await
    }

    pub async fn start_in(data_dir: tempfile::TempDir, config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let engine = hookd::start(config, listener, CancellationToken::new())
            .await
            .expect("engine starts");
        Self::running(engine, data_dir)
    }

    fn running(engine: RunningEngine, data_dir: tempfile::TempDir) -> Self {
        TestEngine {
            base: format!("http://{}", engine.local_addr()),
            engine: Some(engine),
            http: reqwest::Client::new(),
            data_dir,
        }
    }

    /// Shuts the engine down and starts a new one on the same data dir.
    ///
    /// The old engine's runtime threads drop what they held (sled's lock on the data dir
    /// with it) just after `shutdown` returns, so the new one may find the lock still taken
    /// for a moment: it tries again for up to 10 s, as a supervisor restarting the process would.
    pub async fn restart(mut self, extra_delivery: &str) -> Self {
        self.engine.take().unwrap().shutdown().await;
        let config = parse_config(&test_config_toml(
            self.data_dir.path(),
            extra_delivery,
            true,
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            match hookd::start(config.clone(), listener, CancellationToken::new()).await {
                Ok(engine) => return Self::running(engine, self.data_dir),
                Err(err)
                    if err
                        .to_string()
                        .contains(hookd::store::sled_store::DATA_DIR_IN_USE)
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("engine starts again: {err:?}"),
            }
        }
    }

    pub fn engine(&self) -> &RunningEngine {
        self.engine.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with `key`; returns status and JSON body (Null when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("engine answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text}"))
        };
        (status, json)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, ACME_KEY, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, ACME_KEY, None).await
    }

    /// Creates a webhook for tenant acme; returns its JSON (with `secret`).
    pub async fn create_webhook(&self, body: Value) -> Value {
        let (status, json) = self.post("/v1/webhooks", body).await;
        assert_eq!(status, 201, "{json}");
        json
    }

    pub async fn send_event(&self, event_type: &str, payload: Value) -> Value {
        let (status, json) = self
            .post(
                "/v1/events",
                json!({"type": event_type, "payload": payload}),
            )
            .await;
        assert_eq!(status, 202, "{json}");
        json
    }

    /// Waits until the delivery reaches `status`; returns it with its attempts.
    pub async fn wait_delivery(&self, delivery_id: &str, status: &str) -> Value {
        eventually(
            Duration::from_secs(10),
            &format!("delivery {delivery_id} {status}"),
            || async {
                let (_, d) = self.get(&format!("/v1/deliveries/{delivery_id}")).await;
                (d["status"] == status).then_some(d)
            },
        )
        .await
    }
}

/// Every regular file under `dir`, recursively.
pub fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Plugin compile workers running now for the engine whose data directory is `data_dir`
/// (processes whose command line has `compile-worker` and that engine's cache directory).
pub fn compile_workers(data_dir: &Path) -> usize {
    compile_worker_pids(data_dir).len()
}

/// The process ids of [`compile_workers`].
pub fn compile_worker_pids(data_dir: &Path) -> Vec<u32> {
    let data_dir = data_dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("compile-worker") && cmdline.contains(&data_dir)).then_some(pid)
        })
        .collect()
}
