//! `/v1/plugins`: upload (raw component body: every upload is a new stored version; a
//! candidate upload goes to `plugin_shadow.rs`), list, inspect, versions, rollback, delete,
//! simulate.

use axum::body::Bytes;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::plugin_shadow::{self, ShadowView, UploadQuery};
use super::{
    ApiBody, ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, Tenant, optional_json,
    rfc3339,
};
use crate::delivery::judge::Tried;
use crate::delivery::prepare::{self, AttemptInput, Prepared};
use crate::ids::{EventId, WebhookId, now_ms};
use crate::plugin::{PluginInfo, PluginLoadError, PluginQuota, PluginSource, PluginVersions};
use crate::secrets::is_secret_header;
use crate::signing;
use crate::store::{EventRecord, PluginAttachment, WebhookRecord, WebhookSecret, WebhookStatus};

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    name: String,
    version: String,
    declared_name: String,
    sha256: String,
    hooks: Vec<String>,
    size_bytes: usize,
    created_at: String,
    updated_at: String,
    last_error: Option<String>,
    /// `upload` (this API) or `admin_dir` (the admin's plugin directory).
    #[schema(example = "upload")]
    source: &'static str,
    /// The stored version that is live (uploads only; see `GET /v1/plugins/{name}/versions`).
    #[schema(example = 3)]
    version_id: Option<u64>,
    /// Who uploaded the live version: the first 12 hex digits of the SHA-256 of the API key
    /// (as `sha256:` in the config), `console`, or `migrated` (a file of an older hookd).
    uploaded_by: Option<String>,
}

impl From<PluginInfo> for PluginView {
    fn from(info: PluginInfo) -> Self {
        PluginView {
            name: info.name,
            version: info.version,
            declared_name: info.declared_name,
            sha256: info.sha256,
            hooks: info.hooks,
            size_bytes: info.size_bytes,
            created_at: rfc3339(info.created_ms),
            updated_at: rfc3339(info.updated_ms),
            last_error: info.last_error,
            source: match info.source {
                PluginSource::Upload => "upload",
                PluginSource::AdminDir => "admin_dir",
            },
            version_id: info.stored.as_ref().map(|v| v.id),
            uploaded_by: info.stored.map(|v| v.uploaded_by),
        }
    }
}

/// The API error of a refused upload, config or lookup.
pub fn load_error(err: PluginLoadError) -> ApiError {
    let code = err.code();
    let message = err.to_string();
    match err {
        PluginLoadError::TooLarge { .. } | PluginLoadError::TooComplex(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
        }
        PluginLoadError::QuotaExceeded(exceeded) => ApiError::quota_exceeded(exceeded),
        PluginLoadError::CompileBusy { retry_after } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
                .with_retry_after(retry_after)
        }
        PluginLoadError::Invalid { .. } => ApiError::bad_request(code, message),
        PluginLoadError::NotFound
        | PluginLoadError::VersionNotFound { .. }
        | PluginLoadError::InvalidConfig(_) => ApiError::invalid(code, message),
        PluginLoadError::Incompatible(_) => ApiError::conflict(code, message),
        PluginLoadError::Storage(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        ),
    }
}

/// What to say to an upload sent as a form or compressed (a common first try), instead of
/// "not a WebAssembly component".
fn upload_encoding_hint(headers: &axum::http::HeaderMap) -> Option<&'static str> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/")
        || content_type.starts_with("application/x-www-form-urlencoded")
    {
        return Some(
            "the upload is a form; send the component's raw bytes as the body \
             (curl --data-binary @plugin.wasm), not -F or -d",
        );
    }
    headers
        .get(axum::http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        .then_some(
            "the upload is compressed (Content-Encoding); send the component's raw, \
             uncompressed bytes",
        )
}

/// The webhook steps that run `name`'s current version (not pinning one): what a new
/// current version (upload, rollback, promote) is checked against, unless `force`.
pub(super) async fn attached_to_current(
    state: &AppState,
    tenant: &Tenant,
    name: &str,
    force: Option<bool>,
) -> Result<Vec<crate::plugin::Attached>, ApiError> {
    if force == Some(true) {
        return Ok(Vec::new());
    }
    let webhooks = state.store.webhooks_of(&tenant.id).await?;
    Ok(webhooks
        .iter()
        .flat_map(|webhook| {
            webhook
                .plugins
                .iter()
                .filter(|step| step.name == name && step.version.is_none())
                .map(|step| crate::plugin::Attached {
                    webhook_id: webhook.id.to_string(),
                    config: step.config.to_string(),
                })
        })
        .collect())
}

/// `?force=true`: make a version current even if it changes what attached webhooks run.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// Make the version current even when it lacks a hook the current version has, or
    /// refuses a config of a webhook that follows the current version (`409
    /// plugin_incompatible` otherwise).
    pub force: Option<bool>,
}

/// Checks a webhook's plugin chain: length, and each plugin's `validate-config`.
pub async fn check_chain(
    state: &AppState,
    tenant: &Tenant,
    chain: &[PluginAttachment],
) -> Result<(), ApiError> {
    let max = tenant.config.plugins.max_chain_length;
    if chain.len() > max {
        return Err(ApiError::invalid(
            "invalid_plugins",
            format!("a webhook runs at most {max} plugins"),
        ));
    }
    for step in chain {
        state
            .delivery
            .plugins
            .validate_attachment(
                &tenant.id,
                &step.name,
                step.version,
                &step.config.to_string(),
            )
            .await
            .map_err(|err| match err {
                PluginLoadError::NotFound => ApiError::invalid(
                    "plugin_not_found",
                    format!(
                        "no plugin named `{}`; upload it first (PUT /v1/plugins/{})",
                        step.name, step.name
                    ),
                ),
                other => load_error(other),
            })?;
    }
    Ok(())
}

/// Who sends a request, as a stored version records it: the first 12 hex digits of the SHA-256
/// of the bearer key (the config lists keys as `sha256:<hex>`), or `console`.
fn uploader(headers: &HeaderMap) -> String {
    let key = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(super::bearer_token);
    match key {
        Some(key) => hex::encode(crate::config::hash_api_key(key))[..12].to_string(),
        None => "console".to_string(),
    }
}

/// Uploads a plugin: the raw WebAssembly component is the body. Every upload is a new stored
/// version that becomes current on every node (bytes equal to the current version's are
/// idempotent: the current version is answered). With `?stage=candidate` the version is
/// stored as the plugin's candidate instead: checked and compiled the same way, then run
/// beside the current version on the next `shadow_attempts` attempts (never sent), with the
/// differences reported by `GET /v1/plugins/{name}/shadow` until `promote` or `discard`.
#[utoipa::path(
    put,
    path = "/v1/plugins/{name}",
    tag = "plugins",
    operation_id = "put_plugin",
    params(("name" = String, Path, description = "The plugin's name within the tenant"), UploadQuery),
    request_body(description = "The raw bytes of a WebAssembly component of the `hookd:plugin` world \
        (any content type is taken; `application/wasm` or `application/octet-stream`)",
        content((WasmComponent = "application/octet-stream"))),
    responses(
        (status = 201, description = "Installed (its first version)", body = PluginView),
        (status = 200, description = "A new version of an existing plugin is current", body = PluginView),
        (status = 202, description = "Stored as the candidate (`stage=candidate`): its shadow run started", body = ShadowView),
        (status = 400, description = "An invalid name (`invalid_plugin_name`), a form or compressed upload or not a valid plugin component (`plugin_invalid`), or an invalid query (`invalid_query`)", body = ErrorBody),
        (status = 409, description = "A new current version lacks a hook the current one runs for webhooks following it, or refuses one of their configs (`plugin_incompatible`, naming them; `?force=true` overrides); a candidate needs an uploaded current version (`no_current_version`) that differs from it (`candidate_is_current`), and neither may export on-response (`shadow_unsupported`)", body = ErrorBody),
        (status = 413, description = "The component is larger than allowed, or has more (or larger) functions than the host compiles (`plugin_too_large`)", body = ErrorBody),
        (status = 422, description = "Refused by the plugin host", body = ErrorBody),
        (status = 429, description = "The tenant would have more plugins or plugin bytes than its `plugins` / `plugin_bytes` quota (`quota_exceeded`, naming it, with its limit and the current use; nothing was compiled or written), or is over its request rate (`rate_limited`)", body = ErrorBody),
        (status = 503, description = "The compiler is busy with this tenant's other upload or with the engine's limit of compiles (`compile_busy`, with Retry-After), or the plugin store is unavailable", body = ErrorBody),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    request: Request,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    crate::plugin::check_plugin_name(&name)
        .map_err(|message| ApiError::bad_request("invalid_plugin_name", message))?;
    if let Some(hint) = upload_encoding_hint(request.headers()) {
        return Err(ApiError::bad_request("plugin_invalid", hint));
    }
    let candidate = query.candidate_attempts()?;
    let plugins = &state.delivery.plugins;
    let quota = PluginQuota {
        plugins: tenant.config.quotas.plugins,
        bytes: tenant.config.quotas.plugin_bytes,
    };
    // Before the body is read: over the quota (by its declared length, if any), or while the
    // tenant's compile slot is taken (another of its uploads compiles), the upload is refused
    // without reading it.
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    plugins
        .check_quota(&tenant.id, &name, declared, quota)
        .map_err(load_error)?;
    let slot = plugins.compile_slot(&tenant.id).await.map_err(load_error)?;
    let uploaded_by = uploader(request.headers());
    let body = Bytes::from_request(request, &state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "plugin_too_large",
                    format!(
                        "the component is larger than the {} bytes allowed",
                        tenant.config.plugins.settings.max_upload_bytes
                    ),
                )
            } else {
                ApiError::from(rejection)
            }
        })?;
    if let Some(attempts) = candidate {
        let wasm = body.to_vec();
        return plugin_shadow::upload_candidate(
            &state,
            &tenant,
            &name,
            wasm,
            attempts,
            slot,
            &uploaded_by,
        )
        .await
        .map(IntoResponse::into_response);
    }
    let existed = plugins.info(&tenant.id, &name).is_some();
    let attached = attached_to_current(&state, &tenant, &name, query.force).await?;
    let info = plugins
        .install_as(
            &tenant.id,
            &name,
            body.to_vec(),
            quota,
            Some(slot),
            &uploaded_by,
            attached,
        )
        .await
        .map_err(load_error)?;
    tracing::info!(tenant = %tenant.id, plugin = %name, sha256 = %info.sha256, "plugin installed");
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, ApiJson(PluginView::from(info))).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    data: Vec<PluginView>,
}

/// The tenant's plugins.
#[utoipa::path(
    get,
    path = "/v1/plugins",
    tag = "plugins",
    operation_id = "list_plugins",
    responses((status = 200, description = "Every plugin of the tenant", body = PluginList)),
)]
pub async fn list(State(state): State<AppState>, tenant: Tenant) -> ApiJson<PluginList> {
    let data = state
        .delivery
        .plugins
        .list(&tenant.id)
        .into_iter()
        .map(PluginView::from)
        .collect();
    ApiJson(PluginList { data })
}

/// One plugin: version, hooks, last error.
#[utoipa::path(
    get,
    path = "/v1/plugins/{name}",
    tag = "plugins",
    operation_id = "get_plugin",
    params(("name" = String, Path, description = "The plugin's name within the tenant")),
    responses(
        (status = 200, description = "The plugin", body = PluginView),
        (status = 404, description = "No such plugin for this tenant", body = ErrorBody),
    ),
)]
pub async fn get_one(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<PluginView>, ApiError> {
    state
        .delivery
        .plugins
        .info(&tenant.id, &name)
        .map(|info| ApiJson(PluginView::from(info)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no plugin named `{name}`"),
            )
        })
}

/// Deletes a plugin no webhook uses (409 `plugin_in_use` names the webhooks that do).
#[utoipa::path(
    delete,
    path = "/v1/plugins/{name}",
    tag = "plugins",
    operation_id = "delete_plugin",
    params(("name" = String, Path, description = "The plugin's name within the tenant")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such plugin for this tenant", body = ErrorBody),
        (status = 409, description = "Webhooks still use the plugin", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let users: Vec<String> = state
        .store
        .webhooks_of(&tenant.id)
        .await?
        .iter()
        .filter(|w| w.plugins.iter().any(|p| p.name == name))
        .map(|w| w.id.to_string())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(
            "plugin_in_use",
            format!(
                "detach the plugin from these webhooks first: {}",
                users.join(", ")
            ),
        ));
    }
    let deleted = state
        .delivery
        .plugins
        .delete(&tenant.id, &name)
        .await
        .map_err(load_error)?;
    if !deleted {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no plugin named `{name}`"),
        ));
    }
    tracing::info!(tenant = %tenant.id, plugin = %name, "plugin deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// One stored version of a plugin.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginVersionView {
    /// 1, 2, 3… in upload order (what `rollback` and a webhook's `plugins[].version` name).
    #[schema(example = 3)]
    id: u64,
    sha256: String,
    size_bytes: u64,
    created_at: String,
    /// The first 12 hex digits of the SHA-256 of the uploading API key, `console`, or
    /// `migrated`.
    uploaded_by: String,
    /// Attempts run this version (unless their webhook pins another).
    current: bool,
    /// Uploaded as a candidate: stored, not run.
    candidate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginVersionList {
    /// Newest first: the last 20 uploads, plus the current version and any version a webhook
    /// pins, whatever their age.
    data: Vec<PluginVersionView>,
    /// The id of the current version.
    current: u64,
}

fn version_list(found: PluginVersions) -> PluginVersionList {
    let data = found
        .versions
        .into_iter()
        .map(|v| PluginVersionView {
            current: v.id == found.current,
            candidate: Some(v.id) == found.candidate,
            id: v.id,
            sha256: v.sha256,
            size_bytes: v.size,
            created_at: rfc3339(v.created_at),
            uploaded_by: v.uploaded_by,
        })
        .collect();
    PluginVersionList {
        data,
        current: found.current,
    }
}

fn no_stored_plugin(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no uploaded plugin named `{name}` (plugins of the admin directory have no stored versions)"
        ),
    )
}

/// The stored versions of an uploaded plugin, newest first.
#[utoipa::path(
    get,
    path = "/v1/plugins/{name}/versions",
    tag = "plugins",
    operation_id = "list_plugin_versions",
    params(("name" = String, Path, description = "The plugin's name within the tenant")),
    responses(
        (status = 200, description = "The plugin's versions", body = PluginVersionList),
        (status = 404, description = "No uploaded plugin of that name for this tenant", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn versions(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<PluginVersionList>, ApiError> {
    let found = state
        .delivery
        .plugins
        .versions(&tenant.id, &name)
        .await
        .map_err(load_error)?
        .ok_or_else(|| no_stored_plugin(&name))?;
    Ok(ApiJson(version_list(found)))
}

/// Body of a rollback.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The stored version to make current (`GET /v1/plugins/{name}/versions`).
    #[schema(minimum = 1, example = 2)]
    version: u64,
}

/// Makes a stored version current on every node (no restart: attempts already running finish
/// on the version they started with). Webhooks pinning a version keep theirs.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/rollback",
    tag = "plugins",
    operation_id = "rollback_plugin",
    params(("name" = String, Path, description = "The plugin's name within the tenant"), ForceQuery),
    request_body = Rollback,
    responses(
        (status = 200, description = "The version is current", body = PluginView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No uploaded plugin of that name for this tenant", body = ErrorBody),
        (status = 409, description = "The version lacks a hook the current version runs for webhooks following it, or refuses one of their configs (`plugin_incompatible`, naming them; `?force=true` overrides)", body = ErrorBody),
        (status = 422, description = "No stored version of that id (`plugin_version_not_found`), or an invalid body", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 429, description = "The version is larger than the tenant's `plugin_bytes` quota allows (`quota_exceeded`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable, or the compiler is busy (`compile_busy`, with Retry-After)", body = ErrorBody),
    ),
)]
pub async fn rollback(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ForceQuery>,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<ApiJson<PluginView>, ApiError> {
    let quota = PluginQuota {
        plugins: tenant.config.quotas.plugins,
        bytes: tenant.config.quotas.plugin_bytes,
    };
    let attached = attached_to_current(&state, &tenant, &name, query.force).await?;
    let info = state
        .delivery
        .plugins
        .rollback(&tenant.id, &name, body.version, Some(quota), &attached)
        .await
        .map_err(|err| match err {
            PluginLoadError::NotFound => no_stored_plugin(&name),
            other => load_error(other),
        })?;
    tracing::info!(tenant = %tenant.id, plugin = %name, version_id = body.version, "plugin rolled back");
    Ok(ApiJson(PluginView::from(info)))
}

/// Optional body of a simulation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Simulate {
    /// Config for this plugin (ignored with `webhook_id`).
    #[serde(default)]
    config: Option<serde_json::Value>,
    /// Run this webhook's whole chain (with its URL, headers and secret) instead.
    #[serde(default)]
    webhook_id: Option<String>,
    /// The event to run on (a sample event by default).
    #[serde(default)]
    event: Option<SampleEvent>,
    /// Or a past event of the tenant (`evt_...`), run exactly as it was stored (its id and
    /// time too); not with `event`.
    #[serde(default)]
    event_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleEvent {
    #[serde(rename = "type")]
    event_type: String,
    #[schema(value_type = serde_json::Value)]
    payload: Box<RawValue>,
    #[serde(default)]
    channel: Option<String>,
}

/// A plugin upload's body: the raw bytes of a component (`format: binary`, so client
/// generators take a file or bytes).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct WasmComponent(#[allow(dead_code)] Vec<u8>);

/// A header of a simulated request (an object rather than a `[name, value]` pair: client
/// generators handle objects well and tuples badly); a signature or credential shows its name
/// only.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeaderField {
    name: String,
    /// `null` for a signature or credential (`webhook-signature`, `authorization`, any name
    /// holding `signature`, `key`, `token`, …), as in the attempt log: a simulation signs with
    /// the webhook's real secrets and must not hand out valid signatures over any body.
    value: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SimulatedRequest {
    url: String,
    method: String,
    /// The headers, in order (a name may repeat).
    headers: Vec<HeaderField>,
    /// The body as text when it is UTF-8…
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    /// …otherwise as base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SimulateOutcome {
    /// `deliver`, `filtered` or `failed`.
    #[schema(example = "deliver")]
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<SimulatedRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filtered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<String>,
    logs: Vec<String>,
    duration_ms: f64,
}

/// Runs a plugin (or a webhook's chain) on a sample event exactly as an attempt would,
/// without sending anything.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/simulate",
    tag = "plugins",
    operation_id = "simulate_plugin",
    params(("name" = String, Path, description = "The plugin's name within the tenant")),
    request_body(content = Option<Simulate>, description = "Optional; empty means a sample event and `{}` config"),
    responses(
        (status = 200, description = "What an attempt would send, or why it would not", body = SimulateOutcome),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such plugin, webhook or event for this tenant", body = ErrorBody),
        (status = 422, description = "Invalid body or plugin config", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn simulate(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
    ApiBody(body): ApiBody,
) -> Result<axum::response::Response, ApiError> {
    // The answer echoes the request's body: render it off the async workers when large.
    let size = body.len();
    let body: Simulate = optional_json(&state, &tenant, body).await?;
    let now = now_ms();
    let webhook = match &body.webhook_id {
        Some(id) => {
            let webhook_id =
                WebhookId::parse(id).ok_or_else(|| ApiError::not_found("webhook", id))?;
            state
                .store
                .webhook(&tenant.id, &webhook_id)
                .await?
                .ok_or_else(|| ApiError::not_found("webhook", id))?
        }
        None => {
            if state.delivery.plugins.info(&tenant.id, &name).is_none() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no plugin named `{name}`"),
                ));
            }
            let chain = vec![PluginAttachment {
                version: None,
                name: name.clone(),
                config: body
                    .config
                    .clone()
                    .unwrap_or(serde_json::Value::Object(Default::default())),
            }];
            check_chain(&state, &tenant, &chain).await?;
            sample_webhook(chain, now)
        }
    };
    let event = match (body.event, body.event_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "invalid_body",
                "give `event` or `event_id`, not both",
            ));
        }
        (None, Some(id)) => {
            let event_id = EventId::parse(&id).ok_or_else(|| ApiError::not_found("event", &id))?;
            state
                .store
                .event(&tenant.id, &event_id)
                .await?
                .ok_or_else(|| ApiError::not_found("event", &id))?
        }
        (event, None) => {
            let (event_type, payload, channel) = match event {
                Some(e) => (e.event_type, e.payload, e.channel),
                None => (
                    "hookd.test".to_string(),
                    super::webhooks::sample_payload(),
                    None,
                ),
            };
            EventRecord {
                id: EventId::new(),
                event_type,
                channel,
                idempotency_key: None,
                created_at: now,
                payload,
            }
        }
    };
    let delivery_id = format!("dlv_simulate_{}", uuid::Uuid::now_v7().simple());
    let input = AttemptInput {
        tenant: tenant.settings(),
        webhook: &webhook,
        event: &event,
        webhook_id_header: &delivery_id,
        attempt: 1,
        now_ms: now,
    };
    let preparation = prepare::prepare(&state.delivery, &input).await;
    let mut outcome = SimulateOutcome {
        decision: "deliver",
        request: None,
        filtered_by: None,
        error_code: None,
        error_message: None,
        logs: preparation.plugin_logs,
        duration_ms: preparation.chain_time.as_secs_f64() * 1000.0,
    };
    match preparation.prepared {
        Prepared::Send(request) => {
            let text = std::str::from_utf8(&request.body).ok().map(str::to_string);
            let mut headers = request.headers;
            headers.push(("content-type".to_string(), request.content_type));
            outcome.request = Some(SimulatedRequest {
                url: request.url,
                method: request.method,
                headers: headers
                    .into_iter()
                    .map(|(name, value)| HeaderField {
                        value: (!is_secret_header(&name)).then_some(value),
                        name,
                    })
                    .collect(),
                body_base64: text
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(&request.body)),
                body: text,
            });
        }
        Prepared::NotSent(Tried::Filtered { plugin }) => {
            outcome.decision = "filtered";
            outcome.filtered_by = Some(plugin);
        }
        Prepared::NotSent(tried) => {
            outcome.decision = "failed";
            outcome.error_code = tried.error().map(|e| e.code().to_string());
            if let Tried::PluginFailed { message, .. } = tried {
                outcome.error_message = Some(message);
            }
        }
    }
    Ok(ApiJson(outcome).rendered(&state, &tenant, size).await)
}

/// A stand-in webhook for simulating one plugin: nothing is sent to its URL.
fn sample_webhook(plugins: Vec<PluginAttachment>, now: u64) -> WebhookRecord {
    WebhookRecord {
        id: WebhookId::new(),
        url: "https://receiver.example/webhook".to_string(),
        description: String::new(),
        event_types: vec!["*".into()],
        channels: None,
        secrets: vec![WebhookSecret::new(signing::generate_secret(), now)],
        headers: Default::default(),
        sealed_headers: Default::default(),
        status: WebhookStatus::Active,
        disabled_reason: None,
        max_attempts: None,
        timeout_ms: None,
        max_in_flight: None,
        rate_limit_per_sec: None,
        retry_schedule_ms: None,
        metadata: Default::default(),
        plugins,
        failing_since: None,
        created_at: now,
        updated_at: now,
    }
}
