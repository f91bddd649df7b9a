//! `DELETE /v1/deliveries?before=<time>`: purges the tenant's finished deliveries (delivered,
//! failed, filtered) created before that time, with their attempts, and its events created
//! before then that have no delivery left. Pending and in-flight deliveries, and their events,
//! stay. With `&channel=`, only events on that channel and their deliveries. The same purge
//! (every channel) runs automatically for records older than `limits.retention_days`
//! (`crate::retention`). Statistics are not changed.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{ApiError, ApiJson, ApiQuery, AppState, ErrorBody, Tenant, parse_time, valid_channel};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PurgeQuery {
    /// Purge finished deliveries created before this time (RFC 3339 or epoch ms). Required.
    // `Option` so that a missing value gets this API's own 400, not the extractor's.
    #[param(required = true, value_type = String)]
    before: Option<String>,
    /// Only events on this channel and their deliveries (1-128 of `a-z A-Z 0-9 . _ - :`).
    channel: Option<String>,
}

/// How many records the purge removed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurgeView {
    deliveries: u64,
    attempts: u64,
    events: u64,
}

/// Purges the tenant's finished deliveries (and their attempts, and events left without
/// deliveries) created before `before`, of every channel or of `channel`; pending ones stay.
#[utoipa::path(
    delete,
    path = "/v1/deliveries",
    tag = "deliveries",
    operation_id = "purge_deliveries",
    params(PurgeQuery),
    responses(
        (status = 200, description = "How many records were removed", body = PurgeView),
        (status = 400, description = "`before` missing or not a time, or `channel` malformed", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn purge(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(query): ApiQuery<PurgeQuery>,
) -> Result<ApiJson<PurgeView>, ApiError> {
    let before = query.before.as_deref().ok_or_else(|| {
        ApiError::bad_request(
            "invalid_query",
            "`before` is required: an RFC 3339 time or epoch milliseconds",
        )
    })?;
    let before_ms = parse_time("before", before)?;
    if let Some(channel) = &query.channel
        && !valid_channel(channel)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`channel` must be 1-128 of a-z A-Z 0-9 . _ - :",
        ));
    }
    // If the client goes away the purge stops after the batch in progress; each batch is
    // complete on its own.
    let outcome = state
        .store
        .purge(
            Some(&tenant.id),
            query.channel.as_deref(),
            before_ms,
            &CancellationToken::new(),
        )
        .await?;
    info!(tenant = %tenant.id, one_channel = query.channel.is_some(), events = outcome.events, deliveries = outcome.deliveries, attempts = outcome.attempts, "deliveries purged on request");
    Ok(ApiJson(PurgeView {
        deliveries: outcome.deliveries,
        attempts: outcome.attempts,
        events: outcome.events,
    }))
}
