//! The integration tests: one binary (one link step) with a module per area.
//! A module that needs a provider or the wasm host is built only with the
//! cargo features that build those in (all are on by default); a lean
//! build (`--no-default-features`) runs the rest.
#![cfg_attr(
    not(all(feature = "mongo", feature = "sql", feature = "kafka", feature = "amqp", feature = "nats", feature = "redis", feature = "wasm")),
    allow(dead_code, unused_imports, unused_macros)
)]

mod harness;
#[macro_use]
mod storage_conformance;
mod query_conformance;
mod read_at_conformance;
#[macro_use]
mod channel_conformance;

mod providers;
mod chaos_channel;
mod wire;

mod catch_up;
mod filtered_streams;
mod consumer_groups;
mod snapshot_watch;
#[cfg(feature = "mongo")]
mod hub_repairs;
mod event_sourcing;
mod grpc_api;
mod grpc_web;
mod rest_api;
mod restart;
mod v050_client;
mod v050_dropin;
#[cfg(all(feature = "mongo", feature = "wasm"))]
mod v050_migrate;
mod tls;
mod binary;
mod first_hour;
#[cfg(feature = "sql")]
mod crash;
mod openapi;
mod properties;
#[cfg(feature = "mongo")]
mod mongo_query;
mod query_api;
mod limits;
#[cfg(all(feature = "mongo", feature = "sql", feature = "kafka", feature = "amqp", feature = "nats", feature = "redis"))]
mod idle_topics;
mod server;
#[cfg(all(feature = "mongo", feature = "sql", feature = "kafka", feature = "amqp", feature = "nats", feature = "redis", feature = "wasm"))]
mod backends;
#[cfg(all(feature = "sql", feature = "wasm"))]
mod sql_backends;
#[cfg(feature = "sql")]
mod sql_pushdown;
mod procs;
mod test_pki;
#[cfg(all(feature = "mongo", feature = "sql", feature = "kafka", feature = "amqp", feature = "nats", feature = "redis"))]
mod multi_instance;
#[cfg(all(feature = "mongo", feature = "sql", feature = "nats", feature = "redis"))]
mod faults;
#[cfg(all(feature = "kafka", feature = "amqp", feature = "nats", feature = "redis"))]
mod broker_faults;
#[cfg(all(feature = "mongo", feature = "sql", feature = "kafka", feature = "amqp", feature = "nats", feature = "redis", feature = "wasm"))]
mod mqtt;
#[cfg(all(feature = "kafka", feature = "amqp"))]
mod broker_security;
#[cfg(all(feature = "sql", feature = "wasm"))]
mod sql_security;
mod hostile;
mod pre_auth;
#[cfg(feature = "wasm")]
mod auth;
mod cli;
mod client;
mod examples;
mod console;
mod stats_api;
#[cfg(all(feature = "mongo", feature = "redis"))]
mod deploy;
mod container;
mod docs;
#[cfg(feature = "wasm")]
mod wasm_support;
#[cfg(feature = "wasm")]
mod guest_cli;
#[cfg(feature = "wasm")]
mod wasm_forge;
#[cfg(feature = "wasm")]
mod wasm_providers;
#[cfg(feature = "wasm")]
mod wasm_sandbox;
#[cfg(feature = "wasm")]
mod wasm_deadlines;
#[cfg(feature = "wasm")]
mod wasm_cache;
#[cfg(feature = "wasm")]
mod wasm_policies;
#[cfg(feature = "wasm")]
mod wasm_versions;
#[cfg(feature = "wasm")]
mod wasm_pushdown;
#[cfg(feature = "wasm")]
mod wasm_reads_at;
#[cfg(feature = "wasm")]
mod wasm_pool;
#[cfg(feature = "wasm")]
mod wasm_hot_swap;
