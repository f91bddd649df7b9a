//! The unauthenticated operations endpoints `/metrics` (Prometheus text) and `/openapi.json`,
//! and what the OpenAPI document says about whole groups of routes: the bearer scheme and the
//! 401 answer of every `/v1` operation (the `Tenant` extractor guards all of them). Everything
//! else in the document comes from the handlers' own `#[utoipa::path]` and types.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

use super::{AppState, ErrorBody};

/// The name of the bearer scheme in `components.securitySchemes`.
pub const BEARER_SCHEME: &str = "bearer";

/// Prometheus text exposition format, version 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "hookd",
        description = "Webhook delivery engine. Every `/v1` route takes a tenant API key as \
            `Authorization: Bearer <key>`; every error is `{\"code\", \"message\"}` (`ErrorBody`)."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "events", description = "Ingest and read events"),
        (name = "webhooks", description = "Webhooks: CRUD, test sends, secret rotation, recovery"),
        (name = "deliveries", description = "The delivery log and manual retries"),
        (name = "plugins", description = "WebAssembly plugins: upload, inspect, delete, simulate"),
        (name = "operations", description = "Unauthenticated health, metrics and this document"),
        (name = "console", description = "The web console: its page, assets and session cookie"),
    )
)]
struct ApiDoc;

/// The document the routes are added to: info, tags and the error schema.
pub fn document_base() -> OpenApi {
    ApiDoc::openapi()
}

/// Adds the bearer scheme, and to every `/v1` operation its security requirement, the 401
/// answer of the `Tenant` extractor and the 400 of an unknown query parameter.
pub fn finish_document(mut document: OpenApi) -> OpenApi {
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("A tenant API key (see `hookd key`)"))
                .build(),
        ),
    );
    for (path, item) in document.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation.security = Some(vec![SecurityRequirement::new(
                BEARER_SCHEME,
                Vec::<String>::new(),
            )]);
            let unauthorized = ResponseBuilder::new()
                .description("No, a malformed or an unknown API key (`unauthorized`)")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build();
            operation
                .responses
                .responses
                .insert("401".to_string(), unauthorized.into());
            add_unknown_parameter_answer(operation);
            // Every tenant route counts against the tenant's request rate (admin routes do
            // not); routes with quotas describe their own 429.
            if !path.starts_with("/v1/admin/") && !operation.responses.responses.contains_key("429")
            {
                let limited = ResponseBuilder::new()
                    .description(
                        "Over the tenant's `api_requests_per_sec` (`rate_limited`); retry after \
                         the `Retry-After` header's seconds",
                    )
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build();
                operation
                    .responses
                    .responses
                    .insert("429".to_string(), limited.into());
            }
            // A 429 (`rate_limited` on every tenant route) and a 503 (`store_unavailable`,
            // `compile_busy`…) may carry `Retry-After`: say so on each, for generated clients.
            for status in ["429", "503"] {
                if let Some(RefOr::T(answer)) = operation.responses.responses.get_mut(status) {
                    answer
                        .headers
                        .entry("Retry-After".to_string())
                        .or_insert_with(|| RefOr::T(retry_after_header()));
                }
            }
        }
    }
    document
}

/// `Retry-After`: whole seconds to wait before trying again.
fn retry_after_header() -> utoipa::openapi::Header {
    utoipa::openapi::HeaderBuilder::new()
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::Integer),
        ))
        .description(Some("Seconds to wait before trying again (when present)"))
        .build()
}

/// Every `/v1` operation refuses undocumented query parameters (`api/query_rules.rs`): its
/// 400 answer says so, added to the handler's own 400 when it has one.
fn add_unknown_parameter_answer(operation: &mut utoipa::openapi::path::Operation) {
    const UNKNOWN: &str = "an undocumented query parameter (`unknown_parameter`, naming it)";
    let description = match operation.responses.responses.get("400") {
        Some(RefOr::T(existing)) => format!("{}; or {UNKNOWN}", existing.description),
        _ => format!("A request with {UNKNOWN}"),
    };
    let answer = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    operation
        .responses
        .responses
        .insert("400".to_string(), answer.into());
}

/// The serialised document, made once per router.
#[derive(Clone, Debug)]
pub struct OpenApiJson(Bytes);

impl OpenApiJson {
    pub fn new(document: OpenApi) -> Self {
        OpenApiJson(Bytes::from(
            serde_json::to_vec(&document).expect("the OpenAPI document serialises"),
        ))
    }
}

/// This API's OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses(
        (status = 200, description = "This document", body = serde_json::Value,
            content_type = "application/json"),
    ),
)]
pub async fn openapi_json(Extension(document): Extension<OpenApiJson>) -> Response {
    ([(CONTENT_TYPE, "application/json")], document.0).into_response()
}

/// Counters, gauges and histograms of this engine in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String,
            content_type = "text/plain; version=0.0.4"),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}
