//! kvtier's objects behind the `s3s` crate (S3's routing, DTOs, errors and SigV4 over a
//! trait): PutObject and GetObject only, over the same node and the same object calls as
//! kvtier's own endpoint (connectors/s3), doing the same work per request (SigV4 with the
//! signed payload's SHA-256 checked, the body's MD5 as its ETag). What `kvtier-bench s3`
//! measures to decide between building the endpoint on s3s and the hand-written one
//! (issue 18): the difference between the two is the framework's.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use futures::StreamExt;
use kvtier_blockmgr::Durability;
use kvtier_tiers::Namespace;
use md5::Digest;
use s3s::{
    S3, S3Request, S3Response, S3Result,
    dto::{ETag, GetObjectInput, GetObjectOutput, PutObjectInput, PutObjectOutput, StreamingBlob},
    s3_error,
};

/// Where objects of bucket `b` live, as kvtier's endpoint keeps them: namespace
/// `<prefix>/<b>`, path `o/<key>`, the MD5 ETag in the `etag` attribute.
struct Objects {
    manager: kvtier_blockmgr::Objects,
    prefix: String,
}

fn failed(e: impl std::fmt::Display) -> s3s::S3Error {
    s3_error!(InternalError, "{e}")
}

#[async_trait::async_trait]
impl S3 for Objects {
    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let ns = format!("{}/{}", self.prefix, input.bucket);
        let mut w =
            self.manager.write_object(&ns, &format!("o/{}", input.key), Durability::LocalDisk).map_err(failed)?;
        let mut body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let mut md5 = md5::Md5::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
            md5.update(&chunk);
            w.write(&chunk).await.map_err(failed)?;
        }
        let etag = hex::encode(md5.finalize());
        w.set_attributes([("etag".to_string(), etag.clone())].into());
        w.commit().await.map_err(failed)?;
        Ok(S3Response::new(PutObjectOutput { e_tag: Some(ETag::Strong(etag)), ..Default::default() }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let ns = format!("{}/{}", self.prefix, input.bucket);
        let path = format!("o/{}", input.key);
        let info = self.manager.stat_object(&ns, &path).await.map_err(failed)?.ok_or_else(|| s3_error!(NoSuchKey))?;
        let namespace = Namespace::new(&ns).map_err(failed)?;
        let stream =
            Shareable(std::sync::Mutex::new(Box::pin(self.manager.read_object(&namespace, &info, 0, info.size))));
        let etag = info.attributes().get("etag").cloned().unwrap_or_default();
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some(info.size as i64),
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }
}

/// A stream s3s can take (it asks for `Sync`; one poller at a time needs no lock: `get_mut`).
struct Shareable<S>(std::sync::Mutex<S>);

impl<S: futures::Stream + Unpin> futures::Stream for Shareable<S> {
    type Item = S::Item;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let inner = self.get_mut().0.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::pin::Pin::new(inner).poll_next_unpin(cx)
    }
}

/// An s3s endpoint over `manager` (buckets under namespace prefix `prefix`), signed with
/// `key`, served on a free local port until the returned task is aborted.
pub(crate) async fn serve(
    manager: kvtier_blockmgr::Objects,
    prefix: &str,
    key: (&str, &str),
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let mut builder = s3s::service::S3ServiceBuilder::new(Objects { manager, prefix: prefix.to_string() });
    builder.set_auth(s3s::auth::SimpleAuth::from_single(key.0, key.1));
    let service = axum::error_handling::HandleError::new(builder.build(), |e: s3s::HttpError| async move {
        (http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}"))
    });
    let app = axum::Router::new().fallback_service(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the s3s endpoint")?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("s3: the s3s endpoint failed: {e}");
        }
    });
    Ok((addr, task))
}
