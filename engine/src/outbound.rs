//! The request hookd sends to a webhook: one type through every stage of an attempt.
//!
//! `delivery::attempt` builds it from the webhook (URL, static headers, the rendered Standard
//! Webhooks body), the plugin chain changes it (`plugin::policy` checks every change before
//! applying it), `signing` adds the `webhook-*` headers on the final bytes, and
//! `delivery::client` sends it. Plain data (no parsed URL, no header map) so that the plugin host
//! can hand it to guests and police it without knowing HTTP types; the client parses it once,
//! at send time.

use bytes::Bytes;

/// An outbound request at any stage: before plugins, after them, or signed.
///
/// If no transform replaced the payload, `body` is the very `Bytes` the attempt rendered (not
/// a copy). A `url` different from the webhook's must pass the engine's SSRF checks again
/// before it is used (the attempt does that after the chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    /// Target URL.
    pub url: String,
    /// Upper-case HTTP method (`POST` unless a plugin chose `PUT` or `PATCH`).
    pub method: String,
    /// Content type of `body` (sent as the `content-type` header).
    pub content_type: String,
    /// Request headers in order: the webhook's static headers, those plugins set, and, once
    /// signed, hookd's `webhook-id`, `webhook-timestamp` and `webhook-signature`.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Bytes,
}

impl OutboundRequest {
    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`, replacing every header of that name.
    pub fn set_header(&mut self, name: &str, value: String) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value));
    }
}
