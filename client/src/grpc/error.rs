//! What went wrong talking to a server, and what a failed write did.

use kvtier_types::Outcome;

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address could not be parsed.
    #[error("invalid server address {addr:?}: {reason}")]
    Address {
        /// As given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No connection could be made (the cause is the error's source).
    #[error("cannot connect to {addr}")]
    Connect {
        /// As given.
        addr: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server refused the request.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The server's answer did not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// What a failed write did ([`Outcome`]): what the server said; else not applied when no
    /// request reached it (a bad address, no connection) or it refused the request itself
    /// (a bad argument, no such thing, no permission), and unknown otherwise (the
    /// connection broke, a timeout, an error that does not say).
    pub fn outcome(&self) -> Outcome {
        use tonic::Code;
        match self {
            ClientError::Address { .. } | ClientError::Connect { .. } => Outcome::NotApplied,
            ClientError::Status(status) if never_sent(status) => Outcome::of(status).unwrap_or(Outcome::NotApplied),
            ClientError::Status(status) => Outcome::of(status).unwrap_or(match status.code() {
                Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::Unauthenticated => Outcome::NotApplied,
                _ => Outcome::Unknown,
            }),
            ClientError::Protocol(_) => Outcome::Unknown,
        }
    }

    /// Whether trying again later may succeed: a transient refusal (no node to hold a
    /// copy, backpressure, a timeout) or an unknown outcome, not a refusal of the request.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Address { .. } => false,
            ClientError::Connect { .. } | ClientError::Protocol(_) => true,
            ClientError::Status(status) => self.outcome() == Outcome::Unknown || transient_code(status.code()),
        }
    }
}

/// Whether a request refused with `code` may succeed later: no node to hold a copy,
/// backpressure, a timeout, an abort.
pub fn transient_code(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(code, Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted)
}

/// Whether `status` is a lazily connecting channel's failure to connect: the request never
/// left this process (tonic answers UNAVAILABLE "tcp connect error" over the io error).
pub fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(io.kind(), ConnectionRefused | AddrNotAvailable | NetworkUnreachable | HostUnreachable);
        }
        source = e.source();
    }
    false
}
