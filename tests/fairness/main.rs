//! Fairness between tenants, measured: latency ratios that only mean something when nothing
//! else runs. This is its own test binary because cargo runs test binaries one after another:
//! here no test of `tests/it` shares the machine with a measurement, and the measurements run
//! one at a time (`tenants::ALONE`). Everything else about the tests is as in `it`: real
//! engines on 127.0.0.1, real receivers, real plugin components.

// Tests play producers and API clients, so they build plain HTTP clients of their own.
#![allow(clippy::disallowed_methods)]

mod compile_flood;
#[path = "../it/support/mod.rs"]
mod support;
mod tenants;
mod threads;
