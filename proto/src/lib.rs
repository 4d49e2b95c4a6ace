//! kvtier's wire API: the `kvtier.v1` protobuf messages and the `BlockStore` gRPC service.
//!
//! Generated from `proto/kvtier.proto` at build time by protox + tonic-prost-build, so no
//! system `protoc` is needed. See that file for the stream framing of `Put` and `Get`.

/// `kvtier.v1`: messages, the `BlockStore` client and server.
#[expect(missing_docs, reason = "generated code")]
#[expect(clippy::allow_attributes, reason = "generated code carries #[allow]s")]
pub mod v1 {
    tonic::include_proto!("kvtier.v1");
}

/// `kvtier.peer.v1`: what cluster members ask each other beyond the block API.
#[expect(missing_docs, reason = "generated code")]
#[expect(clippy::allow_attributes, reason = "generated code carries #[allow]s")]
pub mod peer {
    /// The generated messages and the `Peer` client and server.
    pub mod v1 {
        tonic::include_proto!("kvtier.peer.v1");
    }
}

/// etcd's v3 API, client side (the KV, Lease and Watch services kvtier's membership uses).
#[cfg(feature = "etcd")]
#[expect(missing_docs, reason = "generated code")]
pub mod etcd {
    /// `etcdserverpb`: the services and their messages.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    /// `mvccpb`: keys and events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// `authpb`: users and roles.
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
}
