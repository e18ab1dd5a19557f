//! The WIT worlds the host runs (bindgen), and how a component is linked
//! into one: [`World`], with [`SyncWorld`] for providers (calls on the
//! blocking pool, WASI linked synchronously) and [`AsyncWorld`] for policy
//! hooks (calls on the request's task, WASI linked async).
//!
//! Invariants:
//! - Every linker links WASI (with the filesystem escape recorder of
//!   [`super::capabilities`]), `wasi:http` and the `host` interface, so a
//!   world and its `-http` variant link the same way.
//! - Linking checks a component against its world once, when a version is
//!   loaded; instantiating the linked `…Pre` later cannot fail for a
//!   missing import.

use super::{capabilities, deadline};
use super::store::Ctx;
use wasmtime::Store;
use wasmtime::component::{Component, Linker};

/// Bindings of the WIT worlds.
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
}

use bindings::storage::stategate::gateway::host as host_if;

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
}

/// A world whose calls run synchronously on the blocking pool.
pub trait SyncWorld: World {
    fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<Self::Instance>;
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
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    host_if::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    Ok(linker)
}

fn linker_async(component: &Component) -> wasmtime::Result<Linker<Ctx>> {
    let mut linker = Linker::new(component.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    capabilities::record_filesystem_escapes_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    host_if::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
    Ok(linker)
}

/// Implements [`World`] and [`SyncWorld`] or [`AsyncWorld`] for a
/// bindgen-generated `…Pre` type.
macro_rules! world {
    (sync $pre:ty, $kind:expr, $instance:ty) => {
        world!(@world $pre, $kind, $instance, linker_sync);
        impl SyncWorld for $pre {
            fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<Self::Instance> {
                self.instantiate(store)
            }
        }
    };
    (async $pre:ty, $kind:expr, $instance:ty) => {
        world!(@world $pre, $kind, $instance, linker_async);
        impl AsyncWorld for $pre {
            fn instantiate_async(
                &self,
                store: &mut Store<Ctx>,
            ) -> impl Future<Output = wasmtime::Result<Self::Instance>> + Send {
                self.instantiate_async(store)
            }
        }
    };
    (@world $pre:ty, $kind:expr, $instance:ty, $linker:ident) => {
        impl World for $pre {
            const KIND: Kind = $kind;
            type Instance = $instance;
            fn link(component: &Component) -> wasmtime::Result<Self> {
                Self::new($linker(component)?.instantiate_pre(component)?)
            }
        }
    };
}

world!(sync bindings::storage::StorageProviderPre<Ctx>, Kind::Storage, bindings::storage::StorageProvider);
world!(sync bindings::channel::ChannelProviderPre<Ctx>, Kind::Channel, bindings::channel::ChannelProvider);
world!(async bindings::policy::PolicyHookPre<Ctx>, Kind::Policy, bindings::policy::PolicyHook);
