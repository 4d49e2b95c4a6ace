//! Connections to members: one member slow to connect holds up no other.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use super::{Cluster, Dialer, PeerError};
use crate::{Config, Metrics};

/// n3's connect never completes (a partition dropping its SYNs); n2 refuses at once. A
/// request to n2 made while n3's connect is under way answers without waiting for it (the
/// one lock over every member's connection once made it wait out the peer timeout).
#[tokio::test]
async fn a_member_slow_to_connect_holds_up_no_other() {
    let mut config = Config::default();
    config.cluster.node_id = "n1".into();
    config.cluster.members = ["n1", "n2", "n3"].iter().map(|id| format!("{id}=sim:{id}")).collect();
    config.cluster.peer_timeout = Duration::from_secs(600);
    let dialing_n3 = Arc::new(tokio::sync::Notify::new());
    let (dialing, refused) = (dialing_n3.clone(), Arc::new(AtomicBool::new(false)));
    let dialer: Dialer = Arc::new(move |addr: &str| {
        let (addr, dialing, refused) = (addr.to_string(), dialing.clone(), refused.clone());
        Box::pin(async move {
            if addr == "sim:n3" {
                dialing.notify_one();
                std::future::pending::<()>().await;
            }
            refused.store(true, std::sync::atomic::Ordering::SeqCst);
            // An address no endpoint parses: the client's own error for a failed connect.
            crate::Client::connect("not a url at all").await
        })
    });
    let cluster = Cluster::from_config(&config, Metrics::new(), Some(dialer)).unwrap().expect("three members");

    let to_n3 = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.peer("n3").await.map(|_| ()) }
    });
    dialing_n3.notified().await;
    let to_n2 = cluster.peer("n2").await;
    assert!(matches!(to_n2, Err(PeerError::Unreachable { ref member, .. }) if member == "n2"), "{to_n2:?}");
    assert!(!to_n3.is_finished(), "n2 answered only once n3's connect ended");
    // n2 is now skipped for a moment: a second request fails at once, without dialling.
    assert!(matches!(cluster.peer("n2").await, Err(PeerError::Unreachable { .. })));
    to_n3.abort();
}
