//! Config hot reload: watches the config file (through its directory, since editors replace
//! files by rename), debounces bursts of changes, and swaps in a new [`Config`] when it is
//! valid. An invalid edit is refused with every problem logged, the running config stays, and
//! the refusal is recorded for `/readyz`.
//!
//! `listen` and `data_dir` apply at the next start only; a reload keeps the running values.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Config, SharedConfig};

/// Quiet time after the last change before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Called after every reload attempt with whether it was applied.
pub type ReloadHook = Box<dyn Fn(bool) + Send + Sync>;

/// Watches `shared`'s source file until `shutdown`. Returns `None` when the config has no
/// source file or the watcher cannot start (logged; the engine runs without hot reload).
pub fn spawn(
    shared: SharedConfig,
    shutdown: CancellationToken,
    on_reload: ReloadHook,
) -> Option<tokio::task::JoinHandle<()>> {
    let path = shared.current().source.clone()?;
    let dir = path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let file_name = path.file_name().map(|n| n.to_os_string());
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
            {
                let _ = tx.send(());
            }
        }) {
            Ok(watcher) => watcher,
            Err(err) => {
                warn!(error = %err, "cannot watch the config file; hot reload is off");
                return None;
            }
        };
    if let Err(err) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(error = %err, dir = %dir.display(), "cannot watch the config directory; hot reload is off");
        return None;
    }
    Some(tokio::spawn(async move {
        let _watcher = watcher; // dropped (stops watching) when the task ends
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                got = rx.recv() => if got.is_none() { break },
            }
            // Debounce: wait until the file has been quiet for DEBOUNCE.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    _ = rx.recv() => continue,
                }
            }
            let applied = reload(&shared, &path);
            on_reload(applied);
        }
    }))
}

/// Reads the file now and applies it if valid. Returns whether it was applied.
pub fn reload(shared: &SharedConfig, path: &std::path::Path) -> bool {
    match Config::load(path) {
        Ok(mut config) => {
            let running = shared.current();
            if config.listen != running.listen || config.data_dir != running.data_dir {
                warn!(
                    "`listen` and `data_dir` changes apply at the next start; keeping the running values"
                );
            }
            config.listen = running.listen;
            config.data_dir = running.data_dir.clone();
            config.source = running.source.clone();
            shared.replace(config);
            shared.record_reload(Ok(()));
            info!(file = %path.display(), "configuration reloaded");
            true
        }
        Err(errors) => {
            for problem in &errors.0 {
                error!(file = %problem.file.display(), key = %problem.key, problem = %problem.problem, "config reload refused");
            }
            warn!(
                problems = errors.0.len(),
                "the new configuration is invalid; the running one stays"
            );
            shared.record_reload(Err(&errors));
            false
        }
    }
}
