//! The read connections, kept by the core that last used them.
//!
//! A point read touches a few kilobytes of its connection's memory: the
//! connection itself, its prepared statement's VM and cursors, the page
//! cache's headers for the pages it maps. When a connection was last used
//! on the other core, each of those cache lines comes over from that core's
//! cache first, and on some machines that costs more than the read's
//! instructions: a Get's CPU beyond the health check's was 35 µs on
//! session 26's AMD machine against 6–7 µs on session 25's Intel one, for
//! the same ~20k instructions. One shared list handed the most recently
//! returned connection to whichever worker came next, so with two workers
//! a connection changed cores on about every other read. Kept by CPU, a
//! Get cost about 1.4 µs (5 %) less gateway CPU on session 27's machine
//! (BENCHMARKS.md, session 27).
//!
//! So the pool has one list per CPU: a read takes a connection from the
//! list of the CPU it runs on (`sched_getcpu`, a vDSO call that makes no
//! syscall), and only when that list is empty one from another CPU's, then
//! a new one. It gives it back to the list of the CPU it finished on, where
//! its memory now is. Each list's lock is taken almost only from its own
//! CPU, so the lock's own cache line stays there too.
//!
//! The size bound is a semaphore over all lists: a permit guarantees a
//! connection (a pooled one, or the right to open one that is then kept),
//! so the pool never grows past its permits however the connections spread
//! over the lists.

use super::{db_error, open_reader};
use crate::model::{Error, Result};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

pub(super) struct ReadPool {
    path: PathBuf,
    /// Idle connections by the CPU they were last used on.
    lists: Box<[Mutex<Vec<Connection>>]>,
    /// One permit per connection the pool may hold.
    permits: Arc<tokio::sync::Semaphore>,
}

impl ReadPool {
    /// A pool of at most `per_cpu` connections per CPU to the file at
    /// `path`, opened on first use.
    pub(super) fn new(path: PathBuf, per_cpu: usize) -> Arc<ReadPool> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        Arc::new(ReadPool {
            path,
            lists: (0..cpus).map(|_| Mutex::new(Vec::new())).collect(),
            permits: Arc::new(tokio::sync::Semaphore::new(per_cpu * cpus)),
        })
    }

    /// Runs `f` on a pooled connection in the blocking thread pool.
    pub(super) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::unavailable("sqlite: storage is closed"))?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.with_connection(f)
        })
        .await
        .map_err(Error::internal)?
    }

    /// `read` for point lookups: runs on the calling task when a connection
    /// is free right now (an indexed lookup in mapped pages takes less than
    /// the hop to the blocking pool and back), else waits its turn like
    /// `read`.
    pub(super) async fn read_point<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let Ok(_permit) = self.permits.try_acquire() else {
            return self.read(f).await;
        };
        self.with_connection(f)
    }

    /// Drops the idle connections and admits no more reads.
    pub(super) fn close(&self) {
        self.permits.close();
        for list in &self.lists {
            lock(list).clear();
        }
    }

    /// Runs `f` on a connection from this CPU's list, else another's, else
    /// a new one; the caller holds a permit.
    fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let home = self.list_index();
        let pooled = (0..self.lists.len())
            .map(|i| (home + i) % self.lists.len())
            .find_map(|i| lock(&self.lists[i]).pop());
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let out = f(&conn).map_err(|e| db_error(&e));
        lock(&self.lists[self.list_index()]).push(conn);
        out
    }

    /// The list of the CPU this thread runs on now.
    fn list_index(&self) -> usize {
        current_cpu() % self.lists.len()
    }
}

fn lock(list: &Mutex<Vec<Connection>>) -> MutexGuard<'_, Vec<Connection>> {
    // A panic while the lock was held left a list of whole connections.
    list.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(target_os = "linux")]
pub(super) fn current_cpu() -> usize {
    // SAFETY: no arguments; returns -1 (with errno set) on failure.
    usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn current_cpu() -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A pool on a new database file (opened through the store, which
    /// creates it in WAL mode and holds the process's lock on it).
    fn pool(dir: &tempfile::TempDir, per_cpu: usize) -> (super::super::SqliteStorage, Arc<ReadPool>) {
        let path = dir.path().join("a.db");
        let storage = super::super::SqliteStorage::open(&path).unwrap();
        (storage, ReadPool::new(path, per_cpu))
    }

    fn idle(pool: &ReadPool) -> Vec<usize> {
        pool.lists.iter().map(|l| lock(l).len()).collect()
    }

    /// Many more reads than permits, holding their connections a while,
    /// alongside point reads: no more connections are ever in use, or kept,
    /// than the pool's permits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_never_hold_more_connections_than_permits() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, pool) = pool(&dir, 1);
        let bound = pool.lists.len();
        let (in_use, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let held = |hold: bool| {
            let (in_use, most) = (in_use.clone(), most.clone());
            move |c: &Connection| {
                let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                if hold {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let one: i64 = c.query_row("SELECT 1", [], |r| r.get(0))?;
                in_use.fetch_sub(1, Ordering::SeqCst);
                Ok(one)
            }
        };
        let reads = (0..4 * bound).map(|_| {
            let pool = pool.clone();
            let f = held(true);
            tokio::spawn(async move { pool.read(f).await })
        });
        let points = (0..4 * bound).map(|_| {
            let pool = pool.clone();
            let f = held(false);
            tokio::spawn(async move { pool.read_point(f).await })
        });
        for read in futures::future::join_all(reads.chain(points)).await {
            assert_eq!(read.unwrap().unwrap(), 1);
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most > 1, "the reads never overlapped: the test proves nothing");
        assert!(most <= bound, "{most} connections in use at once; the pool allows {bound}");
        let kept: usize = idle(&pool).iter().sum();
        assert!((1..=bound).contains(&kept), "{kept} connections kept; the pool allows {bound}");
        storage.close().await.unwrap();
    }

    /// A connection used on one CPU goes back to that CPU's list; a read
    /// on another CPU with an empty list takes it from there rather than
    /// open a second one, and leaves it on its own CPU's list.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_goes_back_to_the_list_of_the_cpu_that_used_it() {
        fn pin(cpu: usize) -> bool {
            // SAFETY: a zeroed cpu_set_t is empty; the calls only read it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (storage, pool) = pool(&dir, 2);
        if !(pin(0) && current_cpu() == 0 && pin(1) && current_cpu() == 1) {
            println!("skipped: this test needs to run on CPUs 0 and 1");
            storage.close().await.unwrap();
            return;
        }
        let one = |c: &Connection| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0));
        assert!(pin(0));
        pool.read_point(one).await.unwrap();
        assert_eq!(idle(&pool)[..2], [1, 0]);
        assert!(pin(1));
        pool.read_point(one).await.unwrap();
        assert_eq!(idle(&pool)[..2], [0, 1], "one connection, moved to CPU 1's list");
        storage.close().await.unwrap();
    }

    /// A closed pool refuses reads and opens no connection for them.
    #[tokio::test]
    async fn a_closed_pool_refuses_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, pool) = pool(&dir, 2);
        let one = |c: &Connection| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0));
        pool.read_point(one).await.unwrap();
        pool.close();
        for refused in [pool.read_point(one).await, pool.read(one).await] {
            let e = refused.unwrap_err();
            assert!(matches!(e, Error::Unavailable(_)) && e.to_string().contains("closed"), "{e}");
        }
        assert_eq!(idle(&pool).iter().sum::<usize>(), 0);
        storage.close().await.unwrap();
    }
}
