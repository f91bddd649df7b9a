//! DNS names and the SSRF guard: rebinding, names answering blocked addresses, names answering
//! both. The engine asks a tiny DNS server on 127.0.0.1 (`[delivery] dns_servers`) that only
//! ever answers loopback addresses; the allow-list holds 127.0.0.1/32 alone, and tripwire
//! listeners on 127.0.0.2 and ::1 (same port) count every connection, so a broken guard could
//! only reach this machine and would be seen.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::{Value, json};

use crate::support::{TestEngine, eventually, parse_config, test_config_toml};

const ALLOWED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const BLOCKED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const BLOCKED6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// The zone: the answer to the `n`-th query (counted per name and record type) for `name`,
/// or `None` for NXDOMAIN. Loopback addresses only.
fn zone(name: &str, qtype: RecordType, n: usize) -> Option<Vec<IpAddr>> {
    use RecordType::{A, AAAA};
    let answer = match (name.trim_end_matches(".hookd.test."), qtype) {
        // Rebinding: allowed, blocked, allowed, ...
        ("flip", A) => vec![if n.is_multiple_of(2) {
            ALLOWED
        } else {
            BLOCKED
        }],
        ("only-blocked", A) => vec![BLOCKED],
        ("only-v6-loopback", AAAA) => vec![BLOCKED6],
        ("both", A) => vec![BLOCKED, ALLOWED],
        ("both", AAAA) => vec![BLOCKED6],
        // Allowed for the create-time check (the first query), something else afterwards.
        ("turns-blocked", A) | ("turns-v6", A) | ("turns-both", A) if n == 0 => vec![ALLOWED],
        ("turns-blocked", A) => vec![BLOCKED],
        ("turns-v6", AAAA) | ("turns-both", AAAA) if n > 0 => vec![BLOCKED6],
        ("turns-both", A) => vec![BLOCKED, ALLOWED],
        (
            "flip" | "only-blocked" | "only-v6-loopback" | "both" | "turns-blocked" | "turns-v6"
            | "turns-both",
            _,
        ) => vec![],
        _ => return None,
    };
    Some(answer)
}

/// A UDP DNS server on 127.0.0.1 answering from [`zone`] with TTL 0 (so nothing is cached).
struct DnsServer {
    addr: SocketAddr,
    queries: Arc<Mutex<HashMap<(String, RecordType), usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    async fn start() -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let queries: Arc<Mutex<HashMap<(String, RecordType), usize>>> = Arc::default();
        let counts = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(request) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let Some(reply) = answer(&request, &counts) else {
                    continue;
                };
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        DnsServer {
            addr,
            queries,
            task,
        }
    }

    fn count(&self, name: &str, qtype: RecordType) -> usize {
        let key = (format!("{name}.hookd.test."), qtype);
        self.queries.lock().unwrap().get(&key).copied().unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(
    request: &Message,
    counts: &Mutex<HashMap<(String, RecordType), usize>>,
) -> Option<Message> {
    let query = request.queries.first()?.clone();
    let name = query.name().to_string().to_ascii_lowercase();
    let qtype = query.query_type();
    let n = {
        let mut counts = counts.lock().unwrap();
        let count = counts.entry((name.clone(), qtype)).or_default();
        *count += 1;
        *count - 1
    };
    let mut reply = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.add_query(query.clone());
    let owner = query.name().clone();
    match zone(&name, qtype, n) {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(ips) => {
            for ip in &ips {
                let rdata = match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(owner.clone(), 0, rdata));
            }
            if reply.answers.is_empty() {
                // An SOA with minimum 0, so the empty answer is not cached either.
                let zone = Name::from_ascii("hookd.test.").unwrap();
                let soa = SOA::new(zone.clone(), zone.clone(), 1, 0, 0, 0, 0);
                reply
                    .authorities
                    .push(Record::from_rdata(zone, 0, RData::SOA(soa)));
            }
        }
    }
    Some(reply)
}

/// Counts TCP connections accepted on `addr` (a blocked address: any connection is a failure).
async fn tripwire(addr: SocketAddr) -> Option<Arc<AtomicUsize>> {
    let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    Some(hits)
}

/// A receiver on 127.0.0.1 answering 200 with `connection: close`, so every attempt opens a
/// new connection and so resolves the name again.
async fn closing_receiver() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            ([("connection", "close")], "ok")
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, hits)
}

/// The allowed receiver on 127.0.0.1:P and tripwires on 127.0.0.2:P and [::1]:P.
struct Targets {
    port: u16,
    allowed: Arc<AtomicUsize>,
    blocked: Arc<AtomicUsize>,
    blocked6: Option<Arc<AtomicUsize>>,
}

impl Targets {
    async fn start() -> Self {
        let (port, allowed) = closing_receiver().await;
        let blocked = tripwire(SocketAddr::new(BLOCKED, port))
            .await
            .expect("127.0.0.2 is loopback and the port is free there");
        // ::1 may be unavailable on this machine; the refusal code is asserted regardless.
        let blocked6 = tripwire(SocketAddr::new(BLOCKED6, port)).await;
        Targets {
            port,
            allowed,
            blocked,
            blocked6,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{name}.hookd.test:{}/hook", self.port)
    }

    fn blocked_hits(&self) -> usize {
        self.blocked.load(Ordering::SeqCst)
            + self
                .blocked6
                .as_ref()
                .map_or(0, |hits| hits.load(Ordering::SeqCst))
    }
}

/// An engine resolving through `dns`, with only 127.0.0.1/32 allow-listed.
async fn engine_with(dns: &DnsServer) -> TestEngine {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(r#"dns_servers = ["{}"]"#, dns.addr);
    let text = test_config_toml(dir.path(), &extra, true);
    assert!(text.contains(r#"allow = ["127.0.0.1/32"]"#));
    TestEngine::start_in(dir, parse_config(&text)).await
}

/// Waits until every delivery of `event` is delivered or failed; returns them.
async fn final_deliveries(engine: &TestEngine, event: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for delivery in event["deliveries"].as_array().unwrap() {
        let id = delivery["id"].as_str().unwrap();
        let d = eventually(Duration::from_secs(15), "delivery final", || async {
            let (_, d) = engine.get(&format!("/v1/deliveries/{id}")).await;
            (d["status"] == "delivered" || d["status"] == "failed").then_some(d)
        })
        .await;
        out.push(d);
    }
    out
}

#[tokio::test]
async fn a_name_rebinding_between_an_allowed_and_a_blocked_address_never_reaches_the_blocked_one() {
    let dns = DnsServer::start().await;
    let targets = Targets::start().await;
    let engine = engine_with(&dns).await;
    engine
        .create_webhook(json!({"url": targets.url("flip")}))
        .await;
    assert_eq!(dns.count("flip", RecordType::A), 1, "checked at creation");

    let (mut delivered, mut refused) = (0, 0);
    for _ in 0..12 {
        let event = engine.send_event("user.created", json!({})).await;
        for d in final_deliveries(&engine, &event).await {
            let attempts = d["attempts"].as_array().unwrap();
            if d["status"] == "delivered" {
                assert_eq!(attempts.len(), 1, "{d}");
                delivered += 1;
            } else {
                assert_eq!(attempts.len(), 1, "a blocked address is not retried: {d}");
                assert_eq!(attempts[0]["error_code"], "blocked_address", "{d}");
                // The attempt log is the tenant's: it says the address was refused, never
                // which address the name resolved to (operators find that in hookd's log).
                let message = attempts[0]["error_message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("not a public address") && !message.contains("127.0.0"),
                    "{d}"
                );
                refused += 1;
            }
        }
    }
    let lookups = dns.count("flip", RecordType::A);
    eprintln!(
        "rebinding: {lookups} A lookups, {delivered} delivered to 127.0.0.1, {refused} refused (127.0.0.2)"
    );
    // Each attempt opened a new connection, so each resolved anew and the answers alternated.
    assert!(lookups >= 13, "{lookups} lookups");
    assert!(delivered >= 1 && refused >= 1, "{delivered} / {refused}");
    assert_eq!(targets.allowed.load(Ordering::SeqCst), delivered);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        targets.blocked_hits(),
        0,
        "a blocked address was connected to"
    );
}

#[tokio::test]
async fn names_answering_only_blocked_addresses_are_refused_at_creation_and_at_connect_time() {
    let dns = DnsServer::start().await;
    let targets = Targets::start().await;
    let engine = engine_with(&dns).await;
    for name in ["only-blocked", "only-v6-loopback", "both"] {
        let (status, err) = engine
            .post("/v1/webhooks", json!({"url": targets.url(name)}))
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (422, Some("blocked_address")),
            "{name}: {err}"
        );
    }
    // Names that answered 127.0.0.1 at creation and only blocked addresses afterwards.
    for name in ["turns-blocked", "turns-v6"] {
        engine
            .create_webhook(json!({"url": targets.url(name)}))
            .await;
    }
    let event = engine.send_event("user.created", json!({})).await;
    let deliveries = final_deliveries(&engine, &event).await;
    assert_eq!(deliveries.len(), 2);
    for d in deliveries {
        assert_eq!(d["status"], "failed", "{d}");
        assert_eq!(d["attempts"][0]["error_code"], "blocked_address", "{d}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(targets.allowed.load(Ordering::SeqCst), 0);
    assert_eq!(
        targets.blocked_hits(),
        0,
        "a blocked address was connected to"
    );
}

#[tokio::test]
async fn a_name_answering_allowed_and_blocked_addresses_connects_only_to_the_allowed_one() {
    let dns = DnsServer::start().await;
    let targets = Targets::start().await;
    let engine = engine_with(&dns).await;
    engine
        .create_webhook(json!({"url": targets.url("turns-both")}))
        .await;
    for _ in 0..6 {
        let event = engine.send_event("user.created", json!({})).await;
        for d in final_deliveries(&engine, &event).await {
            assert_eq!(d["status"], "delivered", "{d}");
        }
    }
    // Every delivery resolved anew and got 127.0.0.2, 127.0.0.1 and ::1.
    assert!(dns.count("turns-both", RecordType::A) >= 7);
    assert_eq!(targets.allowed.load(Ordering::SeqCst), 6);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        targets.blocked_hits(),
        0,
        "a blocked address was connected to"
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve_fails_with_dns_and_is_retried() {
    let dns = DnsServer::start().await;
    let targets = Targets::start().await;
    let engine = engine_with(&dns).await;
    // NXDOMAIN at creation too: accepted (the name may exist later), checked at connect time.
    engine
        .create_webhook(json!({"url": targets.url("missing"), "max_attempts": 2}))
        .await;
    let event = engine.send_event("user.created", json!({})).await;
    let d = final_deliveries(&engine, &event).await.remove(0);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "retried: {d}");
    assert_eq!(attempts[0]["error_code"], "dns", "{d}");
    assert_eq!(attempts[0]["result"], "failed", "{d}");
    assert_eq!(attempts[1]["result"], "exhausted", "{d}");
    assert!(dns.count("missing", RecordType::A) >= 3, "asked our server");
    assert_eq!(targets.allowed.load(Ordering::SeqCst), 0);
    assert_eq!(targets.blocked_hits(), 0);
}
