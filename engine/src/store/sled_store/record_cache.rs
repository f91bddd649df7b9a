//! Event records kept in memory, so the reads that follow the first one do not go back to the
//! segment file: every recorded outcome re-reads the record its attempt has just read, and a
//! fan-out of ten reads one record twenty times. Two FIFOs bounded by bytes, as in S3-FIFO:
//! records the writer appends enter a small one (read within milliseconds when deliveries keep
//! pace), and move to the main one when read; a record first read from the file (deliveries
//! behind, the appended copy gone) enters the main one. So a backlog's stream of appends never
//! pushes out the records its deliveries are reading. Records larger than
//! [`MAX_RECORD_BYTES`] are never kept.
//!
//! The cache stays what the file says. Slots are the only bytes of a record rewritten in place
//! ([`super::log::Log::write_slot`]), and a purge the only other change: each patches or drops
//! the cached entry after writing the file, and bumps `generation`, so a read that missed, went
//! to the file and raced such a write never caches what it read before the write.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::codec::{DeliveryRef, HEADER_BYTES, Locator, RecordHeader, SLOT_BYTES};
use super::log::RawRecord;

/// Bytes of appended records not read yet, at most (~15 ms of s1's events).
const FRESH_BYTES: usize = 256 * 1024;
/// Bytes of records read, at most.
const MAIN_BYTES: usize = 1024 * 1024;
/// A record larger than this is read from its file every time.
const MAX_RECORD_BYTES: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct RecordCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// Appended by the writer, not read since.
    Fresh,
    /// Read at least once.
    Main,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    records: HashMap<Locator, Cached>,
    fresh: Fifo,
    main: Fifo,
    inserted: u64,
}

/// One queue's order, oldest first, with each entry's number (a replaced, promoted or removed
/// entry leaves its old place behind, which eviction skips), and the bytes it holds.
#[derive(Debug, Default)]
struct Fifo {
    order: VecDeque<(Locator, u64)>,
    bytes: usize,
}

#[derive(Debug)]
struct Cached {
    number: u64,
    queue: Queue,
    header: RecordHeader,
    /// The record as in the file from its header on, through its payload when `with_payload`
    /// (else through its meta): one allocation per record.
    bytes: Vec<u8>,
    with_payload: bool,
}

impl Inner {
    fn fifo(&mut self, queue: Queue) -> &mut Fifo {
        match queue {
            Queue::Fresh => &mut self.fresh,
            Queue::Main => &mut self.main,
        }
    }

    fn remove(&mut self, loc: &Locator) {
        if let Some(old) = self.records.remove(loc) {
            self.fifo(old.queue).bytes -= old.bytes.len();
        }
    }

    /// Appends `loc` to `queue` and drops that queue's oldest entries beyond its bytes.
    fn enqueue(&mut self, loc: Locator, number: u64, queue: Queue, len: usize) {
        let Inner {
            records,
            fresh,
            main,
            ..
        } = self;
        let (fifo, capacity) = match queue {
            Queue::Fresh => (fresh, FRESH_BYTES),
            Queue::Main => (main, MAIN_BYTES),
        };
        fifo.bytes += len;
        fifo.order.push_back((loc, number));
        if fifo.order.len() > 2 * records.len() + 64 {
            // Left-behind places outnumber the live ones: keep only the live ones.
            fifo.order
                .retain(|(loc, number)| is_at(records, loc, *number, queue));
        }
        while fifo.bytes > capacity {
            let Some((oldest, number)) = fifo.order.pop_front() else {
                break;
            };
            if is_at(records, &oldest, number, queue)
                && let Some(old) = records.remove(&oldest)
            {
                fifo.bytes -= old.bytes.len();
            }
        }
    }
}

/// Whether `loc`'s live entry is the one placed in `queue` as `number`.
fn is_at(records: &HashMap<Locator, Cached>, loc: &Locator, number: u64, queue: Queue) -> bool {
    records
        .get(loc)
        .is_some_and(|c| c.number == number && c.queue == queue)
}

impl RecordCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("record cache lock")
    }

    /// The record at `loc` if cached (with its payload when `payload`), else the generation to
    /// pass to [`Self::insert_read`] after reading the file. A fresh record read moves to the
    /// main queue.
    pub fn get(&self, loc: Locator, payload: bool) -> Result<RawRecord, u64> {
        let mut inner = self.lock();
        let generation = inner.generation;
        let Some(cached) = inner.records.get_mut(&loc) else {
            return Err(generation);
        };
        if payload && !cached.with_payload {
            return Err(generation);
        }
        let header = cached.header;
        let bytes = &cached.bytes;
        let payload_bytes = match payload {
            true => {
                let end = header.payload_offset() + header.payload_len as usize;
                bytes[header.payload_offset()..end].to_vec()
            }
            false => Vec::new(),
        };
        let record = RawRecord {
            header,
            slots: bytes[header.slots_offset()..header.meta_offset()].to_vec(),
            meta: bytes[header.meta_offset()..header.payload_offset()].to_vec(),
            payload: payload_bytes,
        };
        if cached.queue == Queue::Fresh {
            cached.queue = Queue::Main;
            let (number, len) = (cached.number, cached.bytes.len());
            inner.fresh.bytes -= len;
            inner.enqueue(loc, number, Queue::Main, len);
        }
        Ok(record)
    }

    /// Whether a record of this size is kept.
    fn keeps(header: &RecordHeader) -> bool {
        header.payload_offset() + header.payload_len as usize <= MAX_RECORD_BYTES
    }

    /// Keeps a record just read from the file (checked), unless a slot write or purge happened
    /// since `generation`.
    pub fn insert_read(
        &self,
        loc: Locator,
        generation: u64,
        record: &RawRecord,
        with_payload: bool,
    ) {
        if !Self::keeps(&record.header) {
            return;
        }
        let end = match with_payload {
            true => record.header.payload_offset() + record.payload.len(),
            false => record.header.payload_offset(),
        };
        let mut bytes = Vec::with_capacity(end);
        bytes.extend_from_slice(&record.header.encode());
        bytes.extend_from_slice(&record.slots);
        bytes.extend_from_slice(&record.meta);
        if with_payload {
            bytes.extend_from_slice(&record.payload);
        }
        let mut inner = self.lock();
        if inner.generation == generation {
            put(
                &mut inner,
                loc,
                record.header,
                bytes,
                with_payload,
                Queue::Main,
            );
        }
    }

    /// Keeps a record the writer has just encoded (`bytes`, padding and all): no one can have
    /// read it before.
    pub fn insert_appended(&self, loc: Locator, header: RecordHeader, bytes: Vec<u8>) {
        if Self::keeps(&header) {
            put(&mut self.lock(), loc, header, bytes, true, Queue::Fresh);
        }
    }

    /// After a slot of `delivery` was rewritten in the file: the cached record gets it too.
    pub fn slot_written(&self, delivery: DeliveryRef, slot: &[u8]) {
        let mut inner = self.lock();
        inner.generation += 1;
        let at = HEADER_BYTES + usize::from(delivery.index) * SLOT_BYTES;
        if let Some(cached) = inner.records.get_mut(&delivery.event)
            && let Some(bytes) = cached.bytes.get_mut(at..at + SLOT_BYTES)
        {
            bytes.copy_from_slice(slot);
        }
    }

    /// After the record at `loc` was purged in the file.
    pub fn purged(&self, loc: Locator) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.remove(&loc);
    }

    /// After a whole segment was deleted.
    pub fn segment_deleted(&self, segment: u32) {
        let mut inner = self.lock();
        inner.generation += 1;
        let gone: Vec<Locator> = inner
            .records
            .keys()
            .filter(|loc| loc.segment == segment)
            .copied()
            .collect();
        for loc in gone {
            inner.remove(&loc);
        }
    }
}

fn put(
    inner: &mut Inner,
    loc: Locator,
    header: RecordHeader,
    bytes: Vec<u8>,
    with_payload: bool,
    queue: Queue,
) {
    inner.remove(&loc);
    inner.inserted += 1;
    let number = inner.inserted;
    let len = bytes.len();
    inner.records.insert(
        loc,
        Cached {
            number,
            queue,
            header,
            bytes,
            with_payload,
        },
    );
    inner.enqueue(loc, number, queue, len);
}

#[cfg(test)]
mod tests {
    use super::super::codec::{RecordKind, Slot, encode_record};
    use super::*;

    fn raw(payload: usize) -> RawRecord {
        let bytes = encode_record(
            RecordKind::Event,
            &[Slot::pending(1), Slot::pending(1)],
            b"meta",
            &vec![b'x'; payload],
        );
        let header = RecordHeader::decode(&bytes).unwrap();
        RawRecord {
            header,
            slots: bytes[header.slots_offset()..header.meta_offset()].to_vec(),
            meta: b"meta".to_vec(),
            payload: vec![b'x'; payload],
        }
    }

    fn loc(offset: u32) -> Locator {
        Locator { segment: 1, offset }
    }

    #[test]
    fn a_read_that_raced_a_slot_write_or_a_purge_is_not_cached() {
        let cache = RecordCache::default();
        let generation = cache.get(loc(16), true).unwrap_err();
        cache.slot_written(
            DeliveryRef {
                event: loc(99),
                index: 0,
            },
            &[0; SLOT_BYTES],
        );
        cache.insert_read(loc(16), generation, &raw(10), true);
        assert!(cache.get(loc(16), false).is_err(), "read before the write");
        let generation = cache.get(loc(16), true).unwrap_err();
        cache.purged(loc(99));
        cache.insert_read(loc(16), generation, &raw(10), true);
        assert!(cache.get(loc(16), false).is_err(), "read before the purge");
        let generation = cache.get(loc(16), true).unwrap_err();
        cache.insert_read(loc(16), generation, &raw(10), true);
        assert_eq!(cache.get(loc(16), true).unwrap().payload.len(), 10);
    }

    #[test]
    fn a_slot_write_patches_only_its_slot_of_the_cached_record() {
        let cache = RecordCache::default();
        let generation = cache.get(loc(16), false).unwrap_err();
        cache.insert_read(loc(16), generation, &raw(10), false);
        assert!(
            cache.get(loc(16), true).is_err(),
            "cached without its payload"
        );
        cache.slot_written(
            DeliveryRef {
                event: loc(16),
                index: 1,
            },
            &[7; SLOT_BYTES],
        );
        let slots = cache.get(loc(16), false).unwrap().slots;
        assert_eq!(slots[..SLOT_BYTES], raw(10).slots[..SLOT_BYTES]);
        assert_eq!(slots[SLOT_BYTES..], [7; SLOT_BYTES]);
    }

    fn size(record: &RawRecord) -> usize {
        HEADER_BYTES + record.slots.len() + record.meta.len() + record.payload.len()
    }

    fn appended(cache: &RecordCache, at: Locator) {
        let bytes = encode_record(
            RecordKind::Event,
            &[Slot::pending(1)],
            b"meta",
            &[b'y'; 1000],
        );
        let header = RecordHeader::decode(&bytes).unwrap();
        cache.insert_appended(at, header, bytes);
    }

    #[test]
    fn each_queue_holds_at_most_its_bytes_oldest_out_first_and_no_large_record() {
        let cache = RecordCache::default();
        let each = raw(1000);
        let count = 3 * MAIN_BYTES / size(&each);
        for n in 0..count as u32 {
            let generation = cache.get(loc(16 + n * 2048), true).unwrap_err();
            cache.insert_read(loc(16 + n * 2048), generation, &each, true);
        }
        for n in 0..count as u32 {
            appended(
                &cache,
                Locator {
                    segment: 2,
                    offset: 16 + n * 2048,
                },
            );
        }
        let inner = cache.lock();
        assert!(inner.main.bytes <= MAIN_BYTES);
        assert!(inner.main.bytes > MAIN_BYTES - 2 * size(&each));
        assert!(inner.fresh.bytes <= FRESH_BYTES);
        assert!(inner.fresh.bytes > FRESH_BYTES - 2 * size(&each));
        let held: usize = inner.records.values().map(|c| c.bytes.len()).sum();
        assert_eq!(held, inner.main.bytes + inner.fresh.bytes);
        assert!(inner.main.order.len() <= 2 * inner.records.len() + 64);
        drop(inner);
        assert!(cache.get(loc(16), true).is_err(), "the oldest went first");
        let newest = loc(16 + (count as u32 - 1) * 2048);
        assert!(
            cache.get(newest, true).is_ok(),
            "appends do not push out what was read"
        );
        let generation = cache.get(loc(8), true).unwrap_err();
        cache.insert_read(loc(8), generation, &raw(MAX_RECORD_BYTES + 1), true);
        assert!(cache.get(loc(8), false).is_err());
    }

    #[test]
    fn an_appended_record_read_moves_to_the_main_queue_and_outlives_later_appends() {
        let cache = RecordCache::default();
        let first = Locator {
            segment: 1,
            offset: 16,
        };
        appended(&cache, first);
        let record = cache.get(first, true).unwrap();
        assert_eq!(record.payload, vec![b'y'; 1000]);
        assert_eq!(record.meta, b"meta");
        // Twice the fresh queue's bytes of appends never read.
        for n in 1..=(2 * FRESH_BYTES / 1000) as u32 {
            appended(
                &cache,
                Locator {
                    segment: 1,
                    offset: 16 + n * 2048,
                },
            );
        }
        assert!(cache.get(first, true).is_ok(), "promoted when read");
        let second = Locator {
            segment: 1,
            offset: 16 + 2048,
        };
        assert!(cache.get(second, false).is_err(), "never read, pushed out");
        let inner = cache.lock();
        let held: usize = inner.records.values().map(|c| c.bytes.len()).sum();
        assert_eq!(held, inner.main.bytes + inner.fresh.bytes);
    }
}
