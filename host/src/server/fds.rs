//! The process's file-descriptor budget. Every connection costs one
//! descriptor; running out of them makes `accept` fail for every listener
//! at once, so the API port's connection cap is derived from the open-file
//! limit with room left for everything else, and the ops port keeps a few
//! spare descriptors it can give up to accept a health check even then.

use std::fs::File;
use std::sync::{Arc, Mutex};

/// Descriptors left outside the API's connection cap for storage and
/// channel clients, wasm guests and their grants, the runtime and logs.
pub const HEADROOM: usize = 128;

/// The API connection cap when the open-file limit allows more: past this,
/// memory rather than descriptors runs out first.
pub const MAX_AUTO_CONNECTIONS: usize = 10_000;

/// The least automatic cap, however low the open-file limit.
const MIN_AUTO_CONNECTIONS: usize = 16;

/// Spare descriptors the ops listener keeps (see [`Spares`]).
pub const OPS_SPARES: usize = 8;

/// The soft open-file limit, if the platform reports one.
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does),
/// so the connection cap is not set by a low default soft limit. Returns
/// the new soft limit; failures leave the limit as it was.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// The API's connection cap when STATEGATE_MAX_CONNECTIONS is unset: the
/// open-file limit minus [`HEADROOM`] and the ops port's share, within
/// [`MIN_AUTO_CONNECTIONS`]..=[`MAX_AUTO_CONNECTIONS`].
pub fn auto_max_connections(open_file_limit: Option<u64>, ops_max_connections: usize) -> usize {
    let Some(limit) = open_file_limit else { return MAX_AUTO_CONNECTIONS };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    limit
        .saturating_sub(HEADROOM + ops_max_connections + OPS_SPARES)
        .clamp(MIN_AUTO_CONNECTIONS, MAX_AUTO_CONNECTIONS)
}

/// Whether an `accept` error means the process or system is out of
/// descriptors (the error repeats until one is freed).
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Descriptors held in reserve (open on /dev/null). When an `accept` fails
/// for lack of descriptors, [`Spares::release`] closes one so the next
/// `accept` can succeed; [`Spares::refill`] takes it back once the
/// connection is closed.
#[derive(Clone)]
pub struct Spares {
    target: usize,
    files: Arc<Mutex<Vec<File>>>,
}

impl Spares {
    pub fn new(target: usize) -> Self {
        let spares = Spares {
            target,
            files: Arc::new(Mutex::new(Vec::with_capacity(target))),
        };
        spares.refill();
        spares
    }

    /// Closes one spare; false when none is left.
    pub fn release(&self) -> bool {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).pop().is_some()
    }

    /// Opens spares up to the target while descriptors are available.
    pub fn refill(&self) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        while files.len() < self.target {
            match File::open("/dev/null") {
                Ok(f) => files.push(f),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_cap_leaves_headroom_and_stays_in_bounds() {
        assert_eq!(auto_max_connections(Some(256), 32), 256 - HEADROOM - 32 - OPS_SPARES);
        assert_eq!(auto_max_connections(Some(64), 32), MIN_AUTO_CONNECTIONS);
        assert_eq!(auto_max_connections(Some(1 << 20), 32), MAX_AUTO_CONNECTIONS);
        assert_eq!(auto_max_connections(None, 32), MAX_AUTO_CONNECTIONS);
    }

    #[test]
    fn spares_are_released_and_refilled() {
        let s = Spares::new(2);
        assert!(s.release() && s.release());
        assert!(!s.release(), "only two were kept");
        s.refill();
        assert!(s.release());
    }

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!out_of_descriptors(&std::io::Error::from_raw_os_error(libc::ECONNABORTED)));
    }
}
