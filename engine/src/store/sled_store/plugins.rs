//! The plugin catalogue of the sled backend: tenants' uploaded plugins, every stored version,
//! and which one is current.
//!
//! Metadata lives in a sled tree of its own (`hookd/plugins`), written here directly — not
//! through the writer's log: uploads are rare, small and not part of the delivery data flow:
//!
//! ```text
//! H <tenant> NUL <name>                 → head: current, candidate, next id, times (JSON)
//! V <tenant> NUL <name> NUL <id, u64 BE> → one version: id, sha256, size, time, uploader (JSON)
//! S …, C …                               → shadow runs of candidates (`shadow.rs`)
//! ```
//!
//! Component bytes are files `<data_dir>/plugin-store/<tenant>/<sha256>.wasm` (content
//! addressed: a version uploaded again costs no bytes), written by temp file, fsync and rename
//! before the metadata names them, and removed after the metadata stops naming them. A change
//! is durable when the writer's flush returns (it syncs the log first, then sled: the writer's
//! order is kept), and only then is the [`PluginListener`] told.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::SledStore;
use crate::ids::now_ms;
use crate::store::{
    PluginHead, PluginListener, PluginStage, PluginVersion, Result, StoreError, pinned_versions,
    versions_to_drop,
};

/// The sled tree of the catalogue.
const TREE: &str = "hookd/plugins";
/// The directory of component bytes, under the data dir.
const BYTES_DIR: &str = "plugin-store";

const HEAD: u8 = b'H';
const VERSION: u8 = b'V';

/// The catalogue's state inside a [`SledStore`].
pub(super) struct Catalogue {
    pub(super) tree: sled::Tree,
    dir: PathBuf,
    /// Serialises catalogue writes (version ids are read, then written; shadow reports).
    pub(super) lock: tokio::sync::Mutex<()>,
    listener: OnceLock<Arc<dyn PluginListener>>,
}

/// A plugin's head as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredHead {
    pub(super) current: u64,
    #[serde(default)]
    pub(super) candidate: Option<u64>,
    pub(super) next_id: u64,
    pub(super) created_at: u64,
    pub(super) updated_at: u64,
}

pub(super) fn head_key(tenant: &str, name: &str) -> Vec<u8> {
    let mut key = vec![HEAD];
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key
}

/// `V tenant NUL` (every version of the tenant) or, with a name, `V tenant NUL name NUL`.
fn versions_prefix(tenant: &str, name: Option<&str>) -> Vec<u8> {
    let mut key = vec![VERSION];
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    if let Some(name) = name {
        key.extend_from_slice(name.as_bytes());
        key.push(0);
    }
    key
}

fn version_key(tenant: &str, name: &str, id: u64) -> Vec<u8> {
    let mut key = versions_prefix(tenant, Some(name));
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|err| StoreError::Corrupt(format!("a plugin catalogue record: {err}")))
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("catalogue records serialise")
}

fn io(err: std::io::Error) -> StoreError {
    StoreError::Io(format!("plugin bytes: {err}"))
}

/// Tenant ids and plugin names become path components and key parts: the plugin host checks
/// them, and this refuses anything else rather than trust it.
fn check_part(part: &str) -> Result<()> {
    let ok = !part.is_empty()
        && part.len() <= 128
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Io(format!(
            "{part:?} is not usable as a tenant or plugin name in the plugin catalogue"
        )))
    }
}

/// Writes `bytes` to `path` whole or not at all: temp file, fsync, rename, fsync of the dir.
fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

impl Catalogue {
    pub(super) fn open(db: &sled::Db, data_dir: &Path) -> Result<Catalogue> {
        Ok(Catalogue {
            tree: db.open_tree(TREE)?,
            dir: data_dir.join(BYTES_DIR),
            lock: tokio::sync::Mutex::new(()),
            listener: OnceLock::new(),
        })
    }

    pub(super) fn set_listener(&self, listener: Arc<dyn PluginListener>) {
        let _ = self.listener.set(listener);
    }

    fn bytes_path(&self, tenant: &str, sha256: &str) -> PathBuf {
        self.dir.join(tenant).join(format!("{sha256}.wasm"))
    }

    pub(super) fn head(&self, tenant: &str, name: &str) -> Result<Option<StoredHead>> {
        self.tree
            .get(head_key(tenant, name))?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    fn version(&self, tenant: &str, name: &str, id: u64) -> Result<Option<PluginVersion>> {
        self.tree
            .get(version_key(tenant, name, id))?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    /// Versions under `prefix`, in key order (oldest first within a name).
    fn scan_versions(&self, prefix: &[u8]) -> Result<Vec<PluginVersion>> {
        self.tree
            .scan_prefix(prefix)
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    fn full_head(&self, tenant: &str, name: &str, head: &StoredHead) -> Result<PluginHead> {
        let missing =
            |id| StoreError::Corrupt(format!("plugin {tenant}/{name} lacks version {id}"));
        let current = self
            .version(tenant, name, head.current)?
            .ok_or_else(|| missing(head.current))?;
        let candidate = match head.candidate {
            Some(id) => Some(self.version(tenant, name, id)?.ok_or_else(|| missing(id))?),
            None => None,
        };
        Ok(PluginHead {
            tenant: tenant.to_string(),
            name: name.to_string(),
            current,
            candidate,
            created_at: head.created_at,
            updated_at: head.updated_at,
        })
    }

    /// Removes the byte files of `shas` that no version of the tenant names any more.
    async fn remove_unreferenced(&self, tenant: &str, shas: HashSet<String>) -> Result<()> {
        if shas.is_empty() {
            return Ok(());
        }
        let named: HashSet<String> = self
            .scan_versions(&versions_prefix(tenant, None))?
            .into_iter()
            .map(|v| v.sha256)
            .collect();
        let paths: Vec<PathBuf> = shas
            .iter()
            .filter(|sha| !named.contains(*sha))
            .map(|sha| self.bytes_path(tenant, sha))
            .collect();
        tokio::task::spawn_blocking(move || {
            for path in paths {
                match std::fs::remove_file(&path) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(path = %path.display(), error = %err, "cannot remove a dropped plugin version's bytes");
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|err| StoreError::Interrupted(err.to_string()))
    }

    pub(super) fn changed(&self, tenant: &str, name: &str) {
        if let Some(listener) = self.listener.get() {
            listener.plugin_changed(tenant, name);
        }
    }
}

impl SledStore {
    pub(super) async fn put_plugin_version(
        &self,
        tenant: &str,
        name: &str,
        sha256: &str,
        bytes: &[u8],
        uploaded_by: &str,
        stage: PluginStage,
    ) -> Result<PluginVersion> {
        check_part(tenant)?;
        check_part(name)?;
        let catalogue = &self.plugins;
        let _writing = catalogue.lock.lock().await;
        let head = catalogue.head(tenant, name)?;
        if let Some(head) = &head
            && stage == PluginStage::Current
            && let Some(current) = catalogue.version(tenant, name, head.current)?
            && current.sha256 == sha256
        {
            return Ok(current);
        }
        let path = catalogue.bytes_path(tenant, sha256);
        let owned = bytes.to_vec();
        tokio::task::spawn_blocking(move || {
            if path.exists() {
                return Ok(());
            }
            write_file_atomically(&path, &owned)
        })
        .await
        .map_err(|err| StoreError::Interrupted(err.to_string()))?
        .map_err(io)?;

        let now = now_ms();
        let id = head.as_ref().map_or(1, |h| h.next_id);
        let version = PluginVersion {
            id,
            sha256: sha256.to_string(),
            size: bytes.len() as u64,
            created_at: now,
            uploaded_by: uploaded_by.to_string(),
        };
        let new_head = match (head, stage) {
            (Some(head), PluginStage::Candidate) => StoredHead {
                candidate: Some(id),
                next_id: id + 1,
                ..head
            },
            (Some(head), PluginStage::Current) => StoredHead {
                current: id,
                next_id: id + 1,
                updated_at: now,
                ..head
            },
            (None, _) => StoredHead {
                current: id,
                candidate: None,
                next_id: id + 1,
                created_at: now,
                updated_at: now,
            },
        };
        let mut batch = sled::Batch::default();
        batch.insert(version_key(tenant, name, id), encode(&version));
        batch.insert(head_key(tenant, name), encode(&new_head));

        // Bounded history: the oldest versions nothing uses go in the same batch.
        let stored = catalogue.scan_versions(&versions_prefix(tenant, Some(name)))?;
        let mut ids: Vec<u64> = stored.iter().map(|v| v.id).collect();
        ids.push(id);
        let pinned = pinned_versions(&self.shared.webhooks_of(tenant)?, name);
        let dropped = versions_to_drop(&ids, new_head.current, new_head.candidate, &pinned);
        let mut dropped_shas = HashSet::new();
        for old in stored.iter().filter(|v| dropped.contains(&v.id)) {
            batch.remove(version_key(tenant, name, old.id));
            dropped_shas.insert(old.sha256.clone());
        }
        catalogue.tree.apply_batch(batch)?;
        self.durable().await?;
        catalogue.remove_unreferenced(tenant, dropped_shas).await?;
        catalogue.changed(tenant, name);
        Ok(version)
    }

    pub(super) fn plugin_versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginVersion>> {
        let mut versions = self
            .plugins
            .scan_versions(&versions_prefix(tenant, Some(name)))?;
        versions.reverse();
        Ok(versions)
    }

    pub(super) fn plugin_head(&self, tenant: &str, name: &str) -> Result<Option<PluginHead>> {
        match self.plugins.head(tenant, name)? {
            Some(head) => Ok(Some(self.plugins.full_head(tenant, name, &head)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn plugin_bytes(
        &self,
        tenant: &str,
        name: &str,
        id: u64,
    ) -> Result<Option<Vec<u8>>> {
        let Some(version) = self.plugins.version(tenant, name, id)? else {
            return Ok(None);
        };
        let path = self.plugins.bytes_path(tenant, &version.sha256);
        let read = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|err| StoreError::Interrupted(err.to_string()))?;
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) => Err(StoreError::Corrupt(format!(
                "the bytes of plugin {tenant}/{name} version {id}: {err}"
            ))),
        }
    }

    pub(super) async fn set_plugin_current(
        &self,
        tenant: &str,
        name: &str,
        id: u64,
    ) -> Result<Option<PluginHead>> {
        let catalogue = &self.plugins;
        let _writing = catalogue.lock.lock().await;
        let Some(mut head) = catalogue.head(tenant, name)? else {
            return Ok(None);
        };
        if catalogue.version(tenant, name, id)?.is_none() {
            return Ok(None);
        }
        if head.current != id {
            head.current = id;
            if head.candidate == Some(id) {
                head.candidate = None;
            }
            head.updated_at = now_ms();
            catalogue
                .tree
                .insert(head_key(tenant, name), encode(&head))?;
            self.durable().await?;
            catalogue.changed(tenant, name);
        }
        catalogue.full_head(tenant, name, &head).map(Some)
    }

    pub(super) async fn delete_plugin(&self, tenant: &str, name: &str) -> Result<bool> {
        let catalogue = &self.plugins;
        let _writing = catalogue.lock.lock().await;
        if catalogue.head(tenant, name)?.is_none() {
            return Ok(false);
        }
        let versions = catalogue.scan_versions(&versions_prefix(tenant, Some(name)))?;
        let mut batch = sled::Batch::default();
        batch.remove(head_key(tenant, name));
        for version in &versions {
            batch.remove(version_key(tenant, name, version.id));
        }
        super::shadow::remove_report(&catalogue.tree, &mut batch, tenant, name)?;
        catalogue.tree.apply_batch(batch)?;
        self.durable().await?;
        let shas = versions.into_iter().map(|v| v.sha256).collect();
        catalogue.remove_unreferenced(tenant, shas).await?;
        catalogue.changed(tenant, name);
        Ok(true)
    }

    pub(super) fn plugin_heads(&self) -> Result<Vec<PluginHead>> {
        let catalogue = &self.plugins;
        let mut heads = Vec::new();
        for entry in catalogue.tree.scan_prefix([HEAD]) {
            let (key, value) = entry?;
            let body = &key[1..];
            let Some(sep) = body.iter().position(|b| *b == 0) else {
                continue;
            };
            let (Ok(tenant), Ok(name)) = (
                std::str::from_utf8(&body[..sep]),
                std::str::from_utf8(&body[sep + 1..]),
            ) else {
                continue;
            };
            heads.push(catalogue.full_head(tenant, name, &decode(&value)?)?);
        }
        Ok(heads)
    }

    /// Makes the catalogue's writes durable through the writer's flush (the log's sync, then
    /// sled's), which keeps sled's checkpoint behind a log that is on disk.
    pub(super) async fn durable(&self) -> Result<()> {
        crate::store::Store::flush(self).await
    }
}
