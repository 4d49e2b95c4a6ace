//! Compaction: segments whose live fraction fell below a threshold are rewritten (their live
//! blocks into new segments) and removed, and deletion records no segment needs any more
//! are removed with them.
//!
//! Ordering makes it safe against concurrent puts and deletes, and against a crash at any
//! point: the live blocks are picked and the new segment's stamp taken while no delete is
//! between its stamp and its removal (`BlobTier::stamping`), before the blocks are read, so
//! a delete either was seen or has a later stamp and still wins on replay; in memory a key moves to
//! the new segment only if it still points at the old one; the old objects are deleted only
//! after the new segment and its index are stored (a crash in between leaves both, and the
//! newer wins on replay).
//!
//! Segments no index names (an upload whose index never made it: a failed put retried under
//! a new stamp, a crash between the two PUTs, a compaction whose segment delete failed) are
//! never read, only paid for: compaction deletes those older than an hour, an age no
//! upload in flight reaches.

use std::{sync::Arc, time::Duration};

use object_store::{ObjectStore, path::Path};

use super::{BlobTier, format::Stamp, state::Location};
use crate::{Block, Result};

/// What one [`BlobTier::compact`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Segments removed (rewritten or empty).
    pub segments_removed: usize,
    /// Live blocks copied into new segments.
    pub blocks_moved: usize,
    /// Bytes copied.
    pub bytes_moved: u64,
    /// Deletion records removed.
    pub deletions_removed: usize,
    /// Segments no index names, removed.
    pub orphans_removed: usize,
}

/// How old a segment no index names must be before compaction deletes it.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

impl BlobTier {
    /// Rewrites every segment whose live bytes are below `min_live_fraction` of its size
    /// (0.0..=1.0), then removes what no segment needs any more.
    pub async fn compact(&self, min_live_fraction: f64) -> Result<Compaction> {
        self.compact_with(min_live_fraction, ORPHAN_AGE).await
    }

    /// [`BlobTier::compact`], deleting segments no index names once `orphan_age` old.
    pub(super) async fn compact_with(&self, min_live_fraction: f64, orphan_age: Duration) -> Result<Compaction> {
        self.check_loaded()?;
        let _one_at_a_time = self.compacting.lock().await;
        let victims: Vec<(Stamp, Arc<Path>)> = {
            let state = self.state.lock();
            state
                .segments
                .iter()
                .filter(|(_, s)| s.live == 0 || (s.live as f64) < min_live_fraction * s.total as f64)
                .map(|(stamp, s)| (*stamp, s.path.clone()))
                .collect()
        };
        let mut report = Compaction::default();
        for (stamp, path) in victims {
            // No delete is between taking its stamp and applying it while we pick the live
            // blocks and take ours (see `BlobTier::stamping`).
            let (live, new_stamp) = {
                let _exclusive = self.stamping.write().await;
                let state = self.state.lock();
                let live: Vec<(crate::BlockKey, Location)> =
                    state.index.iter().filter(|(_, l)| l.stamp == stamp).map(|(k, l)| (k.clone(), l.clone())).collect();
                drop(state);
                let new_stamp = (!live.is_empty()).then(|| self.stamp()); // before reading: see above
                (live, new_stamp)
            };
            if let Some(new_stamp) = new_stamp {
                let mut blocks = Vec::with_capacity(live.len());
                for (key, loc) in &live {
                    if let Some(block) = self.read_one(key, Some(loc.clone())).await? {
                        blocks.push(block);
                    }
                }
                if blocks.is_empty() {
                    continue; // nothing readable left to move; the segment stays for a later pass
                }
                let refs: Vec<&Block> = blocks.iter().collect();
                let entries = self.write_segment_at(new_stamp, &refs).await?;
                report.blocks_moved += entries.len();
                report.bytes_moved += entries.iter().map(|e| e.len).sum::<u64>();
                let segment = Arc::new(Path::from(new_stamp.name(&self.prefix, "seg", "seg")));
                let mut state = self.state.lock();
                // Keys deleted or stored again meanwhile keep what they have now.
                let moved: Vec<_> =
                    entries.into_iter().filter(|e| state.index.get(&e.key).is_some_and(|l| l.stamp == stamp)).collect();
                state.add_segment(new_stamp, segment, moved);
            }
            // Index first: without it the segment is never read again, even if its delete fails.
            self.delete_object(&stamp.name(&self.prefix, "idx", "idx")).await?;
            self.delete_object(&path.to_string()).await?;
            self.state.lock().segments.remove(&stamp);
            report.segments_removed += 1;
        }
        // A deletion record only matters to segments older than it.
        let stale: Vec<Stamp> = {
            let state = self.state.lock();
            let oldest = state.segments.keys().next().copied();
            state.deletions.iter().filter(|d| oldest.is_none_or(|o| **d < o)).copied().collect()
        };
        for d in stale {
            self.delete_object(&d.name(&self.prefix, "del", "del")).await?;
            self.state.lock().deletions.remove(&d);
            report.deletions_removed += 1;
        }
        report.orphans_removed = self.remove_orphans(orphan_age).await?;
        tracing::info!(tier = %self, ?report, "blob: compacted");
        Ok(report)
    }

    /// Deletes segment objects that no index names and that are older than `age`: uploads of
    /// the earlier format whose `idx` object never landed. One with a footer is whole, so
    /// another writer's (under the same prefix, made after this load): kept.
    async fn remove_orphans(&self, age: Duration) -> Result<usize> {
        let objects = self.list_dir("seg").await?;
        let cutoff = unix_seconds_now() - age.as_secs() as i64;
        let mut removed = 0;
        for meta in objects {
            let Some(stamp) = meta.location.filename().and_then(|f| Stamp::parse(f, "seg")) else { continue };
            let named = self.state.lock().segments.contains_key(&stamp);
            if !named
                && meta.last_modified.timestamp() <= cutoff
                && self.read_footer(&meta.location, meta.size).await?.is_none()
            {
                tracing::info!(object = %meta.location, "blob: removing a segment no index names");
                self.delete_object(meta.location.as_ref()).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn delete_object(&self, name: &str) -> Result<()> {
        super::Counters::count(&self.counters.other, 1);
        match self.store.delete(&Path::from(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_error("delete", name, e)),
        }
    }
}

/// Seconds since the Unix epoch, as object stores date their objects.
fn unix_seconds_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
