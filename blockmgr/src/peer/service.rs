//! The peer service: what members ask each other about named objects (commit on a path's
//! primary, stat, list of owned paths, delete). Every call must come from a member.

use std::pin::Pin;

use crate::NodeError;
use bytes::Bytes;
use kvtier_proto::{
    peer::v1::{self as peer, peer_server},
    v1,
};
use kvtier_tiers::{Error as TierError, Namespace};
use tonic::{Request, Response, Status};

use super::requests::{deadline_of, if_version_of, peer_of, serving};
use crate::{
    objects::{CommitIf, ObjectInfo, Objects},
    wire::{Outcome, durability_from_wire, pieces, status_of},
};

/// Serves a member's object requests from this node's catalog.
#[derive(Debug, Clone)]
pub struct PeerService {
    objects: Objects,
    /// The largest piece of a chunk one message carries (`server.chunk_size`).
    chunk_size: usize,
}

impl PeerService {
    /// Serves `objects`' catalog to its cluster's members, chunks in messages of at most
    /// `chunk_size` bytes.
    pub fn new(objects: Objects, chunk_size: usize) -> Self {
        PeerService { objects, chunk_size }
    }

    /// Refuses a caller that is not a member; the namespace the request names.
    async fn check<T>(&self, request: &Request<T>, op: &str) -> Result<Namespace, Status>
    where
        T: HasNamespace,
    {
        self.check_member(request, op).await?;
        Namespace::new(request.get_ref().namespace()).map_err(|e| status_of(&e))
    }
}

/// Requests that name a namespace.
trait HasNamespace {
    fn namespace(&self) -> &str;
}

impl HasNamespace for peer::CommitObjectRequest {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}
impl HasNamespace for v1::ObjectRef {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}
impl HasNamespace for peer::ForgetObjectRequest {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}
impl HasNamespace for peer::StagePartsRequest {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}
impl HasNamespace for peer::FetchChunkRequest {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}
impl HasNamespace for v1::ListObjectsRequest {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl PeerService {
    /// Refuses a caller that is not a member (for requests that name no namespace).
    async fn check_member<T>(&self, request: &Request<T>, op: &str) -> Result<(), Status> {
        if request.metadata().get(kvtier_client::PEER_HEADER).is_none() {
            return Err(Status::permission_denied("the peer service answers cluster members only"));
        }
        serving(self.objects.node(), request).await?;
        self.objects.node().metrics().requests.with_label_values(&[op]).inc();
        Ok(())
    }
}

/// An answer naming `keys`.
fn keys_answer(keys: &[kvtier_tiers::BlockKey]) -> Response<peer::FlushedRequest> {
    Response::new(peer::FlushedRequest { keys: keys.iter().map(crate::cluster::key_to_wire).collect() })
}

/// Keys a member sent.
fn keys_from_wire(keys: &[peer::KeyRef]) -> Result<Vec<kvtier_tiers::BlockKey>, Status> {
    keys.iter()
        .map(|k| crate::cluster::key_from_wire(&k.namespace, &k.key))
        .collect::<Option<_>>()
        .ok_or_else(|| Status::invalid_argument("a malformed key"))
}

/// A manifest a member sent.
fn parse_manifest(manifest: Option<peer::Manifest>) -> Result<ObjectInfo, Status> {
    let json = manifest.map(|m| m.json).unwrap_or_default();
    serde_json::from_slice(&json).map_err(|e| Status::invalid_argument(format!("the manifest does not parse: {e}")))
}

fn manifest(info: &ObjectInfo) -> peer::Manifest {
    peer::Manifest { json: Bytes::from(serde_json::to_vec(info).expect("serializes")) }
}

#[tonic::async_trait]
impl peer_server::Peer for PeerService {
    async fn commit_object(
        &self,
        request: Request<peer::CommitObjectRequest>,
    ) -> Result<Response<peer::Manifest>, Status> {
        let ns = self.check(&request, "peer_commit_object").await?;
        let req = request.into_inner();
        let durability = durability_from_wire(req.durability)?;
        let info = parse_manifest(req.manifest)?;
        let condition = CommitIf::from_wire(req.if_absent, req.if_generation, req.if_crc32c);
        let committed = self
            .objects
            .commit_here(&ns, info, durability, condition, req.deadline_unix_ms)
            .await
            .map_err(|e| Outcome::of_commit(&e).mark(status_of(&e)))?;
        Ok(Response::new(committed.as_ref().map(manifest).unwrap_or_default()))
    }

    async fn stat_object(&self, request: Request<v1::ObjectRef>) -> Result<Response<peer::Manifest>, Status> {
        let ns = self.check(&request, "peer_stat_object").await?;
        let found = self.objects.version_here(&ns, &request.get_ref().path);
        Ok(Response::new(found.as_ref().map(manifest).unwrap_or_default()))
    }

    async fn list_objects(
        &self,
        request: Request<v1::ListObjectsRequest>,
    ) -> Result<Response<peer::Manifests>, Status> {
        let ns = self.check(&request, "peer_list_objects").await?;
        let found = self.objects.list_versions_here(&ns, &request.get_ref().prefix, |p| self.objects.owns_path(&ns, p));
        Ok(Response::new(peer::Manifests { manifests: found.iter().map(manifest).collect() }))
    }

    async fn delete_object(
        &self,
        request: Request<v1::ObjectRef>,
    ) -> Result<Response<v1::DeleteObjectResponse>, Status> {
        let ns = self.check(&request, "peer_delete_object").await?;
        let path = &request.get_ref().path;
        if path.is_empty() {
            return Err(status_of(&NodeError::Tier(TierError::InvalidKey { reason: "an empty object path".into() })));
        }
        let deadline = deadline_of(&request).map(crate::clock::unix_ms);
        let condition = if_version_of(&request);
        let deleted = self
            .objects
            .delete_object_here(&ns, path, deadline, condition)
            .await
            .map_err(|e| Outcome::of_commit(&e).mark(status_of(&e)))?;
        Ok(Response::new(v1::DeleteObjectResponse { deleted }))
    }

    async fn forget_object(
        &self,
        request: Request<peer::ForgetObjectRequest>,
    ) -> Result<Response<v1::DeleteObjectResponse>, Status> {
        let ns = self.check(&request, "peer_forget_object").await?;
        let req = request.into_inner();
        let deleted = self.objects.forget_object_here(&ns, &req.path, req.generation).await;
        Ok(Response::new(v1::DeleteObjectResponse { deleted }))
    }

    async fn flushed(&self, request: Request<peer::FlushedRequest>) -> Result<Response<peer::FlushedResponse>, Status> {
        self.check_member(&request, "peer_flushed").await?;
        let keys = keys_from_wire(&request.get_ref().keys)?;
        let crcs = request.get_ref().keys.iter().map(|k| k.crc32c);
        let keys: Vec<_> = keys.into_iter().zip(crcs).collect();
        self.objects.node().flushed_elsewhere(&keys).await;
        Ok(Response::new(peer::FlushedResponse {}))
    }

    async fn stage_parts(
        &self,
        request: Request<peer::StagePartsRequest>,
    ) -> Result<Response<peer::StagePartsResponse>, Status> {
        let ns = self.check(&request, "peer_stage_parts").await?;
        let req = request.into_inner();
        let info = parse_manifest(req.manifest)?;
        let upload = kvtier_tiers::Upload { name: req.name, id: req.upload };
        let part_ids =
            self.objects.stage_parts_here(&ns, &info, &upload, &req.parts).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(peer::StagePartsResponse { part_ids }))
    }

    type FetchChunkStream = Pin<Box<dyn futures::Stream<Item = Result<peer::FetchChunkResponse, Status>> + Send>>;

    async fn fetch_chunk(
        &self,
        request: Request<peer::FetchChunkRequest>,
    ) -> Result<Response<Self::FetchChunkStream>, Status> {
        let ns = self.check(&request, "peer_fetch_chunk").await?;
        let reader = peer_of(&request).unwrap_or_default();
        let req = request.into_inner();
        let info = parse_manifest(req.manifest)?;
        if req.index >= info.chunks() {
            return Err(Status::invalid_argument(format!("{}: no chunk {}", info.path, req.index)));
        }
        let (found, keep) = self.objects.fetch_chunk_for(&ns, &info, req.index, &reader).await;
        let first = peer::FetchChunkResponse { found: found.is_some(), data: Bytes::new(), keep };
        let rest = found.into_iter().flat_map(|data| pieces(data, self.chunk_size));
        let msgs: Vec<_> = std::iter::once(first)
            .chain(rest.map(|data| peer::FetchChunkResponse { data, ..Default::default() }))
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(msgs))))
    }

    async fn in_blob(&self, request: Request<peer::FlushedRequest>) -> Result<Response<peer::FlushedRequest>, Status> {
        self.check_member(&request, "peer_in_blob").await?;
        let keys = keys_from_wire(&request.get_ref().keys)?;
        Ok(keys_answer(&self.objects.in_blob_here(&keys)))
    }

    async fn chunks_named(
        &self,
        request: Request<peer::FlushedRequest>,
    ) -> Result<Response<peer::FlushedRequest>, Status> {
        self.check_member(&request, "peer_chunks_named").await?;
        let keys = keys_from_wire(&request.get_ref().keys)?;
        Ok(keys_answer(&self.objects.chunks_named_here(&keys)))
    }

    async fn offer(&self, request: Request<peer::FlushedRequest>) -> Result<Response<peer::FlushedRequest>, Status> {
        self.check_member(&request, "peer_offer").await?;
        let keys = keys_from_wire(&request.get_ref().keys)?;
        let offered: Vec<_> = keys.into_iter().zip(request.get_ref().keys.iter().map(|k| k.unflushed)).collect();
        Ok(keys_answer(&self.objects.node().wanted(&offered)))
    }

    async fn digests(&self, request: Request<peer::DigestsRequest>) -> Result<Response<peer::DigestsResponse>, Status> {
        self.check_member(&request, "peer_digests").await?;
        let digests = self.objects.node().owned_digests(&request.get_ref().node);
        let buckets = digests.into_iter().map(|d| peer::BucketDigest { count: d.count, xor: d.xor }).collect();
        Ok(Response::new(peer::DigestsResponse { buckets }))
    }

    async fn owned_keys(
        &self,
        request: Request<peer::OwnedKeysRequest>,
    ) -> Result<Response<peer::OwnedKeysResponse>, Status> {
        self.check_member(&request, "peer_owned_keys").await?;
        let req = request.get_ref();
        if req.bucket as usize >= crate::cluster::BUCKETS {
            return Err(Status::invalid_argument(format!("bucket {} of {}", req.bucket, crate::cluster::BUCKETS)));
        }
        let listed = if req.held_not_owned {
            self.objects.node().held_for(&req.node)
        } else {
            self.objects.node().owned_keys(&req.node, req.bucket as usize)
        };
        let keys = listed
            .into_iter()
            .map(|k| peer::KeyRef { unflushed: self.objects.node().unflushed(&k), ..crate::cluster::key_to_wire(&k) })
            .collect();
        Ok(Response::new(peer::OwnedKeysResponse { keys }))
    }
}
