//! CPU work proportional to a body's size (parsing, rendering and signing JSON of up to tens of
//! MiB) runs off the async workers once the body passes [`INLINE_BYTES`], so one tenant's large
//! requests cannot stall the workers every other tenant's requests and deliveries run on. Small
//! bodies stay inline: a trip to the blocking pool costs more than the work.
//!
//! Off the workers it is still CPU: [`Offload`] lets at most one core fewer than the machine has
//! run such work at once, shared fairly between tenants (the same fair permits as deliveries,
//! `delivery::permits`), so a tenant looping on large requests keeps at most its share of the
//! cores busy and always leaves one for everything else.

use crate::delivery::permits::FairPermits;

/// Bodies up to this size are handled on the async worker.
pub const INLINE_BYTES: usize = 64 * 1024;

/// Who large work is done for: a tenant, or hookd itself (shared as one more tenant).
pub const ENGINE: &str = "";

/// The engine's budget for large CPU work. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Offload {
    permits: FairPermits,
}

impl Offload {
    /// At most `cores − 1` (at least one) large jobs at once.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Offload {
            permits: FairPermits::new(cores.saturating_sub(1).max(1)),
        }
    }

    /// Runs `work` (whose cost grows with `bytes`) for `tenant`: inline for a small body, else
    /// on the blocking pool once the tenant's turn comes.
    pub async fn by_size<R, F>(&self, tenant: &str, bytes: usize, work: F) -> R
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        if bytes <= INLINE_BYTES {
            return work();
        }
        let _turn = self.permits.acquire(tenant, 1).await;
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            // The work panicked: the same panic, on this task.
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }
}

impl Default for Offload {
    fn default() -> Self {
        Self::new()
    }
}
