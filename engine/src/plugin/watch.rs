//! The admin plugin directory: `<dir>/<tenant>/<name>.wasm` files that the host loads and keeps
//! in sync. A notify watcher (falling back to polling if the OS watcher cannot start) triggers
//! a debounced rescan; the rescan compares content hashes with what it loaded before, loads new
//! and changed files through the same pipeline as uploads, and unloads plugins whose file is
//! gone. A file that fails to load is logged and the version already loaded stays live.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio_util::sync::CancellationToken;

use super::{PluginHost, persist, sha256_hex};

/// Quiet time after the last file event before rescanning (editors and `cp` write in steps).
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// Rescan interval when no OS watcher could be started.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// (tenant, plugin name) → SHA-256 of the file last loaded (or tried).
type Known = HashMap<(String, String), String>;

pub(crate) async fn run(host: PluginHost, dir: PathBuf, shutdown: CancellationToken) {
    if let Err(error) = tokio::fs::create_dir_all(&dir).await {
        tracing::warn!(dir = %dir.display(), %error, "cannot create the admin plugin directory");
    }
    let (events, mut notified) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Any event but an open or read (or a watcher error) asks for a rescan: the rescan's
        // own reads would otherwise ask for the next one, forever (every plugin file was read
        // and hashed ~3 times a second).
        if event.is_ok_and(|event| event.kind.is_access()) {
            return;
        }
        let _ = events.send(());
    })
    .and_then(|mut watcher| {
        watcher.watch(&dir, RecursiveMode::Recursive)?;
        Ok(watcher)
    });
    let watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch the admin plugin directory; polling instead");
            None
        }
    };

    let mut known = Known::new();
    sync(&host, &dir, &mut known).await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = notified.recv(), if watcher.is_some() => {
                if event.is_none() {
                    break;
                }
                // Debounce: wait until events stop for DEBOUNCE.
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(DEBOUNCE) => break,
                        more = notified.recv() => if more.is_none() { break },
                    }
                }
                sync(&host, &dir, &mut known).await;
            }
            () = tokio::time::sleep(POLL_INTERVAL), if watcher.is_none() => {
                sync(&host, &dir, &mut known).await;
            }
        }
    }
    drop(watcher);
}

/// One rescan: load what is new or changed, unload what disappeared.
async fn sync(host: &PluginHost, dir: &Path, known: &mut Known) {
    let root = dir.to_path_buf();
    let Ok(files) = tokio::task::spawn_blocking(move || read_all(&root)).await else {
        return;
    };
    let mut present = Known::new();
    for (tenant, name, wasm) in files {
        let sha256 = sha256_hex(&wasm);
        let key = (tenant, name);
        present.insert(key.clone(), sha256.clone());
        if known.get(&key) == Some(&sha256) {
            continue;
        }
        known.insert(key.clone(), sha256);
        let (tenant, name) = key;
        match host.install_admin(&tenant, &name, wasm).await {
            Ok(info) => {
                tracing::info!(%tenant, plugin = %name, version = %info.version, "admin directory plugin loaded");
            }
            Err(error) => {
                tracing::error!(%tenant, plugin = %name, %error, "admin directory plugin does not load; the previous version stays");
            }
        }
    }
    let gone: Vec<(String, String)> = known
        .keys()
        .filter(|key| !present.contains_key(*key))
        .cloned()
        .collect();
    for (tenant, name) in gone {
        known.remove(&(tenant.clone(), name.clone()));
        if host.unload_admin(&tenant, &name) {
            tracing::info!(%tenant, plugin = %name, "admin directory plugin removed");
        }
    }
}

/// Reads every valid `<tenant>/<name>.wasm` under `root`.
fn read_all(root: &Path) -> Vec<(String, String, Vec<u8>)> {
    let (found, skipped) = persist::scan(root);
    for path in skipped {
        tracing::warn!(path = %path.display(), "ignoring admin plugin file with an invalid tenant or plugin name");
    }
    found
        .into_iter()
        .filter_map(|(tenant, name, path)| match std::fs::read(&path) {
            Ok(wasm) => Some((tenant, name, wasm)),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read admin plugin file");
                None
            }
        })
        .collect()
}
