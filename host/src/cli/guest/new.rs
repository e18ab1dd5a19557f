//! `stategate guest new`: writes a guest project (Rust: cargo and
//! wit-bindgen; Python: componentize-py; JavaScript: componentize-js from
//! npm) that builds as it is, from
//! templates compiled into the binary, with a copy of the WIT
//! contract (`wit/`, including the WASI packages the `-http` worlds use) so
//! the project does not depend on this repository.
//!
//! Invariants: nothing is overwritten (an existing non-empty directory is
//! refused); the printed build command is the one the test runs.

use super::{Lang, WorldName};
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};

/// The WIT contract, as the gateway was built against it.
const WIT: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../../../wit/types.wit")),
    ("storage.wit", include_str!("../../../../wit/storage.wit")),
    ("channel.wit", include_str!("../../../../wit/channel.wit")),
    ("policy.wit", include_str!("../../../../wit/policy.wit")),
    ("worlds.wit", include_str!("../../../../wit/worlds.wit")),
    ("deps/cli.wit", include_str!("../../../../wit/deps/cli.wit")),
    ("deps/clocks.wit", include_str!("../../../../wit/deps/clocks.wit")),
    ("deps/filesystem.wit", include_str!("../../../../wit/deps/filesystem.wit")),
    ("deps/http.wit", include_str!("../../../../wit/deps/http.wit")),
    ("deps/io.wit", include_str!("../../../../wit/deps/io.wit")),
    ("deps/random.wit", include_str!("../../../../wit/deps/random.wit")),
    ("deps/sockets.wit", include_str!("../../../../wit/deps/sockets.wit")),
];

const RUST_CARGO: &str = include_str!("templates/rust/Cargo.toml.in");
const RUST_POLICY: &str = include_str!("templates/rust/policy.rs");
const RUST_CHANNEL: &str = include_str!("templates/rust/channel.rs");
const RUST_STORAGE: &str = include_str!("templates/rust/storage.rs");
const PYTHON_POLICY: &str = include_str!("templates/python/policy.py");
const PYTHON_CHANNEL: &str = include_str!("templates/python/channel.py");
const PYTHON_STORAGE: &str = include_str!("templates/python/storage.py");
const JS_PACKAGE: &str = include_str!("templates/js/package.json.in");
const JS_POLICY: &str = include_str!("templates/js/policy.js");
const JS_CHANNEL: &str = include_str!("templates/js/channel.js");
const JS_STORAGE: &str = include_str!("templates/js/storage.js");

/// What `guest new` wrote and how to build it.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub dir: PathBuf,
    /// The shell command that builds the component (run from anywhere).
    pub build: String,
    /// Where the build puts the component (without `CARGO_TARGET_DIR`).
    pub output: PathBuf,
}

/// A package name from the directory's name: lower case, `[a-z0-9_-]`,
/// starting with a letter.
fn package_name(dir: &Path) -> Result<String> {
    let stem = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: the directory needs a name", dir.display()))?;
    let name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        bail!("{stem:?}: the directory's name is the package name and must start with a letter");
    }
    Ok(name)
}

/// Writes the project into `dir` (created; it must not exist or be empty).
pub fn write(dir: &Path, world: WorldName, lang: Lang) -> Result<Project> {
    if dir.exists() && std::fs::read_dir(dir).with_context(|| dir.display().to_string())?.next().is_some() {
        bail!("{} exists and is not empty: nothing was written", dir.display());
    }
    let name = package_name(dir)?;
    let file = name.replace('-', "_");
    let pick = |policy, storage, channel| match world {
        WorldName::PolicyHook => policy,
        WorldName::StorageProvider => storage,
        WorldName::ChannelProvider => channel,
    };
    let mut files: Vec<(String, String)> = WIT.iter().map(|(p, text)| (format!("wit/{p}"), text.to_string())).collect();
    let (build, output) = match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), RUST_CARGO.replace("{name}", &name).replace("{world}", world.as_str())));
            files.push(("src/lib.rs".into(), pick(RUST_POLICY, RUST_STORAGE, RUST_CHANNEL).into()));
            (
                format!("cargo build --manifest-path {} --target wasm32-wasip2 --release", shell_quote(&dir.join("Cargo.toml"))),
                dir.join("target/wasm32-wasip2/release").join(format!("{file}.wasm")),
            )
        }
        Lang::Python => {
            files.push(("app.py".into(), pick(PYTHON_POLICY, PYTHON_STORAGE, PYTHON_CHANNEL).into()));
            (
                format!("cd {} && componentize-py -d wit -w {} componentize app -o {file}.wasm", shell_quote(dir), world.as_str()),
                dir.join(format!("{file}.wasm")),
            )
        }
        Lang::Js => {
            let package = JS_PACKAGE.replace("{name}", &name).replace("{world}", world.as_str()).replace("{file}", &file);
            files.push(("package.json".into(), package));
            files.push(("guest.js".into(), pick(JS_POLICY, JS_STORAGE, JS_CHANNEL).into()));
            (
                format!("cd {} && npm install --no-audit --no-fund && npm run build", shell_quote(dir)),
                dir.join(format!("{file}.wasm")),
            )
        }
    };
    files.push(("README.md".into(), readme(&name, world, &build, &output)));
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file under dir")).with_context(|| path.display().to_string())?;
        std::fs::write(&path, text).with_context(|| path.display().to_string())?;
    }
    Ok(Project { dir: dir.to_owned(), build, output })
}

/// A path as one word of a POSIX shell command: quoted when it holds
/// anything the shell would read.
fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text.contains(|c: char| !(c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c))) {
        format!("'{}'", text.replace('\'', r"'\''"))
    } else {
        text
    }
}

fn readme(name: &str, world: WorldName, build: &str, output: &Path) -> String {
    format!(
        "# {name}\n\nA stategate `{world}` guest (WIT package `stategate:gateway@0.3.0`, copied in `wit/`).\n\n\
         ```sh\n{build}\nstategate guest check {output}\n```\n\n\
         The guide: wit/README.md in the stategate repository.\n",
        world = world.as_str(),
        output = output.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_project_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("My Hook");
        let p = write(&dir, WorldName::PolicyHook, Lang::Rust).unwrap();
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"my-hook\""), "{cargo}");
        assert!(dir.join("wit/deps/http.wit").is_file() && dir.join("src/lib.rs").is_file());
        assert!(p.build.contains(&format!("'{}/Cargo.toml'", dir.display())), "{}", p.build);
        assert!(p.output.ends_with("target/wasm32-wasip2/release/my_hook.wasm"));
        let again = write(&dir, WorldName::PolicyHook, Lang::Rust).unwrap_err();
        assert!(again.to_string().contains("not empty"), "{again}");
        let bad = write(&tmp.path().join("9lives"), WorldName::ChannelProvider, Lang::Rust).unwrap_err();
        assert!(bad.to_string().contains("start with a letter"), "{bad}");
    }
}
