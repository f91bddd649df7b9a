//! Host bindings generated from `wit/`: package `hookd:plugin@0.1.0` (union world `plugin`) at
//! the top, and the `on-response` hook of `hookd:plugin@0.2.0` (`wit/v0.2.0`) in [`v2`].
//!
//! Only the generated per-interface pieces are used for exports: each hook interface is bound
//! on its own with its `GuestIndices`, so a component exporting only `meta` and `filter` is
//! accepted and an absent interface means "hook not implemented". The world-level
//! `Plugin::add_to_linker` provides the imports (`types`, `host`, `signing-key`), implemented in
//! `sandbox.rs`; 0.2.0 adds no import, so the same linker serves 0.1.0 and 0.2.0 components.
//!
//! Exports are called asynchronously: guest code runs on a wasmtime fiber that yields to the
//! executor at every epoch tick, so a long call can be moved off the thread that started it
//! (see `PluginHost::run_chain`). Imports stay synchronous: they never wait.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // `mac` traps when called outside a sign hook: the secret is lent for that call only.
    imports: { "hookd:plugin/signing-key.mac": trappable },
    exports: { default: async },
});

/// `hookd:plugin@0.2.0`: the `on-response` hook. Its 0.1.0 imports map to the types above, so
/// an `event` is the same Rust type for every hook.
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "response-plugin",
        with: {
            "hookd:plugin/types@0.1.0": crate::plugin::bindings::hookd::plugin::types,
            "hookd:plugin/host@0.1.0": crate::plugin::bindings::hookd::plugin::host,
        },
        exports: { default: async },
    });
}
