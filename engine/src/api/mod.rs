//! The HTTP API (axum): routes, authentication, request/response shapes.
//!
//! `api` never calls reqwest and never names sled: it validates input, then calls `ingest`,
//! `store` and `delivery`. Every `/v1` route authenticates the tenant from its API key and
//! passes that tenant id into every store call.
//!
//! Every route is registered through `utoipa_axum::routes!` from the handler's own
//! `#[utoipa::path]`, so the router and `/openapi.json` are built from one list and cannot
//! drift (`clippy.toml` forbids plain `Router::route`).

mod admin;
pub mod console;
mod deliveries;
mod error;
mod event_types;
mod events;
mod ops;
mod plugin_shadow;
mod plugins;
mod query_rules;
mod replay;
mod retention;
pub mod serve;
mod stats;
mod webhooks;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::config::{Config, SharedConfig};
use crate::delivery::{DeliveryContext, DispatchHandle};
use crate::ingest::Ingest;
use crate::store::Store;
use crate::telemetry::Metrics;
use std::sync::Arc as StdArc;

pub use crate::ids::rfc3339;
pub use error::{ApiError, ErrorBody};

/// Headroom above the payload limit for the rest of an event's JSON.
const ENVELOPE_BYTES: usize = 64 * 1024;
/// Body limit of `POST /v1/events/batch` (unless one event's own limit is larger).
const BATCH_BODY_BYTES: usize = 32 * 1024 * 1024;
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 250;

/// What every handler shares. Cheap to clone (axum clones it for each request and extractor):
/// one reference count, not one per service.
#[derive(Clone, Debug)]
pub struct AppState(StdArc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(StdArc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

#[derive(Debug)]
pub struct Services {
    pub store: StdArc<dyn Store>,
    pub config: SharedConfig,
    pub ingest: Ingest,
    pub dispatch: DispatchHandle,
    pub delivery: DeliveryContext,
    /// When the engine started (for the admin status route).
    pub started: std::time::Instant,
    /// Per-tenant quota state: request rates, usage estimates.
    pub quotas: crate::quota::Quotas,
    pub metrics: Metrics,
    /// Seals and opens the console's session cookies.
    pub sessions: console::Sessions,
}

/// Every route of the API, each registered with its OpenAPI operation. Paths, methods,
/// parameters, bodies and answers come from the handlers' `#[utoipa::path]` attributes.
fn routes(upload_limit: usize, batch_limit: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ops::document_base())
        .routes(routes!(events::create, events::list))
        .routes(routes!(events::create_batch).layer(body_limit(batch_limit)))
        .routes(routes!(events::get_one))
        .routes(routes!(event_types::list))
        .routes(routes!(replay::replay_event))
        .routes(routes!(replay::replay_deliveries))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(
            webhooks::get_one,
            webhooks::update,
            webhooks::delete
        ))
        .routes(routes!(webhooks::test_send))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::recover))
        .routes(routes!(deliveries::list, retention::purge))
        .routes(routes!(deliveries::get_one))
        .routes(routes!(deliveries::retry))
        .routes(routes!(plugins::list))
        .routes(
            routes!(plugins::get_one, plugins::put, plugins::delete)
                .layer(body_limit(upload_limit)),
        )
        .routes(routes!(plugins::simulate))
        .routes(routes!(plugins::versions))
        .routes(routes!(plugins::rollback))
        .routes(routes!(plugin_shadow::get_shadow))
        .routes(routes!(plugin_shadow::promote))
        .routes(routes!(plugin_shadow::discard))
        .routes(routes!(stats::tenant_stats))
        .routes(routes!(stats::webhook_stats))
        .routes(routes!(admin::tenants))
        .routes(routes!(admin::status))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
        .routes(routes!(console::page))
        .routes(routes!(console::asset))
        .routes(
            routes!(console::sign_in, console::current, console::sign_out)
                .layer(body_limit(console::SIGN_IN_BODY_BYTES)),
        )
}

/// The largest body a route takes, known to [`ApiBody`] (which refuses a larger
/// `Content-Length` before reading anything) and to axum's extractors (which stop reading
/// at it). A route's own limit overrides the router's.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

fn body_limit(bytes: usize) -> tower::layer::util::Stack<Extension<BodyLimit>, DefaultBodyLimit> {
    tower::layer::util::Stack::new(Extension(BodyLimit(bytes)), DefaultBodyLimit::max(bytes))
}

/// A body must arrive whole within twice `limits.body_read_timeout` (the serve loop puts it
/// in the request as a [`serve::BodyDeadline`]), plus its length at [`BODY_MIN_RATE`]: the
/// timeout bounds each pause only, so a client dripping a byte every few seconds would
/// otherwise hold its connection and buffered body for good.
const BODY_MIN_RATE: u64 = 16 * 1024;

/// The OpenAPI document that `GET /openapi.json` serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ops::finish_document(routes(0, 0).into_openapi())
}

pub fn router(state: AppState) -> Router {
    let config = state.config.current();
    let body_limit = config.limits.max_payload_bytes + ENVELOPE_BYTES;
    let upload_limit = config.plugins.settings.max_upload_bytes;
    // A batch may carry MAX_BATCH_EVENTS events; its body may reach 32 MiB (each payload
    // still within `max_payload_bytes`), or one event's limit if that is larger.
    let batch_limit = body_limit.max(BATCH_BODY_BYTES);
    let (router, document) = routes(upload_limit, batch_limit).split_for_parts();
    let document = ops::finish_document(document);
    let query_rules = query_rules::QueryRules::from_document(&document);
    router
        .route_layer(axum::middleware::from_fn_with_state(
            query_rules,
            query_rules::refuse_unknown_parameters,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            count_request,
        ))
        .layer(self::body_limit(body_limit))
        .layer(Extension(ops::OpenApiJson::new(document)))
        .with_state(state)
}

/// Counts every answered request by method, route template and status
/// (`hookd_http_requests_total`).
async fn count_request(
    axum::extract::State(metrics): axum::extract::State<Metrics>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let response = next.run(request).await;
    metrics.http_request(
        &method,
        route.as_ref().map(axum::extract::MatchedPath::as_str),
        response.status().as_u16(),
    );
    response
}

/// The answer of `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (the store answers).
    #[schema(example = "ok")]
    status: &'static str,
    /// `/readyz` only: the outcome of the last config reload (the problems of a refused one
    /// are on `GET /v1/admin/status`: a probe needs no key, so it says nothing about config
    /// contents).
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<crate::config::ReloadSummary>,
    /// `/readyz` only: the largest delivery lag of any tenant now, in milliseconds — how long
    /// after their due time attempts start (0 when every queue keeps up; names no tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_lag_ms: Option<u64>,
}

/// Liveness: the process answers HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "Alive", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        config: None,
        delivery_lag_ms: None,
    })
}

/// Readiness: the store answers a read.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "The store is not readable, or on PostgreSQL takes no \
            writes (`not_ready`, saying why), or the data dir is short of space (`storage_full`) \
            or read-only (`storage_read_only`)", body = ErrorBody),
    ),
)]
async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    // Ready when the store answers a read and the data dir can take events.
    match state.store.check_ready().await {
        Ok(()) => Json(Health {
            status: "ready",
            config: Some(state.config.reload_status().into()),
            delivery_lag_ms: Some(state.delivery.lag.worst().as_millis() as u64),
        })
        .into_response(),
        Err(crate::store::StoreError::Space(problem)) => ApiError::storage(problem).into_response(),
        Err(err) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store is not ready: {err}"),
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// The authenticated tenant of a `/v1` request, with the config snapshot it was checked
/// against (use that snapshot for the whole request).
pub struct Tenant {
    pub id: String,
    pub config: Arc<Config>,
}

impl Tenant {
    /// This tenant's settings in the request's config snapshot.
    pub fn settings(&self) -> &crate::config::TenantConfig {
        self.config
            .tenant(&self.id)
            .expect("an authenticated tenant is in the config it was checked against")
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let config = state.config.current();
        let id = match credential(parts, state, &config)? {
            Credential::Key(key) => config
                .tenant_for_key(key)
                .map(|t| t.id.clone())
                .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))?,
            Credential::Session(claims) => match (claims.role, claims.tenant) {
                (console::Role::Tenant, Some(tenant)) => tenant,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "an admin session reaches only the admin routes",
                    ));
                }
            },
        };
        let quotas = &config
            .tenant(&id)
            .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))?
            .quotas;
        // Every authenticated request counts against the tenant's request rate.
        if let Err(wait) = state.quotas.admit_request(&id, quotas) {
            return Err(ApiError::rate_limited(wait, quotas.api_requests_per_sec));
        }
        parts.extensions.insert(TenantId(id.clone()));
        Ok(Tenant { id, config })
    }
}

/// How a request authenticates: an API key (`Authorization: Bearer`), or the console's
/// session cookie with the console header (`api/console/session.rs`), checked here against
/// the running config.
pub enum Credential<'a> {
    Key(&'a str),
    Session(console::session::Claims),
}

/// The request's credential; a bearer key wins over a session cookie.
pub fn credential<'a>(
    parts: &'a Parts,
    state: &AppState,
    config: &Config,
) -> Result<Credential<'a>, ApiError> {
    if !parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
        && let Some(session) = state.sessions.from_headers(&parts.headers)
    {
        return match session {
            Some(claims) if claims.is_valid(config, crate::ids::now_ms()) => {
                Ok(Credential::Session(claims))
            }
            _ => Err(ApiError::unauthorized(
                "the console session has ended; sign in again",
            )),
        };
    }
    bearer_key(parts).map(Credential::Key)
}

/// The key of an `Authorization: Bearer <key>` header.
pub fn bearer_key(parts: &Parts) -> Result<&str, ApiError> {
    let mut headers = parts
        .headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter();
    let header = headers.next().ok_or_else(|| {
        ApiError::unauthorized("send your API key as `Authorization: Bearer <key>`")
    })?;
    // Two credentials: which one is meant is not ours to guess (RFC 9110 allows one).
    if headers.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_authorization",
            "send one Authorization header, not several",
        ));
    }
    header
        .to_str()
        .ok()
        .and_then(bearer_token)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))
}

/// The credentials of a `Bearer` authorization value; the scheme's case does not matter
/// (RFC 9110 §11.1: `bearer <key>` is the same).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(key.trim())
}

/// JSON body extractor (and response) whose rejections are [`ApiError`]s. A body over
/// `offload::INLINE_BYTES` is parsed on the blocking pool (batches reach 32 MiB).
pub struct ApiJson<T>(pub T);

impl<T> FromRequest<AppState> for ApiJson<T>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        if !json_content_type(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        // The `Tenant` extractor (which runs before any body extractor) left its id here.
        let tenant = request
            .extensions()
            .get::<TenantId>()
            .map_or(crate::offload::ENGINE.to_string(), |id| id.0.clone());
        let ApiBody(bytes) = ApiBody::from_request(request, state).await?;
        refuse_array(&bytes)?;
        let parsed = state
            .delivery
            .offload
            .by_size(&tenant, bytes.len(), move || Json::<T>::from_bytes(&bytes))
            .await?;
        Ok(ApiJson(parsed.0))
    }
}

/// Every request body is a JSON object: serde would also take an array as the object's fields
/// in order (`["user.created", {...}]` as an event), past the check for unknown fields.
fn refuse_array(body: &[u8]) -> Result<(), ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Err(ApiError::invalid(
            "invalid_body",
            "the body must be a JSON object, not an array",
        )),
        _ => Ok(()),
    }
}

/// The authenticated tenant's id, in the request's extensions for the body extractors.
#[derive(Clone, Debug)]
struct TenantId(String);

/// Whether the request says its body is JSON (`application/json` or `application/*+json`),
/// as axum's `Json` requires.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

impl<T: Serialize + Send + 'static> ApiJson<T> {
    /// The answer, rendered off the async workers in the tenant's turn when it carries about
    /// `size` bytes (a large body echoed back, as `simulate` does).
    pub async fn rendered(self, state: &AppState, tenant: &Tenant, size: usize) -> Response {
        state
            .delivery
            .offload
            .by_size(&tenant.id, size, move || Json(self.0).into_response())
            .await
    }
}

/// Raw body extractor whose rejections (too large, stalled, broken) are [`ApiError`]s.
pub struct ApiBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let limit = request.extensions().get::<BodyLimit>().map(|l| l.0);
        let length = declared_length(request.headers());
        if let (Some(limit), Some(length)) = (limit, length)
            && length > limit as u64
        {
            return Err(ApiError::payload_too_large(format!(
                "the body is {length} bytes; this route takes at most {limit}"
            )));
        }
        let expected = length.or(limit.map(|l| l as u64)).unwrap_or(0);
        let base = request
            .extensions()
            .get::<serve::BodyDeadline>()
            .map_or(std::time::Duration::from_secs(60), |d| d.0);
        let deadline = base + std::time::Duration::from_secs(expected / BODY_MIN_RATE);
        match tokio::time::timeout(deadline, axum::body::Bytes::from_request(request, state)).await
        {
            Ok(read) => read.map(ApiBody).map_err(ApiError::from),
            Err(_) => Err(ApiError::request_timeout()),
        }
    }
}

/// The request's `Content-Length`, when it has a valid one.
fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Query-string extractor whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path extractor whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}

/// `?limit=&iterator=` of a listing without filters.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub iterator: Option<String>,
}

/// The page size of a listing: `limit`, 1–250, default 50.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be between 1 and {MAX_PAGE_SIZE}"),
        )),
    }
}

/// Parses an `iterator` this API returned (an id of the listed kind).
pub fn parse_iterator<T>(
    text: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    text.map(|t| {
        parse(t).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_iterator",
                "`iterator` is not one this API returned",
            )
        })
    })
    .transpose()
}

/// One page of a listing, as returned to clients.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    /// Pass as `iterator` to fetch the next page.
    pub iterator: Option<String>,
    pub done: bool,
}

impl<T> ListResponse<T> {
    pub fn new(data: Vec<T>, next: Option<String>) -> Self {
        ListResponse {
            data,
            done: next.is_none(),
            iterator: next,
        }
    }
}

/// A time in a query or body: RFC 3339 (`2026-11-23T10:00:00Z`) or milliseconds since the epoch.
pub fn parse_time(field: &str, text: &str) -> Result<u64, ApiError> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t: SystemTime| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_time",
                format!("`{field}` must be an RFC 3339 time like 2026-11-23T10:00:00Z or epoch milliseconds"),
            )
        })
}

/// An optional JSON body: empty or `null` means `T::default()` (the document marks these
/// bodies optional and nullable). A large body is parsed off the async workers, in the tenant's
/// turn.
pub async fn optional_json<T>(
    state: &AppState,
    tenant: &Tenant,
    body: axum::body::Bytes,
) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Default + Send + 'static,
{
    refuse_array(&body)?;
    let offload = &state.delivery.offload;
    offload
        .by_size(&tenant.id, body.len(), move || {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(T::default());
            }
            serde_json::from_slice::<Option<T>>(&body)
                .map(Option::unwrap_or_default)
                .map_err(|err| {
                    if err.is_data() {
                        ApiError::invalid("invalid_body", err.to_string())
                    } else {
                        ApiError::bad_request("invalid_json", err.to_string())
                    }
                })
        })
        .await
}

/// An optional time filter (`after`, `before`, `since`).
pub fn parse_optional_time(field: &str, text: Option<&str>) -> Result<Option<u64>, ApiError> {
    text.map(|t| parse_time(field, t)).transpose()
}

/// A `type` filter names one event type exactly: a wildcard (`user.*`) matches no stored type,
/// so it is refused rather than answered with nothing.
pub fn check_type_filter(event_type: Option<&str>) -> Result<(), ApiError> {
    match event_type {
        Some(text) if text.contains('*') => Err(ApiError::bad_request(
            "invalid_query",
            "`type` filters by one exact event type; wildcards are for webhook subscriptions",
        )),
        _ => Ok(()),
    }
}

/// A channel name: 1-128 of `A-Z a-z 0-9 . _ - :`.
pub fn valid_channel(channel: &str) -> bool {
    !channel.is_empty()
        && channel.len() <= 128
        && channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}
