//! The S3 endpoint's bucket requests: ListBuckets, CreateBucket, DeleteBucket. A bucket is a
//! namespace with a marker object; the registry (objects `b/<bucket>` of namespace
//! `<prefix>`) lists them cluster-wide.

use axum::{
    body::Body,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    server::{BUCKET_MARKER, OBJECT_PREFIX, REGISTRY_PREFIX, Result, S3, err, internal, no_such_bucket},
    xml,
};
use kvtier_blockmgr::{Durability, Objects};

/// The object of the bucket registry (namespace `<prefix>`, which no bucket's can be) that
/// lists `bucket` cluster-wide for ListBuckets.
fn registry_path(bucket: &str) -> String {
    format!("{REGISTRY_PREFIX}{bucket}")
}

/// Creates bucket `bucket` (namespace `<prefix>/<bucket>`) unless it exists: its marker,
/// decided by the marker path's primary (of two creators through any nodes, one creates
/// it), then its registry entry. Whether this call created it.
pub(super) async fn write_bucket(
    objects: &Objects,
    prefix: &str,
    bucket: &str,
    durability: Durability,
) -> Result<bool, kvtier_blockmgr::NodeError> {
    let mut w = objects.write_object(&format!("{prefix}/{bucket}"), BUCKET_MARKER, durability)?;
    w.write(b"kvtier s3 bucket").await?;
    if w.commit_if_absent().await?.is_none() {
        return Ok(false);
    }
    objects.write_object(prefix, &registry_path(bucket), durability)?.commit().await?;
    Ok(true)
}

impl S3 {
    /// Every bucket, with when it was made: the registry (every member's part of it), and
    /// the markers this node holds (buckets made before the registry was).
    pub(super) async fn buckets(&self) -> Result<Vec<(String, u64)>> {
        let prefix = format!("{}/", self.config.namespace_prefix);
        let registered = self.objects.list_objects(&self.config.namespace_prefix, REGISTRY_PREFIX).await;
        let registered = registered
            .map_err(internal)?
            .into_iter()
            .filter_map(|info| Some((info.path.strip_prefix(REGISTRY_PREFIX)?.to_string(), info.created_unix)));
        let here = self
            .objects
            .objects_named_here(BUCKET_MARKER)
            .into_iter()
            .filter_map(|(ns, info)| Some((ns.strip_prefix(&prefix)?.to_string(), info.created_unix)));
        let mut names: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for (b, created) in registered.chain(here).filter(|(b, _)| !b.contains('/')) {
            let at = names.entry(b).or_insert(created);
            *at = (*at).min(created);
        }
        Ok(names.into_iter().collect())
    }

    /// ListBuckets: the buckets the key may use, in name order; with `max-buckets` (1 to
    /// 10,000) a page at a time, `continuation-token` (the last name of the page before)
    /// resuming, and `prefix`.
    pub(super) async fn list_buckets(&self, key_index: usize, params: &[(String, String)]) -> Result<Response> {
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let max = match param("max-buckets") {
            None => usize::MAX,
            Some(v) => v.parse::<usize>().ok().filter(|n| (1..=10_000).contains(n)).ok_or_else(|| {
                err(StatusCode::BAD_REQUEST, "InvalidArgument", format!("max-buckets {v:?} (1 to 10000)"))
            })?,
        };
        let (prefix, after) = (param("prefix").unwrap_or(""), param("continuation-token").unwrap_or(""));
        let mut names: Vec<(String, u64)> = self
            .buckets()
            .await?
            .into_iter()
            .filter(|(b, _)| self.config.keys[key_index].allows(b) && b.starts_with(prefix) && b.as_str() > after)
            .collect();
        names.sort();
        let next = (names.len() > max).then(|| names[max - 1].0.clone());
        names.truncate(max);
        let mut tail = String::new();
        if let Some(n) = next {
            tail.push_str(&format!("<ContinuationToken>{}</ContinuationToken>", xml::escape(&n)));
        }
        if !prefix.is_empty() {
            tail.push_str(&format!("<Prefix>{}</Prefix>", xml::escape(prefix)));
        }
        let buckets: String = names
            .iter()
            .map(|(b, t)| {
                format!(
                    "<Bucket><Name>{}</Name><CreationDate>{}</CreationDate></Bucket>",
                    xml::escape(b),
                    xml::iso8601(*t)
                )
            })
            .collect();
        Ok(xml::document(format!(
            "<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>kvtier</ID>\
             <DisplayName>kvtier</DisplayName></Owner><Buckets>{buckets}</Buckets>{tail}</ListAllMyBucketsResult>"
        )))
    }

    /// CreateBucket. Of a bucket that exists (all buckets are the caller's: a key sees only
    /// its own), S3's answer depends on the region: us-east-1, kvtier's, answers 200 for
    /// legacy compatibility, the others `BucketAlreadyOwnedByYou`; so a request naming another
    /// region (`<LocationConstraint>`) gets the latter. Clients creating a bucket they may
    /// race for rely on the 200 (Dynamo KVBM's G4 client, from every worker at once).
    pub(super) async fn create_bucket(&self, bucket: &str, body: Body) -> Result<Response> {
        let doc = axum::body::to_bytes(body, 64 << 10)
            .await
            .map_err(|_| err(StatusCode::BAD_REQUEST, "MalformedXML", "the document is too large or cut short"))?;
        let region = String::from_utf8_lossy(&doc)
            .split_once("<LocationConstraint>")
            .and_then(|(_, rest)| rest.split_once("</LocationConstraint>"))
            .map(|(region, _)| region.trim().to_string())
            .filter(|r| !r.is_empty() && r != "us-east-1");
        let (objects, prefix) = (&self.objects, &self.config.namespace_prefix);
        let created = !self.bucket_exists(bucket).await?
            && write_bucket(objects, prefix, bucket, self.durability).await.map_err(internal)?;
        if !created && let Some(region) = region {
            let what = format!("{bucket:?} exists (S3 answers so outside us-east-1; this request names {region})");
            return Err(err(StatusCode::CONFLICT, "BucketAlreadyOwnedByYou", what));
        }
        let mut r = StatusCode::OK.into_response();
        r.headers_mut()
            .insert(header::LOCATION, format!("/{bucket}").parse().expect("a bucket name is a header value"));
        Ok(r)
    }

    pub(super) async fn delete_bucket(&self, bucket: &str) -> Result<Response> {
        let ns = self.namespace(bucket);
        if !self.bucket_exists(bucket).await? {
            return Err(no_such_bucket(bucket));
        }
        if !self.objects.list_objects(&ns, OBJECT_PREFIX).await.map_err(internal)?.is_empty() {
            return Err(err(StatusCode::CONFLICT, "BucketNotEmpty", format!("{bucket:?} holds objects")));
        }
        self.objects.delete_object(&ns, BUCKET_MARKER).await.map_err(internal)?;
        self.objects.delete_object(&self.config.namespace_prefix, &registry_path(bucket)).await.map_err(internal)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}
