//! The outbound HTTP client: the only place hookd builds a reqwest client.
//!
//! One pooled keep-alive client for all webhooks. Redirects are never followed, every
//! request has a total timeout, at most `max_response_body_bytes` of a response are read, and
//! every address a host name resolves to passes the SSRF guard at connect time (IP-literal URLs
//! are checked by the caller before sending, since they skip DNS). Host names resolve through
//! the system resolver, or through the name servers of `[delivery] dns_servers` when set
//! ([`OutboundResolver`], also used by the create-time check). The client connects only to
//! addresses it checked itself, so a name whose answer changes between checks (DNS rebinding)
//! can never lead it to an address the guard refused.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::SharedConfig;
use crate::ssrf::{BlockedAddress, SsrfPolicy};

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub url: Url,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub timeout: Duration,
}

/// What came back (or didn't): a value, never an error.
#[derive(Debug, Clone)]
pub enum HttpOutcome {
    Response {
        status: u16,
        retry_after: Option<String>,
        /// The first `max_response_body_bytes` of the body, lossily decoded.
        snippet: String,
        latency: Duration,
    },
    Failed {
        /// Stable code: `timeout`, `connect_refused`, `dns`, `blocked_address`,
        /// `connection_reset`, `connection_closed` (closed before answering),
        /// `invalid_response` (not HTTP, or a head over hyper's limit), `tls`, `connect_error`,
        /// `request_error`.
        code: &'static str,
        message: String,
        latency: Duration,
    },
}

/// Refusal from the resolver: the name has no usable address.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup of `{0}` failed: {1}")]
struct DnsError(String, std::io::Error);

/// How hookd resolves the host names of webhook URLs: the system resolver (getaddrinfo), or
/// a dedicated set of name servers (`[delivery] dns_servers`, UDP with TCP fallback, answers
/// cached for their TTL). Chosen at start.
#[derive(Clone)]
pub enum OutboundResolver {
    System,
    Servers(Arc<TokioResolver>),
}

impl std::fmt::Debug for OutboundResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundResolver::System => f.write_str("System"),
            OutboundResolver::Servers(_) => f.write_str("Servers"),
        }
    }
}

impl OutboundResolver {
    /// The system resolver when `servers` is empty, else a resolver asking only `servers`.
    pub fn new(servers: &[SocketAddr]) -> Self {
        if servers.is_empty() {
            return OutboundResolver::System;
        }
        let name_servers = servers
            .iter()
            .map(|addr| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut connection| {
                        connection.port = addr.port();
                        connection
                    })
                    .collect();
                NameServerConfig::new(addr.ip(), true, connections)
            })
            .collect();
        let mut options = ResolverOpts::default();
        // Both families: the guard filters each address, so a name with one allowed and one
        // refused family still delivers to the allowed one.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = Duration::from_secs(2);
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .expect("a resolver over fixed name servers builds");
        OutboundResolver::Servers(Arc::new(resolver))
    }

    /// Every address `host` resolves to (port 0), unchecked: callers apply the SSRF guard.
    pub async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        match self {
            OutboundResolver::System => Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|addr| addr.ip())
                .collect()),
            OutboundResolver::Servers(resolver) => resolver
                .lookup_ip(host)
                .await
                .map(|found| found.iter().collect())
                .map_err(|err| std::io::Error::other(err.to_string())),
        }
    }
}

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
    http: reqwest::Client,
    config: SharedConfig,
    resolver: OutboundResolver,
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
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                config: config.clone(),
                resolver: resolver.clone(),
            }))
            .no_proxy()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .user_agent(concat!("hookd/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client configuration is valid");
        DeliveryClient {
            http,
            config,
            resolver,
        }
    }

    /// The resolver this client uses, for checks that must see the same answers (webhook
    /// creation).
    pub fn resolver(&self) -> &OutboundResolver {
        &self.resolver
    }

    /// Sends one request. Checks an IP-literal host against the SSRF guard first.
    pub async fn send(&self, request: OutboundRequest, max_body_bytes: usize) -> HttpOutcome {
        let started = Instant::now();
        if let Some(ip) = SsrfPolicy::literal_ip(&request.url) {
            let policy = SsrfPolicy::new(&self.config.current().ssrf);
            if let Err(blocked) = policy.check_ip(ip) {
                return HttpOutcome::Failed {
                    code: "blocked_address",
                    message: blocked.to_string(),
                    latency: started.elapsed(),
                };
            }
        }
        let response = self
            .http
            .request(request.method, request.url)
            .headers(request.headers)
            .body(request.body)
            .timeout(request.timeout)
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(err) => {
                let (code, message) = classify_error(&err);
                return HttpOutcome::Failed {
                    code,
                    message,
                    latency: started.elapsed(),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let latency = started.elapsed();
        // Read at most the cap; a body that is slow or broken after the status line does not
        // change the outcome, the status already decided it.
        let mut body = Vec::new();
        while body.len() < max_body_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = max_body_bytes - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        HttpOutcome::Response {
            status,
            retry_after,
            snippet: String::from_utf8_lossy(&body).into_owned(),
            latency,
        }
    }
}

/// Maps a reqwest error to a stable code and a readable message.
fn classify_error(err: &reqwest::Error) -> (&'static str, String) {
    // During connect to an https URL, invalid data or an early EOF can only come from the TLS
    // handshake (rustls errors and "tls handshake eof" surface as these io kinds).
    let tls_handshake = err.is_connect() && err.url().is_some_and(|url| url.scheme() == "https");
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(blocked) = current.downcast_ref::<BlockedAddress>() {
            return ("blocked_address", blocked.to_string());
        }
        if let Some(dns) = current.downcast_ref::<DnsError>() {
            return ("dns", dns.to_string());
        }
        if let Some(http) = current.downcast_ref::<hyper::Error>() {
            if http.is_parse() || http.is_parse_status() || http.is_parse_too_large() {
                return ("invalid_response", http.to_string());
            }
            if http.is_incomplete_message() {
                return ("connection_closed", http.to_string());
            }
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            let code = match io.kind() {
                ErrorKind::ConnectionRefused => Some("connect_refused"),
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => Some("connection_reset"),
                ErrorKind::TimedOut => Some("timeout"),
                ErrorKind::InvalidData | ErrorKind::UnexpectedEof if tls_handshake => Some("tls"),
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
        "timeout"
    } else if err.is_connect() {
        "connect_error"
    } else {
        "request_error"
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
