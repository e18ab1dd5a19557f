//! `stategate guest new` + the build command it prints + `stategate guest
//! check` on the result, for each world in Rust, Python and JavaScript: the project builds as
//! written, the component implements its world, and its sample calls
//! answer. And `guest check` on the repository's own guests and on files
//! that are no guest.

use crate::wasm_support::guest;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn stategate(args: &[&str]) -> Output {
    Command::new(crate::procs::stategate_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("stategate runs")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure; stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value of the `label:` line of `guest new`'s output.
fn line<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines().find_map(|l| l.strip_prefix(label)).unwrap_or_else(|| panic!("no {label:?} line in:\n{out}")).trim()
}

/// Where the generated projects build: kept next to the built guests, so
/// their dependencies (wit-bindgen) compile once, not once per run.
fn build_target() -> PathBuf {
    crate::wasm_support::cache_dir().parent().unwrap().join("guest-new-target")
}

/// `guest new`, then exactly the build command it printed (with a shared
/// CARGO_TARGET_DIR), then `guest check` on the component; returns the
/// check's output.
fn new_build_check(world: &str, dir: &Path) -> String {
    let out = ok(stategate(&["guest", "new", "--world", world, "--lang", "rust", dir.to_str().unwrap()]));
    let build = line(&out, "build:");
    let built = Command::new("sh").args(["-c", build]).env("CARGO_TARGET_DIR", build_target()).output().unwrap();
    assert!(built.status.success(), "{build}:\n{}", String::from_utf8_lossy(&built.stderr));
    let file = dir.file_name().unwrap().to_str().unwrap().replace('-', "_");
    let wasm = build_target().join("wasm32-wasip2/release").join(format!("{file}.wasm"));
    assert!(wasm.is_file(), "{} was not built by {build}", wasm.display());
    let printed = PathBuf::from(line(&out, "output:").split_whitespace().next().unwrap());
    assert!(printed.ends_with(format!("target/wasm32-wasip2/release/{file}.wasm")), "{out}");
    ok(stategate(&["guest", "check", wasm.to_str().unwrap()]))
}

#[test]
fn new_rust_guests_build_and_pass_check() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = new_build_check("policy-hook", &tmp.path().join("sg-new-policy"));
    assert!(policy.contains("world      policy-hook (stategate:gateway@0.3.0)"), "{policy}");
    assert!(policy.contains("export     stategate:gateway/policy@0.3.0: authorize-request, authorize-response"), "{policy}");
    assert!(policy.contains("authorize-request -> Decision::Allow"), "{policy}");
    assert!(policy.contains("authorize-response -> ResponseDecision::Allow"), "{policy}");

    let channel = new_build_check("channel-provider", &tmp.path().join("sg-new-channel"));
    assert!(channel.contains("world      channel-provider (stategate:gateway@0.3.0)"), "{channel}");
    assert!(channel.contains("call       poll -> the event back"), "{channel}");

    let storage = new_build_check("storage-provider", &tmp.path().join("sg-new-storage"));
    assert!(storage.contains("world      storage-provider (stategate:gateway@0.3.0)"), "{storage}");
    assert!(storage.contains("get guest-check/sample/k1 -> version 1"), "{storage}");
    assert!(storage.contains("get guest-check/sample/k1 at seq 1 -> version 1"), "{storage}");
    for out in [&policy, &channel, &storage] {
        assert!(out.trim_end().ends_with("ok"), "{out}");
    }

    // The directory now holds a project: nothing is overwritten.
    let again = failed(stategate(&["guest", "new", "--world", "policy-hook", tmp.path().join("sg-new-policy").to_str().unwrap()]));
    assert!(again.contains("not empty"), "{again}");
}

/// The same in Python (componentize-py) or JavaScript (componentize-js):
/// the printed command builds the component where `output:` says.
fn new_build_check_other(lang: &str, world: &str, dir: &Path) -> String {
    let out = ok(stategate(&["guest", "new", "--world", world, "--lang", lang, dir.to_str().unwrap()]));
    let build = line(&out, "build:");
    let built = Command::new("sh").args(["-c", build]).output().unwrap();
    assert!(built.status.success(), "{build}:\n{}", String::from_utf8_lossy(&built.stderr));
    let wasm = line(&out, "output:");
    assert!(Path::new(wasm).is_file(), "{wasm} was not built by {build}");
    ok(stategate(&["guest", "check", wasm]))
}

#[test]
fn new_python_guests_build_and_pass_check() {
    if !crate::procs::have("componentize-py") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let policy = new_build_check_other("python", "policy-hook", &tmp.path().join("py-policy"));
    assert!(policy.contains("world      policy-hook (stategate:gateway@0.3.0)"), "{policy}");
    assert!(policy.contains("authorize-request -> Decision::Allow"), "{policy}");
    let channel = new_build_check_other("python", "channel-provider", &tmp.path().join("py-channel"));
    assert!(channel.contains("call       poll -> the event back"), "{channel}");
    let storage = new_build_check_other("python", "storage-provider", &tmp.path().join("py-storage"));
    assert!(storage.contains("get guest-check/sample/k1 -> version 1"), "{storage}");
    assert!(storage.contains("get guest-check/sample/k1 at seq 1 -> version 1"), "{storage}");
    for out in [&policy, &channel, &storage] {
        assert!(out.trim_end().ends_with("ok"), "{out}");
    }
}

#[test]
fn new_js_guests_build_and_pass_check() {
    if !crate::procs::have("npm") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let policy = new_build_check_other("js", "policy-hook", &tmp.path().join("js-policy"));
    assert!(policy.contains("world      policy-hook (stategate:gateway@0.3.0)"), "{policy}");
    assert!(policy.contains("authorize-request -> Decision::Allow"), "{policy}");
    let channel = new_build_check_other("js", "channel-provider", &tmp.path().join("js-channel"));
    assert!(channel.contains("call       poll -> the event back"), "{channel}");
    let storage = new_build_check_other("js", "storage-provider", &tmp.path().join("js-storage"));
    assert!(storage.contains("get guest-check/sample/k1 -> version 1"), "{storage}");
    assert!(storage.contains("get guest-check/sample/k1 at seq 1 -> version 1"), "{storage}");
    for out in [&policy, &channel, &storage] {
        assert!(out.trim_end().ends_with("ok"), "{out}");
    }
}

#[test]
fn check_names_the_world_and_version_of_existing_guests() {
    let out = ok(stategate(&["guest", "check", guest("fs_storage").to_str().unwrap()]));
    assert!(out.contains("world      storage-provider (stategate:gateway@0.3.0)"), "{out}");
    assert!(out.contains("grants     dir = "), "a temporary directory is granted: {out}");
    let out = ok(stategate(&["guest", "check", guest("redact_0_1_0").to_str().unwrap(), "--config", r#"{"fields":"hello"}"#]));
    assert!(out.contains("world      policy-hook (stategate:gateway@0.1.0)"), "{out}");
    assert!(out.contains(r#"authorize-response -> ResponseDecision::Redact(["hello"])"#), "{out}");
    let out = ok(stategate(&["guest", "check", guest("webhook").to_str().unwrap(), "--config", r#"{"url":"http://127.0.0.1:1/x"}"#, "--grants", r#"{"http":["127.0.0.1:1"]}"#]));
    assert!(out.contains("world      policy-hook-http"), "{out}");
}

#[test]
fn check_refuses_what_is_no_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("x.wasm");
    std::fs::write(&text, "not wasm").unwrap();
    let e = failed(stategate(&["guest", "check", text.to_str().unwrap()]));
    assert!(e.contains("is not a WebAssembly component"), "{e}");
    let e = failed(stategate(&["guest", "check", tmp.path().join("missing.wasm").to_str().unwrap()]));
    assert!(e.contains("missing.wasm"), "{e}");
    let e = failed(stategate(&["guest", "check", guest("fs_storage").to_str().unwrap(), "--config", "[1]"]));
    assert!(e.contains("--config must be a JSON object"), "{e}");
}
