//! `[cluster]`: membership.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// `[cluster]`: the nodes this one shares blocks with. With no members it is a single node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id among the members. Default: the host name.
    pub node_id: String,
    /// Static membership: `"id=host:port"` for every node, this one included (the address
    /// is the node's gRPC `server.listen` as the others reach it). Empty: a single node.
    pub members: Vec<String>,
    /// Membership from etcd instead (production): its client URLs. Each node registers its
    /// id and `advertise` address under a lease and watches the others; a node whose lease
    /// expires is out until it registers again. Empty: `members` decides.
    pub etcd: Vec<String>,
    /// The etcd key prefix of this cluster (several clusters may share an etcd).
    /// Default `/kvtier/default`.
    pub etcd_prefix: String,
    /// How long a node stays a member without renewing its lease (it renews every third of
    /// it). Default 10s.
    #[serde(with = "super::humantime_serde")]
    pub lease_ttl: Duration,
    /// The gRPC address other nodes reach this one on, registered in etcd. Default: the
    /// `server.listen` address (which must then not be a wildcard).
    pub advertise: String,
    /// A peer request that takes longer counts as a failed copy. Default 10s.
    #[serde(with = "super::humantime_serde")]
    pub peer_timeout: Duration,
    /// A member this node could not connect to is skipped (its copies fail at once, as
    /// unreachable) for this long before the next connect is tried: a member that is down
    /// costs one connect timeout per this interval, not one per request. Default 2s.
    #[serde(with = "super::humantime_serde")]
    pub retry_down_after: Duration,
    /// Besides at start and when this node comes back into the member list, resync (pull
    /// the blocks this node owns and lacks from every member) this often; "0s": only then.
    /// At the other changes of the member list the blocks that moved are handed to their
    /// new owners instead (retried until they take them). Default 5m.
    #[serde(with = "super::humantime_serde")]
    pub resync_interval: Duration,
    /// Read replicas: once an owner has served a key to other nodes this many times, the
    /// readers' nodes keep copies of it and the owner sends further readers to those
    /// copies, so a key every node reads (a checkpoint being restored, a shared prompt
    /// prefix) is served by many nodes, not by its owners alone. Below it a reader keeps
    /// nothing. 0 turns read replicas off. Default 2.
    pub read_replica_after: u32,
    /// Most read replicas of one key an owner tracks and sends readers to. Default 8.
    pub read_replicas: usize,
    /// A write-back chunk that no member's manifest names (its upload never committed: its
    /// writer's node died, or a commit of unknown outcome left no manifest) is removed
    /// once it has waited this long, at the next resync round; "0s": never. Default 10m.
    #[serde(with = "super::humantime_serde")]
    pub orphan_after: Duration,
    /// A delete leaves a marker on the path's owners so that a copy of the deleted version
    /// (on a member that was away) cannot bring it back; each member removes it this long
    /// after the delete. A member away for longer must come back with a wiped data dir.
    /// Default 1d.
    #[serde(with = "super::humantime_serde")]
    pub delete_marker_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            members: Vec::new(),
            etcd: Vec::new(),
            etcd_prefix: "/kvtier/default".into(),
            lease_ttl: Duration::from_secs(10),
            advertise: String::new(),
            peer_timeout: Duration::from_secs(10),
            retry_down_after: Duration::from_secs(2),
            resync_interval: Duration::from_secs(300),
            read_replica_after: 2,
            read_replicas: 8,
            orphan_after: Duration::from_secs(600),
            delete_marker_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl ClusterConfig {
    /// This node's id: `node_id`, else the host name.
    pub fn local_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }

    /// The static members as (id, address), checked: ids unique and non-empty, this node
    /// among them.
    pub fn static_members(&self) -> Result<Vec<(String, String)>, Error> {
        let bad = |why: String| Err(Error::Config(format!("cluster.members: {why}")));
        let mut members: Vec<(String, String)> = Vec::new();
        for entry in &self.members {
            let Some((id, addr)) = entry.split_once('=') else {
                return bad(format!("{entry:?} is not \"id=host:port\""));
            };
            let (id, addr) = (id.trim(), addr.trim());
            if id.is_empty() || addr.is_empty() || id.contains(char::is_whitespace) {
                return bad(format!("{entry:?} is not \"id=host:port\""));
            }
            if members.iter().any(|(m, _)| m == id) {
                return bad(format!("node {id:?} is listed twice"));
            }
            members.push((id.to_string(), addr.to_string()));
        }
        let local = self.local_id();
        if !members.is_empty() && !members.iter().any(|(id, _)| *id == local) {
            return bad(format!("this node ({local:?}, cluster.node_id) is not among them"));
        }
        if !members.is_empty() && !self.etcd.is_empty() {
            return bad("set either members (static) or etcd, not both".into());
        }
        Ok(members)
    }

    /// The address registered in etcd for this node: `advertise`, else `listen`.
    pub fn advertised(&self, listen: &str) -> Result<String, Error> {
        let addr = if self.advertise.is_empty() { listen } else { self.advertise.as_str() };
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        if ["0.0.0.0", "[::]", "::", ""].contains(&host) || addr.ends_with(":0") {
            return Err(Error::Config(format!(
                "cluster.advertise: other nodes cannot reach {addr:?}; set the address they should use"
            )));
        }
        Ok(addr.to_string())
    }
}
