//! Compiling a component, through the on-disk compile cache when the
//! runtime has one (`STATEGATE_WASM_CACHE_DIR`).
//!
//! An entry is native code that wasmtime maps and runs as it is, so the
//! cache is only as safe as what can write to it. Nothing a guest is
//! granted may reach it (refused at load, see `dirs.rs`), and an entry is
//! loaded only when every check passes:
//! - it is a regular file, owned by this process's user, and neither group-
//!   nor world-writable (the same checks for the directory and the key);
//! - it carries an HMAC-SHA256, under a key kept in the cache directory
//!   (`.key`, mode 0600, created on first use from the OS's random source),
//!   over the SHA-256 of the `.wasm` file it was compiled from and the
//!   compiled bytes: a planted file, or one entry renamed to another's
//!   name, does not verify.
//!
//! Invariants:
//! - An entry is keyed by the SHA-256 of the `.wasm` file it was compiled
//!   from; the same bytes give the same component whichever guest loads
//!   them.
//! - An entry that fails a check, or that wasmtime will not load, is never
//!   fatal and never loaded: the component is compiled again and the entry
//!   rewritten.
//! - An entry is verified from the bytes that are then loaded (read once,
//!   checked, deserialized from memory), so it cannot be swapped between
//!   the check and the load.
//! - Entries are written aside and renamed into place, so a reader never
//!   sees half an entry. A directory or key that cannot be trusted turns
//!   the disk cache off (logged), it does not stop the gateway.

use super::{WasmRuntime, image};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The SHA-256 of a `.wasm` file, as the cache and the logs name it.
pub(super) fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compiles a component, with its memory images built (`image.rs`);
/// returns it with the hash of its bytes.
pub(crate) fn compile(runtime: &WasmRuntime, bytes: &[u8]) -> Result<(Component, String), String> {
    let hash = hash(bytes);
    let engine = runtime.engine();
    let cache = runtime.disk_cache();
    let component = match cache.and_then(|c| c.read(engine, &hash)) {
        Some(component) => component,
        None => {
            let component = Component::new(engine, bytes).map_err(|e| format!("not a valid component: {e:?}"))?;
            if let Some(cache) = cache {
                cache.write(&hash, &component);
            }
            component
        }
    };
    image::prepare(&component)?;
    Ok((component, hash))
}

type HmacSha256 = Hmac<Sha256>;

/// Length of an entry's MAC, which precedes the compiled bytes.
const MAC_LEN: usize = 32;
/// Bound into every MAC, so a MAC made for anything else does not verify.
const MAC_CONTEXT: &[u8] = b"stategate wasm compile cache v1\0";
const KEY_FILE: &str = ".key";

/// The disk cache of one runtime: a directory this user owns, and the key
/// its entries are signed with.
pub struct DiskCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Whether a file or directory is ours and no one else can write to it.
fn trusted(meta: &std::fs::Metadata) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not by this process's uid {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("mode {:o} lets others write to it", meta.mode() & 0o777));
    }
    Ok(())
}

impl DiskCache {
    /// Opens (creating) the cache directory and its key. `None`, logged,
    /// when the directory cannot be made or trusted: the runtime then
    /// compiles every guest it loads.
    pub fn open(dir: &Path) -> Option<DiskCache> {
        let opened = (|| -> Result<DiskCache, String> {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create it: {e}"))?;
            let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
            trusted(&meta)?;
            let key = load_or_create_key(&dir.join(KEY_FILE))?;
            Ok(DiskCache { dir: dir.to_owned(), key })
        })();
        match opened {
            Ok(c) => Some(c),
            Err(why) => {
                tracing::warn!(dir = %dir.display(), "the wasm compile cache is off: {why}");
                None
            }
        }
    }

    fn entry(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.signed.cwasm"))
    }

    fn mac(&self, hash: &str, compiled: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(MAC_CONTEXT);
        mac.update(hash.as_bytes());
        mac.update(b"\0");
        mac.update(compiled);
        mac
    }

    /// The cached component for a hash, if there is one that passes every
    /// check.
    pub fn read(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let path = self.entry(hash);
        let checked = (|| -> Result<Option<Vec<u8>>, String> {
            let link = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            if !link.file_type().is_file() {
                return Err("not a regular file".into());
            }
            let mut file = File::open(&path).map_err(|e| e.to_string())?;
            // The checks apply to the file opened, not to whatever the name
            // points to by now.
            let meta = file.metadata().map_err(|e| e.to_string())?;
            trusted(&meta)?;
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
            if bytes.len() < MAC_LEN {
                return Err("shorter than its MAC".into());
            }
            let (tag, compiled) = bytes.split_at(MAC_LEN);
            self.mac(hash, compiled)
                .verify_slice(tag)
                .map_err(|_| "its MAC does not verify (not written by this cache for this file)".to_owned())?;
            Ok(Some(bytes))
        })();
        let bytes = match checked {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(why) => {
                tracing::warn!(file = %path.display(), "wasm compile cache entry refused, recompiling: {why}");
                return None;
            }
        };
        // SAFETY: the bytes are an artifact this cache serialized for this
        // hash (the MAC says so) and were read before they were checked;
        // wasmtime itself refuses an artifact of another engine version or
        // configuration.
        match unsafe { Component::deserialize(engine, &bytes[MAC_LEN..]) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %path.display(), "wasm compile cache entry unusable, recompiling: {e}");
                None
            }
        }
    }

    /// Writes (or replaces) the entry of a hash; a failure is logged.
    pub fn write(&self, hash: &str, component: &Component) {
        let path = self.entry(hash);
        let write = || -> Result<(), String> {
            let compiled = component.serialize().map_err(|e| e.to_string())?;
            let tag = self.mac(hash, &compiled).finalize().into_bytes();
            let tmp = self.dir.join(format!("{hash}.{}.tmp", std::process::id()));
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| e.to_string())?;
            // A temporary file left by an earlier run keeps its old mode.
            f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
            f.write_all(&tag).and_then(|()| f.write_all(&compiled)).map_err(|e| e.to_string())?;
            drop(f);
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
        };
        if let Err(e) = write() {
            tracing::warn!(file = %path.display(), "cannot write the wasm compile cache: {e}");
        }
    }
}

/// The cache's key: read when it is ours and private, else made anew
/// (entries signed with an old key then fail to verify and are rewritten).
fn load_or_create_key(path: &Path) -> Result<[u8; 32], String> {
    match File::open(path) {
        Ok(mut f) => {
            let meta = f.metadata().map_err(|e| e.to_string())?;
            let private = trusted(&meta).is_ok() && meta.mode() & 0o077 == 0 && meta.file_type().is_file();
            let mut key = [0u8; 32];
            if private && f.read_exact(&mut key).is_ok() {
                return Ok(key);
            }
            tracing::warn!(file = %path.display(), "the wasm compile cache key is not private to this user; making a new one");
            std::fs::remove_file(path).map_err(|e| format!("cannot replace the key {}: {e}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read the key {}: {e}", path.display())),
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| format!("no random source for the key: {e}"))?;
    // Written aside, then linked into place: a process racing us to create
    // the key either wins (we read its key) or loses, never a torn key.
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let made = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&key)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match made {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut f = File::open(path).map_err(|e| e.to_string())?;
            let meta = f.metadata().map_err(|e| e.to_string())?;
            trusted(&meta)?;
            f.read_exact(&mut key).map_err(|e| format!("cannot read the key {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot write the key {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: a preamble and no sections.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn engine() -> Engine {
        Engine::default()
    }

    #[test]
    fn wasm_cache_entries_load_only_when_ours_and_signed() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let engine = engine();
        let cache = DiskCache::open(&cache_dir).unwrap();
        let key_mode = std::fs::metadata(cache_dir.join(KEY_FILE)).unwrap().mode() & 0o777;
        assert_eq!(key_mode, 0o600);
        let component = Component::new(&engine, EMPTY_COMPONENT).unwrap();
        let h = hash(EMPTY_COMPONENT);
        assert!(cache.read(&engine, &h).is_none(), "nothing cached yet");
        cache.write(&h, &component);
        assert!(cache.read(&engine, &h).is_some(), "a fresh entry loads");
        // The same key is found again by another runtime.
        assert!(DiskCache::open(&cache_dir).unwrap().read(&engine, &h).is_some());

        let entry = cache.entry(&h);
        let good = std::fs::read(&entry).unwrap();
        // Writable by the group: refused.
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(cache.read(&engine, &h).is_none(), "a group-writable entry is refused");
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(cache.read(&engine, &h).is_some());
        // One byte of the compiled code changed: refused.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&entry, &bad).unwrap();
        assert!(cache.read(&engine, &h).is_none(), "a changed entry is refused");
        // A valid entry under another file's name: refused.
        std::fs::write(&entry, &good).unwrap();
        let other = hash(b"another file");
        std::fs::copy(&entry, cache.entry(&other)).unwrap();
        assert!(cache.read(&engine, &other).is_none(), "an entry renamed to another hash is refused");
        // The bare serialized artifact (what an unsigned cache held): refused.
        std::fs::write(&entry, component.serialize().unwrap()).unwrap();
        assert!(cache.read(&engine, &h).is_none(), "an unsigned artifact is refused");
        // A symlink to a valid entry: refused.
        let aside = dir.path().join("aside");
        std::fs::write(&aside, &good).unwrap();
        std::fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink(&aside, &entry).unwrap();
        assert!(cache.read(&engine, &h).is_none(), "a symlink is refused");
    }

    #[test]
    fn wasm_cache_key_readable_by_others_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = DiskCache::open(dir.path()).unwrap();
        let component = Component::new(&engine, EMPTY_COMPONENT).unwrap();
        let h = hash(EMPTY_COMPONENT);
        cache.write(&h, &component);
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reopened = DiskCache::open(dir.path()).unwrap();
        assert_ne!(reopened.key, cache.key, "a key others could read is not used");
        assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        assert!(reopened.read(&engine, &h).is_none(), "entries signed with the old key are refused");
    }

    #[test]
    fn wasm_cache_dir_writable_by_others_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(DiskCache::open(&open).is_none());
    }
}
