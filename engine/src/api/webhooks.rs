//! `/v1/webhooks`: create, list, get, update, delete, test send, secret rotation, recover.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use tracing::info;
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiBody, ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, ListResponse, Tenant,
    optional_json, page_limit, parse_iterator, parse_time, rfc3339, valid_channel,
};
use crate::delivery::attempt::{self, TestSendOutcome};
use crate::fanout;
use crate::ids::{EventId, WebhookId, now_ms};
use crate::quota::QuotaExceeded;
use crate::signing;
use crate::ssrf::{SsrfPolicy, UrlError};
use crate::store::{EventRecord, PluginAttachment, WebhookRecord, WebhookSecret, WebhookStatus};

const MAX_EVENT_TYPE_FILTERS: usize = 100;
const MAX_CHANNELS: usize = 100;
const MAX_STATIC_HEADERS: usize = 20;
/// Longest value of one static header (what common proxies and servers take per header).
const MAX_STATIC_HEADER_VALUE_BYTES: usize = 8 * 1024;
/// Most bytes (names and values) of a webhook's static headers together: every attempt sends
/// and records them, and receivers refuse heads much over 16-64 KiB.
const MAX_STATIC_HEADERS_BYTES: usize = 16 * 1024;
const MAX_METADATA_ENTRIES: usize = 32;
const MAX_DESCRIPTION_BYTES: usize = 1024;
const MAX_ATTEMPTS_LIMIT: u32 = 50;
const MAX_TIMEOUT_MS: u64 = 300_000;
const MAX_IN_FLIGHT_LIMIT: u32 = 1024;

/// Headers a webhook's static headers cannot set: those plugins cannot touch either (framing,
/// hop-by-hop, `content-type`; `webhook-*` by prefix) plus the user agent hookd sends.
fn reserved_header(lower: &str) -> bool {
    lower.starts_with("webhook-")
        || lower == "user-agent"
        || crate::plugin::PROTECTED_HEADERS.contains(&lower)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    #[schema(example = "https://example.com/webhooks")]
    url: String,
    #[serde(default)]
    description: Option<String>,
    /// Event type filters: `*`, `prefix.*` or exact types (default `["*"]`).
    #[serde(default)]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    /// `whsec_<base64>`; generated when absent.
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    max_in_flight: Option<u32>,
    #[serde(default)]
    rate_limit_per_sec: Option<u32>,
    /// Delays before each retry (`["10s", "1m", "1h"]`, at most 50), replacing the tenant's
    /// schedule; `[]` means no retries. Absent: the tenant's schedule.
    #[serde(default)]
    #[schema(example = json!(["10s", "1m", "1h"]))]
    retry_schedule: Option<Vec<String>>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    disabled: Option<bool>,
    /// Plugins run at attempt time, in order.
    #[serde(default)]
    #[schema(value_type = Option<Vec<PluginAttachment>>)]
    plugins: Option<Vec<PluginStep>>,
}

/// PATCH body: absent fields stay; `null` clears an optional field (`description`, `headers`,
/// `metadata` become empty) and is refused for the others (`url`, `event_types`, `status`,
/// `plugins`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[serde(default, deserialize_with = "not_null")]
    url: Option<String>,
    #[serde(default, deserialize_with = "null_clears")]
    description: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    channels: Option<Option<Vec<String>>>,
    /// Replaces the static headers; a header given `null` keeps its current value (what a
    /// view shows for a credential header), so a read-modify-write keeps credentials.
    #[serde(default, deserialize_with = "null_clears")]
    headers: Option<BTreeMap<String, Option<String>>>,
    #[serde(default, deserialize_with = "present")]
    max_attempts: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    timeout_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    max_in_flight: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    rate_limit_per_sec: Option<Option<u32>>,
    /// Replaces the webhook's retry schedule; `null` goes back to the tenant's.
    #[serde(default, deserialize_with = "present")]
    retry_schedule: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "null_clears")]
    metadata: Option<BTreeMap<String, String>>,
    /// `active` re-enables a paused or disabled webhook (clearing its reason); `paused` keeps
    /// queueing its events but sends nothing until `active`; `disabled` stops both.
    #[serde(default, deserialize_with = "not_null")]
    status: Option<WebhookStatus>,
    /// Replaces the plugin chain (`[]` detaches every plugin).
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = Option<Vec<PluginAttachment>>)]
    plugins: Option<Vec<PluginStep>>,
}

/// A plugin step as the API takes it: a [`PluginAttachment`] whose unknown keys are refused
/// (a `confg` or `versoin` typo would otherwise run the plugin with its defaults, unpinned).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginStep {
    name: String,
    #[serde(default)]
    config: serde_json::Value,
    #[serde(default)]
    version: Option<u64>,
}

impl From<PluginStep> for PluginAttachment {
    fn from(step: PluginStep) -> Self {
        PluginAttachment {
            name: step.name,
            config: step.config,
            version: step.version,
        }
    }
}

fn attachments(steps: Option<Vec<PluginStep>>) -> Option<Vec<PluginAttachment>> {
    steps.map(|steps| steps.into_iter().map(PluginAttachment::from).collect())
}

/// A field that may be absent but not `null` (it has no empty value to clear to).
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    match Option::<T>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "may not be null (leave the field out to keep its value)",
        )),
    }
}

/// A field whose `null` sets it to its empty value.
fn null_clears<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(deserializer).map(|value| Some(value.unwrap_or_default()))
}

/// Distinguishes a field set to `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    id: String,
    url: String,
    description: String,
    event_types: Vec<String>,
    channels: Option<Vec<String>>,
    /// Static headers sent with every request. The value of a credential header (named like
    /// `authorization`, a key, token, secret or signature) is `null`: it is sent but never
    /// shown; `null` in a PATCH keeps it.
    headers: BTreeMap<String, Option<String>>,
    status: WebhookStatus,
    disabled_reason: Option<String>,
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
    max_in_flight: Option<u32>,
    rate_limit_per_sec: Option<u32>,
    /// The webhook's own retry delays; `null` when it follows the tenant's schedule.
    retry_schedule: Option<Vec<String>>,
    metadata: BTreeMap<String, String>,
    plugins: Vec<PluginAttachment>,
    /// How the receiver has been doing (from the attempt log).
    health: WebhookHealthView,
    created_at: String,
    updated_at: String,
    /// Only in the answers to create and rotate-secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// A webhook's health: attempts that reached for the receiver (plugin verdicts left out).
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct WebhookHealthView {
    last_success_at: Option<String>,
    last_failure_at: Option<String>,
    /// Error code of the last failed attempt (`http_status`, `timeout`, `connect_refused`…).
    last_error_code: Option<String>,
    /// Failed attempts since the last success.
    consecutive_failures: u32,
    /// When the current run of failures began; `null` once an attempt succeeds.
    failing_since: Option<String>,
    /// Delivered / (delivered + failed) attempts of the last 24 hours; `null` without any.
    success_rate_24h: Option<f64>,
    /// Attempts of the last 24 hours.
    attempts_24h: u64,
}

impl From<crate::store::health::WebhookHealth> for WebhookHealthView {
    fn from(h: crate::store::health::WebhookHealth) -> Self {
        let now = now_ms();
        let (ok, bad) = h.last_24h(now);
        WebhookHealthView {
            last_success_at: h.last_success_at.map(rfc3339),
            last_failure_at: h.last_failure_at.map(rfc3339),
            last_error_code: h.last_error_code.clone(),
            consecutive_failures: h.consecutive_failures,
            failing_since: h.failing_since.map(rfc3339),
            success_rate_24h: h
                .success_rate_24h(now)
                .map(|r| (r * 10_000.0).round() / 10_000.0),
            attempts_24h: ok + bad,
        }
    }
}

impl WebhookView {
    /// The view of `w` with its health read from the store.
    async fn with_health(
        state: &AppState,
        tenant: &str,
        w: WebhookRecord,
    ) -> Result<Self, ApiError> {
        let health = state.store.webhook_health(tenant, &w.id).await?;
        let mut view = WebhookView::from(w);
        view.health = WebhookHealthView::from(health);
        Ok(view)
    }
}

impl From<WebhookRecord> for WebhookView {
    fn from(w: WebhookRecord) -> Self {
        WebhookView {
            id: w.id.to_string(),
            url: w.url,
            description: w.description,
            event_types: w.event_types,
            channels: w.channels,
            // A listing's records keep credential headers sealed; an opened record has them in
            // `headers`. Either way a credential shows by name only.
            headers: w
                .headers
                .into_iter()
                .map(|(name, value)| {
                    let shown = (!crate::secrets::is_secret_header(&name)).then_some(value);
                    (name, shown)
                })
                .chain(w.sealed_headers.into_keys().map(|name| (name, None)))
                .collect(),
            status: w.status,
            disabled_reason: w.disabled_reason,
            max_attempts: w.max_attempts,
            timeout_ms: w.timeout_ms,
            max_in_flight: w.max_in_flight,
            rate_limit_per_sec: w.rate_limit_per_sec,
            retry_schedule: w.retry_schedule_ms.map(|delays| {
                delays
                    .into_iter()
                    .map(|ms| {
                        humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
                    })
                    .collect()
            }),
            metadata: w.metadata,
            plugins: w.plugins,
            health: WebhookHealthView::default(),
            created_at: rfc3339(w.created_at),
            updated_at: rfc3339(w.updated_at),
            secret: None,
        }
    }
}

async fn check_url(state: &AppState, tenant: &Tenant, url: &str) -> Result<String, ApiError> {
    let policy = SsrfPolicy::new(&tenant.config.ssrf);
    match policy
        .check_url(url, state.delivery.client.resolver())
        .await
    {
        Ok(url) => Ok(url.to_string()),
        Err(UrlError::Blocked(blocked)) => {
            // The tenant learns only that the address is refused; operators see which.
            tracing::warn!(tenant = %tenant.id, address = %blocked.ip, kind = blocked.kind, "webhook URL refused: non-public address");
            Err(ApiError::invalid(
                "blocked_address",
                crate::ssrf::BLOCKED_ADDRESS_MESSAGE,
            ))
        }
        Err(err) => Err(ApiError::invalid("invalid_url", err.to_string())),
    }
}

fn check_event_types(filters: &[String]) -> Result<(), ApiError> {
    if filters.is_empty() || filters.len() > MAX_EVENT_TYPE_FILTERS {
        return Err(ApiError::invalid(
            "invalid_event_type",
            format!(
                "`event_types` needs 1-{MAX_EVENT_TYPE_FILTERS} entries; use [\"*\"] for every event"
            ),
        ));
    }
    match filters.iter().find(|f| !fanout::valid_filter(f)) {
        Some(bad) => Err(ApiError::invalid(
            "invalid_event_type",
            format!("`{bad}` is not an event type filter: use an exact type, `prefix.*` or `*`"),
        )),
        None => Ok(()),
    }
}

fn check_channels(channels: &[String]) -> Result<(), ApiError> {
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return Err(ApiError::invalid(
            "invalid_channel",
            format!("`channels` needs 1-{MAX_CHANNELS} entries, or null for every channel"),
        ));
    }
    match channels.iter().find(|c| !valid_channel(c)) {
        Some(bad) => Err(ApiError::invalid(
            "invalid_channel",
            format!("`{bad}` is not a channel: 1-128 of a-z A-Z 0-9 . _ - :"),
        )),
        None => Ok(()),
    }
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if headers.len() > MAX_STATIC_HEADERS {
        return Err(ApiError::invalid(
            "invalid_header",
            format!("at most {MAX_STATIC_HEADERS} static headers"),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(ApiError::invalid(
                "invalid_header",
                format!("`{name}` is not a header name"),
            ));
        }
        if HeaderValue::from_str(value).is_err() {
            return Err(ApiError::invalid(
                "invalid_header",
                format!(
                    "the value of `{name}` is not a valid header value (no control characters)"
                ),
            ));
        }
        if reserved_header(&lower) {
            return Err(ApiError::invalid(
                "invalid_header",
                format!("`{name}` is set by hookd and cannot be overridden"),
            ));
        }
        if value.len() > MAX_STATIC_HEADER_VALUE_BYTES {
            return Err(ApiError::invalid(
                "invalid_header",
                format!(
                    "the value of `{name}` is {} bytes; a static header value is at most \
                     {MAX_STATIC_HEADER_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
        if out.insert(lower.clone(), value.clone()).is_some() {
            return Err(ApiError::invalid(
                "invalid_header",
                format!("`{lower}` is given twice (header names are case-insensitive)"),
            ));
        }
    }
    let total: usize = out
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    if total > MAX_STATIC_HEADERS_BYTES {
        return Err(ApiError::invalid(
            "invalid_header",
            format!(
                "the static headers hold {total} bytes; at most {MAX_STATIC_HEADERS_BYTES} in all"
            ),
        ));
    }
    Ok(out)
}

/// A manual retry or recover of a disabled webhook's deliveries would queue them where nothing
/// is sent until the webhook is enabled: refused, naming the way out. (A paused webhook's
/// queue is held by design: it takes them.)
pub(super) fn refuse_disabled(webhook: &WebhookRecord) -> Result<(), ApiError> {
    if webhook.status != WebhookStatus::Disabled {
        return Ok(());
    }
    let reason = webhook
        .disabled_reason
        .as_deref()
        .map(|reason| format!(" ({reason})"))
        .unwrap_or_default();
    Err(ApiError::conflict(
        "webhook_disabled",
        format!(
            "the webhook is disabled{reason}, so nothing would be sent; set its status to \
             `active` (PATCH /v1/webhooks/{}) first, or to `paused` to queue without sending",
            webhook.id
        ),
    ))
}

/// A PATCH's headers: the values given, checked, and the names whose current value stays.
struct PatchedHeaders {
    given: BTreeMap<String, String>,
    kept: Vec<String>,
}

impl PatchedHeaders {
    /// The new headers of a webhook whose headers are `current`.
    fn resolve(&self, current: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut headers = self.given.clone();
        for name in &self.kept {
            // A header a concurrent PATCH removed has nothing left to keep.
            if let Some(value) = current.get(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        headers
    }
}

/// Checks a PATCH's headers; a `null` value must name a header the webhook has.
async fn check_patched_headers(
    state: &AppState,
    tenant: &str,
    webhook_id: &WebhookId,
    headers: &BTreeMap<String, Option<String>>,
) -> Result<PatchedHeaders, ApiError> {
    let (kept, given): (Vec<_>, Vec<_>) = headers.iter().partition(|(_, value)| value.is_none());
    let kept: Vec<String> = kept
        .into_iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    let given: BTreeMap<String, String> = given
        .into_iter()
        .filter_map(|(name, value)| Some((name.clone(), value.clone()?)))
        .collect();
    if given.len() + kept.len() > MAX_STATIC_HEADERS {
        return Err(ApiError::invalid(
            "invalid_header",
            format!("at most {MAX_STATIC_HEADERS} static headers"),
        ));
    }
    let given = check_headers(&given)?;
    if !kept.is_empty() {
        let current = state
            .store
            .webhook(tenant, webhook_id)
            .await?
            .ok_or_else(|| ApiError::not_found("webhook", webhook_id.as_str()))?;
        if let Some(missing) = kept
            .iter()
            .find(|name| !current.headers.contains_key(*name))
        {
            return Err(ApiError::invalid(
                "invalid_header",
                format!(
                    "`{missing}` is `null` but the webhook has no such header to keep; give its value"
                ),
            ));
        }
    }
    Ok(PatchedHeaders { given, kept })
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let too_big = metadata.len() > MAX_METADATA_ENTRIES
        || metadata
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1024);
    if too_big {
        return Err(ApiError::invalid(
            "invalid_metadata",
            format!(
                "`metadata` holds at most {MAX_METADATA_ENTRIES} entries, keys 1-64 bytes, values up to 1024 bytes"
            ),
        ));
    }
    Ok(())
}

fn check_description(description: &str) -> Result<(), ApiError> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ApiError::invalid(
            "invalid_description",
            format!("`description` is at most {MAX_DESCRIPTION_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_limits(
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
    max_in_flight: Option<u32>,
    rate_limit: Option<u32>,
) -> Result<(), ApiError> {
    let range = |name: &str, ok: bool, range: &str| {
        if ok {
            Ok(())
        } else {
            Err(ApiError::invalid(
                "invalid_limit",
                format!("`{name}` must be {range}"),
            ))
        }
    };
    range(
        "max_attempts",
        max_attempts.is_none_or(|n| (1..=MAX_ATTEMPTS_LIMIT).contains(&n)),
        &format!("between 1 and {MAX_ATTEMPTS_LIMIT}"),
    )?;
    range(
        "timeout_ms",
        timeout_ms.is_none_or(|n| (1..=MAX_TIMEOUT_MS).contains(&n)),
        &format!("between 1 and {MAX_TIMEOUT_MS}"),
    )?;
    range(
        "max_in_flight",
        max_in_flight.is_none_or(|n| (1..=MAX_IN_FLIGHT_LIMIT).contains(&n)),
        &format!("between 1 and {MAX_IN_FLIGHT_LIMIT}"),
    )?;
    range(
        "rate_limit_per_sec",
        rate_limit.is_none_or(|n| n >= 1),
        "at least 1",
    )
}

/// A webhook's retry schedule, checked like the config's; in ms.
fn check_retry_schedule(schedule: &[String]) -> Result<Vec<u64>, ApiError> {
    crate::config::parse_retry_schedule(schedule)
        .map(|delays| delays.iter().map(|d| d.as_millis() as u64).collect())
        .map_err(|problems| {
            let (index, problem) = &problems[0];
            let place = index.map_or_else(
                || "`retry_schedule`".to_string(),
                |i| format!("`retry_schedule[{i}]`"),
            );
            ApiError::invalid("invalid_retry_schedule", format!("{place}: {problem}"))
        })
}

/// A secret the client chose (checked) or a new random one.
fn given_or_new_secret(given: Option<String>) -> Result<String, ApiError> {
    match given {
        Some(secret) => {
            signing::decode_secret(&secret)
                .map_err(|err| ApiError::invalid("invalid_secret", err.to_string()))?;
            Ok(secret)
        }
        None => Ok(signing::generate_secret()),
    }
}

/// The payload of test sends and simulations when the client gives none.
pub fn sample_payload() -> Box<RawValue> {
    RawValue::from_string(r#"{"message":"This is a test event from hookd."}"#.to_string())
        .expect("static JSON is valid")
}

fn parse_webhook_id(id: &str) -> Result<WebhookId, ApiError> {
    WebhookId::parse(id).ok_or_else(|| ApiError::not_found("webhook", id))
}

async fn load(state: &AppState, tenant: &Tenant, id: &str) -> Result<WebhookRecord, ApiError> {
    let webhook_id = parse_webhook_id(id)?;
    state
        .store
        .webhook(&tenant.id, &webhook_id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook", id))
}

/// `429 quota_exceeded` when the tenant has as many webhooks as its `webhooks` quota.
async fn check_webhook_quota(state: &AppState, tenant: &Tenant) -> Result<(), ApiError> {
    let count = state.store.webhooks_of(&tenant.id).await?.len() as u64;
    QuotaExceeded::check("webhooks", tenant.settings().quotas.webhooks, count, 1)
        .map_err(ApiError::quota_exceeded)
}

/// Creates a webhook; the answer is the only one (with rotate-secret) that shows its secret.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; `secret` is included", body = WebhookView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than allowed", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "An invalid field (URL, blocked address, filters, headers, limits, retry schedule, secret, plugins)", body = ErrorBody),
        (status = 429, description = "The tenant has as many webhooks as its `webhooks` quota (`quota_exceeded`, naming it), or is over its request rate (`rate_limited`, with Retry-After)", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, ApiJson<WebhookView>), ApiError> {
    let event_types = body.event_types.unwrap_or_else(|| vec!["*".to_string()]);
    check_event_types(&event_types)?;
    if let Some(channels) = &body.channels {
        check_channels(channels)?;
    }
    let headers = check_headers(&body.headers.unwrap_or_default())?;
    let metadata = body.metadata.unwrap_or_default();
    check_metadata(&metadata)?;
    let description = body.description.unwrap_or_default();
    check_description(&description)?;
    check_limits(
        body.max_attempts,
        body.timeout_ms,
        body.max_in_flight,
        body.rate_limit_per_sec,
    )?;
    let retry_schedule_ms = body
        .retry_schedule
        .as_deref()
        .map(check_retry_schedule)
        .transpose()?;
    // Early, so a tenant at its quota gets its answer without a DNS lookup; again below,
    // under the tenant's creation lock, right before the write.
    check_webhook_quota(&state, &tenant).await?;
    let secret = given_or_new_secret(body.secret)?;
    let plugins = attachments(body.plugins).unwrap_or_default();
    super::plugins::check_chain(&state, &tenant, &plugins).await?;
    // Last: it may resolve the host name.
    let url = check_url(&state, &tenant, &body.url).await?;
    let now = now_ms();
    let record = WebhookRecord {
        id: WebhookId::new(),
        url,
        description,
        event_types,
        channels: body.channels,
        secrets: vec![WebhookSecret::new(secret.clone(), now)],
        headers,
        sealed_headers: Default::default(),
        status: if body.disabled == Some(true) {
            WebhookStatus::Disabled
        } else {
            WebhookStatus::Active
        },
        disabled_reason: (body.disabled == Some(true)).then(|| "disabled on creation".to_string()),
        max_attempts: body.max_attempts,
        timeout_ms: body.timeout_ms,
        max_in_flight: body.max_in_flight,
        rate_limit_per_sec: body.rate_limit_per_sec,
        retry_schedule_ms,
        metadata,
        plugins,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    let creating = state.quotas.webhook_creation(&tenant.id).await;
    check_webhook_quota(&state, &tenant).await?;
    state.store.insert_webhook(&tenant.id, &record).await?;
    drop(creating);
    info!(tenant = %tenant.id, webhook_id = %record.id, "webhook created");
    let mut view = WebhookView::from(record);
    view.secret = Some(secret);
    Ok((StatusCode::CREATED, ApiJson(view)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebhookListQuery {
    /// Page size, 1-250 (default 50).
    #[param(minimum = 1, maximum = 250)]
    limit: Option<usize>,
    /// The `iterator` of the previous page.
    iterator: Option<String>,
}

/// Lists the tenant's webhooks.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    params(WebhookListQuery),
    responses(
        (status = 200, description = "One page of webhooks", body = ListResponse<WebhookView>),
        (status = 400, description = "Invalid query or iterator", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(query): ApiQuery<WebhookListQuery>,
) -> Result<ApiJson<ListResponse<WebhookView>>, ApiError> {
    let cursor = parse_iterator(query.iterator.as_deref(), WebhookId::parse)?;
    let page = state
        .store
        .list_webhooks(
            &tenant.id,
            cursor.as_ref().map(WebhookId::as_str),
            page_limit(query.limit)?,
        )
        .await?;
    let mut data = Vec::with_capacity(page.items.len());
    for webhook in page.items {
        data.push(WebhookView::with_health(&state, &tenant.id, webhook).await?);
    }
    Ok(ApiJson(ListResponse::new(data, page.next)))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "get_webhook",
    params(("id" = String, Path, description = "Webhook id (`wh_...`)")),
    responses(
        (status = 200, description = "The webhook (without its secret)", body = WebhookView),
        (status = 404, description = "No such webhook for this tenant", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn get_one(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<WebhookView>, ApiError> {
    let webhook = load(&state, &tenant, &id).await?;
    Ok(ApiJson(
        WebhookView::with_health(&state, &tenant.id, webhook).await?,
    ))
}

/// Changes the fields present in the body.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "update_webhook",
    params(("id" = String, Path, description = "Webhook id (`wh_...`)")),
    request_body = UpdateWebhook,
    responses(
        (status = 200, description = "The updated webhook", body = WebhookView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such webhook for this tenant", body = ErrorBody),
        (status = 413, description = "The body is larger than allowed", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "An invalid field", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateWebhook>,
) -> Result<ApiJson<WebhookView>, ApiError> {
    let webhook_id = parse_webhook_id(&id)?;
    let plugins = attachments(body.plugins);
    // Validate everything before touching the record; the URL last (it may resolve).
    if let Some(filters) = &body.event_types {
        check_event_types(filters)?;
    }
    if let Some(Some(channels)) = &body.channels {
        check_channels(channels)?;
    }
    let headers = match &body.headers {
        Some(headers) => {
            Some(check_patched_headers(&state, &tenant.id, &webhook_id, headers).await?)
        }
        None => None,
    };
    if let Some(metadata) = &body.metadata {
        check_metadata(metadata)?;
    }
    if let Some(description) = &body.description {
        check_description(description)?;
    }
    check_limits(
        body.max_attempts.flatten(),
        body.timeout_ms.flatten(),
        body.max_in_flight.flatten(),
        body.rate_limit_per_sec.flatten(),
    )?;
    let retry_schedule_ms = match &body.retry_schedule {
        Some(Some(schedule)) => Some(Some(check_retry_schedule(schedule)?)),
        Some(None) => Some(None),
        None => None,
    };
    if let Some(plugins) = &plugins {
        super::plugins::check_chain(&state, &tenant, plugins).await?;
    }
    let url = match &body.url {
        Some(url) => Some(check_url(&state, &tenant, url).await?),
        None => None,
    };
    let now = now_ms();
    let updated = state
        .store
        .update_webhook(&tenant.id, &webhook_id, &|w| {
            if let Some(url) = &url
                && *url != w.url
            {
                // A new receiver: the old one's failures say nothing about it (its run of
                // failures would otherwise disable the webhook at the new URL's first one).
                w.url = url.clone();
                w.failing_since = None;
            }
            if let Some(description) = &body.description {
                w.description = description.clone();
            }
            if let Some(filters) = &body.event_types {
                w.event_types = filters.clone();
            }
            if let Some(channels) = &body.channels {
                w.channels = channels.clone();
            }
            if let Some(headers) = &headers {
                w.headers = headers.resolve(&w.headers);
            }
            if let Some(v) = body.max_attempts {
                w.max_attempts = v;
            }
            if let Some(v) = body.timeout_ms {
                w.timeout_ms = v;
            }
            if let Some(v) = body.max_in_flight {
                w.max_in_flight = v;
            }
            if let Some(v) = body.rate_limit_per_sec {
                w.rate_limit_per_sec = v;
            }
            if let Some(v) = &retry_schedule_ms {
                w.retry_schedule_ms = v.clone();
            }
            if let Some(metadata) = &body.metadata {
                w.metadata = metadata.clone();
            }
            if let Some(plugins) = &plugins {
                w.plugins = plugins.clone();
            }
            match body.status {
                Some(WebhookStatus::Active) => {
                    w.status = WebhookStatus::Active;
                    w.disabled_reason = None;
                    w.failing_since = None;
                }
                Some(WebhookStatus::Paused) if w.status == WebhookStatus::Active => {
                    w.status = WebhookStatus::Paused;
                    w.disabled_reason = Some("paused through the API".to_string());
                }
                Some(WebhookStatus::Disabled) if w.status != WebhookStatus::Disabled => {
                    w.status = WebhookStatus::Disabled;
                    w.disabled_reason = Some("disabled through the API".to_string());
                }
                _ => {}
            }
            w.updated_at = now;
        })
        .await?
        .ok_or_else(|| ApiError::not_found("webhook", &id))?;
    info!(tenant = %tenant.id, webhook_id = %webhook_id, "webhook updated");
    Ok(ApiJson(
        WebhookView::with_health(&state, &tenant.id, updated).await?,
    ))
}

/// Deletes a webhook and stops its queue.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "delete_webhook",
    params(("id" = String, Path, description = "Webhook id (`wh_...`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such webhook for this tenant", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let webhook_id = parse_webhook_id(&id)?;
    if !state.store.delete_webhook(&tenant.id, &webhook_id).await? {
        return Err(ApiError::not_found("webhook", &id));
    }
    info!(tenant = %tenant.id, webhook_id = %webhook_id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Optional body of a test send.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSend {
    /// Default `hookd.test`.
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    /// Any JSON; by default the example payload of the type if the tenant declares one, else
    /// a short sample message.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
}

/// Sends a sample event to the webhook now and answers with what the receiver said.
/// Nothing is stored or retried; `webhook-id` is a one-off `dlv_test_…` id.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/test",
    tag = "webhooks",
    operation_id = "test_webhook",
    params(("id" = String, Path, description = "Webhook id (`wh_...`)")),
    request_body(content = Option<TestSend>, description = "Optional; empty means a sample event"),
    responses(
        (status = 200, description = "What the receiver answered (also when it failed)", body = TestSendOutcome),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such webhook for this tenant", body = ErrorBody),
        (status = 422, description = "Invalid body or event type", body = ErrorBody),
        (status = 429, description = "`test_send_busy`: as many test sends to this webhook are in flight as its `max_in_flight` (with Retry-After)", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn test_send(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiBody(body): ApiBody,
) -> Result<ApiJson<TestSendOutcome>, ApiError> {
    let webhook = load(&state, &tenant, &id).await?;
    let body: TestSend = optional_json(&state, &tenant, body).await?;
    let event_type = body.event_type.unwrap_or_else(|| "hookd.test".to_string());
    if !crate::config::valid_event_type(&event_type) {
        return Err(ApiError::invalid(
            "invalid_event_type",
            "`type` must be 1-128 of a-z A-Z 0-9 . _ - :",
        ));
    }
    // A declared type sends its example payload unless the body gives one.
    let example = tenant
        .settings()
        .event_type(&event_type)
        .and_then(|t| t.example.as_ref())
        .and_then(|example| serde_json::value::to_raw_value(example).ok());
    let payload = body.payload.or(example).unwrap_or_else(sample_payload);
    // The same checks as ingest: a test send must not hand receivers and plugins a
    // document that no event could carry.
    super::events::check_payload(payload.get())?;
    let event = EventRecord {
        id: EventId::new(),
        event_type,
        channel: None,
        idempotency_key: None,
        created_at: now_ms(),
        payload,
    };
    let cap = webhook
        .max_in_flight
        .unwrap_or(tenant.settings().delivery.max_in_flight_per_webhook) as usize;
    let Some(_slot) = state.delivery.test_sends.take(&webhook.id, cap) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "test_send_busy",
            format!(
                "{cap} test send(s) to this webhook are already in flight, its max_in_flight; \
                 retry after the Retry-After delay"
            ),
        )
        .with_retry_after(std::time::Duration::from_secs(1)));
    };
    let outcome = attempt::test_send(&state.delivery, tenant.settings(), &webhook, &event).await;
    Ok(ApiJson(outcome))
}

/// Optional body of a secret rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// `whsec_<base64>`; generated when absent.
    #[serde(default)]
    secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    secret: String,
    /// Until then the previous secrets sign too (one `v1,` signature each).
    previous_secret_expires_at: String,
    /// How many secrets sign now, this one included: at most the tenant's
    /// `secrets_per_webhook` quota (a rotation beyond it expires the oldest at once).
    signing_secrets: usize,
}

/// Installs a new secret; the previous one keeps signing alongside until it expires.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    operation_id = "rotate_webhook_secret",
    params(("id" = String, Path, description = "Webhook id (`wh_...`)")),
    request_body(content = Option<RotateSecret>, description = "Optional; empty means a generated secret"),
    responses(
        (status = 200, description = "The new secret", body = RotatedSecret),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such webhook for this tenant", body = ErrorBody),
        (status = 422, description = "Invalid body or secret", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiBody(body): ApiBody,
) -> Result<ApiJson<RotatedSecret>, ApiError> {
    let webhook_id = parse_webhook_id(&id)?;
    let body: RotateSecret = optional_json(&state, &tenant, body).await?;
    let new_secret = given_or_new_secret(body.secret)?;
    let now = now_ms();
    let expires_at = now + tenant.config.limits.secret_rotation_overlap.as_millis() as u64;
    let max_live = tenant.settings().quotas.secrets_per_webhook.max(1) as usize;
    let updated = state
        .store
        .update_webhook(&tenant.id, &webhook_id, &|w| {
            w.secrets.retain(|s| s.expires_at.is_none_or(|t| t > now));
            for old in &mut w.secrets {
                old.expires_at = Some(old.expires_at.map_or(expires_at, |t| t.min(expires_at)));
            }
            w.secrets
                .insert(0, WebhookSecret::new(new_secret.clone(), now));
            // At most `secrets_per_webhook` sign at once: the oldest beyond it expire now.
            w.secrets.truncate(max_live);
            w.updated_at = now;
        })
        .await?
        .ok_or_else(|| ApiError::not_found("webhook", &id))?;
    info!(tenant = %tenant.id, webhook_id = %webhook_id, "webhook secret rotated");
    Ok(ApiJson(RotatedSecret {
        secret: new_secret,
        previous_secret_expires_at: rfc3339(expires_at),
        signing_secrets: updated.secrets.len(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// RFC 3339 time or epoch milliseconds.
    #[schema(example = "2026-11-01T00:00:00Z")]
    since: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recovered {
    requeued: usize,
}

/// Re-queues every failed delivery of the webhook created since `since`; a disabled webhook
/// is refused (`409 webhook_disabled`): nothing would be sent until it is enabled.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/recover",
    tag = "webhooks",
    operation_id = "recover_webhook",
    params(("id" = String, Path, description = "Webhook id (`wh_...`)")),
    request_body = Recover,
    responses(
        (status = 202, description = "The failed deliveries are queued again", body = Recovered),
        (status = 400, description = "Malformed JSON or time", body = ErrorBody),
        (status = 404, description = "No such webhook for this tenant", body = ErrorBody),
        (status = 409, description = "`webhook_disabled`: the webhook is disabled (enable it first)", body = ErrorBody),
        (status = 413, description = "The body is larger than allowed", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Invalid body", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn recover(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Recover>,
) -> Result<(StatusCode, ApiJson<Recovered>), ApiError> {
    let webhook = load(&state, &tenant, &id).await?;
    refuse_disabled(&webhook)?;
    let since = parse_time("since", &body.since)?;
    let requeued = state.store.recover(&tenant.id, &webhook.id, since).await?;
    info!(tenant = %tenant.id, webhook_id = %webhook.id, requeued, "failed deliveries recovered");
    Ok((StatusCode::ACCEPTED, ApiJson(Recovered { requeued })))
}
