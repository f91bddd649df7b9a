//! Webhooks on sled: one `W` key each, JSON with every secret and credential header sealed
//! (`store/sealing.rs`), read through the shared webhook cache with secrets opened. Writes go
//! through the writer as log records, so they are replayed like everything else.

use std::sync::Arc;

use super::keys;
use super::writer::{Command, Expect};
use super::{Shared, SledStore};
use crate::ids::WebhookId;
use crate::store::{Page, Result, StoreError, WebhookChange, WebhookRecord, sealing};

/// First byte of a stored webhook (then JSON).
const WEBHOOK_VERSION: u8 = 1;

pub(super) fn decode_webhook(bytes: &[u8]) -> Result<WebhookRecord> {
    match bytes.split_first() {
        Some((&WEBHOOK_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|err| StoreError::Corrupt(err.to_string()))
        }
        Some((version, _)) => Err(StoreError::Corrupt(format!(
            "webhook record version {version} is not known to this hookd"
        ))),
        None => Err(StoreError::Corrupt("empty webhook record".into())),
    }
}

impl Shared {
    /// The stored form of a webhook (`store/sealing.rs`): versioned JSON, every secret and
    /// credential header sealed.
    pub(super) fn encode_webhook(&self, tenant: &str, webhook: &WebhookRecord) -> Vec<u8> {
        let stored = sealing::stored_form(&self.keyring, tenant, webhook);
        let mut out = vec![WEBHOOK_VERSION];
        serde_json::to_writer(&mut out, &stored).expect("webhooks serialise to JSON");
        out
    }

    /// Opens every sealed value of `webhook` (a record written before sealing existed has its
    /// plaintext already).
    pub(super) fn open_secrets(&self, tenant: &str, webhook: &mut WebhookRecord) -> Result<()> {
        sealing::open(&self.keyring, tenant, webhook)
    }

    /// Every webhook of a tenant, secrets opened, from the cache (read from sled on a miss).
    pub(super) fn webhooks_of(&self, tenant: &str) -> Result<Arc<Vec<WebhookRecord>>> {
        let (cached, generation) = self.webhooks.get(tenant);
        if let Some(webhooks) = cached {
            return Ok(webhooks);
        }
        let webhooks: Vec<WebhookRecord> = self
            .tree
            .scan_prefix(keys::tenant_prefix(keys::WEBHOOK, tenant))
            .map(|entry| {
                let mut webhook = decode_webhook(&entry?.1)?;
                self.open_secrets(tenant, &mut webhook)?;
                Ok(webhook)
            })
            .collect::<Result<_>>()?;
        let webhooks = Arc::new(webhooks);
        self.webhooks.put(tenant, generation, webhooks.clone());
        Ok(webhooks)
    }
}

impl SledStore {
    async fn put_webhook(
        &self,
        tenant: &str,
        id: &WebhookId,
        json: Vec<u8>,
        expect: Expect,
    ) -> Result<bool> {
        self.ask(|reply| Command::PutWebhook {
            tenant: tenant.to_string(),
            webhook: id.clone(),
            json,
            expect,
            reply,
        })
        .await
    }

    pub(super) async fn insert_webhook(&self, tenant: &str, webhook: &WebhookRecord) -> Result<()> {
        let json = self.shared.encode_webhook(tenant, webhook);
        if self
            .put_webhook(tenant, &webhook.id, json, Expect::Absent)
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!(
                "webhook {} exists already",
                webhook.id
            )))
        }
    }

    /// Read-modify-write, retried when another write got there first.
    pub(super) async fn update_webhook(
        &self,
        tenant: &str,
        id: &WebhookId,
        change: WebhookChange<'_>,
    ) -> Result<Option<WebhookRecord>> {
        let key = keys::webhook(tenant, id);
        loop {
            let Some(old) = self.shared.tree.get(&key)? else {
                return Ok(None);
            };
            let mut record = decode_webhook(&old)?;
            self.shared.open_secrets(tenant, &mut record)?;
            change(&mut record);
            let json = self.shared.encode_webhook(tenant, &record);
            if self
                .put_webhook(tenant, id, json, Expect::Bytes(old))
                .await?
            {
                return Ok(Some(record));
            }
        }
    }

    pub(super) async fn delete_webhook(&self, tenant: &str, id: &WebhookId) -> Result<bool> {
        self.ask(|reply| Command::DeleteWebhook {
            tenant: tenant.to_string(),
            webhook: id.clone(),
            reply,
        })
        .await
    }

    pub(super) fn webhook(&self, tenant: &str, id: &WebhookId) -> Result<Option<WebhookRecord>> {
        Ok(self
            .shared
            .webhooks_of(tenant)?
            .iter()
            .find(|w| &w.id == id)
            .cloned())
    }

    /// A page of a tenant's webhooks, newest first, secrets sealed.
    pub(super) fn list_webhooks(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<WebhookRecord>> {
        let prefix = keys::tenant_prefix(keys::WEBHOOK, tenant);
        let end = match cursor {
            Some(id) => [prefix.as_slice(), id.as_bytes()].concat(),
            None => keys::prefix_end(&prefix),
        };
        let mut items = Vec::new();
        for entry in self.shared.tree.range(prefix.clone()..end).rev() {
            let (_, value) = entry?;
            let webhook = decode_webhook(&value)?;
            let id = webhook.id.to_string();
            items.push(webhook);
            if items.len() == limit {
                return Ok(Page {
                    items,
                    next: Some(id),
                });
            }
        }
        Ok(Page { items, next: None })
    }

    pub(super) fn all_webhook_ids(&self) -> Result<Vec<(String, WebhookId)>> {
        let mut out = Vec::new();
        for entry in self.shared.tree.scan_prefix([keys::WEBHOOK]) {
            let (key, _) = entry?;
            if let Some((tenant, id)) = keys::split_webhook_key(&key) {
                out.push((tenant.to_string(), id));
            }
        }
        Ok(out)
    }

    /// Seals plaintext secrets and re-seals those under a previous key, opening every secret
    /// on the way (a wrong key fails here, naming the webhook).
    pub(super) async fn reseal_webhooks(&self) -> Result<usize> {
        let mut rewritten = 0;
        let stored: Vec<(sled::IVec, sled::IVec)> = self
            .shared
            .tree
            .scan_prefix([keys::WEBHOOK])
            .collect::<std::result::Result<_, _>>()?;
        for (key, old) in stored {
            let Some((tenant, id)) = keys::split_webhook_key(&key) else {
                continue;
            };
            let mut webhook = decode_webhook(&old)?;
            let stale = sealing::needs_reseal(&self.shared.keyring, &webhook);
            self.shared.open_secrets(tenant, &mut webhook)?;
            if stale {
                let json = self.shared.encode_webhook(tenant, &webhook);
                // Nothing else writes before the API starts; a lost race would only leave the
                // record for the next start.
                self.put_webhook(tenant, &id, json, Expect::Bytes(old))
                    .await?;
                rewritten += 1;
            }
        }
        Ok(rewritten)
    }
}
