//! Pins a lookup takes on what it reports: until the lease ends, or a get reads the block,
//! neither memory's policy, SSD's eviction nor the unreachable sweep takes it. So an engine
//! that looked up a prefix, decided to load it and scheduled the request finds it at the get
//! (without a pin, a lookup's hit may be a get's miss).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use kvtier_tiers::BlockKey;

/// Keys pinned at most; a lookup finding the table full pins nothing and says so.
pub(crate) const MAX_PINS: usize = 1 << 18;

#[derive(Debug)]
pub(crate) struct Pins {
    until: HashMap<BlockKey, Instant>,
    max: usize,
}

impl Pins {
    pub(crate) fn new(max: usize) -> Self {
        Pins { until: HashMap::new(), max }
    }

    /// Pins `keys` for `lease` (a key pinned already keeps the later end). False, pinning
    /// nothing, when they do not fit.
    pub(crate) fn pin(&mut self, keys: &[BlockKey], lease: Duration) -> bool {
        let now = Instant::now();
        if self.until.len() + keys.len() > self.max {
            self.until.retain(|_, t| *t > now);
            if self.until.len() + keys.len() > self.max {
                return false;
            }
        }
        let end = now + lease;
        for k in keys {
            let t = self.until.entry(k.clone()).or_insert(end);
            *t = (*t).max(end);
        }
        true
    }

    // Both ask `is_empty` first: most of the time nothing is pinned, and eviction asks for
    // every candidate (a lookup in an empty map still hashes the key).
    pub(crate) fn release(&mut self, key: &BlockKey) {
        if !self.until.is_empty() {
            self.until.remove(key);
        }
    }

    pub(crate) fn is_pinned(&self, key: &BlockKey) -> bool {
        !self.until.is_empty() && self.until.get(key).is_some_and(|t| *t > Instant::now())
    }
}
