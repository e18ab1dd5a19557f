//! A call's deadline covers the time a provider guest spends blocked in the
//! host, not only the time it runs wasm code.
//!
//! Three layers, from the cheapest:
//! - wasm code: epoch interruption traps a synchronous call, or makes an
//!   async one yield and then trap, once its deadline has passed;
//! - waits in the host: a synchronous guest sleeps or waits for a socket,
//!   a DNS answer or an HTTP response by blocking on a pollable
//!   (`wasi:io/poll`'s `poll` and `pollable.block`). [`bound_waits`]
//!   replaces both with versions that return at the deadline: the call
//!   fails as out of time (a trap, so the instance is discarded) and the
//!   thread is free again. HTTP waits are bounded the same way by
//!   `capabilities::HttpGate`; async (policy hook) calls need none of this,
//!   the whole call is bounded by a timer (`lease.rs`);
//! - anything else (a blocking stream read on a socket, a file system call
//!   that hangs): `Persistent::call` stops waiting for the call's thread
//!   shortly after the deadline, reports the call as out of time and
//!   discards the instance. The thread still holds its places (the instance
//!   is alive until it returns), and once it returns to wasm code the
//!   instance traps at its first epoch check, its deadline being past.

use super::store::Ctx;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};
use wasmtime_wasi::runtime::in_tokio;

const POLL: &str = "wasi:io/poll@0.2.12";

/// The error a wait cut short by the deadline traps with (the call's error
/// is built from [`Ctx::expired`], not from this).
#[derive(Debug, thiserror::Error)]
#[error("wasm sandbox: the call's deadline passed while the guest waited in the host")]
struct OutOfTime;

/// Replaces `poll` and `pollable.block` of the synchronous WASI linker with
/// versions bounded by the current call's deadline. Call after
/// `add_to_linker_sync`.
pub(super) fn bound_waits(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL)?;
    poll.func_wrap("poll", |mut store: StoreContextMut<'_, Ctx>, (list,): (Vec<Resource<DynPollable>>,)| {
        let ctx = store.data_mut();
        let deadline = tokio::time::Instant::from_std(ctx.deadline());
        match in_tokio(tokio::time::timeout_at(deadline, ctx.table.poll(list))) {
            Ok(ready) => Ok((ready?,)),
            Err(_) => out_of_time(ctx),
        }
    })?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, Ctx>, (pollable,): (Resource<DynPollable>,)| {
            let ctx = store.data_mut();
            let deadline = tokio::time::Instant::from_std(ctx.deadline());
            match in_tokio(tokio::time::timeout_at(deadline, ctx.table.block(pollable))) {
                Ok(r) => r,
                Err(_) => out_of_time(ctx),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn out_of_time<T>(ctx: &mut Ctx) -> wasmtime::Result<T> {
    ctx.mark_expired();
    Err(wasmtime::Error::new(OutOfTime))
}
