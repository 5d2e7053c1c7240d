//! Compiles `proto/` with a vendored `protoc`, so a machine needs only the Rust toolchain.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts run single-threaded; tonic-prost-build reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let wkt = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("taskbroker_descriptor.bin"))
        .extern_path(".google.rpc.Status", "::tonic_types::Status")
        .compile_protos(
            &[
                PathBuf::from("proto/taskbroker/v1/task.proto"),
                PathBuf::from("proto/taskbroker/v1/producer.proto"),
                PathBuf::from("proto/taskbroker/v1/worker.proto"),
            ],
            &[PathBuf::from("proto"), wkt.clone()],
        )?;
    // The load tool's no-op baseline; kept out of the broker's descriptor set
    // so reflection on a broker does not list it.
    tonic_prost_build::configure().compile_protos(
        &[PathBuf::from("proto/taskbroker/bench/v1/echo.proto")],
        &[PathBuf::from("proto"), wkt],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
