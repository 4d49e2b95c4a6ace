//! Compiles `kvtier.proto`, `peer.proto` and, with the `etcd` feature, etcd's v3 API
//! (`etcd/`, client side only) with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ours = protox::compile(["kvtier.proto", "peer.proto"], ["."])?;
    tonic_prost_build::configure()
        // Block bytes decode as `bytes::Bytes` slices of the receive buffer, not fresh Vecs.
        .bytes(".")
        .compile_fds(ours)?;
    if std::env::var_os("CARGO_FEATURE_ETCD").is_some() {
        let etcd = protox::compile(["rpc.proto"], ["etcd"])?;
        tonic_prost_build::configure().build_server(false).compile_fds(etcd)?;
    }
    for file in ["kvtier.proto", "peer.proto", "etcd"] {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
