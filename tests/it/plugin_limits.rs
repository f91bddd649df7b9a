//! Compile limits through the API (issue 12), with uploads compiled as under `hookd serve`: in
//! a `hookd plugin compile-worker` child process of the real binary, which writes the compile
//! cache the engine then loads from. A compile past `compile_timeout` is killed and its compile
//! slot is free at once; a component that does not compile is refused with the worker's reason.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    ACME_KEY, TestEngine, compile_workers, distinct, eventually, parse_config,
    test_config_toml_with, wasm,
};

async fn upload(engine: &TestEngine, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    crate::plugins::upload(engine, ACME_KEY, name, bytes).await
}

#[tokio::test]
async fn uploads_compile_in_the_worker_and_the_engine_loads_them_from_the_cache() {
    let engine = TestEngine::start().await;
    let (status, body) = upload(&engine, "f", distinct(&wasm("json-filter"), "worker")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        engine.engine().plugins().compile_count(),
        0,
        "the engine compiled nothing itself"
    );

    // What the worker could not compile is refused with its reason.
    let mut broken = b"\0asm\x0d\0\x01\0".to_vec();
    broken.extend_from_slice(&[0x01, 0x04, 0xff, 0xff, 0xff, 0xff]);
    let (status, body) = upload(&engine, "broken", broken).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "plugin_invalid", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not compile"),
        "{body}"
    );
}

#[tokio::test]
async fn a_compile_past_its_timeout_is_killed_and_frees_its_compile_slot_at_once() {
    let data_dir = tempfile::tempdir().unwrap();
    let text = test_config_toml_with(
        data_dir.path(),
        "",
        true,
        "compile_timeout = \"3s\"\ncompile_wait = \"1s\"",
    );
    let engine = TestEngine::start_in(data_dir, parse_config(&text)).await;

    // The Python plugin (18 MB) takes far longer than 3 s to compile on one thread.
    let started = Instant::now();
    let (status, body) = upload(&engine, "big", distinct(&wasm("py-filter"), "timeout")).await;
    let took = started.elapsed();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "plugin_invalid", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("compiling took longer than 3000 ms"),
        "{body}"
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");

    // The worker was killed, not left compiling.
    let data = engine.data_dir.path().to_path_buf();
    eventually(Duration::from_secs(5), "the compile worker is gone", || {
        let running = compile_workers(&data);
        async move { (running == 0).then_some(()) }
    })
    .await;

    // The tenant's one compile slot is free at once: a compile still running would keep it,
    // and this upload would wait 1 s (`compile_wait`) and be refused as compile_busy.
    let (status, body) = upload(&engine, "small", distinct(&wasm("json-filter"), "after")).await;
    assert_eq!(status, 201, "{body}");
}
