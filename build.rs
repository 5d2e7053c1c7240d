//! Compiles `proto/` with a vendored `protoc`, so a machine needs only the Rust toolchain.

use std::{env, path::PathBuf};

use tonic_prost_build::Config;

/// A code-generation config that runs the vendored `protoc`.
fn config() -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    Ok(config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let wkt = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("taskbroker_descriptor.bin"))
        .extern_path(".google.rpc.Status", "::tonic_types::Status")
        // prost's codec, with undecodable requests INVALID_ARGUMENT (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::Codec")
        .compile_with_config(
            config()?,
            &[
                PathBuf::from("proto/taskbroker/v1/task.proto"),
                PathBuf::from("proto/taskbroker/v1/producer.proto"),
                PathBuf::from("proto/taskbroker/v1/worker.proto"),
                PathBuf::from("proto/taskbroker/v1/admin.proto"),
            ],
            &[PathBuf::from("proto"), wkt.clone()],
        )?;
    // KEDA's External Scaler contract, vendored unchanged (proto/externalscaler/).
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("externalscaler_descriptor.bin"))
        .codec_path("crate::grpc::codec::Codec")
        .compile_with_config(
            config()?,
            &[PathBuf::from("proto/externalscaler/externalscaler.proto")],
            &[PathBuf::from("proto"), wkt.clone()],
        )?;
    // The load tool's no-op baseline (feature `bench`); kept out of the
    // broker's descriptor set so reflection on a broker does not list it.
    if env::var_os("CARGO_FEATURE_BENCH").is_some() {
        tonic_prost_build::configure().compile_with_config(
            config()?,
            &[PathBuf::from("proto/taskbroker/bench/v1/echo.proto")],
            &[PathBuf::from("proto"), wkt],
        )?;
    }
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
