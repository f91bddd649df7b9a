//! Delivery permits: the engine-wide cap on requests being sent at once
//! (`[delivery] max_in_flight`), shared fairly between tenants.
//!
//! An attempt takes a permit only for its send stage (not while it waits for a plugin slot, not
//! while its outcome is recorded or its consequences run), so a permit is held exactly as long
//! as a receiver keeps a request open — up to the webhook's timeout for a tarpit.
//!
//! **Fair shares, with a reserve for newcomers.** A send that cannot be preempted may hold its
//! permit for minutes, so fairness has to be decided when a permit is handed out:
//! - Waiting sends are served tenant by tenant: a freed permit goes to the waiting tenant that
//!   holds the fewest permits for its weight (`[quotas] delivery_weight`), oldest waiter first
//!   on a tie; a tenant gets permits again only when the others are served.
//! - A tenant may always take a permit while more than the reserve is free (work-conserving:
//!   alone, it gets all but the reserve). Below that, only a tenant holding less than its
//!   share may take one, its share being computed as if one more tenant were active
//!   (`max_in_flight × weight / (Σ active weights + its weight + 1)`).
//!
//! So a tenant whose sends hang in a tarpit can hold at most `max_in_flight − reserve` permits
//! when alone, and the reserve (1/16 of the cap, at least one) is there at once for the next
//! tenant's first sends; as the tarpit's permits free up they go to the tenants below their
//! share. We chose this over fixed per-tenant caps (which waste the pool when one tenant is
//! busy and the others idle) and over plain weighted fair queueing of waiters (which is fair
//! only among sends that *wait*: the first sends of a tenant arriving after a tarpit filled the
//! pool would wait for the tarpit's timeout).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// The engine-wide delivery permits. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FairPermits {
    inner: Arc<Mutex<Pool>>,
}

#[derive(Debug)]
struct Pool {
    capacity: usize,
    reserve: usize,
    available: usize,
    tenants: HashMap<String, TenantPermits>,
    /// Orders waiters across tenants (ties in the fairness rule go to the oldest).
    next_seq: u64,
}

#[derive(Debug, Default)]
struct TenantPermits {
    held: usize,
    weight: u64,
    waiting: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    grant: oneshot::Sender<()>,
}

/// One permit, returned to the pool when dropped.
#[derive(Debug)]
pub struct SendPermit {
    pool: Arc<Mutex<Pool>>,
    tenant: String,
}

impl Drop for SendPermit {
    fn drop(&mut self) {
        let mut pool = lock(&self.pool);
        pool.release(&self.tenant);
        pool.grant_waiters();
    }
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FairPermits {
    /// `capacity` permits, `capacity / 16` (at least one) of them kept for tenants below their
    /// share.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        FairPermits {
            inner: Arc::new(Mutex::new(Pool {
                capacity,
                reserve: (capacity / 16).max(1),
                available: capacity,
                tenants: HashMap::new(),
                next_seq: 0,
            })),
        }
    }

    /// Waits for a permit for one send of `tenant` (with its current `weight`).
    pub async fn acquire(&self, tenant: &str, weight: u64) -> SendPermit {
        let granted = {
            let mut pool = lock(&self.inner);
            let seq = pool.next_seq;
            pool.next_seq += 1;
            let entry = pool.tenants.entry(tenant.to_string()).or_default();
            entry.weight = weight.max(1);
            let (grant, granted) = oneshot::channel();
            entry.waiting.push_back(Waiter { seq, grant });
            pool.grant_waiters();
            WaitGuard {
                pool: &self.inner,
                tenant,
                seq,
                granted: Some(granted),
            }
        };
        granted.wait().await;
        SendPermit {
            pool: self.inner.clone(),
            tenant: tenant.to_string(),
        }
    }

    /// Permits `tenant` holds now (for the admin view).
    pub fn held(&self, tenant: &str) -> usize {
        lock(&self.inner).tenants.get(tenant).map_or(0, |t| t.held)
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        lock(&self.inner).available
    }
}

/// A waiting acquire: removes its waiter if dropped before the grant, and gives back a permit
/// granted to it after it stopped listening.
struct WaitGuard<'a> {
    pool: &'a Mutex<Pool>,
    tenant: &'a str,
    seq: u64,
    granted: Option<oneshot::Receiver<()>>,
}

impl WaitGuard<'_> {
    async fn wait(mut self) {
        if let Some(granted) = self.granted.as_mut() {
            // The sender is dropped only with the pool, which outlives every guard.
            let _ = granted.await;
        }
        self.granted = None;
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let Some(mut granted) = self.granted.take() else {
            return;
        };
        let mut pool = lock(self.pool);
        if granted.try_recv().is_ok() {
            // Granted while we were being dropped: give it back.
            pool.release(self.tenant);
        } else if let Some(entry) = pool.tenants.get_mut(self.tenant) {
            entry.waiting.retain(|w| w.seq != self.seq);
        }
        pool.grant_waiters();
    }
}

impl Pool {
    fn release(&mut self, tenant: &str) {
        self.available += 1;
        if let Some(entry) = self.tenants.get_mut(tenant) {
            entry.held = entry.held.saturating_sub(1);
        }
    }

    /// Hands free permits to waiters by the fairness rule, as long as the rule allows.
    fn grant_waiters(&mut self) {
        while self.available > 0 {
            let Some(tenant) = self.neediest_waiting() else {
                break;
            };
            if !self.may_take(&tenant) {
                // The neediest cannot take one, so no one else may either.
                break;
            }
            let entry = self.tenants.get_mut(&tenant).expect("picked from the map");
            let waiter = entry.waiting.pop_front().expect("picked for its waiter");
            if waiter.grant.send(()).is_ok() {
                entry.held += 1;
                self.available -= 1;
            }
        }
        // Forget idle tenants (no permit, no waiter) so the map stays small.
        self.tenants
            .retain(|_, t| t.held > 0 || !t.waiting.is_empty());
    }

    /// The waiting tenant holding the fewest permits for its weight; ties to the oldest waiter.
    fn neediest_waiting(&self) -> Option<String> {
        self.tenants
            .iter()
            .filter_map(|(id, t)| t.waiting.front().map(|w| (id, t, w.seq)))
            .min_by(|(_, a, a_seq), (_, b, b_seq)| {
                // held / weight, compared without division.
                let left = a.held as u128 * u128::from(b.weight);
                let right = b.held as u128 * u128::from(a.weight);
                left.cmp(&right).then(a_seq.cmp(b_seq))
            })
            .map(|(id, _, _)| id.clone())
    }

    fn may_take(&self, tenant: &str) -> bool {
        if self.available > self.reserve {
            return true;
        }
        let Some(me) = self.tenants.get(tenant) else {
            return false;
        };
        let others: u64 = self
            .tenants
            .iter()
            .filter(|(id, t)| id.as_str() != tenant && (t.held > 0 || !t.waiting.is_empty()))
            .map(|(_, t)| t.weight)
            .sum();
        // share = capacity × w / (others + w + 1), compared without division.
        (me.held as u128) * u128::from(others + me.weight + 1)
            < (self.capacity as u128) * u128::from(me.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Takes permits for `tenant` until one would wait; returns them.
    async fn take_all(pool: &FairPermits, tenant: &str) -> Vec<SendPermit> {
        let mut held = Vec::new();
        while let Ok(permit) =
            tokio::time::timeout(Duration::from_millis(20), pool.acquire(tenant, 1)).await
        {
            held.push(permit);
        }
        held
    }

    #[tokio::test]
    async fn a_tenant_alone_gets_all_but_the_reserve_and_a_newcomer_gets_the_reserve_at_once() {
        let pool = FairPermits::new(64);
        let a = take_all(&pool, "a").await;
        assert_eq!(a.len(), 60, "64 minus the reserve of 4");
        // B's first sends do not wait for A's.
        let b = take_all(&pool, "b").await;
        assert!(!b.is_empty() && b.len() <= 4, "{}", b.len());
        assert_eq!(pool.held("a"), 60);
    }

    #[tokio::test]
    async fn freed_permits_go_to_the_tenant_below_its_share_while_it_waits() {
        let pool = FairPermits::new(64);
        let mut a = take_all(&pool, "a").await;
        let b = take_all(&pool, "b").await;
        // Both want more: B waits first, then A.
        let b_waits = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire("b", 1).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let a_waits = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire("a", 1).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // One of A's sends finishes: the permit goes to B, not back to A.
        drop(a.pop());
        let b_extra = tokio::time::timeout(Duration::from_secs(1), b_waits)
            .await
            .expect("B is served")
            .unwrap();
        assert!(!a_waits.is_finished(), "A waits while B is below its share");
        assert_eq!(pool.held("b"), b.len() + 1);
        drop(b_extra);
        drop(b);
        // B is done: A gets permits again.
        tokio::time::timeout(Duration::from_secs(1), a_waits)
            .await
            .expect("A is served once B stops")
            .unwrap();
    }

    #[tokio::test]
    async fn weights_divide_contended_permits_in_proportion() {
        let pool = FairPermits::new(32);
        // A third tenant holds the pool while heavy (weight 3) and light (weight 1) queue up.
        let filler = take_all(&pool, "filler").await;
        assert_eq!(filler.len(), 30);
        let mut waiting = Vec::new();
        for _ in 0..40 {
            for (tenant, weight) in [("heavy", 3), ("light", 1)] {
                let pool = pool.clone();
                waiting.push(tokio::spawn(async move {
                    let permit = pool.acquire(tenant, weight).await;
                    (tenant, permit)
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The filler's sends finish one by one; each freed permit goes to the neediest.
        drop(filler);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (heavy, light) = (pool.held("heavy"), pool.held("light"));
        assert_eq!(heavy + light, 30, "all but the reserve: {heavy} + {light}");
        assert!(heavy >= 2 * light && light >= 5, "{heavy} vs {light}");
        for task in waiting {
            task.abort();
        }
    }

    #[tokio::test]
    async fn an_abandoned_wait_gives_its_place_and_any_late_grant_back() {
        let pool = FairPermits::new(1);
        let first = pool.acquire("a", 1).await;
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire("b", 1).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(first);
        assert_eq!(pool.available(), 1);
        let _again = tokio::time::timeout(Duration::from_secs(1), pool.acquire("c", 1))
            .await
            .expect("the permit is free");
        assert_eq!(pool.available(), 0);
    }
}
