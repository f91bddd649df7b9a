//! Console sessions: what the browser holds instead of an API key.
//!
//! Signing in exchanges a tenant (or admin) API key for a session cookie: `HttpOnly` (page
//! scripts cannot read it, so an injected script cannot steal a credential), `SameSite=Strict`
//! (no other site's page can make the browser send it), `Path=/`, `Max-Age` of
//! [`SESSION_LIFETIME`], and `Secure` unless the console is reached on a loopback host. The
//! cookie authenticates only requests that also carry the header [`CONSOLE_HEADER`], which a
//! cross-site form or image cannot set (defence in depth beside `SameSite`).
//!
//! The session is stateless: the cookie value is sealed (XChaCha20-Poly1305, key derived from
//! the `[security]` secret key) and holds the role, the tenant, the SHA-256 of the API key it
//! was opened with and its expiry. Every request re-checks that hash against the running
//! config, so removing a key from config ends its sessions at once; several hookd nodes that
//! share the secret key accept each other's sessions; a new secret key signs everyone out.

use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, HOST};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::config::{Config, hash_api_key};

/// The cookie holding the sealed session.
pub const COOKIE_NAME: &str = "hookd_session";
/// The header every console request carries; without it the cookie is ignored.
pub const CONSOLE_HEADER: &str = "x-hookd-console";
/// How long a session lasts from sign-in (not sliding: sign in again after it).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(3600);
/// What the session key is derived for (from the secret key).
const KEY_PURPOSE: &str = "hookd console session key v1";
const AAD: &[u8] = b"hookd console session v1";
const NONCE_BYTES: usize = 24;

/// Who a session (or a key) signs in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Tenant,
    Admin,
}

/// What a sealed session holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub role: Role,
    /// The tenant id (tenant sessions only).
    pub tenant: Option<String>,
    /// Hex SHA-256 of the API key the session was opened with.
    key_hash: String,
    /// Expiry, ms since the epoch.
    pub expires_at: u64,
}

impl Claims {
    /// Still valid at `now_ms` under `config`: not expired, and its key still grants the role.
    pub fn is_valid(&self, config: &Config, now_ms: u64) -> bool {
        if now_ms >= self.expires_at {
            return false;
        }
        let Some(hash) = hex::decode(&self.key_hash)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return false;
        };
        match self.role {
            Role::Admin => config.is_admin_key_hash(&hash),
            Role::Tenant => config
                .tenant_for_key_hash(&hash)
                .is_some_and(|t| Some(&t.id) == self.tenant.as_ref()),
        }
    }
}

/// Seals and opens session cookies.
#[derive(Clone)]
pub struct Sessions {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions sealed with a key derived from `config`'s secret key; `None` without one
    /// (the engine does not start without it anyway).
    pub fn from_config(config: &Config) -> Option<Self> {
        let key = config.security.derived_key(KEY_PURPOSE)?;
        Some(Sessions {
            cipher: XChaCha20Poly1305::new((&key).into()),
        })
    }

    /// The claims for signing in with `api_key` at `now_ms`, or `None` for an unknown key.
    pub fn sign_in(config: &Config, api_key: &str, now_ms: u64) -> Option<Claims> {
        let hash = hash_api_key(api_key);
        let (role, tenant) = if config.is_admin_key_hash(&hash) {
            (Role::Admin, None)
        } else {
            let tenant = config.tenant_for_key_hash(&hash)?;
            (Role::Tenant, Some(tenant.id.clone()))
        };
        Some(Claims {
            role,
            tenant,
            key_hash: hex::encode(hash),
            expires_at: now_ms + SESSION_LIFETIME.as_millis() as u64,
        })
    }

    pub fn seal(&self, claims: &Claims) -> String {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let plain = serde_json::to_vec(claims).expect("claims serialise");
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: AAD,
                },
            )
            .expect("sealing in memory does not fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The claims of a cookie value this engine (or one sharing its secret key) sealed.
    pub fn open(&self, text: &str) -> Option<Claims> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() <= NONCE_BYTES {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: AAD,
                },
            )
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// The session of a console request: the cookie, only when the console header is there too.
    /// `None` when either is missing; `Some(None)` for a cookie that does not open.
    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Option<Claims>> {
        headers.get(CONSOLE_HEADER)?;
        let value = cookie_value(headers, COOKIE_NAME)?;
        Some(self.open(&value))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether the request reached a loopback host (`localhost`, `127.x`, `[::1]`), where the
/// browser may be on plain HTTP and a `Secure` cookie would be dropped.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The `Set-Cookie` value that stores `sealed` for [`SESSION_LIFETIME`].
pub fn set_cookie(sealed: &str, request: &HeaderMap) -> String {
    let secure = if loopback_host(request) {
        ""
    } else {
        "; Secure"
    };
    format!(
        "{COOKIE_NAME}={sealed}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        SESSION_LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(request: &HeaderMap) -> String {
    let secure = if loopback_host(request) {
        ""
    } else {
        "; Secure"
    };
    format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config() -> (Config, String, String) {
        let (tenant_key, tenant_hash) = crate::config::generate_api_key();
        let (admin_key, admin_hash) = crate::config::generate_api_key();
        let text = format!(
            "admin_api_keys = [\"{admin_hash}\"]\n[security]\nsecret_key = \"{}\"\n[[tenants]]\nid = \"acme\"\napi_keys = [\"{tenant_hash}\"]\n",
            crate::secrets::generate_key()
        );
        let config = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        (config, tenant_key, admin_key)
    }

    #[test]
    fn a_sealed_session_opens_only_unaltered_and_only_while_its_key_is_configured() {
        let (config, tenant_key, admin_key) = config();
        let sessions = Sessions::from_config(&config).unwrap();
        let claims = Sessions::sign_in(&config, &tenant_key, 1_000).unwrap();
        assert_eq!(
            (claims.role, claims.tenant.as_deref()),
            (Role::Tenant, Some("acme"))
        );
        let sealed = sessions.seal(&claims);
        assert!(!sealed.contains(&tenant_key) && !sealed.contains("acme"));
        let opened = sessions.open(&sealed).unwrap();
        assert_eq!(opened, claims);
        assert!(opened.is_valid(&config, 2_000));
        assert!(!opened.is_valid(&config, claims.expires_at));

        // One changed character does not open.
        let mut altered = sealed.clone().into_bytes();
        let i = altered.len() / 2;
        altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
        assert!(
            sessions
                .open(std::str::from_utf8(&altered).unwrap())
                .is_none()
        );

        // Another secret key does not open it.
        let (other, _, _) = self::config();
        assert!(
            Sessions::from_config(&other)
                .unwrap()
                .open(&sealed)
                .is_none()
        );
        // Removing the key from config ends the session.
        assert!(!opened.is_valid(&other, 2_000));

        let admin = Sessions::sign_in(&config, &admin_key, 1_000).unwrap();
        assert_eq!((admin.role, admin.tenant.as_deref()), (Role::Admin, None));
        assert!(admin.is_valid(&config, 2_000));
        assert!(Sessions::sign_in(&config, "wrong", 1_000).is_none());
    }

    #[test]
    fn the_cookie_needs_the_console_header_and_is_secure_off_loopback() {
        let (config, tenant_key, _) = config();
        let sessions = Sessions::from_config(&config).unwrap();
        let sealed = sessions.seal(&Sessions::sign_in(&config, &tenant_key, 0).unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE_NAME}={sealed}")).unwrap(),
        );
        assert!(sessions.from_headers(&headers).is_none());
        headers.insert(CONSOLE_HEADER, HeaderValue::from_static("1"));
        assert!(sessions.from_headers(&headers).unwrap().is_some());

        headers.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        let cookie = set_cookie(&sealed, &headers);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"), "{cookie}");
        headers.insert(HOST, HeaderValue::from_static("hooks.example.com"));
        assert!(set_cookie(&sealed, &headers).ends_with("; Secure"));
        assert!(clear_cookie(&headers).contains("Max-Age=0"));
        headers.insert(HOST, HeaderValue::from_static("[::1]:80"));
        assert!(!clear_cookie(&headers).contains("Secure"));
    }
}
