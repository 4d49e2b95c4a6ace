//! The S3-compatible endpoint: buckets as namespaces, objects as named objects, every
//! request signed with AWS Signature Version 4 ([`sigv4`]). Served on `[s3] listen`;
//! aws-chunked bodies with unsigned trailers are accepted, signed streaming chunks are not;
//! a body's declared checksum (header or trailer) is verified before it is committed.

mod buckets;
mod checksum;
mod chunked;
mod conditions;
mod delete_objects;
mod errors;
mod listing;
mod metadata;
mod multipart;
mod objects;
mod routes;
mod server;
mod sigv2;
pub mod sigv4;
mod upload_checksum;
mod upload_listing;
pub mod xml;

use kvtier_blockmgr::{Objects, config::S3Config};
pub use server::serve;

/// Creates bucket `bucket` as `config` maps it (what an S3 CreateBucket does), for tools in
/// the node's process (benchmarks, set-up); an existing bucket is left as it is.
pub async fn create_bucket(objects: &Objects, config: &S3Config, bucket: &str) -> Result<(), kvtier_blockmgr::Error> {
    let durability = config.durability()?;
    buckets::write_bucket(objects, &config.namespace_prefix, bucket, durability).await?;
    Ok(())
}
