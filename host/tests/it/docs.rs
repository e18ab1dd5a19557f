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

/// `--flag` names in a piece of text (a value after `=` dropped).
fn flags_in(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '`' || c == '|' || c == ',' || c == '(' || c == ')')
        .filter_map(|t| t.strip_prefix("--"))
        .map(|t| t.split('=').next().unwrap_or_default())
        .filter(|t| t.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && t.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        .map(|t| format!("--{t}"))
        .collect()
}

/// Every flag the binary takes: the `--help` of `stategate` and of each
/// subcommand, however deep.
fn binary_flags() -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = todo.pop() {
        let out = std::process::Command::new(crate::procs::stategate_bin()).args(&path).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success() && help.contains("Usage:"), "stategate {path:?} --help: {help}");
        flags.extend(flags_in(&help));
        let commands = help.split("\nCommands:\n").nth(1).unwrap_or("");
        for line in commands.lines().take_while(|l| !l.trim().is_empty()) {
            let name = line.split_whitespace().next().unwrap_or("");
            if name != "help" {
                todo.push(path.iter().cloned().chain([name.to_owned()]).collect());
            }
        }
    }
    flags
}

/// The flags a page documents for `stategate`: those of a command line
/// that runs it (in a code block or an inline code span; `cargo run --
/// ARGS` of the gateway too), of a table row that describes a `STATEGATE_`
/// variable, and every flag in an inline code span of the configuration
/// page. Other tools' flags (curl, cargo, the benchmark) are not its own.
fn documented_flags(page: &str, text: &str) -> Vec<(usize, String)> {
    let mut found = vec![];
    let mut in_block = false;
    let mut joined = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        if raw.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            // A command continued with `\` is one line.
            joined.push_str(raw.trim_end().trim_end_matches('\\'));
            joined.push(' ');
            if raw.trim_end().ends_with('\\') {
                continue;
            }
            let line = std::mem::take(&mut joined);
            found.extend(command_flags(&line).into_iter().map(|f| (line_no, f)));
            continue;
        }
        let cells: Vec<&str> = raw.split('|').map(str::trim).collect();
        if raw.trim_start().starts_with('|') && cells.iter().any(|c| c.starts_with("`STATEGATE_")) {
            found.extend(flags_in(raw).into_iter().map(|f| (line_no, f)));
            continue;
        }
        for (n, span) in raw.split('`').enumerate() {
            if n % 2 == 1 {
                if span.starts_with("stategate ") || span.starts_with("cargo run") {
                    found.extend(command_flags(span).into_iter().map(|f| (line_no, f)));
                } else if page == "docs/configuration.md" && span.starts_with("--") {
                    found.extend(flags_in(span).into_iter().map(|f| (line_no, f)));
                }
            }
        }
    }
    found
}

/// The flags given to `stategate` on a shell line: each command of it
/// (split at `|`, `&`, `;`, up to a `#` comment) that runs `stategate`, or
/// `cargo run` of the gateway (what follows `--`).
fn command_flags(line: &str) -> Vec<String> {
    let line = line.trim().trim_start_matches("$ ");
    let line = line.split(" # ").next().unwrap_or("");
    let mut flags = vec![];
    for command in line.split(['|', '&', ';']) {
        let words: Vec<&str> = command.split_whitespace().skip_while(|w| w.contains('=') && !w.starts_with('-')).collect();
        let args: &[&str] = match words.as_slice() {
            [first, rest @ ..] if *first == "stategate" || first.ends_with("/stategate") => rest,
            ["cargo", "run", rest @ ..] if !rest.iter().any(|w| ["-p", "--package", "--example", "--bin"].contains(w)) => {
                match rest.iter().position(|w| *w == "--") {
                    Some(i) => &rest[i + 1..],
                    None => &[],
                }
            }
            _ => &[],
        };
        flags.extend(args.iter().flat_map(|a| flags_in(a)));
    }
    flags
}

#[test]
fn documented_flags_exist() {
    let flags = binary_flags();
    assert!(flags.contains("--jwt-hmac-secret") && flags.contains("--to-version") && flags.contains("--dry-run"), "{flags:?}");
    let mut pages: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    pages.push("README.md".into());
    let mut unknown = vec![];
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(repo().join(page)).unwrap();
        for (line, flag) in documented_flags(page, &text) {
            checked += 1;
            if !flags.contains(&flag) {
                unknown.push(format!("{page}:{line}: {flag}"));
            }
        }
    }
    assert!(checked > 50, "only {checked} documented flags found: the scan is broken");
    assert!(unknown.is_empty(), "documented flags that `stategate … --help` does not list:\n{}", unknown.join("\n"));
}

#[test]
fn the_flag_scan_reads_commands_tables_and_spans() {
    let text = "\
| `STATEGATE_X` | `--x-flag` | 1 | a |
| `--from URL` | v0.5.0's MongoDB |
```sh
stategate set a b c '{}' --expected-version 1 | jq . # --comment
curl -X POST --data-urlencode x=1
cargo run --release -- --dev \\
  --port 9
cargo run -p stategate-bench -- --secs 1
```
Use `stategate get --json` or `--timeout 3`.
";
    let flags = |page| documented_flags(page, text).into_iter().map(|(_, f)| f).collect::<Vec<_>>();
    // Any page: variable rows and command lines; the configuration page
    // (all about the binary's options): every flag in a code span too.
    assert_eq!(flags("docs/clients.md"), ["--x-flag", "--expected-version", "--dev", "--port", "--json"]);
    assert_eq!(flags("docs/configuration.md"), ["--x-flag", "--from", "--expected-version", "--dev", "--port", "--json", "--timeout"]);
}
