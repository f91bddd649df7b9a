#!/usr/bin/env bash
# Builds every hookd guest component and copies it to plugins/dist/<name>.wasm:
#   - the Rust workspace (sdk, examples/*, fixtures/*) with cargo for wasm32-wasip2;
#   - js-filter with componentize-js (npm, installed into js-filter/node_modules);
#   - py-filter with componentize-py (PyPI, installed into py-filter/.venv).
# Idempotent and quiet on success: tools are installed only when missing, and the JS and
# Python components are rebuilt only when their sources, the WIT or the tool pins change.
# On failure it prints the failing step's output and exits non-zero.
# Needs rustup + cargo, node 20 + npm, python3.11 (or python3) + pip; registries only.
set -euo pipefail

PLUGINS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WIT_DIR="$(cd "$PLUGINS_DIR/../wit" && pwd)"
DIST_DIR="$PLUGINS_DIR/dist"
TARGET_DIR="$PLUGINS_DIR/target"
RUST_OUT="$TARGET_DIR/wasm32-wasip2/release"
mkdir -p "$DIST_DIR" "$TARGET_DIR"
# When run from a cargo build script or test of the host, don't inherit its target or flags.
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET

# Tests may run this script from several processes at once: one build at a time.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$TARGET_DIR/.build.lock"
    flock 9
fi

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

# Runs a command with its output captured; on failure prints it and stops.
quietly() {
    local what="$1"
    shift
    if ! "$@" >"$LOG" 2>&1; then
        echo "plugins/build.sh: $what failed:" >&2
        cat "$LOG" >&2
        exit 1
    fi
}

# Copies $1 to $DIST_DIR/$2 atomically, and only if the bytes changed.
publish() {
    local source="$1" dest="$DIST_DIR/$2"
    if [[ ! -f "$dest" ]] || ! cmp -s "$source" "$dest"; then
        cp "$source" "$dest.tmp"
        mv "$dest.tmp" "$dest"
    fi
}

# A digest of the given files plus every WIT file: the rebuild key of a non-Rust guest.
sources_digest() {
    cat "$@" "$WIT_DIR"/*.wit | sha256sum | cut -d' ' -f1
}

# --- Rust ------------------------------------------------------------------------------------
if command -v rustup >/dev/null 2>&1 \
    && ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    quietly "rustup target add wasm32-wasip2" rustup target add wasm32-wasip2
fi
quietly "cargo build (plugins workspace)" \
    cargo build --quiet --manifest-path "$PLUGINS_DIR/Cargo.toml" \
    --target wasm32-wasip2 --release --target-dir "$TARGET_DIR"
for crate_dir in "$PLUGINS_DIR"/examples/*/ "$PLUGINS_DIR"/fixtures/*/; do
    name="$(basename "$crate_dir")"
    publish "$RUST_OUT/${name//-/_}.wasm" "$name.wasm"
done

# --- JavaScript (componentize-js) ------------------------------------------------------------
JS_DIR="$PLUGINS_DIR/js-filter"
js_pins="$(cat "$JS_DIR/package.json" "$JS_DIR/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$JS_DIR/node_modules/.bin/componentize-js" ]] \
    || [[ "$(cat "$JS_DIR/node_modules/.pins.digest" 2>/dev/null)" != "$js_pins" ]]; then
    # `install --no-save` follows package-lock.json without rewriting it (`npm ci` rejects
    # locks lacking other platforms' optional packages, which npm 11 writes).
    quietly "npm install (js-filter)" \
        npm install --prefix "$JS_DIR" --no-save --no-audit --no-fund --loglevel=error
    echo "$js_pins" >"$JS_DIR/node_modules/.pins.digest"
fi
js_digest="$(sources_digest "$JS_DIR/filter.js" "$JS_DIR/package.json" "$JS_DIR/package-lock.json")"
if [[ ! -f "$DIST_DIR/js-filter.wasm" ]] \
    || [[ "$(cat "$DIST_DIR/.js-filter.digest" 2>/dev/null)" != "$js_digest" ]]; then
    # package.json pins preview2-shim 0.25.0: with 0.26 componentize-js's splicer cannot read
    # the WIT ("reading file .../wit: No such file or directory").
    quietly "componentize-js (js-filter)" bash -c 'cd "$1" &&
        node_modules/.bin/componentize-js filter.js --wit ../../wit \
            --world-name filter-plugin --disable http fetch-event \
            --out ../dist/js-filter.wasm.tmp' _ "$JS_DIR"
    mv "$DIST_DIR/js-filter.wasm.tmp" "$DIST_DIR/js-filter.wasm"
    echo "$js_digest" >"$DIST_DIR/.js-filter.digest"
fi

# --- Python (componentize-py) ----------------------------------------------------------------
PY_DIR="$PLUGINS_DIR/py-filter"
PY_VENV="$PY_DIR/.venv"
COMPONENTIZE_PY="$PY_VENV/bin/componentize-py"
py_pins="$(sha256sum "$PY_DIR/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$COMPONENTIZE_PY" ]] \
    || [[ "$(cat "$PY_VENV/.requirements.digest" 2>/dev/null)" != "$py_pins" ]]; then
    PYTHON="$(command -v python3.11 || command -v python3)"
    rm -rf "$PY_VENV"
    quietly "python venv (py-filter)" "$PYTHON" -m venv "$PY_VENV"
    quietly "pip install (py-filter)" \
        "$PY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$PY_DIR/requirements.txt"
    echo "$py_pins" >"$PY_VENV/.requirements.digest"
fi
py_digest="$(sources_digest "$PY_DIR/app.py" "$PY_DIR/requirements.txt")"
if [[ ! -f "$DIST_DIR/py-filter.wasm" ]] \
    || [[ "$(cat "$DIST_DIR/.py-filter.digest" 2>/dev/null)" != "$py_digest" ]]; then
    # componentize-py finds the app module on the Python path of its working directory.
    quietly "componentize-py (py-filter)" \
        bash -c 'cd "$1" && "$2" --quiet -d "$3" -w filter-plugin componentize app -o "$4"' \
        _ "$PY_DIR" "$COMPONENTIZE_PY" "$WIT_DIR" "$DIST_DIR/py-filter.wasm.tmp"
    mv "$DIST_DIR/py-filter.wasm.tmp" "$DIST_DIR/py-filter.wasm"
    echo "$py_digest" >"$DIST_DIR/.py-filter.digest"
fi
