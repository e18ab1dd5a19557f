//! A component's memory images, built when it loads rather than when its
//! first instance starts.
//!
//! wasmtime starts each instance's linear memory as a copy-on-write mapping
//! of an image of the module's data segments, built once per module. On
//! Linux the image is a memfd that wasmtime seals against writes. The
//! kernel refuses that seal (`EBUSY`) while any page of the memfd still
//! holds a reference it cannot account for (a page in flight on another
//! CPU, in migration or compaction); it waits a moment for them to go and
//! then gives up. wasmtime builds the image lazily, so a refusal used to
//! fail an instantiation: CI saw it once, on a loaded machine, for the
//! 12 MB JavaScript policy guest.
//!
//! Invariants:
//! - Every component the gateway loads has its images built before it is
//!   linked ([`prepare`], called by `cache::compile`), so instantiation never
//!   builds one, and a refusal is a load error naming the cause, never a
//!   failed call.
//! - A refused seal is transient by the kernel's own account, so it is tried
//!   again after a pause ([`RETRY_PAUSES`], about 1.5 s in all, on top of
//!   the kernel's own waits); any other error, or a refusal that outlasts
//!   the pauses, fails the load.
//! - Loading is blocking already (it compiles), so the pauses are plain
//!   sleeps on the loading thread.

use std::io;
use std::time::Duration;
use wasmtime::component::Component;

/// The pauses before each try after the first.
const RETRY_PAUSES: [Duration; 5] = [
    Duration::from_millis(25),
    Duration::from_millis(75),
    Duration::from_millis(150),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// Builds the component's memory images now, trying again while the kernel
/// refuses to seal one.
pub(super) fn prepare(component: &Component) -> Result<(), String> {
    build_retrying(|| component.initialize_copy_on_write_image(), std::thread::sleep)
}

fn build_retrying(
    mut build: impl FnMut() -> wasmtime::Result<()>,
    mut pause: impl FnMut(Duration),
) -> Result<(), String> {
    let mut pauses = RETRY_PAUSES.iter();
    loop {
        let e = match build() {
            Ok(()) => return Ok(()),
            Err(e) if !seal_refused(&e) => return Err(format!("cannot build its memory image: {e:#}")),
            Err(e) => e,
        };
        let Some(&p) = pauses.next() else {
            let tries = RETRY_PAUSES.len() + 1;
            return Err(format!("cannot build its memory image: the kernel refused to seal it on each of {tries} tries: {e:#}"));
        };
        tracing::debug!(pause_ms = p.as_millis() as u64, "the kernel refused to seal a memory image; trying again");
        pause(p);
    }
}

/// Whether the error is the kernel's `EBUSY`, which is what a refused seal
/// comes back as, wherever in the chain wasmtime put it.
fn seal_refused(e: &wasmtime::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<io::Error>()).any(|io| io.raw_os_error() == Some(libc::EBUSY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// The shape wasmtime returns: the memfd crate's error, whose source is
    /// the `fcntl` error.
    #[derive(Debug)]
    struct AddSeals(io::Error);

    impl fmt::Display for AddSeals {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot add seals to the memfd")
        }
    }

    impl std::error::Error for AddSeals {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn refused() -> wasmtime::Error {
        AddSeals(io::Error::from_raw_os_error(libc::EBUSY)).into()
    }

    /// `build_retrying` with `answer(n)` as the outcome of try `n`: its
    /// result, the tries made and the pauses taken.
    fn tried(mut answer: impl FnMut(usize) -> wasmtime::Result<()>) -> (Result<(), String>, usize, Vec<Duration>) {
        let mut tries = 0;
        let mut paused = Vec::new();
        let r = build_retrying(
            || {
                tries += 1;
                answer(tries)
            },
            |p| paused.push(p),
        );
        (r, tries, paused)
    }

    #[test]
    fn a_refused_seal_is_tried_again_until_it_is_granted() {
        let (r, tries, paused) = tried(|n| if n < 3 { Err(refused()) } else { Ok(()) });
        assert_eq!(r, Ok(()));
        assert_eq!(tries, 3);
        assert_eq!(paused, RETRY_PAUSES[..2]);
    }

    #[test]
    fn a_seal_refused_on_every_try_fails_the_load_naming_why() {
        let (r, tries, paused) = tried(|_| Err(refused().context("building a memory image")));
        let err = r.unwrap_err();
        assert!(err.contains("refused to seal it on each of 6 tries") && err.contains("cannot add seals to the memfd"), "{err}");
        assert_eq!(tries, RETRY_PAUSES.len() + 1);
        assert_eq!(paused, RETRY_PAUSES);
    }

    #[test]
    fn other_errors_fail_at_once() {
        let (r, tries, paused) = tried(|_| Err(AddSeals(io::Error::from_raw_os_error(libc::EPERM)).into()));
        assert!(r.unwrap_err().starts_with("cannot build its memory image: cannot add seals"));
        assert_eq!((tries, paused.len()), (1, 0), "no second try and no pause for an error that is not transient");
    }
}
