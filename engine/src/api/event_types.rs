//! `GET /v1/event-types`: the tenant's event-type catalogue — the types it declares in config
//! (description, JSON Schema, example payload) and the types it sent in the last
//! [`SEEN_WINDOW_DAYS`] days without declaring them (from the statistics counters, not a scan
//! of events) — and whether ingest is strict about them.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ApiJson, AppState, ErrorBody, Tenant};
use crate::ids::now_ms;
use crate::store::stats::{StatsScope, day_of};

/// How far back the catalogue looks for types sent but not declared.
pub const SEEN_WINDOW_DAYS: u32 = 30;

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeView {
    #[serde(rename = "type")]
    #[schema(example = "user.created")]
    event_type: String,
    /// Declared in config (otherwise only seen in events).
    declared: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// The JSON Schema payloads of this type follow (declared types only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    schema: Option<serde_json::Value>,
    /// An example payload; test sends of this type use it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    example: Option<serde_json::Value>,
    /// Events of this type in the last 30 days.
    events_30d: u64,
    /// The last UTC day (`YYYY-MM-DD`) with an event of this type, within 30 days.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_day: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeList {
    /// Ingest refuses undeclared types and payloads failing their schema.
    strict: bool,
    /// Declared types in config order, then seen-only types by name.
    data: Vec<EventTypeView>,
}

/// The tenant's event types: declared ones with their details, and those seen recently.
#[utoipa::path(
    get,
    path = "/v1/event-types",
    tag = "events",
    operation_id = "list_event_types",
    responses(
        (status = 200, description = "The catalogue", body = EventTypeList),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
) -> Result<ApiJson<EventTypeList>, ApiError> {
    let today = day_of(now_ms());
    let rows = state
        .store
        .stats_days(
            &tenant.id,
            StatsScope::Tenant,
            today.saturating_sub(SEEN_WINDOW_DAYS - 1),
            today,
        )
        .await?;
    // Per type: events in the window and the last day seen.
    let mut seen: std::collections::BTreeMap<String, (u64, u32)> = Default::default();
    for row in &rows {
        for (event_type, count) in &row.event_types {
            let entry = seen.entry(event_type.clone()).or_default();
            entry.0 += count;
            entry.1 = entry.1.max(row.day);
        }
    }
    let date = |day: u32| super::stats::date(day);
    let settings = tenant.settings();
    let mut data: Vec<EventTypeView> = settings
        .event_types
        .iter()
        .map(|t| {
            let (events, last) = seen.remove(&t.name).unwrap_or_default();
            EventTypeView {
                event_type: t.name.clone(),
                declared: true,
                description: t.description.clone(),
                schema: t.schema.clone(),
                example: t.example.clone(),
                events_30d: events,
                last_seen_day: (events > 0).then(|| date(last)),
            }
        })
        .collect();
    data.extend(
        seen.into_iter()
            .map(|(name, (events, last))| EventTypeView {
                event_type: name,
                declared: false,
                description: None,
                schema: None,
                example: None,
                events_30d: events,
                last_seen_day: Some(date(last)),
            }),
    );
    Ok(ApiJson(EventTypeList {
        strict: settings.strict_event_types,
        data,
    }))
}
