//! The body of an attempt record in the log: every delivery writes one, so it is binary
//! (a version byte, then the fields in order, little-endian with varint lengths, as in
//! `codec.rs`). Fields are only ever added at the end, where an older record simply ends
//! (`Reader::at_end`); a change that cannot be read that way takes a new version byte.
//!
//! Logs written before this codec hold JSON bodies (they start with `{`, never a version
//! byte): they are read as they are, with no migration.
//!
//! Not stored, because the record's place and meta already say it: the attempt's id (from
//! its locator) — the caller passes the locator when decoding.

use super::StoredAttempt;
use super::codec::{IdKey, Locator, Reader, Writer};
use crate::ids::{AttemptId, DeliveryId, WebhookId};
use crate::store::{AttemptRecord, SentHeader, SentRequest, StoreError};

/// The first byte of a binary attempt body.
const VERSION_1: u8 = 1;

/// The results hookd writes, by byte (0: any other text follows).
const RESULTS: [&str; 5] = ["delivered", "failed", "exhausted", "rejected", "filtered"];

/// The bytes of an attempt record's body. With `body_from_event`, the captured request's body
/// is left out: it is the event's delivered body, rendered again when the attempt is read.
pub fn encode(
    attempt: &AttemptRecord,
    filtered_by: Option<&str>,
    body_from_event: bool,
) -> Vec<u8> {
    let request_len = attempt.request.as_ref().map_or(0, |request| {
        request.url.len()
            + request.body.len()
            + request
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.as_ref().map_or(0, String::len) + 4)
                .sum::<usize>()
    });
    let mut w = Writer::with_capacity(160 + attempt.url.len() + request_len);
    w.u8(VERSION_1);
    w.u8(u8::from(body_from_event));
    id(
        &mut w,
        attempt.delivery_id.to_u128(),
        attempt.delivery_id.as_str(),
    );
    id(
        &mut w,
        attempt.webhook_id.to_u128(),
        attempt.webhook_id.as_str(),
    );
    w.varint(u64::from(attempt.attempt));
    w.varint(attempt.started_at);
    w.varint(attempt.latency_ms);
    w.str(&attempt.url);
    match RESULTS.iter().position(|known| *known == attempt.result) {
        Some(index) => w.u8(index as u8 + 1),
        None => {
            w.u8(0);
            w.str(&attempt.result);
        }
    }
    match attempt.status_code {
        None => w.u8(0),
        Some(code) => {
            w.u8(1);
            w.u16(code);
        }
    }
    w.opt_str(attempt.error_code.as_deref());
    w.opt_str(attempt.error_message.as_deref());
    w.opt_str(attempt.response_snippet.as_deref());
    opt_u64(&mut w, attempt.next_attempt_at);
    w.varint(attempt.plugin_logs.len() as u64);
    for line in &attempt.plugin_logs {
        w.str(line);
    }
    match &attempt.request {
        None => w.u8(0),
        Some(request) => {
            w.u8(1);
            w.str(&request.url);
            w.str(&request.method);
            w.varint(request.headers.len() as u64);
            for header in &request.headers {
                w.str(&header.name);
                w.opt_str(header.value.as_deref());
            }
            w.str(if body_from_event { "" } else { &request.body });
            w.u8(u8::from(request.body_base64) | (u8::from(request.body_truncated) << 1));
            w.varint(request.body_bytes);
        }
    }
    w.opt_str(attempt.verdict_by.as_deref());
    w.opt_str(filtered_by);
    w.buf
}

/// The attempt stored at `loc`: binary, or JSON as logs written before this codec hold it.
pub fn decode(bytes: &[u8], loc: Locator, ids: &IdKey) -> Result<StoredAttempt, StoreError> {
    let mut stored = match bytes.first() {
        Some(b'{') => serde_json::from_slice::<StoredAttempt>(bytes)
            .map_err(|err| StoreError::Corrupt(format!("an attempt record: {err}")))?,
        Some(&VERSION_1) => decode_v1(&mut Reader::new(&bytes[1..]))?,
        Some(other) => {
            return Err(StoreError::Corrupt(format!(
                "an attempt record has format version {other}, which this hookd does not know \
                 (written by a newer release?)"
            )));
        }
        None => return Err(StoreError::Corrupt("an attempt record is empty".into())),
    };
    stored.attempt.id = ids.attempt_id(loc, stored.attempt.started_at);
    Ok(stored)
}

fn decode_v1(r: &mut Reader<'_>) -> Result<StoredAttempt, StoreError> {
    let body_from_event = r.u8()? & 1 == 1;
    let delivery_id = read_id(r, DeliveryId::from_u128, DeliveryId::parse, "delivery")?;
    let webhook_id = read_id(r, WebhookId::from_u128, WebhookId::parse, "webhook")?;
    let attempt = u32::try_from(r.varint()?)
        .map_err(|_| StoreError::Corrupt("an attempt number is out of range".into()))?;
    let started_at = r.varint()?;
    let latency_ms = r.varint()?;
    let url = r.str()?;
    let result = match r.u8()? {
        0 => r.str()?,
        index => RESULTS
            .get(usize::from(index) - 1)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown attempt result byte {index}")))?
            .to_string(),
    };
    let status_code = match r.u8()? {
        0 => None,
        _ => Some(r.u16()?),
    };
    let error_code = r.opt_str()?;
    let error_message = r.opt_str()?;
    let response_snippet = r.opt_str()?;
    let next_attempt_at = read_opt_u64(r)?;
    let logs = r.varint()?;
    let mut plugin_logs = Vec::with_capacity(logs.min(64) as usize);
    for _ in 0..logs {
        plugin_logs.push(r.str()?);
    }
    let request = match r.u8()? {
        0 => None,
        _ => {
            let url = r.str()?;
            let method = r.str()?;
            let count = r.varint()?;
            let mut headers = Vec::with_capacity(count.min(64) as usize);
            for _ in 0..count {
                headers.push(SentHeader {
                    name: r.str()?,
                    value: r.opt_str()?,
                });
            }
            let body = r.str()?;
            let flags = r.u8()?;
            Some(SentRequest {
                url,
                method,
                headers,
                body,
                body_base64: flags & 1 != 0,
                body_bytes: r.varint()?,
                body_truncated: flags & 2 != 0,
            })
        }
    };
    let verdict_by = r.opt_str()?;
    let filtered_by = r.opt_str()?;
    Ok(StoredAttempt {
        attempt: AttemptRecord {
            // Set by `decode` from the record's locator.
            id: AttemptId::from_u128(0),
            delivery_id,
            webhook_id,
            attempt,
            started_at,
            url,
            latency_ms,
            result,
            status_code,
            error_code,
            error_message,
            response_snippet,
            next_attempt_at,
            plugin_logs,
            request,
            verdict_by,
        },
        filtered_by,
        body_from_event,
    })
}

/// An id of this store (prefix + 32 hex digits) as its 16 bytes, anything else as text.
fn id(w: &mut Writer, value: Option<u128>, text: &str) {
    match value {
        Some(value) => {
            w.u8(1);
            w.buf.extend_from_slice(&value.to_be_bytes());
        }
        None => {
            w.u8(0);
            w.str(text);
        }
    }
}

fn read_id<Id>(
    r: &mut Reader<'_>,
    from_u128: fn(u128) -> Id,
    parse: fn(&str) -> Option<Id>,
    kind: &str,
) -> Result<Id, StoreError> {
    match r.u8()? {
        0 => parse(&r.str()?)
            .ok_or_else(|| StoreError::Corrupt(format!("an attempt's {kind} id is malformed"))),
        _ => Ok(from_u128(u128::from_be_bytes(
            r.take(16)?.try_into().expect("16"),
        ))),
    }
}

fn opt_u64(w: &mut Writer, value: Option<u64>) {
    match value {
        None => w.u8(0),
        Some(value) => {
            w.u8(1);
            w.varint(value);
        }
    }
}

fn read_opt_u64(r: &mut Reader<'_>) -> Result<Option<u64>, StoreError> {
    match r.u8()? {
        0 => Ok(None),
        _ => r.varint().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static IDS: std::sync::LazyLock<IdKey> =
        std::sync::LazyLock::new(|| IdKey::random(Locator::ZERO));

    fn attempt(request: Option<SentRequest>) -> AttemptRecord {
        AttemptRecord {
            id: AttemptId::from_u128(0),
            delivery_id: DeliveryId::new(),
            webhook_id: WebhookId::new(),
            attempt: 3,
            started_at: 1_764_000_000_123,
            url: "http://127.0.0.1:9/hook".into(),
            latency_ms: 12,
            result: "failed".into(),
            status_code: Some(503),
            error_code: Some("http_status".into()),
            error_message: Some("the receiver answered 503".into()),
            response_snippet: Some("{\"ok\":false}".into()),
            next_attempt_at: Some(1_764_000_060_000),
            plugin_logs: vec!["info: kept".into(), "warn: ünïcode".into()],
            request,
            verdict_by: Some("plugin:body-says-ok".into()),
        }
    }

    fn request() -> SentRequest {
        SentRequest {
            url: "http://127.0.0.1:9/hook".into(),
            method: "POST".into(),
            headers: vec![
                SentHeader {
                    name: "content-type".into(),
                    value: Some("application/json".into()),
                },
                SentHeader {
                    name: "webhook-signature".into(),
                    value: None,
                },
            ],
            body: "{\"a\":1}".into(),
            body_base64: false,
            body_bytes: 7,
            body_truncated: true,
        }
    }

    fn json(value: &StoredAttempt) -> serde_json::Value {
        serde_json::to_value(value).expect("serialise")
    }

    #[test]
    fn every_field_survives_a_round_trip_and_the_id_comes_from_the_locator() {
        let loc = Locator {
            segment: 7,
            offset: 4096,
        };
        for (request, filtered_by, result) in [
            (Some(request()), Some("drop-tests"), "failed"),
            (None, None, "delivered"),
            (None, None, "a result from a later release"),
        ] {
            let mut original = attempt(request);
            original.result = result.into();
            let bytes = encode(&original, filtered_by, false);
            assert_eq!(bytes[0], VERSION_1);
            let decoded = decode(&bytes, loc, &IDS).expect("decode");
            original.id = IDS.attempt_id(loc, original.started_at);
            let expected = StoredAttempt {
                attempt: original,
                filtered_by: filtered_by.map(String::from),
                body_from_event: false,
            };
            assert_eq!(json(&decoded), json(&expected));
        }
    }

    #[test]
    fn a_body_kept_by_reference_is_left_out_and_flagged() {
        let original = attempt(Some(request()));
        let decoded = decode(&encode(&original, None, true), Locator::ZERO, &IDS).expect("decode");
        assert!(decoded.body_from_event);
        let request = decoded.attempt.request.expect("request");
        assert_eq!(request.body, "");
        assert_eq!(request.body_bytes, 7);
        assert!(request.body_truncated);
    }

    #[test]
    fn json_bodies_of_older_logs_still_read() {
        let mut original = attempt(Some(request()));
        let stored = StoredAttempt {
            attempt: original.clone(),
            filtered_by: None,
            body_from_event: true,
        };
        let old = serde_json::to_vec(&stored).expect("json");
        let loc = Locator {
            segment: 1,
            offset: 64,
        };
        let decoded = decode(&old, loc, &IDS).expect("decode");
        original.id = IDS.attempt_id(loc, original.started_at);
        assert_eq!(
            json(&decoded),
            json(&StoredAttempt {
                attempt: original,
                ..stored
            })
        );
    }

    #[test]
    fn a_binary_body_is_a_fraction_of_its_json() {
        let original = attempt(Some(request()));
        let stored = StoredAttempt {
            attempt: original.clone(),
            filtered_by: None,
            body_from_event: false,
        };
        let binary = encode(&original, None, false).len();
        let text = serde_json::to_vec(&stored).expect("json").len();
        assert!(binary * 2 < text, "binary {binary} bytes, JSON {text}");
    }

    #[test]
    fn damaged_or_unknown_bodies_are_errors_not_panics() {
        let bytes = encode(&attempt(Some(request())), Some("f"), false);
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len], Locator::ZERO, &IDS).is_err(),
                "{len} bytes"
            );
        }
        let mut newer = bytes.clone();
        newer[0] = 9;
        let err = decode(&newer, Locator::ZERO, &IDS).expect_err("unknown version");
        assert!(err.to_string().contains("format version 9"), "{err}");
        let mut bad_result = encode(&attempt(None), None, false);
        let url = b"http://127.0.0.1:9/hook";
        let at = bad_result
            .windows(url.len())
            .position(|w| w == url)
            .expect("url")
            + url.len();
        bad_result[at] = 200;
        let err = decode(&bad_result, Locator::ZERO, &IDS).expect_err("unknown result byte");
        assert!(err.to_string().contains("result byte 200"), "{err}");
        assert!(decode(&[], Locator::ZERO, &IDS).is_err());
    }
}
