//! The SSRF guard: which webhook URLs and resolved addresses hookd may send to.
//!
//! A URL is checked twice: when a tenant enters it (scheme, host, every resolved address) and
//! again at connect time on the address actually used (`delivery::client` resolves through
//! [`SsrfPolicy::check_ip`]), so a DNS answer that changes after creation cannot reach an
//! internal address. Only public unicast addresses pass, unless the admin allow-list in config
//! names the network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::{Host, Url};

use crate::config::SsrfConfig;
use crate::resolver::OutboundResolver;

/// Longest webhook URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("`{0}` is not a valid URL")]
    Malformed(String),
    #[error("the URL scheme must be https{}", if *.0 { " or http" } else { "" })]
    Scheme(bool),
    #[error("the URL must name a host")]
    NoHost,
    #[error("URLs with a user name or password are not accepted; use static headers instead")]
    Credentials,
    #[error("the URL is longer than {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("the URL's port must be 1-65535")]
    PortZero,
    /// Displays without the address: the message reaches the tenant.
    #[error("{BLOCKED_ADDRESS_MESSAGE}")]
    Blocked(BlockedAddress),
}

/// What a tenant is told about a refused address, at webhook creation and in the attempt log:
/// never the address a name resolved to, or hookd would answer questions about internal names.
/// Operators find the address and its kind in the log.
pub const BLOCKED_ADDRESS_MESSAGE: &str = "the URL's host is not a public address; hookd delivers only to public addresses unless the admin allow-list permits the network";

/// The refusal of a non-public address. Its `Display` names the address: for logs only.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "{ip} is a {kind} address; hookd only delivers to public addresses unless the admin allow-list permits it"
)]
pub struct BlockedAddress {
    pub ip: IpAddr,
    pub kind: &'static str,
}

/// The SSRF part of the config, cheap to clone per check.
#[derive(Debug, Clone)]
pub struct SsrfPolicy {
    allow_http: bool,
    allow: Vec<IpNet>,
}

impl SsrfPolicy {
    pub fn new(config: &SsrfConfig) -> Self {
        SsrfPolicy {
            allow_http: config.allow_http,
            allow: config.allow.clone(),
        }
    }

    /// Whether hookd may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), BlockedAddress> {
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match non_public_kind(ip) {
            None => Ok(()),
            Some(kind) => Err(BlockedAddress { ip, kind }),
        }
    }

    /// Syntax checks of a webhook URL (no DNS): scheme, host, no credentials, length.
    pub fn parse_url(&self, text: &str) -> Result<Url, UrlError> {
        if text.len() > MAX_URL_BYTES {
            return Err(UrlError::TooLong);
        }
        let url = Url::parse(text).map_err(|_| UrlError::Malformed(text.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(UrlError::Scheme(self.allow_http)),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        if url.port() == Some(0) {
            return Err(UrlError::PortZero);
        }
        match url.host() {
            None => Err(UrlError::NoHost),
            Some(Host::Domain("")) => Err(UrlError::NoHost),
            Some(_) => Ok(url),
        }
    }

    /// The create-time check: syntax, then every address the host resolves to right now.
    /// A name that does not resolve is accepted (it may exist later); it is checked again at
    /// connect time.
    /// `resolver` is the delivery client's, so both checks ask the same name servers.
    pub async fn check_url(
        &self,
        text: &str,
        resolver: &OutboundResolver,
    ) -> Result<Url, UrlError> {
        let url = self.parse_url(text)?;
        match url.host() {
            Some(Host::Ipv4(ip)) => self.check_ip(ip.into()).map_err(UrlError::Blocked)?,
            Some(Host::Ipv6(ip)) => self.check_ip(ip.into()).map_err(UrlError::Blocked)?,
            Some(Host::Domain(domain)) => {
                if let Ok(addrs) = resolver.lookup(domain).await {
                    for ip in addrs {
                        self.check_ip(ip).map_err(UrlError::Blocked)?;
                    }
                }
            }
            None => return Err(UrlError::NoHost),
        }
        Ok(url)
    }

    /// The IP literal of a URL, if its host is one (these bypass DNS, so the client cannot
    /// check them in its resolver).
    pub fn literal_ip(url: &Url) -> Option<IpAddr> {
        match url.host()? {
            Host::Ipv4(ip) => Some(ip.into()),
            Host::Ipv6(ip) => Some(ip.into()),
            Host::Domain(_) => None,
        }
    }
}

/// Why an address is not public, or `None` if it is.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let kind = if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.is_multicast() {
        "multicast"
    } else if a == 100 && (64..128).contains(&b) {
        "shared (carrier-grade NAT)"
    } else if a == 192 && b == 0 && c == 0 {
        "IETF protocol assignment"
    } else if ip.is_documentation() {
        "documentation"
    } else if a == 198 && (18..20).contains(&b) {
        "benchmarking"
    } else if a >= 240 {
        "reserved"
    } else {
        return None;
    };
    Some(kind)
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) embeds the IPv4 target in the low 32 bits.
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0, 0, 0, 0] {
        let octets = ip.octets();
        let v4 = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
        return non_public_v4(v4);
    }
    // The local-use NAT64 prefix (RFC 8215, 64:ff9b:1::/48) translates into networks of the
    // operator's choosing, with the IPv4 address at a prefix-dependent position: refuse it all.
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 0x0001 {
        return Some("NAT64 local-use");
    }
    let kind = if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_unique_local() {
        "unique-local"
    } else if ip.is_unicast_link_local() {
        "link-local"
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        "documentation"
    } else if segments[0] < 0x100 {
        // ::/8 leftovers, including deprecated IPv4-compatible addresses (::a.b.c.d) and the
        // rest of 64:ff9b::/32 beyond the two NAT64 prefixes.
        "reserved"
    } else if segments[0] == 0x2002 || (segments[0] == 0x2001 && segments[1] == 0) {
        // 6to4 and Teredo tunnel to arbitrary IPv4 addresses.
        "tunnel"
    } else if segments[0] & 0xffc0 == 0xfec0 {
        "site-local"
    } else {
        return None;
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> SsrfPolicy {
        SsrfPolicy {
            allow_http: true,
            allow: allow.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn non_public_addresses_are_refused() {
        let p = policy(&[]);
        for text in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "2002:7f00:1::",
            // RFC 8215 local-use NAT64: the IPv4 target may sit anywhere in the low bits.
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1:7f00:1::",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            // ::/8 is reserved around the NAT64 prefixes too.
            "64:ff9b:2::1",
            "ff::1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert!(p.check_ip(ip).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let p = policy(&[]);
        for text in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            // The well-known NAT64 prefix in front of a public address.
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(p.check_ip(ip), Ok(()), "{text} should pass");
        }
    }

    #[test]
    fn port_zero_is_refused_while_parsing() {
        let p = policy(&["127.0.0.1/32"]);
        assert!(matches!(
            p.parse_url("http://127.0.0.1:0/hook"),
            Err(UrlError::PortZero)
        ));
        assert!(p.parse_url("http://127.0.0.1:1/hook").is_ok());
    }

    #[test]
    fn the_allow_list_permits_named_networks_only() {
        let p = policy(&["127.0.0.1/32"]);
        assert!(p.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check_ip("127.0.0.2".parse().unwrap()).is_err());
        assert!(p.check_ip("::1".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn odd_ip_spellings_are_normalised_before_the_check() {
        let p = policy(&[]);
        // Nothing is sent: these are refused while parsing, before any connection.
        for url in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://[::ffff:7f00:1]/",
            "http://[0:0:0:0:0:ffff:169.254.169.254]/",
            "http://0xa9fea9fe/",
        ] {
            let err = p
                .check_url(url, &OutboundResolver::System)
                .await
                .unwrap_err();
            assert!(matches!(err, UrlError::Blocked(_)), "{url}: {err}");
            // What the tenant reads never names the address.
            for address in ["127", "169.254", "7f00", "a9fe"] {
                assert!(!err.to_string().contains(address), "{url}: {err}");
            }
        }
    }

    #[tokio::test]
    async fn localhost_by_name_is_refused_without_an_allow_list_entry() {
        let err = policy(&[])
            .check_url("http://localhost:1/", &OutboundResolver::System)
            .await
            .unwrap_err();
        assert!(matches!(err, UrlError::Blocked(_)), "{err}");
    }

    #[test]
    fn syntax_rules() {
        let strict = SsrfPolicy {
            allow_http: false,
            allow: vec![],
        };
        assert_eq!(
            strict.parse_url("http://a.example/").unwrap_err(),
            UrlError::Scheme(false)
        );
        assert!(matches!(
            strict.parse_url("ftp://a.example/").unwrap_err(),
            UrlError::Scheme(_)
        ));
        assert_eq!(
            strict.parse_url("https://u:p@a.example/").unwrap_err(),
            UrlError::Credentials
        );
        assert!(matches!(
            strict.parse_url("not a url").unwrap_err(),
            UrlError::Malformed(_)
        ));
        assert!(strict.parse_url("https://a.example/hook?x=1").is_ok());
    }
}
