#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, builds the WebAssembly
# plugin components (Rust, JavaScript, Python), starts a throwaway PostgreSQL 15, and runs every
# test of the workspace on the embedded sled store, then the integration suite again on
# PostgreSQL (with the multi-node tests). PostgreSQL is stopped at the end, also on failure.
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

pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/hookd-test-pg.XXXXXX")
rmdir "$pg_dir"
trap 'scripts/postgres.sh stop "$pg_dir"' EXIT
HOOKD_TEST_POSTGRES_URL=$(scripts/postgres.sh start "$pg_dir")
export HOOKD_TEST_POSTGRES_URL

# Tests about sled itself (its disk handling, copies of its data dir) run on sled only.
sled_only=(
    --skip disk::
    --skip upgrade::
    --skip restart::damaged_log_records
    --skip metrics::each_sync_of_the_embedded_store_is_timed
    --skip ops::the_free_space_reserve_follows_a_reload_and_start_only_keys_keep_their_values
    --skip ops::a_second_engine_on_a_data_dir_in_use_is_refused_with_a_clear_message
    --skip secrets::a_copied_data_dir_holds_no_secret_in_any_form_and_the_api_shows_none_after_create
    --skip secrets::another_key_cannot_open_a_copied_data_dir_and_rotation_reseals_with_the_new_key
)

echo "== the workspace's tests, store backend: sled"
cargo test --workspace --all-targets "$@"
echo "== the integration suite again, store backend: postgres"
HOOKD_TEST_BACKEND=postgres cargo test -p hookd --test it "$@" -- "${sled_only[@]}"
