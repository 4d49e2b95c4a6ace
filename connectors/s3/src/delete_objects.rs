//! DeleteObjects (`POST /bucket?delete`): many keys in one request, as s3fs's `rm` sends them.

use axum::{body::Body, http::StatusCode, response::Response};

use super::{
    server::{S3, check_key, err, no_such_bucket},
    xml::{self, S3Error},
};

/// S3's limit on keys per request.
const MAX_KEYS: usize = 1000;

/// `s` with XML's entities (`&amp;` `&lt;` `&gt;` `&quot;` `&apos;`, `&#NN;`) replaced.
fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';')? + at;
        let entity = &rest[at + 1..end];
        out.push(match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") => char::from_u32(u32::from_str_radix(&e[2..], 16).ok()?)?,
            e if e.starts_with('#') => char::from_u32(e[1..].parse().ok()?)?,
            _ => return None,
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// An `<Object>` of a `<Delete>` document.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    key: String,
    /// The version it may delete (a conditional delete): `*` or an ETag.
    etag: Option<String>,
    /// A version of a versioned bucket (501 but for `null`, an unversioned bucket's).
    version: Option<String>,
}

/// The objects of a `<Delete>` document, and whether it asks for a quiet answer.
fn parse(doc: &str) -> Result<(Vec<Target>, bool), S3Error> {
    let malformed = |why: &str| err(StatusCode::BAD_REQUEST, "MalformedXML", why.to_string());
    let body = doc.split_once("<Delete").ok_or_else(|| malformed("no Delete"))?.1;
    let body = body.split_once("</Delete>").ok_or_else(|| malformed("unclosed Delete"))?.0;
    let mut keys = Vec::new();
    for object in body.split("<Object>").skip(1) {
        let object = object.split_once("</Object>").ok_or_else(|| malformed("unclosed Object"))?.0;
        let element = |tag: &str| {
            let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
            let value = object.split_once(&open).and_then(|(_, r)| r.split_once(&close)).map(|(v, _)| v);
            value.map(|v| unescape(v).ok_or_else(|| malformed(&format!("an entity in a {tag}")))).transpose()
        };
        let key = element("Key")?.ok_or_else(|| malformed("Key"))?;
        keys.push(Target { key, etag: element("ETag")?, version: element("VersionId")? });
    }
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(malformed("1 to 1000 Objects"));
    }
    Ok((keys, body.contains("<Quiet>true</Quiet>")))
}

impl S3 {
    pub(super) async fn delete_objects(&self, bucket: &str, body: Body) -> Result<Response, S3Error> {
        if !self.bucket_exists(bucket).await? {
            return Err(no_such_bucket(bucket));
        }
        let doc = axum::body::to_bytes(body, 4 << 20)
            .await
            .map_err(|_| err(StatusCode::BAD_REQUEST, "MalformedXML", "the document is too large or cut short"))?;
        let doc = std::str::from_utf8(&doc).map_err(|_| err(StatusCode::BAD_REQUEST, "MalformedXML", "not UTF-8"))?;
        let (keys, quiet) = parse(doc)?;
        let mut result = String::from("<DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
        for Target { key, etag, version } in keys {
            let outcome = match check_key(&key) {
                Err(e) => Err(e),
                Ok(()) if version.as_ref().is_some_and(|v| v != "null") => Err(err(
                    StatusCode::NOT_IMPLEMENTED,
                    "NotImplemented",
                    "deleting a version (VersionId) is not implemented here; nothing was done",
                )),
                Ok(()) => self.delete_if(bucket, &key, etag.as_deref()).await,
            };
            match outcome {
                Ok(_) if quiet => {}
                Ok(_) => result.push_str(&format!("<Deleted><Key>{}</Key></Deleted>", xml::escape(&key))),
                Err(e) => result.push_str(&format!(
                    "<Error><Key>{}</Key><Code>{}</Code><Message>{}</Message></Error>",
                    xml::escape(&key),
                    e.code,
                    xml::escape(&e.message)
                )),
            }
        }
        result.push_str("</DeleteResult>");
        Ok(xml::document(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_documents_parse_with_entities_and_bad_ones_are_malformed() {
        let doc = "<Delete xmlns=\"x\"><Object><Key>a&amp;b &lt;c&gt;</Key></Object><Object><Key>d/e</Key>\
                   </Object><Quiet>true</Quiet></Delete>";
        let plain = |key: &str| Target { key: key.into(), etag: None, version: None };
        assert_eq!(parse(doc).unwrap(), (vec![plain("a&b <c>"), plain("d/e")], true));
        let conditional =
            "<Delete><Object><Key>k</Key><ETag>&quot;e&quot;</ETag><VersionId>v</VersionId></Object></Delete>";
        let target = Target { key: "k".into(), etag: Some("\"e\"".into()), version: Some("v".into()) };
        assert_eq!(parse(conditional).unwrap(), (vec![target], false));
        for bad in
            ["", "<Delete></Delete>", "<Delete><Object><Key>x&bogus;</Key></Object></Delete>", "<Delete><Object>"]
        {
            assert_eq!(parse(bad).unwrap_err().code, "MalformedXML", "{bad}");
        }
        assert_eq!(unescape("&#65;&#x42;").as_deref(), Some("AB"));
    }
}
