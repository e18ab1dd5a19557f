//! One process per sqlite database: an advisory lock (`flock`) on
//! `<database>.lock` beside the file, taken when the provider opens and
//! held until it closes (or the process ends: the kernel drops the lock of
//! a killed process, so a crash leaves nothing to clean up).
//!
//! Two gateway processes on one data dir would both run a writer, a
//! checkpointer and a hub over the same file: sqlite keeps it consistent on
//! a local disk, but every write then waits on the other process's locks
//! (busy timeouts instead of group commits), and on a network filesystem
//! its locks are not reliable at all. So the second process is refused at
//! start, naming the data dir and the process that holds it. Within one
//! process, providers opened on the same file (several gateways embedded
//! in one process, as tests and benchmarks do) share the lock.

use crate::model::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// A held lock; the last handle of this process releases it.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Locks held by this process, by lock file.
static HELD: Mutex<Option<HashMap<PathBuf, Weak<FileLock>>>> = Mutex::new(None);

/// Takes (or shares, within this process) the lock of `database`.
pub fn lock(database: &Path) -> Result<Arc<FileLock>> {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let path = database.with_file_name(name);
    let key = std::fs::canonicalize(path.parent().unwrap_or(Path::new(".")))
        .map(|dir| dir.join(path.file_name().unwrap_or_default()))
        .unwrap_or_else(|_| path.clone());
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let held = held.get_or_insert_with(HashMap::new);
    if let Some(lock) = held.get(&key).and_then(Weak::upgrade) {
        return Ok(lock);
    }
    let cannot = |e: std::io::Error| Error::unavailable(format!("sqlite: cannot open the lock file {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(cannot)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(cannot(e));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "another process".to_owned(),
            pid => format!("another process (pid {pid})"),
        };
        let dir = database.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Err(Error::unavailable(format!(
            "sqlite: the data dir {} is in use: {holder} holds the lock {} of the database {}; run one gateway per \
             data dir (give this one another STATEGATE_DATA_DIR, or another sqlite \"path\")",
            dir.display(),
            path.display(),
            database.display()
        )));
    }
    // Whose lock it is, for the next process's message (best effort).
    let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| writeln!(file, "{}", std::process::id()));
    let lock = Arc::new(FileLock { _file: file });
    held.retain(|_, w| w.strong_count() > 0);
    held.insert(key, Arc::downgrade(&lock));
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_shares_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let a = lock(&db).unwrap();
        let b = lock(&db).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(std::fs::read_to_string(dir.path().join("x.db.lock")).unwrap().trim(), std::process::id().to_string());
        drop((a, b));
        // Released with the last handle: a new one is a new lock.
        let c = lock(&db).unwrap();
        drop(c);
    }
}
