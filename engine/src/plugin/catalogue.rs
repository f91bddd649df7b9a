//! The plugin host's side of the store's plugin catalogue (`Store::put_plugin_version` and
//! friends): uploads become stored versions, and every node runs what the catalogue says.
//!
//! - **Upload**: compiled and checked first (`mod.rs`), then stored as the plugin's next version
//!   and published here, under the publish lock.
//! - **Start** ([`PluginHost::follow_catalogue`]): plugin files of an older hookd's state
//!   directory are moved into the catalogue, every current version is loaded (through the
//!   compile worker and the compile cache, keyed by the component's hash), and the host starts
//!   following the store's change notifications.
//! - **Change** (an upload, rollback or delete through any node): one follower task reads the
//!   plugin's head, fetches and compiles the current version if this node runs another, and
//!   swaps it in atomically; attempts already running finish on the version they started with.
//! - **Pinned versions**: a webhook may pin a stored version; it is loaded when first run or
//!   checked, and kept beside the live one.
//! - **Rollback**: a stored version made current, here at once and on other nodes by the
//!   notification.
//! - **Candidates**: every notification also brings the plugin's shadow run in line
//!   (`shadow.rs`).

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::registry::Entry;
use super::runtime::LoadedPlugin;
use super::{
    Inner, PluginError, PluginHost, PluginInfo, PluginLoadError, PluginQuota, PluginSource,
    persist, sha256_hex,
};
use crate::store::{PluginListener, PluginStage, PluginVersion, Store};

/// Who uploaded a version when the caller did not say (the host's own API, tests).
const UPLOADED_BY_HOST: &str = "host";

/// Who uploaded a version found as a file of an older hookd at start.
const UPLOADED_BY_MIGRATION: &str = "migrated";
/// The suffix a plugin file of an older hookd gets when the catalogue already has another
/// component of that name (another node's): kept for the admin, not loaded.
const NOT_IMPORTED: &str = "wasm.not-imported";

/// Who a stored version says uploaded it: the key's hash prefix given, or the host itself.
pub(super) fn uploader(uploaded_by: &str) -> &str {
    if uploaded_by.is_empty() {
        UPLOADED_BY_HOST
    } else {
        uploaded_by
    }
}

/// A plugin's stored versions, newest first, with its current and candidate version ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginVersions {
    pub current: u64,
    pub candidate: Option<u64>,
    pub versions: Vec<PluginVersion>,
}

fn storage(error: crate::store::StoreError) -> PluginLoadError {
    PluginLoadError::Storage(error.to_string())
}

/// Hands the store's change notifications to the follower task.
struct Follower {
    changes: mpsc::UnboundedSender<(String, String)>,
}

impl PluginListener for Follower {
    fn plugin_changed(&self, tenant: &str, name: &str) {
        let _ = self.changes.send((tenant.to_owned(), name.to_owned()));
    }
}

/// Applies notified changes one plugin at a time (changes that arrive together are applied
/// once each), until `shutdown` or the host is dropped.
async fn follow(
    host: Weak<Inner>,
    mut changes: mpsc::UnboundedReceiver<(String, String)>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Some(change) => change,
                None => return,
            },
        };
        let mut pending = vec![first];
        while let Ok(more) = changes.try_recv() {
            if !pending.contains(&more) {
                pending.push(more);
            }
        }
        let Some(inner) = host.upgrade() else { return };
        let host = PluginHost { inner };
        for (tenant, name) in pending {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = host.sync_plugin(&tenant, &name) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = host.sync_shadow(&tenant, &name) => {}
            }
        }
    }
}

impl PluginHost {
    /// Loads every tenant's current plugin versions from the store's catalogue (moving plugin
    /// files of an older hookd into it first) and follows the catalogue's changes until
    /// `shutdown`: the returned task applies them. Nothing to do for a host opened without a
    /// catalogue. A stored version that does not load here is logged and skipped (its
    /// `last_error` says why); a catalogue that cannot be read stops the start.
    pub async fn follow_catalogue(
        &self,
        shutdown: CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, PluginError> {
        let Some(store) = self.inner.catalogue.clone() else {
            return Ok(None);
        };
        self.import_plugin_files(&store).await;
        let (changes, notified) = mpsc::unbounded_channel();
        store.set_plugin_listener(Arc::new(Follower { changes }));
        let follower = tokio::spawn(follow(Arc::downgrade(&self.inner), notified, shutdown));
        let heads = store.plugin_heads().await.map_err(|error| {
            PluginError::Engine(format!("cannot read the plugin catalogue: {error}"))
        })?;
        for head in heads {
            self.sync_plugin(&head.tenant, &head.name).await;
            self.sync_shadow(&head.tenant, &head.name).await;
        }
        Ok(Some(follower))
    }

    /// Stores an upload: the plugin's next version in the catalogue (returned), or files in
    /// the state directory without one.
    pub(super) async fn store_upload(
        &self,
        tenant: &str,
        name: &str,
        plugin: &LoadedPlugin,
        wasm: Vec<u8>,
        meta: persist::StoredMeta,
        uploaded_by: &str,
    ) -> Result<Option<PluginVersion>, PluginLoadError> {
        if let Some(store) = &self.inner.catalogue {
            let uploaded_by = uploader(uploaded_by);
            let version = store
                .put_plugin_version(
                    tenant,
                    name,
                    &plugin.sha256,
                    &wasm,
                    uploaded_by,
                    PluginStage::Current,
                )
                .await
                .map_err(storage)?;
            return Ok(Some(version));
        }
        let state_dir = self.inner.state_dir.clone();
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            persist::save(&state_dir, &tenant, &name, &wasm, &meta)
        })
        .await
        .map_err(|e| PluginLoadError::Storage(format!("storing the plugin panicked: {e}")))?
        .map_err(|e| PluginLoadError::Storage(format!("cannot store the plugin: {e}")))?;
        Ok(None)
    }

    /// The plugin a step runs: the live version, or the stored version it pins (loaded now if
    /// nothing ran it on this node yet).
    pub(super) async fn resolve(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<LoadedPlugin>, PluginLoadError> {
        let registry = &self.inner.registry;
        let Some(version) = version else {
            if let Some(plugin) = registry.get(tenant, name) {
                return Ok(plugin);
            }
            // A plugin another node just stored, whose notification this node has not acted
            // on yet: brought in line now (fetched and compiled) rather than failing the
            // attempt as not installed.
            if self.inner.catalogue.is_some() {
                self.sync_plugin(tenant, name).await;
            }
            return registry.get(tenant, name).ok_or(PluginLoadError::NotFound);
        };
        if let Some(plugin) = registry.get_version(tenant, name, version) {
            return Ok(plugin);
        }
        let Some(store) = &self.inner.catalogue else {
            return Err(PluginLoadError::VersionNotFound { version });
        };
        let plugin = self.load_stored(store, tenant, name, version).await?;
        registry.add_pinned(tenant, name, version, plugin.clone());
        Ok(plugin)
    }

    /// Fetches a stored version's bytes and loads them (compile worker, compile cache).
    pub(super) async fn load_stored(
        &self,
        store: &Arc<dyn Store>,
        tenant: &str,
        name: &str,
        version: u64,
    ) -> Result<Arc<LoadedPlugin>, PluginLoadError> {
        let Some(wasm) = store
            .plugin_bytes(tenant, name, version)
            .await
            .map_err(storage)?
        else {
            let exists = store
                .plugin_head(tenant, name)
                .await
                .map_err(storage)?
                .is_some();
            return Err(if exists {
                PluginLoadError::VersionNotFound { version }
            } else {
                PluginLoadError::NotFound
            });
        };
        let wait = self.inner.settings.compile_wait;
        let (plugin, _) = self.load_blocking(tenant, wasm, None, wait).await?;
        Ok(plugin)
    }

    /// Brings one plugin in line with the catalogue: unloaded if deleted, the current version
    /// fetched, compiled and swapped in if this node runs another; pinned versions the
    /// catalogue no longer holds are forgotten.
    async fn sync_plugin(&self, tenant: &str, name: &str) {
        let Some(store) = self.inner.catalogue.clone() else {
            return;
        };
        let _syncing = self.inner.sync_lock.lock().await;
        let registry = &self.inner.registry;
        let head = {
            let _publishing = self.inner.publish_lock.lock().await;
            let head = match store.plugin_head(tenant, name).await {
                Ok(head) => head,
                Err(error) => {
                    tracing::warn!(%tenant, plugin = %name, %error, "cannot read the plugin's head; the next notification or comparison retries");
                    return;
                }
            };
            let Some(head) = head else {
                registry.retain_pinned(tenant, name, &HashSet::new());
                if registry
                    .remove(tenant, name, Some(PluginSource::Upload))
                    .is_some()
                {
                    tracing::info!(%tenant, plugin = %name, "plugin deleted (catalogue)");
                }
                return;
            };
            let live = registry.entry(tenant, name);
            let running = live.as_ref().and_then(|e| e.stored.as_ref());
            if running == Some(&head.current) {
                return self.forget_dropped_versions(&store, tenant, name).await;
            }
            head
        };
        let wanted = head.current.clone();
        let loaded = match store.plugin_bytes(tenant, name, wanted.id).await {
            Ok(Some(wasm)) if sha256_hex(&wasm) == wanted.sha256 => {
                let wait = super::ADMIN_DIR_COMPILE_WAIT;
                self.load_blocking(tenant, wasm, None, wait)
                    .await
                    .map(|(plugin, _)| plugin)
            }
            Ok(Some(_)) => Err(PluginLoadError::Storage(
                "the stored bytes do not match the version's SHA-256".into(),
            )),
            // Dropped or deleted since the head was read: a notification follows.
            Ok(None) => return,
            Err(error) => Err(storage(error)),
        };
        let plugin = match loaded {
            Ok(plugin) => plugin,
            Err(error) => {
                let message = format!("version {} does not load on this node: {error}", wanted.id);
                tracing::error!(%tenant, plugin = %name, %message, "the previous version stays");
                registry.record_error(tenant, name, &message);
                return;
            }
        };
        let publishing = self.inner.publish_lock.lock().await;
        // Published only if still current (a later change is applied by its own notification).
        match store.plugin_head(tenant, name).await {
            Ok(Some(now)) if now.current == wanted => {
                let info = registry.publish(
                    tenant,
                    name,
                    Entry {
                        plugin,
                        created_ms: now.created_at,
                        updated_ms: now.updated_at,
                        last_error: None,
                        source: PluginSource::Upload,
                        stored: Some(now.current),
                    },
                );
                tracing::info!(%tenant, plugin = %name, version_id = wanted.id, sha256 = %info.sha256, "plugin version loaded from the catalogue");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%tenant, plugin = %name, %error, "cannot read the plugin's head; the next notification or comparison retries");
            }
        }
        drop(publishing);
        self.forget_dropped_versions(&store, tenant, name).await;
    }

    async fn forget_dropped_versions(&self, store: &Arc<dyn Store>, tenant: &str, name: &str) {
        if let Ok(versions) = store.plugin_versions(tenant, name).await {
            let stored: HashSet<(u64, String)> =
                versions.into_iter().map(|v| (v.id, v.sha256)).collect();
            self.inner.registry.retain_pinned(tenant, name, &stored);
        }
    }

    /// A plugin's stored versions (`None`: the tenant has no uploaded plugin of that name).
    pub async fn versions(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<PluginVersions>, PluginLoadError> {
        let Some(store) = &self.inner.catalogue else {
            return Ok(None);
        };
        let Some(head) = store.plugin_head(tenant, name).await.map_err(storage)? else {
            return Ok(None);
        };
        let versions = store.plugin_versions(tenant, name).await.map_err(storage)?;
        Ok(Some(PluginVersions {
            current: head.current.id,
            candidate: head.candidate.map(|c| c.id),
            versions,
        }))
    }

    /// Makes a stored version current: loaded (compiled if this node never ran it), checked
    /// against the tenant's quota, recorded in the catalogue, swapped in here at once and on
    /// other nodes by the catalogue's notification.
    pub async fn rollback(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
        quota: Option<PluginQuota>,
        attached: &[super::Attached],
    ) -> Result<PluginInfo, PluginLoadError> {
        let Some(store) = self.inner.catalogue.clone() else {
            return Err(PluginLoadError::NotFound);
        };
        let plugin = self.resolve(tenant, name, Some(version)).await?;
        self.check_compatible(tenant, name, &plugin, attached)
            .await?;
        if let Some(quota) = quota {
            self.check_quota_for(tenant, name, plugin.size_bytes, quota)?;
        }
        let _publishing = self.inner.publish_lock.lock().await;
        let head = store
            .set_plugin_current(tenant, name, version)
            .await
            .map_err(storage)?
            .ok_or(PluginLoadError::VersionNotFound { version })?;
        let info = self.inner.registry.publish(
            tenant,
            name,
            Entry {
                plugin,
                created_ms: head.created_at,
                updated_ms: head.updated_at,
                last_error: None,
                source: PluginSource::Upload,
                stored: Some(head.current),
            },
        );
        tracing::info!(%tenant, plugin = %name, version_id = version, "plugin rolled back");
        drop(_publishing);
        self.follow_new_current(tenant, name).await;
        // A rollback to the candidate promotes it: its shadow run ends as such.
        self.end_shadow(tenant, name, version, crate::store::ShadowState::Promoted)
            .await
            .map_err(|e| match e {
                super::ShadowError::Load(e) => e,
                other => PluginLoadError::Storage(other.to_string()),
            })?;
        Ok(info)
    }

    /// Moves plugin files of an older hookd (`<state_dir>/plugins/<tenant>/<name>.wasm`) into
    /// the catalogue: a name the catalogue lacks is stored as its first version; a file equal
    /// to the stored current version is just removed; a different one (another node stored
    /// that name first) is renamed `<name>.wasm.not-imported` and left to the admin.
    async fn import_plugin_files(&self, store: &Arc<dyn Store>) {
        let root = self.inner.state_dir.join(persist::PLUGINS_DIR);
        let Ok((found, _)) = tokio::task::spawn_blocking(move || persist::scan(&root)).await else {
            return;
        };
        for (tenant, name, path) in found {
            let Ok(wasm) = std::fs::read(&path) else {
                continue;
            };
            let sha256 = sha256_hex(&wasm);
            let head = match store.plugin_head(&tenant, &name).await {
                Ok(head) => head,
                Err(error) => {
                    tracing::warn!(%tenant, plugin = %name, %error, "cannot move the plugin file into the catalogue; trying again at the next start");
                    continue;
                }
            };
            match head {
                None => {
                    let stored = store
                        .put_plugin_version(
                            &tenant,
                            &name,
                            &sha256,
                            &wasm,
                            UPLOADED_BY_MIGRATION,
                            PluginStage::Current,
                        )
                        .await;
                    if let Err(error) = stored {
                        tracing::warn!(%tenant, plugin = %name, %error, "cannot move the plugin file into the catalogue; trying again at the next start");
                        continue;
                    }
                    tracing::info!(%tenant, plugin = %name, "plugin file moved into the catalogue");
                }
                Some(head) if head.current.sha256 == sha256 => {}
                Some(head) => {
                    tracing::warn!(%tenant, plugin = %name, file = %path.display(), stored = %head.current.sha256, "the catalogue holds another component of this name (stored through another node); the file is renamed .{NOT_IMPORTED} and not loaded");
                    let _ = std::fs::rename(&path, path.with_extension(NOT_IMPORTED));
                    continue;
                }
            }
            persist::delete(&self.inner.state_dir, &tenant, &name);
        }
    }
}
