//! Generates the tonic client from `proto/` (the one contract the gateway
//! serves) with protox, so no system `protoc` is needed. `client/proto` is
//! a link to the repository's `proto/`, so the crate holds its contract
//! inside its own folder: `cargo package` copies the files in, and the
//! packaged crate builds anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["stategate.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_well_known_types(false)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
