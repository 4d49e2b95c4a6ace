//! Membership from a real etcd (Debian's etcd-server, started by scripts/etcd.sh): nodes
//! register under leases, see each other, drop a node whose lease expires (SIGSTOP past the
//! TTL, kill -9) and take it back when it returns. Placement follows the live members. The
//! fault test runs the three nodes as separate hosts (network namespaces joined by veth,
//! where it may make them; loopback otherwise) and writes checkpoints through kill -9 of a
//! primary and of a replica, a SIGSTOP past the lease, a partition of one host (its veth
//! taken down) and a real Azurite stopped mid-run: no acknowledged byte lost, two copies of
//! every manifest again, every file in Blob.

mod common;

use std::time::{Duration, Instant};

use common::{
    IDS, Node, block_owners, data,
    etcd::{TTL_S, members, start_nodes, start_nodes_on, wait_for_members},
    free_port, key, path_owners, wait_until,
};
use kvtier_blockmgr::{Durability, GetItem, PutItem};
use kvtier_testkit::{Etcd, Hosts};

#[tokio::test(flavor = "multi_thread")]
async fn members_come_and_go_with_their_leases_and_writes_follow_the_live_ones() {
    let etcd = Etcd::start();
    let mut nodes = start_nodes(&etcd, |_| String::new());
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(10));
    }
    let writer = nodes[0].client().await;
    let before: Vec<PutItem> = (0..24).map(|i| PutItem::new(key(i), data(i, 40_000))).collect();
    for r in writer.put("ckpt/run1", &before, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }

    // n3 stops past its lease: the others drop it, and W = R = 2 puts go to the two left.
    nodes[2].signal(libc::SIGSTOP);
    wait_for_members(&nodes[0], 2, Duration::from_secs(3 * TTL_S));
    let during: Vec<PutItem> = (100..124).map(|i| PutItem::new(key(i), data(i, 40_000))).collect();
    for r in writer.put("ckpt/run1", &during, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "with n3 out, n1 and n2 own everything: {:?}", r.result);
    }
    // KV blocks keep one copy: those n3 owns once it is back are held meanwhile by n1 or n2.
    let kv: Vec<PutItem> = (200..400)
        .filter(|&i| block_owners(&IDS, "kv/llama", &key(i), 1)[0] == "n3")
        .take(6)
        .map(|i| PutItem::new(key(i), data(i, 30_000)))
        .collect();
    for r in writer.put("kv/llama", &kv, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    // Back: its renewal finds the lease gone, it registers again, everyone sees 3.
    nodes[2].signal(libc::SIGCONT);
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(3 * TTL_S));
    }
    // The blocks held for n3 while it was out are handed back to it (its one copy).
    let n3 = kvtier_blockmgr::Client::connect(&nodes[2].addrs.grpc).await.unwrap().as_peer("n1").unwrap();
    let started = Instant::now();
    for item in &kv {
        while !matches!(n3.get("kv/llama", std::slice::from_ref(&item.key)).await.unwrap()[0], GetItem::Hit { .. }) {
            assert!(started.elapsed() < Duration::from_secs(15), "n3 never got back {:?}", item.key);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // kill -9 of n2: out after its TTL; every acknowledged block still reads from n1.
    nodes[1].kill9();
    wait_for_members(&nodes[0], 2, Duration::from_secs(3 * TTL_S));
    let keys: Vec<Vec<u8>> = before.iter().chain(&during).map(|i| i.key.clone()).collect();
    let got = writer.get("ckpt/run1", &keys).await.unwrap();
    for (item, got) in before.iter().chain(&during).zip(got) {
        assert!(matches!(&got, GetItem::Hit { data, .. } if *data == item.data), "{got:?}");
    }
    let stderr = nodes[2].stderr();
    assert!(stderr.contains("registering again"), "n3 noticed it was out: {stderr}");

    // n2 is gone for good: n1 and n3 own every key now, and resync brings each to 2 copies.
    let started = Instant::now();
    for k in &keys {
        loop {
            let mut copies = 0;
            for node in [&nodes[0], &nodes[2]] {
                let peer = kvtier_blockmgr::Client::connect(&node.addrs.grpc).await.unwrap().as_peer("n1").unwrap();
                copies += usize::from(matches!(
                    peer.get("ckpt/run1", std::slice::from_ref(k)).await.unwrap()[0],
                    GetItem::Hit { .. }
                ));
            }
            if copies == 2 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "{k:?} has {copies} copies");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn write_back_blocks_reach_blob_once_and_a_replica_takes_over_a_dead_primarys_flush() {
    let etcd = Etcd::start();
    // Each flush waits up to 2 s for a full segment: time to kill a primary before it flushes.
    let mut nodes = start_nodes(&etcd, |_| "[blob]\nflush_linger = \"2s\"\n".into());
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(10));
    }
    let writer = nodes[0].client().await;
    let flushed =
        |nodes: &[Node], alive: &[usize]| alive.iter().map(|&i| nodes[i].metric("flushed_blocks_total")).sum::<u64>();

    // Two copies each, one flush each: Blob gets every byte once, and the replicas' copies
    // are released once the primary says it flushed them.
    let items: Vec<PutItem> = (0..20).map(|i| PutItem::new(key(i), data(i, 30_000))).collect();
    for r in writer.put("ckpt/run1", &items, Durability::WriteBack).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    // Once no node holds an unflushed byte, no flush is left to come.
    wait_until("20 flushes", Duration::from_secs(15), || flushed(&nodes, &[0, 1, 2]) >= 20);
    wait_until("replicas released", Duration::from_secs(10), || nodes.iter().all(|n| n.metric("unflushed_bytes") == 0));
    assert_eq!(flushed(&nodes, &[0, 1, 2]), 20, "each block flushed once, by its primary");

    // Blocks whose primary is n2, acknowledged, then n2 killed before its flush: once its
    // lease expires, the surviving owners take the flush over, still once per block.
    let doomed: Vec<PutItem> = (1000..1200)
        .filter(|&i| block_owners(&IDS, "ckpt/run1", &key(i), 2)[0] == "n2")
        .take(10)
        .map(|i| PutItem::new(key(i), data(i, 30_000)))
        .collect();
    let before = flushed(&nodes, &[0, 2]);
    for r in writer.put("ckpt/run1", &doomed, Durability::WriteBack).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    nodes[1].kill9();
    wait_until("the take-over flushes", Duration::from_secs(6 * TTL_S), || flushed(&nodes, &[0, 2]) >= before + 10);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(flushed(&nodes, &[0, 2]), before + 10, "each of the dead primary's blocks flushed once");
    wait_until("nothing left unflushed", Duration::from_secs(10), || {
        [0, 2].iter().all(|&i| nodes[i].metric("unflushed_bytes") == 0)
    });
}

/// Writes `data` as `path` (write-back: a checkpoint lands in Blob) through the live nodes
/// in turn until one acknowledges it (as a checkpointing rank retries); whether one did.
/// (With `local_disk`, SSD pressure on these small nodes drops chunks: such copies are a
/// cache that survives restarts, not a store.)
async fn write_checkpoint(nodes: &[Node], alive: &[usize], path: &str, data: &bytes::Bytes) -> bool {
    for attempt in 0..40 {
        let node = &nodes[alive[attempt % alive.len()]];
        let Ok(client) = kvtier_blockmgr::Client::connect(&node.addrs.grpc).await else { continue };
        let body = futures::stream::iter([data.clone()]);
        match client.put_object("ckpt/run1", path, body, Durability::WriteBack, Some(data.len() as u64), None).await {
            Ok(_) => return true,
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_survive_kill_9_a_stop_past_the_lease_a_partition_and_a_blob_outage() {
    // Three hosts (network namespaces where this test may make them), etcd and Blob (a
    // real Azurite: each node its own segments, one shared place for the files) on the
    // network they share.
    let hosts = Hosts::new(IDS.len());
    let etcd = Etcd::start_on(&hosts.services());
    let mut azurite = kvtier_testkit::Azurite::start_on(&hosts.services());
    let options: String = azurite.options().iter().map(|(k, v)| format!("{k} = \"{v}\"\n")).collect();
    let mut nodes = start_nodes_on(&hosts, &etcd, |id| {
        format!(
            "[blob]\nurl = \"az://kvtier/nodes/{id}\"\nobjects_url = \"az://kvtier/objects\"\nretries = 1\n\
             retry_timeout = \"1s\"\n[blob.options]\n{options}"
        )
    });
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(10));
    }
    let mut acked: Vec<(String, bytes::Bytes)> = Vec::new();
    let mut faults = 0;
    let mut n = 0u64;
    let mut write_round = async |nodes: &[Node], alive: &[usize], acked: &mut Vec<(String, bytes::Bytes)>| {
        for _ in 0..4 {
            n += 1;
            let (path, body) = (format!("step-{n}/rank-0.distcp"), data(n, 1_200_000));
            if write_checkpoint(nodes, alive, &path, &body).await {
                acked.push((path, body));
            }
        }
    };
    write_round(&nodes, &[0, 1, 2], &mut acked).await;

    // 1. kill -9 of the primary of the next path, mid-run; it comes back after its lease.
    let primary = path_owners(&IDS, "ckpt/run1", "step-5/rank-0.distcp")[0];
    let p = IDS.iter().position(|id| *id == primary).unwrap();
    nodes[p].kill9();
    faults += 1;
    let alive: Vec<usize> = (0..3).filter(|&i| i != p).collect();
    write_round(&nodes, &alive, &mut acked).await;
    nodes[p].restart();
    // 2. kill -9 of a replica (the second owner of the next path).
    let replica = path_owners(&IDS, "ckpt/run1", "step-9/rank-0.distcp")[1];
    let r = IDS.iter().position(|id| *id == replica).unwrap();
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(4 * TTL_S));
    }
    nodes[r].kill9();
    faults += 1;
    let alive: Vec<usize> = (0..3).filter(|&i| i != r).collect();
    write_round(&nodes, &alive, &mut acked).await;
    nodes[r].restart();
    // 3. SIGSTOP of a node for twice its lease while the others take writes.
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(4 * TTL_S));
    }
    nodes[2].signal(libc::SIGSTOP);
    faults += 1;
    write_round(&nodes, &[0, 1], &mut acked).await;
    tokio::time::sleep(Duration::from_secs(2 * TTL_S)).await;
    nodes[2].signal(libc::SIGCONT);
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(4 * TTL_S));
    }
    write_round(&nodes, &[0, 1, 2], &mut acked).await;
    // 4. A partition: n1 cut off from the other nodes, etcd and Blob for twice its lease
    // while the others take writes (packets vanish: its peers' requests time out until its
    // lease expires); reconnected, it registers again and resyncs.
    if hosts.separate() {
        hosts.cut(0);
        faults += 1;
        write_round(&nodes, &[1, 2], &mut acked).await;
        tokio::time::sleep(Duration::from_secs(2 * TTL_S)).await;
        hosts.heal(0);
        for node in &nodes {
            wait_for_members(node, 3, Duration::from_secs(6 * TTL_S));
        }
        write_round(&nodes, &[0, 1, 2], &mut acked).await;
    } else {
        println!("no partition: the hosts share loopback (no network namespaces here)");
    }
    // 5. Azurite stopped mid-run: write-back puts are still acknowledged into the nodes'
    // SSDs, the exports and flushes retry with backoff, and all of it reaches Blob after.
    azurite.stop();
    faults += 1;
    write_round(&nodes, &[0, 1, 2], &mut acked).await;
    azurite.resume();
    let written = n as usize;
    assert!(acked.len() * 6 >= written * 5, "the writers got through: {} of {written} acknowledged", acked.len());

    // Every acknowledged checkpoint reads back byte-exact from every node.
    tokio::time::sleep(Duration::from_secs(2)).await; // resync after the last change
    let mut lost = 0u64;
    for node in &nodes {
        let client = node.client().await;
        for (path, body) in &acked {
            let got = client.read_object("ckpt/run1", path, kvtier_blockmgr::ObjectRange::all()).await;
            if got.as_ref().ok() != Some(body) {
                eprintln!("{}: {path}: {:?}", node.addrs.grpc, got.map(|b| b.len()));
                lost += body.len() as u64;
            }
        }
    }
    // Both owners of every path keep its current manifest again: R = 2 copies restored
    // (resync pulls what an owner missed while it was away).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut short: Vec<&str>;
    loop {
        short = Vec::new();
        for (path, _) in &acked {
            let mut generations = Vec::new();
            for owner in path_owners(&IDS, "ckpt/run1", path) {
                let node = &nodes[IDS.iter().position(|id| *id == owner).unwrap()];
                let manifest = common::manifest_on(node, "ckpt/run1", path).await;
                generations.push(manifest.and_then(|m| m["generation"].as_u64()));
            }
            if generations[0].is_none() || generations.iter().any(|g| *g != generations[0]) {
                short.push(path);
            }
        }
        if short.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for path in &short {
        eprintln!("fewer than 2 owners keep {path}'s current manifest");
    }
    // And every one of them reaches Blob under its name, byte-exact, once Blob is back
    // (the exports retry with backoff while it is down).
    let files = kvtier_tiers::ObjectBlobs::open("az://kvtier/objects", &azurite.options(), Default::default()).unwrap();
    let ns = kvtier_tiers::Namespace::new("ckpt/run1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<&str>;
    loop {
        missing = Vec::new();
        for (path, body) in &acked {
            let file = files.read(&files.name(&ns, path), 0..body.len() as u64).await.unwrap();
            if file.as_ref() != Some(body) {
                missing.push(path);
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let missing_in_blob = missing.len();
    for path in &missing {
        eprintln!("not in Blob: {path} (owners {:?})", path_owners(&IDS, "ckpt/run1", path));
    }
    if !missing.is_empty() {
        for (id, node) in IDS.iter().zip(&nodes) {
            let log = node.stderr();
            let said: Vec<&str> = log.lines().filter(|l| l.contains("export") || l.contains("WARN")).collect();
            eprintln!("--- {id} ({} lines), its warnings and exports:\n{}", log.lines().count(), said.join("\n"));
        }
    }
    let exported: u64 = nodes.iter().map(|n| n.metric("objects_exported_total")).sum();
    println!(
        "faults injected: {faults}; acknowledged checkpoints: {} of {written}; acknowledged bytes lost: {lost}; \
         paths short of 2 copies: {}; files in Blob: {} of {}; exports: {exported} (a version exported again \
         after its primary died counts twice)",
        acked.len(),
        short.len(),
        acked.len() - missing_in_blob,
        acked.len()
    );
    assert_eq!((lost, short.len(), missing_in_blob), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_view_lags_etcd_reads_it_again_before_refusing_a_peer() {
    use kvtier_proto::etcd::etcdserverpb::{PutRequest, kv_client::KvClient};
    // n3 reaches etcd through a proxy the test can cut: its watch then breaks, and until it
    // reconnects its view misses whoever registers meanwhile (as every view lags a node that
    // has just registered: restarted, or back from a stop past its lease).
    let etcd = Etcd::start();
    let proxy = kvtier_testkit::FaultProxy::start(etcd.endpoint.trim_start_matches("http://"));
    let tables = format!(
        "[cluster]\nnode_id = \"n3\"\netcd = [\"http://{}\"]\netcd_prefix = \"/test\"\nlease_ttl = \"{TTL_S}s\"\n",
        proxy.addr
    );
    let n3 = Node::start_on_port(free_port(), &tables);
    wait_for_members(&n3, 1, Duration::from_secs(10));
    proxy.fail(503, 0); // cuts every connection through it
    // n9 registers (straight with etcd) while n3 is reconnecting, and asks n3 at once.
    let mut kv = KvClient::connect(etcd.endpoint.clone()).await.unwrap();
    let put = PutRequest { key: b"/test/members/n9".to_vec(), value: b"127.0.0.1:9".to_vec(), ..Default::default() };
    kv.put(put).await.unwrap();
    let n9 = kvtier_blockmgr::Client::connect(&n3.addrs.grpc).await.unwrap().as_peer("n9").unwrap();
    let got = n9.get("ckpt/run1", &[key(1)]).await;
    // Served (a miss: n3 has no such block), not refused as "not a member" (it once was, for
    // seconds: 26 failed writes in one fault run).
    assert!(matches!(got.as_deref(), Ok([GetItem::Miss { .. }])), "{got:?}");
    assert_eq!(members(&n3), 2, "the view read again lists n9");
}

/// A node stopped with SIGTERM revokes its lease on the way out: the others see it leave at
/// once, not when its lease (two minutes here) runs out, and stop sending it copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_gracefully_leaves_the_member_list_at_once() {
    const LEASE_S: u64 = 120;
    let etcd = Etcd::start();
    let mut nodes: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|id| {
            let tables = format!(
                "[cluster]\nnode_id = \"{id}\"\netcd = [\"{}\"]\netcd_prefix = \"/graceful\"\nlease_ttl = \"{LEASE_S}s\"\n",
                etcd.endpoint
            );
            Node::start_on_port(free_port(), &tables)
        })
        .collect();
    for node in &nodes {
        wait_for_members(node, 2, Duration::from_secs(10));
    }
    let status = nodes[1].terminate();
    assert!(status.success(), "{status:?}: {}", nodes[1].stderr());
    assert!(nodes[1].stderr().contains("lease revoked"), "{}", nodes[1].stderr());
    // (A quarter of the lease: without the revoke it would still be listed.)
    wait_for_members(&nodes[0], 1, Duration::from_secs(LEASE_S / 4));
}
