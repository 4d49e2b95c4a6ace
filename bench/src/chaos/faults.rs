//! The faults, one at a time: `kill -9` and restart of a node, SIGSTOP of a node past its
//! lease, a partition of one host (its veth down past the lease), and Blob (Azurite)
//! stopped or frozen. Azurite is stopped with SIGTERM, never SIGKILL: it keeps its index in
//! memory and saves it every few seconds, so a `kill -9` makes it forget blobs it
//! acknowledged, which real Azure never does.

use std::time::Duration;

use anyhow::Result;

use super::cluster::{Cluster, LEASE_TTL, State};

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Fault {
    Kill9,
    Stop,
    Partition,
    BlobStopped,
    BlobFrozen,
}

impl Fault {
    /// The `i`th fault of a run: kills most often (they are the quickest), every kind
    /// in turn; partitions only between separate hosts.
    pub(super) fn nth(i: u64, partitions: bool) -> Fault {
        const CYCLE: [Fault; 8] = [
            Fault::Kill9,
            Fault::Stop,
            Fault::Kill9,
            Fault::Partition,
            Fault::BlobStopped,
            Fault::Kill9,
            Fault::Stop,
            Fault::BlobFrozen,
        ];
        match CYCLE[(i % CYCLE.len() as u64) as usize] {
            Fault::Partition if !partitions => Fault::Kill9,
            f => f,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9 and restart",
            Fault::Stop => "SIGSTOP past the lease",
            Fault::Partition => "partition past the lease",
            Fault::BlobStopped => "Azurite stopped",
            Fault::BlobFrozen => "Azurite frozen",
        }
    }
}

/// Injects `fault` on node `node` (a node fault) and heals it; blocking (run it off the
/// reactor).
pub(super) fn inject(cluster: &Cluster, fault: Fault, node: usize, pause: Duration) -> Result<()> {
    // Past the lease, so the others drop the node and take it back after.
    let past_lease = LEASE_TTL + LEASE_TTL / 2;
    match fault {
        Fault::Kill9 => {
            cluster.set_state(node, State::Away);
            cluster.kill9(node);
            std::thread::sleep(pause);
            cluster.spawn(node)?;
        }
        Fault::Stop => {
            cluster.set_state(node, State::Away);
            cluster.signal(node, libc::SIGSTOP);
            std::thread::sleep(past_lease);
            cluster.signal(node, libc::SIGCONT);
        }
        Fault::Partition => {
            cluster.set_state(node, State::Away);
            cluster.hosts.cut(node);
            std::thread::sleep(past_lease);
            cluster.hosts.heal(node);
        }
        Fault::BlobStopped => {
            cluster.azurite.lock().stop();
            std::thread::sleep(pause + Duration::from_secs(2));
            cluster.azurite.lock().resume();
        }
        Fault::BlobFrozen => {
            cluster.azurite.lock().freeze();
            std::thread::sleep(pause + Duration::from_secs(2));
            cluster.azurite.lock().thaw();
        }
    }
    cluster.set_state(node, State::Up);
    Ok(())
}
