//! AWS Signature Version 4, as S3 clients sign requests: the `Authorization` header form,
//! and presigned URLs (the signature and its scope in the query, `X-Amz-Expires` seconds of
//! validity, the payload unsigned).
//!
//! The canonical request is S3's: the path exactly as sent (S3 does not normalise or
//! re-encode it), the query's `key=value` pairs as sent and sorted, each signed header as
//! `name:value` (lower-case name, value trimmed with inner runs of spaces collapsed), the
//! signed header names, and the payload hash the client declared in `x-amz-content-sha256`.
//! The verifier recomputes the signature with the access key's secret and compares in
//! constant time; it leaves checking the body against a declared hash to the caller, which
//! has the body.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How long a signature stays valid either side of the server's clock (S3's 15 minutes).
pub const MAX_SKEW_SECONDS: i64 = 15 * 60;

/// Why a request's signature was not accepted; each maps to S3's error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header (an anonymous request).
    #[error("the request is not signed")]
    Missing,
    /// The header is not SigV4 as S3 clients write it.
    #[error("malformed Authorization header: {0}")]
    Malformed(String),
    /// The access key is not configured.
    #[error("the access key {0:?} is not known")]
    UnknownKey(String),
    /// The signature is not the one the secret gives.
    #[error("the signature does not match")]
    SignatureDoesNotMatch,
    /// `x-amz-date` is too far from the server's clock.
    #[error("the request time {0} is more than 15 minutes from the server's")]
    TimeSkewed(String),
    /// A presigned URL past its `X-Amz-Expires`.
    #[error("the presigned URL expired at {0}")]
    Expired(String),
}

impl AuthError {
    /// S3's error code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "AccessDenied",
            AuthError::Malformed(_) => "AuthorizationHeaderMalformed",
            AuthError::UnknownKey(_) => "InvalidAccessKeyId",
            AuthError::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            AuthError::TimeSkewed(_) => "RequestTimeTooSkewed",
            AuthError::Expired(_) => "AccessDenied",
        }
    }
}

/// The parts of a request the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// The path as sent, percent-encoded (`/bucket/my%20key`).
    pub path: &'a str,
    /// The query string as sent, without `?` (empty when none).
    pub query: &'a str,
    /// Every header, names in any case.
    pub headers: &'a [(&'a str, &'a str)],
}

/// An accepted signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key that signed.
    pub access_key: String,
    /// What the client declared the body hashes to (`x-amz-content-sha256`): a hex
    /// SHA-256 to check the body against, `UNSIGNED-PAYLOAD`, or a `STREAMING-...` mode.
    pub payload_hash: String,
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
        values.next()
    }

    /// Every value of `name`, joined with `,` as SigV4 wants repeated headers.
    fn header_values(&self, name: &str) -> Option<String> {
        let values: Vec<String> =
            self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| trim_value(v)).collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// A header value as SigV4 signs it: trimmed, inner runs of spaces collapsed to one.
fn trim_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A query's `key=value` pairs as sent (not decoded), in order.
pub(super) fn query_pairs(query: &str) -> Vec<(&str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect()
}

/// The query as S3 signs it: its pairs as sent, sorted.
fn canonical_query(query: &str) -> String {
    let mut pairs = query_pairs(query);
    pairs.sort_unstable();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// The SigV4 signing key of `secret` for `date` (YYYYMMDD), `region` and `service`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Parsed `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
struct Authorization<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, AuthError> {
    let bad = |why: &str| AuthError::Malformed(why.to_string());
    let rest = value.strip_prefix("AWS4-HMAC-SHA256").ok_or_else(|| bad("the algorithm is not AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(bad("expected Credential=, SignedHeaders= and Signature=")),
        }
    }
    let (credential, signed, signature) = match (credential, signed, signature) {
        (Some(c), Some(h), Some(s)) => (c, h, s),
        _ => return Err(bad("Credential, SignedHeaders and Signature are all needed")),
    };
    authorization(credential, signed, signature)
}

/// The signature's parts from its credential (`<key>/<date>/<region>/<service>/aws4_request`),
/// signed header names (`;`-separated) and hex signature, checked.
fn authorization<'a>(credential: &'a str, signed: &'a str, signature: &'a str) -> Result<Authorization<'a>, AuthError> {
    let bad = |why: &str| AuthError::Malformed(why.to_string());
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, "aws4_request"] = scope[..] else {
        return Err(bad("Credential must be <key>/<date>/<region>/<service>/aws4_request"));
    };
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the credential's date is not YYYYMMDD"));
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if !signed_headers.contains(&"host") {
        return Err(bad("SignedHeaders must include host"));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the signature is not 64 hex digits"));
    }
    Ok(Authorization { access_key, date, region, service, signed_headers, signature })
}

/// Seconds since the epoch of an `x-amz-date` (`YYYYMMDDTHHMMSSZ`).
fn amz_date_seconds(d: &str) -> Option<i64> {
    let b = d.as_bytes();
    if b.len() != 16 || !d.is_ascii() || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    // As RFC 3339, which humantime reads (and checks: month, day of that month, time).
    let rfc3339 = format!("{}-{}-{}T{}:{}:{}Z", &d[0..4], &d[4..6], &d[6..8], &d[9..11], &d[11..13], &d[13..15]);
    let t = humantime::parse_rfc3339(&rfc3339).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// Checks the request's signature, in its `Authorization` header or (a presigned URL) its
/// query. `secret_of` gives an access key's secret; `now` is the server's clock in seconds
/// since the epoch.
pub fn verify(req: &Request<'_>, secret_of: impl Fn(&str) -> Option<String>, now: i64) -> Result<Verified, AuthError> {
    let Some(auth) = req.header("authorization") else {
        return verify_presigned(req, secret_of, now);
    };
    let auth = parse_authorization(auth)?;
    let amz_date = req.header("x-amz-date").ok_or_else(|| AuthError::Malformed("no x-amz-date header".into()))?;
    let when = amz_date_seconds(amz_date).ok_or_else(|| AuthError::Malformed(format!("x-amz-date {amz_date:?}")))?;
    if (now - when).abs() > MAX_SKEW_SECONDS {
        return Err(AuthError::TimeSkewed(amz_date.to_string()));
    }
    let payload_hash = req
        .header("x-amz-content-sha256")
        .ok_or_else(|| AuthError::Malformed("no x-amz-content-sha256 header".into()))?
        .to_string();
    check_signature(req, &auth, amz_date, canonical_query(req.query), &payload_hash, secret_of)?;
    Ok(Verified { access_key: auth.access_key.to_string(), payload_hash })
}

/// Longest validity of a presigned URL (S3's: 7 days).
const MAX_EXPIRES_SECONDS: i64 = 7 * 24 * 3600;

/// A presigned URL: `X-Amz-Algorithm`, `-Credential`, `-Date`, `-Expires`, `-SignedHeaders`
/// and `-Signature` in the query; the canonical query is every other pair; the payload is
/// unsigned.
fn verify_presigned(
    req: &Request<'_>,
    secret_of: impl Fn(&str) -> Option<String>,
    now: i64,
) -> Result<Verified, AuthError> {
    let pairs = query_pairs(req.query);
    let get = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let Some(signature) = get("X-Amz-Signature") else { return Err(AuthError::Missing) };
    let bad = |why: String| AuthError::Malformed(why);
    if get("X-Amz-Algorithm") != Some("AWS4-HMAC-SHA256") {
        return Err(bad("X-Amz-Algorithm must be AWS4-HMAC-SHA256".into()));
    }
    let field = |name: &str| -> Result<String, AuthError> {
        let v = get(name).ok_or_else(|| bad(format!("a presigned URL needs {name}")))?;
        super::server::decode(v).ok_or_else(|| bad(format!("{name} does not decode")))
    };
    let (credential, signed, amz_date) =
        (field("X-Amz-Credential")?, field("X-Amz-SignedHeaders")?, field("X-Amz-Date")?);
    let expires: i64 = field("X-Amz-Expires")?.parse().map_err(|_| bad("X-Amz-Expires is not a number".into()))?;
    if !(1..=MAX_EXPIRES_SECONDS).contains(&expires) {
        return Err(bad(format!("X-Amz-Expires {expires}: 1 to {MAX_EXPIRES_SECONDS} seconds")));
    }
    let auth = authorization(&credential, &signed, signature)?;
    let when = amz_date_seconds(&amz_date).ok_or_else(|| bad(format!("X-Amz-Date {amz_date:?}")))?;
    if when - now > MAX_SKEW_SECONDS {
        return Err(AuthError::TimeSkewed(amz_date));
    }
    if now > when + expires {
        return Err(AuthError::Expired(format!("{amz_date} + {expires}s")));
    }
    let query: String = {
        let rest: Vec<String> =
            pairs.iter().filter(|(k, _)| *k != "X-Amz-Signature").map(|(k, v)| format!("{k}={v}")).collect();
        canonical_query(&rest.join("&"))
    };
    check_signature(req, &auth, &amz_date, query, "UNSIGNED-PAYLOAD", secret_of)?;
    Ok(Verified { access_key: auth.access_key.to_string(), payload_hash: "UNSIGNED-PAYLOAD".into() })
}

/// Recomputes the signature of `req` as `auth` scopes it, at `amz_date`, over `query` (its
/// canonical form) and `payload_hash`, and compares it with `auth`'s in constant time.
fn check_signature(
    req: &Request<'_>,
    auth: &Authorization<'_>,
    amz_date: &str,
    query: String,
    payload_hash: &str,
    secret_of: impl Fn(&str) -> Option<String>,
) -> Result<(), AuthError> {
    if !amz_date.starts_with(auth.date) {
        return Err(AuthError::Malformed("the credential's date is not the request's".into()));
    }
    // S3's rule: every x-amz-* header is signed. Otherwise the holder of a signed request (a
    // presigned URL, a replay within the skew) could add one, e.g. x-amz-copy-source, and turn
    // a PUT into a copy from any bucket the key may read.
    if let Some((name, _)) = req.headers.iter().find(|(n, _)| {
        n.to_ascii_lowercase().starts_with("x-amz-") && !auth.signed_headers.iter().any(|s| s.eq_ignore_ascii_case(n))
    }) {
        return Err(AuthError::Malformed(format!("header {name} is not signed (every x-amz-* header must be)")));
    }
    let secret = secret_of(auth.access_key).ok_or_else(|| AuthError::UnknownKey(auth.access_key.to_string()))?;
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let value =
            req.header_values(name).ok_or_else(|| AuthError::Malformed(format!("signed header {name} is absent")))?;
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical_request = format!(
        "{}\n{}\n{query}\n{canonical_headers}\n{}\n{payload_hash}",
        req.method,
        req.path,
        auth.signed_headers.join(";"),
    );
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical_request.as_bytes())));
    let key = signing_key(&secret, auth.date, auth.region, auth.service);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    let claimed = hex::decode(auth.signature).map_err(|_| AuthError::Malformed("signature".into()))?;
    // `verify_slice` compares in constant time.
    mac.verify_slice(&claimed).map_err(|_| AuthError::SignatureDoesNotMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_convert_to_epoch_seconds() {
        assert_eq!(amz_date_seconds("19700101T000000Z"), Some(0));
        assert_eq!(amz_date_seconds("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(amz_date_seconds("20261203T101112Z"), Some(1_796_292_672));
        // (A February 30th, and non-ASCII of the right length, too.)
        for bad in [
            "20130524",
            "2013-05-24T00:00:00Z",
            "20131324T000000Z",
            "20130524T250000Z",
            "20130230T000000Z",
            "2013052\u{e9}T00000Z",
        ] {
            assert_eq!(amz_date_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries_sort_their_pairs_as_sent() {
        assert_eq!(canonical_query("prefix=a%2Fb&list-type=2&delimiter=%2F"), "delimiter=%2F&list-type=2&prefix=a%2Fb");
        assert_eq!(canonical_query("uploads"), "uploads=");
        assert_eq!(canonical_query(""), "");
    }

    /// AWS's own example ("Example: GET Object" in the SigV4 for S3 documentation), which
    /// botocore signs to the same value.
    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
        SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
        Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const WHEN: i64 = 1_369_353_600;

    fn secret(key: &str) -> Option<String> {
        (key == "AKIAIOSFODNN7EXAMPLE").then(|| "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string())
    }

    fn example(range: &str, auth: &str) -> Result<Verified, AuthError> {
        let headers = [
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", range),
            ("x-amz-content-sha256", EMPTY),
            ("x-amz-date", "20130524T000000Z"),
            ("Authorization", auth),
        ];
        verify(&Request { method: "GET", path: "/test.txt", query: "", headers: &headers }, secret, WHEN)
    }

    #[test]
    fn the_aws_example_verifies_and_any_change_does_not() {
        let ok = example("bytes=0-9", AUTH).unwrap();
        assert_eq!(ok, Verified { access_key: "AKIAIOSFODNN7EXAMPLE".into(), payload_hash: EMPTY.into() });
        assert_eq!(example("bytes=0-10", AUTH), Err(AuthError::SignatureDoesNotMatch));
        assert_eq!(example("bytes=0-9", &AUTH.replace("f0e8", "f0e9")), Err(AuthError::SignatureDoesNotMatch));
        let other = AUTH.replace("AKIAIOSFODNN7EXAMPLE", "AKIDOTHER");
        assert_eq!(example("bytes=0-9", &other), Err(AuthError::UnknownKey("AKIDOTHER".into())));
        let headers = [
            ("Host", "h"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", EMPTY),
            ("Authorization", AUTH),
        ];
        let req = Request { method: "GET", path: "/test.txt", query: "", headers: &headers };
        assert!(matches!(verify(&req, secret, WHEN), Err(AuthError::Malformed(m)) if m.contains("range")));
        let late = verify(&Request { headers: &headers, ..req }, secret, WHEN + MAX_SKEW_SECONDS + 1);
        assert!(matches!(late, Err(AuthError::TimeSkewed(_))), "{late:?}");
        assert_eq!(verify(&Request { headers: &[], ..req }, secret, WHEN), Err(AuthError::Missing));
    }

    /// AWS's presigned-URL example ("Example: GET Object", query string authentication).
    const PRESIGNED: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
        &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
        &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";

    fn presigned(query: &str, now: i64) -> Result<Verified, AuthError> {
        let headers = [("Host", "examplebucket.s3.amazonaws.com")];
        verify(&Request { method: "GET", path: "/test.txt", query, headers: &headers }, secret, now)
    }

    #[test]
    fn the_aws_presigned_example_verifies_until_it_expires() {
        let ok = presigned(PRESIGNED, WHEN + 3600).unwrap();
        assert_eq!(ok.payload_hash, "UNSIGNED-PAYLOAD");
        assert!(matches!(presigned(PRESIGNED, WHEN + 86_401), Err(AuthError::Expired(_))));
        assert!(matches!(presigned(PRESIGNED, WHEN - 2 * MAX_SKEW_SECONDS), Err(AuthError::TimeSkewed(_))));
        let changed = PRESIGNED.replace("Expires=86400", "Expires=86401");
        assert_eq!(presigned(&changed, WHEN), Err(AuthError::SignatureDoesNotMatch));
        let extra = format!("{PRESIGNED}&versionId=1");
        assert_eq!(presigned(&extra, WHEN), Err(AuthError::SignatureDoesNotMatch));
        let smuggled = [("Host", "examplebucket.s3.amazonaws.com"), ("x-amz-copy-source", "/secret/key")];
        let req = Request { method: "GET", path: "/test.txt", query: PRESIGNED, headers: &smuggled };
        assert!(matches!(verify(&req, secret, WHEN), Err(AuthError::Malformed(m)) if m.contains("x-amz-copy-source")));
        let long = PRESIGNED.replace("Expires=86400", "Expires=999999");
        assert!(matches!(presigned(&long, WHEN), Err(AuthError::Malformed(m)) if m.contains("X-Amz-Expires")));
        assert_eq!(presigned("", WHEN), Err(AuthError::Missing));
    }

    #[test]
    fn malformed_headers_are_named() {
        for (h, why) in [
            ("AWS4-HMAC-SHA1 Credential=a", "algorithm"),
            ("AWS4-HMAC-SHA256 Credential=a/b", "all needed"),
            ("AWS4-HMAC-SHA256 Credential=a/b/c/s3/aws4_request, SignedHeaders=host, Signature=00", "date"),
            (
                "AWS4-HMAC-SHA256 Credential=a/20130524/r/s3/aws4_request, SignedHeaders=x-amz-date, Signature=00",
                "host",
            ),
            ("AWS4-HMAC-SHA256 Credential=a/20130524/r/s3/aws4_request, SignedHeaders=host, Signature=zz", "hex"),
        ] {
            let e = parse_authorization(h).err().unwrap().to_string();
            assert!(e.contains(why), "{h}: {e}");
        }
    }
}
