//! S3's XML: error documents, escaping and dates (the listings are in listing.rs).

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

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
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// `Thu, 03 Dec 2026 10:11:12 GMT` (HTTP dates: Last-Modified).
pub fn http_date(secs: u64) -> String {
    let iso = iso8601(secs);
    let days = secs / 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        [iso[5..7].parse::<usize>().expect("two digits") - 1];
    format!("{weekday}, {} {month} {} {} GMT", &iso[8..10], &iso[0..4], &iso[11..19])
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
    fn errors_and_keys_are_escaped() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
