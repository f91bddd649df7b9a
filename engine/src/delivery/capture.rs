//! What the attempt log keeps of a request as it was sent (after plugins, signed): URL,
//! method, headers and body, so a tenant can see exactly what its receiver got.
//!
//! - The body is kept up to `[delivery] max_request_capture_bytes` (default 64 KiB), cut at a
//!   character boundary and marked `body_truncated`; a body that is not UTF-8 is kept as
//!   base64 of its first bytes.
//! - Secrets are never kept: signatures and credentials appear as header names only (value
//!   `None`): `webhook-signature`, `authorization`, `cookie`…, and any header whose name says
//!   it carries one (`signature`, `secret`, `token`, `auth`, `key`, `hmac`, `password`), which
//!   covers what sign plugins add (`x-hub-signature-256`, `x-shopify-hmac-sha256`, …).

use base64::Engine as _;

use crate::outbound::OutboundRequest;
use crate::secrets::is_secret_header;
use crate::store::{SentHeader, SentRequest};

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What is kept of `request`; `max_body_bytes` 0 keeps no body.
pub fn capture(request: &OutboundRequest, max_body_bytes: usize) -> SentRequest {
    let mut headers: Vec<SentHeader> = request
        .headers
        .iter()
        .map(|(name, value)| SentHeader {
            name: name.clone(),
            value: (!is_secret_header(name)).then(|| value.clone()),
        })
        .collect();
    headers.push(SentHeader {
        name: "content-type".to_string(),
        value: Some(request.content_type.clone()),
    });
    let bytes = &request.body;
    let (body, body_base64, kept) = match std::str::from_utf8(bytes) {
        Ok(text) => {
            let kept = prefix(text, max_body_bytes);
            (kept.to_string(), false, kept.len())
        }
        Err(_) => {
            let kept = &bytes[..bytes.len().min(max_body_bytes)];
            (
                base64::engine::general_purpose::STANDARD.encode(kept),
                true,
                kept.len(),
            )
        }
    };
    SentRequest {
        url: request.url.clone(),
        method: request.method.clone(),
        headers,
        body,
        body_base64,
        body_bytes: bytes.len() as u64,
        body_truncated: kept < bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &[u8]) -> OutboundRequest {
        OutboundRequest {
            url: "https://example.com/hook".into(),
            method: "POST".into(),
            content_type: "application/json".into(),
            headers: vec![
                ("x-team".into(), "blue".into()),
                ("Authorization".into(), "Bearer s3cret".into()),
                ("x-hub-signature-256".into(), "sha256=abc".into()),
                ("webhook-id".into(), "dlv_1".into()),
                ("webhook-signature".into(), "v1,xyz".into()),
            ],
            body: bytes::Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn secrets_and_signatures_keep_only_their_names() {
        let sent = capture(&request(b"{}"), 1024);
        let shown: Vec<(&str, Option<&str>)> = sent
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                ("x-team", Some("blue")),
                ("Authorization", None),
                ("x-hub-signature-256", None),
                ("webhook-id", Some("dlv_1")),
                ("webhook-signature", None),
                ("content-type", Some("application/json")),
            ]
        );
        assert!(!serde_json::to_string(&sent).unwrap().contains("s3cret"));
    }

    #[test]
    fn bodies_are_cut_at_the_limit_on_a_character_boundary_and_binary_is_base64() {
        let sent = capture(&request("{\"a\":\"ééé\"}".as_bytes()), 9);
        assert_eq!(
            (sent.body.as_str(), sent.body_truncated),
            ("{\"a\":\"é", true)
        );
        assert_eq!(sent.body_bytes, 14);
        let whole = capture(&request(b"{}"), 2);
        assert_eq!((whole.body.as_str(), whole.body_truncated), ("{}", false));
        let binary = capture(&request(&[0xff, 0x00, 0x01]), 2);
        assert!(binary.body_base64 && binary.body_truncated);
        assert_eq!(binary.body, "/wA=");
        let none = capture(&request(b"{}"), 0);
        assert_eq!((none.body.as_str(), none.body_truncated), ("", true));
    }
}
