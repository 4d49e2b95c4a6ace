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

use super::server::{Result, err, etag};
use kvtier_blockmgr::objects::{CommitIf, ObjectInfo};

/// A read's conditions met, or not modified (304).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Read {
    Proceed,
    NotModified,
}

/// An ETag as compared: without a weak mark, quotes or spaces.
fn bare(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/").trim_matches('"')
}

/// Whether `list` (`*`, or ETags separated by commas) names `info`.
fn names(list: &str, info: &ObjectInfo) -> bool {
    let own = etag(info);
    list.split(',').any(|t| t.trim() == "*" || bare(t) == bare(&own))
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

/// What a write or delete asks of the version it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Asks {
    /// Nothing.
    Nothing,
    /// No version (`If-None-Match: *` on a write).
    Absent,
    /// Some version (`If-Match: *` on a delete).
    Any,
    /// The version with this ETag (`If-Match`).
    Match(String),
}

/// A write's condition (`If-None-Match: *`, `If-Match: <ETag>`).
pub(super) fn write(headers: &HeaderMap) -> Result<Asks> {
    match (value(headers, header::IF_NONE_MATCH.as_str()), value(headers, header::IF_MATCH.as_str())) {
        (None, None) => Ok(Asks::Nothing),
        (Some("*"), None) => Ok(Asks::Absent),
        (None, Some(tag)) if tag.trim() != "*" => Ok(Asks::Match(tag.to_string())),
        (Some(other), None) => {
            let what = format!("If-None-Match: {other} on a write (S3 takes only *)");
            Err(err(StatusCode::NOT_IMPLEMENTED, "NotImplemented", what))
        }
        _ => {
            let what = "If-Match: * or If-Match with If-None-Match on a write";
            Err(err(StatusCode::NOT_IMPLEMENTED, "NotImplemented", what))
        }
    }
}

/// A delete's condition (`If-Match` on DeleteObject, an object's `ETag` in DeleteObjects).
pub(super) fn delete(if_match: Option<&str>) -> Asks {
    match if_match.map(str::trim) {
        None => Asks::Nothing,
        Some("*") => Asks::Any,
        Some(tag) => Asks::Match(tag.to_string()),
    }
}

/// What the path's primary is to decide at the commit, given `key`'s version `now`: the
/// answers S3 gives before a body is read where it fails already (412; 404 `NoSuchKey` for
/// `If-Match` with no object). `If-Match` becomes the very version its ETag names, so a
/// version committed in between fails it at the commit.
pub(super) fn resolve(key: &str, asks: &Asks, now: Option<&ObjectInfo>) -> Result<CommitIf> {
    let missing = || err(StatusCode::NOT_FOUND, "NoSuchKey", format!("If-Match: {key:?} does not exist"));
    match (asks, now) {
        (Asks::Nothing, _) => Ok(CommitIf::Any),
        (Asks::Absent, None) => Ok(CommitIf::Absent),
        (Asks::Absent, Some(_)) => Err(write_failed(key, CommitIf::Absent)),
        (Asks::Any | Asks::Match(_), None) => Err(missing()),
        (Asks::Any, Some(_)) => Ok(CommitIf::Any),
        (Asks::Match(tag), Some(v)) if names(tag, v) => {
            Ok(CommitIf::Current { generation: v.generation, crc32c: v.crc32c })
        }
        (Asks::Match(_), Some(_)) => Err(write_failed(key, CommitIf::Current { generation: 0, crc32c: 0 })),
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
        // A manifest as a node stores it (its JSON), of an empty object.
        let manifest = serde_json::json!({
            "path": "k", "size": 0, "generation": generation, "chunk_size": 1,
            "crc32c": crc32c, "created_unix": created_unix, "id": 0,
        });
        serde_json::from_value(manifest).unwrap()
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
            let asks = write(&headers(h)).map_err(|e| (e.status.as_u16(), e.code))?;
            resolve("k", &asks, now.as_ref()).map_err(|e| (e.status.as_u16(), e.code))
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
        assert_eq!(write(&[("if-match", "*"), ("if-none-match", "*")], Some(o.clone())), Err((501, "NotImplemented")));
        // An MD5 ETag names its version as well.
        let mut v = serde_json::to_value(&o).unwrap();
        v["attributes"] = serde_json::json!({"etag": "0123456789abcdef0123456789abcdef"});
        let md5: ObjectInfo = serde_json::from_value(v).unwrap();
        assert_eq!(write(&[("if-match", "\"0123456789abcdef0123456789abcdef\"")], Some(md5.clone())), Ok(current));
        assert_eq!(
            write(&[("if-match", &format!("\"{:08x}{:016x}\"", 9, 7))], Some(md5)),
            Err((412, "PreconditionFailed"))
        );
        // Deletes: `*` needs a version, an ETag that version.
        assert_eq!(resolve("k", &delete(Some("*")), None).map_err(|e| e.code), Err("NoSuchKey"));
        assert_eq!(resolve("k", &delete(Some("*")), Some(&o)), Ok(CommitIf::Any));
        assert_eq!(resolve("k", &delete(None), None), Ok(CommitIf::Any));
    }
}
