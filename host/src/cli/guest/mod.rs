//! `stategate guest`: starting a wasm guest (`new`: a project that builds
//! with the command it prints) and trying one (`check`: load a component,
//! check its world and exports, call it with sample input).

#[cfg(feature = "wasm")]
mod check;
mod new;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Write a guest project into DIR (created; must be empty) and print
    /// the command that builds it: `stategate guest new --world policy-hook --lang rust my-hook`.
    New(NewArgs),
    /// Load a component, check which world it implements and what it
    /// exports, call it with sample input, and print what each call
    /// returned and how long it took.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The world the guest implements.
    #[arg(long, value_enum)]
    pub world: WorldName,
    /// The language of the project.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// The project's directory; its name is the package name.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component (`.wasm`).
    pub file: PathBuf,
    /// The guest's `config` object, as JSON.
    #[arg(long, value_name = "JSON")]
    pub config: Option<String>,
    /// The guest's `grants` object, as JSON (default for a storage guest:
    /// a fresh temporary directory as `dir`).
    #[arg(long, value_name = "JSON")]
    pub grants: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorldName {
    PolicyHook,
    StorageProvider,
    ChannelProvider,
}

impl WorldName {
    pub fn as_str(self) -> &'static str {
        match self {
            WorldName::PolicyHook => "policy-hook",
            WorldName::StorageProvider => "storage-provider",
            WorldName::ChannelProvider => "channel-provider",
        }
    }
}

/// Languages `guest new` writes projects in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// cargo and wit-bindgen; needs `rustup target add wasm32-wasip2`.
    Rust,
    /// componentize-py (`pip install componentize-py`); about 18 MB components.
    Python,
    /// componentize-js (installed by the printed `npm install`); about 12 MB components.
    Js,
}

pub async fn run(command: GuestCommand) -> Result<()> {
    match command {
        GuestCommand::New(a) => {
            let p = new::write(&a.dir, a.world, a.lang)?;
            println!("wrote a {} guest in {} ({:?})", a.world.as_str(), p.dir.display(), a.lang);
            println!("build:  {}", p.build);
            match a.lang {
                Lang::Rust => {
                    println!("output: {}  (under $CARGO_TARGET_DIR/wasm32-wasip2/release/ when that is set)", p.output.display());
                    println!("needs:  rustup target add wasm32-wasip2");
                }
                Lang::Python => {
                    println!("output: {}", p.output.display());
                    println!("needs:  pip install componentize-py==0.25.1");
                }
                Lang::Js => {
                    println!("output: {}", p.output.display());
                    println!("needs:  node and npm (the build installs componentize-js 0.23.0)");
                }
            }
            println!("check:  stategate guest check {}", p.output.display());
            Ok(())
        }
        #[cfg(feature = "wasm")]
        GuestCommand::Check(a) => check::run(a).await,
        #[cfg(not(feature = "wasm"))]
        GuestCommand::Check(_) => anyhow::bail!("guest check runs components, and this binary was built without the wasm host; rebuild with `--features wasm`"),
    }
}
