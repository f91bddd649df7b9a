//! The outbound HTTP client: the only place hookd builds a reqwest client.
//!
//! One pooled keep-alive client for all webhooks. Redirects are never followed, nor requests
//! resent by the client (the retry schedule does that), every
//! request has a total timeout, at most `max_response_body_bytes` of a response are read (and at
//! most [`MAX_RESPONSE_HEADERS`] headers / [`MAX_RESPONSE_HEADER_BYTES`] of them kept, for
//! `on-response` plugins), and
//! every address a host name resolves to passes the SSRF guard at connect time (IP-literal URLs
//! are checked by the caller before sending, since they skip DNS). Host names resolve through
//! the system resolver, or through the name servers of `[delivery] dns_servers` when set
//! ([`OutboundResolver`], also used by the create-time check). The client connects only to
//! addresses it checked itself, so a name whose answer changes between checks (DNS rebinding)
//! can never lead it to an address the guard refused.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use super::runtime::Lane;
use crate::config::SharedConfig;
use crate::outbound::OutboundRequest;
use crate::resolver::OutboundResolver;
use crate::ssrf::{BlockedAddress, SsrfPolicy};

/// Response headers kept for `on-response` plugins: at most this many…
pub const MAX_RESPONSE_HEADERS: usize = 32;
/// …and at most this many bytes of names and values together; the rest are left out.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 8 << 10;

/// What came back (or didn't): a value, never an error.
#[derive(Debug, Clone)]
pub enum HttpOutcome {
    Response {
        status: u16,
        retry_after: Option<String>,
        /// The first `max_response_body_bytes` of the body, raw (what an `on-response` plugin
        /// gets; the attempt log keeps it lossily decoded, [`HttpOutcome::snippet`]).
        body: bytes::Bytes,
        /// Whether the body was longer than what was read.
        body_truncated: bool,
        /// The response headers in the order received (names lower case), capped at
        /// [`MAX_RESPONSE_HEADERS`] and [`MAX_RESPONSE_HEADER_BYTES`].
        headers: Vec<(String, String)>,
        latency: Duration,
    },
    Failed {
        failure: SendFailure,
        /// For the attempt log, which the tenant reads: never names a refused address.
        message: String,
        latency: Duration,
    },
}

impl HttpOutcome {
    /// The body read, lossily decoded (empty when there was no answer). A body cut at the
    /// read limit in the middle of a UTF-8 character ends before it, not in U+FFFD.
    pub fn snippet(&self) -> std::borrow::Cow<'_, str> {
        match self {
            HttpOutcome::Response {
                body,
                body_truncated,
                ..
            } => {
                let whole = match std::str::from_utf8(body) {
                    Err(cut) if *body_truncated && cut.error_len().is_none() => {
                        &body[..cut.valid_up_to()]
                    }
                    _ => &body[..],
                };
                String::from_utf8_lossy(whole)
            }
            HttpOutcome::Failed { .. } => std::borrow::Cow::Borrowed(""),
        }
    }
}

/// Why a request got no HTTP response. Each has a stable code (the attempt's `error_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// The attempt's total timeout passed.
    Timeout,
    ConnectRefused,
    /// The host name has no usable address.
    Dns,
    /// Every address is one the SSRF guard refuses.
    BlockedAddress,
    ConnectionReset,
    /// The connection closed before a whole response arrived.
    ConnectionClosed,
    /// Not HTTP, or a head over hyper's limit.
    InvalidResponse,
    Tls,
    ConnectError,
    RequestError,
    /// The URL does not parse (a stored URL that no longer does, or a plugin's).
    InvalidUrl,
    /// The method is not an HTTP method.
    InvalidMethod,
    /// A plain `http://` URL while `[ssrf] allow_http` is off (a webhook made before the
    /// admin turned it off): nothing is sent in clear. Retried, so a tenant that moves the
    /// webhook to `https://` within its schedule loses nothing.
    InsecureScheme,
}

impl SendFailure {
    pub fn code(self) -> &'static str {
        match self {
            SendFailure::Timeout => "timeout",
            SendFailure::ConnectRefused => "connect_refused",
            SendFailure::Dns => "dns",
            SendFailure::BlockedAddress => "blocked_address",
            SendFailure::ConnectionReset => "connection_reset",
            SendFailure::ConnectionClosed => "connection_closed",
            SendFailure::InvalidResponse => "invalid_response",
            SendFailure::Tls => "tls",
            SendFailure::ConnectError => "connect_error",
            SendFailure::RequestError => "request_error",
            SendFailure::InvalidUrl => "invalid_url",
            SendFailure::InvalidMethod => "invalid_method",
            SendFailure::InsecureScheme => "insecure_scheme",
        }
    }

    /// Whether trying again later cannot help: the request itself is refused before any
    /// connection (a blocked address stays blocked, a bad URL stays bad).
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            SendFailure::BlockedAddress | SendFailure::InvalidUrl | SendFailure::InvalidMethod
        )
    }
}

/// Refusal from the resolver: the name has no usable address.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup of `{0}` failed: {1}")]
struct DnsError(String, std::io::Error);

/// Resolves through the [`OutboundResolver`], keeping only addresses the SSRF guard allows.
struct GuardedResolver {
    config: SharedConfig,
    resolver: OutboundResolver,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = SsrfPolicy::new(&self.config.current().ssrf);
        let host = name.as_str().to_string();
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolver
                .lookup(&host)
                .await
                .map_err(|err| DnsError(host.clone(), err))?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|addr| match policy.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(blocked) => {
                        refusal = Some(blocked);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let err: Box<dyn StdError + Send + Sync> = match refusal {
                    Some(blocked) => Box::new(blocked),
                    None => Box::new(DnsError(
                        host,
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
                    )),
                };
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[derive(Clone)]
pub struct DeliveryClient {
    /// One client (and connection pool) per lane of delivery workers, indexed by
    /// [`Lane::index`]: a pooled connection's I/O task runs on the lane that opened it. With a
    /// single lane both are the same client.
    http: [reqwest::Client; 2],
    config: SharedConfig,
    resolver: OutboundResolver,
    urls: Arc<ParsedUrls>,
}

/// Most URLs [`ParsedUrls`] keeps; when full it starts over.
const MAX_PARSED_URLS: usize = 4096;

/// Parsed request URLs, by their text. Every attempt of a webhook sends to the same URL, and
/// parsing it (the host goes through IDNA mapping before it is tried as an address) was ~4 % of
/// the delivery workers' samples in the e2e bench's profile, our one parse of the three each
/// request gets (reqwest parses it twice more itself); a clone of the parsed value is a copy of
/// one string.
#[derive(Default)]
struct ParsedUrls(std::sync::Mutex<std::collections::HashMap<String, Url>>);

impl ParsedUrls {
    fn parse(&self, text: &str) -> Result<Url, url::ParseError> {
        let lock = || {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(url) = lock().get(text) {
            return Ok(url.clone());
        }
        let url = Url::parse(text)?;
        let mut urls = lock();
        if urls.len() >= MAX_PARSED_URLS {
            urls.clear();
        }
        urls.insert(text.to_string(), url.clone());
        Ok(url)
    }
}

impl std::fmt::Debug for DeliveryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryClient").finish_non_exhaustive()
    }
}

impl DeliveryClient {
    #[allow(clippy::disallowed_methods)] // the one place a reqwest client is built
    pub fn new(config: SharedConfig) -> Self {
        let connect_timeout = config.current().delivery.connect_timeout;
        let resolver = OutboundResolver::new(&config.current().delivery.dns_servers);
        let client = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // hookd's retry schedule resends, and logs each attempt: the client never
                // resends a request by itself. With no retry allowed, reqwest's retry layer
                // also stops cloning every request (head and body) in case it retries.
                .retry(reqwest::retry::never().max_retries_per_request(0))
                .dns_resolver(Arc::new(GuardedResolver {
                    config: config.clone(),
                    resolver: resolver.clone(),
                }))
                .no_proxy()
                .connect_timeout(connect_timeout)
                .pool_idle_timeout(Duration::from_secs(60))
                // No cap of its own on idle connections per host: they are about as many as
                // the sends in flight to that host at its peak (a few more where the client
                // raced a new connection against a busy one), which the engine-wide cap
                // (`[delivery] max_in_flight`) bounds, and they close after 60 s idle. The cap
                // of 64 this had made every send beyond 64 at once to one host open and close
                // a connection: draining a backlog at a webhook's `max_in_flight` of 128 ran
                // at 10,466 deliveries/s against 14,792/s at 8 (e2e bench scenario 5).
                .pool_max_idle_per_host(usize::MAX)
                .tcp_nodelay(true)
                .user_agent(concat!("hookd/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("the HTTP client configuration is valid")
        };
        // Without a yielding lane (`worker_nice = 0`) every attempt runs on the normal one:
        // one pool serves both indexes.
        let normal = client();
        let yielding = if config.current().delivery.worker_nice > 0 {
            client()
        } else {
            normal.clone()
        };
        let http = [normal, yielding];
        DeliveryClient {
            http,
            config,
            resolver,
            urls: Arc::default(),
        }
    }

    /// The resolver this client uses, for checks that must see the same answers (webhook
    /// creation).
    pub fn resolver(&self) -> &OutboundResolver {
        &self.resolver
    }

    /// Sends one request within `timeout`, reading at most `max_body_bytes` of the answer.
    /// Checks an IP-literal host against the SSRF guard first.
    pub async fn send(
        &self,
        request: OutboundRequest,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> HttpOutcome {
        let started = Instant::now();
        let failed = |failure: SendFailure, message: String| HttpOutcome::Failed {
            failure,
            message,
            latency: started.elapsed(),
        };
        let url = match self.urls.parse(&request.url) {
            Ok(url) => url,
            Err(err) => {
                return failed(
                    SendFailure::InvalidUrl,
                    format!("the URL is not valid: {err}"),
                );
            }
        };
        let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
            return failed(
                SendFailure::InvalidMethod,
                format!("`{}` is not an HTTP method", request.method),
            );
        };
        let config = self.config.current();
        if url.scheme() == "http" && !config.ssrf.allow_http {
            return failed(
                SendFailure::InsecureScheme,
                "plain http:// is not allowed here ([ssrf] allow_http is off): nothing was \
                 sent; change the webhook's URL to https://"
                    .to_string(),
            );
        }
        if let Some(ip) = SsrfPolicy::literal_ip(&url) {
            let policy = SsrfPolicy::new(&config.ssrf);
            if let Err(blocked) = policy.check_ip(ip) {
                return failed(SendFailure::BlockedAddress, blocked_for_tenant(&blocked));
            }
        }
        let response = self.http[Lane::current().index()]
            .request(method, url)
            .headers(header_map(&request))
            .body(request.body)
            .timeout(timeout)
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(err) => {
                let (failure, message) = classify_error(&err);
                return failed(failure, message);
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let headers = capped_headers(response.headers());
        let announced = response.content_length();
        let latency = started.elapsed();
        // Read at most the cap; a body that is slow or broken after the status line does not
        // change the outcome, the status already decided it.
        let mut body = Vec::new();
        let mut cut = false;
        while body.len() < max_body_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = max_body_bytes - body.len();
                    cut |= chunk.len() > room;
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let body_truncated = cut || announced.is_some_and(|n| n > body.len() as u64);
        HttpOutcome::Response {
            status,
            retry_after,
            body: body.into(),
            body_truncated,
            headers,
            latency,
        }
    }
}

/// The response headers an `on-response` plugin sees: in order, names lower case, values
/// lossily decoded, stopping at [`MAX_RESPONSE_HEADERS`] headers or
/// [`MAX_RESPONSE_HEADER_BYTES`] bytes (a header that would pass the byte cap is left out, and
/// so are the ones after it).
fn capped_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    let mut bytes = 0;
    for (name, value) in headers {
        let size = name.as_str().len() + value.len();
        if kept.len() == MAX_RESPONSE_HEADERS || bytes + size > MAX_RESPONSE_HEADER_BYTES {
            break;
        }
        bytes += size;
        kept.push((
            name.as_str().to_owned(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    kept
}

/// The request's headers as HTTP headers, with `content-type` from its field. Names and values
/// were validated when set (API or plugin output policy); anything that does not parse is left
/// out rather than failing the attempt.
fn header_map(request: &OutboundRequest) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let content_type = HeaderValue::from_str(&request.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_TYPE, content_type);
    headers
}

/// What the tenant reads about a refused address (the attempt log is theirs): that it was
/// refused, not which address a name resolved to (that would make delivery a resolver oracle
/// for internal names). Operators get the address in the log.
fn blocked_for_tenant(blocked: &BlockedAddress) -> String {
    tracing::warn!(
        address = %blocked.ip,
        kind = blocked.kind,
        "refused to connect to a non-public address"
    );
    crate::ssrf::BLOCKED_ADDRESS_MESSAGE.to_string()
}

/// Maps a reqwest error to a stable code and a readable message.
fn classify_error(err: &reqwest::Error) -> (SendFailure, String) {
    // During connect to an https URL, invalid data or an early EOF can only come from the TLS
    // handshake (rustls errors and "tls handshake eof" surface as these io kinds).
    let tls_handshake = err.is_connect() && err.url().is_some_and(|url| url.scheme() == "https");
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(blocked) = current.downcast_ref::<BlockedAddress>() {
            return (SendFailure::BlockedAddress, blocked_for_tenant(blocked));
        }
        if let Some(dns) = current.downcast_ref::<DnsError>() {
            return (SendFailure::Dns, dns.to_string());
        }
        if let Some(http) = current.downcast_ref::<hyper::Error>() {
            if http.is_parse() || http.is_parse_status() || http.is_parse_too_large() {
                return (SendFailure::InvalidResponse, http.to_string());
            }
            if http.is_incomplete_message() {
                return (SendFailure::ConnectionClosed, http.to_string());
            }
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            let code = match io.kind() {
                ErrorKind::ConnectionRefused => Some(SendFailure::ConnectRefused),
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => Some(SendFailure::ConnectionReset),
                ErrorKind::TimedOut => Some(SendFailure::Timeout),
                ErrorKind::InvalidData | ErrorKind::UnexpectedEof if tls_handshake => {
                    Some(SendFailure::Tls)
                }
                _ => None,
            };
            if let Some(code) = code {
                return (code, io.to_string());
            }
            // A wrapped io::Error (the connector wraps the TLS one in `Other`) is not its
            // wrapper's `source()`; look inside.
            if let Some(inner) = io.get_ref()
                && inner.is::<std::io::Error>()
            {
                source = Some(inner);
                continue;
            }
        }
        source = current.source();
    }
    let code = if err.is_timeout() {
        SendFailure::Timeout
    } else if err.is_connect() {
        SendFailure::ConnectError
    } else {
        SendFailure::RequestError
    };
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snippet_cut_inside_a_character_ends_before_it() {
        let answered = |body: &'static [u8], truncated: bool| HttpOutcome::Response {
            status: 200,
            retry_after: None,
            body: bytes::Bytes::from_static(body),
            body_truncated: truncated,
            headers: Vec::new(),
            latency: Duration::ZERO,
        };
        // "é" is two bytes; the limit fell between them.
        assert_eq!(answered(b"caf\xc3", true).snippet(), "caf");
        assert_eq!(answered("café".as_bytes(), true).snippet(), "café");
        // Not cut there: invalid bytes stay visible as U+FFFD.
        assert_eq!(answered(b"caf\xc3", false).snippet(), "caf\u{fffd}");
        assert_eq!(answered(b"\xffok", true).snippet(), "\u{fffd}ok");
    }

    #[test]
    fn parsed_urls_answer_as_parsing_does_and_stay_bounded() {
        let urls = ParsedUrls::default();
        for text in [
            "http://127.0.0.1:9/hook?a=1",
            "https://Example.COM/x",
            "http://[::1]/",
        ] {
            let first = urls.parse(text).unwrap();
            assert_eq!(first, Url::parse(text).unwrap());
            assert_eq!(urls.parse(text).unwrap(), first);
        }
        assert_eq!(
            urls.parse("not a url").unwrap_err(),
            Url::parse("not a url").unwrap_err()
        );
        for port in 0..(MAX_PARSED_URLS as u16 + 10) {
            urls.parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        }
        assert!(urls.0.lock().unwrap().len() <= MAX_PARSED_URLS);
    }

    #[test]
    fn response_headers_are_kept_in_order_up_to_both_caps() {
        let mut headers = HeaderMap::new();
        headers.insert("x-first", HeaderValue::from_static("1"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let kept = capped_headers(&headers);
        assert_eq!(
            kept,
            vec![
                ("x-first".to_owned(), "1".to_owned()),
                ("content-type".to_owned(), "application/json".to_owned())
            ]
        );

        let mut many = HeaderMap::new();
        for i in 0..100 {
            many.insert(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert_eq!(capped_headers(&many).len(), MAX_RESPONSE_HEADERS);

        let mut big = HeaderMap::new();
        let value = HeaderValue::from_str(&"v".repeat(3000)).unwrap();
        for i in 0..5 {
            big.insert(
                HeaderName::from_bytes(format!("x-big{i}").as_bytes()).unwrap(),
                value.clone(),
            );
        }
        let kept = capped_headers(&big);
        assert_eq!(
            kept.len(),
            2,
            "two 3 KB headers fit in 8 KiB, a third does not"
        );
        let total: usize = kept.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(total <= MAX_RESPONSE_HEADER_BYTES);
    }
}
