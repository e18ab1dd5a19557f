//! The WIT worlds the host runs (bindgen), and how a component is linked
//! into one: [`World`], with [`SyncWorld`] for providers (calls on the
//! provider's own threads, WASI linked synchronously) and [`AsyncWorld`] for policy
//! hooks (calls on the request's task, WASI linked async). Which version of
//! the contract a guest was built against, and the one call surface per
//! world over the versions, is [`super::versions`].
//!
//! Invariants:
//! - Every linker links WASI (with the filesystem escape recorder of
//!   [`super::capabilities`] and the disk quota of [`super::quota`]),
//!   `wasi:http` and the `host` interface under every version's name
//!   (0.3.0, 0.2.0 and 0.1.0: the same functions), so a world, its `-http`
//!   variant and its older versions link the same way.
//! - Linking checks a component against its world once, when a version is
//!   loaded; instantiating the linked `…Pre` later cannot fail for a
//!   missing import.

use super::{capabilities, deadline, quota};
use super::store::Ctx;
use wasmtime::Store;
use wasmtime::component::{Component, Linker};

/// Bindings of the WIT worlds: `stategate:gateway@0.3.0` (`wit/`) at the
/// top, `@0.2.0` and `@0.1.0` (the copies as released, in `wit/v0.2.0/`
/// and `wit/v0.1.0/`) in [`bindings::v0_2_0`] and [`bindings::v0_1_0`].
pub mod bindings {
    pub mod storage {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "storage-provider",
        });
    }
    pub mod channel {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "channel-provider",
            with: {
                "stategate:gateway/types": super::storage::stategate::gateway::types,
                "stategate:gateway/host": super::storage::stategate::gateway::host,
            },
        });
    }
    pub mod policy {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "policy-hook",
            exports: { default: async },
            with: {
                "stategate:gateway/host": super::storage::stategate::gateway::host,
            },
        });
    }

    /// The 0.2.0 worlds (the copy in `wit/v0.2.0/`). Their shared types
    /// (`types`) are 0.3.0's Rust types: the records and variants are the
    /// same, and component types compare by structure, not by the
    /// interface that names them. Their `host` interface is generated
    /// again (the same functions under the 0.2.0 name; `store.rs`
    /// implements every version's).
    pub mod v0_2_0 {
        pub mod storage {
            wasmtime::component::bindgen!({
                path: "../wit/v0.2.0",
                world: "storage-provider",
                with: {
                    "stategate:gateway/types": crate::wasm::bindings::storage::stategate::gateway::types,
                },
            });
        }
        pub mod channel {
            wasmtime::component::bindgen!({
                path: "../wit/v0.2.0",
                world: "channel-provider",
                with: {
                    "stategate:gateway/types": crate::wasm::bindings::storage::stategate::gateway::types,
                    "stategate:gateway/host": super::storage::stategate::gateway::host,
                },
            });
        }
        pub mod policy {
            wasmtime::component::bindgen!({
                path: "../wit/v0.2.0",
                world: "policy-hook",
                exports: { default: async },
                with: {
                    "stategate:gateway/host": super::storage::stategate::gateway::host,
                },
            });
        }
    }

    /// The 0.1.0 worlds, bound like 0.2.0's: 0.3.0's Rust types for
    /// `types`, their own `host`.
    pub mod v0_1_0 {
        pub mod storage {
            wasmtime::component::bindgen!({
                path: "../wit/v0.1.0",
                world: "storage-provider",
                with: {
                    "stategate:gateway/types": crate::wasm::bindings::storage::stategate::gateway::types,
                },
            });
        }
        pub mod channel {
            wasmtime::component::bindgen!({
                path: "../wit/v0.1.0",
                world: "channel-provider",
                with: {
                    "stategate:gateway/types": crate::wasm::bindings::storage::stategate::gateway::types,
                    "stategate:gateway/host": super::storage::stategate::gateway::host,
                },
            });
        }
        pub mod policy {
            wasmtime::component::bindgen!({
                path: "../wit/v0.1.0",
                world: "policy-hook",
                exports: { default: async },
                with: {
                    "stategate:gateway/host": super::storage::stategate::gateway::host,
                },
            });
        }
    }
}

use bindings::storage::stategate::gateway::host as host_if;
use bindings::v0_1_0::storage::stategate::gateway::host as host_v0_1_0;
use bindings::v0_2_0::storage::stategate::gateway::host as host_v0_2_0;

/// Which world a guest implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Storage,
    Channel,
    Policy,
}

impl Kind {
    pub fn world(self) -> &'static str {
        match self {
            Kind::Storage => "storage-provider",
            Kind::Channel => "channel-provider",
            Kind::Policy => "policy-hook",
        }
    }
}

/// A world the host can run: how to link a component into it.
pub trait World: Sized + Send + Sync + 'static {
    const KIND: Kind;
    type Instance: Send + 'static;
    fn link(component: &Component) -> wasmtime::Result<Self>;
    /// The version of the contract the linked component was built against
    /// (`"0.3.0"`, `"0.2.0"`, `"0.1.0"`).
    fn version(&self) -> &'static str;
}

/// A world whose calls run synchronously, on threads outside the runtime's
/// workers (see `persistent.rs`).
pub trait SyncWorld: World {
    fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<Self::Instance>;
    /// How many instances may serve calls side by side, as the guest says
    /// (`max-instances`; 1 for a guest that cannot say).
    fn max_instances(instance: &Self::Instance, store: &mut Store<Ctx>) -> wasmtime::Result<u32>;
}

/// A world whose calls run on the async executor.
pub trait AsyncWorld: World {
    fn instantiate_async(&self, store: &mut Store<Ctx>) -> impl Future<Output = wasmtime::Result<Self::Instance>> + Send;
}

fn linker_sync(component: &Component) -> wasmtime::Result<Linker<Ctx>> {
    let mut linker = Linker::new(component.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    deadline::bound_waits(&mut linker)?;
    capabilities::record_filesystem_escapes(&mut linker)?;
    quota::charge_writes(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    host_if::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    host_v0_2_0::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    host_v0_1_0::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    Ok(linker)
}

fn linker_async(component: &Component) -> wasmtime::Result<Linker<Ctx>> {
    let mut linker = Linker::new(component.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    capabilities::record_filesystem_escapes_async(&mut linker)?;
    quota::charge_writes_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    host_if::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    host_v0_2_0::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    host_v0_1_0::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    Ok(linker)
}

/// A component linked for its world, before the version it implements is
/// known: the versions' `…Pre::new` each check it against theirs.
pub(super) fn link_sync(component: &Component) -> wasmtime::Result<wasmtime::component::InstancePre<Ctx>> {
    linker_sync(component)?.instantiate_pre(component)
}

/// [`link_sync`] for a world whose calls run async.
pub(super) fn link_async(component: &Component) -> wasmtime::Result<wasmtime::component::InstancePre<Ctx>> {
    linker_async(component)?.instantiate_pre(component)
}
