//! The integration tests: one binary (one link step) with a module per area.

mod harness;
#[macro_use]
mod storage_conformance;
#[macro_use]
mod channel_conformance;

mod providers;
