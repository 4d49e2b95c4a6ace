//! The requests of a session with a private window (see `shm/window.rs`): the same
//! protocol, with bytes copied between the window and the blocks' real homes.

use kvtier_blockmgr::NodeError;
use kvtier_proto::v1;
use kvtier_tiers::{BlockKey, Error as TierError};

use super::{Held, SESSION_FULL, Session, not_pinned};
use kvtier_blockmgr::{Durability, GetOutcome, PutWriter, wire::tier_to_wire};

impl Session {
    /// A slot in the window for a block the manager is ready to receive.
    pub(super) async fn window_alloc(
        &mut self,
        key: BlockKey,
        len: u64,
        crc: Option<u32>,
        durability: Durability,
    ) -> Result<(Held, u64), NodeError> {
        let writer = self.manager.begin_put(key, len, crc, durability).await?;
        let window = self.window.as_mut().expect("a window session");
        let offset = window.alloc(len).ok_or_else(|| {
            NodeError::Tier(TierError::NoSpace {
                tier: "shm window (release pins or commit allocations first)".into(),
                capacity: window.len(),
                used: self.held_bytes,
                required: len,
            })
        })?;
        Ok((Held::WindowAlloc(writer, offset), offset))
    }

    /// Copies a committed window slot into its writer (already taken from the session, so
    /// its pages are free: nothing else runs on this session until the copy is done).
    pub(super) fn window_fill(
        &self,
        mut writer: PutWriter,
        offset: u64,
        declared: Option<u32>,
    ) -> Result<PutWriter, NodeError> {
        let data = self.window.as_ref().expect("a window session").bytes(offset, writer.len());
        if let Some(declared) = declared {
            let actual = kvtier_tiers::crc32c(data);
            if actual != declared {
                return Err(NodeError::Tier(TierError::ChecksumMismatch {
                    tier: "shm".into(),
                    key: writer.key().to_string(),
                    location: format!("the session's window at offset {offset}"),
                    expected: declared,
                    actual,
                }));
            }
        }
        writer.write(data)?;
        Ok(writer)
    }

    /// Pins by copying each block into the window, in key order until the session's limit.
    pub(super) async fn window_pin(&mut self, keys: Vec<BlockKey>) -> Vec<v1::ShmPinResult> {
        let again = |index| not_pinned(index, v1::MissReason::Unspecified, SESSION_FULL.into(), v1::ShmDeferred::Again);
        let mut results = Vec::with_capacity(keys.len());
        let mut full = false;
        for (index, key) in keys.iter().enumerate() {
            if full {
                results.push(again(index));
                continue;
            }
            let (block, tier) = match self.manager.get(key).await {
                GetOutcome::Hit { block, tier } => (block, tier),
                GetOutcome::Miss { reason, message } => {
                    let reason = kvtier_blockmgr::wire::miss_to_wire(reason);
                    results.push(not_pinned(index, reason, message, v1::ShmDeferred::None));
                    continue;
                }
            };
            let len = block.data.len() as u64;
            let window = self.window.as_mut().expect("a window session");
            let offset = match window.alloc(len) {
                Some(offset) if self.held_bytes + len <= self.config.session_limit.0 => offset,
                other => {
                    if let Some(offset) = other {
                        window.free(offset, len);
                    }
                    full = true;
                    results.push(again(index));
                    continue;
                }
            };
            window.bytes_mut(offset, len).copy_from_slice(&block.data);
            let handle = self.hold(Held::WindowPin { offset, len });
            results.push(v1::ShmPinResult {
                slot: Some(v1::ShmSlot { handle, offset, length: len }),
                crc32c: block.crc32c,
                tier: tier_to_wire(tier) as i32,
                miss: None,
                deferred: 0,
            });
        }
        results
    }
}
