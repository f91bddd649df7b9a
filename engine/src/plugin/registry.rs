//! The in-memory catalogue of loaded plugins, per tenant: which version of each plugin is live
//! ([`Entry`]), its metadata, and the last load error; plus the other stored versions that
//! webhooks pin, loaded when first needed. Publishing replaces an entry's plugin under a short
//! write lock (an atomic swap for readers): attempts already running keep the `Arc` of the
//! version they started with. Every read takes a tenant, so one tenant never sees another's
//! plugins.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use super::runtime::LoadedPlugin;
use crate::store::PluginVersion;

/// Where a plugin came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginSource {
    /// Uploaded through the API (kept in the store's plugin catalogue, shared by every node).
    Upload,
    /// A file in the admin plugin directory (not persisted: the directory is the source).
    AdminDir,
}

/// What the API shows about a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginInfo {
    /// The plugin's name within the tenant (the upload path, or the file stem).
    pub name: String,
    /// The version the plugin reports (`meta.describe`).
    pub version: String,
    /// The name the plugin reports for itself (`meta.describe`).
    pub declared_name: String,
    /// Hex SHA-256 of the component bytes: identifies the live version.
    pub sha256: String,
    /// Hooks it implements, in chain order.
    pub hooks: Vec<String>,
    /// Size of the component in bytes.
    pub size_bytes: usize,
    /// When the plugin was first installed, ms since the Unix epoch.
    pub created_ms: u64,
    /// When the live version was installed, ms since the Unix epoch.
    pub updated_ms: u64,
    /// Why the latest load of a newer version failed, if it did (the live version stayed).
    pub last_error: Option<String>,
    /// Upload or admin directory.
    pub source: PluginSource,
    /// The stored version that is live (uploads kept in the store's catalogue).
    pub stored: Option<PluginVersion>,
}

/// A live plugin and its metadata.
#[derive(Clone)]
pub(crate) struct Entry {
    pub plugin: Arc<LoadedPlugin>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub last_error: Option<String>,
    pub source: PluginSource,
    /// The stored version this is, for uploads kept in the store's catalogue.
    pub stored: Option<PluginVersion>,
}

impl Entry {
    pub(crate) fn info(&self, name: &str) -> PluginInfo {
        let description = &self.plugin.description;
        PluginInfo {
            name: name.to_owned(),
            version: description.version.clone(),
            declared_name: description.name.clone(),
            sha256: self.plugin.sha256.clone(),
            hooks: description.hooks.clone(),
            size_bytes: self.plugin.size_bytes,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            last_error: self.last_error.clone(),
            source: self.source,
            stored: self.stored.clone(),
        }
    }
}

type Tenants = HashMap<String, HashMap<String, Entry>>;

/// (tenant, plugin name, version id).
type VersionKey = (String, String, u64);

/// Loaded plugins by tenant, then name.
#[derive(Default)]
pub(crate) struct Registry {
    tenants: RwLock<Tenants>,
    /// Stored versions other than the live one, loaded because a webhook pins them.
    pinned: Mutex<HashMap<VersionKey, Arc<LoadedPlugin>>>,
}

impl Registry {
    fn read(&self) -> RwLockReadGuard<'_, Tenants> {
        self.tenants
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tenants> {
        self.tenants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live version of a plugin.
    pub(crate) fn get(&self, tenant: &str, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.read()
            .get(tenant)?
            .get(name)
            .map(|entry| entry.plugin.clone())
    }

    /// A stored version of an uploaded plugin, if it is loaded: the live entry when it is that
    /// version, else a pinned one.
    pub(crate) fn get_version(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
    ) -> Option<Arc<LoadedPlugin>> {
        if let Some(entry) = self.read().get(tenant).and_then(|p| p.get(name))
            && entry.stored.as_ref().is_some_and(|v| v.id == version)
        {
            return Some(entry.plugin.clone());
        }
        self.pinned()
            .get(&(tenant.to_owned(), name.to_owned(), version))
            .cloned()
    }

    /// Keeps a loaded version a webhook pins.
    pub(crate) fn add_pinned(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
        plugin: Arc<LoadedPlugin>,
    ) {
        self.pinned()
            .insert((tenant.to_owned(), name.to_owned(), version), plugin);
    }

    /// Forgets the pinned versions of a plugin that are not among `stored` (id, sha256): the
    /// catalogue dropped them, or the name was deleted and uploaded again.
    pub(crate) fn retain_pinned(&self, tenant: &str, name: &str, stored: &HashSet<(u64, String)>) {
        self.pinned().retain(|(t, n, id), plugin| {
            t != tenant || n != name || stored.contains(&(*id, plugin.sha256.clone()))
        });
    }

    fn pinned(&self) -> std::sync::MutexGuard<'_, HashMap<VersionKey, Arc<LoadedPlugin>>> {
        self.pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn entry(&self, tenant: &str, name: &str) -> Option<Entry> {
        self.read().get(tenant)?.get(name).cloned()
    }

    /// A tenant's plugins, sorted by name.
    pub(crate) fn list(&self, tenant: &str) -> Vec<PluginInfo> {
        let tenants = self.read();
        let mut infos: Vec<PluginInfo> = tenants
            .get(tenant)
            .map(|plugins| plugins.iter().map(|(name, e)| e.info(name)).collect())
            .unwrap_or_default();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// How many uploaded plugins the tenant has and their bytes, leaving out `except` (admin
    /// directory plugins do not count against a tenant's quotas).
    pub(crate) fn usage(&self, tenant: &str, except: Option<&str>) -> super::PluginUsage {
        let tenants = self.read();
        let mut usage = super::PluginUsage::default();
        for (name, entry) in tenants.get(tenant).into_iter().flatten() {
            if entry.source == PluginSource::Upload && Some(name.as_str()) != except {
                usage.plugins += 1;
                usage.bytes += entry.plugin.size_bytes as u64;
            }
        }
        usage
    }

    /// Makes `entry` the live version (keeping the original creation time).
    pub(crate) fn publish(&self, tenant: &str, name: &str, mut entry: Entry) -> PluginInfo {
        let mut tenants = self.write();
        let plugins = tenants.entry(tenant.to_owned()).or_default();
        if let Some(old) = plugins.get(name) {
            entry.created_ms = old.created_ms.min(entry.created_ms);
        }
        let info = entry.info(name);
        plugins.insert(name.to_owned(), entry);
        info
    }

    /// Records a failed load on the live version, if there is one.
    pub(crate) fn record_error(&self, tenant: &str, name: &str, error: &str) -> bool {
        let mut tenants = self.write();
        match tenants.get_mut(tenant).and_then(|p| p.get_mut(name)) {
            Some(entry) => {
                entry.last_error = Some(error.to_owned());
                true
            }
            None => false,
        }
    }

    /// Unloads a plugin; with `only_from`, only if it came from that source.
    pub(crate) fn remove(
        &self,
        tenant: &str,
        name: &str,
        only_from: Option<PluginSource>,
    ) -> Option<Entry> {
        let mut tenants = self.write();
        let plugins = tenants.get_mut(tenant)?;
        if let Some(source) = only_from
            && plugins.get(name)?.source != source
        {
            return None;
        }
        let removed = plugins.remove(name);
        if plugins.is_empty() {
            tenants.remove(tenant);
        }
        removed
    }
}
