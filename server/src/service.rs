//! The `kvtier.v1.BlockStore` gRPC service over a [`Manager`].
//!
//! Bad input never takes the server down: a malformed key, an oversized or empty block or
//! a failed checksum fails that block (its result says why) while the rest of the batch
//! proceeds; a broken stream (data before a header, more bytes than declared, a second
//! `open`, a message with no field set) fails the request with INVALID_ARGUMENT; a block
//! whose stream ends early is not stored and its result says so. Blocks completed before a
//! failure are stored (puts are idempotent, so clients simply retry).

use std::{pin::Pin, sync::Arc, time::Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use kvtier_blockmgr::NodeError;
use kvtier_proto::v1::{self, block_store_server::BlockStore, get_response::Msg as GetMsg, put_request::Msg as PutMsg};
use kvtier_tiers::{BlockKey, Key, Namespace};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use kvtier_blockmgr::peer::requests;
use kvtier_blockmgr::{
    Durability, GetOutcome, Manager, MemberAnswer, PutOutcome, PutWriter,
    config::ServerConfig,
    wire::{block_status, durability_from_wire, miss_to_wire, pieces, status_of, tier_to_wire},
};

/// Blocks a get fetches ahead of the one being streamed.
const GET_LOOKAHEAD: usize = 4;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct BlockService {
    manager: Manager,
    config: ServerConfig,
}

impl BlockService {
    /// Serves `manager` with the limits of `config`.
    pub fn new(manager: Manager, config: ServerConfig) -> Self {
        BlockService { manager, config }
    }

    /// Who serves `request`: the node (and its cluster), or for a member's request this
    /// node alone.
    async fn serving<T>(&self, request: &Request<T>) -> Result<Manager, Status> {
        requests::serving(&self.manager, request).await
    }

    fn begin(&self, op: &str) -> Instant {
        self.manager.metrics().requests.with_label_values(&[op]).inc();
        Instant::now()
    }

    fn end(&self, op: &str, started: Instant) {
        self.manager.metrics().latency.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    }

    /// Validates a batch of keys, naming the first bad one.
    fn keys(&self, namespace: &str, keys: &[bytes::Bytes]) -> Result<Vec<BlockKey>, Status> {
        let ns = Namespace::new(namespace).map_err(|e| status_of(&e))?;
        if keys.len() > self.config.max_batch_keys {
            return Err(too_many(keys.len(), self.config.max_batch_keys));
        }
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                Key::new(k)
                    .map(|k| BlockKey::new(ns.clone(), k))
                    .map_err(|e| Status::invalid_argument(format!("key {i}: {e}")))
            })
            .collect()
    }

    /// The next put message, or `None` at the end of the stream.
    async fn next(&self, stream: &mut Streaming<v1::PutRequest>) -> Result<Option<PutMsg>, Status> {
        let idle = self.config.stream_idle_timeout;
        match super::next_message(stream, idle, "the put stream was abandoned").await? {
            None => Ok(None),
            Some(req) => req.msg.map(Some).ok_or_else(|| {
                Status::invalid_argument("a put message with no field set (an unknown or newer field?)")
            }),
        }
    }
}

fn too_many(n: usize, max: usize) -> Status {
    Status::invalid_argument(format!(
        "{n} blocks in one request; the limit is {max} (server.max_batch_keys): split the batch"
    ))
}

fn overrun(index: usize) -> Status {
    Status::invalid_argument(format!("block {index}: more data than its declared length"))
}

/// A block of a put stream whose bytes are still arriving.
enum Incoming {
    /// Being stored.
    Writing(usize, PutWriter),
    /// Refused at its header; its bytes are read and discarded.
    Skipping(usize, u64),
}

/// The eventual result of one block.
enum Pending {
    /// Bytes still arriving (always replaced before the response).
    Receiving,
    Done(v1::PutResult),
    /// Already running in the manager's task.
    Commit(BoxFuture<'static, Result<PutOutcome, NodeError>>),
}

fn result(index: usize, r: Result<PutOutcome, &NodeError>) -> v1::PutResult {
    match r {
        Ok(o) => v1::PutResult {
            index: index as u32,
            status: Some(block_status(Ok(()))),
            existed: o.status == kvtier_tiers::PutStatus::Existed,
            tier: tier_to_wire(o.tier) as i32,
        },
        Err(e) => v1::PutResult { index: index as u32, status: Some(block_status(Err(e))), existed: false, tier: 0 },
    }
}

fn failed(index: usize, code: tonic::Code, message: String) -> Pending {
    Pending::Done(v1::PutResult {
        index: index as u32,
        status: Some(v1::BlockStatus { code: code as u32, message }),
        existed: false,
        tier: 0,
    })
}

#[tonic::async_trait]
impl BlockStore for BlockService {
    async fn put(&self, request: Request<Streaming<v1::PutRequest>>) -> Result<Response<v1::PutResponse>, Status> {
        let started = self.begin("put");
        let manager = self.serving(&request).await?;
        let deadline = requests::deadline_of(&request);
        let mut stream = request.into_inner();
        let open = match self.next(&mut stream).await? {
            Some(PutMsg::Open(open)) => open,
            Some(_) => {
                return Err(Status::invalid_argument("a put stream must begin with `open` (namespace, durability)"));
            }
            None => return Err(Status::invalid_argument("empty put stream")),
        };
        let ns = Namespace::new(&open.namespace).map_err(|e| status_of(&e))?;
        let durability: Durability = durability_from_wire(open.durability)?;
        let mut pending: Vec<Pending> = Vec::new();
        let mut current: Option<Incoming> = None;
        while let Some(msg) = self.next(&mut stream).await? {
            match msg {
                PutMsg::Open(_) => return Err(Status::invalid_argument("`open` sent twice in one put stream")),
                PutMsg::Block(h) => {
                    if let Some(Incoming::Writing(i, w)) = current.take() {
                        pending[i] = failed(
                            i,
                            tonic::Code::InvalidArgument,
                            format!(
                                "block {i}: the next block began after {} of its {} bytes; not stored",
                                w.written(),
                                w.len()
                            ),
                        );
                    }
                    let index = pending.len();
                    if index >= self.config.max_batch_keys {
                        return Err(too_many(index + 1, self.config.max_batch_keys));
                    }
                    let key = Key::new(&h.key).map(|k| BlockKey::new(ns.clone(), k));
                    let writer = match key {
                        Ok(key) => manager.begin_put(key, h.length, h.crc32c, durability).await,
                        Err(e) => Err(e.into()),
                    };
                    match writer {
                        Ok(w) => {
                            pending.push(Pending::Receiving);
                            current = Some(Incoming::Writing(index, w));
                        }
                        Err(e) => {
                            pending.push(Pending::Done(result(index, Err(&e))));
                            current = (h.length > 0).then_some(Incoming::Skipping(index, h.length));
                        }
                    }
                }
                PutMsg::Data(data) => match current.as_mut() {
                    None => return Err(Status::invalid_argument("data before any block header (send `block` first)")),
                    Some(Incoming::Skipping(i, remaining)) => {
                        if data.len() as u64 > *remaining {
                            return Err(overrun(*i));
                        }
                        *remaining -= data.len() as u64;
                        if *remaining == 0 {
                            current = None;
                        }
                    }
                    Some(Incoming::Writing(i, w)) => {
                        let i = *i;
                        if w.written() + data.len() as u64 > w.len() {
                            return Err(overrun(i));
                        }
                        w.write(&data).map_err(|e| Status::invalid_argument(format!("block {i}: {e}")))?;
                        if w.is_complete() {
                            let Some(Incoming::Writing(_, w)) = current.take() else { unreachable!() };
                            pending[i] = match deadline {
                                // Its sender counts it failed by now (this node was stopped,
                                // or waited for room): storing it would land it behind its back.
                                Some(d) if std::time::SystemTime::now() > d => {
                                    manager.metrics().late_commits_refused.inc();
                                    failed(
                                        i,
                                        tonic::Code::DeadlineExceeded,
                                        format!("block {i}: past its deadline; not stored"),
                                    )
                                }
                                _ => Pending::Commit(Box::pin(manager.finish_put(w))),
                            };
                        }
                    }
                },
            }
        }
        if let Some(Incoming::Writing(i, w)) = current {
            pending[i] = failed(
                i,
                tonic::Code::InvalidArgument,
                format!(
                    "block {i}: truncated: the stream ended after {} of its {} bytes; not stored",
                    w.written(),
                    w.len()
                ),
            );
        }
        let mut results = Vec::with_capacity(pending.len());
        for (i, p) in pending.into_iter().enumerate() {
            results.push(match p {
                Pending::Receiving => unreachable!("every receiving block is completed or failed above"),
                Pending::Done(r) => r,
                Pending::Commit(commit) => result(i, commit.await.as_ref().copied()),
            });
        }
        self.end("put", started);
        Ok(Response::new(v1::PutResponse { results }))
    }

    type GetStream = Pin<Box<dyn futures::Stream<Item = Result<v1::GetResponse, Status>> + Send>>;

    async fn get(&self, request: Request<v1::GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let started = self.begin("get");
        let manager = self.serving(&request).await?;
        let member_read = requests::member_read(&request);
        let req = request.into_inner();
        let keys = self.keys(&req.namespace, &req.keys)?;
        let (tx, rx) = mpsc::channel(16);
        let (service, chunk) = (self.clone(), self.config.chunk_size.0 as usize);
        tokio::spawn(async move {
            let member_read = Arc::new(member_read);
            let mut outcomes = futures::stream::iter(keys)
                .map(|k| {
                    let (m, member_read) = (manager.clone(), member_read.clone());
                    async move {
                        match member_read.as_ref() {
                            Some((reader, tried)) => m.answer_member_read(&k, reader, tried).await,
                            None => MemberAnswer::Here(m.get(&k).await, false),
                        }
                    }
                })
                .buffered(GET_LOOKAHEAD);
            let mut index = 0u32;
            while let Some(answer) = outcomes.next().await {
                let msgs: Vec<GetMsg> = match answer {
                    MemberAnswer::Elsewhere(holders, keep) => vec![GetMsg::Miss(v1::GetMiss {
                        index,
                        reason: v1::MissReason::Elsewhere as i32,
                        message: "read it from a read replica".into(),
                        holders,
                        keep,
                    })],
                    MemberAnswer::Here(GetOutcome::Hit { block, tier }, keep) => {
                        let header = GetMsg::Block(v1::GetBlock {
                            index,
                            length: block.len(),
                            crc32c: block.crc32c,
                            tier: tier_to_wire(tier) as i32,
                            keep,
                        });
                        std::iter::once(header).chain(pieces(block.data, chunk).map(GetMsg::Data)).collect()
                    }
                    MemberAnswer::Here(GetOutcome::Miss { reason, message }, _) => {
                        vec![GetMsg::Miss(v1::GetMiss {
                            index,
                            reason: miss_to_wire(reason) as i32,
                            message,
                            holders: Vec::new(),
                            keep: false,
                        })]
                    }
                };
                for msg in msgs {
                    if tx.send(Ok(v1::GetResponse { msg: Some(msg) })).await.is_err() {
                        return; // the client went away
                    }
                }
                index += 1;
            }
            service.end("get", started);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lookup(&self, request: Request<v1::LookupRequest>) -> Result<Response<v1::LookupResponse>, Status> {
        let started = self.begin("lookup");
        let req = request.into_inner();
        let keys = self.keys(&req.namespace, &req.keys)?;
        let answer = kvtier_blockmgr::wire::looked_to_wire(
            self.manager.lookup_pinned(&keys, std::time::Duration::from_millis(req.pin_ms.into())),
        );
        self.end("lookup", started);
        Ok(Response::new(answer))
    }

    async fn has(&self, request: Request<v1::HasRequest>) -> Result<Response<v1::HasResponse>, Status> {
        let started = self.begin("has");
        let manager = self.serving(&request).await?;
        let req = request.into_inner();
        let keys = self.keys(&req.namespace, &req.keys)?;
        let presence = manager
            .has(&keys)
            .await
            .into_iter()
            .map(|p| match p {
                Some(p) => v1::Presence { present: true, length: p.length, tier: tier_to_wire(p.tier) as i32 },
                None => v1::Presence::default(),
            })
            .collect();
        self.end("has", started);
        Ok(Response::new(v1::HasResponse { presence }))
    }

    async fn delete(&self, request: Request<v1::DeleteRequest>) -> Result<Response<v1::DeleteResponse>, Status> {
        let started = self.begin("delete");
        let manager = self.serving(&request).await?;
        // A member's delete that waited past its sender's patience (this node was stopped or
        // cut off) deletes nothing: an undo of a commit must not land after the version settled.
        if requests::deadline_of(&request).is_some_and(|d| std::time::SystemTime::now() > d) {
            manager.metrics().late_commits_refused.inc();
            return Err(Status::deadline_exceeded("the delete arrived past its deadline; nothing was deleted"));
        }
        let req = request.into_inner();
        let keys = self.keys(&req.namespace, &req.keys)?;
        let mut deleted = Vec::with_capacity(keys.len());
        for k in &keys {
            deleted.push(manager.delete(k).await);
        }
        self.end("delete", started);
        Ok(Response::new(v1::DeleteResponse { deleted }))
    }

    async fn stats(&self, _request: Request<v1::StatsRequest>) -> Result<Response<v1::StatsResponse>, Status> {
        let started = self.begin("stats");
        let stats = v1::StatsResponse::from(self.manager.stats().await);
        self.end("stats", started);
        Ok(Response::new(stats))
    }

    async fn health(&self, _request: Request<v1::HealthRequest>) -> Result<Response<v1::HealthResponse>, Status> {
        Ok(Response::new(v1::HealthResponse {
            status: v1::health_response::ServingStatus::Serving as i32,
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}
