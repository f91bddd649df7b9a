#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, builds the WebAssembly
# plugin components (Rust, JavaScript, Python) and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rustup target add wasm32-wasip2 >/dev/null
# Headless Chromium and its WebDriver for the console's browser tests (tests/it/console.rs).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# Guest components (plugins/dist/*.wasm), built once; the engine's tests load them.
plugins/build.sh
cargo test --workspace --all-targets "$@"
