//! Compiles `kvtier.proto` with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["kvtier.proto", "peer.proto"], ["."])?;
    tonic_prost_build::configure()
        // Block bytes decode as `bytes::Bytes` slices of the receive buffer, not fresh Vecs.
        .bytes(".")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=kvtier.proto");
    println!("cargo:rerun-if-changed=peer.proto");
    Ok(())
}
