//! Replay: sending an event again, as a new delivery with a new `webhook-id`.
//!
//! - `POST /v1/events/{id}/replay` re-sends one event to the webhooks that match it *now* (type
//!   and channel filters, active or paused), or to one named webhook whatever its filters.
//! - `POST /v1/deliveries/replay` re-sends, for each delivery matching a filter (webhook,
//!   status, event type, channel, time range), its event to its webhook: at most `limit`
//!   (≤ [`MAX_BULK_REPLAY`]) per request, continued with the returned `iterator`; `dry_run`
//!   only counts what would be replayed. Deliveries of a deleted or disabled webhook are
//!   skipped; naming a disabled webhook in an event replay is `409 webhook_disabled`.
//!
//! A replay is written like any event — through ingest and `Store::append_events`, one group
//! commit, flushed before the answer — as a new event carrying the original's type, channel and
//! payload (`replay_of` in the answer names the original). So a receiver that deduplicates on
//! `webhook-id` takes it, and the original event and its deliveries stay as they were.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::info;
use utoipa::ToSchema;

use super::deliveries::{FilterFields, delivery_filter};
use super::events::EventView;
use super::{ApiBody, ApiError, ApiJson, ApiPath, AppState, ErrorBody, Tenant, optional_json};
use crate::ids::{DeliveryId, EventId, WebhookId, now_ms};
use crate::ingest::{EventInput, IngestOutcome, prepare_event};
use crate::store::{EventRecord, NewEvent, WebhookStatus};

/// Most deliveries one bulk replay request re-sends.
pub const MAX_BULK_REPLAY: usize = 1000;
/// Default `limit` of a bulk replay.
const DEFAULT_BULK_REPLAY: usize = 100;
/// Most matching deliveries a dry run counts before it says `truncated`.
const MAX_DRY_RUN_COUNT: usize = 100_000;
/// Deliveries read per page while collecting a bulk replay.
const SCAN_PAGE: usize = 250;

/// Optional body of an event replay.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayEvent {
    /// Send only to this webhook (whatever its filters); absent: every webhook that matches
    /// the event now.
    #[serde(default)]
    webhook_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayedEvent {
    /// The event that was replayed.
    replay_of: String,
    /// The new event, with its new deliveries.
    event: EventView,
}

/// The original event as a new one (same type, channel and payload, created now).
fn copy_of(event: &EventRecord) -> EventInput {
    EventInput {
        event_type: event.event_type.clone(),
        channel: event.channel.clone(),
        idempotency_key: None,
        created_at: now_ms(),
        payload: event.payload.clone(),
    }
}

fn to_one(tenant: &str, event: &EventRecord, webhook: WebhookId) -> NewEvent {
    let input = copy_of(event);
    NewEvent {
        tenant: tenant.to_string(),
        event_type: input.event_type,
        channel: input.channel,
        idempotency_key: None,
        idempotency_window_ms: 0,
        created_at: input.created_at,
        payload: input.payload,
        webhooks: vec![webhook],
    }
}

/// Re-sends an event: new deliveries (new `webhook-id`s) to the webhooks matching it now, or
/// to one named webhook.
#[utoipa::path(
    post,
    path = "/v1/events/{id}/replay",
    tag = "events",
    operation_id = "replay_event",
    params(("id" = String, Path, description = "Event id (`evt_...`)")),
    request_body(content = Option<ReplayEvent>, description = "Optional; empty means every webhook that matches now"),
    responses(
        (status = 202, description = "Stored durably; the new deliveries are queued", body = ReplayedEvent),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such event (or webhook) for this tenant", body = ErrorBody),
        (status = 409, description = "`webhook_disabled`: the named webhook is disabled (enable it first)", body = ErrorBody),
        (status = 422, description = "Invalid body", body = ErrorBody),
        (status = 429, description = "The replays would pass a quota (`quota_exceeded`: `pending_deliveries`, `stored_bytes` or `deliveries_per_event`, with its limit and the current use; nothing was written), or over the request rate (`rate_limited`, with Retry-After)", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store cannot take writes, or hookd is shutting down", body = ErrorBody),
    ),
)]
pub async fn replay_event(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, ApiJson<ReplayedEvent>), ApiError> {
    let body: ReplayEvent = optional_json(&state, &tenant, body).await?;
    let event_id = EventId::parse(&id).ok_or_else(|| ApiError::not_found("event", &id))?;
    let original = state
        .store
        .event(&tenant.id, &event_id)
        .await?
        .ok_or_else(|| ApiError::not_found("event", &id))?;
    let new = match &body.webhook_id {
        Some(text) => {
            let webhook_id =
                WebhookId::parse(text).ok_or_else(|| ApiError::not_found("webhook", text))?;
            let webhook = state
                .store
                .webhook(&tenant.id, &webhook_id)
                .await?
                .ok_or_else(|| ApiError::not_found("webhook", text))?;
            super::webhooks::refuse_disabled(&webhook)?;
            to_one(&tenant.id, &original, webhook_id)
        }
        None => {
            prepare_event(
                state.store.as_ref(),
                &tenant.id,
                copy_of(&original),
                0,
                None,
            )
            .await?
        }
    };
    // A replay is a new event: the tenant's quotas apply as to any.
    let reservation = super::events::admit(&state, &tenant, &new).await?;
    match state.ingest.submit(new).await? {
        IngestOutcome::Created { event, deliveries } => {
            reservation.commit();
            info!(tenant = %tenant.id, event_id = %event.id, replay_of = %original.id, deliveries = deliveries.len(), "event replayed");
            Ok((
                StatusCode::ACCEPTED,
                ApiJson(ReplayedEvent {
                    replay_of: original.id.to_string(),
                    event: EventView::new(event, Some(deliveries)),
                }),
            ))
        }
        IngestOutcome::Duplicate(_) => unreachable!("a replay carries no idempotency key"),
    }
}

/// Body of a bulk replay: the filter of `GET /v1/deliveries`, a bound and a dry-run switch.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkReplay {
    #[serde(default)]
    webhook_id: Option<String>,
    /// `pending`, `in_flight`, `delivered`, `failed` or `filtered`.
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    /// Deliveries created after this time (RFC 3339 or epoch ms).
    #[serde(default)]
    after: Option<String>,
    /// Deliveries created before this time (RFC 3339 or epoch ms).
    #[serde(default)]
    before: Option<String>,
    /// Most deliveries replayed by this request, 1-1000 (default 100).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `iterator` of the previous request, to continue after its last delivery.
    #[serde(default)]
    iterator: Option<String>,
    /// Only count the matching deliveries (up to 100000); replay nothing.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayedDelivery {
    /// The delivery whose event was replayed.
    replay_of: String,
    /// The new event and delivery.
    event_id: String,
    delivery_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkReplayOutcome {
    /// Matching deliveries: all of them for a dry run (up to 100000, see `truncated`), else
    /// those replayed by this request.
    matched: usize,
    /// Deliveries replayed (0 for a dry run).
    replayed: usize,
    /// The count stopped at its limit (dry run).
    truncated: bool,
    replays: Vec<ReplayedDelivery>,
    /// More deliveries match: send the same body with this `iterator` to go on.
    iterator: Option<String>,
}

/// Collects up to `limit` matching deliveries, newest first, from `cursor` on; returns them
/// and where the listing stopped (when it stopped early).
async fn matching(
    state: &AppState,
    tenant: &str,
    filter: &crate::store::DeliveryFilter,
    mut cursor: Option<String>,
    limit: usize,
) -> Result<(Vec<crate::store::DeliveryRecord>, Option<String>), ApiError> {
    let mut found = Vec::new();
    loop {
        let want = (limit - found.len()).min(SCAN_PAGE);
        let page = state
            .store
            .list_deliveries(tenant, filter, cursor.as_deref(), want)
            .await?;
        found.extend(page.items);
        cursor = page.next;
        if cursor.is_none() || found.len() >= limit {
            return Ok((found, cursor));
        }
    }
}

/// Replays the events of the deliveries matching a filter, each to its delivery's webhook;
/// bounded per request, or only counted (`dry_run`). Deliveries of a deleted webhook are
/// skipped (there is nowhere to send them), and of a disabled one (nothing would be sent).
#[utoipa::path(
    post,
    path = "/v1/deliveries/replay",
    tag = "deliveries",
    operation_id = "replay_deliveries",
    request_body = BulkReplay,
    responses(
        (status = 202, description = "The replays are stored durably and queued", body = BulkReplayOutcome),
        (status = 200, description = "A dry run: how many deliveries match", body = BulkReplayOutcome),
        (status = 400, description = "Malformed JSON, status, time, channel or iterator", body = ErrorBody),
        (status = 404, description = "`webhook_id` names no webhook of this tenant", body = ErrorBody),
        (status = 413, description = "The body is larger than allowed", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Invalid body or `limit` out of range", body = ErrorBody),
        (status = 429, description = "The replays would pass a quota (`quota_exceeded`: `pending_deliveries`, `stored_bytes` or `deliveries_per_event`, with its limit and the current use; nothing was written), or over the request rate (`rate_limited`, with Retry-After)", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store cannot take writes, or hookd is shutting down", body = ErrorBody),
    ),
)]
pub async fn replay_deliveries(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(body): ApiJson<BulkReplay>,
) -> Result<(StatusCode, ApiJson<BulkReplayOutcome>), ApiError> {
    let limit = match body.limit {
        None => DEFAULT_BULK_REPLAY,
        Some(n) if (1..=MAX_BULK_REPLAY).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_limit",
                format!("`limit` must be between 1 and {MAX_BULK_REPLAY}"),
            ));
        }
    };
    let filter = delivery_filter(FilterFields {
        webhook_id: body.webhook_id,
        status: body.status,
        event_type: body.event_type,
        channel: body.channel,
        after: body.after,
        before: body.before,
    })?;
    let cursor = super::parse_iterator(body.iterator.as_deref(), DeliveryId::parse)?
        .map(|id| id.to_string());
    if body.dry_run {
        let (found, rest) =
            matching(&state, &tenant.id, &filter, cursor, MAX_DRY_RUN_COUNT).await?;
        return Ok((
            StatusCode::OK,
            ApiJson(BulkReplayOutcome {
                matched: found.len(),
                replayed: 0,
                truncated: rest.is_some(),
                replays: Vec::new(),
                iterator: None,
            }),
        ));
    }
    let (found, rest) = matching(&state, &tenant.id, &filter, cursor, limit).await?;
    // Each delivery's event, read once per event.
    let mut events: std::collections::HashMap<EventId, Option<EventRecord>> = Default::default();
    let mut group = Vec::with_capacity(found.len());
    let mut origins = Vec::with_capacity(found.len());
    let webhooks = state.store.webhooks_of(&tenant.id).await?;
    for delivery in &found {
        // A deleted webhook's deliveries are skipped: there is nowhere to send them; a
        // disabled one's too: nothing would be sent until it is enabled.
        if !webhooks.iter().any(|webhook| {
            webhook.id == delivery.webhook_id && webhook.status != WebhookStatus::Disabled
        }) {
            continue;
        }
        if !events.contains_key(&delivery.event_id) {
            let event = state.store.event(&tenant.id, &delivery.event_id).await?;
            events.insert(delivery.event_id.clone(), event);
        }
        // An event purged since is skipped.
        if let Some(Some(event)) = events.get(&delivery.event_id) {
            group.push(to_one(&tenant.id, event, delivery.webhook_id.clone()));
            origins.push(delivery.id.to_string());
        }
    }
    // The replays are new events: the group fits the tenant's quotas whole, or nothing is
    // written.
    let bytes = group.iter().map(|e| e.payload.get().len() as u64).sum();
    let reservation = state
        .quotas
        .reserve_ingest(
            &tenant.id,
            &tenant.settings().quotas,
            group.len() as u64,
            bytes,
        )
        .await?;
    let outcomes = state.ingest.submit_many(group).await?;
    reservation.commit();
    let mut replays = Vec::with_capacity(outcomes.len());
    for (outcome, origin) in outcomes.into_iter().zip(origins) {
        if let IngestOutcome::Created { event, deliveries } = outcome? {
            replays.push(ReplayedDelivery {
                replay_of: origin,
                event_id: event.id.to_string(),
                delivery_id: deliveries[0].id.to_string(),
            });
        }
    }
    info!(tenant = %tenant.id, replayed = replays.len(), "deliveries replayed");
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(BulkReplayOutcome {
            matched: found.len(),
            replayed: replays.len(),
            truncated: false,
            replays,
            iterator: rest,
        }),
    ))
}
