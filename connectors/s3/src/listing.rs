//! ListObjects (V1: `marker`, `NextMarker`) and ListObjectsV2 (`list-type=2`:
//! `continuation-token`, `start-after`, `fetch-owner`), with `prefix`, `delimiter`,
//! `max-keys` (0 to 1000) and `encoding-type=url` as S3 answers them. V1's `marker` was once
//! ignored, so every page was the first (boto3's paginator aborts; other V1 clients loop),
//! and `max-keys=0` said "truncated" with an empty token.

use std::fmt::Write;

use axum::{http::StatusCode, response::Response};
use base64::Engine;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{
    server::{OBJECT_PREFIX, Result, S3, err, etag, internal, no_such_bucket},
    xml::{self, escape},
};

/// What `encoding-type=url` leaves as it is: RFC 3986's unreserved characters and `/`.
const KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// A listing request's arguments.
struct Ask {
    v2: bool,
    prefix: String,
    delimiter: String,
    max_keys: usize,
    /// V1's `marker`, V2's `start-after`: list the keys after it.
    after: Option<String>,
    /// V2's `continuation-token` as sent, and the key it resumes after.
    continuation: Option<(String, String)>,
    url: bool,
    owner: bool,
}

/// A continuation token: the key a listing resumes after, opaque to clients.
fn token(after: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after)
}

fn parse(params: &[(String, String)]) -> Result<Ask> {
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let bad = |what: String| err(StatusCode::BAD_REQUEST, "InvalidArgument", what);
    let v2 = match param("list-type") {
        None => false,
        Some("2") => true,
        Some(other) => return Err(bad(format!("list-type {other:?} (1 is without it, or 2)"))),
    };
    let max_keys = match param("max-keys") {
        None => 1000,
        Some(v) => v.parse::<usize>().map_err(|_| bad(format!("max-keys {v:?}")))?.min(1000),
    };
    let url = match param("encoding-type") {
        None => false,
        Some("url") => true,
        Some(other) => return Err(bad(format!("encoding-type {other:?} (only url)"))),
    };
    let continuation = match param("continuation-token").filter(|_| v2) {
        None => None,
        Some(t) => {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).ok();
            let key = decoded.and_then(|k| String::from_utf8(k).ok());
            let key = key.ok_or_else(|| bad("the continuation token is not one this endpoint gave".into()))?;
            Some((t.to_string(), key))
        }
    };
    let after = if v2 { param("start-after") } else { param("marker") };
    Ok(Ask {
        v2,
        prefix: param("prefix").unwrap_or("").to_string(),
        delimiter: param("delimiter").unwrap_or("").to_string(),
        max_keys,
        after: after.filter(|a| !a.is_empty()).map(String::from),
        continuation,
        url,
        // V1 always names each object's owner; V2 only when asked.
        owner: !v2 || param("fetch-owner") == Some("true"),
    })
}

/// One object of a listing: key, size, ETag, modified (seconds since the epoch).
type Entry = (String, u64, String, u64);

impl S3 {
    pub(super) async fn list(&self, bucket: &str, params: &[(String, String)]) -> Result<Response> {
        let ask = parse(params)?;
        if !self.bucket_exists(bucket).await? {
            return Err(no_such_bucket(bucket));
        }
        let all = self
            .objects
            .list_objects(&self.namespace(bucket), &format!("{OBJECT_PREFIX}{}", ask.prefix))
            .await
            .map_err(internal)?;
        // The listing resumes after the token's key, else after start-after (or V1's marker).
        let after = ask.continuation.as_ref().map(|(_, k)| k.clone()).or_else(|| ask.after.clone()).unwrap_or_default();
        let (mut contents, mut prefixes): (Vec<Entry>, Vec<String>) = (Vec::new(), Vec::new());
        let (mut last, mut next) = (String::new(), None);
        for info in all {
            let key = &info.path[OBJECT_PREFIX.len()..];
            if key <= after.as_str() {
                continue;
            }
            // Keys under one delimited prefix roll up into one common prefix.
            let rolled = (!ask.delimiter.is_empty())
                .then(|| {
                    key[ask.prefix.len()..]
                        .find(&ask.delimiter)
                        .map(|at| key[..ask.prefix.len() + at + ask.delimiter.len()].to_string())
                })
                .flatten();
            // A common prefix is listed once, and not again after a page that ended at it (V1's
            // NextMarker is that prefix, and its keys sort after it).
            if let Some(p) = &rolled
                && (prefixes.last() == Some(p) || p.as_str() <= after.as_str())
            {
                continue;
            }
            if contents.len() + prefixes.len() == ask.max_keys {
                // Truncated only with a page to show: max-keys=0 is an empty, whole answer.
                next = (ask.max_keys > 0).then(|| last.clone());
                break;
            }
            match rolled {
                Some(p) => {
                    // Resume past every key under this prefix.
                    last = format!("{p}\u{10ffff}");
                    prefixes.push(p);
                }
                None => {
                    last = key.to_string();
                    contents.push((key.to_string(), info.size, etag(&info), info.created_unix));
                }
            }
        }
        Ok(xml::document(render(bucket, &ask, &contents, &prefixes, next.as_deref())))
    }
}

/// The `ListBucketResult` document.
fn render(bucket: &str, ask: &Ask, contents: &[Entry], prefixes: &[String], next: Option<&str>) -> String {
    let text = |s: &str| if ask.url { utf8_percent_encode(s, KEEP).to_string() } else { escape(s) };
    let mut x = String::from("<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    let _ = write!(x, "<Name>{}</Name><Prefix>{}</Prefix>", escape(bucket), text(&ask.prefix));
    if !ask.delimiter.is_empty() {
        let _ = write!(x, "<Delimiter>{}</Delimiter>", text(&ask.delimiter));
    }
    if ask.url {
        x.push_str("<EncodingType>url</EncodingType>");
    }
    let _ = write!(x, "<MaxKeys>{}</MaxKeys><IsTruncated>{}</IsTruncated>", ask.max_keys, next.is_some());
    if ask.v2 {
        let _ = write!(x, "<KeyCount>{}</KeyCount>", contents.len() + prefixes.len());
        if let Some((t, _)) = &ask.continuation {
            let _ = write!(x, "<ContinuationToken>{}</ContinuationToken>", escape(t));
        }
        if let Some(n) = next {
            let _ = write!(x, "<NextContinuationToken>{}</NextContinuationToken>", token(n));
        }
        if let Some(s) = &ask.after {
            let _ = write!(x, "<StartAfter>{}</StartAfter>", text(s));
        }
    } else {
        let _ = write!(x, "<Marker>{}</Marker>", text(ask.after.as_deref().unwrap_or("")));
        // The key (or common prefix) the page ended at: the next page's marker.
        if next.is_some() {
            let end = prefixes.last().filter(|p| contents.last().is_none_or(|(k, ..)| *p > k));
            let end = end.cloned().or_else(|| contents.last().map(|(k, ..)| k.clone())).unwrap_or_default();
            let _ = write!(x, "<NextMarker>{}</NextMarker>", text(&end));
        }
    }
    for (key, size, tag, modified) in contents {
        let _ = write!(
            x,
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Size>{size}</Size>",
            text(key),
            xml::iso8601(*modified),
            escape(tag)
        );
        if ask.owner {
            x.push_str("<Owner><ID>kvtier</ID><DisplayName>kvtier</DisplayName></Owner>");
        }
        x.push_str("<StorageClass>STANDARD</StorageClass></Contents>");
    }
    for p in prefixes {
        let _ = write!(x, "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>", text(p));
    }
    x.push_str("</ListBucketResult>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(pairs: &[(&str, &str)]) -> Result<Ask> {
        parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
    }

    #[test]
    fn arguments_parse_as_s3_takes_them() {
        let v1 = ask(&[("marker", "a/b"), ("max-keys", "2")]).unwrap();
        assert!(!v1.v2 && v1.owner && v1.after.as_deref() == Some("a/b") && v1.max_keys == 2);
        let v2 = ask(&[("list-type", "2"), ("start-after", "x"), ("marker", "ignored")]).unwrap();
        assert!(v2.v2 && !v2.owner && v2.after.as_deref() == Some("x"));
        let resumed = ask(&[("list-type", "2"), ("continuation-token", &token("k/1\u{10ffff}"))]).unwrap();
        assert_eq!(resumed.continuation.unwrap().1, "k/1\u{10ffff}");
        for bad in [
            &[("list-type", "3")][..],
            &[("max-keys", "-1")],
            &[("encoding-type", "base64")],
            &[("list-type", "2"), ("continuation-token", "!!")],
        ] {
            assert_eq!(ask(bad).err().map(|e| e.code), Some("InvalidArgument"), "{bad:?}");
        }
    }

    #[test]
    fn url_encoding_covers_every_key_and_prefix_it_prints() {
        let a = ask(&[("encoding-type", "url"), ("prefix", "a b/"), ("delimiter", "/")]).unwrap();
        let doc = render("b", &a, &[("a b/ü&.txt".into(), 1, "\"e\"".into(), 0)], &["a b/c d/".into()], None);
        assert!(doc.contains("<Prefix>a%20b/</Prefix>") && doc.contains("<Key>a%20b/%C3%BC%26.txt</Key>"), "{doc}");
        assert!(doc.contains("<CommonPrefixes><Prefix>a%20b/c%20d/</Prefix>") && doc.contains("<EncodingType>url"));
    }
}
