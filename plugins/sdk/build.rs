//! Encodes the per-hook worlds of `wit/` (`filter-plugin`, `transform-plugin`, `sign-plugin` of
//! `hookd:plugin@0.1.0`, and `response-plugin` of `hookd:plugin@0.2.0` in `wit/v0.2.0`) into the binary "component type" form that `wit_bindgen::generate!` embeds as a
//! `component-type:*` custom section, so that the SDK's `export_filter!` & co. can embed the
//! world of exactly the hooks a plugin exports.
//!
//! Why not one `generate!` per world: with `pub_export_macro` every exported interface gets a
//! crate-root `#[macro_export]` macro named after the interface, so generating `filter` in both
//! `filter-plugin` and `plugin` collides. The SDK therefore generates only the union world
//! `plugin` (one copy of every type and trait) and takes the smaller worlds' encodings from here.

use std::{env, fs, path::PathBuf};

use wit_component::{StringEncoding, metadata};
use wit_parser::Resolve;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let wit_dir = manifest_dir.join("../../wit");
    println!("cargo:rerun-if-changed={}", wit_dir.display());

    let mut resolve = Resolve::default();
    let (package, sources) = resolve.push_dir(&wit_dir)?;
    for path in sources.paths() {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    encode_worlds(
        &resolve,
        package,
        &["filter-plugin", "transform-plugin", "sign-plugin"],
        &out_dir,
    )?;

    // 0.2.0 lives in its own directory (its `deps/` holds 0.1.0, which it reuses unchanged).
    let mut resolve = Resolve::default();
    let (package, sources) = resolve.push_dir(wit_dir.join("v0.2.0"))?;
    for path in sources.paths() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    encode_worlds(&resolve, package, &["response-plugin"], &out_dir)
}

/// Writes `<world>.component-type` into `out_dir` for each world of `package`.
fn encode_worlds(
    resolve: &Resolve,
    package: wit_parser::PackageId,
    worlds: &[&str],
    out_dir: &std::path::Path,
) -> anyhow::Result<()> {
    for world in worlds {
        let world_id = resolve.select_world(&[package], Some(world))?;
        let encoded = metadata::encode(resolve, world_id, StringEncoding::UTF8, None)?;
        fs::write(out_dir.join(format!("{world}.component-type")), encoded)?;
    }
    Ok(())
}
