//! The S3 endpoint's server: authentication, routing and listings (buckets.rs serves the
//! bucket requests, objects.rs the object requests, multipart.rs the uploads).
//!
//! Bucket `B` is namespace `<prefix>/B`; it exists while its marker object (`bucket`) does.
//! Object `K` is the named object `o/K` of that namespace, so objects get everything named
//! objects have (chunking, replicas, flush and export to Blob, cache-on-read). Every request
//! is signed (SigV4) by a configured access key allowed the bucket, counted by method and
//! outcome and timed by operation.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::net::TcpListener;

pub(super) use super::errors::{commit_failed, err, internal, no_such_bucket};
use super::{
    routes::{self, Operation as Op, Target},
    sigv4::{self, AuthError},
    xml::{self, S3Error},
};
use kvtier_blockmgr::{Durability, Objects, config::S3Config, objects::ObjectInfo};

/// The marker object of a bucket.
pub(super) const BUCKET_MARKER: &str = "bucket";
/// Where the bucket registry lists buckets (objects `b/<bucket>` of namespace `<prefix>`).
pub(super) const REGISTRY_PREFIX: &str = "b/";
/// Object paths are `o/` + the key.
pub(super) const OBJECT_PREFIX: &str = "o/";
/// Longest key S3 allows.
const MAX_KEY_BYTES: usize = 1024;

pub(super) type Result<T, E = S3Error> = std::result::Result<T, E>;

pub(super) struct S3 {
    pub(super) objects: Objects,
    pub(super) config: S3Config,
    pub(super) durability: Durability,
    pub(super) idle: Duration,
}

/// Serves the S3 endpoint on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    objects: Objects,
    config: S3Config,
    idle: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let durability = config.durability().map_err(|e| e.to_string())?;
    let app = Arc::new(S3 { objects, config, durability, idle });
    let sweeper = tokio::spawn(super::multipart::sweep_stale_uploads(app.clone()));
    let router = Router::new().fallback(handle).with_state(app);
    let served = axum::serve(listener, router).with_graceful_shutdown(stop).await;
    sweeper.abort();
    served.map_err(|e| format!("s3 http: {e}"))
}

async fn handle(State(s3): State<Arc<S3>>, req: Request) -> Response {
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let (op, started) = (s3.operation(&req), std::time::Instant::now());
    let result = s3.route(req).await;
    let code = result.as_ref().map_or_else(|e| e.code, |_| "OK");
    let metrics = s3.objects.node().metrics();
    metrics.s3_requests.with_label_values(&[method.as_str(), code]).inc();
    // To the response's head: a GET's body streams after it.
    metrics.latency.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    // Every answer names its request, as S3's do (the id a user quotes; the log line has it).
    let request_id = format!("{:016X}", rand::random::<u64>());
    let mut response = match result {
        Ok(r) => r,
        // HEAD answers carry no body, only the status.
        Err(e) if head => e.status.into_response(),
        Err(e) => {
            tracing::debug!(code = e.code, message = %e.message, %method, request_id, "s3 request refused");
            e.response(&request_id)
        }
    };
    response.headers_mut().insert("x-amz-request-id", request_id.parse().expect("hex"));
    response
}

/// `%xx`-decoded `s`; `None` when it does not decode to UTF-8.
pub(super) fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // SigV4 clients encode every byte that needs it (a space as %20): `+` is itself.
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query's parameters, decoded.
fn params(query: &str) -> Result<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match (decode(k), decode(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(err(StatusCode::BAD_REQUEST, "InvalidArgument", "the query does not decode")),
            }
        })
        .collect()
}

/// What a request with `bucket` and `key` names.
fn target(bucket: &str, key: Option<&str>) -> Target {
    match (bucket.is_empty(), key) {
        (true, _) => Target::Service,
        (false, None) => Target::Bucket,
        (false, Some(_)) => Target::Object,
    }
}

/// The value of query parameter `name`.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A bucket name as S3 allows it: 3 to 63 of `a-z0-9.-`, starting and ending alphanumeric,
/// no `..`, `.-` or `-.`, not an IP address, none of the prefixes and suffixes S3 reserves.
pub(super) fn check_bucket(b: &str) -> Result<()> {
    const RESERVED_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
    const RESERVED_SUFFIXES: [&str; 5] = ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"];
    let ok = (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
        && !["..", ".-", "-."].iter().any(|s| b.contains(s))
        && b.parse::<std::net::Ipv4Addr>().is_err()
        && !RESERVED_PREFIXES.iter().any(|p| b.starts_with(p))
        && !RESERVED_SUFFIXES.iter().any(|s| b.ends_with(s));
    if ok {
        Ok(())
    } else {
        Err(err(StatusCode::BAD_REQUEST, "InvalidBucketName", format!("{b:?} is not a bucket name")))
    }
}

/// A key kvtier stores: 1 to 1024 bytes, no NUL, and no `.` or `..` segment (objects are
/// exported to Blob under their keys: no key may climb out of its bucket).
pub(super) fn check_key(k: &str) -> Result<()> {
    if k.is_empty() || k.len() > MAX_KEY_BYTES || k.contains('\0') {
        return Err(err(StatusCode::BAD_REQUEST, "KeyTooLongError", "a key is 1 to 1024 bytes, no NUL"));
    }
    if k.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            format!("the key {k:?} has a '.' or '..' segment"),
        ));
    }
    Ok(())
}

/// `info`'s ETag: the MD5 S3 would give it (kept as its `etag` attribute when written
/// through S3 with `s3.md5_etags`), else its CRC-32C and generation; quoted.
pub(super) fn etag(info: &ObjectInfo) -> String {
    match info.attributes().get(ETAG_ATTRIBUTE) {
        Some(md5) => format!("\"{md5}\""),
        None => format!("\"{:08x}{:016x}\"", info.crc32c, info.generation),
    }
}

/// The attribute an object's MD5 ETag is kept as (never answered as a header of its own).
pub(super) const ETAG_ATTRIBUTE: &str = "etag";
/// The attribute a multipart object keeps its parts' sizes as (`partNumber` reads).
pub(super) const PARTS_ATTRIBUTE: &str = "part-sizes";

impl S3 {
    pub(super) fn namespace(&self, bucket: &str) -> String {
        format!("{}/{bucket}", self.config.namespace_prefix)
    }

    /// Checks the signature; the access key's entry.
    fn authenticate(&self, method: &str, path: &str, query: &str, headers: &HeaderMap) -> Result<(usize, String)> {
        let pairs: Vec<(&str, &str)> =
            headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v))).collect();
        let req = sigv4::Request { method, path, query, headers: &pairs };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let keys = &self.config.keys;
        let secret = |ak: &str| keys.iter().find(|k| k.access_key == ak).map(|k| k.secret_key.clone());
        let v = match sigv4::verify(&req, secret, now) {
            // No V4 signature: a V2 presigned URL (what boto3 presigns by default) may carry one.
            Err(AuthError::Missing) if query.contains("AWSAccessKeyId=") => {
                let resource = match self.virtual_host_bucket(headers) {
                    Some(bucket) => format!("/{bucket}{path}"),
                    None => path.to_string(),
                };
                super::sigv2::verify_presigned(&req, &resource, secret, now)
            }
            other => other,
        };
        let v = v.map_err(|e| {
            let status = match e {
                AuthError::Malformed(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::FORBIDDEN,
            };
            err(status, e.code(), e.to_string())
        })?;
        let i = keys.iter().position(|k| k.access_key == v.access_key).expect("verified against it");
        Ok((i, v.payload_hash))
    }

    pub(super) fn allowed(&self, key: usize, bucket: &str) -> Result<()> {
        if self.config.keys[key].allows(bucket) {
            return Ok(());
        }
        Err(err(StatusCode::FORBIDDEN, "AccessDenied", format!("this access key may not use bucket {bucket:?}")))
    }

    pub(super) async fn bucket_exists(&self, bucket: &str) -> Result<bool> {
        Ok(self.objects.stat_object(&self.namespace(bucket), BUCKET_MARKER).await.map_err(internal)?.is_some())
    }

    async fn route(&self, req: Request) -> Result<Response> {
        let (parts, body) = req.into_parts();
        let (path, query) = (parts.uri.path().to_string(), parts.uri.query().unwrap_or("").to_string());
        let (key_index, payload_hash) = self.authenticate(parts.method.as_str(), &path, &query, &parts.headers)?;
        let params = params(&query)?;
        let param = |name: &str| param(&params, name);
        let decoded =
            decode(&path).ok_or_else(|| err(StatusCode::BAD_REQUEST, "InvalidURI", "the path does not decode"))?;
        let (bucket, key) = self.resource(&decoded, &parts.headers);
        let copy_source = parts.headers.get("x-amz-copy-source").map(|v| v.to_str().unwrap_or(""));
        let op = routes::operation(&parts.method, target(bucket, key), &params, copy_source.is_some());
        if !bucket.is_empty() {
            check_bucket(bucket)?;
            self.allowed(key_index, bucket)?;
        }
        let k = key.unwrap_or("");
        if key.is_some() {
            check_key(k)?;
        }
        let upload = param("uploadId").unwrap_or("");
        let m = &parts.method;
        match op {
            Op::NotImplemented(name) => Err(err(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                format!("{name} is not implemented here; nothing was done"),
            )),
            Op::NotAllowed => Err(err(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("S3 has no {m} operation on this resource with this query"),
            )),
            Op::ListBuckets => self.list_buckets(key_index, &params).await,
            Op::CreateBucket => self.create_bucket(bucket, body).await,
            Op::HeadBucket => match self.bucket_exists(bucket).await? {
                true => Ok(StatusCode::OK.into_response()),
                false => Err(no_such_bucket(bucket)),
            },
            Op::DeleteBucket => self.delete_bucket(bucket).await,
            Op::DeleteObjects => self.delete_objects(bucket, body).await,
            Op::ListMultipartUploads => self.list_uploads(bucket, &params).await,
            Op::GetBucketLocation => {
                if !self.bucket_exists(bucket).await? {
                    return Err(no_such_bucket(bucket));
                }
                Ok(xml::document(format!(
                    "<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{}</LocationConstraint>",
                    xml::escape(&self.config.region)
                )))
            }
            Op::ListObjects => self.list(bucket, &params).await,
            Op::CreateMultipartUpload => self.create_upload(bucket, k, &parts.headers).await,
            Op::UploadPart | Op::UploadPartCopy => {
                let n = param("partNumber").and_then(|n| n.parse::<u32>().ok()).filter(|n| (1..=10_000).contains(n));
                let n = n.ok_or_else(|| err(StatusCode::BAD_REQUEST, "InvalidArgument", "partNumber is 1 to 10000"))?;
                match copy_source {
                    Some(src) => self.upload_part_copy(key_index, bucket, k, upload, n, src, &parts.headers).await,
                    None => self.upload_part(bucket, k, upload, n, &parts.headers, body, &payload_hash).await,
                }
            }
            Op::ListParts => self.list_parts(bucket, k, upload, &params).await,
            Op::CompleteMultipartUpload => self.complete_upload(bucket, k, upload, &parts.headers, body).await,
            Op::AbortMultipartUpload => self.abort_upload(bucket, k, upload).await,
            Op::CopyObject => self.copy(key_index, bucket, k, copy_source.unwrap_or(""), &parts.headers).await,
            Op::PutObject => self.put(bucket, k, &parts.headers, body, &payload_hash).await,
            Op::GetObject => self.get(bucket, k, &parts.headers, &params, false).await,
            Op::HeadObject => self.get(bucket, k, &parts.headers, &params, true).await,
            Op::DeleteObject => self.delete(bucket, k, &parts.headers).await,
        }
    }

    /// The S3 operation `req` asks for, as the `op` of `kvtier_request_duration_seconds`
    /// (`s3_get_object`, ...): told from the method, path and query alone, before it is
    /// authenticated or routed (a request refused on the way is timed under its operation).
    fn operation(&self, req: &Request) -> &'static str {
        let decoded = decode(req.uri().path()).unwrap_or_default();
        let params = params(req.uri().query().unwrap_or("")).unwrap_or_default();
        let (bucket, key) = self.resource(&decoded, req.headers());
        let copy = req.headers().contains_key("x-amz-copy-source");
        routes::operation(req.method(), target(bucket, key), &params, copy).label()
    }

    /// The bucket and key a decoded path names (a virtual-host-style request's bucket is in
    /// its Host, and the whole path is the key).
    fn resource<'a>(&self, decoded: &'a str, headers: &'a HeaderMap) -> (&'a str, Option<&'a str>) {
        let trimmed = decoded.strip_prefix('/').unwrap_or(decoded);
        let (bucket, key) = match self.virtual_host_bucket(headers) {
            Some(b) => (b, Some(trimmed)),
            None => match trimmed.split_once('/') {
                Some((b, k)) => (b, Some(k)),
                None => (trimmed, None),
            },
        };
        (bucket, key.filter(|k| !k.is_empty()))
    }

    /// The bucket a virtual-host-style request names in its Host (`B.<domain>[:port]`).
    fn virtual_host_bucket<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let domain = self.config.domain.as_str();
        if domain.is_empty() {
            return None;
        }
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let host =
            host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        host.strip_suffix(domain)?.strip_suffix('.').filter(|b| !b.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_climb_out_of_their_bucket_are_refused() {
        assert!(check_key("a/b/c.txt").is_ok());
        for bad in ["../x", "a/../b", "a/./b", "", "a\0b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"k".repeat(1025)).is_err());
        assert!(check_bucket("my-bucket.1").is_ok());
        for bad in [
            "ab",
            "My-Bucket",
            "-ab",
            "a..b",
            "a_b",
            "192.168.5.4",
            "foo.-bar",
            "foo-.bar",
            "xn--abc",
            "sthree-x",
            "b--x-s3",
        ] {
            assert_eq!(check_bucket(bad).unwrap_err().code, "InvalidBucketName", "{bad}");
        }
    }

    #[test]
    fn percent_decoding_refuses_what_is_not_utf8() {
        assert_eq!(decode("a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%ff"), None);
        assert_eq!(decode("%2"), None);
    }
}
