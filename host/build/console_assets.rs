//! Embeds the built web console: every file under `console/dist` (built by
//! `scripts/build-console` and committed, so building the gateway needs no
//! Node) becomes an entry of `ASSETS` in `console_assets.rs`, with its bytes
//! taken by `include_bytes!`. `api::console` serves them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub fn embed(manifest_dir: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let dist = manifest_dir.join("../console/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = vec![];
    if dist.is_dir() {
        walk(&dist, &mut files)?;
    } else {
        println!(
            "cargo:warning=console/dist is missing (scripts/build-console builds it): /console/ will answer 404"
        );
    }
    files.sort();
    let mut code = String::from("pub static ASSETS: &[Asset] = &[\n");
    for file in files {
        let relative = file.strip_prefix(&dist)?.to_str().ok_or("a console file name is not UTF-8")?.replace('\\', "/");
        let absolute = file.canonicalize()?;
        let absolute = absolute.to_str().ok_or("a console path is not UTF-8")?;
        writeln!(code, "    Asset {{ path: {relative:?}, bytes: include_bytes!({absolute:?}) }},")?;
    }
    code.push_str("];\n");
    std::fs::write(out.join("console_assets.rs"), code)?;
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}
