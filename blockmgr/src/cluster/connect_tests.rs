//! Connections to members: one member slow to connect holds up no other.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::{Cluster, Dialer, PeerError};
use crate::{Config, Metrics};

/// Three members as n1 sees them: n3's connect never completes (a partition dropping its
/// SYNs), n2 refuses at once. Answers the cluster, what wakes when n3 is being dialled, and
/// how many times n2 was.
fn cluster(retry_down_after: Duration) -> (Arc<Cluster>, Arc<tokio::sync::Notify>, Arc<AtomicUsize>) {
    let mut config = Config::default();
    config.cluster.node_id = "n1".into();
    config.cluster.members = ["n1", "n2", "n3"].iter().map(|id| format!("{id}=sim:{id}")).collect();
    config.cluster.peer_timeout = Duration::from_secs(600);
    config.cluster.retry_down_after = retry_down_after;
    let (dialing_n3, dials_n2) = (Arc::new(tokio::sync::Notify::new()), Arc::new(AtomicUsize::new(0)));
    let (dialing, dials) = (dialing_n3.clone(), dials_n2.clone());
    let dialer: Dialer = Arc::new(move |addr: &str| {
        let (addr, dialing, dials) = (addr.to_string(), dialing.clone(), dials.clone());
        Box::pin(async move {
            if addr == "sim:n3" {
                dialing.notify_one();
                std::future::pending::<()>().await;
            }
            dials.fetch_add(1, Ordering::SeqCst);
            // An address no endpoint parses: the client's own error for a failed connect.
            crate::Client::connect("not a url at all").await
        })
    });
    let cluster = Cluster::from_config(&config, Metrics::new(), Some(dialer)).unwrap().expect("three members");
    (cluster, dialing_n3, dials_n2)
}

/// A request to n2 made while n3's connect is under way answers without waiting for it (the
/// one lock over every member's connection once made it wait out the peer timeout).
#[tokio::test]
async fn a_member_slow_to_connect_holds_up_no_other() {
    let (cluster, dialing_n3, dials_n2) = cluster(Duration::from_secs(600));

    let to_n3 = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.peer("n3").await.map(|_| ()) }
    });
    dialing_n3.notified().await;
    let to_n2 = cluster.peer("n2").await;
    assert!(matches!(to_n2, Err(PeerError::Unreachable { ref member, .. }) if member == "n2"), "{to_n2:?}");
    assert!(!to_n3.is_finished(), "n2 answered only once n3's connect ended");
    // n2 is now skipped for `retry_down_after`: a second request fails without dialling.
    assert!(matches!(cluster.peer("n2").await, Err(PeerError::Unreachable { .. })));
    assert_eq!(dials_n2.load(Ordering::SeqCst), 1);
    to_n3.abort();
}

/// With `cluster.retry_down_after = "0s"` a member that refused is dialled again at once.
#[tokio::test]
async fn retry_down_after_sets_how_long_a_refusing_member_is_skipped() {
    let (cluster, _, dials_n2) = cluster(Duration::ZERO);
    for _ in 0..3 {
        assert!(matches!(cluster.peer("n2").await, Err(PeerError::Unreachable { .. })));
    }
    assert_eq!(dials_n2.load(Ordering::SeqCst), 3);
}
