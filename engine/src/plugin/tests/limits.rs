//! The plugin host's limits between tenants (issue 12): plugin quotas at install, compile
//! slots and their bounded wait, the code bounds checked before compiling, fair chain slots,
//! and random numbers seeded from the host's secret key.

use std::time::Instant;

use super::*;
use crate::quota::QuotaExceeded;

/// A host of its own sharing the shared host's compile cache (installing a fixture that the
/// shared host installed compiles nothing).
async fn own_host(
    settings: PluginSettings,
    options: HostOptions,
) -> (PluginHost, tempfile::TempDir) {
    shared().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(
        shared_cache_dir().await,
        dir.path().join(persist::CACHE_DIR),
    )
    .expect("symlink the shared cache");
    let host = PluginHost::open_with(dir.path(), settings, options).expect("open");
    (host, dir)
}

#[tokio::test]
async fn installs_stay_within_the_plugin_quotas_and_are_refused_before_compiling() {
    fixture("json-filter").await;
    fixture("trap").await;
    let (host, _dir) = own_host(test_settings(), HostOptions::default()).await;
    let (filter, trap) = (wasm("json-filter"), wasm("trap"));
    let size = |w: &Vec<u8>| w.len() as u64;
    let one = PluginQuota {
        plugins: 1,
        bytes: 1 << 30,
    };
    host.install_within("acme", "first", filter.clone(), one, None)
        .await
        .expect("at the limit");
    assert_eq!(
        host.usage("acme"),
        PluginUsage {
            plugins: 1,
            bytes: size(&filter)
        }
    );

    // One more plugin is refused, naming the quota, its limit and the use; even while the
    // tenant's compile slot is taken: the quota is checked before any compile.
    let slot = host
        .inner
        .compile_gate
        .acquire("acme", Duration::from_secs(5))
        .await
        .expect("compile slot");
    let refused = host
        .install_within("acme", "second", trap.clone(), one, None)
        .await
        .expect_err("over the plugins quota");
    drop(slot);
    assert_eq!(
        refused,
        PluginLoadError::QuotaExceeded(QuotaExceeded {
            quota: "plugins",
            limit: 1,
            current: 1,
            requested: 1,
        })
    );
    assert_eq!(refused.code(), "quota_exceeded");
    assert!(host.info("acme", "second").is_none(), "nothing published");
    assert_eq!(host.info("acme", "first").and_then(|i| i.last_error), None);

    // Replacing a plugin is not one more plugin.
    host.install_within("acme", "first", trap.clone(), one, None)
        .await
        .expect("a replacement");

    // Bytes: the growth counts, against the use now.
    let tight = PluginQuota {
        plugins: 10,
        bytes: size(&trap) + 1000,
    };
    let refused = host
        .install_within("acme", "second", filter.clone(), tight, None)
        .await
        .expect_err("over the plugin_bytes quota");
    assert_eq!(
        refused,
        PluginLoadError::QuotaExceeded(QuotaExceeded {
            quota: "plugin_bytes",
            limit: size(&trap) + 1000,
            current: size(&trap),
            requested: size(&filter),
        })
    );
    let larger = PluginQuota {
        plugins: 10,
        bytes: size(&trap) + size(&filter),
    };
    host.install_within("acme", "second", filter.clone(), larger, None)
        .await
        .expect("a raised quota admits it");

    // Other tenants' plugins do not count.
    host.install_within("globex", "first", filter.clone(), one, None)
        .await
        .expect("another tenant");
    assert_eq!(host.usage("acme").plugins, 2);
    assert_eq!(host.usage("globex").plugins, 1);
}

#[tokio::test]
async fn an_upload_waits_for_a_compile_slot_at_most_compile_wait_and_others_compile_meanwhile() {
    fixture("json-filter").await;
    let wait = Duration::from_millis(300);
    let settings = PluginSettings {
        compile_wait: wait,
        ..test_settings()
    };
    let (host, _dir) = own_host(settings, HostOptions::default()).await;
    let gate = &host.inner.compile_gate;

    // acme is compiling (its one slot is taken): its next upload is refused after the wait.
    let acme = gate.acquire("acme", wait).await.expect("acme's slot");
    let started = Instant::now();
    let busy = host
        .install("acme", "p", wasm("json-filter"))
        .await
        .expect_err("acme's slot is taken");
    let waited = started.elapsed();
    assert!(
        matches!(busy, PluginLoadError::CompileBusy { retry_after } if retry_after >= Duration::from_secs(1)),
        "{busy:?}"
    );
    assert_eq!(busy.code(), "compile_busy");
    assert!(waited >= wait && waited < wait * 10, "{waited:?}");
    assert!(host.info("acme", "p").is_none());

    // Another tenant takes the engine's other slot meanwhile.
    host.install("globex", "p", wasm("json-filter"))
        .await
        .expect("globex compiles while acme's compile runs");

    // Both engine slots taken: a third tenant waits and is refused too.
    let globex = gate.acquire("globex", wait).await.expect("globex's slot");
    let third = host.install("initech", "p", wasm("json-filter")).await;
    assert!(
        matches!(third, Err(PluginLoadError::CompileBusy { .. })),
        "{third:?}"
    );
    drop((acme, globex));
    host.install("acme", "p", wasm("json-filter"))
        .await
        .expect("a freed slot");
}

/// A core module of `functions` functions `() -> ()`, each with `body_nops` nops.
fn core_module(functions: usize, body_nops: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(content.len(), out);
        out.extend_from_slice(content);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module);
    let mut funcs = Vec::new();
    leb(functions, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions));
    section(3, &funcs, &mut module);
    let mut code = Vec::new();
    leb(functions, &mut code);
    for _ in 0..functions {
        leb(body_nops + 2, &mut code);
        code.push(0); // no locals
        code.extend(std::iter::repeat_n(0x01u8, body_nops));
        code.push(0x0b);
    }
    section(10, &code, &mut module);
    module
}

/// `module` nested in a component (core module section).
fn component_of(module: &[u8]) -> Vec<u8> {
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    component.push(1);
    let mut n = module.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            component.push(byte);
            break;
        }
        component.push(byte | 0x80);
    }
    component.extend_from_slice(module);
    component
}

#[tokio::test]
async fn code_past_the_bounds_is_refused_before_compiling() {
    use super::super::settings::{MAX_FUNCTION_BODY_BYTES, MAX_FUNCTIONS};
    let host = shared().await;
    let compiles = host.compile_count();
    let many = component_of(&core_module(MAX_FUNCTIONS + 1, 0));
    let refused = host
        .install("bounds", "many", many)
        .await
        .expect_err("too many functions");
    assert_eq!(refused.code(), "plugin_too_large");
    assert!(refused.to_string().contains("functions"), "{refused}");
    let large = component_of(&core_module(1, MAX_FUNCTION_BODY_BYTES));
    let refused = host
        .install("bounds", "large", large)
        .await
        .expect_err("a function too large");
    assert_eq!(refused.code(), "plugin_too_large");
    assert!(refused.to_string().contains("function body"), "{refused}");
    assert_eq!(host.compile_count(), compiles, "nothing was compiled");

    // Within the bounds, what the bounds measure (the largest plugins of plugins/ pass).
    for name in ["js-filter", "py-filter", "reshape-transform"] {
        let wasm = wasm(name);
        compile::check_code_bounds(&wasm).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (mut functions, mut largest) = (0, 0);
        for payload in wasmparser::Parser::new(0).parse_all(&wasm) {
            match payload.expect("parses") {
                wasmparser::Payload::CodeSectionStart { count, .. } => functions += count,
                wasmparser::Payload::CodeSectionEntry(body) => {
                    largest = largest.max(body.range().len());
                }
                _ => {}
            }
        }
        eprintln!("{name}: {functions} functions, largest body {largest} bytes");
    }
}

#[tokio::test]
async fn random_bytes_derive_from_the_host_key_and_the_delivery_id() {
    fixture("clock-and-random").await;
    let key = |k: u8| HostOptions {
        random_key: Some([k; 32]),
        ..HostOptions::default()
    };
    let mut outputs = Vec::new();
    for options in [key(1), key(1), key(2)] {
        let (host, _dir) = own_host(test_settings(), options).await;
        host.install("acme", "r", wasm("clock-and-random"))
            .await
            .expect("install");
        let run = host
            .run_chain(
                "acme",
                &[step("r", json!({}))],
                request("dlv_same", json!({})),
                &test_settings(),
            )
            .await;
        outputs.push(body_json(delivered(&run)));
    }
    assert_eq!(
        outputs[0]["random_bytes"], outputs[1]["random_bytes"],
        "the same key and delivery give the same bytes (a retry, a replay, another node)"
    );
    assert_eq!(outputs[0]["random_u64"], outputs[1]["random_u64"]);
    assert_ne!(
        outputs[0]["random_bytes"], outputs[2]["random_bytes"],
        "without the key, the delivery id does not tell the bytes"
    );
    assert_ne!(outputs[0]["random_u64"], outputs[2]["random_u64"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_filling_the_chain_slots_leaves_the_reserve_to_another_at_once() {
    fixture("infinite-loop").await;
    fixture("json-filter").await;
    let (host, _dir) = own_host(test_settings(), HostOptions::default()).await;
    host.install("hog", "loop", wasm("infinite-loop"))
        .await
        .expect("install");
    host.install("newcomer", "f", wasm("json-filter"))
        .await
        .expect("install");
    let deadline = Duration::from_millis(600);
    let looping = PluginSettings {
        deadline,
        max_concurrent_calls_per_tenant: MAX_CONCURRENT_CHAINS,
        ..test_settings()
    };
    let reserve = (MAX_CONCURRENT_CHAINS / 16).max(1);
    let mut hogs = tokio::task::JoinSet::new();
    for i in 0..MAX_CONCURRENT_CHAINS + 4 {
        let (host, settings) = (host.clone(), looping.clone());
        hogs.spawn(async move {
            host.run_chain(
                "hog",
                &[step("loop", json!({}))],
                request(&format!("dlv_hog_{i}"), json!({})),
                &settings,
            )
            .await
        });
    }
    let started = Instant::now();
    while host.inner.chain_slots.held("hog") < MAX_CONCURRENT_CHAINS - reserve {
        assert!(
            started.elapsed() < deadline / 2,
            "hog holds {} slots",
            host.inner.chain_slots.held("hog")
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        host.inner.chain_slots.held("hog"),
        MAX_CONCURRENT_CHAINS - reserve,
        "alone, a tenant gets every slot but the reserve"
    );

    let newcomer = host
        .run_chain(
            "newcomer",
            &[step("f", json!({"path": "data.kind", "allowed": ["a"]}))],
            request("dlv_new", json!({"kind": "a"})),
            &test_settings(),
        )
        .await;
    delivered(&newcomer);
    assert!(
        newcomer.waited < deadline / 4,
        "the newcomer waited {:?} for a slot (the hog's chains run {deadline:?})",
        newcomer.waited
    );
    while let Some(hog) = hogs.join_next().await {
        assert_eq!(
            failure(&hog.expect("hog task")).0,
            PluginFailureCode::Timeout
        );
    }
}
