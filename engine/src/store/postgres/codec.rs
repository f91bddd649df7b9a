//! Rows ↔ records: ids are stored as the UUID after their prefix, times as `bigint`
//! milliseconds, delivery statuses as their API words; attempts and webhooks as their JSON.

use serde_json::value::RawValue;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Failure, PgResult};
use crate::ids::{AttemptId, DeliveryId, EventId, WebhookId};
use crate::store::{DeliveryRecord, DeliveryStatus, EventRecord, StoreError};

/// A prefixed id of `ids.rs`: `prefix` + 32 lowercase hex digits of a UUID.
pub(super) trait Prefixed: Sized {
    const PREFIX: &'static str;
    fn parse_text(text: &str) -> Option<Self>;
    fn text(&self) -> &str;
}

macro_rules! prefixed {
    ($($id:ty),*) => {$(
        impl Prefixed for $id {
            const PREFIX: &'static str = <$id>::PREFIX;
            fn parse_text(text: &str) -> Option<Self> {
                <$id>::parse(text)
            }
            fn text(&self) -> &str {
                self.as_str()
            }
        }
    )*};
}
prefixed!(EventId, WebhookId, DeliveryId, AttemptId);

/// The UUID of an id (ids are only ever made well-formed).
pub(super) fn uuid<T: Prefixed>(id: &T) -> Uuid {
    Uuid::parse_str(&id.text()[T::PREFIX.len()..]).expect("ids are a prefix and 32 hex digits")
}

/// The id of a stored UUID.
pub(super) fn id<T: Prefixed>(uuid: Uuid) -> T {
    T::parse_text(&format!("{}{}", T::PREFIX, uuid.simple()))
        .expect("a UUID makes a well-formed id")
}

/// A listing cursor (an id the API returned and checked) as a UUID.
pub(super) fn cursor<T: Prefixed>(cursor: Option<&str>) -> Option<Uuid> {
    cursor
        .and_then(T::parse_text)
        .map(|parsed| uuid::<T>(&parsed))
}

/// Milliseconds as PostgreSQL's `bigint`.
pub(super) fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn unms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(super) fn status_text(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::InFlight => "in_flight",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Failed => "failed",
        DeliveryStatus::Filtered => "filtered",
    }
}

pub(super) fn status(text: &str) -> PgResult<DeliveryStatus> {
    DeliveryStatus::parse(text).ok_or_else(|| {
        Failure::Store(StoreError::Corrupt(format!(
            "unknown delivery status `{text}`"
        )))
    })
}

pub(super) fn corrupt(err: impl std::fmt::Display) -> Failure {
    Failure::Store(StoreError::Corrupt(err.to_string()))
}

/// The columns [`delivery`] reads, in order.
pub(super) const DELIVERY_COLUMNS: &str = "id, event_id, webhook_id, event_type, channel, status, \
     attempts, created_at, updated_at, next_attempt_at, last_attempt_at, last_status_code, \
     last_error, filtered_by";

pub(super) fn delivery(row: &Row) -> PgResult<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: id(row.try_get(0)?),
        event_id: id(row.try_get(1)?),
        webhook_id: id(row.try_get(2)?),
        event_type: row.try_get(3)?,
        channel: row.try_get(4)?,
        status: status(row.try_get(5)?)?,
        attempts: row.try_get::<_, i32>(6)?.max(0) as u32,
        created_at: unms(row.try_get(7)?),
        updated_at: unms(row.try_get(8)?),
        next_attempt_at: row.try_get::<_, Option<i64>>(9)?.map(unms),
        last_attempt_at: row.try_get::<_, Option<i64>>(10)?.map(unms),
        last_status_code: row
            .try_get::<_, Option<i32>>(11)?
            .and_then(|code| u16::try_from(code).ok()),
        last_error: row.try_get(12)?,
        filtered_by: row.try_get(13)?,
    })
}

/// The columns [`event`] reads, in order.
pub(super) const EVENT_COLUMNS: &str =
    "id, event_type, channel, idempotency_key, created_at, payload";

pub(super) fn event(row: &Row) -> PgResult<EventRecord> {
    let payload: String = row.try_get(5)?;
    Ok(EventRecord {
        id: id(row.try_get(0)?),
        event_type: row.try_get(1)?,
        channel: row.try_get(2)?,
        idempotency_key: row.try_get(3)?,
        created_at: unms(row.try_get(4)?),
        payload: RawValue::from_string(payload).map_err(corrupt)?,
    })
}

/// A page of `limit` items from `limit + 1` rows read: the extra row only says there is more.
fn page<T>(
    mut items: Vec<T>,
    limit: usize,
    cursor_of: impl Fn(&T) -> String,
) -> crate::store::Page<T> {
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor_of)
    } else {
        None
    };
    crate::store::Page { items, next }
}

type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// A listing query whose `AND` clauses depend on the filters given, so each combination gets
/// its own prepared statement (and plan: an index on the filtered column when there is one).
pub(super) struct Filtered {
    sql: String,
    params: Vec<Param>,
}

impl Filtered {
    /// `sql` ends in a `WHERE` whose first parameter ($1) is the tenant.
    pub(super) fn new(sql: String, tenant: &str) -> Self {
        Filtered {
            sql,
            params: vec![Box::new(tenant.to_string())],
        }
    }

    /// Adds ` AND <clause> $n` with `value` as $n (`clause` ends in an operator).
    pub(super) fn and<T: tokio_postgres::types::ToSql + Sync + Send + 'static>(
        &mut self,
        clause: &str,
        value: T,
    ) {
        self.params.push(Box::new(value));
        self.sql
            .push_str(&format!(" AND {clause} ${}", self.params.len()));
    }

    /// The filters of event and delivery listings alike: event type, channel, and a window of
    /// creation times.
    pub(super) fn and_event_filters(
        &mut self,
        event_type: Option<&String>,
        channel: Option<&String>,
        after_ms: Option<u64>,
        before_ms: Option<u64>,
    ) {
        if let Some(event_type) = event_type {
            self.and("event_type =", event_type.clone());
        }
        if let Some(channel) = channel {
            self.and("channel =", channel.clone());
        }
        if let Some(after) = after_ms {
            self.and("created_at >=", ms(after));
        }
        if let Some(before) = before_ms {
            self.and("created_at <", ms(before));
        }
    }

    /// One page, newest first: one row more than `limit` is read to know whether another page
    /// follows, whose cursor is the last item's.
    pub(super) async fn newest_first<T>(
        self,
        store: &super::PostgresStore,
        limit: usize,
        decode: impl Fn(&Row) -> PgResult<T>,
        cursor_of: impl Fn(&T) -> String,
    ) -> PgResult<crate::store::Page<T>> {
        let rows = self
            .run(store, &format!("ORDER BY id DESC LIMIT {}", limit + 1))
            .await?;
        let items = rows.iter().map(decode).collect::<PgResult<Vec<_>>>()?;
        Ok(page(items, limit, cursor_of))
    }

    async fn run(self, store: &super::PostgresStore, tail: &str) -> PgResult<Vec<Row>> {
        let client = store.client().await?;
        let statement = client
            .prepare_cached(&format!("{} {tail}", self.sql))
            .await?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        Ok(client.query(&statement, &params).await?)
    }
}
