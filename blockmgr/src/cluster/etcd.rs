//! Membership from etcd. Each node grants itself a lease of `lease_ttl`, registers
//! `{etcd_prefix}/members/{node id}` = its gRPC address under it, renews it every third of
//! the TTL, and watches the prefix: every change re-reads the member list into the
//! cluster's view. A node that stops renewing (killed, stopped, cut off) drops out when its
//! lease expires; when it comes back its renewal finds the lease gone and it registers anew.
//! A node shut down gracefully revokes its lease: it leaves the list at once.
//!
//! etcd does the agreeing; this is only its client. The etcd v3 API is compiled from its
//! protos by kvtier-proto (no system `protoc`).

use std::{sync::Arc, time::Duration};

use kvtier_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest, kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use tokio::sync::{mpsc, oneshot};

/// How long a request from an unknown member waits for the member list to be read again
/// (well under a peer timeout: the asker must get its refusal, not a timeout).
const REFRESH_WAIT: Duration = Duration::from_secs(2);
/// Reads of the member list asked by unknown members are at least this far apart (anyone
/// can send a request naming a member: it must not make this node hammer etcd).
const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// Pause before registering again after this node found itself out of the member list.
const REREGISTER: Duration = Duration::from_millis(100);

/// A way to ask the etcd session to read the member list now (see [`Cluster::is_member_now`]).
#[derive(Debug, Clone)]
pub(crate) struct Refresh {
    ask: mpsc::Sender<oneshot::Sender<()>>,
    last: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

impl Refresh {
    /// Asks for a fresh read of the member list and waits for it (at most [`REFRESH_WAIT`]:
    /// etcd may be out of reach); nothing when one was read less than [`REFRESH_EVERY`] ago.
    pub(crate) async fn now(&self) {
        {
            let mut last = self.last.lock();
            if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let (done, read) = oneshot::channel();
        let _ = tokio::time::timeout(REFRESH_WAIT, async {
            if self.ask.send(done).await.is_ok() {
                let _ = read.await;
            }
        })
        .await;
    }
}
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::Cluster;
use crate::{config::ClusterConfig, tasks::Tasks};

/// Pause before reconnecting after etcd failed us.
const RETRY: Duration = Duration::from_secs(1);
/// How long a shutdown waits for etcd to revoke this node's lease.
const REVOKE_WAIT: Duration = Duration::from_secs(2);

struct Etcd {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
}

/// What a session needs to know.
struct Registration {
    endpoints: Vec<String>,
    prefix: Vec<u8>,
    key: Vec<u8>,
    address: String,
    ttl: Duration,
}

/// Starts keeping `cluster`'s view from etcd, registering this node at `address`; waits
/// until the first member list is in (or `lease_ttl`, then goes on alone and keeps trying).
/// At shutdown (`tasks`) it revokes its lease and ends.
pub(crate) async fn join(cluster: Arc<Cluster>, config: &ClusterConfig, address: String, tasks: &Tasks) {
    let prefix = format!("{}/members/", config.etcd_prefix.trim_end_matches('/')).into_bytes();
    let key = [prefix.as_slice(), cluster.local_id().as_bytes()].concat();
    let reg = Registration { endpoints: config.etcd.clone(), prefix, key, address, ttl: config.lease_ttl };
    let (ready_tx, ready_rx) = oneshot::channel();
    let (refresh_tx, mut refreshes) = mpsc::channel(64);
    *cluster.refresh.lock() = Some(Refresh { ask: refresh_tx, last: Arc::default() });
    let stop = tasks.clone();
    tasks.spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            let end = session(&cluster, &reg, &mut ready, &mut refreshes, &stop).await;
            if stop.stopping() {
                return;
            }
            cluster.mark_rejoined();
            match end {
                // Out of the member list: register again at once (its peers refuse it
                // until then).
                SessionEnd::Out(why) => {
                    tracing::warn!(%why, "etcd membership: registering again");
                    stop.pause(REREGISTER).await;
                }
                SessionEnd::Failed(e) => {
                    tracing::warn!(error = %e, "etcd membership: reconnecting");
                    stop.pause(RETRY).await;
                }
                SessionEnd::Stopped => return,
            }
        }
    });
    if tokio::time::timeout(config.lease_ttl, ready_rx).await.is_err() {
        tracing::warn!(endpoints = ?config.etcd, "etcd membership: no member list yet; serving alone until etcd answers");
    }
}

async fn connect(endpoints: &[String]) -> Result<Etcd, String> {
    let mut failures = Vec::new();
    for url in endpoints {
        let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| format!("{url}: {e}"))?;
        match endpoint.connect_timeout(Duration::from_secs(2)).connect().await {
            Ok(ch) => {
                return Ok(Etcd {
                    kv: KvClient::new(ch.clone()),
                    lease: LeaseClient::new(ch.clone()),
                    watch: WatchClient::new(ch),
                });
            }
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    Err(format!("no etcd endpoint answered ({})", failures.join("; ")))
}

/// The end of the key range of everything under `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    end
}

/// Reads the member list into the view; returns the revision it was read at.
async fn refresh(etcd: &mut Etcd, cluster: &Cluster, prefix: &[u8]) -> Result<i64, String> {
    let req = RangeRequest { key: prefix.to_vec(), range_end: range_end(prefix), ..Default::default() };
    let resp = etcd.kv.range(req).await.map_err(|e| format!("listing members: {e}"))?.into_inner();
    let members: Vec<(String, String)> = resp
        .kvs
        .into_iter()
        .map(|kv| {
            let id = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            (id, String::from_utf8_lossy(&kv.value).into_owned())
        })
        .collect();
    let before = cluster.view();
    if members.len() != before.addrs.len() || members.iter().any(|(id, a)| before.addrs.get(id) != Some(a)) {
        let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
        tracing::info!(members = ?ids, "etcd membership: the member list changed");
    }
    cluster.set_members(members);
    Ok(resp.header.map_or(0, |h| h.revision))
}

/// Why a session ended.
enum SessionEnd {
    /// This node's lease or key is gone: it is out of the member list.
    Out(String),
    /// etcd failed us.
    Failed(String),
    /// The node is shutting down (its lease revoked, if etcd answered).
    Stopped,
}

impl From<String> for SessionEnd {
    fn from(e: String) -> Self {
        SessionEnd::Failed(e)
    }
}

impl From<&str> for SessionEnd {
    fn from(e: &str) -> Self {
        SessionEnd::Failed(e.to_string())
    }
}

/// One registration: lease, key, renewals and watch, until something fails or shutdown; the
/// member list is also read again whenever `refreshes` asks.
async fn session(
    cluster: &Cluster,
    reg: &Registration,
    ready: &mut Option<oneshot::Sender<()>>,
    refreshes: &mut mpsc::Receiver<oneshot::Sender<()>>,
    stop: &Tasks,
) -> SessionEnd {
    let mut granted = None;
    let Some(Err(end)) = stop.unless_stopped(registered(cluster, reg, ready, refreshes, &mut granted)).await else {
        // Shutting down: leave the member list now rather than when the lease runs out.
        if let Some((mut leases, id)) = granted {
            match tokio::time::timeout(REVOKE_WAIT, leases.lease_revoke(LeaseRevokeRequest { id })).await {
                Ok(Ok(_)) => {
                    tracing::info!(node = cluster.local_id(), lease = id, "etcd membership: left (lease revoked)")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "etcd membership: revoking the lease failed; it runs out"),
                Err(_) => tracing::warn!("etcd membership: etcd did not answer the revoke; the lease runs out"),
            }
        }
        return SessionEnd::Stopped;
    };
    end
}

/// [`session`]'s work, until something fails; `granted` is the lease once there is one.
async fn registered(
    cluster: &Cluster,
    reg: &Registration,
    ready: &mut Option<oneshot::Sender<()>>,
    refreshes: &mut mpsc::Receiver<oneshot::Sender<()>>,
    granted: &mut Option<(LeaseClient<Channel>, i64)>,
) -> Result<std::convert::Infallible, SessionEnd> {
    let mut etcd = connect(&reg.endpoints).await?;
    let ttl = reg.ttl.as_secs().max(1) as i64;
    let lease = etcd.lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await.map_err(|e| format!("lease: {e}"))?;
    let lease = lease.into_inner().id;
    *granted = Some((etcd.lease.clone(), lease));
    let put = PutRequest { key: reg.key.clone(), value: reg.address.clone().into_bytes(), lease, ..Default::default() };
    etcd.kv.put(put).await.map_err(|e| format!("registering: {e}"))?;
    tracing::info!(node = cluster.local_id(), address = %reg.address, lease, "etcd membership: registered");

    let (renew_tx, renew_rx) = mpsc::channel(4);
    // etcd answers a stream's headers with its first response: a request must be waiting.
    renew_tx.send(LeaseKeepAliveRequest { id: lease }).await.expect("receiver held");
    let mut renewals = etcd
        .lease
        .lease_keep_alive(ReceiverStream::new(renew_rx))
        .await
        .map_err(|e| format!("renewing: {e}"))?
        .into_inner();
    let revision = refresh(&mut etcd, cluster, &reg.prefix).await?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    let (watch_tx, watch_rx) = mpsc::channel(1);
    let create = WatchCreateRequest {
        key: reg.prefix.clone(),
        range_end: range_end(&reg.prefix),
        start_revision: revision + 1,
        ..Default::default()
    };
    watch_tx
        .send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
        .await
        .expect("receiver held");
    let mut watch =
        etcd.watch.watch(ReceiverStream::new(watch_rx)).await.map_err(|e| format!("watching: {e}"))?.into_inner();

    let mut tick = tokio::time::interval(reg.ttl / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                renew_tx.send(LeaseKeepAliveRequest { id: lease }).await.map_err(|_| "the renewal stream closed")?;
            }
            renewed = renewals.message() => match renewed {
                Ok(Some(r)) if r.ttl > 0 => {}
                Ok(Some(_)) => return Err(SessionEnd::Out(format!("lease {lease} expired (this node was out)"))),
                Ok(None) => return Err("etcd ended the renewal stream".into()),
                Err(e) => return Err(format!("renewing: {e}").into()),
            },
            Some(asked) = refreshes.recv() => {
                refresh(&mut etcd, cluster, &reg.prefix).await?;
                // Everyone who asked meanwhile is answered by this one read.
                let _ = asked.send(());
                while let Ok(asked) = refreshes.try_recv() {
                    let _ = asked.send(());
                }
            }
            event = watch.message() => match event {
                Ok(Some(w)) if w.canceled => return Err(format!("etcd canceled the watch: {}", w.cancel_reason).into()),
                Ok(Some(w)) if !w.events.is_empty() => { refresh(&mut etcd, cluster, &reg.prefix).await?; }
                Ok(Some(_)) => {}
                Ok(None) => return Err("etcd ended the watch".into()),
                Err(e) => return Err(format!("watching: {e}").into()),
            },
        }
        // Our own key gone (an expiry another node saw first) without our renewal noticing.
        if !cluster.is_member(cluster.local_id()) {
            return Err(SessionEnd::Out("this node's key is gone".into()));
        }
    }
}
