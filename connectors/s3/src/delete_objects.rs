//! DeleteObjects (`POST /bucket?delete`): many keys in one request, as s3fs's `rm` sends them.

use axum::{body::Body, http::StatusCode, response::Response};

use super::{
    server::{S3, check_key, err, no_such_bucket},
    xml::{self, S3Error},
};

/// S3's limit on keys per request.
const MAX_KEYS: usize = 1000;

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
    let doc = xml::parse_document(doc, "Delete", "Object")?;
    let mut keys = Vec::with_capacity(doc.records.len());
    for mut object in doc.records {
        let key = object.remove("Key").ok_or_else(|| malformed("an Object without a Key"))?;
        keys.push(Target { key, etag: object.remove("ETag"), version: object.remove("VersionId") });
    }
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(malformed("1 to 1000 Objects"));
    }
    let quiet = match doc.top.get("Quiet").map(|q| q.trim()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(malformed(&format!("Quiet is {other:?}, not true or false"))),
    };
    Ok((keys, quiet))
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
        for bad in [
            "",
            "<Delete></Delete>",
            "<Delete><Object><Key>x&bogus;</Key></Object></Delete>",
            "<Delete><Object>",
            "<Delete><Object><ETag>e</ETag></Object></Delete>",
            "<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>",
            "<Delete><Object><Key>a</Key></Object><Quiet>yes</Quiet></Delete>",
            "<Delete><Object><Key>a</Object></Key></Delete>",
            "<Other><Object><Key>a</Key></Object></Other>",
        ] {
            assert_eq!(parse(bad).unwrap_err().code, "MalformedXML", "{bad}");
        }
    }

    /// What other writers send: Go's SDK escapes a quote as `&#34;`, keys may begin or end
    /// with spaces (S3 keeps them), and a key may come as CDATA around a comment.
    #[test]
    fn keys_keep_their_spaces_and_any_well_formed_spelling_reads_the_same() {
        let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- by hand -->\
                   <s3:Delete xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\">\n  <s3:Object>\
                   <s3:Key> spaced key </s3:Key><s3:ETag>&#34;e&#34;</s3:ETag></s3:Object>\
                   <Object><Key><![CDATA[a<b]]><!-- x -->&#x41;</Key></Object><Quiet> false </Quiet></s3:Delete>";
        let (keys, quiet) = parse(doc).unwrap();
        assert!(!quiet);
        assert_eq!(
            keys,
            vec![
                Target { key: " spaced key ".into(), etag: Some("\"e\"".into()), version: None },
                Target { key: "a<bA".into(), etag: None, version: None },
            ]
        );
    }
}
