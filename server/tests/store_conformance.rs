//! The store conformance suite (`kvtier_blockmgr::store::conformance`) against real
//! `kvtier serve` processes through the gRPC client: one node, and a three-node cluster
//! (two copies of every block, both acknowledged) through each member in turn. The same
//! suite runs against one node's manager in process (blockmgr's unit tests): a caller that
//! swaps one for another sees the same behaviour.

mod common;

use common::{Node, start_static_cluster};
use kvtier_blockmgr::store::conformance;

/// `max_block_size` of the nodes `small_config` writes.
const MAX_BLOCK: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_over_grpc_passes_the_store_conformance_suite() {
    let node = Node::start();
    conformance::run(&node.client().await, "conformance/remote", MAX_BLOCK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_cluster_passes_the_store_conformance_suite_through_every_member() {
    let nodes = start_static_cluster(&["n1", "n2", "n3"], |_| {
        "peer_timeout = \"5s\"\n\n[namespaces.\"conformance/*\"]\nreplicas = 2\nwrite_quorum = 2\n".to_string()
    });
    for node in &nodes {
        conformance::run(&node.client().await, "conformance/cluster", MAX_BLOCK).await;
    }
}
