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
    /// A peer request that takes longer counts as a failed copy. Default 10s.
    #[serde(with = "super::humantime_serde")]
    pub peer_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { node_id: String::new(), members: Vec::new(), peer_timeout: Duration::from_secs(10) }
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
        Ok(members)
    }
}
