//! S3's conditional requests. Reads (GetObject, HeadObject) take `If-Match`,
//! `If-Unmodified-Since` (412 when they fail), `If-None-Match`, `If-Modified-Since` (304),
//! in RFC 9110's order, as S3 applies them; a copy's source (CopyObject, UploadPartCopy) the
//! same four as `x-amz-copy-source-if-*`, any failing one a 412. Writes (PutObject,
//! CompleteMultipartUpload) take `If-None-Match: *` and `If-Match: <ETag>`, which become a
//! [`CommitIf`] the path's primary decides at the commit, so of writers racing through any
//! members one at most succeeds; so do deletes (DeleteObject's `If-Match`, an object's
//! `ETag` in DeleteObjects: `*` or the ETag of the version to delete). These were once ignored: a stale `If-Match` overwrote the
//! object, a conditional GET answered the whole body.

use axum::http::{HeaderMap, StatusCode, header};

#[cfg(test)]
use super::server::etag;
use super::server::{Result, err};
use crate::objects::{CommitIf, ObjectInfo};

/// A read's conditions met, or not modified (304).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Read {
    Proceed,
    NotModified,
}

/// The version an ETag names (`None`: no ETag of ours; see `server::etag`).
fn version_of(tag: &str) -> Option<(u32, u64)> {
    let t = tag.trim().trim_start_matches("W/").trim_matches('"');
    if t.len() != 24 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((u32::from_str_radix(&t[..8], 16).ok()?, u64::from_str_radix(&t[8..], 16).ok()?))
}

/// Whether `list` (`*`, or ETags separated by commas) names `info`.
fn names(list: &str, info: &ObjectInfo) -> bool {
    list.split(',').any(|t| t.trim() == "*" || version_of(t) == Some((info.crc32c, info.generation)))
}

/// Header `name`'s value, if any (one that is not text matches nothing).
fn value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap_or(""))
}

/// Header `name` as an HTTP date, in seconds since the epoch (an invalid date is ignored,
/// as RFC 9110 asks).
fn date(headers: &HeaderMap, name: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(value(headers, name)?).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// The four conditions, each header named with `prefix` (`""` for a read,
/// `"x-amz-copy-source-"` for a copy's source): `Err(what failed)` for a 412, else whether
/// to answer 304.
fn evaluate(headers: &HeaderMap, prefix: &str, info: &ObjectInfo) -> std::result::Result<Read, String> {
    let name = |n: &str| format!("{prefix}{n}");
    let modified = info.created_unix;
    match value(headers, &name("if-match")) {
        Some(list) if !names(list, info) => {
            return Err(format!("{} does not name the object's ETag", name("If-Match")));
        }
        Some(_) => {}
        None => {
            if date(headers, &name("if-unmodified-since")).is_some_and(|d| modified > d) {
                return Err(format!("the object was modified after {}", name("If-Unmodified-Since")));
            }
        }
    }
    match value(headers, &name("if-none-match")) {
        Some(list) if names(list, info) => return Ok(Read::NotModified),
        Some(_) => {}
        None => {
            if date(headers, &name("if-modified-since")).is_some_and(|d| modified <= d) {
                return Ok(Read::NotModified);
            }
        }
    }
    Ok(Read::Proceed)
}

fn precondition_failed(what: String) -> super::xml::S3Error {
    err(StatusCode::PRECONDITION_FAILED, "PreconditionFailed", what)
}

/// GetObject's and HeadObject's conditions on `info`: 412, 304 or go on.
pub(super) fn read(headers: &HeaderMap, info: &ObjectInfo) -> Result<Read> {
    evaluate(headers, "", info).map_err(precondition_failed)
}

/// A copy's conditions on its source `info`: every failing one is a 412.
pub(super) fn copy_source(headers: &HeaderMap, info: &ObjectInfo) -> Result<()> {
    match evaluate(headers, "x-amz-copy-source-", info) {
        Ok(Read::Proceed) => Ok(()),
        Ok(Read::NotModified) => Err(precondition_failed(
            "x-amz-copy-source-If-None-Match or -If-Modified-Since: the source is not to be copied".into(),
        )),
        Err(what) => Err(precondition_failed(what)),
    }
}

/// A write's condition on the version it replaces (`If-None-Match: *`, `If-Match`), as the
/// primary decides it at the commit.
pub(super) fn write(headers: &HeaderMap) -> Result<CommitIf> {
    let condition = match (value(headers, header::IF_NONE_MATCH.as_str()), value(headers, header::IF_MATCH.as_str())) {
        (None, None) => return Ok(CommitIf::Any),
        (Some("*"), None) => CommitIf::Absent,
        (None, Some(tag)) if tag.trim() != "*" => match version_of(tag) {
            Some((crc32c, generation)) => CommitIf::Current { generation, crc32c },
            // No version of ours has it: whatever is there, the condition fails.
            None => CommitIf::Current { generation: 0, crc32c: 0 },
        },
        (Some(other), None) => {
            let what = format!("If-None-Match: {other} on a write (S3 takes only *)");
            return Err(err(StatusCode::NOT_IMPLEMENTED, "NotImplemented", what));
        }
        _ => {
            let what = "If-Match: * or If-Match with If-None-Match on a write";
            return Err(err(StatusCode::NOT_IMPLEMENTED, "NotImplemented", what));
        }
    };
    Ok(condition)
}

/// `condition` on `key`'s version now, for the answers S3 gives before a body is read: 412
/// when it fails already, 404 `NoSuchKey` for `If-Match` with no object.
pub(super) fn check_write(key: &str, condition: CommitIf, now: Option<&ObjectInfo>) -> Result<()> {
    match condition {
        CommitIf::Current { .. } if now.is_none() => {
            Err(err(StatusCode::NOT_FOUND, "NoSuchKey", format!("If-Match: {key:?} does not exist")))
        }
        c if !c.holds(now) => Err(write_failed(key, c)),
        _ => Ok(()),
    }
}

/// A delete's condition (`If-Match` on DeleteObject, an object's `ETag` in DeleteObjects):
/// the version the ETag names; none for `*` (a delete needs a live version anyway).
pub(super) fn delete(if_match: Option<&str>) -> CommitIf {
    match if_match.map(str::trim) {
        None | Some("*") => CommitIf::Any,
        Some(tag) => {
            let (crc32c, generation) = version_of(tag).unwrap_or((0, 0));
            CommitIf::Current { generation, crc32c }
        }
    }
}

/// The 412 of a write whose condition failed (before its body, or at its commit).
pub(super) fn write_failed(key: &str, condition: CommitIf) -> super::xml::S3Error {
    precondition_failed(match condition {
        CommitIf::Absent => format!("{key:?} exists (If-None-Match: *)"),
        _ => format!("{key:?} is not the version If-Match names"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(generation: u64, crc32c: u32, created_unix: u64) -> ObjectInfo {
        let mut v = serde_json::to_value(ObjectInfo::delete_marker("k")).unwrap();
        v["deleted"] = false.into();
        (v["generation"], v["crc32c"], v["created_unix"]) = (generation.into(), crc32c.into(), created_unix.into());
        serde_json::from_value(v).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (header::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn reads_answer_412_304_or_go_on_in_rfc_order() {
        let o = info(0x1234, 0xdead_beef, 1_000_000);
        let tag = etag(&o);
        let (before, after) = (
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(999_999)),
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)),
        );
        let read = |h: &[(&'static str, &str)]| read(&headers(h), &o).map_err(|e| e.status.as_u16());
        assert_eq!(read(&[]), Ok(Read::Proceed));
        assert_eq!(read(&[("if-match", &tag)]), Ok(Read::Proceed));
        assert_eq!(read(&[("if-match", "\"other\", *")]), Ok(Read::Proceed));
        assert_eq!(read(&[("if-match", "\"000000000000000000000001\"")]), Err(412));
        assert_eq!(read(&[("if-unmodified-since", &before)]), Err(412));
        assert_eq!(read(&[("if-unmodified-since", &after)]), Ok(Read::Proceed));
        // If-Match true wins over If-Unmodified-Since false (S3, RFC 9110).
        assert_eq!(read(&[("if-match", &tag), ("if-unmodified-since", &before)]), Ok(Read::Proceed));
        assert_eq!(read(&[("if-none-match", &tag)]), Ok(Read::NotModified));
        assert_eq!(read(&[("if-none-match", "\"x\"")]), Ok(Read::Proceed));
        assert_eq!(read(&[("if-modified-since", &after)]), Ok(Read::NotModified));
        assert_eq!(read(&[("if-modified-since", &before)]), Ok(Read::Proceed));
        assert_eq!(read(&[("if-modified-since", "not a date")]), Ok(Read::Proceed));
        assert_eq!(read(&[("if-none-match", "\"x\""), ("if-modified-since", &after)]), Ok(Read::Proceed));
        let copy = |h: &[(&'static str, &str)]| copy_source(&headers(h), &o).map_err(|e| e.status.as_u16());
        assert_eq!(copy(&[("x-amz-copy-source-if-match", &tag)]), Ok(()));
        assert_eq!(copy(&[("x-amz-copy-source-if-none-match", &tag)]), Err(412));
        assert_eq!(copy(&[("x-amz-copy-source-if-modified-since", &after)]), Err(412));
        assert_eq!(copy(&[("if-none-match", &tag)]), Ok(()), "a read's header is not the source's");
    }

    #[test]
    fn writes_become_the_condition_the_primary_decides() {
        let o = info(7, 9, 1);
        let write = |h: &[(&'static str, &str)], now: Option<ObjectInfo>| {
            let c = write(&headers(h)).map_err(|e| (e.status.as_u16(), e.code))?;
            check_write("k", c, now.as_ref()).map_err(|e| (e.status.as_u16(), e.code)).map(|()| c)
        };
        assert_eq!(write(&[], Some(o.clone())), Ok(CommitIf::Any));
        assert_eq!(write(&[("if-none-match", "*")], None), Ok(CommitIf::Absent));
        assert_eq!(write(&[("if-none-match", "*")], Some(o.clone())), Err((412, "PreconditionFailed")));
        let current = CommitIf::Current { generation: 7, crc32c: 9 };
        assert_eq!(write(&[("if-match", &etag(&o))], Some(o.clone())), Ok(current));
        assert_eq!(write(&[("if-match", &etag(&o))], None), Err((404, "NoSuchKey")));
        assert_eq!(write(&[("if-match", "\"stale\"")], Some(o.clone())), Err((412, "PreconditionFailed")));
        assert_eq!(write(&[("if-none-match", "\"x\"")], None), Err((501, "NotImplemented")));
        assert_eq!(write(&[("if-match", "*")], Some(o.clone())), Err((501, "NotImplemented")));
        assert_eq!(write(&[("if-match", "*"), ("if-none-match", "*")], Some(o)), Err((501, "NotImplemented")));
    }
}
