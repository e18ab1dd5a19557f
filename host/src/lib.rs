//! stategate: an application state gateway. `docs/architecture.md` in the
//! repository maps the code (layers, a write's and a stream's path, how to
//! add a provider); each module holds one concern.

pub mod allocator;
pub mod api;
pub mod auth;
pub mod channel;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod hub;
pub mod model;
pub mod profiling;
pub mod server;
pub mod storage;
pub mod telemetry;
/// Without the `wasm` feature, a stand-in that loads no guest.
#[cfg_attr(not(feature = "wasm"), path = "wasm/off.rs")]
pub mod wasm;

/// Code generated from `proto/stategate.proto`.
pub mod proto {
    tonic::include_proto!("stategate");

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stategate_descriptor.bin"));
}
