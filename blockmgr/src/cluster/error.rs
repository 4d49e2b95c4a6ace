//! What can go wrong asking another member: typed, so a caller can tell a member that is
//! gone from one that answered no, and whether the request may have landed all the same.

use std::time::Duration;

use kvtier_client::ClientError;

use crate::wire::Outcome;

/// A request to member `member` that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// `member` is not in this node's view of the cluster.
    #[error("{member} is not a member")]
    NotAMember {
        /// The member asked.
        member: String,
    },
    /// `member` could not be reached (now, or moments ago: it is passed by for a while).
    #[error("{member} ({addr}): {reason}")]
    Unreachable {
        /// The member asked.
        member: String,
        /// Its address.
        addr: String,
        /// Why (connection refused, timed out, unreachable moments ago).
        reason: String,
    },
    /// No answer within the peer timeout: the request may have landed.
    #[error("{member}: no answer within {timeout:?}")]
    Timeout {
        /// The member asked.
        member: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// `member` answered with an error (or the call failed mid-way).
    #[error("{member}: {source}")]
    Failed {
        /// The member asked.
        member: String,
        /// What the client saw.
        source: ClientError,
        /// Whether the request may have landed (what the answer says, else what the
        /// failure implies).
        outcome: Outcome,
    },
    /// `member` answered something that does not fit the request.
    #[error("{message}")]
    Protocol {
        /// The member asked.
        member: String,
        /// What did not fit (naming the member).
        message: String,
    },
}

impl PeerError {
    /// The member the request was for.
    pub fn member(&self) -> &str {
        match self {
            PeerError::NotAMember { member }
            | PeerError::Unreachable { member, .. }
            | PeerError::Timeout { member, .. }
            | PeerError::Failed { member, .. }
            | PeerError::Protocol { member, .. } => member,
        }
    }

    /// Whether the request did nothing at the member ([`Outcome::NotApplied`]: it never
    /// left, or the member said so) or may have ([`Outcome::Unknown`]).
    pub fn outcome(&self) -> Outcome {
        match self {
            PeerError::NotAMember { .. } | PeerError::Unreachable { .. } => Outcome::NotApplied,
            PeerError::Timeout { .. } | PeerError::Protocol { .. } => Outcome::Unknown,
            PeerError::Failed { outcome, .. } => *outcome,
        }
    }

    /// An answer from `member` that does not fit: `message` names what (and the member).
    pub(crate) fn protocol(member: &str, message: String) -> Self {
        PeerError::Protocol { member: member.to_string(), message }
    }
}
