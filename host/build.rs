//! Compiles the protobuf contract without a system `protoc`: protox parses the
//! `.proto` files (with the well-known types built in) into a descriptor set,
//! which tonic turns into Rust. The descriptor set is also embedded for gRPC
//! server reflection. It also embeds the built web console
//! (`build/console_assets.rs`).

#[path = "build/console_assets.rs"]
mod console_assets;

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile(["stategate.proto"], ["../proto"])?;
    std::fs::write(
        out.join("stategate_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .compile_well_known_types(false)
        .codec_path("crate::api::codec::StrictCodec")
        .compile_fds(fds)?;

    // The frozen v0.5.0 contract, compiled into its own module for the
    // compatibility test's client only.
    std::fs::create_dir_all(out.join("v050"))?;
    let v050 = protox::compile(["stategate_v050.proto"], ["tests/v050"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(out.join("v050"))
        .compile_fds(v050)?;

    console_assets::embed(&PathBuf::from(env::var("CARGO_MANIFEST_DIR")?), &out)?;

    println!("cargo:rerun-if-changed=../proto");
    println!("cargo:rerun-if-changed=tests/v050");
    Ok(())
}
