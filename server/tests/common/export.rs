//! Helpers of the export tests (export.rs, export_faults.rs): object bodies as streams, the
//! file an export wrote, and a write-back object on three nodes.

use bytes::Bytes;
use kvtier_blockmgr::{Durability, ObjectRange};
use kvtier_tiers::{Namespace, ObjectBlobs, Retries};

use std::time::Duration;

use super::{Node, wait_until};

/// The namespace the export tests write in.
pub const NS: &str = "acme/ckpt";
/// The object most of them write.
pub const PATH: &str = "run1/step-100/rank-0.distcp";

/// `data` as a stream of 300 KB pieces (an upload's body).
pub fn pieces(data: &Bytes) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let parts: Vec<Bytes> =
        (0..data.len()).step_by(300_000).map(|at| data.slice(at..(at + 300_000).min(data.len()))).collect();
    futures::stream::iter(parts)
}

/// What another tool sees at the object's name under `objects_url`.
pub async fn file_in_blob(objects_url: &str, options: &[(String, String)], len: u64) -> Option<Bytes> {
    let blobs = ObjectBlobs::open(objects_url, options, Retries::default()).unwrap();
    let name = blobs.name(&Namespace::new(NS).unwrap(), PATH);
    blobs.read(&name, 0..len).await.unwrap()
}

/// The random id naming the chunks of `PATH`'s current version, from its manifest as an
/// owner keeps it.
pub async fn object_id(nodes: &[Node]) -> u64 {
    for node in nodes {
        if let Some(manifest) = super::manifest_on(node, NS, PATH).await {
            return manifest["id"].as_u64().expect("the manifest names its chunks' id");
        }
    }
    panic!("no node owns {PATH}'s manifest");
}

/// Writes `object` write-back through the first node and waits until its file is in Blob
/// and no copy waits for a flush.
pub async fn write_back_on(nodes: &[Node], object: &Bytes) {
    let writer = nodes[0].client().await;
    writer.put_object(NS, PATH, pieces(object), Durability::WriteBack, None, None).await.unwrap();
    let exported = || nodes.iter().map(|n| n.metric("objects_exported_total")).sum::<u64>();
    wait_until("the export", Duration::from_secs(30), || exported() >= 1);
    wait_until("every copy released", Duration::from_secs(30), || {
        nodes.iter().all(|n| n.metric("unflushed_bytes") == 0)
    });
}

/// Wipes every node's disk (the object is then only in Blob), restarts them, and has all of
/// them restore `PATH` at once, byte-exact; their clients.
pub async fn wipe_and_restore_everywhere(nodes: &mut [Node], object: &Bytes) -> Vec<kvtier_blockmgr::Client> {
    for node in nodes.iter_mut() {
        assert!(node.terminate().success());
        std::fs::remove_dir_all(node.data_dir()).unwrap();
    }
    for node in nodes.iter_mut() {
        node.restart();
    }
    let mut clients = Vec::new();
    for node in nodes.iter() {
        clients.push(node.client().await);
    }
    let restores = clients.iter().map(|c| c.read_object(NS, PATH, ObjectRange::all()));
    for restored in futures::future::join_all(restores).await {
        assert!(restored.as_ref().is_ok_and(|r| r == object), "{:?}", restored.map(|r| r.len()));
    }
    clients
}

/// PATH's owners as indexes of the three nodes (primary, second owner, the other node), and
/// a second path with the same owners.
pub fn owners_and_a_second_path() -> ((usize, usize, usize), String) {
    let ids = ["n1", "n2", "n3"];
    let owners = super::path_owners(&ids, NS, PATH);
    let second_path = (0..200)
        .map(|i| format!("run1/step-{i}/rank-1.distcp"))
        .find(|p| super::path_owners(&ids, NS, p) == owners)
        .expect("a second path with the same owners");
    let at = |id: &str| ids.iter().position(|i| *i == id).unwrap();
    let (primary, second) = (at(owners[0]), at(owners[1]));
    ((primary, second, 3 - primary - second), second_path)
}

/// A node whose Blob is a real Azurite behind a fault proxy, exporting objects under
/// `az://kvtier/<prefix>/objects`.
pub fn node_behind_proxy(
    prefix: &str,
    extra: &str,
) -> (kvtier_testkit::Azurite, kvtier_testkit::FaultProxy, Node, String) {
    let (azurite, proxy, blob) = super::blob::behind_fault_proxy(prefix, &format!("flush_linger = \"10ms\"\n{extra}"));
    let node = Node::start_with("", &blob);
    let objects = format!("az://kvtier/{prefix}/objects");
    (azurite, proxy, node, objects)
}
