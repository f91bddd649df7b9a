//! The values of the sled tree that gather many small facts into one key: schedule pages,
//! listing pages, idempotency buckets, usage and the segment catalogue. Each is
//! a version byte and packed little-endian fields; a page holds up to a few hundred entries, so
//! the writer rewrites one value per page per group instead of one key per delivery.

use super::codec::{DeliveryRef, Locator, Reader, Writer};
use crate::store::StoreError;

const VERSION: u8 = 1;

fn check_version(r: &mut Reader<'_>, what: &str) -> Result<(), StoreError> {
    match r.u8()? {
        VERSION => Ok(()),
        other => Err(StoreError::Corrupt(format!(
            "{what} version {other} is not known to this hookd"
        ))),
    }
}

/// Most entries of a schedule page; a full page splits in two (or, when the new entry goes
/// last, a new page starts). Each group rewrites the pages it touches whole into sled's own
/// log, so pages are kept small: with 256 entries sled's I/O threads took a quarter of the
/// engine's CPU in scenario 1 of the e2e bench (perf).
pub const QUEUE_PAGE_ENTRIES: usize = 64;
/// Most entries of a listing page (the newest page is rewritten by each group that adds to it).
pub const LIST_PAGE_ENTRIES: usize = 128;

/// One delivery in a webhook's schedule, due at `due` (entries sort by due time, then
/// delivery); `created_at` is part of the delivery's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueEntry {
    pub due: u64,
    pub delivery: DeliveryRef,
    pub created_at: u64,
}

pub fn encode_queue_page(entries: &[QueueEntry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(4 + entries.len() * 26);
    w.u8(VERSION);
    w.varint(entries.len() as u64);
    for e in entries {
        w.u64(e.due);
        w.delivery(e.delivery);
        w.u64(e.created_at);
    }
    w.buf
}

/// The entry count of an encoded schedule page, without decoding it.
pub fn queue_page_len(bytes: &[u8]) -> Result<usize, StoreError> {
    let mut r = Reader::new(bytes);
    check_version(&mut r, "a schedule page")?;
    Ok(r.varint()? as usize)
}

pub fn decode_queue_page(bytes: &[u8]) -> Result<Vec<QueueEntry>, StoreError> {
    let mut r = Reader::new(bytes);
    check_version(&mut r, "a schedule page")?;
    let n = r.varint()? as usize;
    let mut out = Vec::with_capacity(n.min(QUEUE_PAGE_ENTRIES * 2));
    for _ in 0..n {
        out.push(QueueEntry {
            due: r.u64()?,
            delivery: r.delivery()?,
            created_at: r.u64()?,
        });
    }
    Ok(out)
}

/// One event in a tenant's listing page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventEntry {
    pub event: Locator,
    pub created_at: u64,
}

pub fn encode_events_page(entries: &[EventEntry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(4 + entries.len() * 16);
    w.u8(VERSION);
    w.varint(entries.len() as u64);
    for e in entries {
        w.locator(e.event);
        w.u64(e.created_at);
    }
    w.buf
}

pub fn decode_events_page(bytes: &[u8]) -> Result<Vec<EventEntry>, StoreError> {
    let mut r = Reader::new(bytes);
    check_version(&mut r, "an event page")?;
    let n = r.varint()? as usize;
    let mut out = Vec::with_capacity(n.min(LIST_PAGE_ENTRIES * 2));
    for _ in 0..n {
        out.push(EventEntry {
            event: r.locator()?,
            created_at: r.u64()?,
        });
    }
    Ok(out)
}

/// One delivery in a webhook's listing page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryEntry {
    pub delivery: DeliveryRef,
    pub created_at: u64,
}

pub fn encode_deliveries_page(entries: &[DeliveryEntry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(4 + entries.len() * 18);
    w.u8(VERSION);
    w.varint(entries.len() as u64);
    for e in entries {
        w.delivery(e.delivery);
        w.u64(e.created_at);
    }
    w.buf
}

pub fn decode_deliveries_page(bytes: &[u8]) -> Result<Vec<DeliveryEntry>, StoreError> {
    let mut r = Reader::new(bytes);
    check_version(&mut r, "a delivery page")?;
    let n = r.varint()? as usize;
    let mut out = Vec::with_capacity(n.min(LIST_PAGE_ENTRIES * 2));
    for _ in 0..n {
        out.push(DeliveryEntry {
            delivery: r.delivery()?,
            created_at: r.u64()?,
        });
    }
    Ok(out)
}

/// One idempotency key (as a hash) and the event it names, until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyEntry {
    pub hash: [u8; 16],
    pub event: Locator,
    pub expires_at: u64,
}

pub fn encode_bucket(entries: &[IdempotencyEntry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(4 + entries.len() * 32);
    w.u8(VERSION);
    w.varint(entries.len() as u64);
    for e in entries {
        w.buf.extend_from_slice(&e.hash);
        w.locator(e.event);
        w.u64(e.expires_at);
    }
    w.buf
}

pub fn decode_bucket(bytes: &[u8]) -> Result<Vec<IdempotencyEntry>, StoreError> {
    let mut r = Reader::new(bytes);
    check_version(&mut r, "an idempotency bucket")?;
    let n = r.varint()? as usize;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        out.push(IdempotencyEntry {
            hash: r.take(16)?.try_into().expect("16 bytes"),
            event: r.locator()?,
            expires_at: r.u64()?,
        });
    }
    Ok(out)
}

/// What a tenant holds, kept by the writer as it writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub events: u64,
    pub pending: u64,
    pub payload_bytes: u64,
}

impl Usage {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(32);
        w.u8(VERSION);
        w.varint(self.events);
        w.varint(self.pending);
        w.varint(self.payload_bytes);
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Usage, StoreError> {
        let mut r = Reader::new(bytes);
        check_version(&mut r, "a usage record")?;
        Ok(Usage {
            events: r.varint()?,
            pending: r.varint()?,
            payload_bytes: r.varint()?,
        })
    }
}

/// One segment of the log as the catalogue knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Creation time of its newest record (ms).
    pub last_ms: u64,
    /// Its deliveries still queued: the segment stays while any is.
    pub queued: u64,
    pub events: u64,
}

impl SegmentInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(24);
        w.u8(VERSION);
        w.varint(self.last_ms);
        w.varint(self.queued);
        w.varint(self.events);
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentInfo, StoreError> {
        let mut r = Reader::new(bytes);
        check_version(&mut r, "a segment entry")?;
        Ok(SegmentInfo {
            last_ms: r.varint()?,
            queued: r.varint()?,
            events: r.varint()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(n: u32) -> DeliveryRef {
        DeliveryRef {
            event: Locator {
                segment: 1,
                offset: 16 + n * 8,
            },
            index: (n % 3) as u16,
        }
    }

    #[test]
    fn every_value_round_trips() {
        let queue: Vec<QueueEntry> = (0..5)
            .map(|n| QueueEntry {
                due: 1_000 + u64::from(n),
                delivery: delivery(n),
                created_at: 7,
            })
            .collect();
        assert_eq!(
            decode_queue_page(&encode_queue_page(&queue)).unwrap(),
            queue
        );
        assert_eq!(queue_page_len(&encode_queue_page(&queue)).unwrap(), 5);
        let events = vec![EventEntry {
            event: delivery(1).event,
            created_at: 9,
        }];
        assert_eq!(
            decode_events_page(&encode_events_page(&events)).unwrap(),
            events
        );
        let deliveries = vec![DeliveryEntry {
            delivery: delivery(2),
            created_at: 9,
        }];
        assert_eq!(
            decode_deliveries_page(&encode_deliveries_page(&deliveries)).unwrap(),
            deliveries
        );
        let bucket = vec![IdempotencyEntry {
            hash: [7; 16],
            event: delivery(3).event,
            expires_at: 86_400_000,
        }];
        assert_eq!(decode_bucket(&encode_bucket(&bucket)).unwrap(), bucket);
        let usage = Usage {
            events: 1,
            pending: 2,
            payload_bytes: 3,
        };
        assert_eq!(Usage::decode(&usage.encode()).unwrap(), usage);
        let info = SegmentInfo {
            last_ms: 5,
            queued: 6,
            events: 7,
        };
        assert_eq!(SegmentInfo::decode(&info.encode()).unwrap(), info);
        assert!(decode_queue_page(&[9, 0]).is_err());
    }
}
