//! The records hookd keeps, as stored. Field names are the API's words; new fields get
//! `#[serde(default)]` so records written by an older hookd still decode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{AttemptId, DeliveryId, EventId, WebhookId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    Active,
    /// Receives events (its deliveries queue up) but sends nothing until made `active` again:
    /// for a receiver that is down for maintenance.
    Paused,
    /// Receives no new events; deliveries already queued wait until it is `active` again.
    Disabled,
}

/// One signing secret. In memory `secret` is the plaintext `whsec_…`; on disk only `sealed`
/// is written (`Store` seals on write, see `secrets.rs`). `secret` is never serialised, so a
/// record that reaches JSON by mistake carries no secret; a record written before secrets were
/// sealed still decodes (its plaintext `secret`) and is re-sealed at startup.
#[derive(Clone, Serialize, Deserialize)]
pub struct WebhookSecret {
    #[serde(default, skip_serializing)]
    pub secret: String,
    /// `hks1:<key id>:…`; `None` until the store first writes the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    pub created_at: u64,
    /// Set on the previous secret when a new one is rotated in; it keeps signing until then.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl WebhookSecret {
    /// A new secret, sealed when the store writes it.
    pub fn new(secret: String, created_at: u64) -> Self {
        WebhookSecret {
            secret,
            sealed: None,
            created_at,
            expires_at: None,
        }
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A plugin attached to a webhook, run in list order at attempt time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginAttachment {
    pub name: String,
    #[serde(default)]
    pub config: serde_json::Value,
    /// A stored version of the plugin to run (`GET /v1/plugins/{name}/versions`); absent: the
    /// current version, whatever uploads and rollbacks make it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, example = 3)]
    pub version: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: WebhookId,
    pub url: String,
    #[serde(default)]
    pub description: String,
    pub event_types: Vec<String>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// Newest first; `secrets[0]` is the current one.
    pub secrets: Vec<WebhookSecret>,
    /// Static headers sent with every attempt. A credential's value (`secrets::is_secret_header`)
    /// is here only once the record is opened; at rest it is in `sealed_headers`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Stored form only: the credential headers' values, sealed (`store/sealing.rs`). Empty in
    /// an opened record; a listing's record keeps them here, never shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sealed_headers: BTreeMap<String, String>,
    pub status: WebhookStatus,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    #[serde(default)]
    pub rate_limit_per_sec: Option<u32>,
    /// Delays before each retry, in ms, replacing the tenant's schedule (`None`: the tenant's).
    #[serde(default)]
    pub retry_schedule_ms: Option<Vec<u64>>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub plugins: Vec<PluginAttachment>,
    /// When the current run of failed attempts began (cleared by a success).
    #[serde(default)]
    pub failing_since: Option<u64>,
    pub created_at: u64,
    pub updated_at: u64,
}

impl WebhookRecord {
    /// Secrets that sign right now, newest first. Their plaintext is there when the record
    /// came from `Store::webhook` or `Store::update_webhook`; listings leave it sealed.
    pub fn live_secrets(&self, now_ms: u64) -> impl Iterator<Item = &WebhookSecret> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at.is_none_or(|t| t > now_ms))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub created_at: u64,
    /// The producer's JSON, kept byte for byte so delivery never re-serialises it.
    pub payload: Box<RawValue>,
}

/// The Standard Webhooks body: `{"id","type","timestamp","channel"?,"data"}`.
#[derive(Serialize)]
struct DeliveredBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a RawValue,
}

impl EventRecord {
    /// The JSON body delivered for this event before plugins (the payload copied byte for
    /// byte). A function of the record alone, so a store may keep, instead of an attempt's
    /// captured body, the fact that it was this one.
    pub fn delivered_body(&self) -> bytes::Bytes {
        let body = DeliveredBody {
            id: self.id.as_str(),
            event_type: &self.event_type,
            timestamp: crate::ids::rfc3339(self.created_at),
            channel: self.channel.as_deref(),
            data: &self.payload,
        };
        // Sized once: the payload plus the envelope's fields (growing from empty took ~8
        // reallocations of a 1 KiB body).
        let envelope = 192 + self.event_type.len() + self.channel.as_ref().map_or(0, String::len);
        let mut out = Vec::with_capacity(self.payload.get().len() + envelope);
        serde_json::to_writer(&mut out, &body).expect("the body serialises");
        bytes::Bytes::from(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    InFlight,
    Delivered,
    Failed,
    Filtered,
}

impl DeliveryStatus {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => DeliveryStatus::Pending,
            "in_flight" => DeliveryStatus::InFlight,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            "filtered" => DeliveryStatus::Filtered,
            _ => return None,
        })
    }

    /// Whether the delivery still has a schedule entry.
    pub fn is_queued(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::InFlight)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub webhook_id: WebhookId,
    pub event_type: String,
    /// The event's channel.
    #[serde(default)]
    pub channel: Option<String>,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub created_at: u64,
    pub updated_at: u64,
    /// Due time of the schedule entry, while `status` is pending or in flight.
    #[serde(default)]
    pub next_attempt_at: Option<u64>,
    #[serde(default)]
    pub last_attempt_at: Option<u64>,
    #[serde(default)]
    pub last_status_code: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The plugin that dropped the delivery, when `status` is `filtered`.
    #[serde(default)]
    pub filtered_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub id: AttemptId,
    pub delivery_id: DeliveryId,
    pub webhook_id: WebhookId,
    /// 1-based attempt number.
    pub attempt: u32,
    pub started_at: u64,
    pub url: String,
    pub latency_ms: u64,
    /// `delivered`, `failed` (will be retried), `exhausted`, `rejected` (not retryable) or
    /// `filtered`.
    pub result: String,
    #[serde(default)]
    pub status_code: Option<u16>,
    /// Stable code of what went wrong: `timeout`, `connect_refused`, `dns`,
    /// `blocked_address`, `http_status`, …
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub response_snippet: Option<String>,
    #[serde(default)]
    pub next_attempt_at: Option<u64>,
    /// Log lines plugins wrote during this attempt.
    #[serde(default)]
    pub plugin_logs: Vec<String>,
    /// The request as sent (after plugins, signed), when one was sent; secrets by name only
    /// (`delivery/capture.rs`).
    #[serde(default)]
    pub request: Option<SentRequest>,
    /// Who decided the result instead of hookd's default rules: `plugin:<name>` for an
    /// `on-response` plugin; `None` when the default rules did.
    #[serde(default)]
    pub verdict_by: Option<String>,
}

/// What the attempt log keeps of a sent request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SentRequest {
    pub url: String,
    pub method: String,
    /// In the order sent; secrets and signatures with `value: null`.
    pub headers: Vec<SentHeader>,
    /// The body (its first `max_request_capture_bytes`): text, or base64 when `body_base64`.
    pub body: String,
    #[serde(default)]
    pub body_base64: bool,
    /// Size of the whole body as sent.
    pub body_bytes: u64,
    /// Only the first part of the body is kept.
    #[serde(default)]
    pub body_truncated: bool,
}

/// One header of a sent request; `value` is `null` for secrets and signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SentHeader {
    pub name: String,
    pub value: Option<String>,
}
