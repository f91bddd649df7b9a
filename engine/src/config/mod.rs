//! Engine configuration: the validated [`Config`] and how to load it from `config/hookd.toml`.
//!
//! Invariant: a `Config` is always valid. Only `validate.rs` makes one (from a [`raw::RawConfig`]);
//! everything else reads it. The running config lives in a [`SharedConfig`] so a reload can swap
//! it atomically while requests and deliveries keep reading a consistent snapshot.

pub mod event_types;
mod raw;
mod validate;
pub mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::plugin::PluginSettings;
use crate::secrets;

pub use validate::DEFAULT_QUOTAS;
pub(crate) use validate::valid_event_type;
pub use validate::{ConfigError, ConfigErrors, MAX_RETRY_SCHEDULE_LEN, parse_retry_schedule};

/// The API key shipped in the default config for the `dev` tenant. The engine warns while any
/// tenant accepts it.
pub const DEV_API_KEY: &str = "hookd-dev-key";

/// The secret key shipped in the default config (`[security] secret_key`). The engine warns
/// while it is the current key: anyone can open secrets sealed with it.
pub const DEV_SECRET_KEY: &str = "aG9va2QtZGV2LXNlY3JldC1rZXktbm90LWZvci11c2U=";

/// Environment variable holding the secret key; it wins over `[security]` in the file.
pub const SECRET_KEY_ENV: &str = "HOOKD_SECRET_KEY";

/// Environment variable holding the PostgreSQL URL; it wins over `[store] postgres_url`.
pub const POSTGRES_URL_ENV: &str = "HOOKD_POSTGRES_URL";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./data";
/// `limits.idempotency_window` unless set: how long an idempotency key names its event.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Validated configuration of one engine.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub limits: LimitsConfig,
    /// Global delivery defaults; each tenant has its merged copy in [`TenantConfig::delivery`].
    pub delivery: DeliveryConfig,
    pub ssrf: SsrfConfig,
    /// Global plugin budgets; each tenant has its merged copy in [`TenantConfig::plugins`].
    pub plugins: PluginsConfig,
    /// The keys sealing webhook secrets (applies at the next start).
    pub security: SecurityConfig,
    /// Which backend keeps the data (applies at the next start).
    pub store: StoreConfig,
    /// Default quotas; each tenant has its merged copy in [`TenantConfig::quotas`].
    pub quotas: QuotasConfig,
    pub tenants: HashMap<String, TenantConfig>,
    /// SHA-256 of an API key → tenant id.
    api_keys: HashMap<[u8; 32], String>,
    /// SHA-256 of the admin API keys.
    admin_keys: Vec<[u8; 32]>,
    /// The file this config was loaded from (watched for changes), if any.
    pub source: Option<PathBuf>,
    /// Start-only keys whose running value came from the command line or the environment, not
    /// the file: a reload keeps them without reporting the file's value as a pending change.
    pub start_overrides: Vec<&'static str>,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_payload_bytes: usize,
    pub idempotency_window: Duration,
    pub secret_rotation_overlap: Duration,
    /// Finished deliveries (with their attempts) and events without a queued delivery are
    /// purged once older than this (`retention_days`, or the finer `retention`).
    pub retention: Duration,
    /// How often the retention task looks for old records.
    pub retention_interval: Duration,
    /// Memory sled may use for cached pages (applies at start).
    pub store_cache_bytes: u64,
    /// How long a client may take to send a request's head (slow-loris guard); on an idle
    /// keep-alive connection it also bounds the wait for the next request.
    pub header_read_timeout: Duration,
    /// Longest pause while a request body is being read; a stalled body gets `408`.
    pub body_read_timeout: Duration,
    /// Ingest refuses events (`503 storage_full`) while the data dir's file system has less
    /// free space than this, so sled never meets a full disk mid-write.
    pub min_free_disk_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// Delays before each retry; the first attempt is immediate, so a delivery gets at most
    /// `retry_schedule.len() + 1` attempts unless the webhook sets `max_attempts`.
    pub retry_schedule: Vec<Duration>,
    pub retry_jitter_percent: u8,
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_in_flight_per_webhook: u32,
    /// Engine-wide cap on concurrent attempts (global setting only).
    pub max_in_flight: usize,
    pub max_response_body_bytes: usize,
    /// Bytes of each sent request body kept in the attempt log (0: none).
    pub max_request_capture_bytes: usize,
    pub max_retry_after: Duration,
    /// A webhook failing without a single success for this long is disabled.
    pub disable_after: Duration,
    /// After this many failed attempts of one delivery, hookd emits `hookd.delivery.failing`.
    pub failing_event_after_attempts: u32,
    /// Name servers for webhook host names (global setting only, read at start); empty: the
    /// system resolver.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// Scheduling priority (nice, 0-19) of the delivery workers (global setting only, read at
    /// start): above 0 the API and ingest go first when the CPU is saturated
    /// (`delivery/runtime.rs`).
    pub worker_nice: i32,
    /// How long a stop waits for attempts in flight before abandoning them (global setting
    /// only; read when the stop begins). An abandoned attempt stays queued and is sent again
    /// after the restart, with the same `webhook-id`.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct SsrfConfig {
    /// Plain `http://` webhook URLs are accepted (otherwise https only).
    pub allow_http: bool,
    /// Networks that are reachable even though they are not public (admin allow-list).
    pub allow: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct PluginsConfig {
    pub settings: PluginSettings,
    /// Most plugins attached to one webhook.
    pub max_chain_length: usize,
    /// Admin plugin directory (one folder per tenant), watched for changes; none by default.
    pub admin_dir: Option<PathBuf>,
    /// The `hookd` program uploads are compiled in (`hookd plugin compile-worker`, killed past
    /// `compile_timeout`). Not a config key: `hookd serve` sets it to its own binary; an engine
    /// embedded without it compiles on its blocking pool. Read at start.
    pub compile_worker: Option<PathBuf>,
}

/// The secret-sealing keys: the current one (from `[security]` or [`SECRET_KEY_ENV`]) and
/// previous ones that still open secrets until the startup re-seal has moved them over.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    current: Option<[u8; secrets::SECRET_KEY_BYTES]>,
    previous: Vec<[u8; secrets::SECRET_KEY_BYTES]>,
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: never key bytes.
        f.debug_struct("SecurityConfig")
            .field("current", &self.current.as_ref().map(secrets::key_id))
            .field(
                "previous",
                &self
                    .previous
                    .iter()
                    .map(secrets::key_id)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SecurityConfig {
    pub(crate) fn new(
        current: Option<[u8; secrets::SECRET_KEY_BYTES]>,
        previous: Vec<[u8; secrets::SECRET_KEY_BYTES]>,
    ) -> Self {
        SecurityConfig { current, previous }
    }

    /// Makes `text` (base64 of 32 bytes, e.g. from [`SECRET_KEY_ENV`]) the current key.
    pub fn override_secret_key(&mut self, text: &str) -> Result<(), secrets::SecretsError> {
        self.current = Some(secrets::parse_key(text)?);
        Ok(())
    }

    /// Applies [`SECRET_KEY_ENV`] if it is set; the error names the variable.
    pub fn apply_env(&mut self) -> Result<(), String> {
        match std::env::var(SECRET_KEY_ENV) {
            Ok(text) => self
                .override_secret_key(&text)
                .map_err(|err| format!("{SECRET_KEY_ENV}: {err}")),
            Err(_) => Ok(()),
        }
    }

    /// The keys `hookd serve` would start with: [`Self::apply_env`], then a current key must
    /// exist. `check-config` and a config reload refuse what this refuses.
    pub fn resolve(&mut self) -> Result<(), String> {
        self.apply_env()?;
        self.keyring().map(drop)
    }

    /// The keyring, or why there is none.
    pub fn keyring(&self) -> Result<secrets::Keyring, String> {
        match &self.current {
            Some(current) => Ok(secrets::Keyring::new(current, &self.previous)),
            None => Err(format!(
                "no secret key: webhook secrets are encrypted at rest, so set [security] secret_key or secret_key_file, or {SECRET_KEY_ENV} (generate one with: hookd secret-key)"
            )),
        }
    }

    /// A key for `purpose` derived from the current secret key (HMAC-SHA256 of the purpose
    /// under it), so every node sharing the secret key derives the same one and a new secret
    /// key replaces it. `None` without a current key.
    pub fn derived_key(&self, purpose: &str) -> Option<[u8; 32]> {
        use hmac::{Hmac, Mac};
        let current = self.current.as_ref()?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(current).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    fn is_dev_key(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|key| secrets::parse_key(DEV_SECRET_KEY).is_ok_and(|dev| dev == *key))
    }
}

/// `[store]`: the embedded sled store (one process per data dir) or PostgreSQL (several nodes
/// sharing one database).
#[derive(Clone, PartialEq)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// The connection URL (it may carry a password: never logged, shown or compared in
    /// messages); required for `postgres`, from the file or [`POSTGRES_URL_ENV`].
    postgres_url: Option<String>,
    /// Connections each node keeps to PostgreSQL at most.
    pub pool_size: usize,
    /// How long a node's claim on a delivery lasts unless renewed; a node that dies leaves its
    /// claims to the others after at most this long.
    pub lease_duration: Duration,
    /// How often each node looks for due work it was not told about (the safety net under
    /// LISTEN/NOTIFY, and what finds a dead node's expired claims).
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Sled,
    Postgres,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field(
                "postgres_url",
                &self.postgres_url.as_ref().map(|_| "<redacted>"),
            )
            .field("pool_size", &self.pool_size)
            .field("lease_duration", &self.lease_duration)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sled,
            postgres_url: None,
            pool_size: 16,
            lease_duration: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
        }
    }
}

impl StoreConfig {
    pub(crate) fn new(
        backend: StoreBackend,
        postgres_url: Option<String>,
        pool_size: usize,
        lease_duration: Duration,
        poll_interval: Duration,
    ) -> Self {
        StoreConfig {
            backend,
            postgres_url,
            pool_size,
            lease_duration,
            poll_interval,
        }
    }

    /// The PostgreSQL connection URL, if one is set. Callers must not log or show it.
    pub fn postgres_url(&self) -> Option<&str> {
        self.postgres_url.as_deref()
    }

    /// Applies [`POSTGRES_URL_ENV`] if it is set.
    pub fn apply_env(&mut self) {
        if let Ok(url) = std::env::var(POSTGRES_URL_ENV)
            && !url.is_empty()
        {
            self.postgres_url = Some(url);
        }
    }
}

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: String,
    /// The declared event types (the catalogue of `GET /v1/event-types`), in config order.
    pub event_types: Vec<event_types::EventTypeConfig>,
    /// Ingest refuses undeclared types (`422 unknown_event_type`) and payloads failing their
    /// type's schema (`422 payload_schema`).
    pub strict_event_types: bool,
    pub delivery: DeliveryConfig,
    /// Plugin budgets of this tenant's attempts.
    pub plugins: PluginSettings,
    /// What this tenant may hold and do (`[quotas]` merged with `[tenants.quotas]`).
    pub quotas: QuotasConfig,
}

/// What one tenant may hold and do. Over a quota the API answers `429 quota_exceeded` naming
/// it (or `429 rate_limited` for the request rate) and writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotasConfig {
    /// Webhooks the tenant may have.
    pub webhooks: u64,
    /// Secrets that sign at once (the current one plus those still in their rotation overlap);
    /// a rotation beyond it expires the oldest at once.
    pub secrets_per_webhook: u64,
    /// Deliveries one event may fan out to.
    pub deliveries_per_event: u64,
    /// Deliveries not yet final (pending or in flight) the tenant may have queued.
    pub pending_deliveries: u64,
    /// Bytes of event payloads the tenant may have stored.
    pub stored_bytes: u64,
    /// API requests per second (token bucket refilled at this rate)...
    pub api_requests_per_sec: u64,
    /// ...holding at most this many (a burst after a quiet second).
    pub api_burst: u64,
    /// Plugins the tenant may have installed (enforced by the plugin host).
    pub plugins: u64,
    /// Bytes of plugin components the tenant may have installed (enforced by the plugin host).
    pub plugin_bytes: u64,
    /// The tenant's weight in the fair sharing of the engine-wide delivery permits: while
    /// tenants compete, each gets permits in proportion to its weight.
    pub delivery_weight: u64,
    /// Back-pressure: while the tenant's deliveries trail their due time by more than this
    /// many seconds, ingest answers `429 delivery_lag_exceeded` with `Retry-After`
    /// (`lag.rs`). 0 (the default) turns it off.
    pub max_delivery_lag_secs: u64,
}

impl TenantConfig {
    /// The declared event type `name`, if any.
    pub fn event_type(&self, name: &str) -> Option<&event_types::EventTypeConfig> {
        self.event_types.iter().find(|t| t.name == name)
    }
}

impl Config {
    /// Reads and validates a config file (or `hookd.toml` in a directory); every problem is
    /// reported at once.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let path = if path.is_dir() {
            path.join("hookd.toml")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|err| {
            ConfigErrors::single(&path, "", format!("cannot read the file: {err}"))
        })?;
        let mut config = Config::parse(&path, &text)?;
        config.source = Some(path);
        Ok(config)
    }

    /// Whether `api_key` is one of the admin keys.
    pub fn is_admin_key(&self, api_key: &str) -> bool {
        // Constant time over the hash bytes and over every admin key (no early exit), so a
        // near miss takes as long as a far one.
        self.is_admin_key_hash(&hash_api_key(api_key))
    }

    /// Validates config text; `path` only names the file in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        validate::parse_and_validate(path, text)
    }

    /// The tenant owning an API key, if any.
    ///
    /// Keys are held only as SHA-256 hashes, and the lookup hashes the presented key first.
    /// A hash-map probe is not constant time, but what its timing could reveal is how the
    /// SHA-256 of an attacker's guess relates to a stored hash (bucket under a per-process
    /// random SipHash key, then a prefix of the hash): walking closer to a stored *hash* this
    /// way does not bring a guess closer to the *key* (SHA-256 is preimage resistant), so
    /// timing leaks nothing usable about keys. Admin keys use a constant-time scan anyway.
    pub fn tenant_for_key(&self, api_key: &str) -> Option<&TenantConfig> {
        let id = self.api_keys.get(&hash_api_key(api_key))?;
        self.tenants.get(id)
    }

    /// The tenant owning the API key whose SHA-256 is `hash` (a console session carries the
    /// hash of the key it was opened with, so removing the key ends the session).
    pub fn tenant_for_key_hash(&self, hash: &[u8; 32]) -> Option<&TenantConfig> {
        let id = self.api_keys.get(hash)?;
        self.tenants.get(id)
    }

    /// Whether `hash` is the SHA-256 of an admin key (constant time over the admin keys).
    pub fn is_admin_key_hash(&self, hash: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.admin_keys
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(hash)
            })
            .into()
    }

    pub fn tenant(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.get(id)
    }

    /// Things an operator should know about at startup (development key, loopback allowed).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(tenant) = self.tenant_for_key(DEV_API_KEY) {
            warnings.push(format!(
                "tenant `{}` accepts the development API key `{DEV_API_KEY}`; replace it (see `hookd key`) before exposing hookd",
                tenant.id
            ));
        }
        if self.security.is_dev_key() {
            warnings.push(
                "webhook secrets are sealed with the development secret key shipped in config/hookd.toml; set your own (see `hookd secret-key`) before storing real secrets"
                    .to_string(),
            );
        }
        let loopback: [std::net::IpAddr; 2] = [
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ];
        if self
            .ssrf
            .allow
            .iter()
            .any(|net| loopback.iter().any(|ip| net.contains(ip)))
        {
            warnings.push(
                "the SSRF allow-list permits delivery to loopback addresses (development setting)"
                    .to_string(),
            );
        }
        warnings
    }
}

/// The SHA-256 stored in config for an API key (`sha256:<hex>` in the file).
pub fn hash_api_key(api_key: &str) -> [u8; 32] {
    Sha256::digest(api_key.as_bytes()).into()
}

/// A new random API key and the line to paste into a tenant's `api_keys`.
pub fn generate_api_key() -> (String, String) {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "hk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = format!("sha256:{}", hex::encode(hash_api_key(&key)));
    (key, hash)
}

/// The outcome of the last config reload, for the admin status route.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct ReloadStatus {
    /// `applied` or `refused`; absent before the first reload.
    pub last_result: Option<&'static str>,
    /// When it happened, ms since the epoch.
    pub last_at_ms: Option<u64>,
    /// Every problem of a refused reload: file, line, key path and what is wrong, with any
    /// value from the file redacted.
    pub errors: Vec<String>,
    pub applied: u64,
    pub refused: u64,
}

/// What `/readyz` (no key) says about reloads: the result, never the problems.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct ReloadSummary {
    /// `applied` or `refused`; absent before the first reload.
    pub last_result: Option<&'static str>,
    /// When it happened, ms since the epoch.
    pub last_at_ms: Option<u64>,
    pub applied: u64,
    pub refused: u64,
}

impl From<ReloadStatus> for ReloadSummary {
    fn from(status: ReloadStatus) -> Self {
        ReloadSummary {
            last_result: status.last_result,
            last_at_ms: status.last_at_ms,
            applied: status.applied,
            refused: status.refused,
        }
    }
}

/// The running configuration, swapped atomically on reload.
#[derive(Clone)]
pub struct SharedConfig(Arc<ArcSwap<Config>>, Arc<std::sync::Mutex<ReloadStatus>>);

impl SharedConfig {
    pub fn new(config: Config) -> Self {
        SharedConfig(
            Arc::new(ArcSwap::from_pointee(config)),
            Arc::new(std::sync::Mutex::new(ReloadStatus::default())),
        )
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.1.lock().expect("reload status lock").clone()
    }

    fn record_reload(&self, result: Result<(), &ConfigErrors>) {
        let mut status = self.1.lock().expect("reload status lock");
        status.last_at_ms = Some(crate::ids::now_ms());
        match result {
            Ok(()) => {
                status.last_result = Some("applied");
                status.errors.clear();
                status.applied += 1;
            }
            Err(errors) => {
                status.last_result = Some("refused");
                status.errors = errors.0.iter().map(ToString::to_string).collect();
                status.refused += 1;
            }
        }
    }

    /// A consistent snapshot; hold it for the duration of one request or attempt.
    pub fn current(&self) -> Arc<Config> {
        self.0.load_full()
    }

    pub fn replace(&self, config: Config) {
        self.0.store(Arc::new(config));
    }
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedConfig").finish_non_exhaustive()
    }
}
