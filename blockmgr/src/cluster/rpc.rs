//! What members ask each other besides block puts, gets and deletes: objects' metadata
//! (commit on a path's primary, stat, list, delete, retire), resync's digests and key
//! lists, and the flush's and exports' hand-offs. Each is one `Peer` RPC under the peer
//! timeout (see [`Cluster::call`]).

use kvtier_proto::{peer::v1 as peer, v1};
use kvtier_tiers::BlockKey;

use super::{Cluster, Digest, PeerError, key_from_wire, key_to_wire};
use crate::Durability;

/// Object metadata between members: manifests travel as their stored JSON.
impl Cluster {
    /// Commits an object version on member `id` (its path's primary); the manifest stored.
    pub(crate) async fn commit_object_on(
        &self,
        id: &str,
        namespace: &str,
        manifest: Vec<u8>,
        durability: Durability,
        condition: kvtier_types::CommitIf,
    ) -> Result<Option<Vec<u8>>, PeerError> {
        // Past the wait below this node asks the next owner: the primary must not commit later.
        let deadline = std::time::SystemTime::now() + self.timeout;
        let (if_absent, if_generation, if_crc32c) = condition.to_wire();
        let req = peer::CommitObjectRequest {
            namespace: namespace.into(),
            manifest: Some(peer::Manifest { json: manifest.into() }),
            durability: crate::wire::durability_to_wire(durability) as i32,
            if_absent,
            deadline_unix_ms: Some(crate::clock::unix_ms(deadline)),
            if_generation,
            if_crc32c,
        };
        let got = self
            .call(id, "commit_object", |c| async move { Ok(c.peer_rpc().commit_object(c.request(req)).await?) })
            .await?;
        let json = got.into_inner().json;
        Ok((!json.is_empty()).then(|| json.to_vec()))
    }

    /// The current manifest of `path` as member `id` knows it.
    pub(crate) async fn stat_object_on(
        &self,
        id: &str,
        namespace: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, PeerError> {
        let req = v1::ObjectRef { namespace: namespace.into(), path: path.into() };
        let got = self
            .call(id, "stat_object", |c| async move { Ok(c.peer_rpc().stat_object(c.request(req)).await?) })
            .await?;
        let json = got.into_inner().json;
        Ok((!json.is_empty()).then(|| json.to_vec()))
    }

    /// The manifests under `prefix` of the paths member `id` owns.
    pub(crate) async fn list_objects_on(
        &self,
        id: &str,
        namespace: &str,
        prefix: &str,
    ) -> Result<Vec<Vec<u8>>, PeerError> {
        let req = v1::ListObjectsRequest { namespace: namespace.into(), prefix: prefix.into() };
        let got = self
            .call(id, "list_objects", |c| async move { Ok(c.peer_rpc().list_objects(c.request(req)).await?) })
            .await?;
        Ok(got.into_inner().manifests.into_iter().map(|m| m.json.to_vec()).collect())
    }

    /// Deletes `path` on member `id` (its primary): whether it existed.
    pub(crate) async fn delete_object_on(
        &self,
        id: &str,
        namespace: &str,
        path: &str,
        condition: kvtier_types::CommitIf,
    ) -> Result<bool, PeerError> {
        let req = v1::ObjectRef { namespace: namespace.into(), path: path.into() };
        let version = match condition {
            kvtier_types::CommitIf::Current { generation, crc32c } => Some(format!("{generation}.{crc32c}")),
            _ => None,
        };
        // Past the wait below this node asks the next owner: the primary must not delete
        // later (over a version committed meanwhile).
        let deadline = crate::clock::unix_ms(std::time::SystemTime::now() + self.timeout).to_string();
        let got = self
            .call(id, "delete_object", |c| async move {
                let mut request = c.request(req);
                request.metadata_mut().insert(kvtier_client::DEADLINE_HEADER, deadline.parse().expect("digits"));
                if let Some(v) = version {
                    request.metadata_mut().insert(kvtier_client::IF_VERSION_HEADER, v.parse().expect("digits"));
                }
                Ok(c.peer_rpc().delete_object(request).await?)
            })
            .await?;
        Ok(got.into_inner().deleted)
    }

    /// Asks member `id` to retire `generation` of `path` without its chunks.
    pub(crate) async fn forget_object_on(
        &self,
        id: &str,
        namespace: &str,
        path: &str,
        generation: u64,
    ) -> Result<bool, PeerError> {
        let req = peer::ForgetObjectRequest { namespace: namespace.into(), path: path.into(), generation };
        let got = self
            .call(id, "forget_object", |c| async move { Ok(c.peer_rpc().forget_object(c.request(req)).await?) })
            .await?;
        Ok(got.into_inner().deleted)
    }
}

/// Resync between members.
impl Cluster {
    /// Member `id`'s digests of the keys it holds that `node` owns.
    pub(crate) async fn digests_on(&self, id: &str, node: &str) -> Result<Vec<Digest>, PeerError> {
        let req = peer::DigestsRequest { node: node.into() };
        let got = self.call(id, "digests", |c| async move { Ok(c.peer_rpc().digests(c.request(req)).await?) }).await?;
        Ok(got.into_inner().buckets.into_iter().map(|b| Digest { count: b.count, xor: b.xor }).collect())
    }

    /// The keys member `id` keeps (on disk or as write-back) that `node` owns and `id` does
    /// not, each with whether it is a write-back block Blob lacks.
    pub(crate) async fn held_for_on(&self, id: &str, node: &str) -> Result<Vec<(BlockKey, bool)>, PeerError> {
        self.list_keys_on(id, peer::OwnedKeysRequest { node: node.into(), bucket: 0, held_not_owned: true }).await
    }

    /// The keys of `bucket` member `id` holds that `node` and `id` both own, each with
    /// whether it is a write-back block Blob lacks.
    pub(crate) async fn owned_keys_on(
        &self,
        id: &str,
        node: &str,
        bucket: usize,
    ) -> Result<Vec<(BlockKey, bool)>, PeerError> {
        self.list_keys_on(
            id,
            peer::OwnedKeysRequest { node: node.into(), bucket: bucket as u32, held_not_owned: false },
        )
        .await
    }

    async fn list_keys_on(&self, id: &str, req: peer::OwnedKeysRequest) -> Result<Vec<(BlockKey, bool)>, PeerError> {
        let got =
            self.call(id, "owned_keys", |c| async move { Ok(c.peer_rpc().owned_keys(c.request(req)).await?) }).await?;
        got.into_inner()
            .keys
            .into_iter()
            .map(|k| {
                let key = key_from_wire(&k.namespace, &k.key)
                    .ok_or_else(|| PeerError::protocol(id, format!("{id} listed a malformed key")))?;
                Ok((key, k.unflushed))
            })
            .collect()
    }
}

/// Flush hand-off between owners.
impl Cluster {
    /// Tells member `id` that Blob has these write-back blocks (with the CRC-32C of the
    /// bytes it has, when known).
    pub(crate) async fn flushed_on(&self, id: &str, keys: &[(BlockKey, Option<u32>)]) -> Result<(), PeerError> {
        let keys = keys.iter().map(|(k, crc32c)| peer::KeyRef { crc32c: *crc32c, ..key_to_wire(k) }).collect();
        let req = peer::FlushedRequest { keys };
        self.call(id, "flushed", |c| async move { Ok(c.peer_rpc().flushed(c.request(req)).await?) }).await?;
        Ok(())
    }

    /// Which of `keys` member `id` lacks and owns (`Peer/Offer`, the handoff); each with
    /// whether it is a write-back block Blob lacks.
    pub(crate) async fn offer_to(&self, id: &str, keys: &[(BlockKey, bool)]) -> Result<Vec<BlockKey>, PeerError> {
        let keys = keys.iter().map(|(k, unflushed)| peer::KeyRef { unflushed: *unflushed, ..key_to_wire(k) });
        let req = peer::FlushedRequest { keys: keys.collect() };
        let got = self.call(id, "offer", |c| async move { Ok(c.peer_rpc().offer(c.request(req)).await?) }).await?;
        Ok(keys_of(got))
    }

    /// Which of the chunk `keys` a manifest or an upload of member `id` names
    /// (`Peer/ChunksNamed`).
    pub(crate) async fn chunks_named_on(&self, id: &str, keys: &[BlockKey]) -> Result<Vec<BlockKey>, PeerError> {
        let req = keys_request(keys);
        let got = self
            .call(id, "chunks_named", |c| async move { Ok(c.peer_rpc().chunks_named(c.request(req)).await?) })
            .await?;
        Ok(keys_of(got))
    }

    /// Which of `keys` member `id` knows Blob has (`Peer/InBlob`).
    pub(crate) async fn in_blob_on(&self, id: &str, keys: &[BlockKey]) -> Result<Vec<BlockKey>, PeerError> {
        let req = keys_request(keys);
        let got = self.call(id, "in_blob", |c| async move { Ok(c.peer_rpc().in_blob(c.request(req)).await?) }).await?;
        Ok(keys_of(got))
    }

    /// Asks member `id`, a chunk's primary, for chunk `index` of the version `manifest` (its
    /// JSON) from the object's file in Blob (`None`: the file lacks it), and whether to keep
    /// it as a read replica.
    pub(crate) async fn fetch_chunk_on(
        &self,
        id: &str,
        ns: &kvtier_tiers::Namespace,
        manifest: Vec<u8>,
        index: u64,
    ) -> Result<Option<(bytes::Bytes, bool)>, PeerError> {
        let req = peer::FetchChunkRequest {
            namespace: ns.as_str().into(),
            manifest: Some(peer::Manifest { json: manifest.into() }),
            index,
        };
        self.call(id, "fetch_chunk", |c| async move {
            let mut pieces = c.peer_rpc().fetch_chunk(c.request(req)).await?.into_inner();
            let Some(first) = pieces.message().await? else { return Ok(None) };
            let mut data = bytes::BytesMut::from(first.data);
            while let Some(piece) = pieces.message().await? {
                data.extend_from_slice(&piece.data);
            }
            Ok(first.found.then_some((data.freeze(), first.keep)))
        })
        .await
    }

    /// Asks member `id` to stage `parts` of the upload of the version `manifest` (its JSON)
    /// to Blob (the fan-in); the part ids in the order asked.
    pub(crate) async fn stage_parts_on(
        &self,
        id: &str,
        ns: &kvtier_tiers::Namespace,
        manifest: Vec<u8>,
        upload: &kvtier_tiers::Upload,
        parts: &[u32],
    ) -> Result<Vec<String>, PeerError> {
        let req = peer::StagePartsRequest {
            namespace: ns.as_str().into(),
            manifest: Some(peer::Manifest { json: manifest.into() }),
            name: upload.name.clone(),
            upload: upload.id.clone(),
            parts: parts.to_vec(),
        };
        let staged = self
            .call(id, "stage_parts", |c| async move { Ok(c.peer_rpc().stage_parts(c.request(req)).await?) })
            .await?;
        let ids = staged.into_inner().part_ids;
        if ids.len() != parts.len() {
            return Err(PeerError::protocol(
                id,
                format!("{id} staged {} parts of the {} asked", ids.len(), parts.len()),
            ));
        }
        Ok(ids)
    }
}

/// `keys` as a request naming them.
fn keys_request(keys: &[BlockKey]) -> peer::FlushedRequest {
    peer::FlushedRequest { keys: keys.iter().map(key_to_wire).collect() }
}

/// The keys a member answered (those it names malformed are left out).
fn keys_of(answer: tonic::Response<peer::FlushedRequest>) -> Vec<BlockKey> {
    answer.into_inner().keys.iter().filter_map(|k| key_from_wire(&k.namespace, &k.key)).collect()
}
