use kvtier_tiers::BlockKey;

use super::{PolicyKind, chains::Chains, queues::Queues};

fn key(ns: &str, i: u64) -> BlockKey {
    BlockKey::parse(ns, &i.to_be_bytes()).unwrap()
}

fn kv(i: u64) -> BlockKey {
    key("kv", i)
}

/// Admits `key` of `weight`; returns what was evicted (without whether it was read).
fn admit(q: &mut Queues, key: BlockKey, weight: u64, kind: PolicyKind) -> Vec<BlockKey> {
    q.admit(key, weight, kind, None, &|_| false).into_iter().map(|(k, _)| k).collect()
}

/// Admits `keys` of weight 1 in order, each with the key before it as its parent when
/// `chain`; returns what was evicted.
fn admit_all(q: &mut Queues, kind: PolicyKind, keys: &[BlockKey], chain: bool) -> Vec<BlockKey> {
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let parent = if chain && i > 0 { Some(&keys[i - 1]) } else { None };
        out.extend(q.admit(k.clone(), 1, kind, parent, &|_| false).into_iter().map(|(k, _)| k));
    }
    out
}

#[test]
fn a_fresh_block_enters_a_memory_full_of_blocks_read_before() {
    let mut q = Queues::new(10);
    let old: Vec<_> = (0..10).map(kv).collect();
    assert!(admit_all(&mut q, PolicyKind::Kv, &old, false).is_empty());
    for k in &old {
        q.touch(k);
        q.touch(k);
    }
    for i in 100..105 {
        let evicted = admit(&mut q, kv(i), 1, PolicyKind::Kv);
        assert_eq!(evicted.len(), 1, "one old block makes room");
        assert!(q.contains(&kv(i)), "fresh block {i} admitted (TinyLFU refused it)");
    }
}

#[test]
fn a_chain_leaves_tail_first() {
    let mut q = Queues::new(8);
    let chain: Vec<_> = (0..8).map(kv).collect();
    admit_all(&mut q, PolicyKind::Kv, &chain, true);
    let fillers: Vec<_> = (100..108).map(kv).collect();
    let evicted = admit_all(&mut q, PolicyKind::Kv, &fillers, false);
    assert_eq!(evicted, chain.iter().rev().cloned().collect::<Vec<_>>(), "the last block of the chain goes first");
}

#[test]
fn blocks_read_again_survive_a_scan_of_one_time_blocks() {
    let mut q = Queues::new(10);
    let hot: Vec<_> = (0..3).map(kv).collect();
    admit_all(&mut q, PolicyKind::Kv, &hot, false);
    for round in 0..20 {
        for k in &hot {
            q.touch(k);
        }
        admit_all(&mut q, PolicyKind::Kv, &(0..10).map(|i| kv(100 + round * 10 + i)).collect::<Vec<_>>(), false);
        for k in &hot {
            assert!(q.contains(k), "{k}, read between scans of 10 (the whole memory), stays (round {round})");
        }
    }
}

#[test]
fn a_block_put_again_soon_after_leaving_grows_the_small_queue() {
    let mut q = Queues::new(10);
    let first: Vec<_> = (0..10).map(kv).collect();
    admit_all(&mut q, PolicyKind::Kv, &first, false);
    let before = q.small_share();
    // Evicted from the small queue, unread, then put again: too short a probation.
    let evicted = admit_all(&mut q, PolicyKind::Kv, &(100..105).map(kv).collect::<Vec<_>>(), false);
    assert_eq!(evicted.len(), 5);
    admit(&mut q, evicted[0].clone(), 1, PolicyKind::Kv);
    assert!(q.contains(&evicted[0]));
    assert!(q.small_share() > before, "{} -> {}", before, q.small_share());
}

#[test]
fn lru_keeps_what_was_read_last_and_checkpoints_go_first_in_first_out() {
    let mut q = Queues::new(4);
    let lru: Vec<_> = (0..4).map(|i| key("lru", i)).collect();
    admit_all(&mut q, PolicyKind::Lru, &lru, false);
    q.touch(&lru[0]);
    assert_eq!(admit(&mut q, key("lru", 9), 1, PolicyKind::Lru), vec![lru[1].clone()]);

    let mut q = Queues::new(4);
    let steps: Vec<_> = (0..4).map(|i| key("ckpt", i)).collect();
    admit_all(&mut q, PolicyKind::Checkpoint, &steps, false);
    q.touch(&steps[0]);
    q.touch(&steps[0]);
    assert_eq!(
        admit(&mut q, key("ckpt", 9), 1, PolicyKind::Checkpoint),
        vec![steps[0].clone()],
        "the oldest step goes, read or not"
    );
}

#[test]
fn namespaces_of_different_policies_share_memory_oldest_first() {
    let mut q = Queues::new(4);
    admit(&mut q, key("ckpt", 0), 1, PolicyKind::Checkpoint);
    admit(&mut q, kv(0), 1, PolicyKind::Kv);
    admit(&mut q, key("ckpt", 1), 1, PolicyKind::Checkpoint);
    admit(&mut q, kv(1), 1, PolicyKind::Kv);
    assert_eq!(admit(&mut q, kv(2), 1, PolicyKind::Kv), vec![key("ckpt", 0)]);
    assert_eq!(admit(&mut q, kv(3), 1, PolicyKind::Kv), vec![kv(0)]);
}

#[test]
fn forgetting_and_weights_keep_the_accounting() {
    let mut q = Queues::new(10);
    admit(&mut q, kv(0), 6, PolicyKind::Kv);
    q.forget(&kv(0));
    assert!(admit(&mut q, kv(1), 10, PolicyKind::Kv).is_empty(), "the forgotten block's bytes are free");
    assert_eq!(admit(&mut q, kv(2), 3, PolicyKind::Kv), vec![kv(1)]);
    assert_eq!(q.len(), 1);
}

#[test]
fn chains_name_the_children_a_departed_block_leaves_and_stay_bounded() {
    let mut c = Chains::new(4);
    c.learn(&[kv(0), kv(1), kv(2)]);
    c.learn(&[kv(0), kv(1), kv(3)]); // a branch: 1 has two children
    c.learn(&[kv(0), key("other", 1)]); // another namespace: no link
    assert_eq!(c.parent(&kv(2)), Some(&kv(1)));
    assert_eq!(c.parent(&key("other", 1)), None);
    let mut kids = c.departed(&kv(1));
    kids.sort();
    assert_eq!(kids, vec![kv(2), kv(3)]);
    assert_eq!(c.parent(&kv(1)), None, "a departed block's own link is gone");
    c.learn(&(10..20).map(kv).collect::<Vec<_>>());
    assert!(c.len() <= 4, "{} links kept", c.len());
    assert_eq!(c.parent(&kv(19)), Some(&kv(18)), "the newest links stay");
}

#[test]
fn an_order_without_capacity_names_victims_on_demand_and_forgets_only_what_went() {
    // The SSD's order: it evicts when a write finds the SSD full, asking for victims.
    let mut q = Queues::new(u64::MAX);
    let blocks: Vec<_> = (0..4).map(kv).collect();
    assert!(admit_all(&mut q, PolicyKind::Kv, &blocks, false).is_empty(), "no capacity to evict for");
    q.touch(&blocks[1]);
    assert_eq!(q.victims(2, &|_| false), vec![kv(0), kv(2)], "the read block earns another pass");
    assert_eq!(q.victims(2, &|_| false), vec![kv(0), kv(2)], "named, not removed");
    assert_eq!(q.victims(1, &|k| *k == kv(0)), vec![kv(2)], "what the caller keeps is passed by");
    assert_eq!(q.evicted(&kv(0)), Some(false));
    assert_eq!(q.evicted(&kv(1)), Some(true), "read while here");
    assert_eq!(q.evicted(&kv(0)), None);
    assert_eq!(q.len(), 2);
    assert_eq!(q.victims(4, &|_| false), vec![kv(2), kv(3)], "the rest, in order");
}
