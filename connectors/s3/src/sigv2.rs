//! Presigned URLs of AWS Signature Version 2 (`AWSAccessKeyId`, `Expires`, `Signature` in the
//! query): what boto3's `generate_presigned_url` makes unless told `signature_version="s3v4"`.
//! Only the query form: requests signed with a V2 `Authorization` header are refused as
//! unsigned (every current SDK signs those with V4).
//!
//! The string to sign is the method, `Content-MD5`, `Content-Type`, `Expires`, the
//! `x-amz-*` headers (`name:value` lines, sorted), then the resource: the bucket and key path
//! as sent, with the sub-resources of the query S3 signs (`uploadId`, `partNumber`, ...),
//! sorted, their values decoded.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};

use super::sigv4::{AuthError, Request, Verified};

/// The query parameters S3 puts in a V2 resource (botocore's list).
const SUBRESOURCES: [&str; 21] = [
    "acl",
    "cors",
    "delete",
    "lifecycle",
    "location",
    "logging",
    "notification",
    "partNumber",
    "policy",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "tagging",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
];

/// Checks a V2 presigned request. `resource` is the path the signature covers: the request's
/// path for path-style requests, `/<bucket><path>` for virtual-host ones. `Err(Missing)`
/// when the query carries no V2 signature.
pub(super) fn verify_presigned(
    req: &Request<'_>,
    resource: &str,
    secret_of: impl Fn(&str) -> Option<String>,
    now: i64,
) -> Result<Verified, AuthError> {
    let pairs = super::sigv4::query_pairs(req.query);
    let get = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let (Some(access_key), Some(signature), Some(expires)) = (get("AWSAccessKeyId"), get("Signature"), get("Expires"))
    else {
        return Err(AuthError::Missing);
    };
    let decode = |what: &str, v: &str| {
        super::server::decode(v).ok_or_else(|| AuthError::Malformed(format!("{what} does not decode")))
    };
    let (access_key, signature) = (decode("AWSAccessKeyId", access_key)?, decode("Signature", signature)?);
    let expires_at: i64 = expires.parse().map_err(|_| AuthError::Malformed(format!("Expires {expires:?}")))?;
    if now > expires_at {
        return Err(AuthError::Expired(format!("{expires_at} (seconds since the epoch)")));
    }
    let secret = secret_of(&access_key).ok_or_else(|| AuthError::UnknownKey(access_key.clone()))?;

    let header =
        |name: &str| req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map_or("", |(_, v)| v.trim());
    let mut amz: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-amz-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    amz.sort();
    let amz: String = amz.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let mut sub: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| SUBRESOURCES.contains(k))
        .map(|(k, v)| match (v.is_empty(), super::server::decode(v)) {
            (true, _) => k.to_string(),
            (false, Some(v)) => format!("{k}={v}"),
            (false, None) => format!("{k}={v}"),
        })
        .collect();
    sub.sort();
    let resource = if sub.is_empty() { resource.to_string() } else { format!("{resource}?{}", sub.join("&")) };
    let string_to_sign =
        format!("{}\n{}\n{}\n{expires}\n{amz}{resource}", req.method, header("content-md5"), header("content-type"));
    let claimed = STANDARD.decode(signature).map_err(|_| AuthError::Malformed("Signature is not base64".into()))?;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&claimed).map_err(|_| AuthError::SignatureDoesNotMatch)?;
    Ok(Verified { access_key, payload_hash: "UNSIGNED-PAYLOAD".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(key: &str) -> Option<String> {
        (key == "AKIAIOSFODNN7EXAMPLE").then(|| "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string())
    }

    /// AWS's query-string authentication example (the V2 "Signing and authenticating REST
    /// requests" guide): GET johnsmith's /photos/puppy.jpg, Expires 1175139620.
    #[test]
    fn the_aws_example_verifies_until_it_expires() {
        let query = "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1175139620&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D";
        let req = Request { method: "GET", path: "/johnsmith/photos/puppy.jpg", query, headers: &[] };
        let ok = verify_presigned(&req, req.path, secret, 1_175_139_000).unwrap();
        assert_eq!(ok.access_key, "AKIAIOSFODNN7EXAMPLE");
        assert!(matches!(verify_presigned(&req, req.path, secret, 1_175_139_621), Err(AuthError::Expired(_))));
        let other = Request { path: "/johnsmith/photos/kitten.jpg", ..req };
        assert_eq!(verify_presigned(&other, other.path, secret, 1_175_139_000), Err(AuthError::SignatureDoesNotMatch));
        let none = Request { query: "", ..req };
        assert_eq!(verify_presigned(&none, none.path, secret, 0), Err(AuthError::Missing));
    }
}
