//! The on-disk layout of uploaded plugins under the state directory, and the name rules that
//! keep it safe:
//!
//! ```text
//! <state_dir>/plugins/<tenant>/<name>.wasm   the component as uploaded
//! <state_dir>/plugins/<tenant>/<name>.json   created/updated times and the last load error
//! <state_dir>/plugin-cache/                  compiled artifacts (wasmtime's cache, keyed by
//!                                            SHA-256 of the component and engine settings)
//! ```
//!
//! Every file is written to a temporary name, synced and renamed into place, so a crash leaves
//! the old or the new version, never a torn one.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Subdirectory of the state directory holding uploaded components.
pub const PLUGINS_DIR: &str = "plugins";
/// Subdirectory of the state directory holding the compile cache.
pub const CACHE_DIR: &str = "plugin-cache";
/// Longest plugin name.
pub const MAX_PLUGIN_NAME_BYTES: usize = 64;
/// Longest tenant id usable as a directory name.
pub const MAX_TENANT_BYTES: usize = 128;

/// Checks a plugin name: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let valid_first = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let valid_rest = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
    if valid_first && valid_rest && bytes.len() <= MAX_PLUGIN_NAME_BYTES {
        Ok(())
    } else {
        Err(format!(
            "plugin name {:?} must match [a-z0-9][a-z0-9_-]{{0,63}}",
            super::policy::truncate(name, 80)
        ))
    }
}

/// Checks that a tenant id is usable as one directory name (`[A-Za-z0-9_-]`, not empty).
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    let ok = !tenant.is_empty()
        && tenant.len() <= MAX_TENANT_BYTES
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tenant id {:?} is not usable for plugins (allowed: A-Z a-z 0-9 _ -)",
            super::policy::truncate(tenant, 80)
        ))
    }
}

/// Metadata persisted beside each uploaded component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMeta {
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Paths of one tenant's plugin.
pub fn plugin_paths(state_dir: &Path, tenant: &str, name: &str) -> (PathBuf, PathBuf) {
    let dir = state_dir.join(PLUGINS_DIR).join(tenant);
    (
        dir.join(format!("{name}.wasm")),
        dir.join(format!("{name}.json")),
    )
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Persists a newly installed component and its metadata.
pub fn save(
    state_dir: &Path,
    tenant: &str,
    name: &str,
    wasm: &[u8],
    meta: &StoredMeta,
) -> std::io::Result<()> {
    let (wasm_path, meta_path) = plugin_paths(state_dir, tenant, name);
    write_atomic(&wasm_path, wasm)?;
    save_meta(&meta_path, meta)
}

/// Persists metadata only (e.g. a new last error).
pub fn save_meta(meta_path: &Path, meta: &StoredMeta) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    write_atomic(meta_path, &json)
}

/// Reads the metadata of a stored plugin (defaults if missing or unreadable).
pub fn load_meta(meta_path: &Path) -> StoredMeta {
    fs::read(meta_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Deletes a stored plugin; true if its component file existed.
pub fn delete(state_dir: &Path, tenant: &str, name: &str) -> bool {
    let (wasm_path, meta_path) = plugin_paths(state_dir, tenant, name);
    let existed = fs::remove_file(&wasm_path).is_ok();
    let _ = fs::remove_file(&meta_path);
    existed
}

/// Every `<tenant>/<name>.wasm` under `root` with a valid tenant and plugin name; others are
/// returned separately so the caller can log them.
pub fn scan(root: &Path) -> (Vec<(String, String, PathBuf)>, Vec<PathBuf>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let Ok(tenants) = fs::read_dir(root) else {
        return (found, skipped);
    };
    for tenant_dir in tenants.flatten() {
        let tenant_path = tenant_dir.path();
        if !tenant_path.is_dir() {
            continue;
        }
        let tenant = tenant_dir.file_name().to_string_lossy().into_owned();
        if tenant.starts_with('.') {
            continue;
        }
        let Ok(files) = fs::read_dir(&tenant_path) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|ext| ext != "wasm") || !path.is_file() {
                continue;
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if check_tenant(&tenant).is_ok() && check_plugin_name(&name).is_ok() {
                found.push((tenant.clone(), name, path));
            } else {
                skipped.push(path);
            }
        }
    }
    found.sort();
    (found, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names() {
        for ok in ["a", "json-filter", "github_signer2", "0x", &"a".repeat(64)] {
            assert!(check_plugin_name(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a.b",
            "a/b",
            "..",
            "a b",
            &"a".repeat(65),
            "é",
        ] {
            assert!(check_plugin_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn tenants_must_be_one_safe_path_component() {
        assert!(check_tenant("acme").is_ok());
        assert!(check_tenant("Acme_Corp-2").is_ok());
        for bad in ["", ".", "..", "a/b", "a\\b", "a.b", "a b"] {
            assert!(check_tenant(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("t").join("x.wasm");
        write_atomic(&path, b"one")?;
        write_atomic(&path, b"two")?;
        assert_eq!(fs::read(&path)?, b"two");
        assert_eq!(
            fs::read_dir(path.parent().unwrap_or(dir.path()))?.count(),
            1
        );
        Ok(())
    }

    #[test]
    fn scan_finds_valid_names_and_reports_others() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("acme"))?;
        fs::create_dir_all(dir.path().join("bad.tenant"))?;
        fs::write(dir.path().join("acme/good.wasm"), b"x")?;
        fs::write(dir.path().join("acme/Bad.wasm"), b"x")?;
        fs::write(dir.path().join("acme/notes.txt"), b"x")?;
        fs::write(dir.path().join("bad.tenant/p.wasm"), b"x")?;
        let (found, skipped) = scan(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].0.as_str(), found[0].1.as_str()), ("acme", "good"));
        assert_eq!(skipped.len(), 2);
        Ok(())
    }
}
