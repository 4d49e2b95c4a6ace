//! `PutResult`: what a put answers per block.

use kvtier_tiers::TierKind;
use pyo3::prelude::*;

/// The outcome of one block of a put.
#[pyclass(frozen, get_all, module = "kvtier._native")]
#[derive(Debug, Clone)]
pub(crate) struct PutResult {
    /// True when the block is stored (now, or already before: see `existed`).
    pub(crate) ok: bool,
    /// The key was already stored: the put was a no-op.
    existed: bool,
    /// The fastest tier holding the block ("cpu", "ssd", ...), or None when not stored.
    tier: Option<String>,
    /// Why the block was not stored (the server's message), or None.
    error: Option<String>,
}

#[pymethods]
impl PutResult {
    fn __repr__(&self) -> String {
        match &self.error {
            Some(e) => format!("PutResult(ok=False, error={e:?})"),
            None => {
                format!("PutResult(ok=True, existed={}, tier={:?})", self.existed, self.tier.as_deref().unwrap_or("?"))
            }
        }
    }
}

impl PutResult {
    pub(crate) fn stored(existed: bool, tier: Option<TierKind>) -> Self {
        PutResult { ok: true, existed, tier: tier.map(|t| t.as_str().to_string()), error: None }
    }

    pub(crate) fn failed(message: String) -> Self {
        PutResult { ok: false, existed: false, tier: None, error: Some(message) }
    }
}
