//! The WebAssembly host: runs guest components (storage providers, channel
//! providers, per-tenant policy hooks) built against the WIT contract in
//! `wit/`, sandboxed.
//!
//! One file per idea:
//! - [`runtime`]: the [`WasmRuntime`] value (settings, engine, epoch ticker,
//!   instance bound) that `server::start` creates and hands to every loader;
//! - [`spec`]: a guest's configuration ([`GuestConfig`]) and the resolved
//!   [`GuestSpec`]; [`grants`] and [`capabilities`]: what a guest may use
//!   beyond the host interface, and how each use is checked;
//! - [`store`]: the data of a store and the host functions; [`limits`]: the
//!   store's caps, which record what they refused; [`quota`]: the disk
//!   quota of a granted directory; [`stderr`]: a guest's stderr, logged
//!   within a budget;
//! - [`worlds`]: the bindings and how a component links into a world;
//!   [`versions`]: the contract versions a guest may be built against
//!   (0.3.0, 0.2.0, 0.1.0) and one call surface per world over them;
//! - [`cache`]: compiling through the on-disk compile cache, and what an
//!   entry must pass to be loaded; [`image`]: a component's memory images,
//!   built at load; [`dirs`]: granted directories stay off the cache and
//!   off each other;
//! - [`guest`]: a guest's lifecycle (load, reload, instantiate) and the
//!   words used for it;
//! - [`persistent`] and [`lease`]: the two instance strategies, long-lived
//!   instances per provider (one, or a pool when the guest says its calls
//!   may run side by side), leased instances per hook call; [`lanes`]: the
//!   threads a provider's calls run on;
//! - [`deadline`]: how a call's deadline covers its waits in the host;
//! - [`outcome`]: how a call's outcome becomes the gateway's error model;
//! - [`convert`]: the WIT conversions both provider adapters use;
//! - [`metrics`]: per-guest metrics.
//!
//! A trap, a deadline, a sandbox cap or a denied capability fails only that
//! call (`UNAVAILABLE` / `PERMISSION_DENIED`, naming the guest).

pub mod cache;
pub mod capabilities;
pub mod convert;
pub mod deadline;
pub mod dirs;
pub mod grants;
pub mod guest;
pub mod image;
pub mod lanes;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod outcome;
pub mod persistent;
pub mod quota;
pub mod runtime;
pub mod settings;
pub mod spec;
pub mod stderr;
pub mod store;
pub mod versions;
pub mod worlds;

pub use capabilities::Denied;
pub use grants::{Grants, HttpGrant};
pub use guest::{Guest, Version};
pub use persistent::Persistent;
pub use runtime::{TICK, WasmRuntime};
pub use settings::Settings;
pub use spec::{GuestConfig, GuestLimits, GuestSpec};
pub use store::Ctx;
pub use versions::{ChannelInstance, ChannelPre, PolicyInstance, PolicyPre, StorageInstance, StoragePre};
pub use worlds::{AsyncWorld, Kind, SyncWorld, World, bindings};
