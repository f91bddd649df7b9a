//! Config hot reload: watches the config file (through its directory, since editors replace
//! files by rename), debounces bursts of changes, and swaps in a new [`Config`] when it is
//! valid. An invalid edit is refused with every problem logged (file, line, key path, never a
//! value), the running config stays, and the refusal is recorded for `/readyz` (its result) and
//! `GET /v1/admin/status` (its problems). A file whose contents did not change since the last
//! reload is not read again, so one edit is applied or refused (and logged) once, however many
//! file-system events the editor's save produced.
//!
//! Settings read once at start (`listen`, `data_dir`, `limits.store_cache_mb`, the server's read
//! timeouts, `delivery.dns_servers`, `delivery.max_in_flight`, `delivery.worker_nice`) apply at
//! the next start only: a reload keeps their running values and logs which ones changed.

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
        // What the file held at start or at the last reload: events that leave it unchanged
        // (an editor's temp file, a touch, a burst longer than the debounce) do nothing.
        let mut last_seen = file_digest(&path);
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
            let digest = file_digest(&path);
            if digest.is_some() && digest == last_seen {
                continue;
            }
            last_seen = digest;
            let applied = reload(&shared, &path);
            on_reload(applied);
        }
    }))
}

/// SHA-256 of the file's contents, or `None` if it cannot be read now (then the reload runs
/// and reports why).
fn file_digest(path: &std::path::Path) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    std::fs::read(path)
        .ok()
        .map(|bytes| sha2::Sha256::digest(&bytes).into())
}

/// Settings read once at start (the listener, the store, the HTTP server's timeouts, the
/// outbound resolver, the global in-flight cap, the delivery workers' priority): a reload keeps
/// their running values, so the live config never claims what the engine does not do, and
/// names the keys that changed.
fn keep_start_only(config: &mut Config, running: &Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    if config.listen != running.listen {
        kept.push("listen");
        config.listen = running.listen;
    }
    if config.data_dir != running.data_dir {
        kept.push("data_dir");
        config.data_dir = running.data_dir.clone();
    }
    if config.limits.store_cache_bytes != running.limits.store_cache_bytes {
        kept.push("limits.store_cache_mb");
        config.limits.store_cache_bytes = running.limits.store_cache_bytes;
    }
    if config.limits.header_read_timeout != running.limits.header_read_timeout {
        kept.push("limits.header_read_timeout");
        config.limits.header_read_timeout = running.limits.header_read_timeout;
    }
    if config.limits.body_read_timeout != running.limits.body_read_timeout {
        kept.push("limits.body_read_timeout");
        config.limits.body_read_timeout = running.limits.body_read_timeout;
    }
    if config.delivery.dns_servers != running.delivery.dns_servers {
        kept.push("delivery.dns_servers");
        config.delivery.dns_servers = running.delivery.dns_servers.clone();
    }
    // The running URL may have come from the environment, which a reload does not read.
    let mut file_store = config.store.clone();
    if file_store.postgres_url().is_none() {
        file_store.apply_env();
    }
    if file_store != running.store {
        kept.push("store");
    }
    config.store = running.store.clone();
    // A thread may lower its own priority but not raise it back, so it is set once.
    if config.delivery.worker_nice != running.delivery.worker_nice {
        kept.push("delivery.worker_nice");
        config.delivery.worker_nice = running.delivery.worker_nice;
    }
    if config.delivery.max_in_flight != running.delivery.max_in_flight {
        kept.push("delivery.max_in_flight");
        config.delivery.max_in_flight = running.delivery.max_in_flight;
    }
    kept
}

/// Reads the file now and applies it if valid. Returns whether it was applied.
pub fn reload(shared: &SharedConfig, path: &std::path::Path) -> bool {
    match Config::load(path) {
        Ok(mut config) => {
            let running = shared.current();
            let kept = keep_start_only(&mut config, &running);
            if !kept.is_empty() {
                warn!(
                    keys = kept.join(", "),
                    "these settings apply at the next start; keeping their running values"
                );
            }
            config.source = running.source.clone();
            shared.replace(config);
            shared.record_reload(Ok(()));
            info!(file = %path.display(), "configuration reloaded");
            true
        }
        Err(errors) => {
            for problem in &errors.0 {
                // `Display` names file, line and key path and redacts values.
                error!(problem = %problem, "config reload refused");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Config {
        let text = format!(
            "data_dir = \"/tmp/hookd-watch-test\"\n[security]\nsecret_key = \"dGVzdC1zZWNyZXQta2V5LWZvci1ob29rZC10ZXN0cyE=\"\n{extra}"
        );
        Config::parse(std::path::Path::new("hookd.toml"), &text).expect("valid")
    }

    #[test]
    fn a_reload_keeps_start_only_settings_and_names_them() {
        let running = parse("");
        let mut edited = parse(
            "[limits]\nstore_cache_mb = 128\nheader_read_timeout = \"3s\"\nretention_days = 7\n\
             [delivery]\ndns_servers = [\"127.0.0.1:5353\"]\nmax_in_flight = 8\nattempt_timeout = \"2s\"\n",
        );
        let kept = keep_start_only(&mut edited, &running);
        assert_eq!(
            kept,
            [
                "limits.store_cache_mb",
                "limits.header_read_timeout",
                "delivery.dns_servers",
                "delivery.max_in_flight"
            ]
        );
        assert_eq!(
            edited.limits.store_cache_bytes,
            running.limits.store_cache_bytes
        );
        assert_eq!(edited.delivery.dns_servers, running.delivery.dns_servers);
        assert_eq!(
            edited.delivery.max_in_flight,
            running.delivery.max_in_flight
        );
        // Live settings take the new values.
        assert_eq!(
            edited.delivery.attempt_timeout,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(
            edited.limits.retention,
            std::time::Duration::from_secs(7 * 86_400)
        );
        // Nothing changed, nothing named.
        let mut same = parse("");
        assert!(keep_start_only(&mut same, &running).is_empty());
    }
}
