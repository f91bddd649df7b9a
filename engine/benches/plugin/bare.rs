//! The least a fresh instance per call costs on this machine: the same component run by a bare
//! wasmtime host, with none of hookd's host (no epoch deadlines, memory limiter, fuel, pooling
//! CPU clock or chain logic). wasmtime's engine with the cheapest instantiation it offers here
//! (the pooling allocator, copy-on-write memory images, slots kept resident and reset with
//! `PAGEMAP_SCAN` where the kernel has it: ~400 µs per cold call with the default on-demand
//! allocator instead), `wasmtime-wasi` with an empty context, the `transform-plugin` world bound
//! synchronously, an `InstancePre`; per call a new store, an instantiation, one `transform` call
//! and the drop. The plugin bench runs it after the
//! same 10 ms idle as hookd's cold chain, so the two can be read side by side.

use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform-plugin",
});

use self::hookd::plugin::types::{Event, LogLevel};

type BareResult<T> = Result<T, Box<dyn std::error::Error>>;

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl self::hookd::plugin::types::Host for State {}

impl self::hookd::plugin::host::Host for State {
    fn log(&mut self, _level: LogLevel, _message: String) {}
}

/// The component compiled once and pre-linked; [`BareHost::call`] runs it in a fresh store.
pub struct BareHost {
    engine: Engine,
    pre: TransformPluginPre<State>,
    event: Event,
    config: String,
}

impl BareHost {
    pub fn new(wasm: &[u8], config: &str, body: &[u8]) -> BareResult<Self> {
        let mut pool = PoolingAllocationConfig::new();
        pool.linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10)
            .table_elements(100_000)
            .pagemap_scan(Enabled::Auto);
        let mut engine_config = Config::new();
        engine_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&engine_config)?;
        let component = Component::new(&engine, wasm)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        TransformPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)?;
        let pre = TransformPluginPre::new(linker.instantiate_pre(&component)?)?;
        let event = Event {
            id: "dlv_bench".into(),
            event_id: "evt_2a9f0c1e6b".into(),
            event_type: "order.created".into(),
            tenant: "bench".into(),
            channel: None,
            timestamp: 1_735_689_600_000,
            attempt_time: 1_735_689_601_000,
            attempt: 1,
            url: "https://receiver.example/hook".into(),
            method: "POST".into(),
            content_type: "application/json".into(),
            headers: vec![],
            payload: body.to_vec(),
        };
        Ok(Self {
            engine,
            pre,
            event,
            config: config.to_string(),
        })
    }

    /// One call in a fresh store: instantiate, `transform`, drop. Returns the new body.
    pub fn call(&self) -> BareResult<Vec<u8>> {
        self.call_timed(|| Duration::ZERO).map(|(body, _)| body)
    }

    /// [`Self::call`], and how much of `clock` each phase took: the new store with its
    /// instantiation, the `transform` call, the store's drop.
    pub fn call_timed(&self, clock: fn() -> Duration) -> BareResult<(Vec<u8>, [Duration; 3])> {
        let started = clock();
        let state = State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        let plugin = self.pre.instantiate(&mut store)?;
        let instantiated = clock();
        let patch = plugin
            .hookd_plugin_transform()
            .call_transform(&mut store, &self.config, &self.event)?
            .map_err(|err| format!("transform failed: {err:?}"))?;
        let called = clock();
        drop(store);
        let dropped = clock();
        let body = patch.payload.ok_or("transform left the body")?;
        Ok((
            body,
            [
                instantiated - started,
                called - instantiated,
                dropped - called,
            ],
        ))
    }
}
