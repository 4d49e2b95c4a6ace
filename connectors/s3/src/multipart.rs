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

use kvtier_blockmgr::objects::{CommitIf, ObjectInfo};

use super::{
    server::{ETAG_ATTRIBUTE, OBJECT_PREFIX, PARTS_ATTRIBUTE, S3, commit_failed, err, etag, internal, no_such_bucket},
    upload_checksum::{self, NamedPart, UploadChecksum},
    xml::{self, S3Error},
};

/// Largest CompleteMultipartUpload document read (10000 parts fit in ~1 MiB).
const MAX_COMPLETE_XML: usize = 2 << 20;

pub(super) fn marker(id: &str) -> String {
    format!("u/{id}")
}

fn part_path(id: &str, n: u32) -> String {
    format!("u/{id}/{n:05}")
}

/// The attribute a completed object keeps its upload's id as: a completion retried after
/// its answer was lost gets that answer again, as S3 gives it, not `NoSuchUpload`.
const UPLOAD_ATTRIBUTE: &str = "upload-id";

/// CompleteMultipartUpload's answer for `info`, the object it made.
fn completion(bucket: &str, key: &str, info: &ObjectInfo) -> Response {
    xml::document(format!(
        "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket>\
         <Key>{}</Key><ETag>{}</ETag>{}</CompleteMultipartUploadResult>",
        xml::escape(bucket),
        xml::escape(key),
        xml::escape(&etag(info)),
        upload_checksum::elements(info),
    ))
}

/// A part a CompleteMultipartUpload lists: its number, ETag, and checksum (algorithm, value).
type Listed = (u32, String, Option<(String, String)>);

fn no_such_upload(id: &str) -> S3Error {
    err(StatusCode::NOT_FOUND, "NoSuchUpload", format!("no upload {id:?} in progress"))
}

/// The parts a CompleteMultipartUpload document lists, in order.
fn parse_complete(doc: &str) -> Result<Vec<Listed>, S3Error> {
    let malformed = |why: &str| err(StatusCode::BAD_REQUEST, "MalformedXML", why.to_string());
    let doc = xml::parse_document(doc, "CompleteMultipartUpload", "Part")?;
    let mut parts = Vec::with_capacity(doc.records.len());
    for part in doc.records {
        let n =
            part.get("PartNumber").and_then(|n| n.trim().parse::<u32>().ok()).ok_or_else(|| malformed("PartNumber"))?;
        let tag = part.get("ETag").ok_or_else(|| malformed("ETag"))?.trim().to_string();
        parts.push((n, tag, upload_checksum::listed(&part)));
    }
    if parts.is_empty() {
        return Err(malformed("no Part"));
    }
    Ok(parts)
}

impl S3 {
    /// The upload `id` of `key`, checked: it exists and is for this key.
    /// Upload `id` of `key` in `bucket`, in progress: its marker (which keeps the metadata
    /// CreateMultipartUpload was given), or `NoSuchUpload`.
    pub(super) async fn check_upload(&self, bucket: &str, key: &str, id: &str) -> Result<ObjectInfo, S3Error> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(no_such_upload(id));
        }
        let ns = self.namespace(bucket);
        let info =
            self.objects.stat_object(&ns, &marker(id)).await.map_err(internal)?.ok_or_else(|| no_such_upload(id))?;
        match self.upload_key(&ns, &info).await {
            Some(stored) if stored == key => Ok(info),
            _ => Err(no_such_upload(id)),
        }
    }

    /// The key upload marker `info` holds; `None` if it cannot be read (removed meanwhile).
    pub(super) async fn upload_key(&self, ns: &str, info: &ObjectInfo) -> Option<String> {
        let namespace = kvtier_tiers::Namespace::new(ns).ok()?;
        let mut stream = std::pin::pin!(self.objects.read_object(&namespace, info, 0, info.size));
        let mut stored = Vec::new();
        while let Some(c) = stream.next().await {
            stored.extend_from_slice(&c.ok()?);
        }
        String::from_utf8(stored).ok()
    }

    /// A part just stored at `path` stays only if upload `id` is still open: one completed
    /// or aborted meanwhile would leave it belonging to nothing, so it is deleted.
    async fn keep_part(&self, ns: &str, id: &str, path: &str) -> Result<(), S3Error> {
        if self.objects.stat_object(ns, &marker(id)).await.map_err(internal)?.is_none() {
            let _ = self.objects.delete_object(ns, path).await;
            return Err(no_such_upload(id));
        }
        Ok(())
    }

    pub(super) async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: &HeaderMap,
    ) -> Result<Response, S3Error> {
        // The object's metadata and its checksum's algorithm, kept on the upload's marker
        // until the completion.
        let mut attributes = super::metadata::from_request(headers)?;
        let checksum = UploadChecksum::from_create(headers)?;
        if let Some(c) = &checksum {
            c.keep(&mut attributes);
        }
        if !self.bucket_exists(bucket).await? {
            return Err(no_such_bucket(bucket));
        }
        let id = hex::encode(rand::random::<[u8; 16]>());
        // Written as a part: the marker is bookkeeping, never exported to Blob.
        let mut w =
            self.objects.write_part(&self.namespace(bucket), &marker(&id), self.durability).map_err(internal)?;
        w.write(key.as_bytes()).await.map_err(internal)?;
        w.set_attributes(attributes);
        w.commit().await.map_err(internal)?;
        let mut r = xml::document(format!(
            "<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket>\
             <Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
            xml::escape(bucket),
            xml::escape(key)
        ));
        if let Some(c) = &checksum {
            c.answer(r.headers_mut());
        }
        Ok(r)
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
        let upload = UploadChecksum::of_upload(&self.check_upload(bucket, key, id).await?);
        let (ns, path) = (self.namespace(bucket), part_path(id, n));
        let writer = self.objects.write_part(&ns, &path, self.durability).map_err(internal)?;
        let info = {
            // A part keeps its MD5 (its ETag, the same for the same bytes, and what the
            // completed object's is made of) and its checksum.
            let super::objects::Received { mut writer, checksum, md5 } =
                self.receive_body(writer, headers, body, payload_hash, upload.as_ref()).await?;
            writer.set_attributes(checksum.into_iter().chain(md5).collect());
            writer.commit().await.map_err(commit_failed)?
        };
        self.keep_part(&ns, id, &path).await?;
        let mut r = StatusCode::OK.into_response();
        r.headers_mut().insert(header::ETAG, etag(&info).parse().expect("hex"));
        super::metadata::confirm_checksum(&info, r.headers_mut());
        Ok(r)
    }

    pub(super) async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, S3Error> {
        let upload = match self.check_upload(bucket, key, id).await {
            Ok(upload) => upload,
            // A completion retried after its answer was lost: S3 answers it again.
            Err(e) => return self.completed(bucket, key, id).await?.ok_or(e),
        };
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
        for (n, tag, _) in &listed {
            let info = self.objects.stat_object(&ns, &part_path(id, *n)).await.map_err(internal)?;
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
        // A conditional completion (`If-None-Match: *`, `If-Match`) that fails already keeps
        // its upload; one that loses a race at the commit loses its parts with it.
        let condition = match super::conditions::write(headers)? {
            super::conditions::Asks::Nothing => CommitIf::Any,
            asks => super::conditions::resolve(key, &asks, self.stat(bucket, key).await?.as_ref())?,
        };
        // The parts' checksums checked and combined before the upload is claimed (a mistaken
        // completion keeps its upload, to be completed again).
        let checksum = match UploadChecksum::of_upload(&upload) {
            Some(c) => {
                let named: Vec<_> = (listed.iter().zip(&parts))
                    .map(|((number, _, listed), info)| NamedPart { number: *number, info, listed: listed.as_ref() })
                    .collect();
                c.complete(&named, headers)?
            }
            None => Default::default(),
        };
        // Claim the upload: a racing completion or abort now finds none.
        if !self.objects.delete_object(&ns, &marker(id)).await.map_err(internal)? {
            return self.completed(bucket, key, id).await?.ok_or_else(|| no_such_upload(id));
        }
        let path = format!("{OBJECT_PREFIX}{key}");
        let mut attributes = upload.attributes().clone();
        UploadChecksum::strip(&mut attributes);
        attributes.extend(checksum);
        attributes.insert(UPLOAD_ATTRIBUTE.into(), id.into());
        let sizes: Vec<String> = parts.iter().map(|p| p.size.to_string()).collect();
        attributes.insert(PARTS_ATTRIBUTE.into(), sizes.join(","));
        // S3's multipart ETag: the MD5 of the parts' MD5s, and how many there were.
        let md5s: Option<Vec<Vec<u8>>> =
            parts.iter().map(|p| p.attributes().get(ETAG_ATTRIBUTE).and_then(|h| hex::decode(h).ok())).collect();
        if let Some(md5s) = md5s {
            use md5::Digest;
            let whole = hex::encode(md5::Md5::digest(md5s.concat()));
            attributes.insert(ETAG_ATTRIBUTE.into(), format!("{whole}-{}", parts.len()));
        }
        let joined = self.objects.join_parts(&ns, &path, &parts, self.durability, condition, attributes).await;
        self.remove_upload(&ns, id, key).await; // the parts not listed
        let info = joined.map_err(commit_failed)?.ok_or_else(|| super::conditions::write_failed(key, condition))?;
        Ok(completion(bucket, key, &info))
    }

    /// The answer to a completion of upload `id` that already completed: `key`'s version now,
    /// if that upload made it (the version keeps the upload's id), else `None`.
    async fn completed(&self, bucket: &str, key: &str, id: &str) -> Result<Option<Response>, S3Error> {
        let now = self.stat(bucket, key).await?;
        Ok(now
            .filter(|v| v.attributes().get(UPLOAD_ATTRIBUTE).is_some_and(|u| u == id))
            .map(|v| completion(bucket, key, &v)))
    }

    /// UploadPartCopy: part `n` of upload `id` from bytes of an existing object
    /// (`x-amz-copy-source`, optionally `x-amz-copy-source-range: bytes=a-b`), copied.
    #[expect(clippy::too_many_arguments, reason = "one request's parts")]
    pub(super) async fn upload_part_copy(
        &self,
        key_index: usize,
        bucket: &str,
        key: &str,
        id: &str,
        n: u32,
        source: &str,
        headers: &HeaderMap,
    ) -> Result<Response, S3Error> {
        let upload = UploadChecksum::of_upload(&self.check_upload(bucket, key, id).await?);
        let (src_bucket, info) = self.copy_source(key_index, bucket, source, headers).await?;
        let range = match headers.get("x-amz-copy-source-range").map(|v| v.to_str().unwrap_or("?")) {
            None => 0..info.size,
            Some(r) => {
                // Unlike a GET's Range, both ends are needed and must lie within the source.
                let (from, len) = super::objects::range(r, info.size)?;
                let last =
                    r.strip_prefix("bytes=").and_then(|s| s.split_once('-')).and_then(|(_, b)| b.parse::<u64>().ok());
                if last.is_none_or(|last| last >= info.size) {
                    let what = format!("x-amz-copy-source-range {r:?} of a {}-byte source", info.size);
                    return Err(err(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", what));
                }
                from..from + len
            }
        };
        let (ns, path) = (self.namespace(bucket), part_path(id, n));
        let writer = self.objects.write_part(&ns, &path, self.durability).map_err(internal)?;
        let checksum = upload.map(|u| super::checksum::Checksum::computed(u.algorithm()));
        let part = self.copy_into(&src_bucket, &info, range, writer, Default::default(), checksum).await?;
        self.keep_part(&ns, id, &path).await?;
        Ok(xml::document(format!(
            "<CopyPartResult><LastModified>{}</LastModified><ETag>{}</ETag>{}</CopyPartResult>",
            xml::iso8601(part.created_unix),
            xml::escape(&etag(&part)),
            upload_checksum::elements(&part),
        )))
    }

    pub(super) async fn abort_upload(&self, bucket: &str, key: &str, id: &str) -> Result<Response, S3Error> {
        self.check_upload(bucket, key, id).await?;
        // Claimed first, as a completion claims it: of the two, one goes on.
        let ns = self.namespace(bucket);
        if !self.objects.delete_object(&ns, &marker(id)).await.map_err(internal)? {
            return Err(no_such_upload(id));
        }
        self.remove_upload(&ns, id, key).await;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// Deletes the parts of upload `id` (already claimed) of `key`. A part whose chunks the
    /// object `key` names (its manifest brought back by an owner that missed the completion's
    /// retiring it) is retired again, never deleted; if the object cannot be looked up, the
    /// parts are left for a later sweep.
    async fn remove_upload(&self, ns: &str, id: &str, key: &str) {
        let joined = match self.objects.stat_object(ns, &format!("{OBJECT_PREFIX}{key}")).await {
            Ok(joined) => joined,
            Err(e) => {
                tracing::warn!(upload = id, error = %e, "the upload's object cannot be looked up: its parts are left");
                return;
            }
        };
        let parts = self.objects.list_objects(ns, &format!("{}/", marker(id))).await.unwrap_or_default();
        for p in parts {
            let removed = match &joined {
                Some(j) if j.shares_chunks_with(&p) => self.objects.forget_object(ns, &p).await,
                _ => self.objects.delete_object(ns, &p.path).await,
            };
            if let Err(e) = removed {
                tracing::warn!(path = p.path, error = %e, "removing a multipart part failed");
            }
        }
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
            let uploads = self.objects.list_objects(&ns, "u/").await.map_err(internal)?;
            for upload in uploads {
                let Some(id) = upload.path.strip_prefix("u/").filter(|id| !id.contains('/')) else { continue };
                if now.saturating_sub(upload.created_unix) < expiry {
                    continue;
                }
                let Some(key) = self.upload_key(&ns, &upload).await else { continue };
                if self.objects.delete_object(&ns, &upload.path).await.map_err(internal)? {
                    self.remove_upload(&ns, id, &key).await;
                    self.objects.node().metrics().s3_uploads_expired.inc();
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
        assert_eq!(parse_complete(doc).unwrap(), vec![(1, "\"ab\"".into(), None), (2, "\"cd\"".into(), None)]);
        // Go's SDK (rclone, MinIO's mc) escapes the ETag's quotes as `&#34;`.
        let go = "<CompleteMultipartUpload><Part><PartNumber> 3 </PartNumber><ETag>&#34;ef&#34;</ETag>\
                  <ChecksumCRC32C>AAAAAA==</ChecksumCRC32C></Part></CompleteMultipartUpload>";
        let listed = Some(("crc32c".to_string(), "AAAAAA==".to_string()));
        assert_eq!(parse_complete(go).unwrap(), vec![(3, "\"ef\"".into(), listed)]);
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
