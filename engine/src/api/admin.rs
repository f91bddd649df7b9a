//! `/v1/admin`: routes for hookd's operators, reachable only with an admin key from config
//! (`admin_api_keys`); tenant keys get 403.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ApiJson, AppState, ErrorBody};
use crate::config::{Config, ReloadStatus};
use crate::ids::now_ms;

/// An authenticated operator.
pub struct Admin {
    pub config: Arc<Config>,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let config = state.config.current();
        let key = match super::credential(parts, state, &config)? {
            super::Credential::Key(key) => key,
            super::Credential::Session(claims) if claims.role == super::console::Role::Admin => {
                return Ok(Admin { config });
            }
            super::Credential::Session(_) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "admin routes need an admin key; a tenant session cannot use them",
                ));
            }
        };
        if config.is_admin_key(key) {
            return Ok(Admin { config });
        }
        if config.tenant_for_key(key).is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "admin routes need an admin key; tenant keys cannot use them",
            ));
        }
        Err(ApiError::unauthorized("the API key is not valid"))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantSummary {
    id: String,
    declared_event_types: Vec<String>,
    webhooks: usize,
    plugins: usize,
    events: usize,
    /// Deliveries not final yet (pending or in flight).
    pending_deliveries: u64,
    /// Bytes of event payloads stored.
    stored_bytes: u64,
    /// Events ingested today and over the last 7 UTC days (statistics counters).
    events_today: u64,
    events_7d: u64,
    /// Requests of this tenant being sent now (engine-wide delivery permits it holds).
    sending: usize,
    /// Use against each quota (`[quotas]` / `[tenants.quotas]`).
    quotas: TenantQuotas,
}

/// One quota: its limit and, where the tenant has one running total, its use.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaUse {
    limit: u64,
    /// Absent for per-request quotas (`deliveries_per_event`, `api_requests_per_sec`).
    #[serde(skip_serializing_if = "Option::is_none")]
    used: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantQuotas {
    webhooks: QuotaUse,
    /// `used`: the most secrets signing on one of its webhooks now.
    secrets_per_webhook: QuotaUse,
    deliveries_per_event: QuotaUse,
    pending_deliveries: QuotaUse,
    stored_bytes: QuotaUse,
    api_requests_per_sec: QuotaUse,
    api_burst: QuotaUse,
    /// Uploaded plugins, counted by the plugin host (which enforces this quota at upload;
    /// plugins from the admin directory do not count).
    plugins: QuotaUse,
    /// Bytes of the uploaded components, counted by the plugin host.
    plugin_bytes: QuotaUse,
    /// The tenant's weight in sharing delivery permits (`used` absent).
    delivery_weight: QuotaUse,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    data: Vec<TenantSummary>,
}

/// Every tenant in the running config with what it owns (admin key only).
#[utoipa::path(
    get,
    path = "/v1/admin/tenants",
    tag = "admin",
    operation_id = "admin_list_tenants",
    responses(
        (status = 200, description = "Tenants with what they hold (webhooks, plugins, events, pending deliveries, stored bytes), send (events today and in 7 days, requests being sent now) and their use against each quota", body = TenantList),
        (status = 403, description = "A tenant key: admin routes need an admin key", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn tenants(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<ApiJson<TenantList>, ApiError> {
    let mut ids: Vec<&String> = admin.config.tenants.keys().collect();
    ids.sort();
    let mut data = Vec::new();
    for id in ids {
        let tenant = &admin.config.tenants[id];
        let usage = state.quotas.usage(id).await?;
        let webhooks = state.store.webhooks_of(id).await?;
        let most_secrets = webhooks
            .iter()
            .map(|w| w.live_secrets(now_ms()).count() as u64)
            .max()
            .unwrap_or(0);
        let plugin_use = state.delivery.plugins.usage(id);
        let (plugins, plugin_bytes) = (plugin_use.plugins, plugin_use.bytes);
        let q = &tenant.quotas;
        let quota = |limit: u64, used: Option<u64>| QuotaUse { limit, used };
        let today = crate::store::stats::day_of(crate::ids::now_ms());
        let week = state
            .store
            .stats_days(
                id,
                crate::store::stats::StatsScope::Tenant,
                today.saturating_sub(6),
                today,
            )
            .await?;
        data.push(TenantSummary {
            id: id.clone(),
            declared_event_types: tenant.event_types.iter().map(|t| t.name.clone()).collect(),
            webhooks: usage.webhooks as usize,
            plugins: state.delivery.plugins.list(id).len(),
            events: usage.events as usize,
            pending_deliveries: usage.pending_deliveries,
            stored_bytes: usage.stored_bytes,
            events_today: week.last().map_or(0, |d| d.counts.events),
            events_7d: week.iter().map(|d| d.counts.events).sum(),
            sending: state.delivery.permits.held(id),
            quotas: TenantQuotas {
                webhooks: quota(q.webhooks, Some(usage.webhooks)),
                secrets_per_webhook: quota(q.secrets_per_webhook, Some(most_secrets)),
                deliveries_per_event: quota(q.deliveries_per_event, None),
                pending_deliveries: quota(q.pending_deliveries, Some(usage.pending_deliveries)),
                stored_bytes: quota(q.stored_bytes, Some(usage.stored_bytes)),
                api_requests_per_sec: quota(q.api_requests_per_sec, None),
                api_burst: quota(q.api_burst, None),
                plugins: quota(q.plugins, Some(plugins)),
                plugin_bytes: quota(q.plugin_bytes, Some(plugin_bytes)),
                delivery_weight: quota(q.delivery_weight, None),
            },
        });
    }
    Ok(ApiJson(TenantList { data }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EngineStatus {
    version: &'static str,
    uptime_seconds: u64,
    tenants: usize,
    data_dir_bytes: u64,
    config: ReloadStatus,
}

/// Engine status: version, uptime, data size, last config reload (admin key only).
#[utoipa::path(
    get,
    path = "/v1/admin/status",
    tag = "admin",
    operation_id = "admin_status",
    responses(
        (status = 200, description = "Engine status", body = EngineStatus),
        (status = 403, description = "A tenant key: admin routes need an admin key", body = ErrorBody),
    ),
)]
pub async fn status(State(state): State<AppState>, admin: Admin) -> ApiJson<EngineStatus> {
    ApiJson(EngineStatus {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        tenants: admin.config.tenants.len(),
        data_dir_bytes: state.store.size_on_disk(),
        config: state.config.reload_status(),
    })
}
