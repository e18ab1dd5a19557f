//! The documentation stays true: every configuration variable the gateway
//! reads (each `env = "STATEGATE_…"` under host/src) is described in
//! docs/configuration.md, and that page names no variable that does not
//! exist.

use crate::examples::repo;
use std::collections::BTreeSet;
use std::path::Path;

/// `STATEGATE_…` names in a text.
pub fn stategate_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("STATEGATE_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches('_');
        if name.len() > "STATEGATE_".len() {
            out.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every variable declared as `env = "STATEGATE_…"` in host/src.
pub fn config_variables() -> BTreeSet<String> {
    let mut files = vec![];
    rust_files(&repo().join("host/src"), &mut files);
    let mut vars = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("env = \"STATEGATE_") {
            let tail = &rest[i + "env = \"".len()..];
            let end = tail.find('"').unwrap();
            vars.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    vars
}

#[test]
fn every_config_variable_is_documented() {
    let vars = config_variables();
    assert!(vars.len() >= 20 && vars.contains("STATEGATE_PORT") && vars.contains("STATEGATE_TOKEN"), "{vars:?}");
    let doc = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let missing: Vec<&String> = vars.iter().filter(|v| !doc.contains(&format!("`{v}`"))).collect();
    assert!(missing.is_empty(), "docs/configuration.md does not describe {missing:?}");
    let documented = stategate_names(&doc);
    let unknown: Vec<&String> = documented.iter().filter(|v| !vars.contains(*v) && !v.starts_with("STATEGATE_TEST_")).collect();
    assert!(unknown.is_empty(), "docs/configuration.md names variables the gateway does not read: {unknown:?}");
}

#[test]
fn docs_name_only_existing_cli_subcommands() {
    let out = std::process::Command::new(crate::procs::stategate_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    for page in ["docs/quickstart.md", "docs/clients.md", "README.md"] {
        let text = std::fs::read_to_string(repo().join(page)).unwrap();
        for line in text.lines() {
            let line = line.trim_start_matches("$ ").trim();
            if let Some(rest) = line.strip_prefix("stategate ") {
                let sub = rest.split_whitespace().next().unwrap_or("");
                if sub.starts_with('-') {
                    continue;
                }
                assert!(help.contains(&format!("\n  {sub} ")), "{page}: `stategate {sub}` is not a subcommand");
            }
        }
    }
}
