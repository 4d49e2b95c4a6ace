//! Multipart uploads: an upload is a marker object `u/<id>` (holding the key), its parts the
//! objects `u/<id>/<part number>`, replicated and tiered as any (written as parts: a
//! write-back part is not exported to Blob on its own). Completing one joins the parts the
//! client lists into the object without copying a byte (objects/join.rs: the object adopts
//! their chunks, so parts staged by many writers through many nodes become one object, and
//! its file in Blob is staged from them by their owners: the fan-in), then removes the parts
//! it did not list.
//!
//! Of a completion and an abort (or two completions) racing for one upload, the one that
//! deletes the marker goes on; the other finds no upload. A part that lands after its
//! upload was claimed deletes itself.

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;

use super::{
    server::{OBJECT_PREFIX, S3, err, etag, internal, no_such_bucket},
    xml::{self, S3Error},
};

/// Largest CompleteMultipartUpload document read (10000 parts fit in ~1 MiB).
const MAX_COMPLETE_XML: usize = 2 << 20;

fn marker(id: &str) -> String {
    format!("u/{id}")
}

fn part_path(id: &str, n: u32) -> String {
    format!("u/{id}/{n:05}")
}

fn no_such_upload(id: &str) -> S3Error {
    err(StatusCode::NOT_FOUND, "NoSuchUpload", format!("no upload {id:?} in progress"))
}

/// The `(PartNumber, ETag)` pairs of a CompleteMultipartUpload document, in order.
fn parse_complete(doc: &str) -> Result<Vec<(u32, String)>, S3Error> {
    let malformed = |why: &str| err(StatusCode::BAD_REQUEST, "MalformedXML", why.to_string());
    let body = doc.split_once("<CompleteMultipartUpload").ok_or_else(|| malformed("no CompleteMultipartUpload"))?.1;
    let body = body.split_once("</CompleteMultipartUpload>").ok_or_else(|| malformed("unclosed document"))?.0;
    let value = |part: &str, tag: &str| -> Option<String> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let (_, rest) = part.split_once(&open)?;
        Some(rest.split_once(&close)?.0.trim().to_string())
    };
    let mut parts = Vec::new();
    for chunk in body.split("<Part>").skip(1) {
        let chunk = chunk.split_once("</Part>").ok_or_else(|| malformed("unclosed Part"))?.0;
        let n =
            value(chunk, "PartNumber").and_then(|n| n.parse::<u32>().ok()).ok_or_else(|| malformed("PartNumber"))?;
        let tag = value(chunk, "ETag").ok_or_else(|| malformed("ETag"))?;
        parts.push((n, tag.replace("&quot;", "\"")));
    }
    if parts.is_empty() {
        return Err(malformed("no Part"));
    }
    Ok(parts)
}

impl S3 {
    /// The upload `id` of `key`, checked: it exists and is for this key.
    async fn check_upload(&self, bucket: &str, key: &str, id: &str) -> Result<(), S3Error> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(no_such_upload(id));
        }
        let ns = self.namespace(bucket);
        let info =
            self.manager.stat_object(&ns, &marker(id)).await.map_err(internal)?.ok_or_else(|| no_such_upload(id))?;
        let ns_ = kvtier_tiers::Namespace::new(&ns).map_err(internal)?;
        let mut stream = std::pin::pin!(self.manager.read_object(&ns_, &info, 0, info.size));
        let mut stored = Vec::new();
        while let Some(c) = stream.next().await {
            stored.extend_from_slice(&c.map_err(internal)?);
        }
        if stored != key.as_bytes() {
            return Err(no_such_upload(id));
        }
        Ok(())
    }

    pub(super) async fn create_upload(&self, bucket: &str, key: &str) -> Result<Response, S3Error> {
        if !self.bucket_exists(bucket).await? {
            return Err(no_such_bucket(bucket));
        }
        let id = hex::encode(rand::random::<[u8; 16]>());
        // Written as a part: the marker is bookkeeping, never exported to Blob.
        let mut w =
            self.manager.write_part(&self.namespace(bucket), &marker(&id), self.durability).map_err(internal)?;
        w.write(key.as_bytes()).await.map_err(internal)?;
        w.commit().await.map_err(internal)?;
        Ok(xml::document(format!(
            "<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket>\
             <Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
            xml::escape(bucket),
            xml::escape(key)
        )))
    }

    #[expect(clippy::too_many_arguments, reason = "one request's parts")]
    pub(super) async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        n: u32,
        headers: &HeaderMap,
        body: Body,
        payload_hash: &str,
    ) -> Result<Response, S3Error> {
        self.check_upload(bucket, key, id).await?;
        let (ns, path) = (self.namespace(bucket), part_path(id, n));
        let writer = self.manager.write_part(&ns, &path, self.durability).map_err(internal)?;
        let info = self.receive_body(writer, headers, body, payload_hash).await?.commit().await.map_err(internal)?;
        // Completed or aborted meanwhile: this part would belong to nothing.
        if self.manager.stat_object(&ns, &marker(id)).await.map_err(internal)?.is_none() {
            let _ = self.manager.delete_object(&ns, &path).await;
            return Err(no_such_upload(id));
        }
        let mut r = StatusCode::OK.into_response();
        r.headers_mut().insert(header::ETAG, etag(&info).parse().expect("hex"));
        Ok(r)
    }

    pub(super) async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        body: Body,
    ) -> Result<Response, S3Error> {
        self.check_upload(bucket, key, id).await?;
        let doc = axum::body::to_bytes(body, MAX_COMPLETE_XML)
            .await
            .map_err(|_| err(StatusCode::BAD_REQUEST, "MalformedXML", "the document is too large or cut short"))?;
        let doc = std::str::from_utf8(&doc).map_err(|_| err(StatusCode::BAD_REQUEST, "MalformedXML", "not UTF-8"))?;
        let listed = parse_complete(doc)?;
        if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(err(StatusCode::BAD_REQUEST, "InvalidPartOrder", "parts must be listed in ascending order"));
        }
        let ns = self.namespace(bucket);
        let mut parts = Vec::with_capacity(listed.len());
        for (n, tag) in &listed {
            let info = self.manager.stat_object(&ns, &part_path(id, *n)).await.map_err(internal)?;
            match info {
                Some(info) if etag(&info) == *tag || etag(&info).trim_matches('"') == tag.trim_matches('"') => {
                    parts.push(info)
                }
                _ => {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "InvalidPart",
                        format!("part {n} with ETag {tag} was not uploaded"),
                    ));
                }
            }
        }
        if let Some(small) = parts[..parts.len() - 1].iter().position(|p| p.size < kvtier_tiers::MIN_PART) {
            let what = format!(
                "part {} is {} bytes; every part but the last must be at least 5 MiB",
                listed[small].0, parts[small].size
            );
            return Err(err(StatusCode::BAD_REQUEST, "EntityTooSmall", what));
        }
        // Claim the upload: a racing completion or abort now finds none.
        if !self.manager.delete_object(&ns, &marker(id)).await.map_err(internal)? {
            return Err(no_such_upload(id));
        }
        let path = format!("{OBJECT_PREFIX}{key}");
        let joined = self.manager.join_parts(&ns, &path, &parts, self.durability).await;
        self.remove_upload(&ns, id).await; // the parts not listed
        let info = joined.map_err(internal)?;
        Ok(xml::document(format!(
            "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket>\
             <Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
            xml::escape(bucket),
            xml::escape(key),
            xml::escape(&etag(&info))
        )))
    }

    pub(super) async fn abort_upload(&self, bucket: &str, key: &str, id: &str) -> Result<Response, S3Error> {
        self.check_upload(bucket, key, id).await?;
        self.remove_upload(&self.namespace(bucket), id).await;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// Deletes an upload's parts, then its marker.
    async fn remove_upload(&self, ns: &str, id: &str) {
        let parts = self.manager.list_objects(ns, &format!("{}/", marker(id))).await.unwrap_or_default();
        for p in parts {
            if let Err(e) = self.manager.delete_object(ns, &p.path).await {
                tracing::warn!(path = p.path, error = %e, "deleting a multipart part failed");
            }
        }
        let _ = self.manager.delete_object(ns, &marker(id)).await;
    }
}

/// Removes, every quarter of `s3.stale_uploads_expiry` (at most an hour apart), the uploads
/// of every bucket begun longer than that ago: each claimed as a completion would claim it
/// (so one racing completion or a sweep on another node wins), then its parts deleted.
pub(super) async fn sweep_stale_uploads(s3: std::sync::Arc<S3>) {
    let expiry = s3.config.stale_uploads_expiry;
    if expiry.is_zero() {
        return;
    }
    let every = (expiry / 4).clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(3600));
    loop {
        tokio::time::sleep(every).await;
        match s3.remove_stale_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "s3: removed multipart uploads past stale_uploads_expiry"),
            Err(e) => tracing::warn!(error = %e.message, "s3: sweeping stale multipart uploads failed"),
        }
    }
}

impl S3 {
    /// The uploads begun more than `stale_uploads_expiry` ago, removed: how many.
    async fn remove_stale_uploads(&self) -> Result<usize, S3Error> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let expiry = self.config.stale_uploads_expiry.as_secs();
        let mut removed = 0;
        for (bucket, _) in self.buckets().await? {
            let ns = self.namespace(&bucket);
            let uploads = self.manager.list_objects(&ns, "u/").await.map_err(internal)?;
            for upload in uploads {
                let Some(id) = upload.path.strip_prefix("u/").filter(|id| !id.contains('/')) else { continue };
                if now.saturating_sub(upload.created_unix) < expiry {
                    continue;
                }
                if self.manager.delete_object(&ns, &upload.path).await.map_err(internal)? {
                    self.remove_upload(&ns, id).await;
                    self.manager.metrics().s3_uploads_expired.inc();
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_documents_parse_and_malformed_ones_are_named() {
        let doc = "<?xml version=\"1.0\"?><CompleteMultipartUpload xmlns=\"x\"><Part><ETag>&quot;ab&quot;</ETag>\
                   <PartNumber>1</PartNumber></Part><Part><PartNumber>2</PartNumber><ETag>\"cd\"</ETag></Part>\
                   </CompleteMultipartUpload>";
        assert_eq!(parse_complete(doc).unwrap(), vec![(1, "\"ab\"".into()), (2, "\"cd\"".into())]);
        for bad in [
            "",
            "<CompleteMultipartUpload>",
            "<CompleteMultipartUpload></CompleteMultipartUpload>",
            "<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>",
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
        ] {
            assert_eq!(parse_complete(bad).unwrap_err().code, "MalformedXML", "{bad}");
        }
    }
}
