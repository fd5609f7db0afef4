//! Regenerates the Workload API's and Envoy SDS's gRPC code from
//! `agent/proto/` (the SPIFFE `workload.proto`; a trimmed subset of Envoy's
//! xDS v3 protos with upstream package names and field numbers)
//! with a vendored `protoc` (none is installed on build machines), so the
//! agent's build needs neither: `cargo run --manifest-path
//! agent/proto/codegen/Cargo.toml` from the repository root, then commit
//! `agent/src/workload_api/proto/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let out = std::path::Path::new("agent/src/workload_api/proto");
    std::fs::create_dir_all(out)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .out_dir(out)
        .compile_with_config(
            config,
            &[
                std::path::PathBuf::from("agent/proto/workload.proto"),
                std::path::PathBuf::from("agent/proto/envoy/service/secret/v3/sds.proto"),
                std::path::PathBuf::from(
                    "agent/proto/envoy/extensions/transport_sockets/tls/v3/tls.proto",
                ),
            ],
            &[std::path::PathBuf::from("agent/proto"), include],
        )?;
    // The service has no `package`, so prost names the file `_.rs`.
    std::fs::rename(out.join("_.rs"), out.join("spiffe_workload.rs"))?;
    Ok(())
}
