//! The data of a guest store ([`Ctx`]) and the host functions every world
//! imports (`stategate:gateway/host`: `log`, `now-nanos`, `config`; the
//! same functions under the 0.3.0, 0.2.0 and 0.1.0 names).
//!
//! Invariants:
//! - One store holds one instance of one guest; its WASI context carries
//!   only what the guest's grants give it (see [`super::capabilities`]).
//! - The call clock ([`Ctx::deadline`], [`Ctx::expired`]), the denial
//!   record and the limiter's record of a refused growth are reset as each
//!   call starts ([`Ctx::start_call`]), so what they say after a call is
//!   about that call alone.

use super::bindings::storage::stategate::gateway::host as host_if;
use super::bindings::v0_1_0::storage::stategate::gateway::host as host_v0_1_0;
use super::bindings::v0_2_0::storage::stategate::gateway::host as host_v0_2_0;
use super::GuestSpec;
use super::capabilities::{self, Denied};
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use wasmtime::component::ResourceTable;
use super::limits::{Cap, Limiter};
use super::quota::{DiskQuota, StoreQuota};
use super::stderr::GuestStderr;
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The data of every guest store.
pub struct Ctx {
    pub(super) wasi: WasiCtx,
    pub(super) http: WasiHttpCtx,
    pub(super) http_gate: capabilities::HttpGate,
    pub(super) table: ResourceTable,
    pub(super) limits: Limiter,
    pub(super) guest: Arc<GuestInfo>,
    /// Set when the guest tried a capability it was not granted.
    pub(super) denied: Denied,
    pub(super) stderr: GuestStderr,
    /// The quota of `grants.dir`, when there is one.
    pub(super) quota: Option<StoreQuota>,
}

/// What the host functions of every store of one guest read.
pub(super) struct GuestInfo {
    pub(super) name: String,
    pub(super) config: Map<String, Value>,
}

impl Ctx {
    /// When the current call's time is up.
    pub(super) fn deadline(&self) -> Instant {
        self.http_gate.deadline
    }

    /// Whether a wait in the host was cut short by the current call's
    /// deadline (the guest may have swallowed the error it got).
    pub(super) fn expired(&self) -> bool {
        self.http_gate.expired.load(Ordering::SeqCst)
    }

    /// Records that a wait in the host was cut short by the deadline.
    pub(super) fn mark_expired(&self) {
        self.http_gate.expired.store(true, Ordering::SeqCst);
    }

    /// Starts a call's clock and clears what the previous call recorded.
    pub(super) fn start_call(&mut self, deadline: Instant) {
        self.http_gate.deadline = deadline;
        self.http_gate.expired.store(false, Ordering::SeqCst);
        self.denied.take();
        self.limits.start_call();
        self.stderr.start_call();
        if let Some(q) = &self.quota {
            q.exceeded.store(false, Ordering::SeqCst);
        }
    }

    /// Whether a write of the current call was refused by the disk quota.
    pub(super) fn over_quota(&self) -> Option<u64> {
        self.quota.as_ref().filter(|q| q.exceeded.load(Ordering::SeqCst)).map(|q| q.quota.limit())
    }

    /// The sandbox cap that refused a growth during the current call.
    pub(super) fn refused(&self) -> Option<Cap> {
        self.limits.refused()
    }
}

/// A fresh store for one instance of a guest, with its grants and limits.
pub(super) fn new_store(
    engine: &Engine,
    spec: &GuestSpec,
    guest: &Arc<GuestInfo>,
    net: &Arc<Vec<SocketAddr>>,
    quota: Option<&Arc<DiskQuota>>,
) -> wasmtime::Result<Store<Ctx>> {
    let denied = Denied::default();
    let stderr = GuestStderr::new(&spec.name);
    let mut b = WasiCtxBuilder::new();
    b.stderr(stderr.clone());
    capabilities::grant_wasi(&mut b, &spec.grants, net.clone(), &denied)?;
    let ctx = Ctx {
        wasi: b.build(),
        http: WasiHttpCtx::new(),
        http_gate: capabilities::HttpGate {
            grants: spec.grants.clone(),
            denied: denied.clone(),
            deadline: Instant::now() + spec.call_timeout,
            expired: Arc::new(AtomicBool::new(false)),
        },
        table: ResourceTable::new(),
        limits: Limiter::new(spec.memory_bytes),
        guest: guest.clone(),
        denied,
        stderr,
        quota: quota.map(|q| StoreQuota {
            quota: q.clone(),
            exceeded: Arc::default(),
        }),
    };
    let mut store = Store::new(engine, ctx);
    store.limiter(|c| &mut c.limits);
    Ok(store)
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_gate,
        }
    }
}

impl capabilities::RecordsDenial for Ctx {
    fn denied(&self) -> &Denied {
        &self.denied
    }
}

impl host_if::Host for Ctx {
    fn log(&mut self, level: host_if::Level, message: String) {
        let g = &self.guest.name;
        match level {
            host_if::Level::Trace => tracing::trace!(guest = %g, "{message}"),
            host_if::Level::Debug => tracing::debug!(guest = %g, "{message}"),
            host_if::Level::Info => tracing::info!(guest = %g, "{message}"),
            host_if::Level::Warn => tracing::warn!(guest = %g, "{message}"),
            host_if::Level::Error => tracing::error!(guest = %g, "{message}"),
        }
    }

    fn now_nanos(&mut self) -> i64 {
        crate::model::now_nanos()
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.guest.config.get(&key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// 0.1.0's `host`: the same functions.
impl host_v0_1_0::Host for Ctx {
    fn log(&mut self, level: host_v0_1_0::Level, message: String) {
        let level = match level {
            host_v0_1_0::Level::Trace => host_if::Level::Trace,
            host_v0_1_0::Level::Debug => host_if::Level::Debug,
            host_v0_1_0::Level::Info => host_if::Level::Info,
            host_v0_1_0::Level::Warn => host_if::Level::Warn,
            host_v0_1_0::Level::Error => host_if::Level::Error,
        };
        <Self as host_if::Host>::log(self, level, message)
    }

    fn now_nanos(&mut self) -> i64 {
        crate::model::now_nanos()
    }

    fn config(&mut self, key: String) -> Option<String> {
        <Self as host_if::Host>::config(self, key)
    }
}

/// 0.2.0's `host`: the same functions.
impl host_v0_2_0::Host for Ctx {
    fn log(&mut self, level: host_v0_2_0::Level, message: String) {
        let level = match level {
            host_v0_2_0::Level::Trace => host_if::Level::Trace,
            host_v0_2_0::Level::Debug => host_if::Level::Debug,
            host_v0_2_0::Level::Info => host_if::Level::Info,
            host_v0_2_0::Level::Warn => host_if::Level::Warn,
            host_v0_2_0::Level::Error => host_if::Level::Error,
        };
        <Self as host_if::Host>::log(self, level, message)
    }

    fn now_nanos(&mut self) -> i64 {
        crate::model::now_nanos()
    }

    fn config(&mut self, key: String) -> Option<String> {
        <Self as host_if::Host>::config(self, key)
    }
}
