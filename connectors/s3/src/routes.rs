//! Which S3 operation a request is, by the book: its method, whether it names the service, a
//! bucket or an object, and the sub-resources in its query (the parameters S3 defines to
//! select an operation: `?tagging`, `?acl`, `?uploadId`, ...). An operation S3 has and
//! kvtier does not is named, to be answered 501 `NotImplemented` with nothing read, written
//! or deleted; a sub-resource with a method S3 has no operation for is 405. Why: the router
//! once looked only at the method and the sub-resources it knew, so `PUT ?tagging`
//! overwrote the object with the tagging XML, `PUT ?acl` with an empty body truncated it,
//! `DELETE ?tagging` deleted it and `GET ?acl` answered its body.
//!
//! Other query parameters (`prefix`, `max-keys`, the AWS SDKs' `x-id`, a presigned URL's
//! `X-Amz-*`) are arguments, not operations: S3 itself ignores those it does not know.

use axum::http::Method;

/// What a request's path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Service,
    Bucket,
    Object,
}

/// The S3 operations kvtier serves, and those it answers without doing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    ListBuckets,
    CreateBucket,
    HeadBucket,
    DeleteBucket,
    ListObjects,
    GetBucketLocation,
    DeleteObjects,
    ListMultipartUploads,
    PutObject,
    CopyObject,
    GetObject,
    HeadObject,
    DeleteObject,
    CreateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    ListParts,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    /// An operation S3 has and kvtier does not, by S3's name for it: 501.
    NotImplemented(&'static str),
    /// A method S3 has no operation for on this resource: 405.
    NotAllowed,
}

/// The sub-resources S3 defines whose operations kvtier does not implement: (query
/// parameter, what it is on, method, S3's operation).
const UNIMPLEMENTED: &[(&str, Target, &str, &str)] = {
    use Target::{Bucket as B, Object as O};
    &[
        ("accelerate", B, "GET", "GetBucketAccelerateConfiguration"),
        ("accelerate", B, "PUT", "PutBucketAccelerateConfiguration"),
        ("acl", B, "GET", "GetBucketAcl"),
        ("acl", B, "PUT", "PutBucketAcl"),
        ("analytics", B, "GET", "GetBucketAnalyticsConfiguration"),
        ("analytics", B, "PUT", "PutBucketAnalyticsConfiguration"),
        ("analytics", B, "DELETE", "DeleteBucketAnalyticsConfiguration"),
        ("cors", B, "GET", "GetBucketCors"),
        ("cors", B, "PUT", "PutBucketCors"),
        ("cors", B, "DELETE", "DeleteBucketCors"),
        ("encryption", B, "GET", "GetBucketEncryption"),
        ("encryption", B, "PUT", "PutBucketEncryption"),
        ("encryption", B, "DELETE", "DeleteBucketEncryption"),
        ("intelligent-tiering", B, "GET", "GetBucketIntelligentTieringConfiguration"),
        ("intelligent-tiering", B, "PUT", "PutBucketIntelligentTieringConfiguration"),
        ("intelligent-tiering", B, "DELETE", "DeleteBucketIntelligentTieringConfiguration"),
        ("inventory", B, "GET", "GetBucketInventoryConfiguration"),
        ("inventory", B, "PUT", "PutBucketInventoryConfiguration"),
        ("inventory", B, "DELETE", "DeleteBucketInventoryConfiguration"),
        ("lifecycle", B, "GET", "GetBucketLifecycleConfiguration"),
        ("lifecycle", B, "PUT", "PutBucketLifecycleConfiguration"),
        ("lifecycle", B, "DELETE", "DeleteBucketLifecycle"),
        ("logging", B, "GET", "GetBucketLogging"),
        ("logging", B, "PUT", "PutBucketLogging"),
        ("metadataTable", B, "GET", "GetBucketMetadataTableConfiguration"),
        ("metadataTable", B, "POST", "CreateBucketMetadataTableConfiguration"),
        ("metadataTable", B, "DELETE", "DeleteBucketMetadataTableConfiguration"),
        ("metadataConfiguration", B, "GET", "GetBucketMetadataConfiguration"),
        ("metadataConfiguration", B, "POST", "CreateBucketMetadataConfiguration"),
        ("metadataConfiguration", B, "DELETE", "DeleteBucketMetadataConfiguration"),
        ("metrics", B, "GET", "GetBucketMetricsConfiguration"),
        ("metrics", B, "PUT", "PutBucketMetricsConfiguration"),
        ("metrics", B, "DELETE", "DeleteBucketMetricsConfiguration"),
        ("notification", B, "GET", "GetBucketNotificationConfiguration"),
        ("notification", B, "PUT", "PutBucketNotificationConfiguration"),
        ("object-lock", B, "GET", "GetObjectLockConfiguration"),
        ("object-lock", B, "PUT", "PutObjectLockConfiguration"),
        ("ownershipControls", B, "GET", "GetBucketOwnershipControls"),
        ("ownershipControls", B, "PUT", "PutBucketOwnershipControls"),
        ("ownershipControls", B, "DELETE", "DeleteBucketOwnershipControls"),
        ("policy", B, "GET", "GetBucketPolicy"),
        ("policy", B, "PUT", "PutBucketPolicy"),
        ("policy", B, "DELETE", "DeleteBucketPolicy"),
        ("policyStatus", B, "GET", "GetBucketPolicyStatus"),
        ("publicAccessBlock", B, "GET", "GetPublicAccessBlock"),
        ("publicAccessBlock", B, "PUT", "PutPublicAccessBlock"),
        ("publicAccessBlock", B, "DELETE", "DeletePublicAccessBlock"),
        ("replication", B, "GET", "GetBucketReplication"),
        ("replication", B, "PUT", "PutBucketReplication"),
        ("replication", B, "DELETE", "DeleteBucketReplication"),
        ("requestPayment", B, "GET", "GetBucketRequestPayment"),
        ("requestPayment", B, "PUT", "PutBucketRequestPayment"),
        ("session", B, "GET", "CreateSession"),
        ("tagging", B, "GET", "GetBucketTagging"),
        ("tagging", B, "PUT", "PutBucketTagging"),
        ("tagging", B, "DELETE", "DeleteBucketTagging"),
        ("versioning", B, "GET", "GetBucketVersioning"),
        ("versioning", B, "PUT", "PutBucketVersioning"),
        ("versions", B, "GET", "ListObjectVersions"),
        ("website", B, "GET", "GetBucketWebsite"),
        ("website", B, "PUT", "PutBucketWebsite"),
        ("website", B, "DELETE", "DeleteBucketWebsite"),
        ("acl", O, "GET", "GetObjectAcl"),
        ("acl", O, "PUT", "PutObjectAcl"),
        ("attributes", O, "GET", "GetObjectAttributes"),
        ("legal-hold", O, "GET", "GetObjectLegalHold"),
        ("legal-hold", O, "PUT", "PutObjectLegalHold"),
        ("renameObject", O, "PUT", "RenameObject"),
        ("restore", O, "POST", "RestoreObject"),
        ("retention", O, "GET", "GetObjectRetention"),
        ("retention", O, "PUT", "PutObjectRetention"),
        ("select", O, "POST", "SelectObjectContent"),
        ("tagging", O, "GET", "GetObjectTagging"),
        ("tagging", O, "PUT", "PutObjectTagging"),
        ("tagging", O, "DELETE", "DeleteObjectTagging"),
        ("torrent", O, "GET", "GetObjectTorrent"),
    ]
};

/// The sub-resources of the operations kvtier implements, with those above: every query
/// parameter that selects an operation.
const IMPLEMENTED: &[&str] = &["delete", "location", "uploads", "uploadId"];

/// The operation a request is: `method` on `target`, with the query parameters `params`
/// (their names; values where they decide) and whether it names a copy source.
pub(super) fn operation(method: &Method, target: Target, params: &[(String, String)], copy: bool) -> Operation {
    use Operation::*;
    let has = |name: &str| params.iter().any(|(k, _)| k == name);
    let value = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let m = method.as_str();
    // A sub-resource kvtier does not implement: named, whatever else the query holds.
    if let Some((name, ..)) = UNIMPLEMENTED.iter().find(|(name, on, ..)| *on == target && has(name)) {
        let op = UNIMPLEMENTED.iter().find(|(n, on, how, _)| n == name && *on == target && *how == m);
        return op.map_or(NotAllowed, |(.., op)| NotImplemented(op));
    }
    let sub = |name: &str| IMPLEMENTED.contains(&name) && has(name);
    // One of those on a method S3 has no operation for it with (405).
    let any_sub = IMPLEMENTED.iter().any(|name| has(name));
    match target {
        Target::Service => match *method {
            Method::GET if !any_sub => ListBuckets,
            _ => NotAllowed,
        },
        Target::Bucket => match *method {
            Method::POST if sub("delete") => DeleteObjects,
            Method::GET if sub("location") => GetBucketLocation,
            Method::GET if sub("uploads") => ListMultipartUploads,
            _ if any_sub => NotAllowed,
            Method::GET => ListObjects,
            Method::PUT => CreateBucket,
            Method::HEAD => HeadBucket,
            Method::DELETE => DeleteBucket,
            // A browser's form upload to the bucket.
            Method::POST => NotImplemented("PostObject"),
            _ => NotAllowed,
        },
        Target::Object => match *method {
            Method::POST if sub("uploads") && !sub("uploadId") => CreateMultipartUpload,
            Method::PUT if sub("uploadId") && copy => UploadPartCopy,
            Method::PUT if sub("uploadId") => UploadPart,
            Method::GET if sub("uploadId") => ListParts,
            Method::POST if sub("uploadId") => CompleteMultipartUpload,
            Method::DELETE if sub("uploadId") => AbortMultipartUpload,
            _ if any_sub => NotAllowed,
            // Versions: a bucket here has none but the "null" one (an unversioned bucket's).
            Method::GET | Method::HEAD | Method::DELETE | Method::PUT
                if value("versionId").is_some_and(|v| v != "null") =>
            {
                NotImplemented(match *method {
                    Method::GET => "GetObject of a version (versionId)",
                    Method::HEAD => "HeadObject of a version (versionId)",
                    Method::DELETE => "DeleteObject of a version (versionId)",
                    _ => "PutObject with a versionId",
                })
            }
            Method::PUT if copy => CopyObject,
            Method::PUT => PutObject,
            Method::GET => GetObject,
            Method::HEAD => HeadObject,
            Method::DELETE => DeleteObject,
            _ => NotAllowed,
        },
    }
}

impl Operation {
    /// Its `op` label in `kvtier_request_duration_seconds` (`s3_get_object`, ...).
    pub(super) fn label(self) -> &'static str {
        use Operation::*;
        match self {
            ListBuckets => "s3_list_buckets",
            CreateBucket => "s3_create_bucket",
            HeadBucket => "s3_head_bucket",
            DeleteBucket => "s3_delete_bucket",
            ListObjects => "s3_list_objects",
            GetBucketLocation => "s3_get_bucket_location",
            DeleteObjects => "s3_delete_objects",
            ListMultipartUploads => "s3_list_multipart_uploads",
            PutObject => "s3_put_object",
            CopyObject => "s3_copy_object",
            GetObject => "s3_get_object",
            HeadObject => "s3_head_object",
            DeleteObject => "s3_delete_object",
            CreateMultipartUpload => "s3_create_multipart_upload",
            UploadPart => "s3_upload_part",
            UploadPartCopy => "s3_upload_part_copy",
            ListParts => "s3_list_parts",
            CompleteMultipartUpload => "s3_complete_multipart_upload",
            AbortMultipartUpload => "s3_abort_multipart_upload",
            NotImplemented(_) => "s3_not_implemented",
            NotAllowed => "s3_not_allowed",
        }
    }

    /// Every S3 operation this table names as not implemented (for the docs' table test).
    #[cfg(test)]
    pub(super) fn unimplemented() -> impl Iterator<Item = (&'static str, Target, &'static str, &'static str)> {
        UNIMPLEMENTED.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::{Operation::*, Target::*, *};

    fn op(method: Method, target: Target, query: &[(&str, &str)], copy: bool) -> Operation {
        let params: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        operation(&method, target, &params, copy)
    }

    #[test]
    fn sub_resources_select_their_operation_and_arguments_do_not() {
        assert_eq!(op(Method::GET, Service, &[], false), ListBuckets);
        assert_eq!(op(Method::PUT, Service, &[], false), NotAllowed);
        assert_eq!(
            op(Method::GET, Bucket, &[("list-type", "2"), ("prefix", "a/"), ("x-id", "ListObjectsV2")], false),
            ListObjects
        );
        assert_eq!(op(Method::POST, Bucket, &[("delete", "")], false), DeleteObjects);
        assert_eq!(op(Method::GET, Bucket, &[("uploads", "")], false), ListMultipartUploads);
        assert_eq!(op(Method::POST, Bucket, &[], false), NotImplemented("PostObject"));
        assert_eq!(op(Method::PUT, Bucket, &[("versioning", "")], false), NotImplemented("PutBucketVersioning"));
        assert_eq!(op(Method::DELETE, Bucket, &[("tagging", "")], false), NotImplemented("DeleteBucketTagging"));
        assert_eq!(
            op(Method::GET, Bucket, &[("versions", ""), ("prefix", "a")], false),
            NotImplemented("ListObjectVersions")
        );
        assert_eq!(op(Method::PUT, Object, &[("x-id", "PutObject")], false), PutObject);
        assert_eq!(op(Method::PUT, Object, &[], true), CopyObject);
        assert_eq!(op(Method::PUT, Object, &[("tagging", "")], false), NotImplemented("PutObjectTagging"));
        assert_eq!(op(Method::PUT, Object, &[("acl", "")], false), NotImplemented("PutObjectAcl"));
        assert_eq!(
            op(Method::DELETE, Object, &[("tagging", ""), ("versionId", "v")], false),
            NotImplemented("DeleteObjectTagging")
        );
        assert_eq!(op(Method::POST, Object, &[("tagging", "")], false), NotAllowed);
        assert_eq!(op(Method::PUT, Object, &[("uploadId", "u"), ("partNumber", "3")], false), UploadPart);
        assert_eq!(op(Method::PUT, Object, &[("uploadId", "u"), ("partNumber", "3")], true), UploadPartCopy);
        assert_eq!(op(Method::HEAD, Object, &[("uploadId", "u")], false), NotAllowed);
        assert_eq!(op(Method::GET, Object, &[("versionId", "null")], false), GetObject);
        assert!(matches!(op(Method::DELETE, Object, &[("versionId", "v1")], false), NotImplemented(_)));
        assert_eq!(op(Method::GET, Object, &[("partNumber", "1")], false), GetObject);
        // A presigned URL's own parameters are arguments.
        let presigned =
            [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Signature", "ab"), ("response-content-type", "t")];
        assert_eq!(op(Method::GET, Object, &presigned, false), GetObject);
    }

    /// docs/connectors.md lists every operation S3 has that kvtier answers 501.
    #[test]
    fn the_docs_name_every_unimplemented_operation() {
        let docs = include_str!("../../../docs/connectors.md");
        for (.., name) in Operation::unimplemented() {
            assert!(docs.contains(&format!("`{name}`")), "docs/connectors.md does not list {name}");
        }
    }
}
