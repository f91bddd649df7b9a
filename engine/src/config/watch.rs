//! Config hot reload: watches the config file (through its directory, since editors replace
//! files by rename), debounces bursts of changes, and swaps in a new [`Config`] when it is
//! valid. An invalid edit is refused with every problem logged (file, line, key path, never a
//! value), the running config stays, and the refusal is recorded for `/readyz` (its result) and
//! `GET /v1/admin/status` (its problems). A file whose contents did not change since the last
//! reload is not read again, so one edit is applied or refused (and logged) once, however many
//! file-system events the editor's save produced.
//!
//! A config reached through symlinks is watched along the whole chain: every directory holding
//! one of the links, and the one holding the file itself, re-resolved after each change. So a
//! Kubernetes ConfigMap or Secret volume (`hookd.toml -> ..data/hookd.toml`, updated by renaming
//! a new `..data` link over the old) reloads like a file edited in place. A reload can also be
//! asked for ([`ReloadRequests`], `SIGHUP` in `hookd serve`): it reads the file whether or not it
//! changed, and works where the file cannot be watched.
//!
//! Settings read once at start (`listen`, `data_dir`, `limits.store_cache_mb`, the server's read
//! timeouts, `delivery.dns_servers`, `delivery.max_in_flight`, `delivery.worker_nice`, the
//! `[security]` keys, `plugins.admin_dir`) apply at the next start only: a reload keeps their
//! running values and logs which ones changed (not those set on the command line). A file the
//! engine would refuse to start with (no secret key) is refused.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Config, SharedConfig};

/// Quiet time after the last change before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Called after every reload attempt with whether it was applied.
pub type ReloadHook = Box<dyn Fn(bool) + Send + Sync>;

/// Asks the running watcher to read the config file now, changed or not (`SIGHUP`).
#[derive(Clone, Debug, Default)]
pub struct ReloadRequests(Arc<Notify>);

impl ReloadRequests {
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// Watches `shared`'s source file until `shutdown`, and reloads it when it changes or when
/// asked through the returned [`ReloadRequests`]. `None` when the config has no source file.
/// Where the file cannot be watched (logged), only requests reload it.
pub fn spawn(
    shared: SharedConfig,
    shutdown: CancellationToken,
    on_reload: ReloadHook,
) -> Option<(tokio::task::JoinHandle<()>, ReloadRequests)> {
    let path = shared.current().source.clone()?;
    let requests = ReloadRequests::default();
    let asked = requests.0.clone();
    let (mut watch, mut changes) = match FileWatch::start(&path) {
        Ok((watch, changes)) => (Some(watch), Some(changes)),
        Err(err) => {
            warn!(error = %err, file = %path.display(), "cannot watch the config file; it reloads on SIGHUP only");
            (None, None)
        }
    };
    // What the file held at start or at the last reload: events that leave it unchanged (an
    // editor's temp file, a touch, a burst longer than the debounce) do nothing. Read now, not
    // when the task first runs, or an edit made in between would look like no change.
    let mut last_seen = file_digest(&path);
    let task = tokio::spawn(async move {
        loop {
            let mut asked_for = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = asked.notified() => true,
                () = next_change(&mut changes) => false,
            };
            // Debounce: wait until the file has been quiet for DEBOUNCE (a request ends it).
            while !asked_for {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    _ = asked.notified() => asked_for = true,
                    () = next_change(&mut changes) => continue,
                }
            }
            if let Some(watch) = &mut watch {
                // A link swapped since may point somewhere else now.
                watch.follow();
            }
            let digest = file_digest(&path);
            if !asked_for && digest.is_some() && digest == last_seen {
                continue;
            }
            if asked_for {
                info!(file = %path.display(), "reloading the configuration on request");
            }
            last_seen = digest;
            let applied = reload(&shared, &path);
            on_reload(applied);
        }
    });
    Some((task, requests))
}

/// The next change reported by the watcher; never, without one.
async fn next_change(changes: &mut Option<mpsc::UnboundedReceiver<()>>) {
    if let Some(rx) = changes {
        if rx.recv().await.is_some() {
            return;
        }
        *changes = None;
    }
    std::future::pending::<()>().await
}

/// The directories watched for a config file, and the entries in them that lead to it.
struct FileWatch {
    path: PathBuf,
    watcher: RecommendedWatcher,
    /// The entries whose change can change what `path` reads: each symlink on the way, and the
    /// file.
    chain: Arc<RwLock<BTreeSet<PathBuf>>>,
    dirs: BTreeSet<PathBuf>,
}

impl FileWatch {
    /// Starts watching the directories on `path`'s resolution chain; the receiver gets a
    /// message for every event naming an entry of the chain.
    fn start(path: &Path) -> notify::Result<(Self, mpsc::UnboundedReceiver<()>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let chain = Arc::new(RwLock::new(BTreeSet::new()));
        let seen = chain.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Opening or reading the file changes nothing, and the watcher's own reads would
            // otherwise wake it again, forever.
            if let Ok(event) = event
                && !event.kind.is_access()
            {
                let chain = seen.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                if event.paths.iter().any(|p| chain.contains(p)) {
                    let _ = tx.send(());
                }
            }
        })?;
        let mut watch = FileWatch {
            path: path.to_path_buf(),
            watcher,
            chain,
            dirs: BTreeSet::new(),
        };
        watch.follow();
        if watch.dirs.is_empty() {
            let dir = path.parent().unwrap_or(Path::new("."));
            return Err(notify::Error::path_not_found().add_path(dir.to_path_buf()));
        }
        Ok((watch, rx))
    }

    /// Re-resolves the path and moves the watches to the directories its chain now runs
    /// through, and to their parents: a directory replaced whole (`rm -rf` and `mkdir`, or a
    /// new one renamed over it) takes its watch with it, and only its parent sees the new one.
    /// A directory that cannot be watched now is tried again at the next change.
    fn follow(&mut self) {
        let mut chain: BTreeSet<PathBuf> = resolution_chain(&self.path).into_iter().collect();
        let dirs: BTreeSet<PathBuf> = chain
            .iter()
            .filter_map(|entry| entry.parent().map(Path::to_path_buf))
            .collect();
        let mut wanted = dirs.clone();
        for dir in dirs {
            if let Some(parent) = dir.parent() {
                wanted.insert(parent.to_path_buf());
                chain.insert(dir);
            }
        }
        for dir in self.dirs.difference(&wanted) {
            // It may be gone already (a replaced ConfigMap revision).
            let _ = self.watcher.unwatch(dir);
        }
        // Watched again even if watched before: the directory at that path may be a new one.
        self.dirs = wanted
            .into_iter()
            .filter(|dir| self.watcher.watch(dir, RecursiveMode::NonRecursive).is_ok())
            .collect();
        *self
            .chain
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = chain;
    }
}

/// Every path whose change can change what reading `path` returns: each symlink met while
/// resolving it (in its directory, itself resolved), and the file it ends at, which need not
/// exist. Absolute; at most 40 links are followed, like the kernel.
fn resolution_chain(path: &Path) -> Vec<PathBuf> {
    enum Part {
        Root,
        Up,
        Name(OsString),
    }
    fn parts(path: &Path) -> impl Iterator<Item = Part> + '_ {
        path.components().filter_map(|component| match component {
            Component::RootDir | Component::Prefix(_) => Some(Part::Root),
            Component::CurDir => None,
            Component::ParentDir => Some(Part::Up),
            Component::Normal(name) => Some(Part::Name(name.to_os_string())),
        })
    }
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut pending: VecDeque<Part> = parts(&absolute).collect();
    let mut resolved = PathBuf::from("/");
    let mut chain = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        match part {
            Part::Root => resolved = PathBuf::from("/"),
            Part::Up => {
                resolved.pop();
            }
            Part::Name(name) => {
                let entry = resolved.join(&name);
                let target = match std::fs::symlink_metadata(&entry) {
                    Ok(meta) if meta.file_type().is_symlink() && links < 40 => {
                        std::fs::read_link(&entry).ok()
                    }
                    _ => None,
                };
                match target {
                    Some(target) => {
                        links += 1;
                        chain.push(entry);
                        for part in parts(&target).collect::<Vec<_>>().into_iter().rev() {
                            pending.push_front(part);
                        }
                    }
                    None => resolved = entry,
                }
            }
        }
    }
    chain.push(resolved);
    chain
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
    // The sealing keys opened the store and seal console sessions: set once.
    if config.security != running.security {
        kept.push("security");
        config.security = running.security.clone();
    }
    if config.plugins.admin_dir != running.plugins.admin_dir {
        kept.push("plugins.admin_dir");
        config.plugins.admin_dir = running.plugins.admin_dir.clone();
    }
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
    // A value given on the command line is not the file's to change.
    config.start_overrides = running.start_overrides.clone();
    kept.retain(|key| !running.start_overrides.contains(key));
    kept
}

/// Loads the file as `hookd serve` would start with it: a file it would refuse to start with
/// (no secret key, say, as an empty file has) is refused here too.
fn load_for_reload(path: &std::path::Path) -> Result<Config, super::ConfigErrors> {
    let mut config = Config::load(path)?;
    match config.security.resolve() {
        Ok(()) => Ok(config),
        Err(problem) => Err(super::ConfigErrors(vec![super::ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: "security.secret_key".into(),
            problem,
        }])),
    }
}

/// Reads the file now and applies it if valid. Returns whether it was applied.
pub fn reload(shared: &SharedConfig, path: &std::path::Path) -> bool {
    match load_for_reload(path) {
        Ok(mut config) => {
            let running = shared.current();
            let kept = keep_start_only(&mut config, &running);
            if config.tenants.is_empty() && !running.tenants.is_empty() {
                warn!("the new configuration has no tenants: every tenant API key is refused now");
            }
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

    #[test]
    fn the_sealing_keys_and_the_admin_plugin_dir_are_start_only_and_overrides_are_not_named() {
        let mut running = parse("");
        let other_key = "[plugins]\nadmin_dir = \"/srv/plugins\"\n";
        let mut edited = Config::parse(
            std::path::Path::new("hookd.toml"),
            &format!(
                "data_dir = \"/srv/elsewhere\"\n[security]\nsecret_key = \"{}\"\n{other_key}",
                "b3RoZXItc2VjcmV0LWtleS1mb3ItaG9va2QtdGVzdCE="
            ),
        )
        .expect("valid");
        running.start_overrides = vec!["data_dir"];
        let kept = keep_start_only(&mut edited, &running);
        assert_eq!(kept, ["security", "plugins.admin_dir"]);
        assert!(edited.security == running.security);
        assert_eq!(edited.plugins.admin_dir, None);
        // `--data` set the running data dir: kept, and not reported as a pending change.
        assert_eq!(edited.data_dir, running.data_dir);
        assert_eq!(edited.start_overrides, ["data_dir"]);
    }

    #[test]
    fn the_chain_of_a_plain_file_is_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        let path = real.join("hookd.toml");
        std::fs::write(&path, "").unwrap();
        assert_eq!(resolution_chain(&path), vec![path.clone()]);
        // Not there (yet): still the path to watch for.
        let missing = real.join("nothing.toml");
        assert_eq!(resolution_chain(&missing), vec![missing]);
        // `.` and `..` are resolved away.
        let roundabout = real.join("sub/../.").join("hookd.toml");
        std::fs::create_dir(real.join("sub")).unwrap();
        assert_eq!(resolution_chain(&roundabout), [path]);
    }

    #[test]
    fn the_chain_of_a_kubernetes_volume_runs_through_both_links_to_the_revision() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("..2026_12_05_rev1")).unwrap();
        std::fs::write(real.join("..2026_12_05_rev1/hookd.toml"), "").unwrap();
        symlink("..2026_12_05_rev1", real.join("..data")).unwrap();
        symlink("..data/hookd.toml", real.join("hookd.toml")).unwrap();
        assert_eq!(
            resolution_chain(&real.join("hookd.toml")),
            [
                real.join("hookd.toml"),
                real.join("..data"),
                real.join("..2026_12_05_rev1/hookd.toml"),
            ]
        );
    }

    #[test]
    fn the_chain_follows_absolute_and_relative_links_across_directories_and_stops_at_a_loop() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        for sub in ["etc", "opt/conf"] {
            std::fs::create_dir_all(real.join(sub)).unwrap();
        }
        std::fs::write(real.join("opt/conf/hookd.toml"), "").unwrap();
        symlink(real.join("opt"), real.join("etc/opt-link")).unwrap();
        symlink(
            "opt-link/conf/../conf/hookd.toml",
            real.join("etc/hookd.toml"),
        )
        .unwrap();
        assert_eq!(
            resolution_chain(&real.join("etc/hookd.toml")),
            [
                real.join("etc/hookd.toml"),
                real.join("etc/opt-link"),
                real.join("opt/conf/hookd.toml"),
            ]
        );
        symlink("b", real.join("a")).unwrap();
        symlink("a", real.join("b")).unwrap();
        let chain = resolution_chain(&real.join("a"));
        assert_eq!(chain.len(), 41, "40 links followed, then the entry itself");
    }
}
