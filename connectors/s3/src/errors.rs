//! The S3 error a failure of the store answers: what S3 itself would (a 503 to retry, a
//! 4xx, or a 500 that may have written the object).

use axum::http::StatusCode;

use super::xml::S3Error;

pub(super) fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> S3Error {
    S3Error::new(status, code, message)
}

pub(super) fn no_such_bucket(b: &str) -> S3Error {
    err(StatusCode::NOT_FOUND, "NoSuchBucket", format!("the bucket {b:?} does not exist"))
}

/// A failure of the store under a request, as S3 answers it: the store's temporary states
/// (a node out of reach, too few copies, write-back backlog, a full tier) as 503s a client
/// retries (`ServiceUnavailable`, `SlowDown`), a key the store refuses as `InvalidArgument`,
/// anything else as `InternalError`.
pub(super) fn internal(e: kvtier_blockmgr::NodeError) -> S3Error {
    use tonic::Code;
    let message = e.to_string();
    // Classed as the gRPC service classes it (`wire::code_of`): one answer to "retry?" for
    // every front end.
    let code = kvtier_blockmgr::wire::code_of(&e);
    let (status, code) = match code {
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        Code::ResourceExhausted => (StatusCode::SERVICE_UNAVAILABLE, "SlowDown"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "InvalidArgument"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    };
    err(status, code, message)
}

/// A failed commit (PutObject, UploadPart, CopyObject, CompleteMultipartUpload), as S3
/// answers it: one that may have landed (a node holding a copy of the manifest did not
/// answer) is a 500 `InternalError` saying so, as S3's own 500s may have written the object;
/// one undone everywhere or refused before anything was stored is what [`internal`] says (a
/// 503 to retry, or a 4xx), and definitely wrote nothing.
pub(super) fn commit_failed(e: kvtier_blockmgr::NodeError) -> S3Error {
    match kvtier_blockmgr::wire::Outcome::of_commit(&e) {
        kvtier_blockmgr::wire::Outcome::Unknown => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("{e}: the outcome is unknown (the object may or may not have been written); a retry is safe"),
        ),
        kvtier_blockmgr::wire::Outcome::NotApplied => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_blockmgr::NodeError;

    #[test]
    fn store_failures_map_to_the_s3_codes_clients_retry() {
        let unreachable = NodeError::Unreachable { what: "x".into(), failures: "n1: down".into() };
        let e = internal(unreachable);
        assert_eq!((e.status, e.code), (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"));
        assert!(e.message.contains("n1: down"), "{}", e.message);
        let bad = internal(NodeError::invalid("r"));
        assert_eq!((bad.status, bad.code), (StatusCode::BAD_REQUEST, "InvalidArgument"));
        let corrupt =
            kvtier_tiers::Error::Corrupt { tier: "ssd".into(), path: "r0".into(), reason: "a damaged header".into() };
        let corrupt = internal(corrupt.into());
        assert_eq!((corrupt.status, corrupt.code), (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"));
        // A commit: undone everywhere is a 503 (nothing written); may have landed is a 500.
        let undone = commit_failed(NodeError::NotCommitted { what: "b/k".into(), cause: "c".into() });
        assert_eq!((undone.status, undone.code), (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"));
        let quorum = NodeError::Quorum { key: "m".into(), stored: 1, wanted: 2, failures: "n2: down".into() };
        let unknown = commit_failed(quorum);
        assert_eq!((unknown.status, unknown.code), (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"));
        assert!(unknown.message.contains("outcome is unknown"), "{}", unknown.message);
    }
}
