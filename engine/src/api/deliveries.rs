//! `/v1/deliveries`: the delivery log (filters, attempts inline) and manual retry.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, ListResponse, Tenant, page_limit,
    parse_iterator, parse_optional_time, rfc3339,
};
use crate::ids::{DeliveryId, WebhookId, now_ms};
use crate::store::{AttemptRecord, DeliveryFilter, DeliveryRecord, DeliveryStatus, SentRequest};

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    id: String,
    event_id: String,
    webhook_id: String,
    event_type: String,
    /// The event's channel, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    status: DeliveryStatus,
    attempt_count: u32,
    created_at: String,
    updated_at: String,
    next_attempt_at: Option<String>,
    last_attempt_at: Option<String>,
    last_status_code: Option<u16>,
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filtered_by: Option<String>,
    /// Every attempt, oldest first (only when one delivery is fetched).
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptView>>,
}

impl From<DeliveryRecord> for DeliveryView {
    fn from(d: DeliveryRecord) -> Self {
        DeliveryView {
            id: d.id.to_string(),
            event_id: d.event_id.to_string(),
            webhook_id: d.webhook_id.to_string(),
            event_type: d.event_type,
            channel: d.channel,
            status: d.status,
            attempt_count: d.attempts,
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
            next_attempt_at: d.next_attempt_at.map(rfc3339),
            last_attempt_at: d.last_attempt_at.map(rfc3339),
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            filtered_by: d.filtered_by,
            attempts: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    id: String,
    attempt: u32,
    started_at: String,
    url: String,
    latency_ms: u64,
    /// `delivered`, `failed` (will be retried), `exhausted`, `rejected` or `filtered`.
    #[schema(example = "delivered")]
    result: String,
    status_code: Option<u16>,
    error_code: Option<String>,
    error_message: Option<String>,
    response_snippet: Option<String>,
    next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    plugin_logs: Vec<String>,
    /// The request as sent (after plugins, signed): secrets and signatures by name only, the
    /// body up to `max_request_capture_bytes`. Absent when nothing was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<SentRequest>,
    /// Who decided `result` instead of hookd's default rules: `plugin:<name>` when an
    /// `on-response` plugin did (e.g. marked a 500 delivered, or asked to retry a 200); `null`
    /// when the default rules did.
    #[schema(example = "plugin:body-says-ok")]
    verdict_by: Option<String>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        AttemptView {
            id: a.id.to_string(),
            attempt: a.attempt,
            started_at: rfc3339(a.started_at),
            url: a.url,
            latency_ms: a.latency_ms,
            result: a.result,
            status_code: a.status_code,
            error_code: a.error_code,
            error_message: a.error_message,
            response_snippet: a.response_snippet,
            next_attempt_at: a.next_attempt_at.map(rfc3339),
            plugin_logs: a.plugin_logs,
            request: a.request,
            verdict_by: a.verdict_by,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryListQuery {
    /// Page size, 1-250 (default 50).
    #[param(minimum = 1, maximum = 250)]
    limit: Option<usize>,
    /// The `iterator` of the previous page.
    iterator: Option<String>,
    /// Only deliveries to this webhook.
    webhook_id: Option<String>,
    /// Only deliveries in this state.
    #[param(value_type = Option<DeliveryStatus>)]
    status: Option<String>,
    /// Only deliveries of events of this type.
    event_type: Option<String>,
    /// Only deliveries of events on this channel (a phone number, an instance…).
    channel: Option<String>,
    /// Only deliveries created after this time (RFC 3339 or epoch milliseconds).
    after: Option<String>,
    /// Only deliveries created before this time (RFC 3339 or epoch milliseconds).
    before: Option<String>,
}

/// The delivery log, newest first.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    operation_id = "list_deliveries",
    params(DeliveryListQuery),
    responses(
        (status = 200, description = "One page of deliveries (without attempts)", body = ListResponse<DeliveryView>),
        (status = 400, description = "Invalid query, status, time or iterator", body = ErrorBody),
        (status = 404, description = "`webhook_id` names no webhook of this tenant", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(query): ApiQuery<DeliveryListQuery>,
) -> Result<ApiJson<ListResponse<DeliveryView>>, ApiError> {
    let filter = delivery_filter(FilterFields {
        webhook_id: query.webhook_id,
        status: query.status,
        event_type: query.event_type,
        channel: query.channel,
        after: query.after,
        before: query.before,
    })?;
    let cursor = parse_iterator(query.iterator.as_deref(), DeliveryId::parse)?;
    let page = state
        .store
        .list_deliveries(
            &tenant.id,
            &filter,
            cursor.as_ref().map(DeliveryId::as_str),
            page_limit(query.limit)?,
        )
        .await?;
    let data = page.items.into_iter().map(DeliveryView::from).collect();
    Ok(ApiJson(ListResponse::new(data, page.next)))
}

/// The filter fields of a delivery listing or a bulk replay, as the client sent them.
#[derive(Debug, Default)]
pub struct FilterFields {
    pub webhook_id: Option<String>,
    pub status: Option<String>,
    pub event_type: Option<String>,
    pub channel: Option<String>,
    pub after: Option<String>,
    pub before: Option<String>,
}

/// Checks filter fields; a `webhook_id` that names nothing is a 404.
pub fn delivery_filter(fields: FilterFields) -> Result<DeliveryFilter, ApiError> {
    let webhook_id = match fields.webhook_id.as_deref() {
        Some(text) => {
            Some(WebhookId::parse(text).ok_or_else(|| ApiError::not_found("webhook", text))?)
        }
        None => None,
    };
    let status = match fields.status.as_deref() {
        Some(text) => Some(DeliveryStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "`status` is one of pending, in_flight, delivered, failed, filtered",
            )
        })?),
        None => None,
    };
    super::check_type_filter(fields.event_type.as_deref())?;
    if let Some(channel) = &fields.channel
        && !super::valid_channel(channel)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`channel` must be 1-128 of a-z A-Z 0-9 . _ - :",
        ));
    }
    Ok(DeliveryFilter {
        webhook_id,
        status,
        event_type: fields.event_type,
        channel: fields.channel,
        after_ms: parse_optional_time("after", fields.after.as_deref())?,
        before_ms: parse_optional_time("before", fields.before.as_deref())?,
    })
}

fn parse_delivery_id(id: &str) -> Result<DeliveryId, ApiError> {
    DeliveryId::parse(id).ok_or_else(|| ApiError::not_found("delivery", id))
}

/// Reads of a delivery and its attempts before answering with the last pair (an outcome is
/// recorded every few milliseconds at most per delivery, so the second almost always agrees).
const CONSISTENT_READ_TRIES: usize = 3;

/// One delivery with its attempts inline.
#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    tag = "deliveries",
    operation_id = "get_delivery",
    params(("id" = String, Path, description = "Delivery id (`dlv_...`)")),
    responses(
        (status = 200, description = "The delivery and its attempts", body = DeliveryView),
        (status = 404, description = "No such delivery for this tenant", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn get_one(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<DeliveryView>, ApiError> {
    let delivery_id = parse_delivery_id(&id)?;
    let read = || async {
        state
            .store
            .delivery(&tenant.id, &delivery_id)
            .await?
            .ok_or_else(|| ApiError::not_found("delivery", &id))
    };
    // The delivery and its attempts are two reads; an outcome recorded between them would show
    // an attempt the delivery does not count yet (seen on PostgreSQL). The outcome changes
    // both at once, so a delivery unchanged across the attempts' read agrees with them.
    let mut delivery = read().await?;
    let mut attempts = state.store.attempts(&tenant.id, &delivery_id).await?;
    for _ in 0..CONSISTENT_READ_TRIES {
        let again = read().await?;
        if (again.updated_at, again.attempts, again.status)
            == (delivery.updated_at, delivery.attempts, delivery.status)
        {
            break;
        }
        delivery = again;
        attempts = state.store.attempts(&tenant.id, &delivery_id).await?;
    }
    let mut view = DeliveryView::from(delivery);
    view.attempts = Some(attempts.into_iter().map(AttemptView::from).collect());
    Ok(ApiJson(view))
}

/// Queues a delivery for an attempt now, whatever its state. A delivery that had used up
/// its attempts gets exactly one more. One whose webhook was deleted cannot be sent anywhere:
/// `409 webhook_deleted` (it would otherwise wait in a queue nothing claims from); one whose
/// webhook is disabled would wait unseen until it is enabled: `409 webhook_disabled`.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/retry",
    tag = "deliveries",
    operation_id = "retry_delivery",
    params(("id" = String, Path, description = "Delivery id (`dlv_...`)")),
    responses(
        (status = 202, description = "Queued for an attempt now", body = DeliveryView),
        (status = 404, description = "No such delivery for this tenant", body = ErrorBody),
        (status = 409, description = "`webhook_deleted`: its webhook no longer exists; `webhook_disabled`: its webhook is disabled (enable it first)", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn retry(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, ApiJson<DeliveryView>), ApiError> {
    let delivery_id = parse_delivery_id(&id)?;
    let current = state
        .store
        .delivery(&tenant.id, &delivery_id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery", &id))?;
    match state.store.webhook(&tenant.id, &current.webhook_id).await? {
        None => {
            return Err(ApiError::conflict(
                "webhook_deleted",
                "the delivery's webhook was deleted, so there is nowhere to send it; replay its \
                 event to another webhook instead (POST /v1/events/{id}/replay)",
            ));
        }
        Some(webhook) => super::webhooks::refuse_disabled(&webhook)?,
    }
    let now = now_ms();
    let delivery = state
        .store
        .requeue(&tenant.id, &delivery_id, now)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery", &id))?;
    Ok((StatusCode::ACCEPTED, ApiJson(DeliveryView::from(delivery))))
}
