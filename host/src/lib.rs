//! `billing-host`: runs a Spin application (spin.toml, runtime-config.toml
//! and the components' .wasm files) on wasmtime, behaving like `spin up`
//! wherever a component could tell the difference.
//!
//! - [`manifest`]: spin.toml version 2, strictly parsed.
//! - [`runtime_config`]: SQLite labels and variable providers.
//! - [`variables`]: application variables and component templates.
//! - [`routes`]: Spin's routing table.
//! - [`allowed_hosts`]: `allowed_outbound_hosts` matching.
//! - [`runtime`]: the engine, compiled components, per-request stores and
//!   outbound HTTP.
//! - [`spin_apis`]: the `fermyon:spin` host interfaces (sqlite, redis, variables).
//! - [`server`]: the HTTP trigger with limits and graceful shutdown.
//! - [`build`]: `billing-host build`, Spin's `spin build`.

pub mod allowed_hosts;
pub mod build;
pub mod manifest;
pub mod routes;
pub mod runtime;
pub mod runtime_config;
pub mod server;
pub mod spin_apis;
pub mod variables;

pub use runtime::{App, Limits};
