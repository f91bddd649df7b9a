#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, builds the WebAssembly
# plugin components (Rust, JavaScript, Python) and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rustup target add wasm32-wasip2 >/dev/null
# Guest components (plugins/dist/*.wasm), built once; the engine's tests load them.
plugins/build.sh
cargo test --workspace --all-targets "$@"
