//! Events on sled: read by id straight from the log (the id names the record), listed newest
//! first through the tenant's `L` pages.

use serde_json::value::RawValue;

use super::codec::{EventMeta, IdKey, Locator, RecordKind};
use super::keys;
use super::log::RawRecord;
use super::pages;
use super::{MAX_SCAN_ROWS, SledStore};
use crate::ids::EventId;
use crate::store::{EventFilter, EventRecord, Page, Result, StoreError};

impl SledStore {
    /// The event record at `loc` with its meta, if it is an event of `tenant` (and not purged).
    pub(super) fn read_event(
        &self,
        tenant: &str,
        loc: Locator,
        payload: bool,
    ) -> Result<Option<(EventMeta, RawRecord)>> {
        let Some(record) = self.shared.log.read(loc, payload)? else {
            return Ok(None);
        };
        if record.header.kind != RecordKind::Event {
            return Ok(None);
        }
        let meta = EventMeta::decode(&record.meta)?;
        if meta.tenant != tenant {
            return Ok(None);
        }
        Ok(Some((meta, record)))
    }

    pub(super) fn event(&self, tenant: &str, id: &EventId) -> Result<Option<EventRecord>> {
        let Some(loc) = self.shared.ids.parse_event_id(id) else {
            return Ok(None);
        };
        let Some((meta, record)) = self.read_event(tenant, loc, true)? else {
            return Ok(None);
        };
        event_record(&self.shared.ids, loc, meta, record.payload).map(Some)
    }

    pub(super) fn list_events(
        &self,
        tenant: &str,
        filter: &EventFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<EventRecord>> {
        let before = cursor
            .and_then(EventId::parse)
            .and_then(|id| self.shared.ids.parse_event_id(&id));
        let prefix = keys::tenant_prefix(keys::EVENTS, tenant);
        let end = match before {
            Some(loc) => [keys::events_page(tenant, loc), vec![0]].concat(),
            None => keys::prefix_end(&prefix),
        };
        let mut items = Vec::new();
        let mut scanned = 0;
        for page in self.shared.tree.range(prefix.clone()..end).rev() {
            let (_, value) = page?;
            for entry in pages::decode_events_page(&value)?.into_iter().rev() {
                if before.is_some_and(|b| entry.event >= b) {
                    continue;
                }
                scanned += 1;
                let last = self
                    .shared
                    .ids
                    .event_id(entry.event, entry.created_at)
                    .to_string();
                if filter.after_ms.is_none_or(|t| entry.created_at >= t)
                    && filter.before_ms.is_none_or(|t| entry.created_at < t)
                    && let Some((meta, record)) = self.read_event(tenant, entry.event, true)?
                    && filter
                        .event_type
                        .as_ref()
                        .is_none_or(|t| *t == meta.event_type)
                    && filter
                        .channel
                        .as_ref()
                        .is_none_or(|c| meta.channel.as_ref() == Some(c))
                {
                    items.push(event_record(
                        &self.shared.ids,
                        entry.event,
                        meta,
                        record.payload,
                    )?);
                    if items.len() == limit {
                        return Ok(Page {
                            items,
                            next: Some(last),
                        });
                    }
                }
                if scanned >= MAX_SCAN_ROWS {
                    return Ok(Page {
                        items,
                        next: Some(last),
                    });
                }
            }
        }
        Ok(Page { items, next: None })
    }
}

pub(super) fn event_record(
    ids: &IdKey,
    loc: Locator,
    meta: EventMeta,
    payload: Vec<u8>,
) -> Result<EventRecord> {
    let json = String::from_utf8(payload)
        .map_err(|_| StoreError::Corrupt("an event payload is not UTF-8".into()))?;
    let payload =
        RawValue::from_string(json).map_err(|err| StoreError::Corrupt(err.to_string()))?;
    Ok(EventRecord {
        id: ids.event_id(loc, meta.created_at),
        event_type: meta.event_type,
        channel: meta.channel,
        idempotency_key: meta.idempotency_key,
        created_at: meta.created_at,
        payload,
    })
}
