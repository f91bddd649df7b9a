//! The only place a [`Config`] is made: parses TOML into `Raw*` types and checks every value,
//! accumulating all problems (file, key path, what is wrong) instead of stopping at the first.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawConfig, RawDelivery, RawLimits, RawPlugins, RawQuotas, RawSecurity, RawStore};
use super::{
    Config, DEFAULT_DATA_DIR, DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_LISTEN, DeliveryConfig,
    LimitsConfig, PluginsConfig, QuotasConfig, SecurityConfig, SsrfConfig, StoreBackend,
    StoreConfig, TenantConfig,
};
use crate::plugin::PluginSettings;
use crate::secrets;

/// One problem in a config file.
///
/// Its `Display` (what logs, `hookd check-config` and the admin route show) names the file, the
/// line and the key path, and never a value from the file: anything the problem quotes is
/// redacted, because the value may be a secret with a typo (`secret_kye = "<the key>"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line of the problem, when it can be located.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `tenants[1].delivery.attempt_timeout`; empty for the whole file.
    pub key: String,
    /// What is wrong; may quote the offending value, so show it only through `Display`.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", redact(&self.problem))
    }
}

/// `problem` with every quoted part (`` `…` ``, `"…"`, `'…'`) replaced by `…`: problems quote
/// the values they refuse, and a refused value may be a secret.
pub fn redact(problem: &str) -> String {
    let mut out = String::with_capacity(problem.len());
    let mut chars = problem.chars();
    while let Some(c) = chars.next() {
        if matches!(c, '`' | '"' | '\'') {
            // Skip to the closing quote (or the end: an unterminated quote hides the rest).
            for inner in chars.by_ref() {
                if inner == c {
                    break;
                }
            }
            out.push(c);
            out.push('…');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(file: &Path, key: &str, problem: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: None,
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
            line: None,
            key: key.into(),
            problem: problem.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => match humantime::parse_duration(text) {
                Ok(duration) => duration,
                Err(err) => {
                    self.push(
                        key,
                        format!("`{text}` is not a duration ({err}); write e.g. 15s, 5m or 2h"),
                    );
                    default
                }
            },
        }
    }

    /// [`Self::duration`], refused with `problem` outside `within`.
    fn duration_within(
        &mut self,
        key: &str,
        value: Option<&String>,
        default: Duration,
        within: std::ops::RangeInclusive<Duration>,
        problem: &str,
    ) -> Duration {
        let duration = self.duration(key, value, default);
        if !within.contains(&duration) {
            self.push(key, problem);
        }
        duration
    }
}

pub(super) fn parse_and_validate(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    validate(file, text).map_err(|mut errors| {
        for error in &mut errors.0 {
            if error.line.is_none() {
                error.line = locate(text, &error.key);
            }
        }
        errors
    })
}

/// A TOML syntax or shape error as a [`ConfigError`]: the line and the table it is in, and
/// toml's message without the source line it would quote. A value of the wrong type is named
/// by its key (the line parsed, so its key is a key); otherwise the key written on that line is
/// not named: on a line that does not parse, what looks like a key may be a pasted value.
fn toml_error(file: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let line = err
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let message = err.message().trim_end();
    let wrong_value = ["invalid type:", "invalid value:", "invalid length"]
        .iter()
        .any(|prefix| message.starts_with(prefix));
    let key = line
        .and_then(|line| {
            if wrong_value {
                // Only a key shaped like hookd's own (`max_payload_bytes`): a map's key may be
                // a user's text.
                key_at(text, line)
                    .filter(|path| {
                        let last = path.rsplit('.').next().unwrap_or_default();
                        last.len() <= 40
                            && last.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
                    .or_else(|| table_at(text, line))
            } else {
                table_at(text, line)
            }
        })
        .unwrap_or_default();
    // "unknown field `secret_kye`, expected one of `secret_key`, ...": the line names the
    // field; the expected names are hookd's own.
    let problem = match message.strip_prefix("unknown field `") {
        Some(rest) => match rest.split_once("`, ") {
            Some((_, expected)) => format!("unknown key, {}", expected.replace('`', "")),
            None => "unknown key".to_string(),
        },
        None => message.to_string(),
    };
    ConfigError {
        file: file.to_path_buf(),
        line,
        key,
        problem,
    }
}

/// The table path (`tenants[1].delivery`, `ssrf`) that `line` (1-based) of `text` is in;
/// `None` at the top level.
fn table_at(text: &str, line: usize) -> Option<String> {
    let mut table = None;
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    for raw_line in text.lines().take(line) {
        if let Some(header) = table_header(raw_line.trim(), &mut array_counts) {
            table = Some(header);
        }
    }
    table
}

/// The table path that `line` (1-based) of `text` is in and the key written on that line,
/// joined (`tenants[1].delivery.attempt_timeout`); for locating the keys validation names.
fn key_at(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    for (index, raw_line) in text.lines().enumerate().take(line) {
        let trimmed = raw_line.trim();
        if let Some(header) = table_header(trimmed, &mut array_counts) {
            table = header;
            if index + 1 == line {
                return Some(table);
            }
            continue;
        }
        if index + 1 == line {
            let key = trimmed
                .split_once('=')
                .map(|(key, _)| key.trim().trim_matches('"').to_string())
                .filter(|key| !key.is_empty() && !key.starts_with('#'));
            return match (table.is_empty(), key) {
                (_, None) => (!table.is_empty()).then_some(table),
                (true, Some(key)) => Some(key),
                (false, Some(key)) => Some(format!("{table}.{key}")),
            };
        }
    }
    None
}

/// The path of a `[table]` or `[[array]]` header line, with array tables numbered
/// (`tenants[0]`, then `tenants[0].delivery` for a sub-table of the last one).
fn table_header(line: &str, array_counts: &mut HashMap<String, usize>) -> Option<String> {
    let line = line.split('#').next().unwrap_or_default().trim();
    if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
        let name = name.trim().to_string();
        let count = array_counts.entry(name.clone()).or_insert(0);
        *count += 1;
        return Some(format!("{name}[{}]", *count - 1));
    }
    let name = line.strip_prefix('[')?.strip_suffix(']')?.trim();
    // A sub-table of an array table belongs to its last element.
    for (array, count) in array_counts.iter() {
        if let Some(rest) = name.strip_prefix(&format!("{array}.")) {
            return Some(format!("{array}[{}].{rest}", count - 1));
        }
    }
    Some(name.to_string())
}

/// The line (1-based) where `key_path` (as validation reports it, e.g.
/// `tenants[1].delivery.retry_schedule[2]`) is written, if it is on a line of its own.
fn locate(text: &str, key_path: &str) -> Option<usize> {
    if key_path.is_empty() {
        return None;
    }
    // An element of an array value is on the line of its key.
    let key_path = match key_path.strip_suffix(']') {
        Some(rest) if !rest.ends_with(']') => match rest.rsplit_once('[') {
            Some((path, index)) if index.bytes().all(|b| b.is_ascii_digit()) => {
                // `tenants[0]` itself is a table: keep it.
                if text.contains(&format!("[[{path}]]")) {
                    key_path
                } else {
                    path
                }
            }
            _ => key_path,
        },
        _ => key_path,
    };
    let line_count = text.lines().count();
    (1..=line_count).find(|line| key_at(text, *line).as_deref() == Some(key_path))
}

fn validate(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|err| ConfigErrors(vec![toml_error(file, text, &err)]))?;
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
            DEFAULT_IDEMPOTENCY_WINDOW,
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
        compile_worker: None,
    };

    let security = security_config(&mut c, &raw.security);
    let store = store_config(&mut c, &raw.store);
    let global_quotas = quotas(&mut c, "quotas", &raw.quotas, &DEFAULT_QUOTAS);

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
        let event_types = event_catalogue(&mut c, &key, &raw_tenant.event_types);
        let tenant_delivery = match &raw_tenant.delivery {
            Some(overrides) => {
                if overrides.max_in_flight.is_some() {
                    c.push(
                        format!("{key}.delivery.max_in_flight"),
                        "is an engine-wide limit; set it in [delivery] only",
                    );
                }
                if overrides.worker_nice.is_some() {
                    c.push(
                        format!("{key}.delivery.worker_nice"),
                        "is engine-wide; set it in [delivery] only",
                    );
                }
                if overrides.dns_servers.is_some() {
                    c.push(
                        format!("{key}.delivery.dns_servers"),
                        "is engine-wide; set it in [delivery] only",
                    );
                }
                if overrides.shutdown_grace.is_some() {
                    c.push(
                        format!("{key}.delivery.shutdown_grace"),
                        "is engine-wide; set it in [delivery] only",
                    );
                }
                delivery_config(&mut c, &format!("{key}.delivery"), overrides, &delivery)
            }
            None => delivery.clone(),
        };
        let mut tenant_plugins = match &raw_tenant.plugins {
            Some(overrides) => {
                let engine_wide = [
                    ("max_upload_bytes", overrides.max_upload_bytes.is_some()),
                    ("compile_timeout", overrides.compile_timeout.is_some()),
                    ("compile_wait", overrides.compile_wait.is_some()),
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
        let tenant_quotas = match &raw_tenant.quotas {
            Some(overrides) => quotas(&mut c, &format!("{key}.quotas"), overrides, &global_quotas),
            None => global_quotas.clone(),
        };
        // The tenant's share of the plugin host's chain slots follows its delivery weight.
        tenant_plugins.slot_weight = tenant_quotas.delivery_weight;
        tenants.insert(
            raw_tenant.id.clone(),
            TenantConfig {
                id: raw_tenant.id.clone(),
                event_types,
                strict_event_types: raw_tenant.strict_event_types,
                delivery: tenant_delivery,
                plugins: tenant_plugins,
                quotas: tenant_quotas,
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
        quotas: global_quotas,
        tenants,
        api_keys,
        admin_keys,
        source: None,
        start_overrides: Vec::new(),
    })
}

/// A tenant's `event_types`: each entry checked (name, schema, example against the schema),
/// names unique.
fn event_catalogue(
    c: &mut Collector<'_>,
    tenant_key: &str,
    raw: &[super::event_types::RawEventType],
) -> Vec<super::event_types::EventTypeConfig> {
    let mut out: Vec<super::event_types::EventTypeConfig> = Vec::new();
    for (k, entry) in raw.iter().enumerate() {
        let key = format!("{tenant_key}.event_types[{k}]");
        match super::event_types::EventTypeConfig::from_raw(entry) {
            Ok(entry) if out.iter().any(|e| e.name == entry.name) => {
                c.push(key, format!("`{}` is declared twice", entry.name));
            }
            Ok(entry) => out.push(entry),
            Err(problems) => {
                for (sub, problem) in problems {
                    let key = match entry {
                        super::event_types::RawEventType::Name(_) => key.clone(),
                        super::event_types::RawEventType::Full(_) => format!("{key}.{sub}"),
                    };
                    c.push(key, problem);
                }
            }
        }
    }
    out
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
/// sled's page cache. The hot part of the tree is small: each webhook's schedule head and
/// tail, the newest listing pages, idempotency buckets and counters. What else sled caches
/// are pages of a backlog that nobody reads until it drains, so the cache only sets how far
/// the process grows with the backlog (heaptrack, 1M pending deliveries: sled's cached page
/// values were 44.5 MiB of the heap's peak with 64 MiB, 12 MiB with 16). sled's default is 1 GiB.
const DEFAULT_STORE_CACHE_MB: u64 = 16;
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

/// The quotas every tenant gets unless `[quotas]` or its `[tenants.quotas]` say otherwise.
/// Generous for one service's traffic, small enough that one tenant cannot take the engine's
/// disk, queue or CPU from the others (`config/hookd.toml` explains each).
pub const DEFAULT_QUOTAS: QuotasConfig = QuotasConfig {
    webhooks: 100,
    secrets_per_webhook: 3,
    deliveries_per_event: 100,
    pending_deliveries: 1_000_000,
    stored_bytes: 10 << 30,
    api_requests_per_sec: 1000,
    api_burst: 2000,
    plugins: 20,
    plugin_bytes: 128 << 20,
    delivery_weight: 1,
    max_delivery_lag_secs: 0,
};

/// `[quotas]` or `[tenants.quotas]` over `base`; every key has a range.
fn quotas(
    c: &mut Collector<'_>,
    prefix: &str,
    raw: &RawQuotas,
    base: &QuotasConfig,
) -> QuotasConfig {
    let mut out = base.clone();
    let fields: [(&str, Option<u64>, &mut u64, u64, u64); 11] = [
        ("webhooks", raw.webhooks, &mut out.webhooks, 1, 1_000_000),
        (
            "secrets_per_webhook",
            raw.secrets_per_webhook,
            &mut out.secrets_per_webhook,
            1,
            16,
        ),
        (
            "deliveries_per_event",
            raw.deliveries_per_event,
            &mut out.deliveries_per_event,
            1,
            1_000_000,
        ),
        (
            "pending_deliveries",
            raw.pending_deliveries,
            &mut out.pending_deliveries,
            1,
            u64::MAX,
        ),
        (
            "stored_bytes",
            raw.stored_bytes,
            &mut out.stored_bytes,
            1,
            u64::MAX,
        ),
        (
            "api_requests_per_sec",
            raw.api_requests_per_sec,
            &mut out.api_requests_per_sec,
            1,
            1_000_000,
        ),
        (
            "api_burst",
            raw.api_burst,
            &mut out.api_burst,
            1,
            10_000_000,
        ),
        ("plugins", raw.plugins, &mut out.plugins, 0, 10_000),
        (
            "plugin_bytes",
            raw.plugin_bytes,
            &mut out.plugin_bytes,
            0,
            u64::MAX,
        ),
        (
            "delivery_weight",
            raw.delivery_weight,
            &mut out.delivery_weight,
            1,
            100,
        ),
        (
            "max_delivery_lag_secs",
            raw.max_delivery_lag_secs,
            &mut out.max_delivery_lag_secs,
            0,
            86_400,
        ),
    ];
    for (name, value, slot, min, max) in fields {
        if let Some(value) = value {
            if !(min..=max).contains(&value) {
                c.push(
                    format!("{prefix}.{name}"),
                    if max == u64::MAX {
                        format!("must be at least {min}")
                    } else {
                        format!("must be between {min} and {max}")
                    },
                );
            }
            *slot = value.clamp(min, max);
        }
    }
    // A burst below the rate would refuse a steady client at exactly the rate; without an
    // explicit burst, a changed rate keeps the default's ratio (two seconds' worth).
    if raw.api_requests_per_sec.is_some() && raw.api_burst.is_none() {
        out.api_burst = out.api_requests_per_sec.saturating_mul(2).min(10_000_000);
    }
    if out.api_burst < out.api_requests_per_sec {
        c.push(
            format!("{prefix}.api_burst"),
            "must be at least api_requests_per_sec",
        );
    }
    out
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
    if raw.compile_wait.is_some() {
        out.compile_wait = c.duration(
            &key("compile_wait"),
            raw.compile_wait.as_ref(),
            base.compile_wait,
        );
        if out.compile_wait > Duration::from_secs(300) {
            c.push(key("compile_wait"), "must be at most 300s");
        }
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
            max_request_capture_bytes: 64 * 1024,
            max_retry_after: Duration::from_secs(HOUR),
            disable_after: Duration::from_secs(5 * 24 * HOUR),
            failing_event_after_attempts: 3,
            dns_servers: Vec::new(),
            worker_nice: crate::delivery::runtime::DEFAULT_WORKER_NICE,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Longest `[delivery] shutdown_grace`: a stop must stay bounded.
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

fn delivery_config(
    c: &mut Collector<'_>,
    prefix: &str,
    raw: &RawDelivery,
    base: &DeliveryConfig,
) -> DeliveryConfig {
    let mut out = base.clone();
    if let Some(schedule) = &raw.retry_schedule {
        match parse_retry_schedule(schedule) {
            Ok(delays) => out.retry_schedule = delays,
            Err(problems) => {
                for (index, problem) in problems {
                    let key = match index {
                        Some(i) => format!("{prefix}.retry_schedule[{i}]"),
                        None => format!("{prefix}.retry_schedule"),
                    };
                    c.push(key, problem);
                }
            }
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
    out.shutdown_grace = c.duration_within(
        &key("shutdown_grace"),
        raw.shutdown_grace.as_ref(),
        base.shutdown_grace,
        Duration::ZERO..=MAX_SHUTDOWN_GRACE,
        "must be between 0s and 5m",
    );
    out.attempt_timeout = c.duration_within(
        &key("attempt_timeout"),
        raw.attempt_timeout.as_ref(),
        base.attempt_timeout,
        Duration::from_nanos(1)..=Duration::from_secs(300),
        "must be between 1ms and 5m",
    );
    out.connect_timeout = c.duration_within(
        &key("connect_timeout"),
        raw.connect_timeout.as_ref(),
        base.connect_timeout,
        Duration::from_nanos(1)..=Duration::MAX,
        "must be more than 0",
    );
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
    if let Some(n) = raw.worker_nice {
        if !(0..=19).contains(&n) {
            c.push(
                key("worker_nice"),
                "must be between 0 (the API's priority) and 19 (the lowest)",
            );
        }
        out.worker_nice = n.clamp(0, 19);
    }
    if let Some(n) = raw.max_response_body_bytes {
        if n > 1024 * 1024 {
            c.push(key("max_response_body_bytes"), "must be at most 1048576");
        }
        out.max_response_body_bytes = n.min(1024 * 1024);
    }
    if let Some(n) = raw.max_request_capture_bytes {
        if n > 16 * 1024 * 1024 {
            c.push(
                key("max_request_capture_bytes"),
                "must be at most 16777216 (16 MiB)",
            );
        }
        out.max_request_capture_bytes = n.min(16 * 1024 * 1024);
    }
    out.max_retry_after = c.duration_within(
        &key("max_retry_after"),
        raw.max_retry_after.as_ref(),
        base.max_retry_after,
        Duration::ZERO..=MAX_RETRY_DELAY,
        "must be at most 30 days, the longest retry delay",
    );
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

/// Most retries a schedule may list.
pub const MAX_RETRY_SCHEDULE_LEN: usize = 50;
/// The longest single retry delay: 30 days. A schedule longer than that is a mistake (retries
/// beyond it outlive the retention of most setups), and a delay of millennia once put the next
/// attempt past year 9999, which no timestamp in the API can show.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30 * 86_400);

/// A retry schedule (`["5s", "5m", …]`), as config and webhooks write it: durations, at most
/// [`MAX_RETRY_SCHEDULE_LEN`]; empty means no retries. Every problem, with the index of the
/// entry it concerns (`None` for the whole list).
pub fn parse_retry_schedule(
    schedule: &[String],
) -> Result<Vec<Duration>, Vec<(Option<usize>, String)>> {
    let mut problems = Vec::new();
    if schedule.len() > MAX_RETRY_SCHEDULE_LEN {
        problems.push((
            None,
            format!("at most {MAX_RETRY_SCHEDULE_LEN} retries are allowed"),
        ));
    }
    let mut delays = Vec::with_capacity(schedule.len());
    for (i, text) in schedule.iter().enumerate() {
        match humantime::parse_duration(text) {
            Ok(delay) if delay > MAX_RETRY_DELAY => problems.push((
                Some(i),
                format!("`{text}` is longer than the longest retry delay, 30 days"),
            )),
            Ok(delay) => delays.push(delay),
            Err(err) => problems.push((
                Some(i),
                format!("`{text}` is not a duration ({err}); write e.g. \"15s\", \"5m\", \"2h\""),
            )),
        }
    }
    if problems.is_empty() {
        Ok(delays)
    } else {
        Err(problems)
    }
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

    /// Each error's key and problem, in order.
    fn keys_and_problems(errors: &ConfigErrors) -> Vec<(&str, &str)> {
        errors
            .0
            .iter()
            .map(|e| (e.key.as_str(), e.problem.as_str()))
            .collect()
    }

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_and_validate(Path::new("hookd.toml"), text)
    }

    #[test]
    fn retry_delays_over_30_days_are_refused_in_schedules_and_max_retry_after() {
        let errors =
            parse_retry_schedule(&["5s".into(), "31d".into(), "10000years".into()]).unwrap_err();
        assert_eq!(
            errors.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
        assert!(errors[0].1.contains("30 days"), "{errors:?}");
        assert_eq!(
            parse_retry_schedule(&["30d".into()]).unwrap(),
            [Duration::from_secs(30 * 86_400)]
        );
        let text = "[security]\nsecret_key = \"dGVzdC1zZWNyZXQta2V5LWZvci1ob29rZC10ZXN0cyE=\"\n\
                    [delivery]\nmax_retry_after = \"1000years\"\n";
        let errors = parse_and_validate(Path::new("hookd.toml"), text).unwrap_err();
        assert!(
            errors.0.iter().any(|e| e.key == "delivery.max_retry_after"),
            "{errors}"
        );
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
    fn shutdown_grace_is_0s_to_5m_and_only_global() {
        assert_eq!(
            parse("").unwrap().delivery.shutdown_grace,
            Duration::from_secs(10)
        );
        for (text, grace) in [("0s", Duration::ZERO), ("45s", Duration::from_secs(45))] {
            let config = parse(&format!("[delivery]\nshutdown_grace = \"{text}\"\n")).unwrap();
            assert_eq!(config.delivery.shutdown_grace, grace);
        }
        let errors = parse(
            r#"
            [delivery]
            shutdown_grace = "6m"
            [[tenants]]
            id = "acme"
            [tenants.delivery]
            shutdown_grace = "1s"
            "#,
        )
        .unwrap_err();
        assert_eq!(
            keys_and_problems(&errors),
            [
                ("delivery.shutdown_grace", "must be between 0s and 5m"),
                (
                    "tenants[0].delivery.shutdown_grace",
                    "is engine-wide; set it in [delivery] only"
                )
            ]
        );
        let errors = parse("[delivery]\nshutdown_grace = \"soon\"\n").unwrap_err();
        assert_eq!(errors.0[0].key, "delivery.shutdown_grace");
        assert!(errors.0[0].problem.contains("is not a duration"));
    }

    #[test]
    fn worker_nice_is_0_to_19_and_only_global() {
        assert_eq!(
            parse("").unwrap().delivery.worker_nice,
            crate::delivery::runtime::DEFAULT_WORKER_NICE
        );
        assert_eq!(
            parse("[delivery]\nworker_nice = 7\n")
                .unwrap()
                .delivery
                .worker_nice,
            7
        );
        let errors = parse(
            r#"
            [delivery]
            worker_nice = 20
            [[tenants]]
            id = "acme"
            [tenants.delivery]
            worker_nice = 1
            "#,
        )
        .unwrap_err();
        assert_eq!(
            keys_and_problems(&errors),
            [
                (
                    "delivery.worker_nice",
                    "must be between 0 (the API's priority) and 19 (the lowest)"
                ),
                (
                    "tenants[0].delivery.worker_nice",
                    "is engine-wide; set it in [delivery] only"
                )
            ]
        );
        assert!(parse("[delivery]\nworker_nice = -1\n").is_err());
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
    fn unknown_keys_are_refused_by_file_line_and_key_path() {
        let errors = parse("[delivery]\nretry_shedule = [\"1s\"]\n").unwrap_err();
        assert_eq!(errors.0[0].key, "delivery", "{errors}");
        assert_eq!(errors.0[0].line, Some(2));
        assert!(
            errors
                .to_string()
                .contains("hookd.toml:2: `delivery`: unknown key, expected one of retry_schedule"),
            "{errors}"
        );
    }

    /// A value of the wrong type is named by its key (the line parsed), never quoted.
    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_key() {
        let errors = parse("[limits]\nmax_payload_bytes = \"big\"\n").unwrap_err();
        assert_eq!(
            (errors.0[0].line, errors.0[0].key.as_str()),
            (Some(2), "limits.max_payload_bytes"),
            "{errors}"
        );
        assert!(!errors.to_string().contains("big"), "{errors}");
        let errors = parse("[[tenants]]\nid = \"a\"\nstrict_event_types = 3\n").unwrap_err();
        assert_eq!(errors.0[0].key, "tenants[0].strict_event_types", "{errors}");
    }

    /// The refusal of the issue: a renamed `secret_key` line must not print the key.
    #[test]
    fn a_refused_line_is_named_never_quoted() {
        let secret = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhayE=";
        let cases = [
            format!("[security]\nsecret_kye = \"{secret}\"\n"),
            format!("listen = \"127.0.0.1:80\"\n[limits]\nmax_payload_bytes = \"{secret}\"\n"),
            format!("[delivery]\nattempt_timeout = \"{secret}\"\n"),
            format!("[[tenants]]\nid = \"{secret}\"\n"),
            format!("[security]\nsecret_key = \"{secret}\n"),
            format!("{secret}\n"),
            format!("[ssrf]\nallow = [\"{secret}\"]\n"),
        ];
        for text in cases {
            let errors = parse(&text).unwrap_err();
            let shown = errors.to_string();
            assert!(!shown.contains(&secret[..12]), "{text:?} → {shown}");
            assert!(
                errors.0.iter().all(|e| e.line.is_some()),
                "{text:?} → {shown}"
            );
        }
        let errors = parse(&format!("[security]\nsecret_kye = \"{secret}\"\n")).unwrap_err();
        assert_eq!(
            (errors.0[0].line, errors.0[0].key.as_str()),
            (Some(2), "security")
        );
        let errors = parse(&format!(
            "[[tenants]]\nid = \"a\"\n[[tenants]]\nid = \"b\"\n[tenants.delivery]\nattempt_timeout = \"{secret}\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            (errors.0[0].line, errors.0[0].key.as_str()),
            (Some(6), "tenants[1].delivery.attempt_timeout")
        );
    }

    #[test]
    fn redaction_keeps_the_sentence_and_drops_the_quoted_values() {
        assert_eq!(
            redact("`x1` is not a duration (\"bad\"); write e.g. 15s"),
            "`…` is not a duration (\"…\"); write e.g. 15s"
        );
        assert_eq!(
            redact("must be between 1 and 16"),
            "must be between 1 and 16"
        );
        assert_eq!(redact("unterminated `secret"), "unterminated `…`");
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
    fn quotas_default_for_every_tenant_and_are_overridden_per_tenant() {
        let config = parse(
            r#"
            [quotas]
            webhooks = 10
            api_requests_per_sec = 50
            [[tenants]]
            id = "acme"
            [tenants.quotas]
            webhooks = 2
            secrets_per_webhook = 5
            [[tenants]]
            id = "globex"
            "#,
        )
        .unwrap();
        let acme = &config.tenant("acme").unwrap().quotas;
        assert_eq!((acme.webhooks, acme.secrets_per_webhook), (2, 5));
        assert_eq!((acme.api_requests_per_sec, acme.api_burst), (50, 100));
        let globex = &config.tenant("globex").unwrap().quotas;
        assert_eq!(globex.webhooks, 10);
        assert_eq!(globex.secrets_per_webhook, 3);
        assert_eq!(parse("").unwrap().quotas, DEFAULT_QUOTAS);

        let errors = parse(
            r#"
            [quotas]
            secrets_per_webhook = 0
            delivery_weight = 1000
            [[tenants]]
            id = "a"
            [tenants.quotas]
            api_requests_per_sec = 10
            api_burst = 5
            webhook = 3
            "#,
        )
        .unwrap_err();
        assert!(errors.0[0].problem.contains("webhook"), "{errors}");
        let errors = parse(
            r#"
            [quotas]
            secrets_per_webhook = 0
            delivery_weight = 1000
            [[tenants]]
            id = "a"
            [tenants.quotas]
            api_requests_per_sec = 10
            api_burst = 5
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "quotas.secrets_per_webhook",
                "quotas.delivery_weight",
                "tenants[0].quotas.api_burst"
            ]
        );
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
        // The hint survives the redaction of quoted values.
        assert!(bad.to_string().contains("hookd secret-key"), "{bad}");

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
