//! The disk quota of a guest's `grants.dir` (`limits.disk_mb`, default
//! `STATEGATE_WASM_DISK_MB`), enforced at every write.
//!
//! What is counted: bytes written to files through `descriptor.write`,
//! through the output streams `descriptor.write-via-stream` and
//! `append-via-stream` hand out (every stream write, zero-fill and splice
//! goes through them), and growth by `descriptor.set-size`. A write that
//! would take the directory past the quota is refused before any byte of
//! it is written: the guest sees `insufficient-space` (or a failed stream
//! write) and the call fails with `RESOURCE_EXHAUSTED` naming the guest,
//! whatever the guest makes of the error.
//!
//! Invariants:
//! - The running total is never below the directory's real size: it starts
//!   at the size measured when the guest loads and every write adds its
//!   length (an overwrite or a deleted file is counted until the next
//!   measurement). When a write would pass the quota, the directory is
//!   measured again (the sum of its files' lengths, symlinks not followed)
//!   and the write refused only if the real size plus the write passes it.
//! - One quota per guest, shared by all its instances and versions.
//!
//! Not counted: directory entries themselves, and files created empty
//! (both bounded only by the file system).

use super::store::Ctx;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sync::filesystem::types as fs;
use wasmtime_wasi::p2::{DynOutputStream, OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::filesystem::WasiFilesystemView;

/// The byte budget of one guest's granted directory.
pub struct DiskQuota {
    dir: PathBuf,
    limit: u64,
    /// At least the directory's real size.
    used: Mutex<u64>,
}

/// The sum of the lengths of the files under `dir` (symlinks not followed).
fn measure(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

impl DiskQuota {
    pub fn new(dir: &Path, limit: u64) -> DiskQuota {
        DiskQuota {
            dir: dir.to_owned(),
            limit,
            used: Mutex::new(measure(dir)),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Counts `bytes` about to be written; false (nothing counted) when
    /// they would take the directory past the quota.
    pub fn charge(&self, bytes: u64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.saturating_add(bytes) > self.limit {
            *used = measure(&self.dir);
        }
        match used.checked_add(bytes) {
            Some(total) if total <= self.limit => {
                *used = total;
                true
            }
            _ => false,
        }
    }
}

/// The quota as one store sees it: the guest's quota, and the flag that
/// records a refused write for the current call.
#[derive(Clone)]
pub struct StoreQuota {
    pub quota: Arc<DiskQuota>,
    pub exceeded: Arc<AtomicBool>,
}

impl StoreQuota {
    fn charge(&self, bytes: u64) -> bool {
        let ok = self.quota.charge(bytes);
        if !ok {
            self.exceeded.store(true, Ordering::SeqCst);
        }
        ok
    }
}

/// A file's output stream, charged against the quota before each write.
struct Charged {
    inner: DynOutputStream,
    quota: StoreQuota,
}

fn refused() -> StreamError {
    StreamError::LastOperationFailed(wasmtime::Error::msg("disk quota of grants.dir exceeded"))
}

#[async_trait::async_trait]
impl Pollable for Charged {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl OutputStream for Charged {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if !self.quota.charge(bytes.len() as u64) {
            return Err(refused());
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        if !self.quota.charge(bytes.len() as u64) {
            return Err(refused());
        }
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        if !self.quota.charge(nelem as u64) {
            return Err(refused());
        }
        self.inner.write_zeroes(nelem)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// Replaces a stream just handed out for a file by its charged wrapper.
fn charge_stream(ctx: &mut Ctx, stream: &Resource<DynOutputStream>) -> wasmtime::Result<()> {
    let Some(quota) = ctx.quota.clone() else { return Ok(()) };
    let slot = ctx.ctx().table.get_mut(stream)?;
    let inner = std::mem::replace(slot, Box::new(wasmtime_wasi::p2::pipe::ClosedOutputStream));
    *slot = Box::new(Charged { inner, quota });
    Ok(())
}

/// Charges `bytes`; false when the quota refuses them (recorded).
fn charge(ctx: &Ctx, bytes: u64) -> bool {
    ctx.quota.as_ref().is_none_or(|q| q.charge(bytes))
}

const FS_TYPES: &str = "wasi:filesystem/types@0.2.12";

type FsOut<T> = wasmtime::Result<(Result<T, fs::ErrorCode>,)>;

fn converted<T>(mut store: StoreContextMut<'_, Ctx>, r: wasmtime_wasi::p2::FsResult<T>) -> FsOut<T> {
    Ok((match r {
        Ok(v) => Ok(v),
        Err(e) => Err(fs::Host::convert_error_code(&mut store.data_mut().filesystem(), e)?),
    },))
}

/// Replaces the file-writing functions of the synchronous WASI linker with
/// charged ones. Call after `add_to_linker_sync`.
pub(super) fn charge_writes(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    use fs::HostDescriptor as D;
    linker.allow_shadowing(true);
    let mut types = linker.instance(FS_TYPES)?;
    types.func_wrap(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, Ctx>, (fd, buf, offset): (Resource<fs::Descriptor>, Vec<u8>, u64)| -> FsOut<u64> {
            if !charge(store.data(), buf.len() as u64) {
                return Ok((Err(fs::ErrorCode::InsufficientSpace),));
            }
            let r = D::write(&mut store.data_mut().filesystem(), fd, buf, offset);
            converted(store, r)
        },
    )?;
    types.func_wrap(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, Ctx>, (fd, size): (Resource<fs::Descriptor>, u64)| -> FsOut<()> {
            let now = D::stat(&mut store.data_mut().filesystem(), Resource::new_borrow(fd.rep())).map_or(0, |s| s.size);
            if !charge(store.data(), size.saturating_sub(now)) {
                return Ok((Err(fs::ErrorCode::InsufficientSpace),));
            }
            let r = D::set_size(&mut store.data_mut().filesystem(), fd, size);
            converted(store, r)
        },
    )?;
    wrap_stream_makers(&mut types)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// [`charge_writes`] for the async WASI linker (`add_to_linker_async`).
pub(super) fn charge_writes_async(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::filesystem::types::{self as afs, HostDescriptor as D};
    type AsyncOut<T> = wasmtime::Result<(Result<T, afs::ErrorCode>,)>;
    fn converted<T>(mut store: StoreContextMut<'_, Ctx>, r: wasmtime_wasi::p2::FsResult<T>) -> AsyncOut<T> {
        Ok((match r {
            Ok(v) => Ok(v),
            Err(e) => Err(afs::Host::convert_error_code(&mut store.data_mut().filesystem(), e)?),
        },))
    }
    linker.allow_shadowing(true);
    let mut types = linker.instance(FS_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, Ctx>, (fd, buf, offset): (Resource<afs::Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                if !charge(store.data(), buf.len() as u64) {
                    return Ok((Err(afs::ErrorCode::InsufficientSpace),));
                }
                let r = {
                    let mut view = store.data_mut().filesystem();
                    D::write(&mut view, fd, buf, offset).await
                };
                converted(store, r)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, Ctx>, (fd, size): (Resource<afs::Descriptor>, u64)| {
            Box::new(async move {
                let now = {
                    let mut view = store.data_mut().filesystem();
                    D::stat(&mut view, Resource::new_borrow(fd.rep())).await.map_or(0, |s| s.size)
                };
                if !charge(store.data(), size.saturating_sub(now)) {
                    return Ok((Err(afs::ErrorCode::InsufficientSpace),));
                }
                let r = {
                    let mut view = store.data_mut().filesystem();
                    D::set_size(&mut view, fd, size).await
                };
                converted(store, r)
            })
        },
    )?;
    wrap_stream_makers(&mut types)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `write-via-stream` and `append-via-stream` (synchronous in both
/// bindings): the stream they hand out is charged.
fn wrap_stream_makers(types: &mut wasmtime::component::LinkerInstance<'_, Ctx>) -> wasmtime::Result<()> {
    use fs::HostDescriptor as D;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, Ctx>, (fd, offset): (Resource<fs::Descriptor>, u64)| -> FsOut<Resource<DynOutputStream>> {
            let r = D::write_via_stream(&mut store.data_mut().filesystem(), fd, offset);
            if let Ok(s) = &r {
                charge_stream(store.data_mut(), s)?;
            }
            converted(store, r)
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, Ctx>, (fd,): (Resource<fs::Descriptor>,)| -> FsOut<Resource<DynOutputStream>> {
            let r = D::append_via_stream(&mut store.data_mut().filesystem(), fd);
            if let Ok(s) = &r {
                charge_stream(store.data_mut(), s)?;
            }
            converted(store, r)
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_disk_quota_counts_writes_and_measures_before_refusing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), vec![0u8; 600]).unwrap();
        let q = DiskQuota::new(dir.path(), 1000);
        assert!(q.charge(400), "600 + 400 fit");
        std::fs::write(dir.path().join("new"), vec![0u8; 400]).unwrap();
        assert!(!q.charge(1), "measured again: 1000 are there, 1001 do not fit");
        // A deleted file frees its bytes once the directory is measured.
        std::fs::remove_file(dir.path().join("old")).unwrap();
        assert!(q.charge(600), "400 are there");
        // Counted but never written (say, an overwrite): the count goes
        // past the quota, the measurement does not.
        assert!(q.charge(1));
    }
}
