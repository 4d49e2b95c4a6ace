//! Objects joined from parts without a copy (S3's CompleteMultipartUpload, the fan-in of
//! many writers into one object): the joined manifest names the parts' chunks as runs, and
//! the parts' generations are retired without their chunks first, so that no later
//! replacement or deletion of a part can take chunks the joined object needs.
//!
//! The parts are written with [`Objects::write_part`], so a write-back part is never exported
//! on its own: its chunks stay pinned until the joined object is exported to Blob (which
//! releases them) or the part is deleted.

use crate::NodeError;
use kvtier_tiers::{Error as TierError, Namespace};
use serde::{Deserialize, Serialize};

use super::Objects;
use super::{CommitIf, ObjectInfo, manifest_key, now_unix};
use crate::Durability;

/// The chunks of another generation that a joined object adopted: `size` bytes in chunks of
/// `chunk_size` under key id `id`, from byte `start` and chunk `first` of the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Run {
    pub(super) id: u64,
    pub(super) start: u64,
    pub(super) first: u64,
    pub(super) size: u64,
    pub(super) chunk_size: u64,
}

impl Run {
    pub(super) fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_size.max(1))
    }
}

impl ObjectInfo {
    /// `path` joined from `parts` in order, adopting their chunks (a part of no bytes adds
    /// none). The generation is the path primary's to assign.
    pub fn joined(path: &str, parts: &[ObjectInfo]) -> ObjectInfo {
        let chunk_size = parts.first().map_or(1, |p| p.chunk_size);
        let (mut runs, mut chunk_crc32c, mut size, mut crc32c) = (Vec::new(), Vec::new(), 0u64, 0u32);
        let mut first = 0;
        for part in parts.iter().filter(|p| p.size > 0) {
            // A part that is itself joined brings its runs along.
            let part_runs = if part.runs.is_empty() {
                vec![Run { id: part.id, start: 0, first: 0, size: part.size, chunk_size: part.chunk_size }]
            } else {
                part.runs.clone()
            };
            for r in part_runs {
                runs.push(Run { start: size + r.start, first: first + r.first, ..r });
            }
            first += part.chunks();
            chunk_crc32c.extend_from_slice(&part.chunk_crc32c);
            crc32c = kvtier_tiers::crc32c_combine(crc32c, part.crc32c, part.size);
            size += part.size;
        }
        let chunk_crc32c = if parts.iter().all(|p| p.size == 0 || p.chunk_crc32c.len() as u64 == p.chunks()) {
            chunk_crc32c
        } else {
            Vec::new()
        };
        ObjectInfo {
            path: path.to_string(),
            size,
            generation: 0,
            chunk_size: runs.first().map_or(chunk_size, |r: &Run| r.chunk_size),
            crc32c,
            created_unix: now_unix(),
            id: rand::random(),
            chunk_crc32c,
            runs,
            deleted: false,
            retired: Vec::new(),
            attributes: Default::default(),
        }
    }
}

impl Objects {
    /// Joins `parts` (committed objects of `namespace`, in order) into a new version of
    /// `path`, adopting their chunks: each part's generation is retired first (if one was
    /// replaced or deleted meanwhile, nothing is joined, the parts retired so far are deleted
    /// and the error says which), then the joined manifest is committed with `durability`
    /// with `attributes` if the path's current version meets `condition` (`None`: it did not, and the parts
    /// are gone; a commit that fails leaves the parts' chunks: it may have landed).
    pub async fn join_parts(
        &self,
        namespace: &str,
        path: &str,
        parts: &[ObjectInfo],
        durability: Durability,
        condition: CommitIf,
        attributes: std::collections::BTreeMap<String, String>,
    ) -> Result<Option<ObjectInfo>, NodeError> {
        let ns = Namespace::new(namespace)?;
        // Between a part's retirement and the joined commit no manifest names its chunks.
        let _writing = self.writing(&ns, parts.iter().flat_map(ObjectInfo::chunk_ids));
        let mut retired: Vec<&ObjectInfo> = Vec::with_capacity(parts.len());
        for part in parts {
            let outcome = match self.forget_object(namespace, part).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(NodeError::Tier(TierError::InvalidKey {
                    reason: format!("{namespace}/{}: replaced or deleted while being joined into {path}", part.path),
                })),
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                // Nothing names the retired parts' chunks any more.
                for p in retired {
                    self.remove_generation(&ns, p).await;
                }
                return Err(e);
            }
            retired.push(part);
        }
        let joined = ObjectInfo { attributes, ..ObjectInfo::joined(path, parts) };
        match self.commit_manifest(&ns, joined.clone(), durability, condition).await {
            Ok(Some(info)) => {
                self.node.metrics().object_parts_joined.inc_by(parts.len() as u64);
                Ok(Some(info))
            }
            Ok(None) => {
                // The condition failed at the commit: nothing names the retired parts' chunks.
                for p in retired {
                    self.remove_generation(&ns, p).await;
                }
                Ok(None)
            }
            Err(e @ NodeError::NotCommitted { .. }) => {
                // Undone everywhere: nothing names the retired parts' chunks.
                for p in retired {
                    self.remove_generation(&ns, p).await;
                }
                Err(e)
            }
            Err(e) => {
                // The commit may have landed on an owner whose answer was lost: the retired
                // parts' chunks are left (a leak, swept at a lone node's restart) unless the
                // path's owners show this very version, which then stands.
                if let Ok(Some(info)) = self.stat_object(namespace, path).await
                    && info.id == joined.id
                {
                    return Ok(Some(info));
                }
                tracing::warn!(%path, error = %e, "a joined object's commit failed: its parts' chunks are left");
                Err(e)
            }
        }
    }

    /// Retires `path`'s `generation` on this node (its primary, or a node alone) without its
    /// chunks, which a joined object adopted: the catalog forgets it and its manifest is
    /// deleted. Whether that generation was the current one (nothing is done otherwise).
    pub(crate) async fn forget_object_here(&self, ns: &Namespace, path: &str, generation: u64) -> bool {
        let _one_at_a_time = self.catalog.locks.lock(&manifest_key(ns, path, 0)).await;
        let slot = (ns.clone(), path.to_string());
        {
            let mut objects = self.catalog.objects.write();
            if objects.get(&slot).is_none_or(|info| info.generation != generation) {
                return false;
            }
            objects.remove(&slot);
        }
        // A part is never exported on its own ([`Objects::write_part`]): no file to remove.
        self.node.delete(&manifest_key(ns, path, generation)).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(id: u64, size: u64, chunk_size: u64) -> ObjectInfo {
        let chunks = size.div_ceil(chunk_size);
        ObjectInfo {
            path: format!("u/x/{id}"),
            size,
            generation: 1,
            chunk_size,
            crc32c: kvtier_tiers::crc32c(&vec![id as u8; size as usize]),
            created_unix: 0,
            id,
            chunk_crc32c: (0..chunks).map(|i| i as u32 + id as u32 * 100).collect(),
            runs: Vec::new(),
            deleted: false,
            retired: Vec::new(),
            attributes: Default::default(),
        }
    }

    #[test]
    fn a_joined_object_maps_its_chunks_and_bytes_onto_the_parts() {
        let ns = Namespace::new("t").unwrap();
        // 10 + 7 bytes in chunks of 4, then 5 in chunks of 2; an empty part adds nothing.
        let parts = [part(1, 10, 4), part(9, 0, 4), part(2, 7, 4), part(3, 5, 2)];
        let j = ObjectInfo::joined("o/k", &parts);
        assert_eq!((j.size, j.chunks(), j.chunk_size), (22, 3 + 2 + 3, 4));
        let keys: Vec<_> = (0..j.chunks()).map(|i| j.chunk_key(&ns, i)).collect();
        let want: Vec<_> = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
            .iter()
            .map(|&(id, i)| super::super::chunk_key(&ns, id, i))
            .collect();
        assert_eq!(keys, want);
        let ranges: Vec<_> = (0..j.chunks()).map(|i| j.chunk_range(i)).collect();
        assert_eq!(ranges, vec![0..4, 4..8, 8..10, 10..14, 14..17, 17..19, 19..21, 21..22]);
        for (i, r) in ranges.iter().enumerate() {
            for at in r.clone() {
                assert_eq!(j.chunk_at(at), i as u64, "byte {at}");
            }
            assert_eq!(
                j.chunk_crc32c(i as u64),
                Some(parts.iter().flat_map(|p| p.chunk_crc32c.clone()).nth(i).unwrap())
            );
        }
        // The whole object's CRC-32C, from the parts' alone.
        let bytes: Vec<u8> = [vec![1u8; 10], vec![2u8; 7], vec![3u8; 5]].concat();
        assert_eq!(j.crc32c, kvtier_tiers::crc32c(&bytes));
        assert!(j.names_chunks_of(2) && !j.names_chunks_of(9) && !j.names_chunks_of(j.id));
        // Its manifest round-trips, and one written before runs existed still parses.
        let back: ObjectInfo = serde_json::from_slice(&serde_json::to_vec(&j).unwrap()).unwrap();
        assert_eq!(back, j);
        let plain = part(5, 9, 4);
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("runs"), "{json}");
        assert_eq!(
            serde_json::from_str::<ObjectInfo>(&json).unwrap().chunk_key(&ns, 2),
            super::super::chunk_key(&ns, 5, 2)
        );
    }
}
