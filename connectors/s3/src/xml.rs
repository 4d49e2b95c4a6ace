//! S3's XML: error documents, escaping, dates, and the request documents' reader (the
//! listings are in listing.rs).

use std::{
    collections::HashMap,
    time::{Duration, UNIX_EPOCH},
};

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use quick_xml::{Reader, XmlVersion, events::Event};

/// S3's documents are XML 1.0 (line ends read as 1.0 says: `\r\n` is `\n`).
const XML_1_0: XmlVersion = XmlVersion::Implicit1_0;

/// An S3 error: its HTTP status, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    /// HTTP status.
    pub status: StatusCode,
    /// S3's error code (`NoSuchKey`, `AccessDenied`, ...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl S3Error {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        S3Error { status, code, message: message.into() }
    }
}

impl S3Error {
    /// The error document S3 answers, naming the request (`RequestId`, as the
    /// `x-amz-request-id` header does; what a user quotes in a report).
    pub fn response(self, request_id: &str) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message>\
             <RequestId>{}</RequestId></Error>",
            self.code,
            escape(&self.message),
            escape(request_id)
        );
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        r
    }
}

/// `s` with XML's five special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// An XML document response with status 200.
pub fn document(body: String) -> Response {
    let mut r = Response::new(Body::from(format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}")));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    r
}

/// `2026-12-03T10:11:12.000Z` of seconds since the epoch.
pub fn iso8601(secs: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// `Thu, 03 Dec 2026 10:11:12 GMT` (HTTP dates: Last-Modified).
pub fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// What an S3 request document says: the text of each element under the root (`Quiet`),
/// and of each child of each record element under it (`Object`, `Part`), by local name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Document {
    /// The root's own elements' text.
    pub top: HashMap<String, String>,
    /// Each record's elements' text, in document order.
    pub records: Vec<HashMap<String, String>>,
}

/// Reads a request document whose root is `root` and whose repeated element is `record`
/// (`Delete`/`Object`, `CompleteMultipartUpload`/`Part`) with a real XML reader: any
/// namespace, declaration, comments, CDATA and character references (Go's SDK writes a
/// quote as `&#34;`), and an element's text exactly as sent: S3 keys may begin or end with
/// spaces. Anything else is S3's `MalformedXML`, naming what is wrong.
pub fn parse_document(doc: &str, root: &str, record: &str) -> Result<Document, S3Error> {
    let malformed = |why: String| S3Error::new(StatusCode::BAD_REQUEST, "MalformedXML", why);
    let mut reader = Reader::from_str(doc);
    let mut parsed = Document::default();
    // Where the reader is: before the root, in it, in a record, after the root.
    let (mut in_root, mut done, mut current): (bool, bool, Option<HashMap<String, String>>) = (false, false, None);
    loop {
        let event = reader.read_event().map_err(|e| malformed(format!("{root}: {e}")))?;
        let is_empty = matches!(event, Event::Empty(_));
        match event {
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Text(t) if t.xml_content(XML_1_0).is_ok_and(|t| t.trim().is_empty()) => {}
            Event::Eof if done => return Ok(parsed),
            Event::Eof => return Err(malformed(format!("the {root} document is cut short"))),
            Event::Start(e) | Event::Empty(e) if !in_root && !done => {
                if e.local_name().as_ref() != root.as_bytes() {
                    return Err(malformed(format!("the document is not a {root}")));
                }
                (in_root, done) = (!is_empty, is_empty);
            }
            Event::Start(e) | Event::Empty(e)
                if in_root && current.is_none() && e.local_name().as_ref() == record.as_bytes() =>
            {
                match is_empty {
                    true => parsed.records.push(HashMap::new()),
                    false => current = Some(HashMap::new()),
                }
            }
            Event::Start(e) | Event::Empty(e) if in_root => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let text = match is_empty {
                    true => String::new(),
                    false => element_text(&mut reader, &name).map_err(|why| malformed(format!("{root}: {why}")))?,
                };
                let fields = current.as_mut().unwrap_or(&mut parsed.top);
                if fields.insert(name.clone(), text).is_some() {
                    return Err(malformed(format!("{root}: {name} given twice")));
                }
            }
            Event::End(_) if current.is_some() => parsed.records.push(current.take().expect("a record")),
            Event::End(_) if in_root => (in_root, done) = (false, true),
            _ => return Err(malformed(format!("the document is not a {root} (unexpected content)"))),
        }
    }
}

/// The text of element `name`, its start tag just read, up to its end tag.
fn element_text(reader: &mut Reader<&[u8]>, name: &str) -> Result<String, String> {
    let mut text = String::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Text(t) => text.push_str(&t.xml_content(XML_1_0).map_err(|e| e.to_string())?),
            Event::CData(t) => text.push_str(&t.xml_content(XML_1_0).map_err(|e| e.to_string())?),
            Event::GeneralRef(r) => match r.resolve_char_ref().map_err(|e| e.to_string())? {
                Some(c) => text.push(c),
                None => {
                    let entity = r.decode().map_err(|e| e.to_string())?;
                    let resolved = quick_xml::escape::resolve_xml_entity(&entity);
                    text.push_str(resolved.ok_or_else(|| format!("an unknown entity &{entity}; in {name}"))?);
                }
            },
            Event::Comment(_) | Event::PI(_) => {}
            Event::End(_) => return Ok(text),
            Event::Eof => return Err(format!("{name} is not closed")),
            _ => return Err(format!("{name} holds elements where text belongs")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_print_as_s3_and_http_want_them() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_796_292_672), "2026-12-03T10:11:12.000Z");
        assert_eq!(http_date(1_796_292_672), "Thu, 03 Dec 2026 10:11:12 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn documents_read_records_and_top_level_elements_and_refuse_what_is_not_one() {
        let doc = "<Root a=\"1\"><R><K>1</K><E/></R><R/><Top>t</Top></Root>";
        let read = parse_document(doc, "Root", "R").unwrap();
        let record = HashMap::from([("K".to_string(), "1".to_string()), ("E".to_string(), String::new())]);
        assert_eq!(read.records, vec![record, HashMap::new()]);
        assert_eq!(read.top, HashMap::from([("Top".to_string(), "t".to_string())]));
        assert_eq!(parse_document("<Root/>", "Root", "R").unwrap(), Document::default());
        for bad in [
            "<Root><R><K>1</K></R>",
            "<Root><R><K>1</K></R></Root><Root/>",
            "<Root><R><K><X/></K></R></Root>",
            "<Root><R><K>1</R></K></Root>",
            "<Root>text</Root>",
            "text<Root/>",
            "<Root><R><K>&nope;</K></R></Root>",
        ] {
            let err = parse_document(bad, "Root", "R").unwrap_err();
            assert_eq!((err.status, err.code), (StatusCode::BAD_REQUEST, "MalformedXML"), "{bad}: {err:?}");
        }
    }

    #[test]
    fn errors_and_keys_are_escaped() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
