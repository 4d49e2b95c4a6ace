//! Prefix chains as engines reveal them: a lookup names a request's blocks in prefix order,
//! so each key's parent is the key before it. The store keeps those links (a bounded
//! number, oldest forgotten first) to order evictions tail first and to find the blocks a
//! departed parent leaves unreachable: a prefix lookup stops at the first absent block, so
//! a block whose parent left the node can never be hit until that parent is put again, and
//! then the engine recomputes and puts the child too.

use std::collections::{HashMap, VecDeque};

use kvtier_tiers::BlockKey;

/// Links kept at most. A link is a child's key and its parent's: ~200 bytes.
pub(crate) const MAX_LINKS: usize = 1 << 20;

/// Child -> parent links, and each parent's children.
#[derive(Debug, Default)]
pub(crate) struct Chains {
    parent: HashMap<BlockKey, BlockKey>,
    children: HashMap<BlockKey, Vec<BlockKey>>,
    /// Children in the order their links were learned (the oldest is forgotten first).
    order: VecDeque<BlockKey>,
    max: usize,
}

impl Chains {
    pub(crate) fn new(max: usize) -> Self {
        Chains { max, ..Default::default() }
    }

    /// Learns the links of one request's keys, in prefix order. A key keeps the first parent
    /// it was seen with: a prefix hash names its whole prefix, so it has one parent.
    pub(crate) fn learn(&mut self, keys: &[BlockKey]) {
        for pair in keys.windows(2) {
            let (parent, child) = (&pair[0], &pair[1]);
            if parent.namespace != child.namespace || parent == child || self.parent.contains_key(child) {
                continue;
            }
            self.parent.insert(child.clone(), parent.clone());
            self.children.entry(parent.clone()).or_default().push(child.clone());
            self.order.push_back(child.clone());
        }
        while self.order.len() > self.max {
            let Some(child) = self.order.pop_front() else { break };
            self.unlink(&child);
        }
    }

    fn unlink(&mut self, child: &BlockKey) {
        let Some(parent) = self.parent.remove(child) else { return };
        if let Some(kids) = self.children.get_mut(&parent) {
            kids.retain(|k| k != child);
            if kids.is_empty() {
                self.children.remove(&parent);
            }
        }
    }

    pub(crate) fn parent(&self, key: &BlockKey) -> Option<&BlockKey> {
        self.parent.get(key)
    }

    /// Forgets `key`, which left the node, and returns its children: unreachable now.
    pub(crate) fn departed(&mut self, key: &BlockKey) -> Vec<BlockKey> {
        self.unlink(key);
        let kids = self.children.remove(key).unwrap_or_default();
        for kid in &kids {
            self.parent.remove(kid);
        }
        // `order` keeps stale names; `learn`'s bound drops them in their turn (unlink of a
        // key without a parent is a no-op).
        kids
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.parent.len()
    }
}
