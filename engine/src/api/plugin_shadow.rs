//! `/v1/plugins/{name}` candidates and shadow runs: `PUT …?stage=candidate` (the upload
//! handler in `plugins.rs` hands it here), `GET …/shadow`, `POST …/promote`, `POST …/discard`.
//! The plugin host runs the shadows (`plugin/shadow.rs`); the store keeps the reports.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::plugins::{PluginView, load_error};
use super::{ApiError, ApiJson, ApiPath, AppState, ErrorBody, Tenant, rfc3339};
use crate::plugin::{
    CompileSlot, DEFAULT_SHADOW_ATTEMPTS, MAX_SHADOW_ATTEMPTS, PluginLoadError, PluginQuota,
    ShadowError,
};
use crate::store::{MAX_SHADOW_CASES, ShadowCase, ShadowReport, ShadowSide};

/// Which pointer an upload moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadStage {
    /// The upload becomes the version every attempt runs (the default).
    #[default]
    Current,
    /// The upload is kept beside the current version, compared with it on the next attempts
    /// (a shadow run), and sent nowhere until promoted.
    Candidate,
}

/// Query of `PUT /v1/plugins/{name}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// `candidate`: store the upload as the plugin's candidate and shadow it (the current
    /// version keeps serving); `current` (default): make it current.
    #[param(inline)]
    pub stage: Option<UploadStage>,
    /// With `stage=candidate`: how many of the next attempts of webhooks using the plugin run
    /// the candidate beside it (1–10000, default 100).
    #[param(minimum = 1, maximum = 10000, example = 100)]
    pub shadow_attempts: Option<u64>,
    /// Make the upload current even when it lacks a hook the current version has, or refuses
    /// a config of a webhook that follows the current version (`409 plugin_incompatible`
    /// otherwise).
    pub force: Option<bool>,
}

impl UploadQuery {
    /// `Some(attempts)` for a candidate upload; `None` for a normal one.
    pub fn candidate_attempts(&self) -> Result<Option<u64>, ApiError> {
        match (self.stage.unwrap_or_default(), self.shadow_attempts) {
            (UploadStage::Current, None) => Ok(None),
            (UploadStage::Current, Some(_)) => Err(ApiError::bad_request(
                "invalid_query",
                "`shadow_attempts` applies only with `stage=candidate`",
            )),
            (UploadStage::Candidate, attempts) => {
                let attempts = attempts.unwrap_or(DEFAULT_SHADOW_ATTEMPTS);
                if (1..=MAX_SHADOW_ATTEMPTS).contains(&attempts) {
                    Ok(Some(attempts))
                } else {
                    Err(ApiError::bad_request(
                        "invalid_query",
                        format!("`shadow_attempts` must be between 1 and {MAX_SHADOW_ATTEMPTS}"),
                    ))
                }
            }
        }
    }
}

/// Time totals of a shadow run: the plugin's own call time in each chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowDurations {
    /// Mean µs of the current version per compared attempt.
    current_mean_us: u64,
    /// Mean µs of the candidate per compared attempt.
    candidate_mean_us: u64,
    current_max_us: u64,
    candidate_max_us: u64,
    current_total_us: u64,
    candidate_total_us: u64,
}

/// Compared attempts that differed, by kind (an attempt may count under several).
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowDifferences {
    /// One version delivered and the other dropped.
    decision: u64,
    /// One version failed and the other did not (or with another code).
    error: u64,
    /// Both delivered, with different headers.
    headers: u64,
    /// Both delivered, with different bodies (SHA-256).
    body: u64,
    /// Both delivered, to another URL or with another method.
    url: u64,
}

/// What one version did with a compared attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowSideView {
    /// `deliver`, `drop` or `error`.
    #[schema(example = "drop")]
    decision: String,
    error_code: Option<String>,
    error_message: Option<String>,
    /// The plugin's own call time, µs.
    duration_us: u64,
    /// SHA-256 of the body it would send (when `deliver`).
    body_sha256: Option<String>,
    /// Header names that differ from the other version's (candidate side).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    changed_headers: Vec<String>,
}

impl From<ShadowSide> for ShadowSideView {
    fn from(side: ShadowSide) -> Self {
        ShadowSideView {
            decision: side.decision,
            error_code: side.error_code,
            error_message: side.error_message,
            duration_us: side.micros,
            body_sha256: side.body_sha256,
            changed_headers: side.changed_headers,
        }
    }
}

/// One compared attempt where the versions differed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowCaseView {
    at: String,
    webhook_id: String,
    delivery_id: String,
    event_id: String,
    attempt: u32,
    /// `decision`, `error`, `headers`, `body`, `url`.
    differences: Vec<String>,
    current: ShadowSideView,
    candidate: ShadowSideView,
}

impl From<ShadowCase> for ShadowCaseView {
    fn from(case: ShadowCase) -> Self {
        ShadowCaseView {
            at: rfc3339(case.at),
            webhook_id: case.webhook_id,
            delivery_id: case.delivery_id,
            event_id: case.event_id,
            attempt: case.attempt,
            differences: case.differences,
            current: case.current.into(),
            candidate: case.candidate.into(),
        }
    }
}

/// A plugin's shadow run: the candidate compared with the current version on real attempts,
/// summed over every node.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowView {
    /// The candidate's version id.
    #[schema(example = 4)]
    candidate_version: u64,
    /// The version current when the candidate was uploaded.
    #[schema(example = 3)]
    current_version: u64,
    /// `running`, `complete` (every planned attempt compared), `promoted` or `discarded`.
    #[schema(example = "running")]
    state: &'static str,
    /// Attempts planned.
    attempts: u64,
    /// Attempts compared so far.
    compared: u64,
    /// Compared attempts where both versions did the same.
    same: u64,
    /// Compared attempts where they differed.
    differing: u64,
    differences: ShadowDifferences,
    /// Attempts where the current version failed.
    current_errors: u64,
    /// Attempts where the candidate failed (trap, deadline, fuel, memory, error).
    candidate_errors: u64,
    durations: ShadowDurations,
    started_at: String,
    ended_at: Option<String>,
    /// The first differing attempts (at most 50), in order.
    cases: Vec<ShadowCaseView>,
    /// How many differing cases are kept at most.
    #[schema(example = 50)]
    cases_kept_at_most: usize,
}

fn mean(total: u64, count: u64) -> u64 {
    total.checked_div(count).unwrap_or(0)
}

impl From<ShadowReport> for ShadowView {
    fn from(report: ShadowReport) -> Self {
        let summary = report.summary;
        let counts = summary.counts;
        ShadowView {
            candidate_version: summary.candidate,
            current_version: summary.current,
            state: summary.state.as_str(),
            attempts: summary.attempts,
            compared: counts.compared,
            same: counts.same,
            differing: counts.differing,
            differences: ShadowDifferences {
                decision: counts.decision,
                error: counts.error,
                headers: counts.headers,
                body: counts.body,
                url: counts.url,
            },
            current_errors: counts.current_errors,
            candidate_errors: counts.candidate_errors,
            durations: ShadowDurations {
                current_mean_us: mean(counts.current_micros, counts.compared),
                candidate_mean_us: mean(counts.candidate_micros, counts.compared),
                current_max_us: counts.current_max_micros,
                candidate_max_us: counts.candidate_max_micros,
                current_total_us: counts.current_micros,
                candidate_total_us: counts.candidate_micros,
            },
            started_at: rfc3339(summary.started_at),
            ended_at: summary.ended_at.map(rfc3339),
            cases: report.cases.into_iter().map(ShadowCaseView::from).collect(),
            cases_kept_at_most: MAX_SHADOW_CASES,
        }
    }
}

fn no_plugin(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no uploaded plugin named `{name}`"),
    )
}

fn shadow_error(name: &str, error: ShadowError) -> ApiError {
    let message = error.to_string();
    match error {
        ShadowError::Load(PluginLoadError::NotFound) => no_plugin(name),
        ShadowError::Load(other) => load_error(other),
        ShadowError::NoCurrentVersion => ApiError::conflict("no_current_version", message),
        ShadowError::SameAsCurrent => ApiError::conflict("candidate_is_current", message),
        ShadowError::NoCandidate => ApiError::new(StatusCode::NOT_FOUND, "no_candidate", message),
        ShadowError::ResponseHook(_) => ApiError::conflict("shadow_unsupported", message),
    }
}

/// `PUT /v1/plugins/{name}?stage=candidate`: stores the candidate and starts its shadow run.
pub async fn upload_candidate(
    state: &AppState,
    tenant: &Tenant,
    name: &str,
    wasm: Vec<u8>,
    attempts: u64,
    slot: CompileSlot,
    uploaded_by: &str,
) -> Result<(StatusCode, ApiJson<ShadowView>), ApiError> {
    let report = state
        .delivery
        .plugins
        .upload_candidate(&tenant.id, name, wasm, attempts, Some(slot), uploaded_by)
        .await
        .map_err(|e| shadow_error(name, e))?;
    Ok((StatusCode::ACCEPTED, ApiJson(ShadowView::from(report))))
}

/// The plugin's latest shadow run: summary and differing cases (kept after promote or
/// discard, until the next candidate).
#[utoipa::path(
    get,
    path = "/v1/plugins/{name}/shadow",
    tag = "plugins",
    operation_id = "get_plugin_shadow",
    params(("name" = String, Path, description = "The plugin's name within the tenant")),
    responses(
        (status = 200, description = "The shadow run", body = ShadowView),
        (status = 404, description = "No uploaded plugin of that name (`not_found`), or it never had a candidate (`no_shadow`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn get_shadow(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<ShadowView>, ApiError> {
    let plugins = &state.delivery.plugins;
    let report = plugins
        .shadow_report(&tenant.id, &name)
        .await
        .map_err(|e| shadow_error(&name, e))?;
    match report {
        Some(report) => Ok(ApiJson(ShadowView::from(report))),
        None if plugins.info(&tenant.id, &name).is_none() => Err(no_plugin(&name)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_shadow",
            format!(
                "plugin `{name}` has had no candidate (PUT /v1/plugins/{name}?stage=candidate)"
            ),
        )),
    }
}

/// Makes the candidate the current version on every node (no restart; attempts already
/// running finish on the version they started with) and ends its shadow run as `promoted`.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/promote",
    tag = "plugins",
    operation_id = "promote_plugin",
    params(("name" = String, Path, description = "The plugin's name within the tenant"), super::plugins::ForceQuery),
    responses(
        (status = 200, description = "The candidate is current", body = PluginView),
        (status = 409, description = "The candidate lacks a hook the current version runs for webhooks following it, or refuses one of their configs (`plugin_incompatible`, naming them; `?force=true` overrides)", body = ErrorBody),
        (status = 404, description = "No uploaded plugin of that name (`not_found`), or it has no candidate (`no_candidate`)", body = ErrorBody),
        (status = 429, description = "The candidate is larger than the tenant's `plugin_bytes` quota allows (`quota_exceeded`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable, or the compiler is busy (`compile_busy`, with Retry-After)", body = ErrorBody),
    ),
)]
pub async fn promote(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
    super::ApiQuery(query): super::ApiQuery<super::plugins::ForceQuery>,
) -> Result<ApiJson<PluginView>, ApiError> {
    let quota = PluginQuota {
        plugins: tenant.config.quotas.plugins,
        bytes: tenant.config.quotas.plugin_bytes,
    };
    let attached = super::plugins::attached_to_current(&state, &tenant, &name, query.force).await?;
    let info = state
        .delivery
        .plugins
        .promote(&tenant.id, &name, Some(quota), &attached)
        .await
        .map_err(|e| shadow_error(&name, e))?;
    Ok(ApiJson(PluginView::from(info)))
}

/// Drops the candidate (it stays in the version history) and ends its shadow run as
/// `discarded`; answers the final report.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/discard",
    tag = "plugins",
    operation_id = "discard_plugin_candidate",
    params(("name" = String, Path, description = "The plugin's name within the tenant")),
    responses(
        (status = 200, description = "The candidate is discarded: the final report", body = ShadowView),
        (status = 404, description = "No uploaded plugin of that name (`not_found`), or it has no candidate (`no_candidate`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn discard(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<ShadowView>, ApiError> {
    let report = state
        .delivery
        .plugins
        .discard(&tenant.id, &name)
        .await
        .map_err(|e| shadow_error(&name, e))?;
    Ok(ApiJson(ShadowView::from(report)))
}
