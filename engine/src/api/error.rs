//! `ApiError`: the one error type of the HTTP API, rendered once as
//! `{"code": "snake_case", "message": "..."}` with a fitting status. Every extractor rejects
//! through it, so no plain-text rejection reaches a client.

use axum::Json;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::error;
use utoipa::ToSchema;

use std::time::Duration;

use crate::ingest::IngestError;
use crate::quota::{QuotaError, QuotaExceeded};
use crate::store::{SpaceProblem, StoreError};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For `quota_exceeded`: which quota, its limit and the current use.
    pub quota: Option<QuotaExceeded>,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

/// How long a client is told to wait after `503 store_unavailable`.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(5);
/// While the store is unavailable, one ERROR line per this period tells of it (with how many
/// requests were refused since the last line), not one per refused request: an outage under
/// load would otherwise write thousands of identical lines a second.
const UNAVAILABLE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs that a request was refused because the store is unavailable, at most once per
/// [`UNAVAILABLE_LOG_EVERY`] (process-wide, as the log is).
fn log_unavailable(what: &'static str, error: &dyn std::fmt::Display) {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, u64)>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::Instant::now();
    match last.as_mut() {
        Some((at, refused)) if now.duration_since(*at) < UNAVAILABLE_LOG_EVERY => *refused += 1,
        Some((_, refused)) => {
            error!(%error, refused_since_last_line = *refused, "{what}");
            *last = Some((now, 0));
        }
        None => {
            error!(%error, "{what}");
            *last = Some((now, 0));
        }
    }
}

/// The body of every error answer (the `ErrorBody` schema of `/openapi.json`).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code, e.g. `not_found`, `invalid_body`, `store_unavailable`.
    #[schema(example = "not_found")]
    code: &'static str,
    /// A sentence for people; it may change between versions.
    message: String,
    /// `quota_exceeded` only: the quota, its limit, the current use and what the request
    /// needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<QuotaExceeded>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            quota: None,
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header (whole seconds, at least 1) to the answer.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// 429 `quota_exceeded`: the request would pass one of the tenant's quotas; nothing was
    /// written.
    pub fn quota_exceeded(exceeded: QuotaExceeded) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("{exceeded}; nothing was written (an admin can raise it in [quotas])"),
        );
        err.quota = Some(exceeded);
        err
    }

    /// 429 `rate_limited`: over the tenant's `api_requests_per_sec`; retry after `wait`.
    pub fn rate_limited(wait: Duration, per_sec: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("more than {per_sec} requests per second; retry after the Retry-After delay"),
        )
        .with_retry_after(wait)
    }

    /// 429 `delivery_lag_exceeded`: the tenant's deliveries trail their due time by more than
    /// its `max_delivery_lag_secs` quota (back-pressure, `lag.rs`); nothing was written.
    pub fn delivery_lag_exceeded(exceeded: crate::lag::LagExceeded) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "delivery_lag_exceeded",
            format!(
                "this tenant's deliveries start {:.1} s after they are due, over the \
                 `max_delivery_lag_secs` quota of {} s; nothing was written, retry after the \
                 Retry-After delay",
                exceeded.lag.as_secs_f64(),
                exceeded.limit.as_secs()
            ),
        )
        .with_retry_after(exceeded.retry_after)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 for anything the tenant cannot see, including other tenants' resources.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with id `{id}`"),
        )
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422: well-formed JSON whose values are not acceptable.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 503 for a data dir that cannot take events now: `storage_full` (below the free-space
    /// reserve) or `storage_read_only`. Nothing was written; retry once space returns.
    pub fn storage(problem: SpaceProblem) -> Self {
        let code = match problem {
            SpaceProblem::Full { .. } => "storage_full",
            SpaceProblem::ReadOnly => "storage_read_only",
        };
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            format!("the event was not accepted: the data dir {problem}; retry later"),
        )
    }

    /// 408: the client stopped sending its body for longer than `limits.body_read_timeout`.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body stalled; send it without long pauses",
        )
    }
}

/// Whether a body read failed because the serve loop's body timeout fired
/// (`api/serve.rs` wraps every request body in a `TimeoutBody`).
fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        current = err.source();
    }
    false
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            quota: self.quota,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds.max(1)),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if let StoreError::Space(problem) = err {
            return ApiError::storage(problem);
        }
        if err.is_unavailable() {
            log_unavailable("store unavailable", &err);
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the data store is not answering right now; retry after the Retry-After delay",
            )
            .with_retry_after(STORE_RETRY_AFTER);
        }
        error!(error = %err, "store failure");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal storage error; it has been logged",
        )
    }
}

impl From<QuotaError> for ApiError {
    fn from(err: QuotaError) -> Self {
        match err {
            QuotaError::Exceeded(exceeded) => ApiError::quota_exceeded(exceeded),
            QuotaError::Store(err) => err.into(),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::Store(err) => err.into(),
            IngestError::Unavailable(message) => {
                log_unavailable("ingest refused: store unavailable", &message);
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the event could not be stored durably; it was not accepted, retry after \
                     the Retry-After delay",
                )
                .with_retry_after(STORE_RETRY_AFTER)
            }
            IngestError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "hookd is shutting down; retry against another instance or later",
            ),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        match &rejection {
            BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                ApiError::payload_too_large("the request body is larger than allowed")
            }
            BytesRejection::FailedToBufferBody(FailedToBufferBody::UnknownBodyError(err))
                if is_body_timeout(err) =>
            {
                ApiError::request_timeout()
            }
            _ => ApiError::bad_request("body_read_failed", rejection.body_text()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if let JsonRejection::BytesRejection(rejection) = rejection {
            return rejection.into();
        }
        let message = rejection.body_text();
        match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::payload_too_large("the request body is larger than allowed")
            }
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::invalid("invalid_body", message),
            _ => ApiError::bad_request("invalid_json", message),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}
