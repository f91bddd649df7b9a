//! The binary codec of the sled backend: where a record lives (locators, and the ids built from
//! them), the layout of log records and delivery slots, and the packed entries of sled pages.
//!
//! Every id of an event, delivery or attempt names where its record is in the log: a UUIDv7
//! (so ids keep the `prefix + 32 hex` form and sort by creation millisecond) whose random bits
//! carry the segment, the byte offset and the fan-out index, put through a keyed permutation
//! ([`IdKey`]) so that an id says nothing about other tenants' records. Reading by id is one `pread`, with no
//! index in sled. A forged id cannot reach another tenant's data: every record starts with a
//! NUL byte (which JSON text — all that tenants can put into the log — never contains), its
//! parts are checksummed, and its tenant is compared with the caller's.
//!
//! Hot records are binary (little-endian, varint lengths), attempt bodies included
//! (`attempt_codec.rs`); webhook bodies are JSON inside their record (written rarely, and free
//! to gain `#[serde(default)]` fields).

use crate::ids::{AttemptId, DeliveryId, EventId, WebhookId};
use crate::store::{DeliveryStatus, StoreError};

/// Where a record starts: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locator {
    pub segment: u32,
    pub offset: u32,
}

impl Locator {
    pub const ZERO: Locator = Locator {
        segment: 0,
        offset: 0,
    };

    pub fn pack(self) -> u64 {
        (u64::from(self.segment) << 32) | u64::from(self.offset)
    }

    pub fn unpack(value: u64) -> Locator {
        Locator {
            segment: (value >> 32) as u32,
            offset: value as u32,
        }
    }
}

/// One delivery: its event's record and its place in the event's fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryRef {
    pub event: Locator,
    pub index: u16,
}

/// Most deliveries one event fans out to (the index is 16 bits wide).
pub const MAX_FAN_OUT: usize = u16::MAX as usize;

// ---- ids ----------------------------------------------------------------------------------

const KIND_EVENT: u8 = 0;
const KIND_DELIVERY: u8 = 1;
const KIND_ATTEMPT: u8 = 2;

/// The offset bit that marks a keyed id. Records start below [`super::log::SEGMENT_BYTES`]
/// (64 MiB), so an offset never has it; ids written before ids were keyed never have it either.
const KEYED: u32 = 1 << 31;
/// Bits of the place a keyed id hides: segment (24), offset (31), fan-out index (16).
const PLACE_BITS: u32 = 71;
const HIGH_BITS: u32 = 35;
const LOW_BITS: u32 = PLACE_BITS - HIGH_BITS;
const FEISTEL_ROUNDS: u64 = 8;

/// What makes this store's ids opaque. An id names where its record is, but the place is put
/// through a keyed permutation (an alternating Feistel network over its 71 bits, SipHash-1-3
/// as the round function, the key random per data dir), so ids of one tenant say nothing
/// about how much other tenants wrote between them. Only the creation millisecond is in the
/// clear, as in any UUIDv7. Records written before a data dir had its key (`keyed_from`: the
/// segment after the last one then on disk) keep the plain ids their clients already hold;
/// the offset's top bit tells the two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdKey {
    key: (u64, u64),
    keyed_from: Locator,
}

impl IdKey {
    /// Bytes of the stored form (key, then `keyed_from` packed).
    pub const STORED_BYTES: usize = 24;

    /// A fresh key for records from `keyed_from` on.
    pub fn random(keyed_from: Locator) -> Self {
        IdKey {
            key: rand::random(),
            keyed_from,
        }
    }

    pub fn to_bytes(self) -> [u8; Self::STORED_BYTES] {
        let mut out = [0; Self::STORED_BYTES];
        out[..8].copy_from_slice(&self.key.0.to_be_bytes());
        out[8..16].copy_from_slice(&self.key.1.to_be_bytes());
        out[16..].copy_from_slice(&self.keyed_from.pack().to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::STORED_BYTES {
            return None;
        }
        let word = |i: usize| Some(u64::from_be_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
        Some(IdKey {
            key: (word(0)?, word(8)?),
            keyed_from: Locator::unpack(word(16)?),
        })
    }

    fn round(&self, round: u64, half: u64, bits: u32) -> u64 {
        use std::hash::Hasher as _;
        let mut hasher = siphasher::sip::SipHasher13::new_with_keys(self.key.0, self.key.1);
        hasher.write_u64(round);
        hasher.write_u64(half);
        hasher.finish() & ((1 << bits) - 1)
    }

    /// The Feistel network's steps in `rounds`' order: each step changes one half by a
    /// function of the other, so the same steps in reverse order undo them.
    fn feistel(&self, place: u128, rounds: impl Iterator<Item = u64>) -> u128 {
        let mut high = (place >> LOW_BITS) as u64;
        let mut low = place as u64 & ((1 << LOW_BITS) - 1);
        for round in rounds {
            if round % 2 == 0 {
                low ^= self.round(round, high, LOW_BITS);
            } else {
                high ^= self.round(round, low, HIGH_BITS);
            }
        }
        (u128::from(high) << LOW_BITS) | u128::from(low)
    }

    fn permute(&self, place: u128) -> u128 {
        self.feistel(place, 0..FEISTEL_ROUNDS)
    }

    fn unpermute(&self, place: u128) -> u128 {
        self.feistel(place, (0..FEISTEL_ROUNDS).rev())
    }

    /// A UUIDv7 carrying `ms`, version and variant, and in its 74 random bits: segment (24
    /// bits), offset (32), index (16) and kind (2) — the first three permuted, with the
    /// offset's top bit set, for records from `keyed_from` on.
    fn uuid_for(&self, ms: u64, loc: Locator, index: u16, kind: u8) -> u128 {
        debug_assert!(loc.offset & KEYED == 0, "records start below 2 GiB");
        let (seg, offset, index) = if loc >= self.keyed_from {
            let place = (u128::from(loc.segment & 0x00ff_ffff) << 47)
                | (u128::from(loc.offset & !KEYED) << 16)
                | u128::from(index);
            let hidden = self.permute(place);
            (
                (hidden >> 47) as u32,
                ((hidden >> 16) as u32 & !KEYED) | KEYED,
                hidden as u16,
            )
        } else {
            (loc.segment & 0x00ff_ffff, loc.offset, index)
        };
        let seg = u128::from(seg);
        let mut value: u128 = u128::from(ms & 0xffff_ffff_ffff) << 80;
        value |= 0x7 << 76; // version 7
        value |= (seg >> 12) << 64; // rand_a: high 12 bits of the segment
        value |= 0b10 << 62; // variant
        value |= (seg & 0xfff) << 50;
        value |= u128::from(offset) << 18;
        value |= u128::from(index) << 2;
        value |= u128::from(kind & 0b11);
        value
    }

    /// The place and kind an id of this store names; `None` for an id no record of this
    /// store could have (another generator's, or a keyed id of a place written plain).
    fn parse_uuid(&self, value: u128) -> Option<(Locator, u16, u8)> {
        if (value >> 76) & 0xf != 0x7 || (value >> 62) & 0b11 != 0b10 {
            return None;
        }
        let seg_high = ((value >> 64) & 0xfff) as u32;
        let seg_low = ((value >> 50) & 0xfff) as u32;
        let segment = (seg_high << 12) | seg_low;
        let offset = ((value >> 18) & 0xffff_ffff) as u32;
        let index = ((value >> 2) & 0xffff) as u16;
        let kind = (value & 0b11) as u8;
        if offset & KEYED == 0 {
            let loc = Locator { segment, offset };
            return (loc < self.keyed_from).then_some((loc, index, kind));
        }
        let hidden =
            (u128::from(segment) << 47) | (u128::from(offset & !KEYED) << 16) | u128::from(index);
        let place = self.unpermute(hidden);
        let loc = Locator {
            segment: (place >> 47) as u32,
            offset: (place >> 16) as u32 & !KEYED,
        };
        (loc >= self.keyed_from).then_some((loc, place as u16, kind))
    }

    pub fn event_id(&self, loc: Locator, created_ms: u64) -> EventId {
        EventId::from_u128(self.uuid_for(created_ms, loc, 0, KIND_EVENT))
    }

    pub fn delivery_id(&self, delivery: DeliveryRef, created_ms: u64) -> DeliveryId {
        DeliveryId::from_u128(self.uuid_for(
            created_ms,
            delivery.event,
            delivery.index,
            KIND_DELIVERY,
        ))
    }

    pub fn attempt_id(&self, loc: Locator, started_ms: u64) -> AttemptId {
        AttemptId::from_u128(self.uuid_for(started_ms, loc, 0, KIND_ATTEMPT))
    }

    /// The record an event id names, if it is one of this store's ids.
    pub fn parse_event_id(&self, id: &EventId) -> Option<Locator> {
        match self.parse_uuid(id.to_u128()?)? {
            (loc, 0, KIND_EVENT) => Some(loc),
            _ => None,
        }
    }

    /// The delivery a delivery id names, if it is one of this store's ids.
    pub fn parse_delivery_id(&self, id: &DeliveryId) -> Option<DeliveryRef> {
        match self.parse_uuid(id.to_u128()?)? {
            (event, index, KIND_DELIVERY) => Some(DeliveryRef { event, index }),
            _ => None,
        }
    }
}

/// The 16 bytes of a webhook id (`wh_` + 32 hex digits).
pub fn webhook_bytes(id: &WebhookId) -> [u8; 16] {
    id.to_u128().unwrap_or(0).to_be_bytes()
}

pub fn webhook_from_bytes(bytes: [u8; 16]) -> WebhookId {
    WebhookId::from_u128(u128::from_be_bytes(bytes))
}

// ---- primitive encoding ---------------------------------------------------------------------

/// Appends to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    pub fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.str(v);
            }
        }
    }

    pub fn locator(&mut self, loc: Locator) {
        self.u32(loc.segment);
        self.u32(loc.offset);
    }

    pub fn delivery(&mut self, delivery: DeliveryRef) {
        self.locator(delivery.event);
        self.u16(delivery.index);
    }
}

/// Reads what [`Writer`] wrote; every read fails cleanly at the end of the input.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

fn short() -> StoreError {
    StoreError::Corrupt("a record ends early".into())
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.data.len() < n {
            return Err(short());
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, StoreError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    pub fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    pub fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    pub fn varint(&mut self) -> Result<u64, StoreError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(StoreError::Corrupt("a varint is too long".into()))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = self.varint()?;
        self.take(usize::try_from(len).map_err(|_| short())?)
    }

    pub fn str(&mut self) -> Result<String, StoreError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| StoreError::Corrupt("a stored string is not UTF-8".into()))
    }

    pub fn opt_str(&mut self) -> Result<Option<String>, StoreError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.str().map(Some),
        }
    }

    /// Whether everything was read (a field added at the end is absent from older records).
    pub fn at_end(&self) -> bool {
        self.data.is_empty()
    }

    pub fn locator(&mut self) -> Result<Locator, StoreError> {
        Ok(Locator {
            segment: self.u32()?,
            offset: self.u32()?,
        })
    }

    pub fn delivery(&mut self) -> Result<DeliveryRef, StoreError> {
        Ok(DeliveryRef {
            event: self.locator()?,
            index: self.u16()?,
        })
    }
}

// ---- log records ----------------------------------------------------------------------------

/// What a log record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An accepted event with its fan-out and one delivery slot per webhook.
    Event = 1,
    /// An attempt and the change it made to its delivery.
    Attempt = 2,
    /// A change of a delivery without an attempt (manual retry, recover, settle).
    Transition = 3,
    /// A webhook written (JSON with sealed secrets).
    WebhookPut = 4,
    /// A webhook deleted (its queued deliveries fail with `webhook_deleted`).
    WebhookDelete = 5,
    /// Records of a tenant purged on request or by retention.
    Purge = 6,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => RecordKind::Event,
            2 => RecordKind::Attempt,
            3 => RecordKind::Transition,
            4 => RecordKind::WebhookPut,
            5 => RecordKind::WebhookDelete,
            6 => RecordKind::Purge,
            _ => return None,
        })
    }
}

/// Bytes of a record header.
pub const HEADER_BYTES: usize = 24;
/// Bytes of one delivery slot.
pub const SLOT_BYTES: usize = 48;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// The header flag of a purged record (its payload is zeroed; it reads as absent).
pub const FLAG_PURGED: u8 = 1;

/// A record's header:
/// `[0x00 'H' 'K' kind][meta_len u32][payload_len u32][crc meta u32][crc payload u32]
///  [slots u16][flags u8][0]`, then the slots, the meta and the payload, padded to 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub meta_len: u32,
    pub payload_len: u32,
    pub crc_meta: u32,
    pub crc_payload: u32,
    pub slots: u16,
    pub flags: u8,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&[0, b'H', b'K', self.kind as u8]);
        out[4..8].copy_from_slice(&self.meta_len.to_le_bytes());
        out[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.crc_meta.to_le_bytes());
        out[16..20].copy_from_slice(&self.crc_payload.to_le_bytes());
        out[20..22].copy_from_slice(&self.slots.to_le_bytes());
        out[22] = self.flags;
        out
    }

    /// `None` when the bytes are not a record header (a torn tail, a forged offset).
    pub fn decode(bytes: &[u8]) -> Option<RecordHeader> {
        let bytes: &[u8; HEADER_BYTES] = bytes.get(..HEADER_BYTES)?.try_into().ok()?;
        if bytes[0..3] != [0, b'H', b'K'] || bytes[23] != 0 {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4"));
        Some(RecordHeader {
            kind: RecordKind::from_u8(bytes[3])?,
            meta_len: u32_at(4),
            payload_len: u32_at(8),
            crc_meta: u32_at(12),
            crc_payload: u32_at(16),
            slots: u16::from_le_bytes([bytes[20], bytes[21]]),
            flags: bytes[22],
        })
    }

    pub fn slots_offset(&self) -> usize {
        HEADER_BYTES
    }

    pub fn meta_offset(&self) -> usize {
        HEADER_BYTES + usize::from(self.slots) * SLOT_BYTES
    }

    pub fn payload_offset(&self) -> usize {
        self.meta_offset() + self.meta_len as usize
    }

    /// Bytes of the whole record, padding included.
    pub fn total_len(&self) -> usize {
        align(self.payload_offset() + self.payload_len as usize)
    }
}

pub fn align(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

pub fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A whole record, ready to append: header, slots, meta, payload and padding.
pub fn encode_record(kind: RecordKind, slots: &[Slot], meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let header = RecordHeader {
        kind,
        meta_len: meta.len() as u32,
        payload_len: payload.len() as u32,
        crc_meta: crc(meta),
        crc_payload: crc(payload),
        slots: slots.len() as u16,
        flags: 0,
    };
    let mut out = Vec::with_capacity(header.total_len());
    out.extend_from_slice(&header.encode());
    for slot in slots {
        out.extend_from_slice(&slot.encode());
    }
    out.extend_from_slice(meta);
    out.extend_from_slice(payload);
    out.resize(header.total_len(), 0);
    out
}

// ---- delivery slots -------------------------------------------------------------------------

/// Last error codes kept in a slot as one byte; any other code reads from the last attempt.
const ERROR_CODES: [&str; 27] = [
    "",
    "http_status",
    "timeout",
    "connect_refused",
    "connect_error",
    "connection_reset",
    "connection_closed",
    "dns",
    "blocked_address",
    "invalid_url",
    "invalid_response",
    "tls",
    "request_error",
    "webhook_deleted",
    "event_missing",
    "plugin_trap",
    "plugin_timeout",
    "plugin_memory",
    "plugin_fuel",
    "plugin_error",
    "plugin_invalid_output",
    "plugin_invalid_event",
    "invalid_method",
    "filtered",
    "response_verdict",
    "plugin_not_found",
    "plugin_version_not_found",
];
/// The byte of a last error that is not in [`ERROR_CODES`].
const ERROR_OTHER: u8 = 0xff;

pub fn status_byte(status: DeliveryStatus) -> u8 {
    match status {
        DeliveryStatus::Pending => 1,
        DeliveryStatus::InFlight => 2,
        DeliveryStatus::Delivered => 3,
        DeliveryStatus::Failed => 4,
        DeliveryStatus::Filtered => 5,
    }
}

pub fn status_from_byte(v: u8) -> Result<DeliveryStatus, StoreError> {
    Ok(match v {
        1 => DeliveryStatus::Pending,
        2 => DeliveryStatus::InFlight,
        3 => DeliveryStatus::Delivered,
        4 => DeliveryStatus::Failed,
        5 => DeliveryStatus::Filtered,
        other => return Err(StoreError::Corrupt(format!("delivery status byte {other}"))),
    })
}

/// The mutable state of one delivery, kept in place in its event's record (48 bytes, with its
/// own checksum: it is rewritten after the record's checksummed parts were written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub status: DeliveryStatus,
    /// Set when the delivery was purged (it reads as absent).
    pub purged: bool,
    pub attempts: u16,
    pub updated_at: u64,
    pub next_attempt_at: Option<u64>,
    pub last_attempt_at: Option<u64>,
    pub last_status_code: Option<u16>,
    /// `None`, a known code, or `Some("")`-like "other" (read from the last attempt).
    pub last_error: SlotError,
    /// The newest attempt's record.
    pub last_attempt: Option<Locator>,
}

/// The last error of a delivery as a slot keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotError {
    None,
    Known(&'static str),
    /// A code outside the table: the last attempt record has it.
    Other,
}

impl SlotError {
    pub fn of(code: Option<&str>) -> SlotError {
        match code {
            None => SlotError::None,
            Some(code) => match ERROR_CODES.iter().skip(1).find(|known| **known == code) {
                Some(known) => SlotError::Known(known),
                None => SlotError::Other,
            },
        }
    }

    fn byte(&self) -> u8 {
        match self {
            SlotError::None => 0,
            SlotError::Known(code) => ERROR_CODES
                .iter()
                .position(|known| known == code)
                .map_or(ERROR_OTHER, |i| i as u8),
            SlotError::Other => ERROR_OTHER,
        }
    }

    fn from_byte(v: u8) -> SlotError {
        match v {
            0 => SlotError::None,
            ERROR_OTHER => SlotError::Other,
            i => ERROR_CODES
                .get(usize::from(i))
                .map_or(SlotError::Other, |code| SlotError::Known(code)),
        }
    }
}

impl Slot {
    /// A new delivery, due at `created_at`.
    pub fn pending(created_at: u64) -> Slot {
        Slot {
            status: DeliveryStatus::Pending,
            purged: false,
            attempts: 0,
            updated_at: created_at,
            next_attempt_at: Some(created_at),
            last_attempt_at: None,
            last_status_code: None,
            last_error: SlotError::None,
            last_attempt: None,
        }
    }

    /// The 44 bytes before the checksum.
    fn encode_body(&self, w: &mut Writer) {
        w.u8(status_byte(self.status));
        w.u8(u8::from(self.purged));
        w.u16(self.attempts);
        w.u32(0);
        w.u64(self.updated_at);
        w.u64(self.next_attempt_at.map_or(0, |t| t.max(1)));
        w.u64(self.last_attempt_at.map_or(0, |t| t.max(1)));
        w.u16(self.last_status_code.unwrap_or(0));
        w.u8(self.last_error.byte());
        w.u8(0);
        w.u64(self.last_attempt.map_or(0, |l| l.pack()));
    }

    pub fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut w = Writer::with_capacity(SLOT_BYTES);
        self.encode_body(&mut w);
        let sum = crc(&w.buf);
        w.u32(sum);
        w.buf.try_into().expect("a slot is 48 bytes")
    }

    /// Also checks the slot's checksum (a torn in-place write after a power loss).
    pub fn decode(bytes: &[u8]) -> Result<Slot, StoreError> {
        let bytes = bytes.get(..SLOT_BYTES).ok_or_else(short)?;
        let sum = u32::from_le_bytes(bytes[44..48].try_into().expect("4"));
        if crc(&bytes[..44]) != sum {
            return Err(StoreError::Corrupt(
                "a delivery slot fails its checksum".into(),
            ));
        }
        let mut r = Reader::new(&bytes[..44]);
        let status = status_from_byte(r.u8()?)?;
        let purged = r.u8()? != 0;
        let attempts = r.u16()?;
        r.u32()?;
        let updated_at = r.u64()?;
        let next = r.u64()?;
        let last_at = r.u64()?;
        let code = r.u16()?;
        let error = SlotError::from_byte(r.u8()?);
        r.u8()?;
        let last_attempt = r.u64()?;
        Ok(Slot {
            status,
            purged,
            attempts,
            updated_at,
            next_attempt_at: (next != 0).then_some(next),
            last_attempt_at: (last_at != 0).then_some(last_at),
            last_status_code: (code != 0).then_some(code),
            last_error: error,
            last_attempt: (last_attempt != 0).then(|| Locator::unpack(last_attempt)),
        })
    }
}

// ---- record metas ---------------------------------------------------------------------------

/// The meta of an event record: everything but the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub tenant: String,
    pub created_at: u64,
    pub event_type: String,
    pub channel: Option<String>,
    pub idempotency_key: Option<String>,
    /// Until when the idempotency key names this event (ms; 0 without a key).
    pub idempotency_until: u64,
    pub webhooks: Vec<WebhookId>,
}

impl EventMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.webhooks.len() * 16);
        w.str(&self.tenant);
        w.u64(self.created_at);
        w.str(&self.event_type);
        w.opt_str(self.channel.as_deref());
        w.opt_str(self.idempotency_key.as_deref());
        w.u64(self.idempotency_until);
        w.varint(self.webhooks.len() as u64);
        for webhook in &self.webhooks {
            w.buf.extend_from_slice(&webhook_bytes(webhook));
        }
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<EventMeta, StoreError> {
        let mut r = Reader::new(bytes);
        let tenant = r.str()?;
        let created_at = r.u64()?;
        let event_type = r.str()?;
        let channel = r.opt_str()?;
        let idempotency_key = r.opt_str()?;
        let idempotency_until = r.u64()?;
        let n = r.varint()? as usize;
        let mut webhooks = Vec::with_capacity(n.min(MAX_FAN_OUT));
        for _ in 0..n {
            webhooks.push(webhook_from_bytes(
                r.take(16)?.try_into().expect("16 bytes"),
            ));
        }
        Ok(EventMeta {
            tenant,
            created_at,
            event_type,
            channel,
            idempotency_key,
            idempotency_until,
            webhooks,
        })
    }
}

/// The meta of an attempt or transition record: which delivery, and its state before and
/// after (what replaying the record re-applies to the schedule and the counters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionMeta {
    pub tenant: String,
    pub delivery: DeliveryRef,
    pub webhook: WebhookId,
    /// The delivery's creation time (its statistics day).
    pub created_at: u64,
    pub old_status: DeliveryStatus,
    pub old_due: Option<u64>,
    pub new: Slot,
    /// The attempt's latency, counted in the statistics (attempts only).
    pub latency_ms: Option<u64>,
    /// The delivery's previous attempt (attempts only).
    pub previous_attempt: Option<Locator>,
    /// The channel of the delivery's event (its channel statistics scope). Written last:
    /// records from before channel statistics end without it and read as `None`.
    pub channel: Option<String>,
}

impl TransitionMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        w.str(&self.tenant);
        w.delivery(self.delivery);
        w.buf.extend_from_slice(&webhook_bytes(&self.webhook));
        w.u64(self.created_at);
        w.u8(status_byte(self.old_status));
        w.u64(self.old_due.unwrap_or(0));
        w.buf.extend_from_slice(&self.new.encode());
        w.u64(self.latency_ms.map_or(u64::MAX, |l| l.min(u64::MAX - 1)));
        w.u64(self.previous_attempt.map_or(0, |l| l.pack()));
        w.opt_str(self.channel.as_deref());
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<TransitionMeta, StoreError> {
        let mut r = Reader::new(bytes);
        let tenant = r.str()?;
        let delivery = r.delivery()?;
        let webhook = webhook_from_bytes(r.take(16)?.try_into().expect("16 bytes"));
        let created_at = r.u64()?;
        let old_status = status_from_byte(r.u8()?)?;
        let old_due = r.u64()?;
        let new = Slot::decode(r.take(SLOT_BYTES)?)?;
        let latency = r.u64()?;
        let previous = r.u64()?;
        let channel = if r.at_end() { None } else { r.opt_str()? };
        Ok(TransitionMeta {
            tenant,
            delivery,
            webhook,
            created_at,
            old_status,
            old_due: (old_due != 0).then_some(old_due),
            new,
            latency_ms: (latency != u64::MAX).then_some(latency),
            previous_attempt: (previous != 0).then(|| Locator::unpack(previous)),
            channel,
        })
    }
}

/// The meta of a webhook record (put or delete); a put's payload is the webhook's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookMeta {
    pub tenant: String,
    pub webhook: WebhookId,
}

impl WebhookMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(48);
        w.str(&self.tenant);
        w.buf.extend_from_slice(&webhook_bytes(&self.webhook));
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<WebhookMeta, StoreError> {
        let mut r = Reader::new(bytes);
        Ok(WebhookMeta {
            tenant: r.str()?,
            webhook: webhook_from_bytes(r.take(16)?.try_into().expect("16 bytes")),
        })
    }
}

/// One event of a purge: the event record itself goes (all its deliveries are gone), or only
/// some of its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgedEvent {
    pub event: Locator,
    pub whole_event: bool,
    /// (fan-out index, statistics-free facts needed to undo the usage count: none).
    pub deliveries: Vec<u16>,
    /// Payload bytes released (whole events only).
    pub payload_bytes: u64,
    /// Attempts of the purged deliveries.
    pub attempts: u64,
}

/// The meta of a purge record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeMeta {
    pub tenant: String,
    pub events: Vec<PurgedEvent>,
}

impl PurgeMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(32 + self.events.len() * 24);
        w.str(&self.tenant);
        w.varint(self.events.len() as u64);
        for event in &self.events {
            w.locator(event.event);
            w.u8(u8::from(event.whole_event));
            w.varint(event.payload_bytes);
            w.varint(event.attempts);
            w.varint(event.deliveries.len() as u64);
            for index in &event.deliveries {
                w.u16(*index);
            }
        }
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<PurgeMeta, StoreError> {
        let mut r = Reader::new(bytes);
        let tenant = r.str()?;
        let n = r.varint()? as usize;
        let mut events = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let event = r.locator()?;
            let whole_event = r.u8()? != 0;
            let payload_bytes = r.varint()?;
            let attempts = r.varint()?;
            let count = r.varint()? as usize;
            let mut deliveries = Vec::with_capacity(count.min(MAX_FAN_OUT));
            for _ in 0..count {
                deliveries.push(r.u16()?);
            }
            events.push(PurgedEvent {
                event,
                whole_event,
                deliveries,
                payload_bytes,
                attempts,
            });
        }
        Ok(PurgeMeta { tenant, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u32, offset: u32) -> Locator {
        Locator { segment, offset }
    }

    #[test]
    fn ids_carry_their_locator_and_keep_the_uuid_v7_form() {
        let ids = IdKey::random(Locator::ZERO);
        let loc = at(0x00ab_cdef, 0x03ff_fff0);
        let ms = 1_764_547_200_123;
        let event = ids.event_id(loc, ms);
        assert_eq!(ids.parse_event_id(&event), Some(loc));
        let uuid = uuid::Uuid::parse_str(&event.as_str()[4..]).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), ms);

        let delivery = DeliveryRef {
            event: loc,
            index: 65_535,
        };
        let id = ids.delivery_id(delivery, ms);
        assert_eq!(ids.parse_delivery_id(&id), Some(delivery));
        // Kinds do not mix: an event's hex under the delivery prefix names nothing.
        let confused = DeliveryId::parse(&format!("dlv_{}", &event.as_str()[4..])).unwrap();
        assert_eq!(ids.parse_delivery_id(&confused), None);
        assert_eq!(
            ids.parse_event_id(&EventId::parse(&format!("evt_{}", &id.as_str()[4..])).unwrap()),
            None
        );
        // An id of another generator (random v7 bits) rarely parses, and never panics.
        for _ in 0..100 {
            let _ = ids.parse_event_id(&EventId::new());
        }
        let stored = IdKey::from_bytes(&ids.to_bytes()).unwrap();
        assert_eq!(stored, ids);
        assert_eq!(IdKey::from_bytes(&ids.to_bytes()[1..]), None);
    }

    #[test]
    fn keyed_ids_say_nothing_of_the_records_between_them() {
        let ids = IdKey::random(Locator::ZERO);
        let ms = 5;
        // Records 512 bytes apart: the hidden bits of their ids look unrelated, and every
        // place still reads back.
        let mut previous: Option<u128> = None;
        let mut flipped = Vec::new();
        for n in 0..200u32 {
            let loc = at(7, 4096 + n * 512);
            let id = ids.event_id(loc, ms);
            assert_eq!(ids.parse_event_id(&id), Some(loc));
            let bits = id.to_u128().unwrap() & ((1 << 74) - 1);
            if let Some(previous) = previous {
                flipped.push((bits ^ previous).count_ones());
            }
            previous = Some(bits);
        }
        flipped.sort_unstable();
        let median = flipped[flipped.len() / 2];
        assert!(
            (25..=50).contains(&median),
            "neighbouring records' ids differ in {median} of 74 bits"
        );
        // Another data dir's key gives the same place another id.
        let other = IdKey::random(Locator::ZERO);
        assert_ne!(
            other.event_id(at(7, 4096), ms),
            ids.event_id(at(7, 4096), ms)
        );
        assert_eq!(
            other
                .parse_event_id(&ids.event_id(at(7, 4096), ms))
                .filter(|l| *l == at(7, 4096)),
            None
        );
    }

    #[test]
    fn places_written_before_the_key_keep_their_plain_ids() {
        let ids = IdKey::random(at(3, 8192));
        // The form ids had before they were keyed (known answers).
        let old = ids.event_id(at(1, 4096), 5);
        assert_eq!(old.as_str(), "evt_00000000000570008004000040000000");
        assert_eq!(ids.parse_event_id(&old), Some(at(1, 4096)));
        let old_delivery = DeliveryRef {
            event: at(2, 0x12_3456),
            index: 3,
        };
        let id = ids.delivery_id(old_delivery, 1_764_547_200_123);
        assert_eq!(ids.parse_delivery_id(&id), Some(old_delivery));
        // From `keyed_from` on, ids are keyed; a keyed id naming an earlier place, or a plain
        // one naming a later place, is no id of this store.
        let new = at(3, 8192);
        let keyed = ids.event_id(new, 5);
        assert_ne!(keyed.to_u128().unwrap() & (u128::from(KEYED) << 18), 0);
        assert_eq!(ids.parse_event_id(&keyed), Some(new));
        let plain_later = IdKey::random(at(u32::MAX, 0)).event_id(new, 5);
        assert_eq!(ids.parse_event_id(&plain_later), None);
        let earlier = IdKey::random(Locator::ZERO);
        assert_ne!(
            ids.parse_event_id(&EventId::from_u128(earlier.uuid_for(
                5,
                at(1, 4096),
                0,
                KIND_EVENT
            ))),
            Some(at(1, 4096))
        );
    }

    #[test]
    fn webhook_ids_round_trip_through_sixteen_bytes() {
        let id = WebhookId::new();
        assert_eq!(webhook_from_bytes(webhook_bytes(&id)), id);
    }

    #[test]
    fn slots_round_trip_and_a_torn_slot_is_detected() {
        let slot = Slot {
            status: DeliveryStatus::Failed,
            purged: false,
            attempts: 3,
            updated_at: 99,
            next_attempt_at: Some(1_000),
            last_attempt_at: Some(90),
            last_status_code: Some(503),
            last_error: SlotError::of(Some("http_status")),
            last_attempt: Some(Locator {
                segment: 3,
                offset: 64,
            }),
        };
        let bytes = slot.encode();
        assert_eq!(Slot::decode(&bytes).unwrap(), slot);
        let mut torn = bytes;
        torn[10] ^= 0xff;
        assert!(Slot::decode(&torn).is_err());
        assert_eq!(SlotError::of(Some("something_new")), SlotError::Other);
        assert_eq!(
            Slot::decode(&Slot::pending(7).encode()).unwrap(),
            Slot::pending(7)
        );
    }

    #[test]
    fn records_round_trip_and_json_bytes_never_look_like_a_header() {
        let meta = EventMeta {
            tenant: "acme".into(),
            created_at: 42,
            event_type: "order.paid".into(),
            channel: Some("+15550100".into()),
            idempotency_key: None,
            idempotency_until: 0,
            webhooks: vec![WebhookId::new(), WebhookId::new()],
        };
        let payload = br#"{"a":1}"#;
        let record = encode_record(
            RecordKind::Event,
            &[Slot::pending(42), Slot::pending(42)],
            &meta.encode(),
            payload,
        );
        assert_eq!(record.len() % RECORD_ALIGN, 0);
        let header = RecordHeader::decode(&record).unwrap();
        assert_eq!(header.total_len(), record.len());
        let meta_bytes = &record[header.meta_offset()..header.payload_offset()];
        assert_eq!(crc(meta_bytes), header.crc_meta);
        assert_eq!(EventMeta::decode(meta_bytes).unwrap(), meta);
        // No byte of JSON text is NUL, so no offset inside a payload reads as a header.
        for start in 0..payload.len() {
            assert!(RecordHeader::decode(&payload[start..]).is_none());
        }
    }

    #[test]
    fn the_plugin_and_response_error_codes_are_kept_in_the_slot() {
        for code in [
            "response_verdict",
            "plugin_not_found",
            "plugin_version_not_found",
            "http_status",
        ] {
            let error = SlotError::of(Some(code));
            assert_eq!(error, SlotError::Known(code));
            assert_eq!(SlotError::from_byte(error.byte()), SlotError::Known(code));
        }
        assert_eq!(SlotError::of(Some("something_new")), SlotError::Other);
    }

    #[test]
    fn transition_and_purge_metas_round_trip() {
        let t = TransitionMeta {
            tenant: "t".into(),
            delivery: DeliveryRef {
                event: Locator {
                    segment: 1,
                    offset: 8,
                },
                index: 2,
            },
            webhook: WebhookId::new(),
            created_at: 5,
            old_status: DeliveryStatus::Pending,
            old_due: Some(5),
            new: Slot::pending(6),
            latency_ms: Some(12),
            previous_attempt: None,
            channel: Some("+15550100".into()),
        };
        assert_eq!(TransitionMeta::decode(&t.encode()).unwrap(), t);
        // A record written before channels were in transitions reads with none.
        let without = TransitionMeta {
            channel: None,
            ..t.clone()
        };
        let mut old_bytes = t.encode();
        old_bytes.truncate(old_bytes.len() - (2 + "+15550100".len()));
        assert_eq!(TransitionMeta::decode(&old_bytes).unwrap(), without);
        assert_eq!(TransitionMeta::decode(&without.encode()).unwrap(), without);
        let p = PurgeMeta {
            tenant: "t".into(),
            events: vec![PurgedEvent {
                event: Locator::ZERO,
                whole_event: true,
                deliveries: vec![0, 1],
                payload_bytes: 1024,
                attempts: 3,
            }],
        };
        assert_eq!(PurgeMeta::decode(&p.encode()).unwrap(), p);
    }
}
