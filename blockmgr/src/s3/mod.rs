//! The S3-compatible endpoint (issue 8), in progress: so far the request authentication,
//! AWS Signature Version 4 ([`sigv4`]), which S3 clients (boto3, s3fs, `object_store`, NIXL's
//! OBJ plugin) sign every request with.

pub mod sigv4;
