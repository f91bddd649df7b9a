//! How hookd resolves the host names of webhook URLs ([`OutboundResolver`]): the system
//! resolver, or the name servers of `[delivery] dns_servers`. Both the create-time URL check
//! (`ssrf`) and the delivery client (`delivery::client`) ask it, so they see the same answers;
//! it applies no policy itself (callers run the SSRF guard on what it returns).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

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
