//! Errors of the block manager library (the binary wraps them in `anyhow`).

/// What went wrong starting or running the manager and server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A tier failed.
    #[error(transparent)]
    Tier(#[from] kvtier_tiers::Error),

    /// The node failed.
    #[error(transparent)]
    Node(#[from] kvtier_types::NodeError),

    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A server task failed.
    #[error("server: {0}")]
    Server(String),
}
