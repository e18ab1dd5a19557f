//! The container image runs: deploy/Dockerfile's runtime stage (its user,
//! environment, volume, entry point and command, taken from the file as
//! written) is built with podman around the binary under test and a Debian
//! base made by debootstrap (no registry image can be pulled here), then
//! started, and the gateway inside answers `stategate health`, a write and
//! a read, and keeps its sqlite file in the `/data` volume.
//!
//! The build stage (cargo in the `rust` image) is not run: it would need
//! that image, and a second release build. Skipped, with the reason
//! printed, without podman or without a base (debootstrap, or a root file
//! system tarball in `STATEGATE_TEST_CONTAINER_ROOTFS`).

use crate::examples::repo;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// podman with settings any host accepts, including this sandbox: its own
/// storage under `root` (vfs needs no overlay support), cgroupfs, host
/// network, runc when installed (crun refuses hybrid cgroup hierarchies),
/// and no default ulimits (raising them is not allowed in a container).
fn podman(root: &Path) -> Command {
    let conf = root.join("containers.conf");
    if !conf.exists() {
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    }
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", &conf)
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
    if crate::examples::succeeds("runc", &["--version"]) {
        cmd.args(["--runtime", "runc"]);
    }
    cmd
}

fn checked(cmd: &mut Command) -> String {
    let out: Output = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// A Debian bookworm root file system as a tarball: the one the variable
/// names, else one made once by debootstrap and kept in the target dir.
fn base_rootfs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STATEGATE_TEST_CONTAINER_ROOTFS") {
        return Some(p.into());
    }
    let tar = Path::new(env!("CARGO_TARGET_TMPDIR")).join("container-base-bookworm.tar");
    if tar.exists() {
        return Some(tar);
    }
    if !crate::examples::succeeds("debootstrap", &["--version"]) {
        eprintln!("SKIPPED: no container base: install debootstrap or set STATEGATE_TEST_CONTAINER_ROOTFS to a root file system tarball");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    checked(Command::new("debootstrap").args(["--variant=minbase", "bookworm"]).arg(&root));
    let partial = tar.with_extension("partial");
    checked(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&partial).arg("."));
    std::fs::rename(&partial, &tar).unwrap();
    Some(tar)
}

/// The runtime stage of deploy/Dockerfile with its base swapped for
/// `base` and the binary taken from the build context instead of the
/// build stage.
fn runtime_stage(dockerfile: &str, base: &str) -> String {
    let start = dockerfile.find("\nFROM gcr.io/distroless/").expect("the runtime stage starts FROM distroless");
    let stage = &dockerfile[start + 1..];
    let mut out = vec![];
    for line in stage.lines() {
        out.push(if line.starts_with("FROM ") {
            format!("FROM {base}")
        } else if line.starts_with("COPY --from=build /out/stategate ") {
            "COPY stategate /usr/local/bin/stategate".to_owned()
        } else if line.starts_with("COPY --from=build --chown=65532:65532 /out/data ") {
            "COPY --chown=65532:65532 data /data".to_owned()
        } else {
            assert!(!line.contains("--from="), "a runtime line this test does not know: {line}");
            line.to_owned()
        });
    }
    out.join("\n") + "\n"
}

#[test]
fn the_image_builds_runs_and_serves() {
    if !crate::examples::succeeds("podman", &["--version"]) {
        eprintln!("SKIPPED: podman is not installed (apt-get install podman runc debootstrap)");
        return;
    }
    let Some(rootfs) = base_rootfs() else { return };
    let root = tempfile::tempdir().unwrap();
    let imported = checked(podman(root.path()).args(["import"]).arg(&rootfs).arg("localhost/stategate-test-base:bookworm"));
    assert!(!imported.trim().is_empty());

    let context = tempfile::tempdir().unwrap();
    std::fs::copy(crate::procs::stategate_bin(), context.path().join("stategate")).unwrap();
    std::fs::create_dir(context.path().join("data")).unwrap();
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    std::fs::write(context.path().join("Containerfile"), runtime_stage(&dockerfile, "localhost/stategate-test-base:bookworm")).unwrap();
    checked(
        podman(root.path())
            .args(["build", "--format", "docker", "--isolation", "chroot", "--network", "host", "-t", "localhost/stategate:test"])
            .arg(context.path()),
    );
    let config = checked(podman(root.path()).args(["image", "inspect", "--format", "{{.Config.User}} {{.Config.Entrypoint}} {{.Config.Cmd}}", "localhost/stategate:test"]));
    assert_eq!(config.trim(), "65532:65532 [/usr/local/bin/stategate] [serve]");

    // The image's own command (`serve`), in development mode on a free
    // port of the host's loopback.
    let port = crate::procs::free_port();
    let name = format!("stategate-test-{port}");
    checked(
        podman(root.path())
            .args(["run", "-d", "--name", &name, "--network", "host", "-e", &format!("STATEGATE_PORT={port}"), "-e", "STATEGATE_OPS_PORT=0", "-e", "STATEGATE_DEV=true"])
            .arg("localhost/stategate:test"),
    );
    let addr = format!("127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(crate::procs::stategate_bin());
        cmd.args(args).args(["--addr", &addr]).env_remove("STATEGATE_TOKEN");
        cmd
    };
    let mut served = false;
    for _ in 0..300 {
        if cli(&["health"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            served = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let logs = checked(podman(root.path()).args(["logs", &name]).stderr(Stdio::piped()));
    assert!(served, "the container never served; its log:\n{logs}");
    checked(&mut cli(&["set", "container", "t", "k", r#"{"n":1}"#]));
    let got = checked(&mut cli(&["get", "container", "t", "k", "--json"]));
    assert!(got.contains(r#""values":{"n":1}"#), "{got}");
    // The health check the image declares works inside the container, and
    // the events are in the volume, written by the unprivileged user.
    checked(podman(root.path()).args(["exec", &name, "/usr/local/bin/stategate", "health", "--addr", &addr, "--timeout", "2"]));
    let data = checked(podman(root.path()).args(["exec", &name, "ls", "-ln", "/data"]));
    assert!(data.lines().any(|l| l.contains(" 65532 65532 ") && l.ends_with("stategate.db")), "/data holds the database:\n{data}");
    checked(podman(root.path()).args(["rm", "-f", "-t", "2", &name]));
    // vfs layers are plain copies owned by root: remove them through podman.
    let _ = podman(root.path()).args(["system", "reset", "--force"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

#[test]
fn the_runtime_stage_is_taken_from_the_dockerfile() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let stage = runtime_stage(&dockerfile, "base:1");
    assert!(stage.starts_with("FROM base:1\nCOPY stategate /usr/local/bin/stategate\n"), "{stage}");
    for kept in ["USER 65532:65532", "VOLUME [\"/data\"]", "HEALTHCHECK", "ENTRYPOINT [\"/usr/local/bin/stategate\"]", "CMD [\"serve\"]"] {
        assert!(stage.contains(kept), "{kept}: {stage}");
    }
}
