//! The S3-compatible endpoint (issue 8, in progress): buckets as namespaces, objects as
//! named objects, every request signed with AWS Signature Version 4 ([`sigv4`]).
//! Served on `[s3] listen`; virtual-host addressing and aws-chunked bodies are not there yet.

mod delete_objects;
mod multipart;
pub(crate) mod server;
pub mod sigv4;
pub mod xml;
