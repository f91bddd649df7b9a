//! Durability: the append-only log of segment files (`<data>/log/<segment>.seg`) that holds
//! every event (payload bytes written once), every attempt and every change of a delivery.
//!
//! One writer appends ([`LogWriter`]): it encodes a group of records into one buffer, writes it
//! with one `write`, and makes it durable with one `fdatasync` (group commit) before any event
//! of the group is acknowledged. Delivery slots are rewritten in place (`pwrite`); a slot has its
//! own checksum. Readers (`Log`) use positioned reads on shared file handles, so they never
//! wait for the writer. A segment is closed at about [`SEGMENT_BYTES`] and deleted whole once
//! retention allows.
//!
//! At start the tail is checked record by record from the last checkpoint (`recovery`): a
//! half-written record (kill -9 mid-append) fails its checksum and the segment is truncated
//! there; nothing after it was acknowledged.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::codec::{
    DeliveryRef, FLAG_PURGED, HEADER_BYTES, Locator, RecordHeader, RecordKind, SLOT_BYTES, Slot,
    crc,
};
use super::record_cache::RecordCache;
use crate::store::StoreError;

/// A segment is closed once it reaches this size (a group is never split across two).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The start of every segment file: magic and segment number.
const FILE_HEADER_BYTES: u32 = 16;
const FILE_MAGIC: &[u8; 8] = b"HKDLOG02";
/// Segment files kept open at once (besides the one being written).
const OPEN_FILES: usize = 256;
/// The first read of a record: header, slots and meta usually fit.
const FIRST_READ_BYTES: usize = 4096;

fn io(err: std::io::Error) -> StoreError {
    StoreError::Io(err.to_string())
}

pub(super) fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:08}.seg"))
}

/// A record read from the log: its header, meta and (when asked for) payload.
#[derive(Debug)]
pub struct RawRecord {
    pub header: RecordHeader,
    pub slots: Vec<u8>,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The read side of the log, shared by every reader and the writer.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    files: Mutex<HashMap<u32, Arc<File>>>,
    /// Everything before this (packed locator) is written: readers read nothing beyond it.
    readable_end: AtomicU64,
    /// Everything before this is synced: no event beyond it is handed to delivery.
    durable_end: AtomicU64,
    /// Event records appended or read lately (`record_cache.rs`).
    cache: RecordCache,
}

impl Log {
    /// Segment numbers present, oldest first.
    pub fn segments(&self) -> Result<Vec<u32>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let name = name.to_string_lossy();
            if let Some(number) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                out.push(number);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn file(&self, segment: u32) -> Result<Option<Arc<File>>, StoreError> {
        let mut files = self.files.lock().expect("log files lock");
        if let Some(file) = files.get(&segment) {
            return Ok(Some(file.clone()));
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment_path(&self.dir, segment))
        {
            Ok(file) => Arc::new(file),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io(err)),
        };
        if files.len() >= OPEN_FILES {
            // Any handle will do: a reader holding one keeps it alive.
            let victim = files.keys().next().copied();
            if let Some(victim) = victim {
                files.remove(&victim);
            }
        }
        files.insert(segment, file.clone());
        Ok(Some(file))
    }

    fn forget(&self, segment: u32) {
        self.files.lock().expect("log files lock").remove(&segment);
    }

    pub fn durable_end(&self) -> Locator {
        Locator::unpack(self.durable_end.load(Ordering::Acquire))
    }

    fn readable_end(&self) -> Locator {
        Locator::unpack(self.readable_end.load(Ordering::Acquire))
    }

    fn set_readable_end(&self, end: Locator) {
        self.readable_end.store(end.pack(), Ordering::Release);
    }

    fn set_durable_end(&self, end: Locator) {
        self.set_readable_end(end);
        self.durable_end.store(end.pack(), Ordering::Release);
    }

    /// Reads `len` bytes at `offset`, fewer at the end of the file.
    fn read_at(&self, file: &File, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.read_at_least(file, offset, len, len)
    }

    /// Up to `len` bytes at `offset`, reading again only while fewer than `min` came back: a
    /// read of the newest records reaches past the end of the file, and its short count is
    /// the answer, not a reason for a second `pread`.
    fn read_at_least(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        min: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < min {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(io(err)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    /// The record at `loc` with its slots and meta checked; the payload too if `payload`.
    /// `None` when nothing valid starts there (a forged or stale id, a deleted segment), or
    /// the record is purged.
    pub fn read(&self, loc: Locator, payload: bool) -> Result<Option<RawRecord>, StoreError> {
        if loc.offset < FILE_HEADER_BYTES || loc >= self.readable_end() {
            return Ok(None);
        }
        let generation = match self.cache.get(loc, payload) {
            Ok(record) => return Ok(Some(record)),
            Err(generation) => generation,
        };
        let record = self.read_file(loc, payload)?;
        if let Some(record) = &record
            && record.header.kind == RecordKind::Event
        {
            self.cache.insert_read(loc, generation, record, payload);
        }
        Ok(record)
    }

    /// Caches an event record the writer has just appended at `loc` (`record` is what
    /// [`encode_record`](super::codec::encode_record) made of it): its deliveries read it next.
    pub fn cache_appended(&self, loc: Locator, record: Vec<u8>) {
        if let Some(header) = RecordHeader::decode(&record) {
            self.cache.insert_appended(loc, header, record);
        }
    }

    /// [`Self::read`] from the segment file.
    fn read_file(&self, loc: Locator, payload: bool) -> Result<Option<RawRecord>, StoreError> {
        let Some(file) = self.file(loc.segment)? else {
            return Ok(None);
        };
        let first =
            self.read_at_least(&file, u64::from(loc.offset), FIRST_READ_BYTES, HEADER_BYTES)?;
        let Some(header) = RecordHeader::decode(&first) else {
            return Ok(None);
        };
        if header.flags & FLAG_PURGED != 0 {
            return Ok(None);
        }
        let wanted = if payload {
            header.payload_offset() + header.payload_len as usize
        } else {
            header.payload_offset()
        };
        let bytes = if wanted <= first.len() {
            first
        } else {
            let mut bytes = first;
            let rest = wanted - bytes.len();
            let offset = u64::from(loc.offset) + bytes.len() as u64;
            bytes.extend(self.read_at(&file, offset, rest)?);
            bytes
        };
        if bytes.len() < wanted {
            return Ok(None);
        }
        let meta = &bytes[header.meta_offset()..header.payload_offset()];
        if crc(meta) != header.crc_meta {
            return Ok(None);
        }
        let payload_bytes = if payload {
            let p = &bytes[header.payload_offset()..wanted];
            if crc(p) != header.crc_payload {
                return Err(StoreError::Corrupt(format!(
                    "the payload at {}:{} fails its checksum",
                    loc.segment, loc.offset
                )));
            }
            p.to_vec()
        } else {
            Vec::new()
        };
        Ok(Some(RawRecord {
            header,
            slots: bytes[header.slots_offset()..header.meta_offset()].to_vec(),
            meta: meta.to_vec(),
            payload: payload_bytes,
        }))
    }

    /// One delivery's slot, read on its own (its record must be known valid).
    pub fn read_slot(&self, delivery: DeliveryRef) -> Result<Option<Slot>, StoreError> {
        let Some(file) = self.file(delivery.event.segment)? else {
            return Ok(None);
        };
        let offset = slot_offset(delivery);
        let bytes = self.read_at(&file, offset, SLOT_BYTES)?;
        if bytes.len() < SLOT_BYTES {
            return Ok(None);
        }
        Slot::decode(&bytes).map(Some)
    }

    /// Rewrites a delivery's slot in place: one `pwrite` of 48 bytes. A group's ~29 slot
    /// writes were measured as one read-patch-write per run of nearby slots instead (e2e bench,
    /// 5 rounds of s1 and 3 of s2 alternated): the writer's `pwrite`s per group fell from ~29
    /// to ~2 (`perf trace`), but its CPU per delivery did not move (s1 17 µs, s2 10 µs, both
    /// builds), so the simpler write stayed.
    pub fn write_slot(&self, delivery: DeliveryRef, slot: &Slot) -> Result<(), StoreError> {
        let file = self.file(delivery.event.segment)?.ok_or_else(|| {
            StoreError::Corrupt(format!("segment {} is missing", delivery.event.segment))
        })?;
        let bytes = slot.encode();
        file.write_all_at(&bytes, slot_offset(delivery))
            .map_err(io)?;
        self.cache.slot_written(delivery, &bytes);
        Ok(())
    }

    /// Marks a record purged and zeroes its payload, so its bytes are gone from the live file.
    pub fn purge(&self, loc: Locator) -> Result<(), StoreError> {
        let Some(file) = self.file(loc.segment)? else {
            return Ok(());
        };
        let first = self.read_at(&file, u64::from(loc.offset), HEADER_BYTES)?;
        let Some(mut header) = RecordHeader::decode(&first) else {
            return Ok(());
        };
        let start = u64::from(loc.offset) + header.payload_offset() as u64;
        let zeros = vec![0u8; header.payload_len as usize];
        file.write_all_at(&zeros, start).map_err(io)?;
        header.flags |= FLAG_PURGED;
        file.write_all_at(&header.encode(), u64::from(loc.offset))
            .map_err(io)?;
        self.cache.purged(loc);
        Ok(())
    }

    /// Deletes a whole segment file.
    pub fn delete_segment(&self, segment: u32) -> Result<(), StoreError> {
        self.forget(segment);
        let removed = match std::fs::remove_file(segment_path(&self.dir, segment)) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io(err)),
        };
        // After the file is gone: a read racing the delete cannot cache it again.
        self.cache.segment_deleted(segment);
        removed
    }

    /// Bytes of every segment file.
    pub fn size_on_disk(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Where the valid records of `checkpoint`'s segment end, when that is before `checkpoint`:
    /// sled's pages (and the checkpoint with them) reached the disk while the log's unsynced
    /// tail before it did not — what a power loss between a group's sled batch and the log's
    /// `fdatasync` can leave. `None` when the segment reaches the checkpoint.
    pub fn valid_end_before(&self, checkpoint: Locator) -> Result<Option<Locator>, StoreError> {
        let len = match self.file(checkpoint.segment)? {
            Some(file) => file.metadata().map_err(io)?.len(),
            None => 0,
        };
        if len >= u64::from(checkpoint.offset) {
            return Ok(None);
        }
        let start = Locator {
            segment: checkpoint.segment,
            offset: 0,
        };
        let end = self.scan_from(start, |_, _| Ok(()))?;
        Ok((end < checkpoint).then_some(end))
    }

    /// Every valid record from `from` to the end of the log, in order, with payloads; stops at
    /// the first invalid one (a torn tail), returning where the valid log ends.
    pub fn scan_from(
        &self,
        from: Locator,
        mut each: impl FnMut(Locator, RawRecord) -> Result<(), StoreError>,
    ) -> Result<Locator, StoreError> {
        let segments = self.segments()?;
        let mut end = from;
        for segment in segments.into_iter().filter(|s| *s >= from.segment) {
            let Some(file) = self.file(segment)? else {
                continue;
            };
            let len = file.metadata().map_err(io)?.len();
            let mut offset = if segment == from.segment {
                u64::from(from.offset.max(FILE_HEADER_BYTES))
            } else {
                u64::from(FILE_HEADER_BYTES)
            };
            end = Locator {
                segment,
                offset: offset as u32,
            };
            while offset < len {
                let loc = Locator {
                    segment,
                    offset: offset as u32,
                };
                let head = self.read_at(&file, offset, HEADER_BYTES)?;
                let Some(header) = RecordHeader::decode(&head) else {
                    return Ok(end);
                };
                let total = header.total_len();
                if offset + total as u64 > len {
                    return Ok(end);
                }
                let bytes = self.read_at(&file, offset, total)?;
                let meta = &bytes[header.meta_offset()..header.payload_offset()];
                let payload = &bytes[header.payload_offset()
                    ..header.payload_offset() + header.payload_len as usize];
                let purged = header.flags & FLAG_PURGED != 0;
                if crc(meta) != header.crc_meta || (!purged && crc(payload) != header.crc_payload) {
                    return Ok(end);
                }
                let record = RawRecord {
                    header,
                    slots: bytes[header.slots_offset()..header.meta_offset()].to_vec(),
                    meta: meta.to_vec(),
                    payload: payload.to_vec(),
                };
                each(loc, record)?;
                offset += total as u64;
                end = Locator {
                    segment,
                    offset: offset as u32,
                };
            }
        }
        Ok(end)
    }
}

fn slot_offset(delivery: DeliveryRef) -> u64 {
    u64::from(delivery.event.offset)
        + (HEADER_BYTES + usize::from(delivery.index) * SLOT_BYTES) as u64
}

/// The write side of the log: owned by the store's single writer.
#[derive(Debug)]
pub struct LogWriter {
    log: Arc<Log>,
    segment: u32,
    file: Arc<File>,
    /// Bytes in the segment file, written or buffered.
    end: u32,
    /// Records appended but not yet written.
    buffer: Vec<u8>,
    /// Where the buffer starts in the segment.
    buffer_start: u32,
    /// Segments with writes (appends, slots) not yet synced.
    dirty: BTreeSet<u32>,
}

impl LogWriter {
    /// Opens the log in `dir` (created if missing) for writing after `valid_end` — the end of
    /// the last valid record found by recovery, or `None` for a new log. A torn tail after it is
    /// cut off.
    pub fn open(dir: &Path) -> Result<(Arc<Log>, Option<u32>), StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let log = Arc::new(Log {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
            readable_end: AtomicU64::new(u64::MAX),
            durable_end: AtomicU64::new(u64::MAX),
            cache: RecordCache::default(),
        });
        let last = log.segments()?.last().copied();
        Ok((log, last))
    }

    /// Starts writing at `end` (after recovery), truncating anything after it in its segment;
    /// a new log starts segment 1.
    pub fn resume(log: Arc<Log>, end: Option<Locator>) -> Result<LogWriter, StoreError> {
        let (segment, offset) = match end {
            Some(end) => (end.segment, end.offset),
            None => (1, FILE_HEADER_BYTES),
        };
        let file = match log.file(segment)? {
            Some(file) => {
                file.set_len(u64::from(offset)).map_err(io)?;
                file
            }
            None => create_segment(&log, segment)?,
        };
        file.sync_data().map_err(io)?;
        let end = Locator { segment, offset };
        log.set_durable_end(end);
        Ok(LogWriter {
            log,
            segment,
            file,
            end: offset,
            buffer: Vec::with_capacity(1 << 20),
            buffer_start: offset,
            dirty: BTreeSet::new(),
        })
    }

    /// Where the next record goes.
    pub fn end(&self) -> Locator {
        Locator {
            segment: self.segment,
            offset: self.end,
        }
    }

    /// Appends a record (written by [`Self::write`]); returns where it starts. A segment that
    /// has reached its size is closed first (written and synced), unless it is empty.
    pub fn append(&mut self, record: &[u8]) -> Result<Locator, StoreError> {
        let full = u64::from(self.end) + record.len() as u64 > SEGMENT_BYTES;
        if full && self.end > FILE_HEADER_BYTES {
            self.rotate()?;
        }
        if u64::from(self.end) + record.len() as u64 > u64::from(u32::MAX) {
            return Err(StoreError::Io(
                "a group is larger than a segment can hold".into(),
            ));
        }
        let loc = self.end();
        self.buffer.extend_from_slice(record);
        self.end += record.len() as u32;
        Ok(loc)
    }

    fn rotate(&mut self) -> Result<(), StoreError> {
        self.write()?;
        self.file.sync_data().map_err(io)?;
        self.dirty.remove(&self.segment);
        let next = self.segment + 1;
        self.file = create_segment(&self.log, next)?;
        self.segment = next;
        self.end = FILE_HEADER_BYTES;
        self.buffer_start = FILE_HEADER_BYTES;
        Ok(())
    }

    /// Writes the buffered records to the segment file (not synced) and lets readers see
    /// them; delivery sees events only once synced ([`Self::sync`]).
    pub fn write(&mut self) -> Result<(), StoreError> {
        if !self.buffer.is_empty() {
            self.file
                .write_all_at(&self.buffer, u64::from(self.buffer_start))
                .map_err(io)?;
            self.buffer.clear();
            self.dirty.insert(self.segment);
        }
        self.buffer_start = self.end;
        self.log.set_readable_end(self.end());
        Ok(())
    }

    /// Notes a slot or purge write to a segment (synced by the next [`Self::sync`]).
    pub fn touched(&mut self, segment: u32) {
        self.dirty.insert(segment);
    }

    /// Makes every write so far durable, and lets readers see up to the end.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.write()?;
        for segment in std::mem::take(&mut self.dirty) {
            if segment == self.segment {
                self.file.sync_data().map_err(io)?;
            } else if let Some(file) = self.log.file(segment)? {
                file.sync_data().map_err(io)?;
            }
        }
        self.log.set_durable_end(self.end());
        Ok(())
    }
}

fn create_segment(log: &Log, segment: u32) -> Result<Arc<File>, StoreError> {
    let path = segment_path(&log.dir, segment);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    let mut header = Vec::with_capacity(FILE_HEADER_BYTES as usize);
    header.extend_from_slice(FILE_MAGIC);
    header.extend_from_slice(&segment.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    file.write_all(&header).map_err(io)?;
    file.sync_data().map_err(io)?;
    // The new file's name must survive a crash too.
    if let Ok(dir) = File::open(&log.dir) {
        let _ = dir.sync_all();
    }
    let file = Arc::new(file);
    log.files
        .lock()
        .expect("log files lock")
        .insert(segment, file.clone());
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::super::codec::{RecordKind, encode_record};
    use super::*;

    fn record(n: usize) -> Vec<u8> {
        encode_record(
            RecordKind::Event,
            &[Slot::pending(1)],
            b"meta",
            &vec![b'x'; n],
        )
    }

    #[test]
    fn records_are_read_back_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (log, last) = LogWriter::open(dir.path()).unwrap();
        assert_eq!(last, None);
        let mut writer = LogWriter::resume(log.clone(), None).unwrap();
        let a = writer.append(&record(10)).unwrap();
        let b = writer.append(&record(20)).unwrap();
        assert_eq!(
            log.read(a, true).unwrap().map(|r| r.payload.len()),
            None,
            "not yet durable"
        );
        writer.sync().unwrap();
        assert_eq!(log.read(b, true).unwrap().unwrap().payload, vec![b'x'; 20]);
        let end = writer.end();
        // Half a record at the tail, as a kill -9 mid-write leaves it.
        let torn = record(30);
        std::fs::OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), 1))
            .unwrap()
            .write_all(&torn[..torn.len() / 2])
            .unwrap();
        drop(writer);
        let (log, last) = LogWriter::open(dir.path()).unwrap();
        assert_eq!(last, Some(1));
        let mut seen = Vec::new();
        let valid_end = log
            .scan_from(
                Locator {
                    segment: 1,
                    offset: 0,
                },
                |loc, _| {
                    seen.push(loc);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(seen, vec![a, b]);
        assert_eq!(valid_end, end);
        let mut writer = LogWriter::resume(log.clone(), Some(valid_end)).unwrap();
        let c = writer.append(&record(5)).unwrap();
        assert_eq!(c, end, "the torn bytes are overwritten");
        writer.sync().unwrap();
        assert_eq!(log.read(c, true).unwrap().unwrap().payload.len(), 5);
    }

    #[test]
    fn slots_are_rewritten_in_place_and_purge_zeroes_the_payload() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = LogWriter::open(dir.path()).unwrap();
        let mut writer = LogWriter::resume(log.clone(), None).unwrap();
        let a = writer.append(&record(10)).unwrap();
        writer.sync().unwrap();
        let delivery = DeliveryRef { event: a, index: 0 };
        let mut slot = log.read_slot(delivery).unwrap().unwrap();
        assert_eq!(slot, Slot::pending(1));
        slot.attempts = 4;
        log.write_slot(delivery, &slot).unwrap();
        assert_eq!(log.read_slot(delivery).unwrap().unwrap().attempts, 4);
        // The record's own checksums do not cover the slots.
        assert!(log.read(a, true).unwrap().is_some());
        log.purge(a).unwrap();
        assert!(log.read(a, true).unwrap().is_none());
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert!(!bytes.windows(10).any(|w| w == [b'x'; 10]));
    }

    #[test]
    fn a_cached_record_follows_its_slot_writes_its_purge_and_its_segments_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = LogWriter::open(dir.path()).unwrap();
        let mut writer = LogWriter::resume(log.clone(), None).unwrap();
        let a = writer.append(&record(10)).unwrap();
        writer.sync().unwrap();
        // Read without the payload, then with it: the second read fills the payload in.
        assert!(log.read(a, false).unwrap().unwrap().payload.is_empty());
        assert_eq!(log.read(a, true).unwrap().unwrap().payload, vec![b'x'; 10]);
        // Scribbled over behind the log's back, the file no longer holds a valid record: a
        // read still answers, so it came from the cache.
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .unwrap();
        file.write_all_at(&[0xff; 4], u64::from(a.offset)).unwrap();
        assert!(log.read_file(a, true).unwrap().is_none());
        let cached = log.read(a, true).unwrap().unwrap();
        assert_eq!(cached.payload, vec![b'x'; 10]);
        // A slot written through the log is what the cached record shows next.
        let delivery = DeliveryRef { event: a, index: 0 };
        let mut slot = Slot::decode(&cached.slots[..SLOT_BYTES]).unwrap();
        slot.attempts = 7;
        log.write_slot(delivery, &slot).unwrap();
        let again = log.read(a, false).unwrap().unwrap();
        assert_eq!(
            Slot::decode(&again.slots[..SLOT_BYTES]).unwrap().attempts,
            7
        );
        // Purged, it is gone from the cache too (the file's header is scribbled: the purge
        // rewrites it, so restore it first).
        file.write_all_at(&record(10)[..4], u64::from(a.offset))
            .unwrap();
        log.purge(a).unwrap();
        assert!(log.read(a, false).unwrap().is_none());
        // A record cached as the writer appends it is not readable before it is written.
        let bytes = record(10);
        let b = writer.append(&bytes).unwrap();
        log.cache_appended(b, bytes);
        assert!(log.read(b, true).unwrap().is_none(), "not yet written");
        writer.sync().unwrap();
        assert_eq!(log.read(b, true).unwrap().unwrap().payload, vec![b'x'; 10]);
        // A record of a deleted segment is not answered from the cache.
        assert!(log.read(b, true).unwrap().is_some());
        log.delete_segment(b.segment).unwrap();
        assert!(log.read(b, true).unwrap().is_none());
    }

    #[test]
    fn a_full_segment_is_closed_and_the_next_one_continues_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = LogWriter::open(dir.path()).unwrap();
        let mut writer = LogWriter::resume(log.clone(), None).unwrap();
        let big = record(SEGMENT_BYTES as usize / 2);
        let a = writer.append(&big).unwrap();
        let b = writer.append(&big).unwrap();
        writer.sync().unwrap();
        assert_eq!((a.segment, b.segment), (1, 2));
        assert_eq!(log.segments().unwrap(), vec![1, 2]);
        let mut count = 0;
        log.scan_from(
            Locator {
                segment: 1,
                offset: 0,
            },
            |_, _| {
                count += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(count, 2);
        log.delete_segment(1).unwrap();
        assert!(log.read(a, false).unwrap().is_none());
    }
}
