//! Prefix lookups: which leading blocks of a request this node holds, in which tier, what
//! each would cost to load, and (on request) a pin that keeps them until the get.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use kvtier_tiers::{BlockKey, TierKind};

use super::Manager;

use kvtier_types::Looked;

/// Read speed per tier below memory, learned from the reads this node served (an
/// exponentially weighted mean of picoseconds per byte over reads of 64 KiB or more, so a
/// request's fixed costs do not pass for bandwidth). Memory is taken at 10 GB/s, a copy out
/// of the arena: its gets are zero-copy here, and the engine's copy is what it waits for.
#[derive(Debug)]
pub(crate) struct ReadSpeeds {
    /// Picoseconds per byte, SSD then Blob.
    ps_per_byte: [AtomicU64; 2],
}

/// Before any read: a local NVMe disk (1 GB/s) and an object store (100 MB/s).
const DEFAULT_PS_PER_BYTE: [u64; 2] = [1_000, 10_000];
const MEMORY_PS_PER_BYTE: u64 = 100;
/// Reads shorter than this say more about request overheads than bandwidth.
const MIN_SAMPLE: u64 = 64 << 10;

impl Default for ReadSpeeds {
    fn default() -> Self {
        ReadSpeeds { ps_per_byte: DEFAULT_PS_PER_BYTE.map(AtomicU64::new) }
    }
}

impl ReadSpeeds {
    fn slot(tier: TierKind) -> Option<usize> {
        match tier {
            TierKind::Ssd => Some(0),
            TierKind::Blob => Some(1),
            _ => None,
        }
    }

    /// Learns from a read of `len` bytes from `tier` that took `took`.
    pub(crate) fn observe(&self, tier: TierKind, len: u64, took: Duration) {
        let Some(i) = Self::slot(tier) else { return };
        if len < MIN_SAMPLE {
            return;
        }
        let sample = (took.as_nanos() as u64).saturating_mul(1000) / len;
        let cell = &self.ps_per_byte[i];
        let old = cell.load(Ordering::Relaxed);
        // New = 7/8 old + 1/8 sample; a lost race loses one sample.
        cell.store(old - old / 8 + sample / 8, Ordering::Relaxed);
    }

    /// Expected microseconds to load `len` bytes from `tier`.
    pub(crate) fn load_us(&self, tier: TierKind, len: u64) -> u32 {
        let ps = Self::slot(tier).map_or(MEMORY_PS_PER_BYTE, |i| self.ps_per_byte[i].load(Ordering::Relaxed));
        (len.saturating_mul(ps) / 1_000_000).min(u32::MAX as u64) as u32
    }
}

impl Manager {
    /// The tier of each key in the longest present prefix of `keys`. Reads only the index,
    /// and teaches the memory policy the chain.
    pub fn lookup(&self, keys: &[BlockKey]) -> Vec<TierKind> {
        self.lookup_pinned(keys, Duration::ZERO).tiers
    }

    /// [`Manager::lookup`] with each block's expected load time, pinning the blocks it
    /// reports for `pin` (none when zero; at most `server.max_lookup_pin`).
    pub fn lookup_pinned(&self, keys: &[BlockKey], pin: Duration) -> Looked {
        let inner = &self.inner;
        inner.policy.chain(keys);
        let present = || -> Vec<(TierKind, u64)> {
            keys.iter().map_while(|k| inner.index.get(k).and_then(|e| e.tiers.fastest().map(|t| (t, e.len)))).collect()
        };
        let mut found = present();
        let pin = pin.min(inner.config.server.max_lookup_pin);
        let pinned = !pin.is_zero() && !found.is_empty() && inner.policy.pin(&keys[..found.len()], pin);
        if pinned {
            // A block evicted between the first read and its pin is not reported: read again
            // under the pins (a pin on a key that left meanwhile just expires).
            let pinned_len = found.len();
            found = present().into_iter().take(pinned_len).collect();
        }
        Looked {
            load_us: found.iter().map(|(t, len)| inner.read_speeds.load_us(*t, *len)).collect(),
            tiers: found.into_iter().map(|(t, _)| t).collect(),
            pinned,
        }
    }
}
