//! A provider call's deadline covers the time its guest spends blocked in
//! the host: a sleep (a WASI clock pollable) is cut off at the deadline and
//! its thread comes back; a wait the host cannot cut off (a FIFO's `open`)
//! is abandoned at the deadline, its instance discarded, and the blocked
//! thread holds only its own guest's share of the instance bound. The
//! policy-hook counterparts (a sleeping hook, one tenant's blocked calls
//! next to another tenant's) are in wasm_sandbox.

use crate::wasm_support::{guest, settings, spec, storage_spec};
use stategate::wasm::StoragePre;
use stategate::wasm::{Guest, GuestConfig, Persistent, Settings, WasmRuntime};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_millis(300);

/// Few places: two in all, one per guest.
fn tight() -> WasmRuntime {
    WasmRuntime::new(Settings {
        call_timeout: TIMEOUT,
        max_instances: 2,
        max_instances_per_guest: 1,
        ..settings()
    })
    .unwrap()
}

type Stall = Persistent<StoragePre>;

async fn stall_storage(runtime: &WasmRuntime, dir: &std::path::Path, config: serde_json::Value) -> Stall {
    let mut c = GuestConfig::at(guest("stall_storage"), "stall");
    c.config = config.as_object().unwrap().clone();
    c.grants.dir = Some(dir.to_owned());
    let spec = c.spec(runtime.settings());
    let runtime = runtime.clone();
    let guest = tokio::task::spawn_blocking(move || Guest::load(&runtime, spec)).await.unwrap().unwrap();
    Persistent::new(guest)
}

/// `ping`, within a hundred times the call's time limit (a guard against a
/// hang, not a measurement): the call's own error, or whether it succeeded.
async fn ping(p: &Stall) -> Result<(), String> {
    let call = p.call("ping", |s, g| g.ping(s));
    match tokio::time::timeout(TIMEOUT * 100, call).await {
        Err(_) => panic!("ping did not end within 100 times its time limit"),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(r)) => {
            r.expect("stall-storage's ping answers ok");
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_provider_call_ends_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tight();
    let stall = stall_storage(&runtime, dir.path(), serde_json::json!({"sleep_ms": 600_000})).await;
    // Each call fails at its deadline, as out of time. The blocked wait was
    // cut off, so the thread came back and gave back the guest's one
    // place: the next call gets it (it does not find its instances busy).
    for _ in 0..3 {
        let err = ping(&stall).await.expect_err("a call blocked in a sleep fails at its deadline");
        assert!(err.contains("\"stall\"") && err.contains("ping exceeded its time limit of 300 ms"), "{err}");
    }
}

/// Reopens a FIFO's pending reader and, when dropped, lets it read to the
/// end: the blocked thread returns (the test's runtime could not shut
/// down while it is blocked).
struct Fifo {
    path: std::path::PathBuf,
}

impl Fifo {
    fn new(path: std::path::PathBuf) -> Fifo {
        let made = std::process::Command::new("mkfifo").arg(&path).status().expect("mkfifo runs");
        assert!(made.success());
        Fifo { path }
    }

    /// Opens the FIFO as a writer (read-write does not block on Linux),
    /// which completes the guest's pending open; replaces the FIFO by an
    /// empty file, so later opens do not block; then closes the writer, so
    /// the guest reads to the end.
    fn release(&self) {
        if let Ok(writer) = std::fs::OpenOptions::new().read(true).write(true).open(&self.path) {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::write(&self.path, b"");
            drop(writer);
        }
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        self.release();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_provider_call_is_abandoned_and_holds_only_its_guests_place() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = Fifo::new(dir.path().join("fifo"));
    let runtime = tight();
    let stall = stall_storage(&runtime, dir.path(), serde_json::json!({"read": "/data/fifo"})).await;

    // The guest's first call blocks in `open` of a FIFO nobody writes:
    // nothing in the host can cut that off, so the call is abandoned at
    // its deadline and reported as out of time.
    let err = ping(&stall).await.expect_err("a call blocked in open(2) is abandoned");
    assert!(err.contains("ping exceeded its time limit of 300 ms"), "{err}");
    // The blocked thread still holds the guest's one place: the guest's
    // next call finds none free and says so, within its time limit...
    let err = ping(&stall).await.expect_err("the guest's share is taken");
    assert!(err.contains("found no free instance") && err.contains("STATEGATE_WASM_MAX_INSTANCES_PER_GUEST"), "{err}");

    // ... while another provider on the same runtime is served: the
    // blocked guest holds one of the two places, not both.
    let fs = tempfile::tempdir().unwrap();
    let other = storage_spec(&spec(&guest("fs_storage"), fs.path())).open(fs.path(), &runtime).await.expect("fs_storage opens");
    let r = stategate::model::RecordRef::parse("d", "t", "k").unwrap();
    for n in 0..5 {
        other.append(crate::storage_conformance::put(&r, serde_json::json!({"n": n}))).await.expect("served meanwhile");
    }
    assert_eq!(other.get(&r).await.unwrap().unwrap().version, 5);

    // Once the FIFO is written, the blocked thread comes back (its
    // instance, past its deadline, is discarded) and frees the place; the
    // guest is served again by a new instance.
    fifo.release();
    served_again(&stall).await;
}

/// Pings until the blocked thread, released, has given its place back and
/// a new instance serves the guest.
async fn served_again(stall: &Stall) {
    let mut tries = 0;
    while let Err(e) = ping(stall).await {
        assert!(e.contains("found no free instance") || e.contains("time limit"), "{e}");
        tries += 1;
        assert!(tries < 100, "the released thread never gave its place back: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_call_whose_caller_went_away_is_abandoned_all_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = Fifo::new(dir.path().join("fifo"));
    let runtime = tight();
    let stall = std::sync::Arc::new(stall_storage(&runtime, dir.path(), serde_json::json!({"read": "/data/fifo"})).await);

    // The caller goes away while its call is blocked in `open` of the FIFO,
    // long before the deadline. (Its first call sizes the pool first; the
    // call is queued right after.)
    let caller = tokio::spawn({
        let stall = stall.clone();
        async move { stall.call("ping", |s, g| g.ping(s)).await }
    });
    tokio::time::timeout(TIMEOUT * 100, async {
        while stall.instances() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the pool is sized");
    tokio::time::sleep(TIMEOUT / 6).await;
    assert!(!caller.is_finished(), "the call is blocked in open(2)");
    caller.abort();

    // Nobody waits for it, yet it is abandoned at its deadline: its permit
    // is given back and the next call gets a thread of its own, instead of
    // waiting behind the blocked one for ever. It finds the guest's one
    // place still held by the blocked thread, and says so.
    let err = ping(&stall).await.expect_err("the guest's share is taken");
    assert!(err.contains("found no free instance"), "{err}");

    fifo.release();
    served_again(&stall).await;
}
