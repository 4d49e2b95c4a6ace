//! Named objects through a [`Client`]: put a stream of bytes, read a range back, stat,
//! list, delete.

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use kvtier_proto::v1::{self, get_object_response::Msg as GetMsg, put_object_request::Msg as PutMsg};

use super::{Client, ClientError};
use kvtier_types::{CommitIf, Durability, wire::durability_to_wire, wire::pieces};

/// What a node knows of one object.
pub type ObjectInfo = v1::ObjectInfo;

/// Which bytes of an object to read: `length` bytes from `offset` (to the end with `None`),
/// of `generation` only if set (a reader of several ranges pins the version it started on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectRange {
    /// The first byte.
    pub offset: u64,
    /// Bytes from `offset`; `None` reads to the end.
    pub length: Option<u64>,
    /// Only this version; another current one is FAILED_PRECONDITION.
    pub generation: Option<u64>,
}

impl ObjectRange {
    /// The whole object, whatever its current generation.
    pub fn all() -> Self {
        ObjectRange::default()
    }

    /// `length` bytes from `offset`.
    pub fn bytes(offset: u64, length: u64) -> Self {
        ObjectRange { offset, length: Some(length), generation: None }
    }

    /// The same bytes, of `generation` only.
    pub fn of_generation(self, generation: u64) -> Self {
        ObjectRange { generation: Some(generation), ..self }
    }
}

impl Client {
    /// Stores a new version of `path` from `data` (pieces of any size). With `size` or
    /// `crc32c`, the server refuses (and does not commit) bytes that do not match.
    pub async fn put_object(
        &self,
        namespace: &str,
        path: &str,
        data: impl Stream<Item = Bytes> + Send + 'static,
        durability: Durability,
        size: Option<u64>,
        crc32c: Option<u32>,
    ) -> Result<ObjectInfo, ClientError> {
        let open = v1::PutObjectOpen {
            namespace: namespace.into(),
            path: path.into(),
            durability: durability_to_wire(durability) as i32,
            size,
            crc32c,
            ..Default::default()
        };
        self.send_object(open, data).await
    }

    /// [`Client::put_object`], committed only if `path`'s live version meets `condition`
    /// (decided by the path's primary: of writers racing through any nodes, one at most
    /// meets it); `None` if it did not, and nothing of this put stays. A lock, a
    /// compare-and-swap of a small file.
    pub async fn put_object_if(
        &self,
        namespace: &str,
        path: &str,
        data: impl Stream<Item = Bytes> + Send + 'static,
        durability: Durability,
        condition: CommitIf,
    ) -> Result<Option<ObjectInfo>, ClientError> {
        let (if_absent, if_generation, if_crc32c) = condition.to_wire();
        let open = v1::PutObjectOpen {
            namespace: namespace.into(),
            path: path.into(),
            durability: durability_to_wire(durability) as i32,
            if_absent,
            if_generation,
            if_crc32c,
            ..Default::default()
        };
        match self.send_object(open, data).await {
            Ok(info) => Ok(Some(info)),
            Err(ClientError::Status(s))
                if s.code() == tonic::Code::FailedPrecondition && condition != CommitIf::Any =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a put that `open` begins: `data`, then the commit.
    async fn send_object(
        &self,
        open: v1::PutObjectOpen,
        data: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Result<ObjectInfo, ClientError> {
        let chunk = self.chunk;
        let pieces = data.flat_map(move |b| futures::stream::iter(pieces(b, chunk)));
        // `commit` follows the last piece: a call cancelled before it never commits.
        let msgs = futures::stream::once(async move { PutMsg::Open(open) })
            .chain(pieces.map(PutMsg::Data))
            .chain(futures::stream::once(async { PutMsg::Commit(v1::PutObjectCommit {}) }))
            .map(|m| v1::PutObjectRequest { msg: Some(m) });
        Ok(self.objects.clone().put_object(self.request(msgs)).await?.into_inner())
    }

    /// Reads `range` of `path`: the object's info, then its bytes as they arrive.
    pub async fn get_object(
        &self,
        namespace: &str,
        path: &str,
        range: ObjectRange,
    ) -> Result<(ObjectInfo, impl Stream<Item = Result<Bytes, ClientError>> + use<>), ClientError> {
        let ObjectRange { offset, length, generation } = range;
        let req = v1::GetObjectRequest { namespace: namespace.into(), path: path.into(), offset, length, generation };
        let mut stream = self.objects.clone().get_object(self.request(req)).await?.into_inner();
        let info = match stream.message().await? {
            Some(v1::GetObjectResponse { msg: Some(GetMsg::Info(info)) }) => info,
            other => return Err(ClientError::Protocol(format!("an object read began with {other:?}, not its info"))),
        };
        let bytes = stream.map_err(ClientError::from).and_then(|m| async move {
            match m.msg {
                Some(GetMsg::Data(b)) => Ok(b),
                other => Err(ClientError::Protocol(format!("{other:?} inside an object's bytes"))),
            }
        });
        Ok((info, bytes))
    }

    /// `range` of `path` in memory, checked against the object's CRC-32C when whole.
    pub async fn read_object(&self, namespace: &str, path: &str, range: ObjectRange) -> Result<Bytes, ClientError> {
        let (info, stream) = self.get_object(namespace, path, range).await?;
        let pieces: Vec<Bytes> = stream.try_collect().await?;
        let data = Bytes::from(pieces.concat());
        if range.offset == 0 && data.len() as u64 == info.size && kvtier_tiers::crc32c(&data) != info.crc32c {
            return Err(ClientError::Protocol(format!("{path}: the bytes read do not match the object's crc32c")));
        }
        Ok(data)
    }

    /// The current version of `path`, or `None`.
    pub async fn stat_object(&self, namespace: &str, path: &str) -> Result<Option<ObjectInfo>, ClientError> {
        let r = v1::ObjectRef { namespace: namespace.into(), path: path.into() };
        match self.objects.clone().stat_object(self.request(r)).await {
            Ok(info) => Ok(Some(info.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// Objects of `namespace` whose path starts with `prefix`, sorted by path.
    pub async fn list_objects(&self, namespace: &str, prefix: &str) -> Result<Vec<ObjectInfo>, ClientError> {
        let r = v1::ListObjectsRequest { namespace: namespace.into(), prefix: prefix.into() };
        Ok(self.objects.clone().list_objects(self.request(r)).await?.into_inner().objects)
    }

    /// Removes `path`; whether it existed.
    pub async fn delete_object(&self, namespace: &str, path: &str) -> Result<bool, ClientError> {
        let r = v1::ObjectRef { namespace: namespace.into(), path: path.into() };
        Ok(self.objects.clone().delete_object(self.request(r)).await?.into_inner().deleted)
    }
}
