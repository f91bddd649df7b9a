//! The output policy: what a transform patch or sign hook may change in the outbound request,
//! checked before anything is applied (a patch is applied whole or refused whole).
//!
//! Pure functions over [`OutboundRequest`], with no wasmtime in sight, so every rule has a unit
//! test beside it. The url check is syntax only (http/https, a host, no credentials): the
//! engine re-runs its SSRF guard on any url a plugin changed, this module does not resolve
//! names.

use bytes::Bytes;

use super::bindings::exports::hookd::plugin::transform::Patch;

/// Longest header name a plugin may set.
pub const MAX_HEADER_NAME_BYTES: usize = 256;
/// Longest header value a plugin may set.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 << 10;
/// Most headers the outbound request may carry after plugins ran.
pub const MAX_HEADERS: usize = 100;
/// Longest url a plugin may set.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest content type a plugin may set.
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// Headers no plugin may set or remove: framing and hop-by-hop headers the HTTP client owns.
/// `webhook-*` (hookd's own signature headers) are refused by prefix, and `content-type` is
/// changed through the patch's `content-type` field, never as a header.
pub const PROTECTED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Methods a plugin may choose.
const ALLOWED_METHODS: &[&str] = &["POST", "PUT", "PATCH"];

/// The request being built (shared with the rest of the engine: `crate::outbound`). Here it
/// is the request as the plugin chain leaves it, before hookd adds its `webhook-*` signature
/// headers.
pub use crate::outbound::OutboundRequest;

/// Checks a header name a plugin wants to set or remove.
pub fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty header name".into());
    }
    if name.len() > MAX_HEADER_NAME_BYTES {
        return Err(format!(
            "header name longer than {MAX_HEADER_NAME_BYTES} bytes"
        ));
    }
    if let Some(bad) = name.bytes().find(|b| !is_token_byte(*b)) {
        return Err(format!(
            "header name {:?} contains an invalid character (byte 0x{bad:02x})",
            truncate(name, 64)
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("webhook-") {
        return Err(format!(
            "header {lower:?} is reserved for hookd's signature"
        ));
    }
    if PROTECTED_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "header {lower:?} cannot be set or removed by a plugin"
        ));
    }
    Ok(())
}

/// Checks a header value a plugin wants to set: no CR, LF, NUL or other control character
/// except horizontal tab.
pub fn check_header_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(format!(
            "value of header {:?} is longer than {MAX_HEADER_VALUE_BYTES} bytes",
            truncate(name, 64)
        ));
    }
    if let Some(bad) = value
        .bytes()
        .find(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return Err(format!(
            "value of header {:?} contains a control character (byte 0x{bad:02x})",
            truncate(name, 64)
        ));
    }
    Ok(())
}

/// Checks a method a plugin chose and returns it upper-cased.
pub fn check_method(method: &str) -> Result<String, String> {
    let upper = method.to_ascii_uppercase();
    if ALLOWED_METHODS.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(format!(
            "method {:?} is not allowed (only POST, PUT, PATCH)",
            truncate(method, 32)
        ))
    }
}

/// Syntax-checks a url a plugin chose: parses, http or https, has a host, no credentials.
/// The engine must still run its SSRF guard on it.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("url longer than {MAX_URL_BYTES} bytes"));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("url does not parse: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "url scheme {:?} is not http or https",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("url has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not contain credentials".into());
    }
    Ok(())
}

/// Checks a content type a plugin chose.
pub fn check_content_type(content_type: &str) -> Result<(), String> {
    if content_type.trim().is_empty() {
        return Err("empty content type".into());
    }
    if content_type.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(format!(
            "content type longer than {MAX_CONTENT_TYPE_BYTES} bytes"
        ));
    }
    check_header_value("content-type", content_type)
}

/// What applying a transform patch decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchEffect {
    /// The request was updated (or left alone); continue the chain.
    Continue,
    /// The transform cancelled the delivery.
    Cancel,
}

/// Checks every part of `patch` and, only if all pass, applies it to `request`.
///
/// A cancelling patch is honoured without checking the rest: nothing of it will be sent.
pub fn apply_patch(
    request: &mut OutboundRequest,
    patch: Patch,
    max_payload_bytes: usize,
) -> Result<PatchEffect, String> {
    if patch.cancel {
        return Ok(PatchEffect::Cancel);
    }
    if let Some(payload) = &patch.payload
        && payload.len() > max_payload_bytes
    {
        return Err(format!(
            "payload of {} bytes exceeds the {max_payload_bytes} bytes allowed",
            payload.len()
        ));
    }
    if let Some(content_type) = &patch.content_type {
        check_content_type(content_type)?;
    }
    let method = patch.method.as_deref().map(check_method).transpose()?;
    if let Some(url) = &patch.url {
        check_url(url)?;
    }
    for name in &patch.remove_headers {
        check_header_name(name)?;
    }
    for (name, value) in &patch.set_headers {
        check_header_name(name)?;
        check_header_value(name, value)?;
    }
    let mut headers = request.headers.clone();
    headers.retain(|(existing, _)| {
        !patch
            .remove_headers
            .iter()
            .any(|r| r.eq_ignore_ascii_case(existing))
    });
    set_headers(&mut headers, patch.set_headers)?;

    request.headers = headers;
    if let Some(payload) = patch.payload {
        request.body = Bytes::from(payload);
    }
    if let Some(content_type) = patch.content_type {
        request.content_type = content_type;
    }
    if let Some(method) = method {
        request.method = method;
    }
    if let Some(url) = patch.url {
        request.url = url;
    }
    Ok(PatchEffect::Continue)
}

/// Checks the headers a sign hook returned and, only if all pass, sets them on `request`
/// (replacing any header of the same name).
pub fn apply_sign_headers(
    request: &mut OutboundRequest,
    new_headers: Vec<(String, String)>,
) -> Result<(), String> {
    for (name, value) in &new_headers {
        check_header_name(name)?;
        check_header_value(name, value)?;
    }
    let mut headers = request.headers.clone();
    set_headers(&mut headers, new_headers)?;
    request.headers = headers;
    Ok(())
}

/// Sets each (name, value), replacing every earlier header of that name (case-insensitive).
fn set_headers(
    headers: &mut Vec<(String, String)>,
    new_headers: Vec<(String, String)>,
) -> Result<(), String> {
    for (name, value) in new_headers {
        headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(&name));
        headers.push((name, value));
    }
    if headers.len() > MAX_HEADERS {
        return Err(format!("more than {MAX_HEADERS} headers"));
    }
    Ok(())
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `s` cut to at most `max` bytes on a char boundary, for error messages.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> OutboundRequest {
        OutboundRequest {
            url: "https://example.com/hook".into(),
            method: "POST".into(),
            content_type: "application/json".into(),
            headers: vec![
                ("x-static".into(), "1".into()),
                ("X-Other".into(), "2".into()),
            ],
            body: Bytes::from_static(b"{}"),
        }
    }

    fn patch() -> Patch {
        Patch {
            payload: None,
            content_type: None,
            url: None,
            method: None,
            set_headers: vec![],
            remove_headers: vec![],
            cancel: false,
        }
    }

    #[test]
    fn header_names_must_be_tokens_and_not_protected() {
        assert!(check_header_name("x-partner-signature").is_ok());
        assert!(check_header_name("X-Upper_Case.1~").is_ok());
        for bad in ["", "a b", "a:b", "a\r\nb", "é", "a\0"] {
            assert!(check_header_name(bad).is_err(), "{bad:?} accepted");
        }
        for protected in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "connection",
            "upgrade",
            "te",
            "webhook-signature",
            "Webhook-Id",
            "webhook-anything",
            "content-type",
        ] {
            assert!(
                check_header_name(protected).is_err(),
                "{protected} accepted"
            );
        }
        assert!(check_header_name(&"a".repeat(MAX_HEADER_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn header_values_refuse_cr_lf_nul_and_controls() {
        assert!(check_header_value("x", "plain value\twith tab").is_ok());
        assert!(check_header_value("x", "").is_ok());
        for bad in ["a\rb", "a\nb", "a\0b", "a\x1bb", "a\x7fb"] {
            assert!(check_header_value("x", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_header_value("x", &"v".repeat(MAX_HEADER_VALUE_BYTES + 1)).is_err());
    }

    #[test]
    fn only_post_put_patch_methods() {
        assert_eq!(check_method("put").as_deref(), Ok("PUT"));
        assert_eq!(check_method("PATCH").as_deref(), Ok("PATCH"));
        for bad in ["GET", "DELETE", "CONNECT", "", "POST\r\n"] {
            assert!(check_method(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn urls_are_syntax_checked_only() {
        assert!(check_url("https://example.com/a?b=c").is_ok());
        // Private addresses pass here: the engine's SSRF guard decides about them.
        assert!(check_url("http://10.0.0.1:8080/").is_ok());
        for bad in [
            "",
            "not a url",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "http://",
            "javascript:alert(1)",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_empty_patch_changes_nothing_and_keeps_the_body_bytes() {
        let mut req = request();
        let body_ptr = req.body.as_ptr();
        assert_eq!(
            apply_patch(&mut req, patch(), 1024),
            Ok(PatchEffect::Continue)
        );
        assert_eq!(req, request());
        assert_eq!(req.body.as_ptr(), body_ptr, "unchanged body was copied");
    }

    #[test]
    fn a_patch_sets_replaces_and_removes_headers_case_insensitively() {
        let mut req = request();
        let mut p = patch();
        p.set_headers = vec![
            ("X-STATIC".into(), "new".into()),
            ("x-added".into(), "a".into()),
        ];
        p.remove_headers = vec!["x-other".into()];
        p.payload = Some(b"[1]".to_vec());
        p.content_type = Some("text/plain".into());
        p.method = Some("put".into());
        p.url = Some("https://example.org/other".into());
        assert_eq!(apply_patch(&mut req, p, 1024), Ok(PatchEffect::Continue));
        assert_eq!(
            req.headers,
            vec![
                ("X-STATIC".to_string(), "new".to_string()),
                ("x-added".into(), "a".into())
            ]
        );
        assert_eq!(&req.body[..], b"[1]");
        assert_eq!(req.content_type, "text/plain");
        assert_eq!(req.method, "PUT");
        assert_eq!(req.url, "https://example.org/other");
    }

    #[test]
    fn a_refused_part_refuses_the_whole_patch() {
        type Case = Box<dyn Fn(&mut Patch)>;
        let cases: Vec<Case> = vec![
            Box::new(|p| {
                p.set_headers
                    .push(("x-evil".into(), "a\r\nInjected: 1".into()))
            }),
            Box::new(|p| p.set_headers.push(("host".into(), "evil".into()))),
            Box::new(|p| p.remove_headers.push("content-length".into())),
            Box::new(|p| {
                p.set_headers
                    .push(("webhook-signature".into(), "v1,x".into()))
            }),
            Box::new(|p| p.method = Some("GET".into())),
            Box::new(|p| p.url = Some("gopher://example.com".into())),
            Box::new(|p| p.payload = Some(vec![0; 1025])),
            Box::new(|p| p.content_type = Some("a\nb".into())),
            Box::new(|p| {
                p.set_headers = (0..MAX_HEADERS)
                    .map(|i| (format!("x-{i}"), "v".into()))
                    .collect()
            }),
        ];
        for (i, case) in cases.iter().enumerate() {
            let mut req = request();
            let mut p = patch();
            p.payload = Some(b"changed".to_vec());
            p.set_headers.push(("x-fine".into(), "ok".into()));
            case(&mut p);
            assert!(apply_patch(&mut req, p, 1024).is_err(), "case {i} accepted");
            assert_eq!(req, request(), "case {i} applied part of a refused patch");
        }
    }

    #[test]
    fn cancel_wins_over_everything_else() {
        let mut req = request();
        let mut p = patch();
        p.cancel = true;
        p.method = Some("GET".into());
        assert_eq!(apply_patch(&mut req, p, 1024), Ok(PatchEffect::Cancel));
    }

    #[test]
    fn sign_headers_follow_the_same_rules() {
        let mut req = request();
        assert!(
            apply_sign_headers(
                &mut req,
                vec![("x-hub-signature-256".into(), "sha256=ab".into())]
            )
            .is_ok()
        );
        assert_eq!(
            req.headers.last().map(|h| h.0.as_str()),
            Some("x-hub-signature-256")
        );
        let before = req.clone();
        assert!(
            apply_sign_headers(&mut req, vec![("webhook-signature".into(), "x".into())]).is_err()
        );
        assert!(apply_sign_headers(&mut req, vec![("x-sig".into(), "a\nb".into())]).is_err());
        assert_eq!(req, before);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
