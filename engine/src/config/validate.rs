//! The only place a [`Config`] is made: parses TOML into `Raw*` types and checks every value,
//! accumulating all problems (file, key path, what is wrong) instead of stopping at the first.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawConfig, RawDelivery, RawLimits, RawPlugins, RawSecurity, RawStore};
use super::{
    Config, DEFAULT_DATA_DIR, DEFAULT_LISTEN, DeliveryConfig, LimitsConfig, PluginsConfig,
    SecurityConfig, SsrfConfig, StoreBackend, StoreConfig, TenantConfig,
};
use crate::plugin::PluginSettings;
use crate::secrets;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `tenants[1].delivery.attempt_timeout`; empty for the whole file.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(
                f,
                "{}: `{}`: {}",
                self.file.display(),
                self.key,
                self.problem
            )
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(file: &Path, key: &str, problem: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            key: key.to_string(),
            problem,
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the configuration:", self.0.len())?;
        for error in &self.0 {
            writeln!(f, "  - {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

struct Collector<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn push(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            problem: problem.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => {
                match humantime::parse_duration(text) {
                    Ok(duration) => duration,
                    Err(err) => {
                        self.push(
                        key,
                        format!("`{text}` is not a duration ({err}); write e.g. \"15s\", \"5m\", \"2h\""),
                    );
                        default
                    }
                }
            }
        }
    }
}

pub(super) fn parse_and_validate(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = toml::from_str(text).map_err(|err| {
        // toml's message names the key and the line; keep it whole.
        ConfigErrors::single(file, "", err.to_string().trim_end().to_string())
    })?;
    let mut c = Collector {
        file,
        errors: Vec::new(),
    };

    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        c.push(
            "listen",
            format!("`{listen_text}` is not an address like 127.0.0.1:8080"),
        );
        DEFAULT_LISTEN
            .parse()
            .expect("default listen address parses")
    });
    let data_dir = PathBuf::from(raw.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR));

    let max_payload_bytes = raw
        .limits
        .max_payload_bytes
        .unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES);
    if max_payload_bytes == 0 || max_payload_bytes > 64 * 1024 * 1024 {
        c.push(
            "limits.max_payload_bytes",
            "must be between 1 and 67108864 (64 MiB)",
        );
    }
    let limits = LimitsConfig {
        max_payload_bytes,
        idempotency_window: c.duration(
            "limits.idempotency_window",
            raw.limits.idempotency_window.as_ref(),
            Duration::from_secs(24 * 3600),
        ),
        secret_rotation_overlap: c.duration(
            "limits.secret_rotation_overlap",
            raw.limits.secret_rotation_overlap.as_ref(),
            Duration::from_secs(24 * 3600),
        ),
        retention: retention(&mut c, &raw.limits),
        retention_interval: c.duration(
            "limits.retention_interval",
            raw.limits.retention_interval.as_ref(),
            DEFAULT_RETENTION_INTERVAL,
        ),
        store_cache_bytes: raw.limits.store_cache_mb.unwrap_or(DEFAULT_STORE_CACHE_MB)
            * 1024
            * 1024,
        header_read_timeout: c.duration(
            "limits.header_read_timeout",
            raw.limits.header_read_timeout.as_ref(),
            DEFAULT_HEADER_READ_TIMEOUT,
        ),
        body_read_timeout: c.duration(
            "limits.body_read_timeout",
            raw.limits.body_read_timeout.as_ref(),
            DEFAULT_BODY_READ_TIMEOUT,
        ),
        min_free_disk_bytes: raw
            .limits
            .min_free_disk_bytes
            .unwrap_or(DEFAULT_MIN_FREE_DISK_BYTES),
    };
    if !(8..=65_536).contains(&raw.limits.store_cache_mb.unwrap_or(DEFAULT_STORE_CACHE_MB)) {
        c.push("limits.store_cache_mb", "must be between 8 and 65536");
    }
    for (key, value) in [
        ("limits.header_read_timeout", limits.header_read_timeout),
        ("limits.body_read_timeout", limits.body_read_timeout),
    ] {
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&value) {
            c.push(key, "must be between 100ms and 1h");
        }
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(24 * 3600))
        .contains(&limits.retention_interval)
    {
        c.push("limits.retention_interval", "must be between 10ms and 24h");
    }

    let delivery = delivery_config(
        &mut c,
        "delivery",
        &raw.delivery,
        &DeliveryConfig::default(),
    );

    let mut allow = Vec::new();
    for (i, entry) in raw.ssrf.allow.iter().flatten().enumerate() {
        match parse_net(entry) {
            Some(net) => allow.push(net),
            None => c.push(
                format!("ssrf.allow[{i}]"),
                format!("`{entry}` is not an IP address or CIDR network like 127.0.0.1/32"),
            ),
        }
    }
    let ssrf = SsrfConfig {
        allow_http: raw.ssrf.allow_http.unwrap_or(false),
        allow,
    };

    let global_plugins =
        plugin_settings(&mut c, "plugins", &raw.plugins, &PluginSettings::default());
    let max_chain_length = raw
        .plugins
        .max_chain_length
        .unwrap_or(DEFAULT_MAX_CHAIN_LENGTH);
    if max_chain_length == 0 || max_chain_length > 16 {
        c.push("plugins.max_chain_length", "must be between 1 and 16");
    }
    let plugins = PluginsConfig {
        settings: global_plugins.clone(),
        max_chain_length,
        admin_dir: raw.plugins.admin_dir.as_ref().map(PathBuf::from),
    };

    let security = security_config(&mut c, &raw.security);
    let store = store_config(&mut c, &raw.store);

    let mut admin_keys = Vec::new();
    for (i, hash_text) in raw.admin_api_keys.iter().enumerate() {
        match parse_key_hash(hash_text) {
            Some(hash) => admin_keys.push(hash),
            None => c.push(
                format!("admin_api_keys[{i}]"),
                "not a key hash: write `sha256:<64 hex digits>` as printed by `hookd key`",
            ),
        }
    }

    let mut tenants = HashMap::new();
    let mut api_keys: HashMap<[u8; 32], String> = HashMap::new();
    for (i, raw_tenant) in raw.tenants.iter().enumerate() {
        let key = format!("tenants[{i}]");
        if !valid_tenant_id(&raw_tenant.id) {
            c.push(
                format!("{key}.id"),
                format!(
                    "`{}` is not a tenant id: use 1-64 of a-z, 0-9, `-` and `_`",
                    raw_tenant.id
                ),
            );
        }
        if tenants.contains_key(&raw_tenant.id) {
            c.push(
                format!("{key}.id"),
                format!("tenant `{}` is defined twice", raw_tenant.id),
            );
        }
        for (k, hash_text) in raw_tenant.api_keys.iter().enumerate() {
            let Some(hash) = parse_key_hash(hash_text) else {
                c.push(
                    format!("{key}.api_keys[{k}]"),
                    "not a key hash: write `sha256:<64 hex digits>` as printed by `hookd key`",
                );
                continue;
            };
            if admin_keys.contains(&hash) {
                c.push(
                    format!("{key}.api_keys[{k}]"),
                    "this key is also an admin key; use separate keys",
                );
            }
            if let Some(owner) = api_keys.insert(hash, raw_tenant.id.clone()) {
                c.push(
                    format!("{key}.api_keys[{k}]"),
                    format!("this key already belongs to tenant `{owner}`"),
                );
            }
        }
        for (k, event_type) in raw_tenant.event_types.iter().enumerate() {
            if !valid_event_type(event_type) {
                c.push(
                    format!("{key}.event_types[{k}]"),
                    format!("`{event_type}` is not an event type (1-128 of a-z A-Z 0-9 . _ - :)"),
                );
            }
        }
        let tenant_delivery = match &raw_tenant.delivery {
            Some(overrides) => {
                if overrides.max_in_flight.is_some() {
                    c.push(
                        format!("{key}.delivery.max_in_flight"),
                        "is an engine-wide limit; set it in [delivery] only",
                    );
                }
                if overrides.dns_servers.is_some() {
                    c.push(
                        format!("{key}.delivery.dns_servers"),
                        "is engine-wide; set it in [delivery] only",
                    );
                }
                delivery_config(&mut c, &format!("{key}.delivery"), overrides, &delivery)
            }
            None => delivery.clone(),
        };
        let tenant_plugins = match &raw_tenant.plugins {
            Some(overrides) => {
                let engine_wide = [
                    ("max_upload_bytes", overrides.max_upload_bytes.is_some()),
                    ("compile_timeout", overrides.compile_timeout.is_some()),
                    ("max_chain_length", overrides.max_chain_length.is_some()),
                    ("admin_dir", overrides.admin_dir.is_some()),
                ];
                for (name, set) in engine_wide {
                    if set {
                        c.push(
                            format!("{key}.plugins.{name}"),
                            "is an engine-wide setting; set it in [plugins] only",
                        );
                    }
                }
                plugin_settings(
                    &mut c,
                    &format!("{key}.plugins"),
                    overrides,
                    &global_plugins,
                )
            }
            None => global_plugins.clone(),
        };
        tenants.insert(
            raw_tenant.id.clone(),
            TenantConfig {
                id: raw_tenant.id.clone(),
                event_types: raw_tenant.event_types.clone(),
                delivery: tenant_delivery,
                plugins: tenant_plugins,
            },
        );
    }

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        listen,
        data_dir,
        limits,
        delivery,
        ssrf,
        plugins,
        security,
        store,
        tenants,
        api_keys,
        admin_keys,
        source: None,
    })
}

/// `[security]`: `secret_key` or `secret_key_file` (not both; neither is allowed here because
/// `HOOKD_SECRET_KEY` may supply the key, and `hookd::start` refuses to run without one).
fn security_config(c: &mut Collector<'_>, raw: &RawSecurity) -> SecurityConfig {
    let current = match (&raw.secret_key, &raw.secret_key_file) {
        (Some(_), Some(_)) => {
            c.push(
                "security.secret_key_file",
                "set security.secret_key or security.secret_key_file, not both",
            );
            None
        }
        (Some(text), None) => match secrets::parse_key(text) {
            Ok(key) => Some(key),
            Err(err) => {
                // Never echo the value: it may be a real key with a typo.
                c.push("security.secret_key", err.to_string());
                None
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => match secrets::parse_key(&text) {
                Ok(key) => Some(key),
                Err(err) => {
                    c.push("security.secret_key_file", format!("{path}: {err}"));
                    None
                }
            },
            Err(err) => {
                c.push(
                    "security.secret_key_file",
                    format!("cannot read {path}: {err}"),
                );
                None
            }
        },
        (None, None) => None,
    };
    let mut previous = Vec::new();
    for (i, text) in raw.previous_secret_keys.iter().enumerate() {
        match secrets::parse_key(text) {
            Ok(key) => previous.push(key),
            Err(err) => c.push(
                format!("security.previous_secret_keys[{i}]"),
                err.to_string(),
            ),
        }
    }
    SecurityConfig::new(current, previous)
}

/// `[store]`: the backend and, for PostgreSQL, the pool and lease settings. The URL is
/// optional here (`HOOKD_POSTGRES_URL` may supply it; the engine refuses to start on
/// `postgres` without one) and is never echoed: it may carry a password.
fn store_config(c: &mut Collector<'_>, raw: &RawStore) -> StoreConfig {
    let defaults = StoreConfig::default();
    let backend = match raw.backend.as_deref() {
        None | Some("sled") => StoreBackend::Sled,
        Some("postgres") => StoreBackend::Postgres,
        Some(other) => {
            c.push(
                "store.backend",
                format!("`{other}` is not a backend: write \"sled\" or \"postgres\""),
            );
            StoreBackend::Sled
        }
    };
    if let Some(url) = &raw.postgres_url
        && url.parse::<tokio_postgres::Config>().is_err()
    {
        c.push(
            "store.postgres_url",
            "is not a PostgreSQL connection URL like postgres://user:password@host:5432/hookd",
        );
    }
    let pool_size = raw.pool_size.unwrap_or(defaults.pool_size);
    if !(2..=1000).contains(&pool_size) {
        c.push("store.pool_size", "must be between 2 and 1000");
    }
    let lease_duration = c.duration(
        "store.lease_duration",
        raw.lease_duration.as_ref(),
        defaults.lease_duration,
    );
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&lease_duration) {
        c.push("store.lease_duration", "must be between 1s and 1h");
    }
    let poll_interval = c.duration(
        "store.poll_interval",
        raw.poll_interval.as_ref(),
        defaults.poll_interval,
    );
    if !(Duration::from_millis(50)..=Duration::from_secs(60)).contains(&poll_interval) {
        c.push("store.poll_interval", "must be between 50ms and 1m");
    }
    StoreConfig::new(
        backend,
        raw.postgres_url.clone(),
        pool_size,
        lease_duration,
        poll_interval,
    )
}

const DEFAULT_MAX_CHAIN_LENGTH: usize = 8;
const DEFAULT_RETENTION_DAYS: u32 = 30;
const MAX_RETENTION_DAYS: u32 = 3650;
/// sled's page cache: enough for the hot queues and records, small enough that a large
/// backlog does not grow the process (sled's default is 1 GiB).
const DEFAULT_STORE_CACHE_MB: u64 = 64;
const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// A request head arrives in milliseconds from any real client; 10 s leaves room for slow
/// mobile links and still frees a slow-loris connection quickly.
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest gap between two chunks of a request body (not the whole upload).
const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// 64 MiB: room for sled's segment growth and a final flush after ingest stops.
const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 64 * 1024 * 1024;

/// `limits.retention_days` (whole days), or `limits.retention` (a duration, for short-lived
/// setups and tests); not both.
fn retention(c: &mut Collector<'_>, raw: &RawLimits) -> Duration {
    const DAY: u64 = 24 * 3600;
    let default = Duration::from_secs(u64::from(DEFAULT_RETENTION_DAYS) * DAY);
    match (raw.retention_days, &raw.retention) {
        (Some(_), Some(_)) => {
            c.push(
                "limits.retention",
                "set either limits.retention_days or limits.retention, not both",
            );
            default
        }
        (Some(days), None) => {
            if !(1..=MAX_RETENTION_DAYS).contains(&days) {
                c.push(
                    "limits.retention_days",
                    format!("must be between 1 and {MAX_RETENTION_DAYS}"),
                );
            }
            Duration::from_secs(u64::from(days.clamp(1, MAX_RETENTION_DAYS)) * DAY)
        }
        (None, Some(text)) => {
            let retention = c.duration("limits.retention", Some(text), default);
            if retention < Duration::from_secs(1)
                || retention > Duration::from_secs(u64::from(MAX_RETENTION_DAYS) * DAY)
            {
                c.push(
                    "limits.retention",
                    format!("must be between 1s and {MAX_RETENTION_DAYS} days"),
                );
            }
            retention
        }
        (None, None) => default,
    }
}

fn plugin_settings(
    c: &mut Collector<'_>,
    prefix: &str,
    raw: &RawPlugins,
    base: &PluginSettings,
) -> PluginSettings {
    let key = |name: &str| format!("{prefix}.{name}");
    let mut out = base.clone();
    if raw.deadline.is_some() {
        out.deadline = c.duration(&key("deadline"), raw.deadline.as_ref(), base.deadline);
        if out.deadline.is_zero() || out.deadline > Duration::from_secs(10) {
            c.push(key("deadline"), "must be between 1ms and 10s");
        }
    }
    if let Some(bytes) = raw.memory_limit_bytes {
        if !(1 << 20..=4 << 30).contains(&bytes) {
            c.push(key("memory_limit_bytes"), "must be between 1 MiB and 4 GiB");
        }
        out.memory_limit_bytes = bytes;
    }
    if let Some(bytes) = raw.max_log_bytes {
        if bytes > 1 << 20 {
            c.push(key("max_log_bytes"), "must be at most 1048576");
        }
        out.max_log_bytes = bytes;
    }
    if let Some(fuel) = raw.fuel {
        out.fuel = Some(fuel);
    }
    if let Some(bytes) = raw.max_upload_bytes {
        if !(1024..=256 << 20).contains(&bytes) {
            c.push(key("max_upload_bytes"), "must be between 1 KiB and 256 MiB");
        }
        out.max_upload_bytes = bytes;
    }
    if raw.compile_timeout.is_some() {
        out.compile_timeout = c.duration(
            &key("compile_timeout"),
            raw.compile_timeout.as_ref(),
            base.compile_timeout,
        );
    }
    if let Some(n) = raw.max_concurrent_calls_per_tenant {
        if n == 0 || n > 256 {
            c.push(
                key("max_concurrent_calls_per_tenant"),
                "must be between 1 and 256",
            );
        }
        out.max_concurrent_calls_per_tenant = n.clamp(1, 256);
    }
    if let Some(bytes) = raw.max_output_payload_bytes {
        if bytes == 0 || bytes > 64 << 20 {
            c.push(
                key("max_output_payload_bytes"),
                "must be between 1 and 67108864",
            );
        }
        out.max_output_payload_bytes = bytes;
    }
    out
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 3600;
        DeliveryConfig {
            retry_schedule: [
                5,
                5 * MINUTE,
                30 * MINUTE,
                2 * HOUR,
                5 * HOUR,
                10 * HOUR,
                10 * HOUR,
            ]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
            retry_jitter_percent: 20,
            attempt_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_in_flight_per_webhook: 8,
            max_in_flight: 256,
            max_response_body_bytes: 4096,
            max_retry_after: Duration::from_secs(HOUR),
            disable_after: Duration::from_secs(5 * 24 * HOUR),
            failing_event_after_attempts: 3,
            dns_servers: Vec::new(),
        }
    }
}

fn delivery_config(
    c: &mut Collector<'_>,
    prefix: &str,
    raw: &RawDelivery,
    base: &DeliveryConfig,
) -> DeliveryConfig {
    let mut out = base.clone();
    if let Some(schedule) = &raw.retry_schedule {
        out.retry_schedule = schedule
            .iter()
            .enumerate()
            .map(|(i, text)| {
                c.duration(
                    &format!("{prefix}.retry_schedule[{i}]"),
                    Some(text),
                    Duration::ZERO,
                )
            })
            .collect();
        if schedule.len() > 50 {
            c.push(
                format!("{prefix}.retry_schedule"),
                "at most 50 retries are allowed",
            );
        }
    }
    if let Some(jitter) = raw.retry_jitter_percent {
        if jitter > 100 {
            c.push(
                format!("{prefix}.retry_jitter_percent"),
                "must be between 0 and 100",
            );
        }
        out.retry_jitter_percent = jitter.min(100);
    }
    let key = |name: &str| format!("{prefix}.{name}");
    if raw.attempt_timeout.is_some() {
        out.attempt_timeout = c.duration(
            &key("attempt_timeout"),
            raw.attempt_timeout.as_ref(),
            base.attempt_timeout,
        );
        if out.attempt_timeout.is_zero() || out.attempt_timeout > Duration::from_secs(300) {
            c.push(key("attempt_timeout"), "must be between 1ms and 5m");
        }
    }
    if raw.connect_timeout.is_some() {
        out.connect_timeout = c.duration(
            &key("connect_timeout"),
            raw.connect_timeout.as_ref(),
            base.connect_timeout,
        );
        if out.connect_timeout.is_zero() {
            c.push(key("connect_timeout"), "must be more than 0");
        }
    }
    if let Some(n) = raw.max_in_flight_per_webhook {
        if n == 0 || n > 1024 {
            c.push(
                key("max_in_flight_per_webhook"),
                "must be between 1 and 1024",
            );
        }
        out.max_in_flight_per_webhook = n.clamp(1, 1024);
    }
    if let Some(n) = raw.max_in_flight {
        if n == 0 || n > 65536 {
            c.push(key("max_in_flight"), "must be between 1 and 65536");
        }
        out.max_in_flight = n.clamp(1, 65536);
    }
    if let Some(n) = raw.max_response_body_bytes {
        if n > 1024 * 1024 {
            c.push(key("max_response_body_bytes"), "must be at most 1048576");
        }
        out.max_response_body_bytes = n.min(1024 * 1024);
    }
    if raw.max_retry_after.is_some() {
        out.max_retry_after = c.duration(
            &key("max_retry_after"),
            raw.max_retry_after.as_ref(),
            base.max_retry_after,
        );
    }
    if let Some(n) = raw.failing_event_after_attempts {
        if n == 0 {
            c.push(key("failing_event_after_attempts"), "must be at least 1");
        }
        out.failing_event_after_attempts = n.max(1);
    }
    if let Some(servers) = &raw.dns_servers {
        out.dns_servers = Vec::new();
        for (i, text) in servers.iter().enumerate() {
            // "ip:port", "[v6]:port", or a bare address on port 53.
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(addr) => out.dns_servers.push(addr),
                None => c.push(
                    format!("{prefix}.dns_servers[{i}]"),
                    format!("`{text}` is not an IP address or IP:port"),
                ),
            }
        }
    }
    if raw.disable_after.is_some() {
        out.disable_after = c.duration(
            &key("disable_after"),
            raw.disable_after.as_ref(),
            base.disable_after,
        );
    }
    out
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn parse_key_hash(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix("sha256:")?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}

fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Event types: `user.created`, `invoice.paid`, `hookd.delivery.failing`…
pub(crate) fn valid_event_type(event_type: &str) -> bool {
    !event_type.is_empty()
        && event_type.len() <= 128
        && event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_and_validate(Path::new("hookd.toml"), text)
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.delivery.retry_schedule.len(), 7);
        assert_eq!(config.delivery.attempt_timeout, Duration::from_secs(15));
        assert!(!config.ssrf.allow_http);
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let errors = parse(
            r#"
            listen = "nope"
            [delivery]
            attempt_timeout = "fast"
            [[tenants]]
            id = "Bad Id"
            api_keys = ["md5:abc"]
            [[tenants]]
            id = "a"
            [[tenants]]
            id = "a"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listen",
                "delivery.attempt_timeout",
                "tenants[0].id",
                "tenants[0].api_keys[0]",
                "tenants[2].id"
            ]
        );
    }

    #[test]
    fn dns_servers_take_addresses_with_or_without_a_port_and_only_globally() {
        let config = parse(
            r#"
            [delivery]
            dns_servers = ["127.0.0.1:5353", "10.0.0.53", "[::1]:53"]
            "#,
        )
        .unwrap();
        let servers: Vec<String> = config
            .delivery
            .dns_servers
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(servers, ["127.0.0.1:5353", "10.0.0.53:53", "[::1]:53"]);
        assert!(parse("").unwrap().delivery.dns_servers.is_empty());

        let errors = parse(
            r#"
            [delivery]
            dns_servers = ["resolver.example", "127.0.0.1:99999"]
            [[tenants]]
            id = "acme"
            [tenants.delivery]
            dns_servers = ["127.0.0.1"]
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "delivery.dns_servers[0]",
                "delivery.dns_servers[1]",
                "tenants[0].delivery.dns_servers"
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errors = parse("[delivery]\nretry_shedule = [\"1s\"]\n").unwrap_err();
        assert!(errors.0[0].problem.contains("retry_shedule"), "{errors}");
    }

    #[test]
    fn tenant_delivery_overrides_fall_back_to_the_global_values() {
        let config = parse(
            r#"
            [delivery]
            attempt_timeout = "3s"
            [[tenants]]
            id = "acme"
            [tenants.delivery]
            retry_schedule = ["1ms"]
            "#,
        )
        .unwrap();
        let tenant = config.tenant("acme").unwrap();
        assert_eq!(tenant.delivery.attempt_timeout, Duration::from_secs(3));
        assert_eq!(tenant.delivery.retry_schedule, [Duration::from_millis(1)]);
    }

    #[test]
    fn tenant_plugin_budgets_override_the_global_ones_and_engine_wide_keys_are_refused() {
        let config = parse(
            r#"
            [plugins]
            deadline = "50ms"
            [[tenants]]
            id = "acme"
            [tenants.plugins]
            memory_limit_bytes = 268435456
            [[tenants]]
            id = "globex"
            "#,
        )
        .unwrap();
        let acme = &config.tenant("acme").unwrap().plugins;
        assert_eq!(acme.memory_limit_bytes, 256 << 20);
        assert_eq!(acme.deadline, Duration::from_millis(50));
        assert_eq!(
            config.tenant("globex").unwrap().plugins.memory_limit_bytes,
            64 << 20
        );

        let errors = parse("[[tenants]]\nid = \"a\"\n[tenants.plugins]\nmax_upload_bytes = 5\n")
            .unwrap_err();
        assert_eq!(errors.0[0].key, "tenants[0].plugins.max_upload_bytes");
    }

    #[test]
    fn retention_defaults_to_30_days_hourly_and_takes_days_or_a_duration() {
        let config = parse("").unwrap();
        assert_eq!(config.limits.retention, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(config.limits.retention_interval, Duration::from_secs(3600));
        let config = parse("[limits]\nretention_days = 7\n").unwrap();
        assert_eq!(config.limits.retention, Duration::from_secs(7 * 24 * 3600));
        let config =
            parse("[limits]\nretention = \"2s\"\nretention_interval = \"50ms\"\n").unwrap();
        assert_eq!(config.limits.retention, Duration::from_secs(2));
        assert_eq!(config.limits.retention_interval, Duration::from_millis(50));

        let errors =
            parse("[limits]\nretention_days = 0\nretention_interval = \"0s\"\n").unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["limits.retention_days", "limits.retention_interval"]);
        let errors = parse("[limits]\nretention_days = 3\nretention = \"1h\"\n").unwrap_err();
        assert_eq!(errors.0[0].key, "limits.retention");
    }

    #[test]
    fn api_keys_resolve_to_their_tenant_only_by_hash() {
        let (key, hash) = crate::config::generate_api_key();
        let config = parse(&format!(
            "[[tenants]]\nid = \"acme\"\napi_keys = [\"{hash}\"]\n"
        ))
        .unwrap();
        assert_eq!(config.tenant_for_key(&key).unwrap().id, "acme");
        assert!(config.tenant_for_key(&hash).is_none());
        assert!(config.tenant_for_key("hookd-dev-key").is_none());
    }

    #[test]
    fn admin_keys_match_by_hash_and_only_exactly() {
        let (key, hash) = crate::config::generate_api_key();
        let (other, other_hash) = crate::config::generate_api_key();
        let config = parse(&format!(
            "admin_api_keys = [\"{other_hash}\", \"{hash}\"]\n"
        ))
        .unwrap();
        assert!(config.is_admin_key(&key));
        assert!(config.is_admin_key(&other));
        // The hash itself, a prefix, and a one-character change are not keys.
        assert!(!config.is_admin_key(&hash));
        assert!(!config.is_admin_key(&key[..key.len() - 1]));
        let mut near = key.clone().into_bytes();
        let last = near.len() - 1;
        near[last] = if near[last] == b'A' { b'B' } else { b'A' };
        assert!(!config.is_admin_key(std::str::from_utf8(&near).unwrap()));
    }

    #[test]
    fn the_secret_key_comes_from_one_place_and_a_bad_one_is_not_echoed() {
        assert!(
            parse("").unwrap().security.keyring().is_err(),
            "no key: no keyring"
        );
        let key = crate::secrets::generate_key();
        let both = parse(&format!(
            "[security]\nsecret_key = \"{key}\"\nsecret_key_file = \"/nonexistent\"\n"
        ))
        .unwrap_err();
        assert_eq!(both.0[0].key, "security.secret_key_file");
        let bad = parse(
            "[security]\nsecret_key = \"almost-a-real-key\"\nprevious_secret_keys = [\"x\"]\n",
        )
        .unwrap_err();
        let keys: Vec<_> = bad.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["security.secret_key", "security.previous_secret_keys[0]"]
        );
        assert!(!bad.to_string().contains("almost-a-real-key"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, format!("{key}\n")).unwrap();
        let config = parse(&format!(
            "[security]\nsecret_key_file = \"{}\"\n",
            file.display()
        ))
        .unwrap();
        let ring = config.security.keyring().unwrap();
        let parsed = crate::secrets::parse_key(&key).unwrap();
        assert_eq!(ring.current_id(), crate::secrets::key_id(&parsed));
        // Debug output names key ids, never key bytes.
        assert!(!format!("{config:?}").contains(&key));
    }

    #[test]
    fn the_shipped_config_has_the_dev_secret_key_and_warns_about_it() {
        let text = include_str!("../../../config/hookd.toml");
        let config = parse(text).unwrap();
        assert!(config.security.keyring().is_ok());
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.contains("development secret key"))
        );
    }

    #[test]
    fn the_store_defaults_to_sled_and_postgres_settings_are_checked_without_echoing_the_url() {
        let config = parse("").unwrap();
        assert_eq!(config.store.backend, StoreBackend::Sled);
        assert_eq!(config.store.lease_duration, Duration::from_secs(30));
        let config = parse(
            "[store]\nbackend = \"postgres\"\npostgres_url = \"postgres://hookd:s3cret@db:5432/hookd\"\npool_size = 4\nlease_duration = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(config.store.backend, StoreBackend::Postgres);
        assert_eq!(config.store.pool_size, 4);
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "Debug redacts the URL"
        );
        let errors = parse(
            "[store]\nbackend = \"mysql\"\npostgres_url = \"postgres://u:s3cret@db:notaport/x\"\npool_size = 1\nlease_duration = \"1ms\"\npoll_interval = \"2h\"\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "store.backend",
                "store.postgres_url",
                "store.pool_size",
                "store.lease_duration",
                "store.poll_interval"
            ]
        );
        assert!(!errors.to_string().contains("s3cret"));
    }
}
