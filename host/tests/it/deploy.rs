//! Compose and Kubernetes cannot run here (no Docker engine, no cluster),
//! so deploy/ is checked statically (the image itself is built and run with
//! podman by `container.rs`): the compose file against the Compose specification,
//! the Kubernetes manifests and the rendered Helm chart against the
//! Kubernetes OpenAPI schemas (kubernetes-validate, strict), the Dockerfile's
//! shape, and every STATEGATE_* variable they set against the gateway's
//! configuration. Each validator is also shown a broken file it must reject.

use crate::examples::{repo, require, succeeds};
use std::path::Path;
use std::process::Command;

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn check_jsonschema() -> Option<()> {
    require("check-jsonschema (pip)", succeeds("check-jsonschema", &["--version"]))
}

fn kubernetes_validate() -> Option<()> {
    require("kubernetes-validate (pip)", succeeds("kubernetes-validate", &["--version"]))
}

fn k8s_valid(file: &Path) -> (bool, String) {
    output(Command::new("kubernetes-validate").args(["--strict", "--kubernetes-version", "1.30.0"]).arg(file))
}

/// Every `STATEGATE_*` name in `text` is a variable the gateway reads.
fn only_known_variables(what: &str, text: &str) {
    let known = crate::docs::config_variables();
    for var in crate::docs::stategate_names(text) {
        assert!(known.contains(&var), "{what} sets {var}, which the gateway does not read");
    }
}

/// The provider JSON values a file sets are accepted by the gateway's parser.
fn providers_parse(what: &str, text: &str) {
    let mut n = 0;
    for line in text.lines() {
        for var in ["STATEGATE_STORAGE_PROVIDER", "STATEGATE_CHANNEL_PROVIDER"] {
            if let Some(rest) = line.trim().strip_prefix(&format!("{var}: ")) {
                let rest = rest.trim();
                // 'single-quoted' (YAML as written) or "double-quoted" (rendered).
                let value = if rest.starts_with('"') {
                    serde_json::from_str::<String>(rest).unwrap_or_else(|e| panic!("{what}: {rest}: {e}"))
                } else {
                    rest.trim_matches('\'').to_owned()
                };
                let value = value.as_str();
                let parsed = if var == "STATEGATE_STORAGE_PROVIDER" {
                    stategate::storage::StorageSpec::parse(value).map(drop)
                } else {
                    stategate::channel::ChannelSpec::parse(value).map(drop)
                };
                parsed.unwrap_or_else(|e| panic!("{what}: {e}"));
                n += 1;
            }
        }
    }
    assert!(n >= 2, "{what} sets both providers");
}

#[test]
fn compose_file_follows_the_compose_spec() {
    if check_jsonschema().is_none() {
        return;
    }
    let file = repo().join("deploy/docker-compose.yml");
    let (ok, out) = output(Command::new("check-jsonschema").args(["--builtin-schema", "vendor.compose-spec"]).arg(&file));
    assert!(ok, "{out}");
    let text = read("deploy/docker-compose.yml");
    for service in ["stategate-1:", "stategate-2:", "redis:", "mongo:"] {
        assert!(text.contains(&format!("\n  {service}")), "compose has service {service}");
    }
    assert!(text.contains("dockerfile: deploy/Dockerfile"));
    only_known_variables("docker-compose.yml", &text);
    providers_parse("docker-compose.yml", &text);
    // Authentication is on, with a key source and a request policy (no open
    // API); the API is published on the host's loopback only, and the ops
    // port not at all.
    assert!(!text.contains("STATEGATE_AUTH_DISABLED") && !text.contains("STATEGATE_DEV"), "auth stays on");
    assert!(text.contains("STATEGATE_JWT_HMAC_SECRET_FILE:") && text.contains("STATEGATE_REQUEST_POLICY_PATH:"));
    let published: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("- \"") && l.contains(':')).collect();
    assert!(!published.is_empty());
    for line in &published {
        assert!(line.contains("\"127.0.0.1:"), "published beyond loopback: {line}");
        assert!(!line.contains(":8081\""), "the ops port is published: {line}");
    }

    // The validator rejects a malformed file.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("compose.yml");
    let broken = text.replace("    ports:\n      - \"127.0.0.1:8080:8080\"", "    ports: 8080");
    assert_ne!(broken, text);
    std::fs::write(&bad, broken).unwrap();
    let (ok, _) = output(Command::new("check-jsonschema").args(["--builtin-schema", "vendor.compose-spec"]).arg(&bad));
    assert!(!ok, "a scalar `ports` must be rejected");
}

#[test]
fn kubernetes_manifests_validate() {
    if kubernetes_validate().is_none() {
        return;
    }
    let file = repo().join("deploy/kubernetes/stategate.yaml");
    let (ok, out) = k8s_valid(&file);
    assert!(ok, "{out}");
    for kind in ["configmap/stategate", "deployment/stategate", "service/stategate", "horizontalpodautoscaler/stategate"] {
        assert!(out.contains(&format!("passed for resource {kind}")), "{kind} validated:\n{out}");
    }
    let text = read("deploy/kubernetes/stategate.yaml");
    check_pod_spec("stategate.yaml", &text);
    assert!(text.contains("- name: STATEGATE_OPS_TOKEN\n              valueFrom:\n                secretKeyRef:"), "an optional ops token");
    only_known_variables("stategate.yaml", &text);
    providers_parse("stategate.yaml", &text);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, text.replace("containerPort: 8081", "containerPrt: 8081")).unwrap();
    let (ok, out) = k8s_valid(&bad);
    assert!(!ok, "a misspelt field must be rejected:\n{out}");
}

/// Probes on the ops port's /readyz and /healthz, which listens on the
/// pod's address (loopback would hide it from the kubelet) but is not
/// routed by the Service; non-root; an HPA target.
fn check_pod_spec(what: &str, text: &str) {
    let bind = ["STATEGATE_OPS_BIND: \"0.0.0.0\"", "- name: STATEGATE_OPS_BIND\n              value: \"0.0.0.0\""];
    assert!(bind.iter().any(|b| text.contains(b)), "{what}: the ops port listens on the pod's address");
    let service = &text[text.find("kind: Service").expect("a Service")..];
    let service = &service[..service.find("\n---").unwrap_or(service.len())];
    assert!(!service.contains("targetPort: ops"), "{what}: the Service routes to the ops port:\n{service}");
    for needle in [
        "readinessProbe:\n            httpGet:\n              path: /readyz\n              port: ops",
        "livenessProbe:\n            httpGet:\n              path: /healthz\n              port: ops",
        "runAsNonRoot: true",
        "name: ops\n",
    ] {
        assert!(text.contains(needle), "{what} lacks {needle:?}");
    }
    assert!(text.contains("containerPort: 8081"), "{what}: the ops port is 8081 (port+1)");
}

fn render_chart(sets: &[&str]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("deploy/helm/render.py")).arg(repo().join("deploy/helm/stategate")).args(["--name", "demo"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let (ok, out) = output(&mut cmd);
    assert!(ok, "rendering the chart: {out}");
    out
}

#[test]
fn helm_chart_renders_to_valid_manifests() {
    if kubernetes_validate().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rendered = render_chart(&[]);
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let (ok, out) = k8s_valid(&file);
    assert!(ok, "{out}\n{rendered}");
    for kind in ["configmap", "deployment", "service", "horizontalpodautoscaler"] {
        assert!(out.contains(&format!("passed for resource {kind}/demo-stategate")), "{kind}:\n{out}");
    }
    check_pod_spec("the rendered chart", &rendered);
    only_known_variables("the chart", &rendered);
    providers_parse("the chart", &rendered);

    assert!(!rendered.contains("STATEGATE_OPS_TOKEN"), "no ops token unless a Secret is named");

    // Values change the output; autoscaling can be turned off; a Secret
    // can guard the ops port.
    let custom = render_chart(&["autoscaling.enabled=false", "replicaCount=5", "image.tag=9.9.9", "ops.tokenSecret=gw-ops"]);
    assert!(custom.contains("- name: STATEGATE_OPS_TOKEN\n              valueFrom:\n                secretKeyRef:\n                  name: \"gw-ops\""), "{custom}");
    assert!(!custom.contains("HorizontalPodAutoscaler"));
    assert!(custom.contains("replicas: 5") && custom.contains("image: \"stategate:9.9.9\""));
    std::fs::write(&file, &custom).unwrap();
    let (ok, out) = k8s_valid(&file);
    assert!(ok, "{out}");

    // Chart and image versions follow the crate's.
    let chart = read("deploy/helm/stategate/Chart.yaml");
    let version = env!("CARGO_PKG_VERSION");
    assert!(chart.contains(&format!("appVersion: \"{version}\"")), "Chart.yaml appVersion is {version}");
    assert!(read("deploy/helm/stategate/values.yaml").contains(&format!("tag: \"{version}\"")));
    // An unsupported template construct is an error, not a silent mis-render.
    let bad = dir.path().join("chart");
    std::fs::create_dir_all(bad.join("templates")).unwrap();
    std::fs::copy(repo().join("deploy/helm/stategate/Chart.yaml"), bad.join("Chart.yaml")).unwrap();
    std::fs::write(bad.join("values.yaml"), "a: 1\n").unwrap();
    std::fs::write(bad.join("templates/x.yaml"), "x: {{ include \"y\" . }}\n").unwrap();
    let (ok, out) = output(Command::new("python3").arg(repo().join("deploy/helm/render.py")).arg(&bad));
    assert!(!ok && out.contains("unsupported"), "{out}");
}

#[test]
fn dockerfile_is_multi_stage_small_and_non_root() {
    let text = read("deploy/Dockerfile");
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(stages[0].contains("rust:") && stages[0].contains(" AS build"), "{stages:?}");
    let runtime = stages.last().unwrap();
    assert!(runtime.contains("distroless") || runtime.contains("slim"), "a small runtime base: {runtime}");
    // The runtime stage runs as a non-root user.
    let last = &text[text.rfind("\nFROM ").unwrap()..];
    let user = last.lines().find_map(|l| l.strip_prefix("USER ")).expect("the runtime stage sets USER");
    assert!(!user.starts_with("root") && !user.starts_with("0"), "USER {user}");
    assert!(last.contains("COPY --from=build"), "the runtime copies only the build output");
    assert!(last.contains("ENTRYPOINT [\"/usr/local/bin/stategate\"]"));
    let exposed: Vec<&str> = last.lines().filter(|l| l.starts_with("EXPOSE ")).collect();
    assert!(exposed.iter().all(|l| !l.contains("8081")), "the ops port (loopback in the image) is not exposed: {exposed:?}");
    assert!(last.contains("\"stategate\", \"health\"") || last.contains("stategate\", \"health\""), "HEALTHCHECK uses `stategate health`");
    // Everything the build stage copies exists.
    for line in text.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(repo().join(src).exists(), "Dockerfile copies {src}, which does not exist");
        }
    }
    // The workspace members are all copied (the build would fail otherwise).
    let cargo = read("Cargo.toml");
    let members = cargo.lines().find(|l| l.starts_with("members")).unwrap();
    for m in members.split('"').skip(1).step_by(2) {
        assert!(text.contains(&format!("COPY {m} ./{m}")), "Dockerfile copies workspace member {m}");
    }
    // So are the crates `[patch]` points at (vendor/…).
    for line in cargo.lines().filter(|l| l.contains("path = \"")) {
        let path = line.split("path = \"").nth(1).and_then(|r| r.split('"').next()).unwrap();
        let top = path.split('/').next().unwrap();
        assert!(text.contains(&format!("COPY {top} ./{top}")), "Dockerfile copies {top}/ for the patched crate at {path}");
    }
    only_known_variables("Dockerfile", &text);
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target"), ".dockerignore keeps target/ out of the context");
}

/// Deny by default (issue 20): every deployment ships a request policy, the
/// tested example `read_only_role.rego`, so turning authentication on does
/// not leave it refusing everything or, worse, tempt an allow-all.
#[test]
fn every_deployment_ships_a_request_policy() {
    use base64::Engine;
    let policy = read("examples/policies/read_only_role.rego");
    let compose = read("deploy/docker-compose.yml");
    assert!(compose.contains("STATEGATE_REQUEST_POLICY_PATH: /etc/stategate/policies/read_only_role.rego"), "compose");
    assert!(compose.contains("- ../examples/policies:/etc/stategate/policies:ro"), "compose mounts the examples");
    let k8s = read("deploy/kubernetes/stategate.yaml");
    assert!(k8s.contains("STATEGATE_REQUEST_POLICY_PATH: /etc/stategate/policies/request.rego"));
    let indented: String = policy.lines().map(|l| if l.is_empty() { "\n".to_owned() } else { format!("    {l}\n") }).collect();
    assert!(k8s.contains(&format!("  request.rego: |\n{indented}")), "the manifest's policy is the example");
    assert!(k8s.contains("mountPath: /etc/stategate/policies"));
    if !crate::procs::have("python3") {
        return;
    }
    let rendered = render_chart(&[]);
    let line = rendered.lines().find(|l| l.trim_start().starts_with("STATEGATE_REQUEST_POLICY: ")).expect("the chart sets a request policy");
    let value: String = serde_json::from_str(line.trim_start().trim_start_matches("STATEGATE_REQUEST_POLICY: ")).unwrap();
    let decoded = base64::engine::general_purpose::STANDARD.decode(value).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), policy, "the chart's default request policy is the example");
    only_known_variables("the chart", &rendered);
}

/// The compose demo's way in: `deploy/mint-token.py` signs tokens that a
/// gateway configured as the compose file configures it (HMAC secret file,
/// the read-only-role policy) accepts, each role getting what the policy
/// gives it.
#[tokio::test]
async fn compose_demo_tokens_work_with_its_policy() {
    if !crate::procs::have("python3") {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt-hmac-secret");
    std::fs::write(&secret, "5f0c6a8d2b4e4f1a9c3d7e6b8a1f2c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b\n").unwrap();
    let mint = |role: &str| {
        let out = Command::new("python3").arg(repo().join("deploy/mint-token.py")).arg(&secret).arg(role).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let gw = crate::harness::TestGateway::start_with(|c| {
        c.dev = false;
        c.bind = "127.0.0.1".into();
        c.auth.jwt_hmac_secret_file = Some(secret.clone());
        c.auth.request_policy_path = vec![repo().join("examples/policies/read_only_role.rego")];
    })
    .await;
    let url = format!("{}/api/state/ref/compose/user/alice", gw.url());
    let set = |token: String| crate::harness::http().post(&url).bearer_auth(token).json(&serde_json::json!({"values": {"n": 1}})).send();
    assert_eq!(set(mint("writer")).await.unwrap().status().as_u16(), 200);
    assert_eq!(set(mint("reader")).await.unwrap().status().as_u16(), 403);
    let read = crate::harness::http().get(&url).bearer_auth(mint("reader")).send().await.unwrap();
    assert_eq!(read.status().as_u16(), 200);
    assert_eq!(crate::harness::http().get(&url).send().await.unwrap().status().as_u16(), 401);
    gw.stop().await;
}
