//! The web console: `GET /console` and its assets (plain HTML, CSS and ES modules under
//! `engine/console/`, embedded in the binary with rust-embed, so building hookd needs no Node
//! toolchain), and sign-in, who-am-I and sign-out at `/console/session` (`session.rs`).
//!
//! Every console answer carries a strict Content-Security-Policy: scripts, styles, images and
//! API calls from this origin only, no inline script or style, no `eval`, no framing. The
//! console builds every piece of page from API data with `textContent`/attributes, never as
//! HTML, so a payload like `<img src=x onerror=alert(1)>` shows as text.

pub mod session;

use axum::extract::State;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiJson, ApiPath, AppState, ErrorBody, rfc3339};
use crate::ids::now_ms;
pub use session::{CONSOLE_HEADER, Role, Sessions};

/// The console's files, compiled into the binary (also in debug builds: `debug-embed`).
#[derive(RustEmbed)]
#[folder = "console/"]
struct Assets;

/// The policy of every console answer. `style-src 'self'` without `'unsafe-inline'`: the
/// console sets no inline styles (charts use SVG attributes, not `style=`).
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The headers every console answer carries.
fn security_headers(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY_VALUE,
    );
    set(headers, X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, X_FRAME_OPTIONS, "DENY");
    set(headers, REFERRER_POLICY, "no-referrer");
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

fn asset_response(name: &str) -> Option<Response> {
    let file = Assets::get(name)?;
    let mut response = file.data.into_owned().into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
    // Revalidate every time: assets change with the binary and are small.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(headers);
    Some(response)
}

/// The console page (sign in with an API key; no key ever goes into a URL).
#[utoipa::path(
    get,
    path = "/console",
    tag = "console",
    operation_id = "console_page",
    responses((status = 200, description = "The console's HTML page", body = String,
        content_type = "text/html")),
)]
pub async fn page() -> Response {
    asset_response("index.html").expect("index.html is embedded")
}

/// One of the console's scripts, styles or images.
#[utoipa::path(
    get,
    path = "/console/assets/{name}",
    tag = "console",
    operation_id = "console_asset",
    params(("name" = String, Path, description = "File name, e.g. `app.js`")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "text/javascript"),
        (status = 404, description = "No such file", body = ErrorBody),
    ),
)]
pub async fn asset(ApiPath(name): ApiPath<String>) -> Response {
    // Flat names only: the embedded folder has no subfolders to reach.
    if name.contains('/') || name == "index.html" {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such console file")
            .into_response();
    }
    asset_response(&name).unwrap_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such console file").into_response()
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// A tenant API key, or an admin key for the admin view.
    key: String,
}

/// The console's session: who is signed in, if anyone.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    signed_in: bool,
    /// `tenant` or `admin` (signed in only).
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    /// The tenant (tenant sessions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// When the session ends (signed in only).
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

impl SessionView {
    fn nobody() -> Self {
        SessionView {
            signed_in: false,
            role: None,
            tenant: None,
            expires_at: None,
        }
    }
}

impl From<&session::Claims> for SessionView {
    fn from(claims: &session::Claims) -> Self {
        SessionView {
            signed_in: true,
            role: Some(claims.role),
            tenant: claims.tenant.clone(),
            expires_at: Some(rfc3339(claims.expires_at)),
        }
    }
}

fn no_console_header() -> ApiError {
    ApiError::bad_request(
        "missing_console_header",
        format!("console requests carry the `{CONSOLE_HEADER}` header"),
    )
}

/// The largest sign-in body: a key is well under 1 KiB, and the route takes requests before
/// any key is checked.
pub const SIGN_IN_BODY_BYTES: usize = 8 * 1024;

/// Exchanges an API key for a session cookie (`HttpOnly`, `SameSite=Strict`, one hour).
#[utoipa::path(
    post,
    path = "/console/session",
    tag = "console",
    operation_id = "console_sign_in",
    params(("x-hookd-console" = String, Header, description = "Any value; required")),
    request_body = SignIn,
    responses(
        (status = 200, description = "Signed in; the session cookie is set", body = SessionView,
            headers(("set-cookie" = String))),
        (status = 400, description = "Malformed JSON or no console header", body = ErrorBody),
        (status = 401, description = "The key is not valid", body = ErrorBody),
        (status = 413, description = "The body is larger than allowed", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "No `key`", body = ErrorBody),
    ),
)]
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    if !headers.contains_key(CONSOLE_HEADER) {
        return Err(no_console_header());
    }
    let config = state.config.current();
    let claims = Sessions::sign_in(&config, body.key.trim(), now_ms())
        .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))?;
    tracing::info!(role = ?claims.role, tenant = ?claims.tenant, "console sign-in");
    let cookie = session::set_cookie(&state.sessions.seal(&claims), &headers);
    let mut response = ApiJson(SessionView::from(&claims)).into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("the cookie is a header value"),
    );
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Who the console's cookie (with the console header) signs in as: `signed_in: false` when
/// there is no cookie, or it has expired or its key was removed.
#[utoipa::path(
    get,
    path = "/console/session",
    tag = "console",
    operation_id = "console_session",
    responses((status = 200, description = "The current session, if any", body = SessionView)),
)]
pub async fn current(State(state): State<AppState>, headers: HeaderMap) -> ApiJson<SessionView> {
    let config = state.config.current();
    match state.sessions.from_headers(&headers) {
        Some(Some(claims)) if claims.is_valid(&config, now_ms()) => {
            ApiJson(SessionView::from(&claims))
        }
        _ => ApiJson(SessionView::nobody()),
    }
}

/// Signs out: the cookie is removed.
#[utoipa::path(
    delete,
    path = "/console/session",
    tag = "console",
    operation_id = "console_sign_out",
    responses((status = 204, description = "Signed out; the cookie is cleared")),
)]
pub async fn sign_out(headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&session::clear_cookie(&headers)).expect("a header value"),
    );
    response
}
