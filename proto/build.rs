fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["proto/cudele.proto"], &["proto"])?;
    // The replica contract reuses cudele.v1's messages from `crate::pb`. Its own directory:
    // with the extern path, prost would otherwise rewrite cudele.v1.rs without the messages.
    let replica_out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("replica");
    std::fs::create_dir_all(&replica_out)?;
    tonic_prost_build::configure()
        .extern_path(".cudele.v1", "crate::pb")
        .out_dir(&replica_out)
        .compile_protos(&["proto/replica.proto"], &["proto"])?;
    Ok(())
}
