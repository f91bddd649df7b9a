//! Hostile HTTP input through raw TCP: slow-loris heads and stalled bodies, huge headers,
//! 10 MB bodies on every body-taking route, invalid UTF-8 in the request line, query and
//! body, deeply nested JSON, and hundreds of idle keep-alive connections. Every answer is a
//! JSON `{"code","message"}` error or a clean close, never a 5xx or a hang.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{ACME_KEY, TestEngine, parse_config, test_config_toml_with};

/// Server-side timeouts of these tests (the defaults are 10 s and 30 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// Generous upper bound for "the server reacted to its 1 s timeout" on a loaded 2-core
/// machine: it proves the timeout exists without measuring it.
const REACTION_BOUND: Duration = Duration::from_secs(8);

async fn engine() -> TestEngine {
    let data_dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[limits]\nheader_read_timeout = \"{}ms\"\nbody_read_timeout = \"{}ms\"\n",
        // Uploads capped at 10 MiB here (default 32 MiB) so one 11 MiB body is over every limit.
        test_config_toml_with(data_dir.path(), "", true, "max_upload_bytes = 10485760"),
        HEADER_TIMEOUT.as_millis(),
        BODY_TIMEOUT.as_millis(),
    );
    TestEngine::start_in(data_dir, parse_config(&text)).await
}

async fn connect(engine: &TestEngine) -> TcpStream {
    TcpStream::connect(engine.engine().local_addr())
        .await
        .unwrap()
}

/// Reads one HTTP/1.1 response (head plus a `content-length` body), or what arrived before
/// the server closed. Returns `None` on a close or reset without a response.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                return Some((status, body));
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Asserts a JSON error body with `code`.
fn assert_code(status: u16, body: &str, expected_status: u16, expected_code: &str) {
    let json: Value = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {:?}", &body[..body.len().min(200)]));
    assert_eq!(
        (status, json["code"].as_str().unwrap_or("")),
        (expected_status, expected_code),
        "{json}"
    );
    assert!(json["message"].is_string(), "{json}");
}

/// Sends `head` and `body` while reading the answer, so a server that answers before the
/// body is complete (413) is seen even when it then closes the connection.
async fn exchange(
    engine: &TestEngine,
    head: impl Into<Vec<u8>>,
    body: Vec<u8>,
) -> Option<(u16, String)> {
    let head: Vec<u8> = head.into();
    let stream = connect(engine).await;
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&head).await;
        let _ = write.write_all(&body).await;
        write
    });
    let answer = tokio::time::timeout(Duration::from_secs(30), read_response(&mut read))
        .await
        .expect("the server answers or closes within 30 s");
    writer.abort();
    answer
}

fn request_head(method: &str, path: &str, extra: &str, content_length: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {ACME_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {content_length}\r\n{extra}\r\n"
    )
}

/// Fills the `{...}` parameters of a documented path with real ids of tenant acme.
fn fill(path: &str, ids: &Value) -> String {
    let mut out = path.to_string();
    for (param, value) in [
        ("/v1/webhooks/{id}", &ids["webhook"]),
        ("/v1/events/{id}", &ids["event"]),
        ("/v1/deliveries/{id}", &ids["delivery"]),
    ] {
        if out.starts_with(param) {
            out = out.replacen("{id}", value.as_str().unwrap(), 1);
        }
    }
    out.replace("{name}", "big")
}

async fn some_data(engine: &TestEngine) -> Value {
    let webhook = engine
        .create_webhook(json!({"url": "http://127.0.0.1:9/none"}))
        .await;
    let event = engine.send_event("user.created", json!({})).await;
    json!({
        "webhook": webhook["id"],
        "event": event["id"],
        "delivery": event["deliveries"][0]["id"],
    })
}

#[tokio::test]
async fn a_slow_loris_request_head_is_cut_off_at_the_header_timeout() {
    let engine = engine().await;
    let mut stream = connect(&engine).await;
    let head = format!("GET /v1/webhooks HTTP/1.1\r\nauthorization: Bearer {ACME_KEY}\r\n");
    let started = Instant::now();
    let mut closed_at = None;
    // One byte every 250 ms: the head would take 15 s; the server must cut it off first.
    for byte in head.bytes().cycle().take(60) {
        if stream.write_all(&[byte]).await.is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(250), stream.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_at = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                // hyper may answer 408 before closing; anything else is a failure.
                let text = String::from_utf8_lossy(&probe[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(_) => {}
        }
    }
    let closed_at = closed_at.expect("the server kept a slow-loris connection open for 15 s");
    assert!(
        closed_at >= HEADER_TIMEOUT && closed_at < REACTION_BOUND,
        "closed after {closed_at:?}"
    );
    // The engine still serves others.
    let (status, _) = engine.get("/v1/webhooks").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_stalled_body_gets_408_request_timeout_on_every_kind_of_body() {
    let engine = engine().await;
    let ids = some_data(&engine).await;
    // A JSON body, an optional JSON body, and the raw plugin upload.
    for (method, path) in [
        ("POST", "/v1/events".to_string()),
        (
            "POST",
            format!("/v1/webhooks/{}/test", ids["webhook"].as_str().unwrap()),
        ),
        ("PUT", "/v1/plugins/stalled".to_string()),
    ] {
        let mut stream = connect(&engine).await;
        let head = request_head(method, &path, "", 1000);
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"{\"type\": \"user.").await.unwrap();
        let started = Instant::now();
        let (status, body) = tokio::time::timeout(REACTION_BOUND, read_response(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {REACTION_BOUND:?}"))
            .unwrap_or_else(|| panic!("{method} {path}: closed without an answer"));
        let waited = started.elapsed();
        assert_code(status, &body, 408, "request_timeout");
        assert!(
            waited >= BODY_TIMEOUT - Duration::from_millis(50),
            "{waited:?}"
        );
    }
}

/// A `Content-Length` over the route's limit is refused before any of the body is read (it
/// used to wait for the body and answer 408 after the body timeout); the sign-in route, which
/// takes requests before any key is checked, takes 8 KiB.
#[tokio::test]
async fn a_declared_length_over_the_limit_gets_413_at_once() {
    let engine = engine().await;
    for (path, length, extra) in [
        ("/v1/events", 99_999_999, ""),
        ("/console/session", 9000, "x-hookd-console: 1\r\n"),
    ] {
        let mut stream = connect(&engine).await;
        let head = request_head("POST", path, extra, length);
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"{").await.unwrap();
        let (status, body) = tokio::time::timeout(BODY_TIMEOUT / 2, read_response(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer before the body timeout"))
            .unwrap_or_else(|| panic!("{path}: closed without an answer"));
        assert_code(status, &body, 413, "payload_too_large");
    }
}

/// A body dripped a byte at a time, each pause under the body timeout, is cut off once it
/// has taken twice that timeout (plus its length at 16 KiB/s): no client holds a connection
/// and its buffered body for good, least of all on the sign-in route, open to anyone.
#[tokio::test]
async fn a_dripping_body_gets_408_once_its_whole_deadline_passes() {
    let engine = engine().await;
    let mut stream = connect(&engine).await;
    let head = request_head("POST", "/console/session", "x-hookd-console: 1\r\n", 8000);
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let drip = tokio::spawn(async move {
        while writer.write_all(b" ").await.is_ok() {
            tokio::time::sleep(BODY_TIMEOUT / 4).await;
        }
    });
    let (status, body) = tokio::time::timeout(REACTION_BOUND, read_response(&mut reader))
        .await
        .expect("no answer to a dripping body")
        .expect("closed without an answer");
    drip.abort();
    assert_code(status, &body, 408, "request_timeout");
    assert!(
        started.elapsed() >= BODY_TIMEOUT * 2 - Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn huge_headers_get_431_or_a_clean_close_never_a_hang() {
    let engine = engine().await;
    for size in [64 * 1024, 1024 * 1024] {
        let head = format!(
            "GET /v1/webhooks HTTP/1.1\r\nauthorization: Bearer {ACME_KEY}\r\nx-big: {}\r\n\r\n",
            "a".repeat(size)
        );
        match exchange(&engine, head, Vec::new()).await {
            None => {} // closed or reset: acceptable for a head this large
            Some((status, _)) => assert_eq!(status, 431, "{size}-byte header"),
        }
        // Many medium headers adding up past the limit too.
        let many: String = (0..200)
            .map(|i| format!("x-h{i}: {}\r\n", "b".repeat(size / 200)))
            .collect();
        let head = format!("GET /v1/webhooks HTTP/1.1\r\n{many}\r\n");
        if let Some((status, _)) = exchange(&engine, head, Vec::new()).await {
            assert_eq!(status, 431, "200 headers of {size} bytes in all");
        }
    }
    let (status, _) = engine.get("/v1/webhooks").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_ten_megabyte_body_gets_413_json_on_every_body_taking_route() {
    let engine = engine().await;
    let ids = some_data(&engine).await;
    let (_, document) = engine.get("/openapi.json").await;
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("requestBody").is_some() {
                routes.push((method.to_uppercase(), fill(path, &ids)));
            }
        }
    }
    assert!(routes.len() >= 8, "{routes:?}");
    for (method, path) in routes {
        // 11 MiB: over the event body limit (1 MiB + envelope) and the upload limit (10 MiB);
        // the batch route takes up to 32 MiB (1000 events), so it gets 33 MiB.
        let size = if path.ends_with("/batch") { 33 } else { 11 } * 1024 * 1024;
        let head = request_head(&method, &path, "", size);
        let body = vec![b' '; size];
        let (status, text) = exchange(&engine, head, body)
            .await
            .unwrap_or_else(|| panic!("{method} {path}: closed without an answer"));
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON ({status}): {text}"));
        assert_eq!(status, 413, "{method} {path}: {json}");
        let code = json["code"].as_str().unwrap();
        assert!(
            code == "payload_too_large" || code == "plugin_too_large",
            "{method} {path}: {json}"
        );
    }
    // Chunked (no content-length) is capped the same way.
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nauthorization: Bearer {ACME_KEY}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let mut body = Vec::new();
    for _ in 0..11 {
        body.extend_from_slice(b"100000\r\n");
        body.extend(std::iter::repeat_n(b' ', 0x100000));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (status, text) = exchange(&engine, head, body).await.expect("an answer");
    assert_code(status, &text, 413, "payload_too_large");
}

#[tokio::test]
async fn invalid_utf8_in_the_request_line_query_header_and_body_gets_a_json_4xx() {
    let engine = engine().await;
    let ids = some_data(&engine).await;
    let webhook = ids["webhook"].as_str().unwrap();
    // Percent-encoded invalid UTF-8 in a path parameter: refused. In a query value it decodes
    // lossily (form_urlencoded) to U+FFFD, which no channel and no time accepts.
    for (path, status, code) in [
        ("/v1/webhooks/%FF%FE".to_string(), 400, "invalid_path"),
        (format!("/v1/webhooks/{webhook}%C3%28"), 400, "invalid_path"),
        ("/v1/events?channel=%FF".to_string(), 400, "invalid_query"),
        (
            "/v1/deliveries?after=%C0%80".to_string(),
            400,
            "invalid_time",
        ),
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nauthorization: Bearer {ACME_KEY}\r\n\r\n");
        let (got, body) = exchange(&engine, head, Vec::new())
            .await
            .expect("an answer");
        assert_code(got, &body, status, code);
    }
    // Raw (not percent-encoded) bytes >= 0x80 in the request target: 400 or a close.
    let mut head = b"GET /v1/webhooks/\xff\xfe HTTP/1.1\r\nauthorization: Bearer ".to_vec();
    head.extend_from_slice(ACME_KEY.as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(&engine, head, Vec::new()).await;
    if let Some((status, _)) = answer {
        assert!((400..500).contains(&status), "{status}");
    }
    // An Authorization header that is not UTF-8.
    let mut stream = connect(&engine).await;
    stream
        .write_all(b"GET /v1/webhooks HTTP/1.1\r\nauthorization: Bearer \xff\xfe\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_response(&mut stream).await.expect("an answer");
    assert_code(status, &body, 401, "unauthorized");
    // Invalid UTF-8 inside a JSON string, in the payload that is otherwise kept as raw bytes.
    for body in [
        b"{\"type\":\"user.created\",\"payload\":\"\xff\"}".to_vec(),
        b"{\"type\":\"user.created\",\"payload\":{\"k\xc3\x28\":1}}".to_vec(),
        b"{\"type\":\"user.\xed\xa0\x80\",\"payload\":{}}".to_vec(),
    ] {
        let head = request_head("POST", "/v1/events", "", body.len());
        let (status, text) = exchange(&engine, head, body).await.expect("an answer");
        assert_code(status, &text, 400, "invalid_json");
    }
    // Nothing of that was stored: only the one event of `some_data`.
    let (_, events) = engine.get("/v1/events").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
}

#[tokio::test]
async fn deeply_nested_json_is_refused_with_a_json_error_and_the_engine_lives_on() {
    let engine = engine().await;
    let ids = some_data(&engine).await;
    let webhook = ids["webhook"].as_str().unwrap();
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    for (method, path, body) in [
        // Deeper than the payload depth limit but within serde's recursion limit: 422.
        (
            "POST",
            "/v1/events".to_string(),
            format!(r#"{{"type":"user.created","payload":{}}}"#, deep(100)),
        ),
        // Far deeper: the parser's recursion limit refuses it before anything recurses.
        (
            "POST",
            "/v1/events".to_string(),
            format!(r#"{{"type":"user.created","payload":{}}}"#, deep(200_000)),
        ),
        (
            "POST",
            "/v1/webhooks".to_string(),
            format!(
                r#"{{"url":"http://127.0.0.1:9/","metadata":{{"a":{}}}}}"#,
                deep(200_000)
            ),
        ),
        (
            "PATCH",
            format!("/v1/webhooks/{webhook}"),
            format!(r#"{{"metadata":{}}}"#, deep(200_000)),
        ),
        (
            "POST",
            format!("/v1/webhooks/{webhook}/test"),
            format!(r#"{{"payload":{}}}"#, deep(200_000)),
        ),
        ("POST", "/v1/plugins/p/simulate".to_string(), deep(200_000)),
    ] {
        let head = request_head(method, &path, "", body.len());
        let (status, text) = exchange(&engine, head, body.into_bytes())
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
        assert!(
            matches!(status, 400 | 404 | 413 | 422) && json["code"].is_string(),
            "{method} {path}: {status} {json}"
        );
    }
    let (status, _) = engine.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn five_hundred_idle_keep_alive_connections_do_not_block_a_new_request() {
    let engine = engine().await;
    let mut idle = Vec::new();
    for i in 0..500 {
        let mut stream = connect(&engine).await;
        if i % 2 == 0 {
            // Half of them served one request and now sit idle on keep-alive.
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
                .await
                .unwrap();
            let (status, _) = read_response(&mut stream).await.expect("answer");
            assert_eq!(status, 200);
        }
        idle.push(stream);
    }
    let started = Instant::now();
    let (status, _) = engine.get("/v1/webhooks").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < REACTION_BOUND,
        "{:?}",
        started.elapsed()
    );
    // The idle connections do not stay forever: the server closes them after the header
    // timeout (no request head arrived), both never-used and kept-alive ones.
    let mut closed = 0;
    for stream in idle.iter_mut().take(20) {
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(REACTION_BOUND, stream.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 20,
        "idle connections still open after {REACTION_BOUND:?}"
    );
}
