//! What S3 keeps of an object besides its bytes: the standard headers (`Content-Type`,
//! `Content-Encoding`, `Content-Disposition`, `Content-Language`, `Cache-Control`,
//! `Expires`), user metadata (`x-amz-meta-*`, at most 2 KB as S3 allows) and the checksum
//! its writer declared (`x-amz-checksum-*`), stored in the version's manifest
//! (`ObjectInfo::attributes`) and answered on GET and HEAD (the checksum only with
//! `x-amz-checksum-mode: ENABLED`), a GET's `response-*` parameters overriding the headers.
//! They were dropped: every object read back as `binary/octet-stream` with no metadata.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::server::{Result, err};
use kvtier_blockmgr::objects::ObjectInfo;

/// The standard headers an object keeps, with the `response-*` parameter overriding each.
const STANDARD: [(&str, &str); 6] = [
    ("content-type", "response-content-type"),
    ("content-encoding", "response-content-encoding"),
    ("content-disposition", "response-content-disposition"),
    ("content-language", "response-content-language"),
    ("cache-control", "response-cache-control"),
    ("expires", "response-expires"),
];
/// S3's limit on user metadata: names and values, in bytes.
const MAX_USER_METADATA: usize = 2048;
const USER: &str = "x-amz-meta-";
const CHECKSUM: &str = "x-amz-checksum-";

/// What a write's `headers` say of the object (names lower-cased, as HTTP has them).
pub(super) fn from_request(headers: &HeaderMap) -> Result<BTreeMap<String, String>> {
    let mut kept = BTreeMap::new();
    let mut user = 0;
    for (name, value) in headers {
        let name = name.as_str();
        let wanted = STANDARD.iter().any(|(n, _)| *n == name) || name.starts_with(USER);
        if !wanted {
            continue;
        }
        let value = value
            .to_str()
            .map_err(|_| err(StatusCode::BAD_REQUEST, "InvalidArgument", format!("{name} is not text")))?;
        if name.starts_with(USER) {
            user += name.len() - USER.len() + value.len();
        }
        kept.insert(name.to_string(), value.to_string());
    }
    if user > MAX_USER_METADATA {
        let what = format!("{user} bytes of x-amz-meta-* (at most {MAX_USER_METADATA})");
        return Err(err(StatusCode::BAD_REQUEST, "MetadataTooLarge", what));
    }
    Ok(kept)
}

/// Confirms the checksum `info` keeps (`x-amz-checksum-*`), as S3 answers a PutObject or
/// UploadPart that declared one.
pub(super) fn confirm_checksum(info: &ObjectInfo, out: &mut HeaderMap) {
    for (name, value) in info.attributes().iter().filter(|(n, _)| n.starts_with(CHECKSUM)) {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
            out.insert(n, v);
        }
    }
}

/// Whether attribute `name` is one S3 answers as a header (the others, such as the MD5 ETag
/// or the upload an object came from, are kvtier's own).
pub(super) fn answered(name: &str) -> bool {
    STANDARD.iter().any(|(n, _)| *n == name) || name.starts_with(USER) || name.starts_with(CHECKSUM)
}

/// Sets `out`, a GET's or HEAD's answer, to what `info` keeps; `request` may ask for the
/// checksum (`x-amz-checksum-mode: ENABLED`, what botocore sends by default; never with a
/// part of the object, which it would not match) and, on a GET, override the standard
/// headers (`response-content-type`, ...).
pub(super) fn answer(
    info: &ObjectInfo,
    request: &HeaderMap,
    params: &[(String, String)],
    whole: bool,
    out: &mut HeaderMap,
) -> Result<()> {
    let attributes = info.attributes();
    let checksum_mode =
        whole && request.get("x-amz-checksum-mode").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enabled"));
    for (name, value) in attributes {
        if !answered(name) || (name.starts_with(CHECKSUM) && !checksum_mode) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
            out.insert(n, v);
        }
    }
    // An object written in one piece has its whole bytes' checksum (a multipart upload's
    // keeps the type it was completed with).
    let has_checksum = attributes.keys().any(|n| n.starts_with(CHECKSUM));
    if checksum_mode && has_checksum && !attributes.contains_key(super::upload_checksum::TYPE_HEADER) {
        out.insert(super::upload_checksum::TYPE_HEADER, HeaderValue::from_static("FULL_OBJECT"));
    }
    if !attributes.contains_key("content-type") {
        out.insert(header::CONTENT_TYPE, HeaderValue::from_static("binary/octet-stream"));
    }
    for (name, param) in STANDARD {
        if let Some((_, value)) = params.iter().find(|(k, _)| k == param) {
            let value = HeaderValue::from_str(value).map_err(|_| {
                err(StatusCode::BAD_REQUEST, "InvalidArgument", format!("{param} is not a header value"))
            })?;
            out.insert(HeaderName::from_static(name), value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_headers_and_user_metadata_are_kept_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/csv".parse().unwrap());
        h.insert("x-amz-meta-Run", "7".parse().unwrap());
        h.insert("authorization", "secret".parse().unwrap());
        h.insert("x-amz-acl", "private".parse().unwrap());
        let kept = from_request(&h).unwrap();
        let want: BTreeMap<String, String> =
            [("content-type", "text/csv"), ("x-amz-meta-run", "7")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(kept, want);
        h.insert("x-amz-meta-big", "x".repeat(2100).parse().unwrap());
        assert_eq!(from_request(&h).unwrap_err().code, "MetadataTooLarge");
    }
}
