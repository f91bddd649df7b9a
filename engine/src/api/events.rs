//! `/v1/events`: ingest (validate → fan out → `ingest` → 202 after the flush), batch ingest
//! (`/v1/events/batch`: one group commit, per-event results), list, get.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::info;
use utoipa::{IntoParams, ToSchema};

use super::deliveries::DeliveryView;
use super::{
    ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, ListResponse, Tenant, page_limit,
    parse_iterator, parse_optional_time, rfc3339, valid_channel,
};
use crate::config::valid_event_type;
use crate::fanout;
use crate::ids::{EventId, now_ms};
use crate::ingest::{EventInput, IngestOutcome, prepare_event};
use crate::quota::{QuotaExceeded, Reservation};
use crate::store::{DeliveryRecord, EventFilter, EventRecord, NewEvent};

/// Deepest nesting of arrays and objects accepted in a payload; receivers' parsers often
/// recurse, so hookd refuses what would crash them.
pub(crate) const MAX_PAYLOAD_DEPTH: usize = 64;

/// Longest accepted idempotency key.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEvent {
    /// 1-128 of `a-z A-Z 0-9 . _ - :`.
    #[serde(rename = "type")]
    #[schema(example = "user.created")]
    event_type: String,
    /// Any JSON; delivered byte for byte as `data`.
    #[schema(value_type = serde_json::Value)]
    payload: Box<RawValue>,
    #[serde(default)]
    channel: Option<String>,
    /// The producer's id for this event; a repeat within the idempotency window returns the
    /// original event (same as the `Idempotency-Key` header).
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    timestamp: String,
    #[schema(value_type = serde_json::Value)]
    payload: Box<RawValue>,
    /// The event's deliveries (not in listings).
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<DeliveryView>>,
}

impl EventView {
    pub(super) fn new(event: EventRecord, deliveries: Option<Vec<DeliveryRecord>>) -> Self {
        EventView {
            id: event.id.to_string(),
            event_type: event.event_type,
            channel: event.channel,
            idempotency_key: event.idempotency_key,
            timestamp: rfc3339(event.created_at),
            payload: event.payload,
            deliveries: deliveries.map(|ds| ds.into_iter().map(DeliveryView::from).collect()),
        }
    }
}

/// Ingests an event: answers 202 once it and its deliveries are flushed to disk.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    operation_id = "create_event",
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "Same as the body's `id`: a repeat within the window returns the original event"),
    ),
    request_body = CreateEvent,
    responses(
        (status = 202, description = "Stored durably; deliveries are queued", body = EventView),
        (status = 200, description = "A repeat of an idempotency key: the original event",
            body = EventView, headers(("idempotent-replayed" = String))),
        (status = 400, description = "Malformed JSON or idempotency key", body = ErrorBody),
        (status = 413, description = "The payload is larger than allowed", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Invalid type, channel, payload depth (`payload_too_deep`) or idempotency key; a payload with a lone surrogate escape or a number out of the double range (`payload_not_interoperable`, RFC 7493); with `strict_event_types`, an undeclared type (`unknown_event_type`) or a payload failing its type's schema (`payload_schema`, naming the failing path)", body = ErrorBody),
        (status = 429, description = "Over a quota (`quota_exceeded`, naming `deliveries_per_event`, `pending_deliveries` or `stored_bytes` with its limit and the current use; nothing was written), over the request rate (`rate_limited`, with Retry-After), or the tenant's deliveries trail by more than its `max_delivery_lag_secs` (`delivery_lag_exceeded`, with Retry-After; nothing was written)", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "Not accepted: the data dir is short of space (`storage_full`) or read-only (`storage_read_only`), the store cannot take writes (`store_unavailable`), or hookd is shutting down (`shutting_down`)", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateEvent>,
) -> Result<Response, ApiError> {
    let header_key = idempotency_header(&headers)?;
    let limits = &tenant.config.limits;
    // The depth scan (and a strict tenant's schema check) read the whole payload: off the
    // async workers when it is large.
    let max_payload_bytes = limits.max_payload_bytes;
    let (config, id) = (tenant.config.clone(), tenant.id.clone());
    let input = state
        .delivery
        .offload
        .by_size(&tenant.id, body.payload.get().len(), move || {
            let input = validate(body, header_key, max_payload_bytes)?;
            check_catalogue(config.tenant(&id).expect("authenticated"), &input)?;
            Ok::<_, ApiError>(input)
        })
        .await?;
    let window_ms = limits.idempotency_window.as_millis() as u64;
    let new = prepare_event(state.store.as_ref(), &tenant.id, input, window_ms, None).await?;
    let reservation = admit(&state, &tenant, &new).await?;
    match state.ingest.submit(new).await? {
        IngestOutcome::Created { event, deliveries } => {
            reservation.commit();
            state.metrics.event_ingested(&tenant.id);
            info!(tenant = %tenant.id, event_id = %event.id, deliveries = deliveries.len(), "event accepted");
            Ok((
                StatusCode::ACCEPTED,
                ApiJson(EventView::new(event, Some(deliveries))),
            )
                .into_response())
        }
        IngestOutcome::Duplicate(original) => {
            let event = state
                .store
                .event(&tenant.id, &original)
                .await?
                .ok_or_else(|| ApiError::not_found("event", original.as_str()))?;
            let deliveries = state
                .store
                .deliveries_of_event(&tenant.id, &original)
                .await?;
            Ok((
                StatusCode::OK,
                [("idempotent-replayed", "true")],
                ApiJson(EventView::new(event, Some(deliveries))),
            )
                .into_response())
        }
    }
}

/// The `Idempotency-Key` header: one, ASCII, not empty (an empty key would silently make
/// every retry a new event).
fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "send one `Idempotency-Key` header, not several",
        ));
    }
    let key = value.to_str().map_err(|_| {
        ApiError::bad_request("invalid_idempotency_key", "`Idempotency-Key` must be ASCII")
    })?;
    if key.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "`Idempotency-Key` is empty; leave the header out, or give a key",
        ));
    }
    Ok(Some(key.to_string()))
}

/// Checks an event against its tenant's quotas (fan-out, pending deliveries, stored bytes) and
/// reserves its room until the store answers: commit the reservation if the event was written.
pub(super) async fn admit(
    state: &AppState,
    tenant: &Tenant,
    new: &NewEvent,
) -> Result<Reservation, ApiError> {
    let quotas = &tenant.settings().quotas;
    state
        .delivery
        .lag
        .check(&tenant.id, quotas.max_delivery_lag_secs)
        .map_err(ApiError::delivery_lag_exceeded)?;
    let fanout = new.webhooks.len() as u64;
    QuotaExceeded::check_each("deliveries_per_event", quotas.deliveries_per_event, fanout)
        .map_err(ApiError::quota_exceeded)?;
    let bytes = new.payload.get().len() as u64;
    Ok(state
        .quotas
        .reserve_ingest(&tenant.id, quotas, fanout, bytes)
        .await?)
}

/// Checks one event of `POST /v1/events` or of a batch (accepted now).
fn validate(
    body: CreateEvent,
    header_key: Option<String>,
    max_payload_bytes: usize,
) -> Result<EventInput, ApiError> {
    if body.payload.get().len() > max_payload_bytes {
        return Err(ApiError::payload_too_large(format!(
            "the payload is {} bytes; the limit is {}",
            body.payload.get().len(),
            max_payload_bytes
        )));
    }
    check_payload(body.payload.get())?;
    if !valid_event_type(&body.event_type) {
        return Err(ApiError::invalid(
            "invalid_event_type",
            "`type` must be 1-128 of a-z A-Z 0-9 . _ - :",
        ));
    }
    if fanout::is_operational(&body.event_type) {
        return Err(ApiError::invalid(
            "reserved_event_type",
            "event types starting with `hookd.` are hookd's own operational events",
        ));
    }
    if let Some(channel) = &body.channel
        && !valid_channel(channel)
    {
        return Err(ApiError::invalid(
            "invalid_channel",
            "`channel` must be 1-128 of a-z A-Z 0-9 . _ - :",
        ));
    }
    let idempotency_key = match (body.id, header_key) {
        (Some(id), Some(header)) if id != header => {
            return Err(ApiError::invalid(
                "invalid_idempotency_key",
                "the body's `id` and the `Idempotency-Key` header differ",
            ));
        }
        (Some(key), _) | (None, Some(key)) => Some(key),
        (None, None) => None,
    };
    if let Some(key) = &idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES)
    {
        return Err(ApiError::invalid(
            "invalid_idempotency_key",
            format!("an idempotency key is 1-{MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
        ));
    }
    Ok(EventInput {
        event_type: body.event_type,
        channel: body.channel,
        idempotency_key,
        created_at: now_ms(),
        payload: body.payload,
    })
}

/// A tenant with `strict_event_types` takes only declared types, with payloads that match
/// the type's schema; other tenants' events pass (their schemas only document).
fn check_catalogue(
    tenant: &crate::config::TenantConfig,
    event: &crate::ingest::EventInput,
) -> Result<(), ApiError> {
    if !tenant.strict_event_types {
        return Ok(());
    }
    let Some(declared) = tenant.event_type(&event.event_type) else {
        let names: Vec<&str> = tenant.event_types.iter().map(|t| t.name.as_str()).collect();
        return Err(ApiError::invalid(
            "unknown_event_type",
            format!(
                "`{}` is not a declared event type of this tenant (strict_event_types); declared: {}",
                event.event_type,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ));
    };
    if declared.schema.is_none() {
        return Ok(());
    }
    let payload: serde_json::Value = serde_json::from_str(event.payload.get())
        .map_err(|err| ApiError::invalid("invalid_body", err.to_string()))?;
    declared.check(&payload).map_err(|violations| {
        let places: Vec<String> = violations.iter().map(ToString::to_string).collect();
        ApiError::invalid(
            "payload_schema",
            format!(
                "the payload does not match the schema of `{}`: {}",
                event.event_type,
                places.join("; ")
            ),
        )
    })
}

/// Most events in one `POST /v1/events/batch`.
pub const MAX_BATCH_EVENTS: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEventBatch {
    /// 1-1000 events, each shaped like the body of `POST /v1/events` (idempotency by each
    /// event's `id`; the `Idempotency-Key` header is not accepted here).
    #[schema(value_type = Vec<CreateEvent>)]
    events: Vec<Box<RawValue>>,
}

/// The outcome of one event of a batch, at the event's position.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    /// 202 stored, 200 a repeat of an idempotency key (the original event's id), or the 4xx
    /// that `POST /v1/events` would have answered for this event alone.
    #[schema(example = 202)]
    status: u16,
    /// The event id (202 and 200 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Why the event was refused (4xx only).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<BatchItemError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemError {
    /// The same stable code `POST /v1/events` uses.
    code: &'static str,
    message: String,
    /// `quota_exceeded` only: which quota, its limit and the current use.
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<QuotaExceeded>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One result per submitted event, in order.
    results: Vec<BatchItemResult>,
}

impl BatchItemResult {
    fn refused(err: ApiError) -> Self {
        BatchItemResult {
            status: err.status.as_u16(),
            id: None,
            error: Some(BatchItemError {
                code: err.code,
                message: err.message,
                quota: err.quota,
            }),
        }
    }
}

/// Ingests up to 1000 events in one request and one durable write. Each event is validated
/// on its own: a refused event gets its 4xx in its result and does not refuse the others
/// (the request answers 200 with per-event results, like Stripe's and Svix's batch calls).
/// Only a failure of the whole write (503) or an invalid envelope refuses the request.
#[utoipa::path(
    post,
    path = "/v1/events/batch",
    tag = "events",
    operation_id = "create_event_batch",
    request_body = CreateEventBatch,
    responses(
        (status = 200, description = "Every accepted event is stored durably; one result per event, in order",
            body = BatchResponse),
        (status = 400, description = "Malformed JSON, or an `Idempotency-Key` header", body = ErrorBody),
        (status = 413, description = "More than 1000 events (`batch_too_large`), or a body over the limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "No events (`empty_batch`) or no `events` array", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store cannot take writes, or hookd is shutting down", body = ErrorBody),
    ),
)]
pub async fn create_batch(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateEventBatch>,
) -> Result<ApiJson<BatchResponse>, ApiError> {
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "a batch takes no `Idempotency-Key` header; give each event its own `id`",
        ));
    }
    if body.events.is_empty() {
        return Err(ApiError::invalid("empty_batch", "`events` holds no event"));
    }
    if body.events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "the batch holds {} events; the limit is {MAX_BATCH_EVENTS}",
                body.events.len()
            ),
        ));
    }
    let limits = &tenant.config.limits;
    let window_ms = limits.idempotency_window.as_millis() as u64;
    // Per event: a refusal, or the index of its submission.
    let mut slots: Vec<Result<usize, ApiError>> = Vec::with_capacity(body.events.len());
    let mut prepared = Vec::with_capacity(body.events.len());
    let mut reservations = Vec::with_capacity(body.events.len());
    // Parsing and checking every event reads the whole batch (up to 32 MiB): off the async
    // workers when it is large.
    let size = body.events.iter().map(|raw| raw.get().len()).sum();
    let max_payload_bytes = limits.max_payload_bytes;
    let events = body.events;
    let (config, id) = (tenant.config.clone(), tenant.id.clone());
    let checked_events: Vec<Result<EventInput, ApiError>> = state
        .delivery
        .offload
        .by_size(&tenant.id, size, move || {
            events
                .iter()
                .map(|raw| {
                    serde_json::from_str::<CreateEvent>(raw.get())
                        .map_err(|err| ApiError::invalid("invalid_body", err.to_string()))
                        .and_then(|event| validate(event, None, max_payload_bytes))
                        .and_then(|input| {
                            check_catalogue(config.tenant(&id).expect("authenticated"), &input)?;
                            Ok(input)
                        })
                })
                .collect()
        })
        .await;
    for checked in checked_events {
        let input = match checked {
            Ok(input) => input,
            Err(err) => {
                slots.push(Err(err));
                continue;
            }
        };
        let new = prepare_event(state.store.as_ref(), &tenant.id, input, window_ms, None).await?;
        // An event over a quota is refused in its slot; the events before it keep their room.
        match admit(&state, &tenant, &new).await {
            Ok(reservation) => {
                prepared.push(new);
                reservations.push(Some(reservation));
                slots.push(Ok(prepared.len() - 1));
            }
            Err(err) if err.code == "quota_exceeded" => slots.push(Err(err)),
            Err(err) => return Err(err),
        }
    }
    let outcomes = state.ingest.submit_many(prepared).await?;
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(IngestOutcome::Created { .. })))
        .count();
    let mut outcomes: Vec<Option<_>> = outcomes.into_iter().map(Some).collect();
    let mut results = Vec::with_capacity(slots.len());
    for slot in slots {
        let result = match slot {
            Err(err) => BatchItemResult::refused(err),
            Ok(index) => match outcomes[index].take().expect("one outcome per submission") {
                Ok(IngestOutcome::Created { event, .. }) => {
                    if let Some(reservation) = reservations[index].take() {
                        reservation.commit();
                    }
                    state.metrics.event_ingested(&tenant.id);
                    BatchItemResult {
                        status: 202,
                        id: Some(event.id.to_string()),
                        error: None,
                    }
                }
                Ok(IngestOutcome::Duplicate(original)) => BatchItemResult {
                    status: 200,
                    id: Some(original.to_string()),
                    error: None,
                },
                Err(err) => BatchItemResult::refused(err.into()),
            },
        };
        results.push(result);
    }
    info!(tenant = %tenant.id, events = results.len(), created, "event batch accepted");
    Ok(ApiJson(BatchResponse { results }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventListQuery {
    /// Page size, 1-250 (default 50).
    #[param(minimum = 1, maximum = 250)]
    limit: Option<usize>,
    /// The `iterator` of the previous page.
    iterator: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Only events on this channel.
    channel: Option<String>,
    /// Only events created after this time (RFC 3339 or epoch milliseconds).
    after: Option<String>,
    /// Only events created before this time (RFC 3339 or epoch milliseconds).
    before: Option<String>,
}

/// Lists the tenant's events, newest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    operation_id = "list_events",
    params(EventListQuery),
    responses(
        (status = 200, description = "One page of events", body = ListResponse<EventView>),
        (status = 400, description = "Invalid query, time or iterator", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(query): ApiQuery<EventListQuery>,
) -> Result<ApiJson<ListResponse<EventView>>, ApiError> {
    super::check_type_filter(query.event_type.as_deref())?;
    if let Some(channel) = &query.channel
        && !valid_channel(channel)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`channel` must be 1-128 of a-z A-Z 0-9 . _ - :",
        ));
    }
    let filter = EventFilter {
        event_type: query.event_type,
        channel: query.channel,
        after_ms: parse_optional_time("after", query.after.as_deref())?,
        before_ms: parse_optional_time("before", query.before.as_deref())?,
    };
    let cursor = parse_iterator(query.iterator.as_deref(), EventId::parse)?;
    let page = state
        .store
        .list_events(
            &tenant.id,
            &filter,
            cursor.as_ref().map(EventId::as_str),
            page_limit(query.limit)?,
        )
        .await?;
    let data = page
        .items
        .into_iter()
        .map(|e| EventView::new(e, None))
        .collect();
    Ok(ApiJson(ListResponse::new(data, page.next)))
}

/// One event with its deliveries.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    operation_id = "get_event",
    params(("id" = String, Path, description = "Event id (`evt_...`)")),
    responses(
        (status = 200, description = "The event", body = EventView),
        (status = 404, description = "No such event for this tenant", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn get_one(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<EventView>, ApiError> {
    let event_id = EventId::parse(&id).ok_or_else(|| ApiError::not_found("event", &id))?;
    let event = state
        .store
        .event(&tenant.id, &event_id)
        .await?
        .ok_or_else(|| ApiError::not_found("event", &id))?;
    let deliveries = state
        .store
        .deliveries_of_event(&tenant.id, &event_id)
        .await?;
    Ok(ApiJson(EventView::new(event, Some(deliveries))))
}

/// Checks a payload every receiver and plugin can read: nesting at most
/// [`MAX_PAYLOAD_DEPTH`] deep, and only what I-JSON (RFC 7493) allows beyond JSON's grammar,
/// which the parser that accepted it does not check: no lone UTF-16 surrogate in a `\u`
/// escape, no number outside the double range (`1e400`). Such a document is stored and sent
/// as is, and then a plugin, or a receiver in Rust or Go, refuses it at every attempt.
pub(crate) fn check_payload(json: &str) -> Result<(), ApiError> {
    let scan = scan_payload(json);
    if scan.depth > MAX_PAYLOAD_DEPTH {
        return Err(ApiError::invalid(
            "payload_too_deep",
            format!("the payload nests arrays and objects deeper than {MAX_PAYLOAD_DEPTH} levels"),
        ));
    }
    match scan.problem {
        None => Ok(()),
        Some((at, problem)) => Err(ApiError::invalid(
            "payload_not_interoperable",
            format!(
                "the payload has {problem} at byte {at}; receivers and plugins cannot read it \
                 (RFC 7493)"
            ),
        )),
    }
}

/// What [`scan_payload`] found.
#[derive(Debug, PartialEq)]
struct PayloadScan {
    depth: usize,
    /// The first byte offset and description of what I-JSON refuses.
    problem: Option<(usize, &'static str)>,
}

/// One pass over a payload that already parsed as JSON.
fn scan_payload(json: &str) -> PayloadScan {
    let bytes = json.as_bytes();
    let (mut depth, mut max, mut in_string) = (0usize, 0usize, false);
    let mut problem = None;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if in_string {
            match byte {
                b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                    let unit = hex4(bytes, i + 2);
                    match unit {
                        Some(0xD800..=0xDBFF) => {
                            let low = (bytes.get(i + 6) == Some(&b'\\')
                                && bytes.get(i + 7) == Some(&b'u'))
                            .then(|| hex4(bytes, i + 8))
                            .flatten();
                            if !matches!(low, Some(0xDC00..=0xDFFF)) {
                                problem.get_or_insert((i, "a lone UTF-16 surrogate escape"));
                                i += 6;
                            } else {
                                i += 12;
                            }
                            continue;
                        }
                        Some(0xDC00..=0xDFFF) => {
                            problem.get_or_insert((i, "a lone UTF-16 surrogate escape"));
                        }
                        _ => {}
                    }
                    i += 6;
                    continue;
                }
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .map_or(bytes.len(), |n| i + n);
                let number = &json[i..end];
                // Only an exponent or a very long literal can leave the double range.
                if (number.len() > 300 || number.contains(['e', 'E']))
                    && !number.parse::<f64>().is_ok_and(f64::is_finite)
                {
                    problem.get_or_insert((i, "a number outside the double range"));
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    PayloadScan {
        depth: max,
        problem,
    }
}

/// The value of the four hex digits at `at`, if there are four.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::scan_payload;

    fn json_depth(json: &str) -> usize {
        scan_payload(json).depth
    }

    #[test]
    fn depth_counts_nesting_outside_strings_only() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(r#"{"a":"[[[[\"{{"}"#), 1);
        assert_eq!(json_depth(r#"{"a":"\u005b\\","b":[]}"#), 2);
    }

    #[test]
    fn lone_surrogates_and_numbers_out_of_range_are_found_and_nothing_else() {
        let problem = |json: &str| scan_payload(json).problem;
        for fine in [
            r#"{"s":"\ud83d\ude00","n":1e308,"m":-0.5E-400,"i":123456789012345678901234567890}"#,
            r#"{"s":"\\ud800","t":"\u00e9","u":"1e400"}"#,
            r#"[1, 2.5, -3e2, 0]"#,
        ] {
            assert_eq!(problem(fine), None, "{fine}");
        }
        assert_eq!(
            problem(r#"{"s":"\ud800"}"#),
            Some((6, "a lone UTF-16 surrogate escape"))
        );
        assert_eq!(problem(r#"{"s":"x\ud800\u0041"}"#).map(|p| p.0), Some(7));
        assert_eq!(
            problem(r#"{"s":"\udc00"}"#).map(|p| p.1),
            Some("a lone UTF-16 surrogate escape")
        );
        assert_eq!(
            problem(r#"{"a":[1,-1e400]}"#),
            Some((8, "a number outside the double range"))
        );
        assert_eq!(
            problem(&format!("[{}]", "9".repeat(400))).map(|p| p.1),
            Some("a number outside the double range")
        );
    }
}
