//! The host directories guests are granted (`grants.dir`), checked when a
//! guest loads:
//! - no grant contains the compile cache directory or lies inside it: the
//!   cache holds native code the host runs, and a guest that could write
//!   there could plant some;
//! - no two guests of one runtime hold overlapping directories (the same,
//!   or one inside the other), so no guest reads or plants files in
//!   another's.
//!
//! Invariants:
//! - Paths are compared canonical (symlinks resolved), component by
//!   component.
//! - A guest's hold is released when the guest is dropped, so a provider
//!   reopened on the same directory (a restart in-process) is not refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The directories held by the guests of one runtime.
#[derive(Default)]
pub struct GrantedDirs {
    next: AtomicU64,
    held: Mutex<Vec<Held>>,
}

struct Held {
    id: u64,
    guest: String,
    dir: PathBuf,
}

/// A guest's hold on its directory; released when dropped.
pub struct DirHold {
    dirs: Arc<GrantedDirs>,
    id: u64,
}

impl Drop for DirHold {
    fn drop(&mut self) {
        self.dirs.held.lock().unwrap_or_else(|p| p.into_inner()).retain(|h| h.id != self.id);
    }
}

/// A path made absolute with its symlinks resolved, as far as it exists.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| std::path::absolute(path).unwrap_or_else(|_| path.to_owned()))
}

fn overlap(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl GrantedDirs {
    /// Records that `guest` holds `dir` (which exists); refuses it,
    /// explaining why, when it overlaps the cache directory or another
    /// guest's directory.
    pub fn hold(self: &Arc<Self>, guest: &str, dir: &Path, cache_dir: Option<&Path>) -> Result<DirHold, String> {
        let dir = canonical(dir);
        if let Some(cache) = cache_dir.map(canonical)
            && overlap(&dir, &cache)
        {
            let how = if cache.starts_with(&dir) { "contains" } else { "lies inside" };
            return Err(format!(
                "grants.dir {} {how} the wasm compile cache {} (STATEGATE_WASM_CACHE_DIR): a guest must not reach the \
                 native code the host runs; grant a directory outside it",
                dir.display(),
                cache.display()
            ));
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = held.iter().find(|h| overlap(&dir, &h.dir)) {
            return Err(format!(
                "grants.dir {} overlaps {} granted to wasm guest {:?}: guests may not share files; grant each its own directory",
                dir.display(),
                other.dir.display(),
                other.guest
            ));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        held.push(Held {
            id,
            guest: guest.to_owned(),
            dir,
        });
        Ok(DirHold { dirs: self.clone(), id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_grants_keep_off_the_cache_and_each_other() {
        let root = tempfile::tempdir().unwrap();
        let (cache, a, b) = (root.path().join("cache"), root.path().join("a"), root.path().join("b"));
        for d in [&cache, &a, &b, &a.join("inner"), &cache.join("inner")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let dirs = Arc::new(GrantedDirs::default());
        let err = dirs.hold("g", root.path(), Some(&cache)).err().unwrap();
        assert!(err.contains("contains the wasm compile cache"), "{err}");
        let err = dirs.hold("g", &cache.join("inner"), Some(&cache)).err().unwrap();
        assert!(err.contains("lies inside the wasm compile cache"), "{err}");
        // Through a symlink: the same directory.
        std::os::unix::fs::symlink(&cache, root.path().join("link")).unwrap();
        assert!(dirs.hold("g", &root.path().join("link"), Some(&cache)).is_err());

        let held = dirs.hold("first", &a, Some(&cache)).unwrap();
        let err = dirs.hold("second", &a.join("inner"), Some(&cache)).err().unwrap();
        assert!(err.contains("granted to wasm guest \"first\""), "{err}");
        assert!(dirs.hold("second", &a, None).is_err(), "the same directory");
        let other = dirs.hold("second", &b, Some(&cache)).unwrap();
        drop(held);
        let again = dirs.hold("third", &a, Some(&cache)).expect("released when the first guest went away");
        drop((other, again));
    }
}
