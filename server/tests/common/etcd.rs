//! Nodes on a real etcd (the membership tests: etcd.rs, etcd_deletes.rs).

use std::time::Duration;

use kvtier_testkit::{Etcd, Hosts};

use super::{IDS, Node, free_port, wait_until};

/// The lease TTL the nodes register with (seconds).
pub const TTL_S: u64 = 3;

/// Three nodes on `etcd`, `ckpt/*` with 2 copies, plus the tables `extra` gives for a node id.
pub fn start_nodes(etcd: &Etcd, extra: impl Fn(&str) -> String) -> Vec<Node> {
    start_nodes_on(&Hosts::loopback(), etcd, extra)
}

/// The same, node `i` on host `i` of `hosts`.
pub fn start_nodes_on(hosts: &Hosts, etcd: &Etcd, extra: impl Fn(&str) -> String) -> Vec<Node> {
    IDS.iter()
        .enumerate()
        .map(|(i, id)| {
            let tables = format!(
                "[cluster]\nnode_id = \"{id}\"\netcd = [\"{}\"]\netcd_prefix = \"/test\"\nlease_ttl = \"{TTL_S}s\"\n\
                 peer_timeout = \"3s\"\n\n[namespaces.\"ckpt/*\"]\nreplicas = 2\n\n{}",
                etcd.endpoint,
                extra(id)
            );
            Node::start_on_host(hosts, i, free_port(), &tables)
        })
        .collect()
}

/// The members `node` sees.
pub fn members(node: &Node) -> i64 {
    node.metric("cluster_members") as i64
}

/// Waits until `node` sees `want` members.
pub fn wait_for_members(node: &Node, want: i64, within: Duration) {
    wait_until(&format!("{want} members"), within, || members(node) == want);
}
