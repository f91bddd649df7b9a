//! Every tenant's webhooks, decoded with secrets opened, as a backend last read them. Fan-out
//! reads a tenant's webhooks per event and every attempt reads its webhook: without this they
//! would read and decode the store each time. Every webhook write of a backend drops the
//! tenant's entry after writing; `generation` makes sure a read that raced with a write never
//! caches what it read before the write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::WebhookRecord;

#[derive(Default)]
pub struct WebhookCache {
    inner: Mutex<WebhookCacheInner>,
}

#[derive(Default)]
struct WebhookCacheInner {
    generation: u64,
    tenants: HashMap<String, Arc<Vec<WebhookRecord>>>,
}

impl WebhookCache {
    /// The cached webhooks of `tenant`, if any, and the generation to pass to [`Self::put`].
    pub fn get(&self, tenant: &str) -> (Option<Arc<Vec<WebhookRecord>>>, u64) {
        let inner = self.inner.lock().expect("webhook cache lock");
        (inner.tenants.get(tenant).cloned(), inner.generation)
    }

    /// Caches what was read, unless a write happened since `generation` was read.
    pub fn put(&self, tenant: &str, generation: u64, webhooks: Arc<Vec<WebhookRecord>>) {
        let mut inner = self.inner.lock().expect("webhook cache lock");
        if inner.generation == generation {
            inner.tenants.insert(tenant.to_string(), webhooks);
        }
    }

    /// Drops `tenant`'s entry (after a write of one of its webhooks).
    pub fn invalidate(&self, tenant: &str) {
        let mut inner = self.inner.lock().expect("webhook cache lock");
        inner.generation += 1;
        inner.tenants.remove(tenant);
    }

    /// Drops every tenant's entry (when writes of other processes may have been missed).
    pub fn invalidate_all(&self) {
        let mut inner = self.inner.lock().expect("webhook cache lock");
        inner.generation += 1;
        inner.tenants.clear();
    }
}
