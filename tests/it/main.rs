//! hookd's integration tests: one binary, real engines, real receivers, real sled dirs.

// Tests play producers and API clients, so they build plain HTTP clients of their own.
#![allow(clippy::disallowed_methods)]

mod api_clients;
mod api_errors;
mod batch;
mod capture;
mod console;
mod crash;
mod delivery;
mod disk;
mod dns;
mod event_types;
mod examples;
mod faulty;
mod fuzz;
mod health;
mod hostile_http;
mod isolation;
mod metrics;
mod openapi;
mod ops;
mod plugin_fairness;
mod plugin_limits;
mod plugin_shadow;
mod plugin_versions;
mod plugins;
mod query_params;
mod quotas;
mod replay;
mod response_plugins;
mod restart;
mod retention;
mod retries;
mod secrets;
mod shared_db;
mod ssrf;
mod stats;
mod support;
mod upgrade;
