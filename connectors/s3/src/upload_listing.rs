//! Multipart uploads' listings: ListParts (an upload's parts, with their checksums when the
//! upload names an algorithm) and ListMultipartUploads (a bucket's uploads in progress).

use axum::response::Response;
use http::StatusCode;

use super::{
    multipart::marker,
    server::{S3, err, etag, internal},
    upload_checksum::{self, UploadChecksum},
    xml::{self, S3Error},
};
use kvtier_blockmgr::objects::ObjectInfo;

impl S3 {
    /// ListParts: the parts of upload `id` uploaded so far, by number, from
    /// `part-number-marker` on, at most `max-parts` (1000).
    pub(super) async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        params: &[(String, String)],
    ) -> Result<Response, S3Error> {
        let upload = UploadChecksum::of_upload(&self.check_upload(bucket, key, id).await?);
        let number = |name: &str, default: u32| -> Result<u32, S3Error> {
            match params.iter().find(|(k, _)| k == name) {
                None => Ok(default),
                Some((_, v)) => {
                    v.parse().map_err(|_| err(StatusCode::BAD_REQUEST, "InvalidArgument", name.to_string()))
                }
            }
        };
        let (after, max) = (number("part-number-marker", 0)?, number("max-parts", 1000)?.min(1000));
        let prefix = format!("{}/", marker(id));
        let mut parts: Vec<(u32, ObjectInfo)> = self
            .objects
            .list_objects(&self.namespace(bucket), &prefix)
            .await
            .map_err(internal)?
            .into_iter()
            .filter_map(|p| Some((p.path.strip_prefix(&prefix)?.parse::<u32>().ok()?, p)))
            .filter(|(n, _)| *n > after)
            .collect();
        parts.sort_by_key(|(n, _)| *n);
        let truncated = parts.len() > max as usize;
        parts.truncate(max as usize);
        let listed: String = parts
            .iter()
            .map(|(n, p)| {
                format!(
                    "<Part><PartNumber>{n}</PartNumber><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size>{}</Part>",
                    xml::iso8601(p.created_unix),
                    xml::escape(&etag(p)),
                    p.size,
                    upload_checksum::elements(p),
                )
            })
            .collect();
        let next = parts.last().map_or(after, |(n, _)| *n);
        Ok(xml::document(format!(
            "<ListPartsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket><Key>{}</Key>\
             <UploadId>{id}</UploadId><PartNumberMarker>{after}</PartNumberMarker>\
             <NextPartNumberMarker>{next}</NextPartNumberMarker><MaxParts>{max}</MaxParts>\
             <IsTruncated>{truncated}</IsTruncated>{}{listed}</ListPartsResult>",
            xml::escape(bucket),
            xml::escape(key),
            upload.map(|u| u.list_parts_xml()).unwrap_or_default(),
        )))
    }

    /// ListMultipartUploads: the bucket's uploads in progress whose key starts with `prefix`,
    /// by key then id, at most `max-uploads` (1000), after `key-marker`/`upload-id-marker`.
    pub(super) async fn list_uploads(&self, bucket: &str, params: &[(String, String)]) -> Result<Response, S3Error> {
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
        let (prefix, key_marker, id_marker) = (param("prefix"), param("key-marker"), param("upload-id-marker"));
        let max = match param("max-uploads") {
            "" => 1000,
            v => v.parse::<usize>().map_err(|_| err(StatusCode::BAD_REQUEST, "InvalidArgument", "max-uploads"))?,
        }
        .min(1000);
        let ns = self.namespace(bucket);
        let mut uploads = Vec::new();
        for m in self.objects.list_objects(&ns, "u/").await.map_err(internal)? {
            let Some(id) = m.path.strip_prefix("u/").filter(|id| !id.contains('/')) else { continue };
            // Skipped if it went meanwhile.
            let Some(key) = self.upload_key(&ns, &m).await else { continue };
            // After the markers: keys past key-marker, or its own uploads past upload-id-marker.
            let after = match (key_marker, id_marker) {
                ("", _) => true,
                (k, "") => key.as_str() > k,
                (k, i) => (key.as_str(), id) > (k, i),
            };
            if key.starts_with(prefix) && after {
                let checksum = UploadChecksum::of_upload(&m).map(|c| c.list_parts_xml()).unwrap_or_default();
                uploads.push((key, id.to_string(), m.created_unix, checksum));
            }
        }
        uploads.sort();
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let (next_key, next_id) = uploads.last().map_or(("", ""), |(k, i, _, _)| (k.as_str(), i.as_str()));
        let listed: String = uploads
            .iter()
            .map(|(k, i, t, checksum)| {
                format!(
                    "<Upload><Key>{}</Key><UploadId>{i}</UploadId><Initiated>{}</Initiated>{checksum}</Upload>",
                    xml::escape(k),
                    xml::iso8601(*t)
                )
            })
            .collect();
        Ok(xml::document(format!(
            "<ListMultipartUploadsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket>\
             <KeyMarker>{}</KeyMarker><UploadIdMarker>{}</UploadIdMarker><NextKeyMarker>{}</NextKeyMarker>\
             <NextUploadIdMarker>{}</NextUploadIdMarker><Prefix>{}</Prefix><MaxUploads>{max}</MaxUploads>\
             <IsTruncated>{truncated}</IsTruncated>{listed}</ListMultipartUploadsResult>",
            xml::escape(bucket),
            xml::escape(key_marker),
            xml::escape(id_marker),
            xml::escape(next_key),
            xml::escape(next_id),
            xml::escape(prefix),
        )))
    }
}
