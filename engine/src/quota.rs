//! Per-tenant quotas (`[quotas]`, `[tenants.quotas]`): what the API checks before it writes,
//! and the per-tenant request rate limiter. Over a quota the request is refused whole
//! (`429 quota_exceeded` naming the quota, its limit and the current use; `429 rate_limited`
//! with `Retry-After` for the rate) and nothing is written.
//!
//! Ingest quotas (`pending_deliveries`, `stored_bytes`) are checked against the tenant's usage
//! as the store reports it ([`Store::tenant_usage`]) plus what this process accepted since
//! ([`UsageTracker`]): every accepted event reserves its deliveries and bytes before it is
//! submitted, so concurrent requests cannot overshoot together. Since that estimate only ever
//! overcounts (deliveries finish and purges free bytes behind its back), a request it admits is
//! within the quota; a request it would refuse is checked again against a fresh reading of the
//! store (at most [`REFUSAL_SNAPSHOT_AGE`] old) before it is refused. The store is read at least
//! every [`MAX_SNAPSHOT_AGE`] otherwise, which bounds what other nodes' writes can add unseen.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;

use crate::config::QuotasConfig;
use crate::store::{Store, StoreError, TenantUsage};

/// A usage reading older than this is refreshed before the next check.
pub const MAX_SNAPSHOT_AGE: Duration = Duration::from_secs(30);
/// Before a refusal, the reading is refreshed if it is older than this.
pub const REFUSAL_SNAPSHOT_AGE: Duration = Duration::from_millis(500);

/// A refused request: which quota, its limit, and the use it would have exceeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QuotaExceeded {
    /// The quota's key in `[quotas]`, e.g. `webhooks`, `pending_deliveries`.
    pub quota: &'static str,
    pub limit: u64,
    /// The tenant's use now, without the refused request.
    pub current: u64,
    /// What the refused request would have added.
    pub requested: u64,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.quota == "deliveries_per_event" {
            return write!(
                f,
                "the event matches {} webhooks; the `deliveries_per_event` quota is {}",
                self.current, self.limit
            );
        }
        write!(
            f,
            "the `{}` quota is {}; the tenant uses {} and this request needs {} more",
            self.quota, self.limit, self.current, self.requested
        )
    }
}

impl QuotaExceeded {
    /// `Err` when one item's `amount` passes a per-item `limit` (e.g. one event's fan-out):
    /// `current` and `requested` are both that amount.
    pub fn check_each(quota: &'static str, limit: u64, amount: u64) -> Result<(), Self> {
        if amount > limit {
            return Err(QuotaExceeded {
                quota,
                limit,
                current: amount,
                requested: amount,
            });
        }
        Ok(())
    }

    /// `Err` when `current + requested` would pass `limit`.
    pub fn check(
        quota: &'static str,
        limit: u64,
        current: u64,
        requested: u64,
    ) -> Result<(), Self> {
        if current.saturating_add(requested) > limit {
            return Err(QuotaExceeded {
                quota,
                limit,
                current,
                requested,
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{0}")]
    Exceeded(QuotaExceeded),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Quota state of the running engine: usage estimates and rate limiters per tenant.
#[derive(Clone, Debug)]
pub struct Quotas {
    store: Arc<dyn Store>,
    usage: Arc<UsageTracker>,
    rates: RateLimits,
    webhook_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A token bucket per tenant (`api_requests_per_sec`, `api_burst`), remade when a reload
/// changes the tenant's quota.
#[derive(Clone, Debug, Default)]
pub struct RateLimits {
    tenants: Arc<Mutex<HashMap<String, TenantRate>>>,
}

impl RateLimits {
    /// `Err(wait)` when `tenant` is over its rate.
    pub fn admit(&self, tenant: &str, quotas: &QuotasConfig) -> Result<(), Duration> {
        let mut rates = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let (per_sec, burst) = (quotas.api_requests_per_sec, quotas.api_burst);
        let rate = rates
            .entry(tenant.to_string())
            .and_modify(|rate| {
                // A reload changed the quota: a fresh bucket at the new rate.
                if (rate.per_sec, rate.burst) != (per_sec, burst) {
                    *rate = TenantRate::new(per_sec, burst);
                }
            })
            .or_insert_with(|| TenantRate::new(per_sec, burst));
        rate.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

struct TenantRate {
    per_sec: u64,
    burst: u64,
    limiter: DefaultDirectRateLimiter,
}

impl std::fmt::Debug for TenantRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRate")
            .field("per_sec", &self.per_sec)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl Quotas {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Quotas {
            store,
            usage: Arc::new(UsageTracker::default()),
            rates: RateLimits::default(),
            webhook_locks: Arc::default(),
        }
    }

    /// One API request of `tenant`: `Err(wait)` when it is over its request rate, `wait` being
    /// how long until the next request would be admitted.
    pub fn admit_request(&self, tenant: &str, quotas: &QuotasConfig) -> Result<(), Duration> {
        self.rates.admit(tenant, quotas)
    }

    /// Reserves `deliveries` pending deliveries and `bytes` stored bytes for one event about to
    /// be submitted. Keep the reservation until the store answered; [`Reservation::commit`] it
    /// when the event was written, drop it otherwise.
    pub async fn reserve_ingest(
        &self,
        tenant: &str,
        quotas: &QuotasConfig,
        deliveries: u64,
        bytes: u64,
    ) -> Result<Reservation, QuotaError> {
        let request = Amounts { deliveries, bytes };
        let limits = Amounts {
            deliveries: quotas.pending_deliveries,
            bytes: quotas.stored_bytes,
        };
        if self.usage.needs_reading(tenant, MAX_SNAPSHOT_AGE) {
            self.read_usage(tenant).await?;
        }
        if self.usage.try_reserve(tenant, request, limits).is_err() {
            // Refuse only on a recent reading: the estimate overcounts finished deliveries.
            if self.usage.needs_reading(tenant, REFUSAL_SNAPSHOT_AGE) {
                self.read_usage(tenant).await?;
            }
            self.usage
                .try_reserve(tenant, request, limits)
                .map_err(QuotaError::Exceeded)?;
        }
        Ok(Reservation {
            usage: self.usage.clone(),
            tenant: tenant.to_string(),
            amounts: request,
            committed: false,
        })
    }

    /// The tenant's use as this engine counts it (the store's reading plus what was accepted
    /// since), for the admin view.
    pub async fn usage(&self, tenant: &str) -> Result<TenantUsage, StoreError> {
        let usage = self.read_usage(tenant).await?;
        let extra = self.usage.unread(tenant);
        Ok(TenantUsage {
            pending_deliveries: usage.pending_deliveries + extra.deliveries,
            stored_bytes: usage.stored_bytes + extra.bytes,
            ..usage
        })
    }

    /// Serialises webhook creation per tenant, so two concurrent creates cannot both pass the
    /// `webhooks` quota. Hold the guard until the webhook is written.
    pub async fn webhook_creation(&self, tenant: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .webhook_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    async fn read_usage(&self, tenant: &str) -> Result<TenantUsage, StoreError> {
        let started = Instant::now();
        let reading = self.store.tenant_usage(tenant).await?;
        self.usage.record_reading(tenant, reading, started);
        Ok(reading)
    }
}

impl TenantRate {
    fn new(per_sec: u64, burst: u64) -> Self {
        let clamp = |n: u64| NonZeroU32::new(n.clamp(1, u64::from(u32::MAX)) as u32);
        let per_sec = clamp(per_sec).expect("clamped to at least 1");
        let burst_cells = clamp(burst).expect("clamped to at least 1");
        TenantRate {
            per_sec: u64::from(per_sec.get()),
            burst,
            limiter: RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst_cells)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Amounts {
    deliveries: u64,
    bytes: u64,
}

/// Per tenant: the last reading of the store, and what this process reserved since.
#[derive(Debug, Default)]
pub struct UsageTracker {
    tenants: Mutex<HashMap<String, TrackedUsage>>,
}

#[derive(Debug)]
struct TrackedUsage {
    reading: TenantUsage,
    read_at: Instant,
    /// Reserved by requests still in progress.
    in_progress: Amounts,
    /// Written since the reading started (not in it).
    since_reading: Amounts,
}

impl UsageTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TrackedUsage>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn needs_reading(&self, tenant: &str, max_age: Duration) -> bool {
        self.lock()
            .get(tenant)
            .is_none_or(|t| t.read_at.elapsed() > max_age)
    }

    /// A reading of the store that started at `started`: what was written before is in it.
    fn record_reading(&self, tenant: &str, reading: TenantUsage, started: Instant) {
        let mut tenants = self.lock();
        let tracked = tenants.entry(tenant.to_string()).or_insert(TrackedUsage {
            reading,
            read_at: started,
            in_progress: Amounts::default(),
            since_reading: Amounts::default(),
        });
        if tracked.read_at <= started {
            tracked.reading = reading;
            tracked.read_at = started;
            // Writes that finished before the reading started are in it; a write finishing
            // during the reading may be counted twice until the next one (overcounting only).
            tracked.since_reading = Amounts::default();
        }
    }

    fn try_reserve(
        &self,
        tenant: &str,
        request: Amounts,
        limits: Amounts,
    ) -> Result<(), QuotaExceeded> {
        let mut tenants = self.lock();
        let Some(tracked) = tenants.get_mut(tenant) else {
            // No reading yet (a store error is returned before this): nothing to count against.
            return Ok(());
        };
        let current = Amounts {
            deliveries: tracked.reading.pending_deliveries
                + tracked.in_progress.deliveries
                + tracked.since_reading.deliveries,
            bytes: tracked.reading.stored_bytes
                + tracked.in_progress.bytes
                + tracked.since_reading.bytes,
        };
        QuotaExceeded::check(
            "pending_deliveries",
            limits.deliveries,
            current.deliveries,
            request.deliveries,
        )?;
        QuotaExceeded::check("stored_bytes", limits.bytes, current.bytes, request.bytes)?;
        tracked.in_progress.deliveries += request.deliveries;
        tracked.in_progress.bytes += request.bytes;
        Ok(())
    }

    fn finish(&self, tenant: &str, amounts: Amounts, written: bool) {
        let mut tenants = self.lock();
        if let Some(tracked) = tenants.get_mut(tenant) {
            tracked.in_progress.deliveries -=
                amounts.deliveries.min(tracked.in_progress.deliveries);
            tracked.in_progress.bytes -= amounts.bytes.min(tracked.in_progress.bytes);
            if written {
                tracked.since_reading.deliveries += amounts.deliveries;
                tracked.since_reading.bytes += amounts.bytes;
            }
        }
    }

    /// What this process wrote or is writing that the last reading does not show.
    fn unread(&self, tenant: &str) -> Amounts {
        self.lock()
            .get(tenant)
            .map_or_else(Amounts::default, |t| Amounts {
                deliveries: t.in_progress.deliveries + t.since_reading.deliveries,
                bytes: t.in_progress.bytes + t.since_reading.bytes,
            })
    }
}

/// Room held for one event until the store answered. Dropped uncommitted, it frees the room.
#[derive(Debug)]
pub struct Reservation {
    usage: Arc<UsageTracker>,
    tenant: String,
    amounts: Amounts,
    committed: bool,
}

impl Reservation {
    /// The event was written: its deliveries and bytes now count as used.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.usage
            .finish(&self.tenant, self.amounts, self.committed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pending: u64, bytes: u64) -> TenantUsage {
        TenantUsage {
            pending_deliveries: pending,
            stored_bytes: bytes,
            ..TenantUsage::default()
        }
    }

    const LIMITS: Amounts = Amounts {
        deliveries: 10,
        bytes: 1000,
    };

    fn reserve(
        tracker: &Arc<UsageTracker>,
        deliveries: u64,
        bytes: u64,
    ) -> Result<Reservation, QuotaExceeded> {
        let amounts = Amounts { deliveries, bytes };
        tracker.try_reserve("t", amounts, LIMITS)?;
        Ok(Reservation {
            usage: tracker.clone(),
            tenant: "t".into(),
            amounts,
            committed: false,
        })
    }

    #[test]
    fn reservations_count_until_released_and_writes_until_the_next_reading() {
        let tracker = Arc::new(UsageTracker::default());
        tracker.record_reading("t", reading(6, 100), Instant::now());
        let first = reserve(&tracker, 3, 10).unwrap();
        // In progress counts: 6 + 3 + 2 > 10.
        let refused = reserve(&tracker, 2, 10).unwrap_err();
        assert_eq!(
            refused,
            QuotaExceeded {
                quota: "pending_deliveries",
                limit: 10,
                current: 9,
                requested: 2
            }
        );
        // Exactly at the limit is allowed.
        let second = reserve(&tracker, 1, 10).unwrap();
        drop(second); // not written (a duplicate): frees its room
        first.commit(); // written: still counts
        assert_eq!(
            tracker.unread("t"),
            Amounts {
                deliveries: 3,
                bytes: 10
            }
        );
        assert!(reserve(&tracker, 2, 0).is_err());
        // A new reading includes the write (and finished deliveries left): room again.
        tracker.record_reading("t", reading(4, 110), Instant::now());
        assert_eq!(tracker.unread("t"), Amounts::default());
        reserve(&tracker, 6, 0).unwrap().commit();
        let bytes = reserve(&tracker, 0, 891).unwrap_err();
        assert_eq!((bytes.quota, bytes.current), ("stored_bytes", 110));
    }

    #[test]
    fn an_older_reading_never_replaces_a_newer_one() {
        let tracker = UsageTracker::default();
        let early = Instant::now();
        tracker.record_reading("t", reading(1, 1), Instant::now());
        tracker.record_reading("t", reading(9, 9), early);
        assert_eq!(
            tracker.lock()["t"].reading.pending_deliveries,
            1,
            "the late answer of an older read is ignored"
        );
    }

    #[test]
    fn the_rate_limiter_admits_the_burst_then_asks_to_wait() {
        let quotas = QuotasConfig {
            api_requests_per_sec: 2,
            api_burst: 3,
            ..crate::config::DEFAULT_QUOTAS
        };
        let limits = RateLimits::default();
        for _ in 0..3 {
            limits.admit("t", &quotas).unwrap();
        }
        let wait = limits.admit("t", &quotas).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another tenant has its own bucket.
        limits.admit("u", &quotas).unwrap();
        // A reload raising the rate gives a fresh bucket.
        let raised = QuotasConfig {
            api_requests_per_sec: 100,
            api_burst: 100,
            ..quotas
        };
        limits.admit("t", &raised).unwrap();
    }
}
