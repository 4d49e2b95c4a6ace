//! What every [`BlockStore`] owes its callers, checked against one: a single node, a node
//! over gRPC, a cluster through any member. Each check uses keys of its own under the
//! namespace given (a random prefix per run), so the suite runs on a store holding other
//! data, and twice on the same one.
//!
//! Beyond what the tier suite checks one layer down: concurrent puts of one key and puts
//! given up half way (a caller's future dropped, a client's stream cut) leave a whole
//! block or none, never a mix.

use bytes::Bytes;
use kvtier_testkit::pattern;

use super::{BlockStore, StoreError};
use crate::{Durability, PutItem};

/// Runs every check against `store`, in `namespace`, whose blocks may be up to
/// `max_block_size` bytes. Panics, naming the check, at the first failure.
pub async fn run(store: &dyn BlockStore, namespace: &str, max_block_size: u64) {
    let run = Keys(rand::random::<u32>());
    round_trip_in_order(store, namespace, &run).await;
    a_second_put_of_a_key_keeps_the_first_bytes(store, namespace, &run).await;
    deletes_answer_whether_the_key_was_held(store, namespace, &run).await;
    lookup_finds_the_longest_held_prefix(store, namespace, &run).await;
    bad_input_is_refused_as_invalid_and_stores_nothing(store, namespace, &run, max_block_size).await;
    concurrent_puts_of_one_key_leave_one_whole_block(store, namespace, &run).await;
    a_put_given_up_leaves_a_whole_block_or_none(store, namespace, &run, max_block_size).await;
}

/// Keys of one run.
struct Keys(u32);

impl Keys {
    fn key(&self, check: &str, i: u64) -> Vec<u8> {
        format!("{:08x}/{check}/{i}", self.0).into_bytes()
    }
}

async fn put_ok(store: &dyn BlockStore, namespace: &str, items: &[PutItem], check: &str) {
    let results = store.put_batch(namespace, items, Durability::LocalDisk).await;
    let results = results.unwrap_or_else(|e| panic!("{check}: put: {e}"));
    assert_eq!(results.len(), items.len(), "{check}: one answer per block");
    for (item, result) in items.iter().zip(results) {
        result.unwrap_or_else(|e| panic!("{check}: put of {:?}: {e}", String::from_utf8_lossy(&item.key)));
    }
}

async fn get(store: &dyn BlockStore, namespace: &str, keys: &[Vec<u8>], check: &str) -> Vec<Option<Bytes>> {
    let got = store.get_batch(namespace, keys).await.unwrap_or_else(|e| panic!("{check}: get: {e}"));
    assert_eq!(got.len(), keys.len(), "{check}: one answer per key");
    got
}

/// Blocks of several sizes (one byte among them) read back as put, answered in the order
/// asked, a key never put among them answered `None`.
async fn round_trip_in_order(store: &dyn BlockStore, ns: &str, run: &Keys) {
    let check = "round trip";
    let items: Vec<PutItem> = [1usize, 4096, 100_001]
        .iter()
        .enumerate()
        .map(|(i, &len)| PutItem::new(run.key("rt", i as u64), pattern(i as u64, len)))
        .collect();
    put_ok(store, ns, &items, check).await;
    let asked = vec![items[2].key.clone(), run.key("rt", 99), items[0].key.clone(), items[1].key.clone()];
    let got = get(store, ns, &asked, check).await;
    assert!(got[0].as_ref() == Some(&items[2].data), "{check}: the third block");
    assert!(got[1].is_none(), "{check}: a key never put");
    assert!(got[2].as_ref() == Some(&items[0].data), "{check}: the one-byte block");
    assert!(got[3].as_ref() == Some(&items[1].data), "{check}: the second block");
}

/// A second put of a held key succeeds and changes nothing: the first bytes stay.
async fn a_second_put_of_a_key_keeps_the_first_bytes(store: &dyn BlockStore, ns: &str, run: &Keys) {
    let check = "second put";
    let key = run.key("again", 0);
    put_ok(store, ns, &[PutItem::new(key.clone(), pattern(10, 5000))], check).await;
    put_ok(store, ns, &[PutItem::new(key.clone(), pattern(10, 5000))], check).await;
    put_ok(store, ns, &[PutItem::new(key.clone(), pattern(11, 7000))], check).await;
    let got = get(store, ns, std::slice::from_ref(&key), check).await;
    assert!(got[0] == Some(pattern(10, 5000)), "{check}: the first bytes stay");
}

/// A delete says whether the key was held; after it the key is a miss, and a second delete
/// finds nothing.
async fn deletes_answer_whether_the_key_was_held(store: &dyn BlockStore, ns: &str, run: &Keys) {
    let check = "delete";
    let (held, never) = (run.key("del", 0), run.key("del", 1));
    put_ok(store, ns, &[PutItem::new(held.clone(), pattern(20, 3000))], check).await;
    let first = store.delete_batch(ns, &[held.clone(), never.clone()]).await.unwrap();
    assert_eq!(first, vec![true, false], "{check}: held, never put");
    assert!(get(store, ns, std::slice::from_ref(&held), check).await[0].is_none(), "{check}: gone");
    assert_eq!(store.delete_batch(ns, &[held]).await.unwrap(), vec![false], "{check}: a second delete");
}

/// A lookup answers the tiers of the longest held prefix of the keys asked.
async fn lookup_finds_the_longest_held_prefix(store: &dyn BlockStore, ns: &str, run: &Keys) {
    let check = "lookup";
    let chain: Vec<Vec<u8>> = (0..4).map(|i| run.key("chain", i)).collect();
    let held: Vec<PutItem> =
        chain[..2].iter().enumerate().map(|(i, k)| PutItem::new(k.clone(), pattern(30 + i as u64, 2000))).collect();
    put_ok(store, ns, &held, check).await;
    assert_eq!(store.lookup(ns, &chain).await.unwrap().len(), 2, "{check}: two of four held");
    assert_eq!(store.lookup(ns, &chain[2..]).await.unwrap().len(), 0, "{check}: a chain that starts unheld");
    assert_eq!(store.lookup(ns, &chain[..1]).await.unwrap().len(), 1, "{check}: one held");
}

/// A malformed key or namespace and a block over the size limit are refused as invalid
/// (never retryable), and nothing is stored for them; the store takes the next put.
async fn bad_input_is_refused_as_invalid_and_stores_nothing(store: &dyn BlockStore, ns: &str, run: &Keys, max: u64) {
    let check = "bad input";
    let invalid = |what: &str, result: Result<Vec<Result<(), StoreError>>, StoreError>| match result {
        Err(StoreError::Invalid(_)) => {}
        Ok(results) if matches!(results.as_slice(), [Err(StoreError::Invalid(_))]) => {}
        other => panic!("{check}: {what} answered {other:?}, not invalid"),
    };
    let too_long = vec![b'k'; 65];
    invalid("an empty key", store.put_batch(ns, &[PutItem::new(Vec::new(), pattern(40, 10))], Durability::Cache).await);
    invalid(
        "a 65-byte key",
        store.put_batch(ns, &[PutItem::new(too_long.clone(), pattern(41, 10))], Durability::Cache).await,
    );
    let oversized = run.key("big", 0);
    let big = PutItem::new(oversized.clone(), pattern(42, max as usize + 1));
    invalid("a block over the limit", store.put_batch(ns, &[big], Durability::LocalDisk).await);
    let good = PutItem::new(run.key("good", 0), pattern(43, 10));
    invalid(
        "a namespace with a space",
        store.put_batch("bad namespace", std::slice::from_ref(&good), Durability::Cache).await,
    );
    match store.get_batch(ns, std::slice::from_ref(&too_long)).await {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("{check}: a get of a 65-byte key answered {other:?}, not invalid"),
    }
    assert!(get(store, ns, std::slice::from_ref(&oversized), check).await[0].is_none(), "{check}: nothing stored");
    put_ok(store, ns, std::slice::from_ref(&good), check).await;
}

/// Puts of one key with different bytes racing each other all succeed, and the key then
/// reads as exactly one of them, whole.
async fn concurrent_puts_of_one_key_leave_one_whole_block(store: &dyn BlockStore, ns: &str, run: &Keys) {
    let check = "concurrent puts";
    let key = run.key("race", 0);
    let candidates: Vec<Bytes> = (0..8).map(|i| pattern(50 + i, 200_000)).collect();
    let puts = candidates.iter().map(|data| {
        let item = [PutItem::new(key.clone(), data.clone())];
        async move { store.put_batch(ns, &item, Durability::LocalDisk).await }
    });
    for result in futures::future::join_all(puts).await {
        let results = result.unwrap_or_else(|e| panic!("{check}: {e}"));
        results.into_iter().for_each(|r| r.unwrap_or_else(|e| panic!("{check}: {e}")));
    }
    let got = get(store, ns, std::slice::from_ref(&key), check).await.remove(0).expect("the key is held");
    assert!(candidates.contains(&got), "{check}: the key reads as none of the blocks put ({} bytes)", got.len());
}

/// A put whose caller gives up after its first poll (a dropped future; over gRPC, a
/// cancelled stream) leaves the key holding the whole block or nothing, and a later put of
/// it lands.
async fn a_put_given_up_leaves_a_whole_block_or_none(store: &dyn BlockStore, ns: &str, run: &Keys, max: u64) {
    let check = "put given up";
    let data = pattern(60, max as usize);
    for i in 0..4 {
        let key = run.key("cancel", i);
        let item = [PutItem::new(key.clone(), data.clone())];
        {
            let put = store.put_batch(ns, &item, Durability::LocalDisk);
            let mut put = std::pin::pin!(put);
            // Polled once (or a few times: i), then dropped.
            for _ in 0..=i {
                if futures::poll!(put.as_mut()).is_ready() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        if let Some(got) = get(store, ns, std::slice::from_ref(&key), check).await.remove(0) {
            assert!(got == data, "{check}: a partial block ({} of {} bytes)", got.len(), data.len());
        }
        put_ok(store, ns, &item, check).await;
        assert!(
            get(store, ns, std::slice::from_ref(&key), check).await[0].as_ref() == Some(&data),
            "{check}: the put after"
        );
    }
}
