//! The Python exceptions a kvtier failure raises, by what it was.

use kvtier_client::{ClientError, shm::ShmError};
use pyo3::{create_exception, exceptions::PyException, prelude::*};
use tonic::Code;

create_exception!(_native, KvtierError, PyException, "A kvtier request failed; the message is the server's.");
create_exception!(_native, UnavailableError, KvtierError, "The kvtier server cannot be reached.");
create_exception!(_native, InvalidArgumentError, KvtierError, "A key, namespace, size or option was refused.");
create_exception!(_native, PermissionDeniedError, KvtierError, "The server refused access (shm grants, namespaces).");
create_exception!(_native, ResourceExhaustedError, KvtierError, "No room: memory, disk or a session limit.");
create_exception!(
    _native,
    OutcomeUnknownError,
    KvtierError,
    "An object's commit failed and may have landed (a node holding a copy did not answer): read the object to know; writing it again is safe."
);

/// A Python exception for a gRPC-style code and message.
pub(crate) fn error(code: Code, message: String) -> PyErr {
    match code {
        Code::Unavailable | Code::DeadlineExceeded => UnavailableError::new_err(message),
        Code::InvalidArgument | Code::OutOfRange => InvalidArgumentError::new_err(message),
        Code::PermissionDenied | Code::Unauthenticated => PermissionDeniedError::new_err(message),
        Code::ResourceExhausted => ResourceExhaustedError::new_err(message),
        _ => KvtierError::new_err(message),
    }
}

/// A failed write's error: [`OutcomeUnknownError`] when it may have landed (see
/// `kvtier_blockmgr::Outcome`), else as [`client_error`] says (it wrote nothing).
pub(crate) fn write_error(e: ClientError) -> PyErr {
    match e.outcome() {
        kvtier_blockmgr::Outcome::Unknown => OutcomeUnknownError::new_err(e.to_string()),
        kvtier_blockmgr::Outcome::NotApplied => client_error(e),
    }
}

pub(crate) fn client_error(e: ClientError) -> PyErr {
    match &e {
        ClientError::Status(s) => error(s.code(), format!("{}: {}", s.code(), s.message())),
        ClientError::Connect { .. } => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            UnavailableError::new_err(message)
        }
        ClientError::Address { .. } => InvalidArgumentError::new_err(e.to_string()),
        _ => KvtierError::new_err(e.to_string()),
    }
}

pub(crate) fn shm_error(e: ShmError) -> PyErr {
    match e {
        ShmError::Refused { code, message } => error(code, message),
        ShmError::Io { .. } => UnavailableError::new_err(e.to_string()),
        ShmError::Protocol(_) => KvtierError::new_err(e.to_string()),
    }
}

pub(crate) fn tier_error(e: &impl kvtier_types::wire::Coded) -> PyErr {
    error(kvtier_types::wire::code_of(e), e.to_string())
}
