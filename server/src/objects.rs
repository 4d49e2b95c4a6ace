//! The `kvtier.v1.Objects` gRPC service: named objects (see `kvtier_blockmgr::objects`) over streams.

use std::pin::Pin;

use futures::StreamExt;
use kvtier_proto::v1::{self, get_object_response::Msg as GetMsg, objects_server, put_object_request::Msg as PutMsg};
use kvtier_tiers::Namespace;
use tonic::{Request, Response, Status, Streaming};

use kvtier_blockmgr::{
    Objects,
    config::ServerConfig,
    objects::CommitIf,
    wire::{Outcome, durability_from_wire, pieces, status_of},
};

/// Serves a node's named objects.
#[derive(Debug, Clone)]
pub struct ObjectService {
    objects: Objects,
    config: ServerConfig,
}

impl ObjectService {
    /// Serves `objects` with the limits of `config`.
    pub fn new(objects: Objects, config: ServerConfig) -> Self {
        ObjectService { objects, config }
    }

    /// The next message of a put, or `None` at its end; silence past the idle timeout is an
    /// abandoned put.
    async fn next(&self, stream: &mut Streaming<v1::PutObjectRequest>) -> Result<Option<PutMsg>, Status> {
        let idle = self.config.stream_idle_timeout;
        match super::next_message(stream, idle, "the object put was abandoned and not committed").await? {
            None => Ok(None),
            Some(req) => req.msg.map(Some).ok_or_else(|| Status::invalid_argument("an empty put message")),
        }
    }

    fn count(&self, op: &str) {
        self.objects.node().metrics().requests.with_label_values(&[op]).inc();
    }
}

fn not_found(namespace: &str, path: &str) -> Status {
    Status::not_found(format!("no object {path:?} in namespace {namespace}"))
}

#[tonic::async_trait]
impl objects_server::Objects for ObjectService {
    async fn put_object(
        &self,
        request: Request<Streaming<v1::PutObjectRequest>>,
    ) -> Result<Response<v1::ObjectInfo>, Status> {
        self.count("put_object");
        let mut stream = request.into_inner();
        let Some(PutMsg::Open(open)) = self.next(&mut stream).await? else {
            return Err(Status::invalid_argument("an object put must begin with `open` (namespace, path)"));
        };
        let durability = durability_from_wire(open.durability)?;
        let mut writer =
            self.objects.write_object(&open.namespace, &open.path, durability).map_err(|e| status_of(&e))?;
        let received = async {
            // Only `commit` commits: hyper ends the request body cleanly on a client's
            // RST_STREAM CANCEL, so an aborted upload looks, here, like one that ended.
            loop {
                match self.next(&mut stream).await? {
                    Some(PutMsg::Data(bytes)) => writer.write(&bytes).await.map_err(|e| status_of(&e))?,
                    Some(PutMsg::Commit(_)) => break,
                    Some(PutMsg::Open(_)) => {
                        return Err(Status::invalid_argument("a second `open` in one object put"));
                    }
                    None => {
                        return Err(Status::aborted(format!(
                            "{}/{}: the put stream ended without `commit` (the client cancelled or broke \
                             off); {} bytes received, not committed",
                            open.namespace,
                            open.path,
                            writer.received().0
                        )));
                    }
                }
            }
            let (size, crc32c) = writer.received();
            if let Some(want) = open.size.filter(|&want| want != size) {
                return Err(Status::data_loss(format!("{size} bytes arrived of the {want} announced; not committed")));
            }
            if let Some(want) = open.crc32c.filter(|&want| want != crc32c) {
                return Err(Status::data_loss(format!(
                    "the bytes' crc32c is {crc32c:#010x}, not the {want:#010x} announced; not committed"
                )));
            }
            Ok(())
        }
        .await;
        if let Err(status) = received {
            writer.abort().await;
            // Before the commit: nothing of this put is visible, nor ever will be.
            return Err(Outcome::NotApplied.mark(status));
        }
        // Once `commit` arrived the commit runs to its end, even if the client goes away
        // (`commit_if` runs it in the node's tasks). A handler dropped before `commit` drops
        // the writer, which deletes its chunks.
        // A failed commit says whether it may have landed (see `Outcome`).
        let condition = CommitIf::from_wire(open.if_absent, open.if_generation, open.if_crc32c);
        let info =
            writer.commit_if(condition).await.map_err(|e| Outcome::of_commit(&e).mark(status_of(&e)))?.ok_or_else(
                || {
                    let why = match condition {
                        CommitIf::Absent => "it has a version".to_string(),
                        _ => format!(
                            "its version is not generation {} of crc32c {:#010x}",
                            open.if_generation.unwrap_or(0),
                            open.if_crc32c
                        ),
                    };
                    let status = Status::failed_precondition(format!(
                        "{}/{}: not committed: {why} (the put's condition)",
                        open.namespace, open.path
                    ));
                    Outcome::NotApplied.mark(status)
                },
            )?;
        Ok(Response::new(v1::ObjectInfo::from(&info)))
    }

    type GetObjectStream = Pin<Box<dyn futures::Stream<Item = Result<v1::GetObjectResponse, Status>> + Send>>;

    async fn get_object(
        &self,
        request: Request<v1::GetObjectRequest>,
    ) -> Result<Response<Self::GetObjectStream>, Status> {
        self.count("get_object");
        let req = request.into_inner();
        let ns = Namespace::new(&req.namespace).map_err(|e| status_of(&e))?;
        let info = self
            .objects
            .stat_object(&req.namespace, &req.path)
            .await
            .map_err(|e| status_of(&e))?
            .ok_or_else(|| not_found(&req.namespace, &req.path))?;
        if let Some(wanted) = req.generation.filter(|&g| g != info.generation) {
            return Err(Status::failed_precondition(format!(
                "{}/{}: generation {wanted} was replaced by generation {}",
                req.namespace, req.path, info.generation
            )));
        }
        let first = v1::GetObjectResponse { msg: Some(GetMsg::Info(v1::ObjectInfo::from(&info))) };
        let head = futures::stream::once(async move { Ok(first) });
        // Chunks are up to 16 MiB (max_block_size): cut into messages of `server.chunk_size`.
        let max = self.config.chunk_size.0 as usize;
        let body =
            self.objects.read_object(&ns, &info, req.offset, req.length.unwrap_or(u64::MAX)).flat_map(move |chunk| {
                let msgs: Vec<_> = match chunk {
                    Ok(data) => pieces(data, max)
                        .map(|data| Ok(v1::GetObjectResponse { msg: Some(GetMsg::Data(data)) }))
                        .collect(),
                    Err(e) => vec![Err(status_of(&e))],
                };
                futures::stream::iter(msgs)
            });
        Ok(Response::new(Box::pin(head.chain(body))))
    }

    async fn stat_object(&self, request: Request<v1::ObjectRef>) -> Result<Response<v1::ObjectInfo>, Status> {
        self.count("stat_object");
        let r = request.into_inner();
        match self.objects.stat_object(&r.namespace, &r.path).await.map_err(|e| status_of(&e))? {
            Some(info) => Ok(Response::new(v1::ObjectInfo::from(&info))),
            None => Err(not_found(&r.namespace, &r.path)),
        }
    }

    async fn list_objects(
        &self,
        request: Request<v1::ListObjectsRequest>,
    ) -> Result<Response<v1::ListObjectsResponse>, Status> {
        self.count("list_objects");
        let r = request.into_inner();
        let found = self.objects.list_objects(&r.namespace, &r.prefix).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(v1::ListObjectsResponse { objects: found.iter().map(v1::ObjectInfo::from).collect() }))
    }

    async fn delete_object(
        &self,
        request: Request<v1::ObjectRef>,
    ) -> Result<Response<v1::DeleteObjectResponse>, Status> {
        self.count("delete_object");
        let r = request.into_inner();
        // A delete is a commit (of a delete marker): its failure says whether it may have landed.
        let deleted = (self.objects.delete_object(&r.namespace, &r.path).await)
            .map_err(|e| Outcome::of_commit(&e).mark(status_of(&e)))?;
        Ok(Response::new(v1::DeleteObjectResponse { deleted }))
    }
}
