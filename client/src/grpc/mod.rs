//! The Rust client of a `kvtier serve` node, over TCP or its Unix socket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kvtier_client::ClientError> {
//! use kvtier_client::{Client, Durability, GetItem, PutItem};
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let ns = "acme/llama3-8b/bf16-16tok";
//! client.put(ns, &[PutItem::new(b"block-0".to_vec(), vec![7u8; 4096].into())], Durability::Cache).await?;
//! match &client.get(ns, &[b"block-0".to_vec()]).await?[0] {
//!     GetItem::Hit { data, tier, .. } => println!("{} bytes from {tier}", data.len()),
//!     GetItem::Miss { reason, .. } => println!("miss: {reason:?}"),
//! }
//! # Ok(()) }
//! ```

mod error;
mod member;
mod objects;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kvtier_proto::{
    peer::v1::peer_client::PeerClient,
    v1::{
        self, block_store_client::BlockStoreClient, get_response::Msg as GetMsg, objects_client::ObjectsClient,
        put_request::Msg as PutMsg,
    },
};
use kvtier_tiers::TierKind;
use tonic::Code;
use tower::ServiceExt;

use kvtier_types::{
    Durability, Looked, MissReason, Presence, Stats,
    wire::{durability_to_wire, looked_from_wire, miss_from_wire, pieces, tier_from_wire},
};

pub use self::{
    error::{ClientError, never_sent, transient_code},
    member::{MemberHint, MemberRead, READ_HEADER, TRIED_HEADER},
    objects::{ObjectInfo, ObjectRange},
};

/// Largest gRPC message either side accepts (a data chunk plus framing).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Largest HTTP/2 frame either side accepts: block data then crosses in a few frames
/// instead of one per 16 KiB (h2's default), which costs most of the throughput.
pub const MAX_FRAME: u32 = 1 << 20;
/// Default size of the data chunks a client sends: blocks up to 4 MiB go as one message.
pub const DEFAULT_CHUNK: usize = 4 << 20;

/// A block to put.
#[derive(Debug, Clone)]
pub struct PutItem {
    /// Key bytes (1..=64).
    pub key: Vec<u8>,
    /// Contents.
    pub data: Bytes,
}

impl PutItem {
    /// A block to put.
    pub fn new(key: Vec<u8>, data: Bytes) -> Self {
        PutItem { key, data }
    }
}

/// The server's answer for one put block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// `Ok` = stored or already present; `Err((code, message))` otherwise.
    pub result: Result<(), (Code, String)>,
    /// The key was already stored: the put was a no-op.
    pub existed: bool,
    /// The fastest tier now holding the block.
    pub tier: Option<TierKind>,
}

/// The answer for one requested key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetItem {
    /// The block's bytes, verified against its CRC-32C.
    Hit {
        /// Contents.
        data: Bytes,
        /// The tier they came from.
        tier: TierKind,
        /// Their CRC-32C.
        crc32c: u32,
    },
    /// Not returned, and why.
    Miss {
        /// Why.
        reason: MissReason,
        /// The server's message.
        message: String,
    },
}

/// What a client's requests travel over: a tonic channel (TCP, TLS, a Unix socket), or
/// any other service answering gRPC requests, such as a node served in process
/// (the node's `server::routes`: the cluster simulation of `kvtier-bench sim`).
pub type Transport = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    TransportError,
>;

/// Why a [`Transport`] could not carry a request (the channel's own error as the source,
/// so tonic still reads a refused connection as UNAVAILABLE). A named type rather than a
/// boxed trait object: the async code around the generated clients then stays `Send`.
#[derive(Debug)]
pub struct TransportError(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// A connection to one kvtier node. Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct Client {
    rpc: BlockStoreClient<Transport>,
    objects: ObjectsClient<Transport>,
    /// What members ask each other (used on a member's connection only).
    peer_rpc: PeerClient<Transport>,
    chunk: usize,
    /// Set on a member's connection to another: every request carries it.
    peer: Option<tonic::metadata::AsciiMetadataValue>,
}

/// The request header naming the member a peer request comes from. A node serves such a
/// request from its own tiers only (it never forwards it), and only for a member.
pub const PEER_HEADER: &str = "x-kvtier-peer";

/// The request header of a put's deadline (ms since the Unix epoch): a node that reaches the
/// commit of a block later (it was stopped, or waited for room) refuses it, so a put its
/// sender counted as failed never lands behind the sender's back.
pub const DEADLINE_HEADER: &str = "x-kvtier-deadline-ms";

/// The request header of a conditional delete (S3's `If-Match`): the version it may delete,
/// `<generation>.<crc32c>`, decided by the path's primary.
pub const IF_VERSION_HEADER: &str = "x-kvtier-if-version";

/// TLS for a connection to a node serving `[server.tls]` (PEM bytes).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The CA that signed the node's certificate.
    pub ca: Vec<u8>,
    /// This client's certificate and key, for a node that requires one (mTLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the node's certificate must carry, when not the host dialed (members dial
    /// each other by node id).
    pub domain: Option<String>,
}

impl ClientTls {
    /// From the files `KVTIER_TLS_CA` (and `KVTIER_TLS_CERT` / `KVTIER_TLS_KEY` for mTLS)
    /// name, or `None` when `KVTIER_TLS_CA` is unset: how the `kvtier` CLI is given TLS.
    pub fn from_env() -> Result<Option<Self>, ClientError> {
        let Ok(ca) = std::env::var("KVTIER_TLS_CA") else { return Ok(None) };
        let read = |path: &str| {
            std::fs::read(path).map_err(|e| ClientError::Address { addr: path.into(), reason: e.to_string() })
        };
        let identity = match (std::env::var("KVTIER_TLS_CERT"), std::env::var("KVTIER_TLS_KEY")) {
            (Ok(cert), Ok(key)) => Some((read(&cert)?, read(&key)?)),
            _ => None,
        };
        Ok(Some(ClientTls { ca: read(&ca)?, identity, domain: None }))
    }
}

impl Client {
    /// Connects to `addr`: `http://host:port`, `host:port`, or `unix:///path/to/kvtier.sock`.
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        Self::connect_with(addr, None).await
    }

    /// Connects to `addr`, over TLS with `tls` (`host:port` then means `https://host:port`).
    pub async fn connect_with(addr: &str, tls: Option<&ClientTls>) -> Result<Self, ClientError> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let uri = if addr.starts_with("unix:") || addr.contains("://") {
            addr.to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let bad = |reason: String| ClientError::Address { addr: addr.into(), reason };
        let mut endpoint = tonic::transport::Endpoint::from_shared(uri).map_err(|e| bad(e.to_string()))?;
        if let Some(tls) = tls {
            use tonic::transport::{Certificate, ClientTlsConfig, Identity};
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &tls.domain {
                config = config.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(config).map_err(|e| bad(format!("TLS: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_adaptive_window(false)
            .max_frame_size(MAX_FRAME)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20);
        let channel = endpoint.connect().await.map_err(|source| ClientError::Connect { addr: addr.into(), source })?;
        Ok(Self::over(Transport::new(channel.map_err(|e| TransportError(Box::new(e))))))
    }

    /// A client whose requests go over `transport`.
    pub fn over(transport: Transport) -> Self {
        let rpc = BlockStoreClient::new(transport.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let objects = ObjectsClient::new(transport.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let peer_rpc =
            PeerClient::new(transport).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
        Client { rpc, objects, peer_rpc, chunk: DEFAULT_CHUNK, peer: None }
    }

    /// This connection as member `node_id`'s to another member: requests are answered from
    /// that node's own tiers, not forwarded.
    pub fn as_peer(mut self, node_id: &str) -> Result<Self, ClientError> {
        let value = node_id
            .parse()
            .map_err(|_| ClientError::Address { addr: node_id.into(), reason: "not a valid node id".into() })?;
        self.peer = Some(value);
        Ok(self)
    }

    /// The peer service over this connection.
    pub fn peer_rpc(&self) -> PeerClient<Transport> {
        self.peer_rpc.clone()
    }

    /// `message` as a request, with the peer header when this is a member's connection.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(id) = &self.peer {
            request.metadata_mut().insert(PEER_HEADER, id.clone());
        }
        request
    }

    /// Size of the data chunks this client sends. Default 4 MiB.
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1);
        self
    }

    /// Puts a batch of blocks in one stream, each with its CRC-32C for the server to check.
    /// Answers per block, in order.
    pub async fn put(
        &self,
        namespace: &str,
        blocks: &[PutItem],
        durability: Durability,
    ) -> Result<Vec<PutReport>, ClientError> {
        self.put_by(namespace, blocks, durability, None).await
    }

    /// [`Client::put`], each block refused by the node unless committed by `deadline`.
    pub async fn put_by(
        &self,
        namespace: &str,
        blocks: &[PutItem],
        durability: Durability,
        deadline: Option<std::time::SystemTime>,
    ) -> Result<Vec<PutReport>, ClientError> {
        let mut msgs = Vec::with_capacity(1 + blocks.len() * 2);
        msgs.push(PutMsg::Open(v1::PutOpen {
            namespace: namespace.into(),
            durability: durability_to_wire(durability) as i32,
        }));
        for b in blocks {
            msgs.push(PutMsg::Block(v1::BlockHeader {
                key: Bytes::copy_from_slice(&b.key),
                length: b.data.len() as u64,
                crc32c: Some(kvtier_tiers::crc32c(&b.data)),
            }));
            msgs.extend(pieces(b.data.clone(), self.chunk).map(PutMsg::Data));
        }
        let mut request = self.request(tokio_stream::iter(msgs.into_iter().map(|m| v1::PutRequest { msg: Some(m) })));
        if let Some(deadline) = deadline {
            let ms = deadline.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            request.metadata_mut().insert(DEADLINE_HEADER, ms.to_string().parse().expect("digits"));
        }
        let answer = self.rpc.clone().put(request).await.map(tonic::Response::into_inner).map_err(ClientError::from);
        answer.and_then(|r| {
            if r.results.len() != blocks.len() {
                return Err(ClientError::Protocol(format!("{} results for {} blocks", r.results.len(), blocks.len())));
            }
            Ok(r.results.into_iter().map(report).collect())
        })
    }

    /// Sends put messages exactly as given (for tests of malformed streams).
    pub async fn put_raw(&self, msgs: Vec<v1::PutRequest>) -> Result<v1::PutResponse, ClientError> {
        Ok(self.rpc.clone().put(self.request(tokio_stream::iter(msgs))).await?.into_inner())
    }

    /// Gets a batch of keys, answering per key in order.
    pub async fn get(&self, namespace: &str, keys: &[Vec<u8>]) -> Result<Vec<GetItem>, ClientError> {
        let req = v1::GetRequest {
            namespace: namespace.into(),
            keys: keys.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
        };
        let answers = self.get_answers(self.request(req), keys.len()).await?;
        Ok(answers.into_iter().map(|(item, _)| item).collect())
    }

    /// Sends a get and reads its answers, each with what it tells a member (see
    /// [`MemberHint`]).
    async fn get_answers(
        &self,
        request: tonic::Request<v1::GetRequest>,
        expected: usize,
    ) -> Result<Vec<(GetItem, MemberHint)>, ClientError> {
        let mut stream = self.rpc.clone().get(request).await?.into_inner();
        let mut items = Vec::with_capacity(expected);
        let mut current: Option<(v1::GetBlock, Vec<Bytes>, u64)> = None;
        while let Some(msg) = stream.message().await? {
            match msg.msg {
                Some(GetMsg::Block(h)) => {
                    expect_done(&current)?;
                    expect_index(items.len(), h.index)?;
                    current = Some((h, Vec::new(), 0));
                }
                Some(GetMsg::Data(chunk)) => {
                    let Some((h, chunks, got)) = current.as_mut() else {
                        return Err(ClientError::Protocol("data before a block header".into()));
                    };
                    *got += chunk.len() as u64;
                    if *got > h.length {
                        return Err(ClientError::Protocol(format!(
                            "block {} longer than its {} bytes",
                            h.index, h.length
                        )));
                    }
                    chunks.push(chunk);
                    if *got == h.length {
                        let (h, chunks, _) = current.take().expect("current block");
                        let hint = MemberHint { keep: h.keep, holders: Vec::new() };
                        items.push((assemble(h, chunks)?, hint));
                    }
                }
                Some(GetMsg::Miss(m)) => {
                    expect_done(&current)?;
                    expect_index(items.len(), m.index)?;
                    let hint = MemberHint { keep: m.keep, holders: m.holders };
                    items.push((GetItem::Miss { reason: miss_from_wire(m.reason), message: m.message }, hint));
                }
                None => return Err(ClientError::Protocol("empty get response message".into())),
            }
        }
        expect_done(&current)?;
        if items.len() != expected {
            return Err(ClientError::Protocol(format!("{} answers for {} keys", items.len(), expected)));
        }
        Ok(items)
    }

    /// The tier of each key of the longest present prefix of `keys`.
    pub async fn lookup(&self, namespace: &str, keys: &[Vec<u8>]) -> Result<Vec<TierKind>, ClientError> {
        Ok(self.lookup_pinned(namespace, keys, Duration::ZERO).await?.tiers)
    }

    /// [`Client::lookup`] with each block's expected load time, pinning the blocks it
    /// reports for `pin` (up to the node's `server.max_lookup_pin`) or until a get reads each.
    pub async fn lookup_pinned(&self, namespace: &str, keys: &[Vec<u8>], pin: Duration) -> Result<Looked, ClientError> {
        let req = v1::LookupRequest {
            namespace: namespace.into(),
            keys: keys.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
            pin_ms: pin.as_millis().min(u32::MAX as u128) as u32,
        };
        let r = self.rpc.clone().lookup(self.request(req)).await?.into_inner();
        looked_from_wire(r).map_err(ClientError::Protocol)
    }

    /// Whether each of `keys` is stored, with its length and fastest tier: on the node, or
    /// on the key's owners in its cluster (see `Has` in kvtier.proto). Reads no block bytes.
    pub async fn has(&self, namespace: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Presence>>, ClientError> {
        let req = v1::HasRequest {
            namespace: namespace.into(),
            keys: keys.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
        };
        let r = self.rpc.clone().has(self.request(req)).await?.into_inner();
        if r.presence.len() != keys.len() {
            return Err(ClientError::Protocol(format!("{} answers for {} keys", r.presence.len(), keys.len())));
        }
        r.presence
            .into_iter()
            .map(|p| {
                if !p.present {
                    return Ok(None);
                }
                let tier =
                    tier_from_wire(p.tier).ok_or_else(|| ClientError::Protocol(format!("unknown tier {}", p.tier)))?;
                Ok(Some(Presence { length: p.length, tier }))
            })
            .collect()
    }

    /// Deletes keys; answers whether each was present.
    pub async fn delete(&self, namespace: &str, keys: &[Vec<u8>]) -> Result<Vec<bool>, ClientError> {
        self.delete_by(namespace, keys, None).await
    }

    /// [`Client::delete`], refused by the node (nothing deleted) if it arrives past `deadline`.
    pub async fn delete_by(
        &self,
        namespace: &str,
        keys: &[Vec<u8>],
        deadline: Option<std::time::SystemTime>,
    ) -> Result<Vec<bool>, ClientError> {
        let req = v1::DeleteRequest {
            namespace: namespace.into(),
            keys: keys.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
        };
        let mut request = self.request(req);
        if let Some(deadline) = deadline {
            let ms = deadline.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            request.metadata_mut().insert(DEADLINE_HEADER, ms.to_string().parse().expect("digits"));
        }
        Ok(self.rpc.clone().delete(request).await?.into_inner().deleted)
    }

    /// Usage and counters of the node.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let s = self.rpc.clone().stats(v1::StatsRequest {}).await?.into_inner();
        Stats::try_from(s).map_err(ClientError::Protocol)
    }

    /// Whether the node is serving, and its version.
    pub async fn health(&self) -> Result<(bool, String), ClientError> {
        let h = self.rpc.clone().health(v1::HealthRequest {}).await?.into_inner();
        Ok((h.status == v1::health_response::ServingStatus::Serving as i32, h.version))
    }
}

fn report(r: v1::PutResult) -> PutReport {
    let status = r.status.unwrap_or_default();
    let result = if status.code == 0 { Ok(()) } else { Err((Code::from(status.code as i32), status.message)) };
    PutReport { result, existed: r.existed, tier: tier_from_wire(r.tier) }
}

fn expect_done(current: &Option<(v1::GetBlock, Vec<Bytes>, u64)>) -> Result<(), ClientError> {
    match current {
        Some((h, _, got)) => {
            Err(ClientError::Protocol(format!("block {} ended after {got} of {} bytes", h.index, h.length)))
        }
        None => Ok(()),
    }
}

fn expect_index(expected: usize, got: u32) -> Result<(), ClientError> {
    if got as usize != expected {
        return Err(ClientError::Protocol(format!("answer for key {got} where key {expected} was due")));
    }
    Ok(())
}

/// Joins a block's chunks (zero-copy when it came in one) and checks its CRC-32C.
fn assemble(h: v1::GetBlock, mut chunks: Vec<Bytes>) -> Result<GetItem, ClientError> {
    let data = if chunks.len() == 1 {
        chunks.pop().expect("one chunk")
    } else {
        let mut buf = BytesMut::with_capacity(h.length as usize);
        chunks.iter().for_each(|c| buf.extend_from_slice(c));
        buf.freeze()
    };
    let actual = kvtier_tiers::crc32c(&data);
    if actual != h.crc32c {
        return Err(ClientError::Protocol(format!(
            "block {} arrived with crc32c {actual:#010x}, the server sent {:#010x}",
            h.index, h.crc32c
        )));
    }
    let tier = tier_from_wire(h.tier).ok_or_else(|| ClientError::Protocol(format!("unknown tier {}", h.tier)))?;
    Ok(GetItem::Hit { data, tier, crc32c: h.crc32c })
}
