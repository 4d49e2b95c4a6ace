//! The server's arena (or a private window) as this process maps it.

use std::sync::Arc;

/// The arena as this process mapped it. It stays mapped while any clone lives, also after
/// its session closed or the server died (then it is memory no one else sees any more).
#[derive(Clone)]
pub struct ShmArena {
    pub(super) map: Arc<memmap2::MmapRaw>,
    pub(super) id: u64,
    pub(super) private: bool,
}

impl std::fmt::Debug for ShmArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShmArena({} bytes, id {}, private {})", self.map.len(), self.id, self.private)
    }
}

impl ShmArena {
    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true: the server refuses to run with an empty arena.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Which arena this is: the memfd's inode number. Two sessions mapped the same memory
    /// exactly when their ids are equal (a restarted server has a new memfd, and the old
    /// one's inode cannot be reused while anything still maps it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A window of this session's own rather than the server's arena (the server gives one to
    /// uids that may not read every namespace): slots are copies no other session sees.
    pub fn is_private(&self) -> bool {
        self.private
    }
}
