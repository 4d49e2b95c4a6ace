//! The checks after a round's faults: the settle (members whole, nothing waiting for Blob,
//! every acknowledged file in Blob under its name), then every acknowledged file read back
//! byte-exact from every node and from a node whose disk was wiped, every failed write
//! absent, every write of unknown outcome absent or whole.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use kvtier_blockmgr::{Client, ObjectRange};
use kvtier_tiers::{Namespace, ObjectBlobs, Retries};

use super::{
    cluster::Cluster,
    writers::{Outcome, Written, content},
};

/// What the checks found.
#[derive(Debug, Default, Clone)]
pub(super) struct Findings {
    /// Seconds from the end of the faults until everything was settled (`None`: not
    /// within the hard limit).
    pub(super) settle_s: Option<f64>,
    /// Acknowledged files some node could not read (an error, or missing).
    pub(super) lost: Vec<String>,
    /// Acknowledged files some node returned other bytes for.
    pub(super) corrupted: Vec<String>,
    /// Acknowledged files not in Blob (or other bytes there) after the settle.
    pub(super) missing_in_blob: Vec<String>,
    /// Writes said to have failed that are there all the same.
    pub(super) failed_but_present: Vec<String>,
    /// Writes of unknown outcome: landed whole, absent, or other bytes (never allowed).
    pub(super) unknown_landed: usize,
    pub(super) unknown_absent: usize,
    pub(super) unknown_corrupted: Vec<String>,
    /// Bytes still waiting for Blob across the nodes at the end of the settle.
    pub(super) unflushed_bytes: f64,
    /// Files deleted in an earlier round that some node or Blob has again.
    pub(super) resurrected: Vec<String>,
}

/// Waits for the settle (at most `limit`), then checks everything in `written`; node
/// `wipe` is wiped and must read everything back too; and none of `deleted` (files deleted
/// after earlier rounds) may be found on any node or in Blob.
pub(super) async fn check(
    cluster: &Arc<Cluster>,
    written: &[Written],
    deleted: &[Written],
    wipe: usize,
    limit: Duration,
) -> Result<Findings> {
    let mut f = Findings::default();
    let started = Instant::now();
    let blobs = {
        let options = cluster.azurite.lock().options();
        ObjectBlobs::open("az://kvtier/objects", &options, Retries::default())?
    };
    let acked: Vec<&Written> = written.iter().filter(|w| w.outcome == Outcome::Acked).collect();
    let mut not_in_blob: Vec<&Written> = acked.clone();
    loop {
        let whole = {
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.whole()).await?
        };
        let (unflushed, queued) = {
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || {
                let n = c.len();
                let sum = |name: &str| (0..n).map(|i| c.metric(i, name)).sum::<f64>();
                (sum("unflushed_bytes"), sum("exports_queued"))
            })
            .await?
        };
        f.unflushed_bytes = unflushed;
        if whole && unflushed == 0.0 && queued == 0.0 {
            let mut still = Vec::new();
            for w in not_in_blob {
                if !in_blob(&blobs, w).await {
                    still.push(w);
                }
            }
            not_in_blob = still;
            if not_in_blob.is_empty() {
                f.settle_s = Some(started.elapsed().as_secs_f64());
                break;
            }
        }
        if started.elapsed() > limit {
            // Not settled: say what is in Blob all the same.
            let mut still = Vec::new();
            for w in not_in_blob {
                if !in_blob(&blobs, w).await {
                    still.push(w);
                }
            }
            not_in_blob = still;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    f.missing_in_blob = not_in_blob.iter().map(|w| w.name.clone()).collect();

    // Every acknowledged file from every node.
    let n = cluster.len();
    for i in 0..n {
        read_all(cluster, i, &acked, &mut f).await;
    }
    // The others: failed writes absent, unknown ones absent or whole.
    let client = client(cluster, 0).await?;
    for w in written.iter().filter(|w| w.outcome != Outcome::Acked) {
        let (ns, path) = w.door.object(&w.name);
        let got = client.read_object(ns, &path, ObjectRange::all()).await;
        let present = got.as_ref().is_ok();
        let whole = got.as_ref().is_ok_and(|b| b[..] == content(w.seed, w.size as usize)[..]);
        match w.outcome {
            Outcome::Failed if present => f.failed_but_present.push(w.name.clone()),
            Outcome::Unknown if whole => f.unknown_landed += 1,
            Outcome::Unknown if present => f.unknown_corrupted.push(w.name.clone()),
            Outcome::Unknown => f.unknown_absent += 1,
            _ => {}
        }
    }
    // A node whose disk is wiped reads everything back (from its peers and Blob).
    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            c.kill9(wipe);
            c.wipe(wipe)?;
            c.spawn(wipe)?;
            c.wait_whole(Duration::from_secs(60))
        })
        .await??;
    }
    read_all(cluster, wipe, &acked, &mut f).await;
    f.resurrected = resurrected(cluster, &blobs, deleted).await;
    Ok(f)
}

/// After the last round's deletes: waits for the settle (at most `limit`), then which of
/// `deleted` came back anywhere.
pub(super) async fn check_deleted(cluster: &Arc<Cluster>, deleted: &[Written], limit: Duration) -> Result<Vec<String>> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let c = cluster.clone();
        let settled = tokio::task::spawn_blocking(move || {
            let sum = |name: &str| (0..c.len()).map(|i| c.metric(i, name)).sum::<f64>();
            c.whole() && sum("unflushed_bytes") == 0.0 && sum("exports_queued") == 0.0
        })
        .await?;
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let options = cluster.azurite.lock().options();
    let blobs = ObjectBlobs::open("az://kvtier/objects", &options, Retries::default())?;
    Ok(resurrected(cluster, &blobs, deleted).await)
}

/// Which of `deleted` some node stats or lists, or Blob has a file of.
async fn resurrected(cluster: &Cluster, blobs: &ObjectBlobs, deleted: &[Written]) -> Vec<String> {
    let mut back = Vec::new();
    for i in 0..cluster.len() {
        let Ok(client) = client(cluster, i).await else {
            back.push(format!("(node {} unreachable: the deleted files not checked there)", i + 1));
            continue;
        };
        for w in deleted {
            let (ns, path) = w.door.object(&w.name);
            match client.stat_object(ns, &path).await {
                Ok(None) => {}
                Ok(Some(info)) => back.push(format!("{} on node {} (generation {})", w.name, i + 1, info.generation)),
                Err(e) => back.push(format!("{} on node {}: {e}", w.name, i + 1)),
            }
        }
        let mut listed = Vec::new();
        for door in super::writers::Door::all() {
            let ns = door.object("").0;
            match client.list_objects(ns, "").await {
                Ok(objects) => listed.extend(objects.into_iter().map(|o| (ns, o.path))),
                Err(e) => back.push(format!("(listing {ns} on node {}: {e})", i + 1)),
            }
        }
        for w in deleted {
            let (ns, path) = w.door.object(&w.name);
            if listed.iter().any(|(n, p)| *n == ns && *p == path) {
                back.push(format!("{} listed by node {}", w.name, i + 1));
            }
        }
    }
    for w in deleted {
        let (ns, path) = w.door.object(&w.name);
        let Ok(ns) = Namespace::new(ns) else { continue };
        if let Ok(Some(_)) = blobs.size(&blobs.name(&ns, &path)).await {
            back.push(format!("{} in Blob", w.name));
        }
    }
    // The evidence for a file back (printed, not counted): which version each node's own
    // catalog keeps of it.
    let found: Vec<&Written> =
        deleted.iter().filter(|w| back.iter().any(|b| b.starts_with(&format!("{} ", w.name)))).collect();
    for w in found {
        let (ns, path) = w.door.object(&w.name);
        for i in 0..cluster.len() {
            eprintln!("chaos:   {} kept by node {}: {}", w.name, i + 1, kept(cluster, i, ns, &path).await);
        }
    }
    back
}

/// The version node `i`'s own catalog keeps of `path` (asked as a member, so it answers from
/// its catalog alone): its generation and whether it is a delete marker, or none.
async fn kept(cluster: &Cluster, i: usize, ns: &str, path: &str) -> String {
    use kvtier_proto::peer::v1::peer_client::PeerClient;
    let addr = cluster.nodes.lock()[i].grpc.clone();
    let Ok(mut peer) = PeerClient::connect(format!("http://{addr}")).await else { return "unreachable".into() };
    let mut request = tonic::Request::new(kvtier_proto::v1::ObjectRef { namespace: ns.into(), path: path.into() });
    let me = format!("n{}", i + 1).parse().expect("ascii");
    request.metadata_mut().insert(kvtier_client::PEER_HEADER, me);
    match peer.stat_object(request).await {
        Err(e) => format!("error: {}", e.message()),
        Ok(r) if r.get_ref().json.is_empty() => "none".into(),
        Ok(r) => match serde_json::from_slice::<serde_json::Value>(&r.get_ref().json) {
            Ok(m) => format!(
                "generation {}{}",
                m["generation"],
                if m["deleted"] == true { " (a delete marker)" } else { "" }
            ),
            Err(e) => format!("a manifest that does not parse: {e}"),
        },
    }
}

async fn client(cluster: &Cluster, i: usize) -> Result<Client> {
    let addr = cluster.nodes.lock()[i].grpc.clone();
    Ok(Client::connect(&addr).await?)
}

/// Reads every file of `acked` from node `i`, noting what is lost or corrupted.
async fn read_all(cluster: &Cluster, i: usize, acked: &[&Written], f: &mut Findings) {
    let client = match client(cluster, i).await {
        Ok(c) => c,
        Err(e) => {
            f.lost.extend(acked.iter().map(|w| format!("{} (node {} unreachable: {e})", w.name, i + 1)));
            return;
        }
    };
    for w in acked {
        let (ns, path) = w.door.object(&w.name);
        match client.read_object(ns, &path, ObjectRange::all()).await {
            Ok(got) if got[..] == content(w.seed, w.size as usize)[..] => {}
            Ok(got) => f.corrupted.push(format!("{} from node {} ({} bytes)", w.name, i + 1, got.len())),
            Err(e) => f.lost.push(format!("{} from node {}: {e}", w.name, i + 1)),
        }
    }
}

/// Whether Blob holds `w`'s bytes under its object's name.
async fn in_blob(blobs: &ObjectBlobs, w: &Written) -> bool {
    let (ns, path) = w.door.object(&w.name);
    let Ok(ns) = Namespace::new(ns) else { return false };
    match blobs.read(&blobs.name(&ns, &path), 0..w.size).await {
        Ok(Some(bytes)) => bytes.len() as u64 == w.size && bytes[..] == content(w.seed, w.size as usize)[..],
        // An empty object: a GET of range 0..0 of it.
        Ok(None) | Err(_) => false,
    }
}
