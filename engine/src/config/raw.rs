//! `Raw*` serde input: the TOML file exactly as an admin wrote it, before validation.
//!
//! Every table denies unknown keys so a typo is an error, not a silently ignored setting.
//! Durations and addresses stay strings here; `validate.rs` parses them so that every problem
//! can be reported with its key path in one pass.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    /// SHA-256 hashes of admin API keys (`sha256:<hex>`, from `hookd key`).
    #[serde(default)]
    pub admin_api_keys: Vec<String>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub delivery: RawDelivery,
    #[serde(default)]
    pub ssrf: RawSsrf,
    #[serde(default)]
    pub plugins: RawPlugins,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub quotas: RawQuotas,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
}

/// `[store]`: which backend keeps the data (`HOOKD_POSTGRES_URL` overrides `postgres_url`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub backend: Option<String>,
    pub postgres_url: Option<String>,
    pub pool_size: Option<usize>,
    pub lease_duration: Option<String>,
    pub poll_interval: Option<String>,
}

/// Per-tenant quotas; the defaults for every tenant (`[quotas]`) and one tenant's overrides
/// (`[tenants.quotas]`), where every key is optional and falls back to `[quotas]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuotas {
    pub webhooks: Option<u64>,
    pub secrets_per_webhook: Option<u64>,
    pub deliveries_per_event: Option<u64>,
    pub pending_deliveries: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub api_requests_per_sec: Option<u64>,
    pub api_burst: Option<u64>,
    pub plugins: Option<u64>,
    pub plugin_bytes: Option<u64>,
    pub delivery_weight: Option<u64>,
    pub max_delivery_lag_secs: Option<u64>,
}

/// `[security]`: the key that seals webhook secrets at rest (`HOOKD_SECRET_KEY` overrides).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    pub secret_key: Option<String>,
    pub secret_key_file: Option<String>,
    #[serde(default)]
    pub previous_secret_keys: Vec<String>,
}

/// Plugin budgets; globally (`[plugins]`) and per tenant (`[tenants.plugins]`, budgets only).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    pub deadline: Option<String>,
    pub memory_limit_bytes: Option<usize>,
    pub max_log_bytes: Option<usize>,
    pub fuel: Option<u64>,
    pub max_upload_bytes: Option<usize>,
    pub compile_timeout: Option<String>,
    pub compile_wait: Option<String>,
    pub max_concurrent_calls_per_tenant: Option<usize>,
    pub max_output_payload_bytes: Option<usize>,
    pub max_chain_length: Option<usize>,
    pub admin_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_payload_bytes: Option<usize>,
    pub idempotency_window: Option<String>,
    pub secret_rotation_overlap: Option<String>,
    pub retention_days: Option<u32>,
    pub retention: Option<String>,
    pub retention_interval: Option<String>,
    pub store_cache_mb: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub min_free_disk_bytes: Option<u64>,
}

/// Delivery settings; the same table appears globally (`[delivery]`) and per tenant
/// (`[tenants.delivery]`), where every key is optional and falls back to the global value.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub retry_schedule: Option<Vec<String>>,
    pub retry_jitter_percent: Option<u8>,
    pub attempt_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub max_in_flight_per_webhook: Option<u32>,
    pub max_in_flight: Option<usize>,
    pub max_response_body_bytes: Option<usize>,
    pub max_request_capture_bytes: Option<usize>,
    pub max_retry_after: Option<String>,
    pub disable_after: Option<String>,
    pub failing_event_after_attempts: Option<u32>,
    pub dns_servers: Option<Vec<String>>,
    pub worker_nice: Option<i32>,
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsrf {
    pub allow_http: Option<bool>,
    pub allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub id: String,
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Declared event types: names, or tables with a description, schema and example.
    #[serde(default)]
    pub event_types: Vec<super::event_types::RawEventType>,
    /// Refuse events of undeclared types and payloads failing their type's schema.
    #[serde(default)]
    pub strict_event_types: bool,
    pub delivery: Option<RawDelivery>,
    pub plugins: Option<RawPlugins>,
    pub quotas: Option<RawQuotas>,
}
