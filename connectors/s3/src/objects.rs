//! The S3 endpoint's object requests: PutObject, CopyObject, GetObject and HeadObject (with
//! `Range`), DeleteObject. A body is streamed into the object as it arrives and checked
//! before the commit (its length, the signed SHA-256, a declared checksum); a body that
//! stalls past the idle timeout, runs past its declared length or the size limit, or fails a
//! check stores nothing.

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{checksum::Checksum, upload_checksum::UploadChecksum};
use super::{
    conditions::{self, Read},
    metadata,
    server::{
        ETAG_ATTRIBUTE, OBJECT_PREFIX, PARTS_ATTRIBUTE, Result, S3, check_bucket, check_key, commit_failed, decode,
        err, etag, internal, no_such_bucket,
    },
    xml,
};
use kvtier_blockmgr::objects::{CommitIf, ObjectInfo, ObjectWriter};

/// A body received into a writer, and the digests its version keeps as attributes.
pub(super) struct Received {
    pub(super) writer: ObjectWriter,
    /// The checksum it declared and matched: (`x-amz-checksum-<algorithm>`, value).
    pub(super) checksum: Option<(String, String)>,
    /// Its MD5 ETag (with `s3.md5_etags`): (`etag`, hex).
    pub(super) md5: Option<(String, String)>,
}

/// The digest a `Content-MD5` header declares (base64 of 16 bytes): S3 checks the body
/// against it, the only check of a body sent `UNSIGNED-PAYLOAD` without a checksum. One that
/// is not an MD5 is `InvalidDigest`.
fn content_md5(headers: &HeaderMap) -> Result<Option<[u8; 16]>> {
    use base64::Engine;
    let Some(v) = headers.get("content-md5") else { return Ok(None) };
    let decoded = v.to_str().ok().and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.trim()).ok());
    let digest = decoded.and_then(|d| <[u8; 16]>::try_from(d).ok());
    digest
        .map(Some)
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "InvalidDigest", "Content-MD5 is not the base64 of an MD5"))
}

/// The sizes of the parts an object was uploaded in (one, the whole object, unless it was
/// completed from a multipart upload, which keeps them as its `part-sizes` attribute).
fn part_sizes(info: &ObjectInfo) -> Vec<u64> {
    let kept = info.attributes().get(PARTS_ATTRIBUTE);
    let sizes = kept.and_then(|s| s.split(',').map(|n| n.parse().ok()).collect::<Option<Vec<u64>>>());
    sizes.unwrap_or_else(|| vec![info.size])
}

/// Part `n` (`partNumber`, 1 to 10,000) of `info`: (offset, length); past its last part,
/// `InvalidPartNumber`.
fn part_range(info: &ObjectInfo, n: &str) -> Result<(u64, u64)> {
    let n = n.parse::<usize>().ok().filter(|n| (1..=10_000).contains(n));
    let n = n.ok_or_else(|| err(StatusCode::BAD_REQUEST, "InvalidArgument", "partNumber is 1 to 10000"))?;
    let sizes = part_sizes(info);
    if n > sizes.len() {
        let what = format!("part {n} of an object of {} parts", sizes.len());
        return Err(err(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidPartNumber", what));
    }
    Ok((sizes[..n - 1].iter().sum(), sizes[n - 1]))
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` of an object of `size` bytes: (offset, length).
pub(super) fn range(value: &str, size: u64) -> Result<(u64, u64)> {
    let invalid = || err(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", format!("range {value:?} of {size} bytes"));
    let spec = value.strip_prefix("bytes=").ok_or_else(invalid)?;
    let (a, b) = spec.split_once('-').ok_or_else(invalid)?;
    let (start, end) = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => (a, b.min(size.saturating_sub(1))),
        (Ok(a), Err(_)) if b.is_empty() => (a, size.saturating_sub(1)),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 => (size.saturating_sub(n), size.saturating_sub(1)),
        _ => return Err(invalid()),
    };
    if start >= size {
        return Err(invalid());
    }
    Ok((start, end - start + 1))
}

impl S3 {
    pub(super) async fn stat(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>> {
        self.objects.stat_object(&self.namespace(bucket), &format!("{OBJECT_PREFIX}{key}")).await.map_err(internal)
    }

    pub(super) async fn put(
        &self,
        bucket: &str,
        key: &str,
        headers: &HeaderMap,
        body: Body,
        payload_hash: &str,
    ) -> Result<Response> {
        let asks = conditions::write(headers)?;
        let mut attributes = metadata::from_request(headers)?;
        if !self.bucket_exists(bucket).await? {
            return Err(no_such_bucket(bucket));
        }
        // Checked before the body is read (the common refusal costs no upload), and decided
        // at the commit by the path's primary (of writers racing through any nodes, one wins).
        let condition = match asks {
            conditions::Asks::Nothing => CommitIf::Any,
            asks => conditions::resolve(key, &asks, self.stat(bucket, key).await?.as_ref())?,
        };
        let path = format!("{OBJECT_PREFIX}{key}");
        let writer = self.objects.write_object(&self.namespace(bucket), &path, self.durability).map_err(internal)?;
        let Received { mut writer, checksum, md5 } =
            self.receive_body(writer, headers, body, payload_hash, None).await?;
        attributes.extend(checksum.into_iter().chain(md5));
        writer.set_attributes(attributes);
        let committed = writer.commit_if(condition).await.map_err(commit_failed)?;
        let info = committed.ok_or_else(|| conditions::write_failed(key, condition))?;
        let mut r = StatusCode::OK.into_response();
        r.headers_mut().insert(header::ETAG, etag(&info).parse().expect("hex"));
        metadata::confirm_checksum(&info, r.headers_mut());
        Ok(r)
    }

    /// Streams a request body into `w`, ready to commit, with what the version keeps of its
    /// digests, or stores nothing (`w` aborted): a body without Content-Length, over the size
    /// limit, longer or shorter than declared, idle past the timeout, or not hashing to the
    /// signed SHA-256, its Content-MD5 or checksum. A part of an `upload` that names a
    /// checksum keeps one of that algorithm, computed here if its request declares none.
    pub(super) async fn receive_body(
        &self,
        mut w: ObjectWriter,
        headers: &HeaderMap,
        body: Body,
        payload_hash: &str,
        upload: Option<&UploadChecksum>,
    ) -> Result<Received> {
        // aws-chunked (what AWS SDKs send with trailing checksums): the payload's length is
        // x-amz-decoded-content-length, the body its chunks.
        let chunked = payload_hash == "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
        let length_header = if chunked { "x-amz-decoded-content-length" } else { "content-length" };
        let length = headers
            .get(length_header)
            .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()))
            .map(|v| v.ok_or_else(|| err(StatusCode::BAD_REQUEST, "InvalidArgument", "Content-Length")))
            .transpose()?
            .ok_or_else(|| err(StatusCode::LENGTH_REQUIRED, "MissingContentLength", "a PUT needs Content-Length"))?;
        let limit = self.config.max_object_size.0;
        if length > limit {
            let what = format!("{length} bytes; one PUT takes at most {limit}");
            return Err(err(StatusCode::BAD_REQUEST, "EntityTooLarge", what));
        }
        let expected = match payload_hash {
            "UNSIGNED-PAYLOAD" | "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => None,
            h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Some(h.to_ascii_lowercase()),
            other => {
                return Err(err(StatusCode::NOT_IMPLEMENTED, "NotImplemented", format!("payload mode {other:?}")));
            }
        };
        // SHA-256 only of a signed payload (it costs more than the rest of a PUT).
        let (mut hash, mut got) = (expected.is_some().then(Sha256::new), 0u64);
        let mut checksum =
            Checksum::from_headers(headers).map_err(|e| err(StatusCode::BAD_REQUEST, "InvalidRequest", e))?;
        if let Some(computed) = upload.map(|u| u.for_part(checksum.as_ref())).transpose()?.flatten() {
            checksum = Some(computed);
        }
        let declared_md5 = content_md5(headers)?;
        let mut md5 = (self.config.md5_etags || declared_md5.is_some()).then(md5::Md5::new);
        let mut decoder = chunked.then(super::chunked::AwsChunked::new);
        let mut stream = body.into_data_stream();
        let received: Result<()> = async {
            loop {
                let chunk = match tokio::time::timeout(self.idle, stream.next()).await {
                    Err(_) => {
                        let what = "no body bytes within the idle timeout";
                        return Err(err(StatusCode::BAD_REQUEST, "RequestTimeout", what));
                    }
                    Ok(None) if decoder.as_ref().is_some_and(|d| !d.is_done()) => {
                        return Err(err(
                            StatusCode::BAD_REQUEST,
                            "IncompleteBody",
                            "the aws-chunked body was cut short",
                        ));
                    }
                    Ok(None) => return Ok(()),
                    Ok(Some(Err(e))) => return Err(err(StatusCode::BAD_REQUEST, "IncompleteBody", e.to_string())),
                    Ok(Some(Ok(c))) => c,
                };
                let pieces = match decoder.as_mut() {
                    Some(d) => d.feed(&chunk).map_err(|e| err(StatusCode::BAD_REQUEST, "IncompleteBody", e))?,
                    None => vec![chunk],
                };
                for piece in pieces {
                    got += piece.len() as u64;
                    if got > length {
                        return Err(err(StatusCode::BAD_REQUEST, "IncompleteBody", "more bytes than declared"));
                    }
                    if let Some(h) = hash.as_mut() {
                        h.update(&piece);
                    }
                    if let Some(c) = checksum.as_mut() {
                        c.update(&piece);
                    }
                    if let Some(h) = md5.as_mut() {
                        h.update(&piece);
                    }
                    w.write(&piece).await.map_err(internal)?;
                }
            }
        }
        .await;
        let checked = received.and_then(|()| {
            if got != length {
                return Err(err(StatusCode::BAD_REQUEST, "IncompleteBody", format!("{got} of {length} bytes arrived")));
            }
            if let (Some(h), Some(want)) = (hash, expected)
                && hex::encode(h.finalize()) != want
            {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "XAmzContentSHA256Mismatch",
                    "the body does not hash as signed",
                ));
            }
            let md5: Option<[u8; 16]> = md5.map(|h| h.finalize().into());
            if let Some(want) = declared_md5
                && md5 != Some(want)
            {
                let what = "the body's MD5 is not the Content-MD5 sent";
                return Err(err(StatusCode::BAD_REQUEST, "BadDigest", what));
            }
            let trailers = decoder.as_ref().map_or(&[][..], |d| &d.trailers[..]);
            let checksum = checksum
                .map(|c| c.verify(trailers).map_err(|e| err(StatusCode::BAD_REQUEST, "BadDigest", e)))
                .transpose()?;
            // What the version keeps of the body's digests: its checksum, its MD5 ETag.
            let md5 = md5.filter(|_| self.config.md5_etags).map(|d| (ETAG_ATTRIBUTE.to_string(), hex::encode(d)));
            Ok((checksum, md5))
        });
        match checked {
            Err(e) => {
                w.abort().await;
                Err(e)
            }
            Ok((checksum, md5)) => Ok(Received { writer: w, checksum, md5 }),
        }
    }

    /// CopyObject: `x-amz-copy-source` (`/bucket/key` or `bucket/key`, URL-encoded) into
    /// `bucket`/`key`, as a new object with the source's bytes.
    pub(super) async fn copy(
        &self,
        key_index: usize,
        bucket: &str,
        key: &str,
        source: &str,
        headers: &HeaderMap,
    ) -> Result<Response> {
        // The source's metadata, unless the copy replaces it (`x-amz-metadata-directive`).
        let replace = match headers.get("x-amz-metadata-directive").map(|v| v.to_str().unwrap_or("?")) {
            None | Some("COPY") => false,
            Some("REPLACE") => true,
            Some(other) => {
                let what = format!("x-amz-metadata-directive {other:?} (COPY or REPLACE)");
                return Err(err(StatusCode::BAD_REQUEST, "InvalidArgument", what));
            }
        };
        let (src_bucket, info) = self.copy_source(key_index, bucket, source, headers).await?;
        let path = format!("{OBJECT_PREFIX}{key}");
        let w = self.objects.write_object(&self.namespace(bucket), &path, self.durability).map_err(internal)?;
        let attributes = if replace {
            let mut attributes = metadata::from_request(headers)?;
            attributes.extend(
                info.attributes()
                    .iter()
                    .filter(|(k, _)| k.starts_with("x-amz-checksum-"))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            attributes
        } else {
            info.attributes().clone()
        };
        let mut attributes = attributes;
        super::upload_checksum::for_copy(&mut attributes);
        let copied = self.copy_into(&src_bucket, &info, 0..info.size, w, attributes, None).await?;
        Ok(xml::document(format!(
            "<CopyObjectResult><LastModified>{}</LastModified><ETag>{}</ETag></CopyObjectResult>",
            xml::iso8601(copied.created_unix),
            xml::escape(&etag(&copied))
        )))
    }

    /// The object `x-amz-copy-source` names (`/bucket/key` or `bucket/key`, URL-encoded), as
    /// its bucket and current version, checked: both buckets exist, the key may read it, and
    /// it meets the `x-amz-copy-source-if-*` conditions among `headers`.
    pub(super) async fn copy_source(
        &self,
        key_index: usize,
        bucket: &str,
        source: &str,
        headers: &HeaderMap,
    ) -> Result<(String, ObjectInfo)> {
        let bad = || err(StatusCode::BAD_REQUEST, "InvalidArgument", format!("x-amz-copy-source {source:?}"));
        let source = source.split('?').next().unwrap_or_default();
        let source = decode(source).ok_or_else(bad)?;
        let (src_bucket, src_key) = source.trim_start_matches('/').split_once('/').ok_or_else(bad)?;
        check_bucket(src_bucket)?;
        check_key(src_key)?;
        self.allowed(key_index, src_bucket)?;
        for b in [src_bucket, bucket] {
            if !self.bucket_exists(b).await? {
                return Err(no_such_bucket(b));
            }
        }
        let info = self
            .stat(src_bucket, src_key)
            .await?
            .ok_or_else(|| err(StatusCode::NOT_FOUND, "NoSuchKey", format!("{src_key:?} does not exist")))?;
        conditions::copy_source(headers, &info)?;
        Ok((src_bucket.to_string(), info))
    }

    /// Writes bytes `range` of `source` (an object of `source_bucket`) into `w` and commits
    /// it: a copy of its own, keeping `checksum` of its bytes if asked (a part of an upload
    /// that names one); nothing is stored if the source cannot be read.
    pub(super) async fn copy_into(
        &self,
        source_bucket: &str,
        source: &ObjectInfo,
        range: std::ops::Range<u64>,
        mut w: ObjectWriter,
        mut attributes: std::collections::BTreeMap<String, String>,
        mut checksum: Option<Checksum>,
    ) -> Result<ObjectInfo> {
        let ns = kvtier_tiers::Namespace::new(&self.namespace(source_bucket)).map_err(|e| internal(e.into()))?;
        let mut stream = std::pin::pin!(self.objects.read_object(&ns, source, range.start, range.end - range.start));
        let mut md5 = self.config.md5_etags.then(md5::Md5::new);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    if let Some(h) = md5.as_mut() {
                        h.update(&c);
                    }
                    if let Some(h) = checksum.as_mut() {
                        h.update(&c);
                    }
                    w.write(&c).await.map_err(internal)?
                }
                Err(e) => {
                    w.abort().await;
                    return Err(internal(e));
                }
            }
        }
        // A copy is written in one piece: its ETag is its bytes' MD5, whatever the source's;
        // it keeps only what S3 answers of the source's metadata.
        attributes.retain(|name, _| metadata::answered(name));
        attributes.extend(md5.map(|h| (ETAG_ATTRIBUTE.to_string(), hex::encode(h.finalize()))));
        if let Some(c) = checksum {
            attributes.insert(format!("x-amz-checksum-{}", c.algorithm()), c.value());
        }
        w.set_attributes(attributes);
        w.commit().await.map_err(commit_failed)
    }

    pub(super) async fn get(
        &self,
        bucket: &str,
        key: &str,
        headers: &HeaderMap,
        params: &[(String, String)],
        head: bool,
    ) -> Result<Response> {
        if !self.bucket_exists(bucket).await? {
            return Err(no_such_bucket(bucket));
        }
        let info = self
            .stat(bucket, key)
            .await?
            .ok_or_else(|| err(StatusCode::NOT_FOUND, "NoSuchKey", format!("{key:?} does not exist")))?;
        if conditions::read(headers, &info)? == Read::NotModified {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            r.headers_mut().insert(header::ETAG, etag(&info).parse().expect("hex"));
            r.headers_mut().insert(header::LAST_MODIFIED, xml::http_date(info.created_unix).parse().expect("a date"));
            return Ok(r);
        }
        let ranged = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        let part = params.iter().find(|(k, _)| k == "partNumber").map(|(_, v)| v.as_str());
        let (offset, len) = match (ranged, part) {
            (Some(_), Some(_)) => {
                let what = "a Range header and a partNumber in one request";
                return Err(err(StatusCode::BAD_REQUEST, "InvalidRequest", what));
            }
            (Some(r), None) => range(r, info.size)?,
            (None, Some(n)) => part_range(&info, n)?,
            (None, None) => (0, info.size),
        };
        let partial = (ranged.is_some() || part.is_some()) && len > 0;
        let mut r = if head {
            Response::new(Body::empty())
        } else {
            let ns = kvtier_tiers::Namespace::new(&self.namespace(bucket)).map_err(|e| internal(e.into()))?;
            // The status and headers are gone by the time a chunk fails: the connection is
            // cut (the client sees a short body), and only the log and metric say why.
            let (metrics, object, mut at) = (self.objects.node().metrics().clone(), format!("{bucket}/{key}"), offset);
            let stream = self.objects.read_object(&ns, &info, offset, len).map(move |chunk| match chunk {
                Ok(chunk) => {
                    at += chunk.len() as u64;
                    Ok(chunk)
                }
                Err(e) => {
                    metrics.s3_bodies_cut.inc();
                    tracing::warn!(%object, at, error = %e, "S3 GET cut short: a chunk could not be read after the headers went out");
                    Err(std::io::Error::other(e))
                }
            });
            Response::new(Body::from_stream(stream))
        };
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, len.into());
        h.insert(header::ETAG, etag(&info).parse().expect("hex"));
        h.insert(header::LAST_MODIFIED, xml::http_date(info.created_unix).parse().expect("a date"));
        h.insert(header::ACCEPT_RANGES, "bytes".parse().expect("ascii"));
        metadata::answer(&info, headers, if head { &[] } else { params }, !partial, h)?;
        if part.is_some() {
            h.insert("x-amz-mp-parts-count", part_sizes(&info).len().into());
        }
        if partial {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let value = format!("bytes {offset}-{}/{}", offset + len - 1, info.size);
            r.headers_mut().insert(header::CONTENT_RANGE, value.parse().expect("ascii"));
        }
        Ok(r)
    }

    pub(super) async fn delete(&self, bucket: &str, key: &str, headers: &HeaderMap) -> Result<Response> {
        if !self.bucket_exists(bucket).await? {
            return Err(no_such_bucket(bucket));
        }
        let if_match = headers.get(header::IF_MATCH).map(|v| v.to_str().unwrap_or("\"?\""));
        self.delete_if(bucket, key, if_match).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// Deletes `key`; with `if_match` (`*`, or an ETag), only the version it names, decided
    /// by the path's primary: 404 `NoSuchKey` when there is none, 412 when another is there.
    /// (Without a condition, deleting no object is a success, as in S3.)
    pub(super) async fn delete_if(&self, bucket: &str, key: &str, if_match: Option<&str>) -> Result<()> {
        let (ns, path) = (self.namespace(bucket), format!("{OBJECT_PREFIX}{key}"));
        let condition = match conditions::delete(if_match) {
            conditions::Asks::Nothing => CommitIf::Any,
            asks => conditions::resolve(key, &asks, self.stat(bucket, key).await?.as_ref())?,
        };
        let deleted = self.objects.delete_object_if(&ns, &path, condition).await.map_err(internal)?;
        if deleted || if_match.is_none() {
            return Ok(());
        }
        match self.stat(bucket, key).await? {
            None => Err(err(StatusCode::NOT_FOUND, "NoSuchKey", format!("If-Match: {key:?} does not exist"))),
            Some(_) => Err(err(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                format!("{key:?} is not the version If-Match names"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_http() {
        assert_eq!(range("bytes=0-9", 100), Ok((0, 10)));
        assert_eq!(range("bytes=90-200", 100), Ok((90, 10)));
        assert_eq!(range("bytes=95-", 100), Ok((95, 5)));
        assert_eq!(range("bytes=-10", 100), Ok((90, 10)));
        for bad in ["bytes=100-", "bytes=5-1", "items=0-1", "bytes=x-y", "bytes=-0"] {
            assert_eq!(range(bad, 100).unwrap_err().code, "InvalidRange", "{bad}");
        }
    }
}
