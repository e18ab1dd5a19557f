//! The integration tests: one binary (one link step) with a module per area.

mod harness;
#[macro_use]
mod storage_conformance;
mod query_conformance;
#[macro_use]
mod channel_conformance;

mod providers;
mod chaos_channel;
mod wire;

mod catch_up;
mod hub_repairs;
mod event_sourcing;
mod grpc_api;
mod grpc_web;
mod rest_api;
mod restart;
mod v050_client;
mod v050_dropin;
mod v050_migrate;
mod tls;
mod binary;
mod crash;
mod openapi;
mod properties;
mod mongo_query;
mod query_api;
mod limits;
mod idle_topics;
mod server;
mod backends;
mod sql_backends;
mod sql_pushdown;
mod procs;
mod multi_instance;
mod faults;
mod broker_faults;
mod hostile;
mod pre_auth;
mod auth;
mod cli;
mod client;
mod examples;
mod console;
mod stats_api;
mod deploy;
mod docs;
mod wasm_support;
mod wasm_forge;
mod wasm_providers;
mod wasm_sandbox;
mod wasm_deadlines;
mod wasm_cache;
mod wasm_policies;
