//! Why an object's export failed: what objects/export.rs and objects/staging.rs return, and
//! the label export.rs counts it under.

/// Why an export failed: the label of `object_export_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    /// The store refused or did not answer (begin, stage, commit, or the check of a file
    /// already there).
    Blob,
    /// A chunk could be read from no node (or not with the manifest's checksum).
    Chunks,
    /// A member asked to stage parts did not (unreachable, or it failed).
    Stager,
    /// The manifest could not be read or parsed.
    Manifest,
    /// A newer version was current (its commit may yet fail and be undone): tried again
    /// later, by when this version's manifest is gone if the newer one stood.
    Superseded,
    /// An owner of the path did not answer whether it holds a newer version (this node may
    /// be one that was away while a newer version was committed and exported: its file must
    /// not go over that one's).
    Owners,
}

impl FailureReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureReason::Blob => "blob",
            FailureReason::Chunks => "chunks",
            FailureReason::Stager => "stager",
            FailureReason::Manifest => "manifest",
            FailureReason::Superseded => "superseded",
            FailureReason::Owners => "owners",
        }
    }
}

/// A failed export: why, and the error.
#[derive(Debug)]
pub(crate) struct ExportFailure {
    pub(crate) reason: FailureReason,
    pub(crate) error: crate::NodeError,
}
