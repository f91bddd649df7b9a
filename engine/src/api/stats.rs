//! `GET /v1/stats` and `GET /v1/webhooks/{id}/stats`: delivery statistics of `days` UTC days
//! (default 7, at most 90) ending today, or ending on the day `to` (`YYYY-MM-DD`, not after
//! today) to look back at an earlier window; read from the store's per-day counters
//! (`store/stats.rs`, kept [`crate::store::stats::STATS_HORIZON_DAYS`] days), never by scanning
//! the delivery log.
//!
//! Each day row describes the events and deliveries **created** that day: their outcomes so far
//! and the latency of their attempts (whenever they were made). `pending` counts deliveries not
//! final yet (pending or in flight). `success_rate` is delivered / (delivered + failed), `null`
//! when there is neither. Latency covers every recorded attempt (the attempt log's
//! `latency_ms`: HTTP time, or plugin time when no request was sent); `latency_p95_ms` is an
//! estimate from a fixed-bucket histogram (1, 2, 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 5,
//! 10, 30 s, then the maximum seen), interpolated within the bucket. For a webhook, `events`
//! counts the events routed to it. Purging old records (retention, `DELETE /v1/deliveries`)
//! does not change statistics.
//!
//! `GET /v1/stats?channel=` answers the same report for the events on one channel (an event has
//! at most one) and their deliveries. A tenant's channels are free-form, so each UTC day counts
//! at most [`crate::store::stats::MAX_CHANNELS_PER_DAY`] distinct channels per tenant (the first ones seen that day);
//! the answer names the days on which further channels went uncounted (`incomplete_days`), the
//! only days on which this channel's figures may be short. Channel and webhook do not combine
//! (`/v1/webhooks/{id}/stats?channel=` is `400 unknown_parameter`, saying why): counting every
//! (webhook, channel) pair would multiply the counters.

use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody, Tenant, valid_channel};
use crate::ids::{WebhookId, now_ms};
use crate::store::stats::{
    DayStats, MAX_STATS_DAYS, MS_PER_DAY, StatsCounts, StatsScope, day_of, top_event_types,
};

const DEFAULT_DAYS: u32 = 7;
const TOP_EVENT_TYPES: usize = 10;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// UTC days to cover, ending on `to`: 1-90 (default 7).
    #[param(minimum = 1, maximum = 90)]
    days: Option<u32>,
    /// The window's last UTC day, `YYYY-MM-DD`, not after today (default today).
    to: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantStatsQuery {
    /// UTC days to cover, ending on `to`: 1-90 (default 7).
    #[param(minimum = 1, maximum = 90)]
    days: Option<u32>,
    /// The window's last UTC day, `YYYY-MM-DD`, not after today (default today).
    to: Option<String>,
    /// Only events on this channel (1-128 of `a-z A-Z 0-9 . _ - :`) and their deliveries.
    channel: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CountsView {
    events: u64,
    deliveries: u64,
    delivered: u64,
    failed: u64,
    filtered: u64,
    pending: u64,
    attempts: u64,
    success_rate: Option<f64>,
    latency_avg_ms: Option<f64>,
    latency_p95_ms: Option<f64>,
}

/// Milliseconds to one decimal.
fn round_ms(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

impl From<&StatsCounts> for CountsView {
    fn from(c: &StatsCounts) -> Self {
        CountsView {
            events: c.events,
            deliveries: c.deliveries,
            delivered: c.delivered,
            failed: c.failed,
            filtered: c.filtered,
            pending: c.pending(),
            attempts: c.latency.count,
            success_rate: c.success_rate(),
            latency_avg_ms: c.latency.mean_ms().map(round_ms),
            latency_p95_ms: c.latency.quantile_ms(0.95).map(round_ms),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTypeCount {
    #[serde(rename = "type")]
    event_type: String,
    count: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DayView {
    /// The UTC day, `YYYY-MM-DD`.
    date: String,
    #[serde(flatten)]
    counts: CountsView,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsView {
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    /// With `channel`: the UTC days (`YYYY-MM-DD`) of the window on which the tenant's events
    /// used more distinct channels than are counted per day (1000, the first seen that day);
    /// this channel's figures for these days may be short.
    #[serde(skip_serializing_if = "Option::is_none")]
    incomplete_days: Option<Vec<String>>,
    days: u32,
    /// First and last UTC day of the window, `YYYY-MM-DD`.
    from: String,
    to: String,
    totals: CountsView,
    top_event_types: Vec<EventTypeCount>,
    /// One row per UTC day, oldest first, zero where nothing happened.
    series: Vec<DayView>,
}

/// A UTC day (days since the epoch) as `YYYY-MM-DD`.
pub(super) fn date(day: u32) -> String {
    let mut text = super::rfc3339(u64::from(day) * MS_PER_DAY);
    text.truncate(10);
    text
}

/// `days` of the query: 1–90, default 7.
fn window(days: Option<u32>) -> Result<u32, ApiError> {
    match days {
        None => Ok(DEFAULT_DAYS),
        Some(days) if (1..=MAX_STATS_DAYS).contains(&days) => Ok(days),
        Some(_) => Err(ApiError::bad_request(
            "invalid_query",
            format!("`days` must be between 1 and {MAX_STATS_DAYS}"),
        )),
    }
}

fn view(webhook_id: Option<String>, days: u32, rows: &[DayStats]) -> StatsView {
    let mut totals = StatsCounts::default();
    for row in rows {
        totals.add(&row.counts);
    }
    StatsView {
        webhook_id,
        channel: None,
        incomplete_days: None,
        days,
        from: rows.first().map(|r| date(r.day)).unwrap_or_default(),
        to: rows.last().map(|r| date(r.day)).unwrap_or_default(),
        totals: CountsView::from(&totals),
        top_event_types: top_event_types(rows, TOP_EVENT_TYPES)
            .into_iter()
            .map(|(event_type, count)| EventTypeCount { event_type, count })
            .collect(),
        series: rows
            .iter()
            .map(|row| DayView {
                date: date(row.day),
                counts: CountsView::from(&row.counts),
            })
            .collect(),
    }
}

/// The first and last UTC day of a window of `days` ending on `to` (default today).
fn day_range(days: u32, to: Option<&str>) -> Result<(u32, u32), ApiError> {
    let today = day_of(now_ms());
    let last = match to {
        None => today,
        Some(text) => parse_date(text)
            .filter(|day| *day <= today)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    "`to` must be a UTC date `YYYY-MM-DD`, not after today",
                )
            })?,
    };
    Ok((last.saturating_sub(days - 1), last))
}

/// A `YYYY-MM-DD` date as a UTC day (days since the epoch); `None` unless exactly that form
/// and a real date.
fn parse_date(text: &str) -> Option<u32> {
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shaped {
        return None;
    }
    let at = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok()?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    u32::try_from(ms / u128::from(MS_PER_DAY)).ok()
}

/// The tenant's delivery statistics of the last `days` UTC days, or those of one channel.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "stats",
    operation_id = "tenant_stats",
    params(TenantStatsQuery),
    responses(
        (status = 200, description = "Totals, rates, latency, top event types and a per-day series (of one channel with `channel`)", body = StatsView),
        (status = 400, description = "`days` out of range, `to` not a date up to today or `channel` malformed (`invalid_query`)", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn tenant_stats(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(query): ApiQuery<TenantStatsQuery>,
) -> Result<ApiJson<StatsView>, ApiError> {
    let days = window(query.days)?;
    let (first, last) = day_range(days, query.to.as_deref())?;
    let Some(channel) = query.channel else {
        let rows = state
            .store
            .stats_days(&tenant.id, StatsScope::Tenant, first, last)
            .await?;
        return Ok(ApiJson(view(None, days, &rows)));
    };
    if !valid_channel(&channel) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`channel` must be 1-128 of a-z A-Z 0-9 . _ - :",
        ));
    }
    let (rows, overflow) = futures::try_join!(
        state
            .store
            .stats_days(&tenant.id, StatsScope::Channel(&channel), first, last),
        state
            .store
            .stats_days(&tenant.id, StatsScope::ChannelOverflow, first, last),
    )?;
    let mut stats = view(None, days, &rows);
    stats.incomplete_days = Some(
        overflow
            .iter()
            .filter(|day| day.counts.events > 0)
            .map(|day| date(day.day))
            .collect(),
    );
    stats.channel = Some(channel);
    Ok(ApiJson(stats))
}

/// One webhook's delivery statistics of the last `days` UTC days.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/stats",
    tag = "stats",
    operation_id = "webhook_stats",
    params(("id" = String, Path, description = "Webhook id (`wh_...`)"), StatsQuery),
    responses(
        (status = 200, description = "Totals, rates, latency, top event types and a per-day series", body = StatsView),
        (status = 400, description = "`days` out of range or `to` not a date up to today (`invalid_query`)", body = ErrorBody),
        (status = 404, description = "No such webhook for this tenant", body = ErrorBody),
        (status = 500, description = "Internal storage error", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
)]
pub async fn webhook_stats(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<ApiJson<StatsView>, ApiError> {
    let webhook_id = WebhookId::parse(&id).ok_or_else(|| ApiError::not_found("webhook", &id))?;
    if state
        .store
        .webhook(&tenant.id, &webhook_id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("webhook", &id));
    }
    let days = window(query.days)?;
    let (first, last) = day_range(days, query.to.as_deref())?;
    let rows = state
        .store
        .stats_days(&tenant.id, StatsScope::Webhook(&webhook_id), first, last)
        .await?;
    Ok(ApiJson(view(Some(webhook_id.to_string()), days, &rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates_and_the_window_is_checked() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(20_000), "2024-10-04");
        assert_eq!(window(None).unwrap(), 7);
        assert_eq!(window(Some(90)).unwrap(), 90);
        for bad in [0, 91] {
            let err = window(Some(bad)).unwrap_err();
            assert_eq!(err.code, "invalid_query");
        }
    }

    #[test]
    fn the_window_ends_on_to_which_is_a_real_date_not_after_today() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-10-04"), Some(20_000));
        assert_eq!(
            parse_date("2024-02-29").map(date).as_deref(),
            Some("2024-02-29")
        );
        for bad in [
            "",
            "2024-10-4",
            "2024-1-04",
            "24-10-04",
            "2024/10/04",
            "2024-13-01",
            "2023-02-29",
            "2024-10-04T00:00:00Z",
            " 2024-10-04",
            "２０２４-10-04",
            "1969-12-31",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
        assert_eq!(day_range(7, Some("2024-10-04")).unwrap(), (19_994, 20_000));
        assert_eq!(day_range(1, Some("1970-01-01")).unwrap(), (0, 0));
        let today = day_of(now_ms());
        assert_eq!(day_range(7, None).unwrap(), (today - 6, today));
        let tomorrow = date(today + 1);
        assert_eq!(
            day_range(7, Some(&tomorrow)).unwrap_err().code,
            "invalid_query"
        );
    }
}
