//! Many nodes: who the members are, which of them own a key (rendezvous placement, see
//! [`placement`]), and the connections that carry copies between them.
//!
//! The manager routes puts, gets and deletes through here (manager/replicas.rs). A request
//! from a peer carries [`PEER_HEADER`](kvtier_client::PEER_HEADER) and is served from the
//! node's own tiers only, so a copy is never forwarded twice; it is refused unless the
//! sender is a member.

#[cfg(test)]
mod connect_tests;
mod error;
mod etcd;
pub mod placement;
mod read_replicas;
mod rpc;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use kvtier_proto::peer::v1 as peer;
use kvtier_tiers::{Block, BlockKey, Key, Namespace, TierKind};
use parking_lot::{Mutex, RwLock};

pub use self::{error::PeerError, placement::Placement};

/// What places `key` on members (its namespace and bytes; every generation of an object's
/// manifest alike): what [`Placement::owners`] takes.
pub fn placement_key(key: &BlockKey) -> Vec<u8> {
    crate::keys::placement_key(key)
}
pub(crate) use self::read_replicas::{ReadReplicas, ReadRoute};
use kvtier_client::MemberRead;

use crate::{
    Client, Durability, Error, GetItem, PutItem, config::Config, metrics::Metrics, tasks::Tasks, wire::Outcome,
};

/// How long a reader waits for a read replica before asking the owner instead.
const REPLICA_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How this node reaches a member, from the member's address: a client over TCP (with the
/// cluster's TLS) unless the node was built with another, as the cluster simulation of
/// `kvtier-bench sim` builds its nodes over an in-process network.
pub type Dialer =
    Arc<dyn Fn(&str) -> futures::future::BoxFuture<'static, Result<Client, kvtier_client::ClientError>> + Send + Sync>;

/// One member's connection, and the lock a connect to it holds.
type PeerSlot = Arc<tokio::sync::Mutex<Option<(String, Client)>>>;

/// The members as this node sees them now.
#[derive(Debug, Default)]
pub struct View {
    /// Placement over the members.
    pub placement: Placement,
    /// Each member's gRPC address.
    pub addrs: HashMap<String, String>,
    /// How many times the member list had changed when this view was made.
    pub epoch: u64,
}

/// Where one block's copies go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The owners, best first: the first is the primary.
    pub owners: Vec<String>,
    /// Copies to store before acknowledging.
    pub quorum: usize,
}

impl Plan {
    /// Whether `id` is one of the owners.
    pub fn owns(&self, id: &str) -> bool {
        self.owners.iter().any(|o| o == id)
    }
}

/// This node's membership and its connections to the others.
pub struct Cluster {
    local: String,
    view: RwLock<Arc<View>>,
    /// Bumped at every change of the member list (resync waits on it).
    changed: tokio::sync::watch::Sender<u64>,
    /// Open connections by member, with the address each was made to. Each member's slot
    /// has a lock of its own, held while connecting to it: callers of one member share its
    /// connect, and a member slow to connect (a partition drops its SYNs) holds up no other.
    peers: Mutex<HashMap<String, PeerSlot>>,
    /// Members whose last connection failed, until when they are skipped.
    down: Mutex<HashMap<String, Instant>>,
    /// TLS to the other members (`[server.tls]` on): the cluster CA, this node's
    /// certificate as client identity, and each member's id as the name to verify.
    tls: Option<kvtier_client::ClientTls>,
    timeout: Duration,
    /// How long a member whose connection failed is skipped before it is tried again.
    retry_down_after: Duration,
    metrics: Metrics,
    /// Reads other members asked this node for, and the read replicas they made.
    pub(crate) reads: ReadReplicas,
    /// Connections made otherwise than by TCP (see [`Dialer`]).
    dialer: Option<Dialer>,
    /// This node was out of the member list (its etcd lease lapsed) and is back: what it
    /// missed meanwhile must be pulled, not only handed to it.
    rejoined: std::sync::atomic::AtomicBool,
    /// Wakes resync when this node comes back (its member list may not change: it kept
    /// the old one while cut off).
    rejoin: tokio::sync::Notify,
    /// Asks the etcd session to read the member list now (etcd membership only).
    refresh: Mutex<Option<etcd::Refresh>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("local", &self.local).field("members", &self.view().addrs).finish()
    }
}

impl Cluster {
    /// The cluster `config` describes, or `None` for a single node; members are dialled
    /// with `dialer`, else over TCP.
    pub fn from_config(
        config: &Config,
        metrics: Metrics,
        dialer: Option<Dialer>,
    ) -> Result<Option<Arc<Cluster>>, Error> {
        let mut members = config.cluster.static_members()?;
        if !config.cluster.etcd.is_empty() {
            // Alone until etcd lists the others (see etcd.rs).
            members = vec![(config.cluster.local_id(), config.cluster.advertised(&config.server.listen)?)];
        } else if members.is_empty() {
            return Ok(None);
        }
        let cluster = Cluster {
            local: config.cluster.local_id(),
            view: RwLock::new(Arc::default()),
            changed: tokio::sync::watch::Sender::new(0),
            peers: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            tls: peer_tls(&config.server.tls)?,
            timeout: config.cluster.peer_timeout,
            retry_down_after: config.cluster.retry_down_after,
            metrics,
            reads: ReadReplicas::new(config.cluster.read_replica_after, config.cluster.read_replicas),
            dialer,
            rejoined: std::sync::atomic::AtomicBool::new(false),
            rejoin: tokio::sync::Notify::new(),
            refresh: Mutex::new(None),
        };
        cluster.set_members(members);
        Ok(Some(Arc::new(cluster)))
    }

    /// Keeps the view from etcd when `config` names it (waiting for the first member list).
    pub(crate) async fn join_etcd(self: &Arc<Self>, config: &Config, tasks: &Tasks) -> Result<(), Error> {
        if !config.cluster.etcd.is_empty() {
            let address = config.cluster.advertised(&config.server.listen)?;
            etcd::join(self.clone(), &config.cluster, address, tasks).await;
        }
        Ok(())
    }

    /// How long a request to a member may take before it counts as failed.
    pub fn peer_timeout(&self) -> Duration {
        self.timeout
    }

    /// This node's id.
    pub fn local_id(&self) -> &str {
        &self.local
    }

    /// The members now.
    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// Replaces the member list (id, address).
    pub fn set_members(&self, members: Vec<(String, String)>) {
        let placement = Placement::new(members.iter().map(|(id, _)| id.clone()));
        self.metrics.members.set(placement.len() as i64);
        let addrs: HashMap<String, String> = members.into_iter().collect();
        {
            // The epoch moves with the view it numbers: whoever reads a view reads its epoch.
            let mut view = self.view.write();
            if view.addrs == addrs && view.epoch > 0 {
                return;
            }
            *view = Arc::new(View { placement, addrs, epoch: view.epoch + 1 });
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Wakes at every change of the member list.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// This node registers again after being out of the member list.
    pub(crate) fn mark_rejoined(&self) {
        self.rejoined.store(true, std::sync::atomic::Ordering::Release);
        self.rejoin.notify_one();
    }

    /// Wakes when this node is marked as back (see [`Cluster::mark_rejoined`]).
    pub(crate) async fn rejoined(&self) {
        self.rejoin.notified().await;
    }

    /// Whether this node came back since the last ask.
    pub(crate) fn take_rejoined(&self) -> bool {
        self.rejoined.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Whether `id` is a member now.
    pub fn is_member(&self, id: &str) -> bool {
        self.view().addrs.contains_key(id)
    }

    /// Whether `id` is a member, reading the member list from etcd again first when this
    /// view lacks it: a node that has just registered (restarted, or back from a stop past
    /// its lease) is a member before every view has caught up with etcd, and refusing its
    /// requests meanwhile failed writes for seconds. Static membership has nothing to read.
    pub async fn is_member_now(&self, id: &str) -> bool {
        if self.is_member(id) {
            return true;
        }
        let refresh = self.refresh.lock().clone();
        if let Some(refresh) = refresh {
            refresh.now().await;
        }
        self.is_member(id)
    }

    /// Where the copies of a block placed by `placement_key` go, for `replicas` copies and a
    /// write quorum of `quorum` (both at most the members there are).
    pub fn plan(&self, placement_key: &[u8], replicas: usize, quorum: usize) -> Plan {
        let view = self.view();
        let owners: Vec<String> =
            view.placement.owners(placement_key, replicas).into_iter().map(String::from).collect();
        Plan { quorum: quorum.min(owners.len()).max(1), owners }
    }

    /// A connection to member `id` (made on first use, remade when its address changed).
    async fn peer(&self, id: &str) -> Result<Client, PeerError> {
        let Some(addr) = self.view().addrs.get(id).cloned() else {
            return Err(PeerError::NotAMember { member: id.to_string() });
        };
        let down = || {
            let reason = "was unreachable moments ago".to_string();
            Err(PeerError::Unreachable { member: id.to_string(), addr: addr.clone(), reason })
        };
        if self.is_down(id) {
            return down();
        }
        let slot = self.peers.lock().entry(id.to_string()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some((at, client)) = slot.as_ref()
            && *at == addr
        {
            return Ok(client.clone());
        }
        // Waited behind a connect that failed: fail as fast as it marked the member.
        if self.is_down(id) {
            return down();
        }
        let connecting = match &self.dialer {
            Some(dial) => dial(&addr),
            None => {
                let tls = self.tls.clone().map(|t| kvtier_client::ClientTls { domain: Some(id.to_string()), ..t });
                let addr = addr.clone();
                Box::pin(async move { Client::connect_with(&addr, tls.as_ref()).await })
            }
        };
        let connected = tokio::time::timeout(self.timeout, connecting).await;
        match connected.map_err(|_| "connecting timed out".to_string()).and_then(|c| c.map_err(|e| e.to_string())) {
            Ok(client) => {
                let client = client.as_peer(&self.local).map_err(|e| PeerError::Unreachable {
                    member: id.to_string(),
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
                *slot = Some((addr, client.clone()));
                self.down.lock().remove(id);
                Ok(client)
            }
            Err(reason) => {
                self.down.lock().insert(id.to_string(), Instant::now() + self.retry_down_after);
                Err(PeerError::Unreachable { member: id.to_string(), addr, reason })
            }
        }
    }

    /// Runs one request to `id` under the peer timeout, counting it.
    /// A failure says whether the request did nothing at `id` (never sent, or answered so)
    /// or may have (no answer, or an answer that does not say): [`PeerError::outcome`].
    async fn call<T, F>(&self, id: &str, op: &str, f: impl FnOnce(Client) -> F) -> Result<T, PeerError>
    where
        F: Future<Output = Result<T, kvtier_client::ClientError>>,
    {
        let result = match self.peer(id).await {
            Ok(client) => match tokio::time::timeout(self.timeout, f(client)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    let status = match &e {
                        kvtier_client::ClientError::Status(s) => Some(s),
                        _ => None,
                    };
                    if status.is_some_and(|s| s.code() == tonic::Code::Unavailable) {
                        self.forget(id);
                    }
                    // A request that never left (no connection) did nothing; any other failure
                    // without the peer's word may have landed.
                    let unsaid = match status {
                        Some(s) if kvtier_client::never_sent(s) => Outcome::NotApplied,
                        _ => Outcome::Unknown,
                    };
                    let outcome = status.and_then(Outcome::of).unwrap_or(unsaid);
                    Err(PeerError::Failed { member: id.to_string(), source: e, outcome })
                }
                Err(_) => Err(PeerError::Timeout { member: id.to_string(), timeout: self.timeout }),
            },
            Err(e) => Err(e),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.peer_requests.with_label_values(&[op, outcome]).inc();
        result
    }

    /// Drops the connection to `id`, so the next request reconnects.
    fn forget(&self, id: &str) {
        self.peers.lock().remove(id);
    }

    /// Whether `id` failed to connect moments ago (it is skipped for `retry_down_after`).
    fn is_down(&self, id: &str) -> bool {
        self.down.lock().get(id).is_some_and(|until| Instant::now() < *until)
    }

    /// Stores `block` on member `id` with `durability`.
    ///
    /// A failure says whether `id` may hold the copy all the same (no answer came).
    pub async fn put_on(&self, id: &str, block: &Block, durability: Durability) -> Result<(), PeerError> {
        let item = [PutItem::new(block.key.key.as_bytes().to_vec(), block.data.clone())];
        let ns = block.key.namespace.as_str();
        // Past this, the put counts as failed here: the member must not store it later.
        let deadline = std::time::SystemTime::now() + self.timeout;
        let reports =
            self.call(id, "put", |c| async move { c.put_by(ns, &item, durability, Some(deadline)).await }).await?;
        match reports.into_iter().next().map(|r| r.result) {
            Some(Ok(())) => Ok(()),
            // Refused by the member for this block: it did not store it.
            Some(Err((code, message))) => Err(PeerError::Failed {
                member: id.to_string(),
                source: kvtier_client::ClientError::Status(tonic::Status::new(code, message)),
                outcome: Outcome::NotApplied,
            }),
            None => Err(PeerError::protocol(id, format!("{id}: no answer for the block"))),
        }
    }

    /// Reads `key` from member `id`'s own tiers, with the tier it came from: `None` if it
    /// has no copy.
    pub async fn get_from(&self, id: &str, key: &BlockKey) -> Result<Option<(Block, TierKind)>, PeerError> {
        let wire = [key.key.as_bytes().to_vec()];
        let ns = key.namespace.as_str();
        let mut items = self.call(id, "get", |c| async move { c.get(ns, &wire).await }).await?;
        match items.pop() {
            Some(GetItem::Hit { data, crc32c, tier }) => {
                Ok(Some((Block::with_crc32c(key.clone(), data, crc32c), tier)))
            }
            Some(GetItem::Miss { .. }) | None => Ok(None),
        }
    }

    /// How this node, an owner of `key` placed by `plan`, answers member `reader`'s read of
    /// it (see read_replicas.rs): a read replica is a member that owns no copy.
    pub(crate) fn route_read(
        &self,
        key: &BlockKey,
        plan: &Plan,
        reader: &str,
        tried: &[String],
        redirect: bool,
    ) -> ReadRoute {
        let view = self.view();
        let candidate = |m: &str| view.addrs.contains_key(m) && !plan.owns(m);
        self.reads.route(key, reader, tried, redirect, plan.owns(reader), candidate)
    }

    /// Reads `key` from member `id` as a reader whose own copy is missing: the bytes, or
    /// the read replicas to read from instead (see read_replicas.rs). `tried`: holders an
    /// earlier answer named that did not have it.
    pub(crate) async fn read_from(&self, id: &str, key: &BlockKey, tried: &[String]) -> Result<MemberRead, PeerError> {
        let ns = key.namespace.as_str();
        let k = key.key.as_bytes();
        self.call(id, "read", |c| async move { c.read_as_member(ns, k, tried).await }).await
    }

    /// Reads `key` from member `id`, a read replica an owner named: within a couple of
    /// seconds (a replica that does not answer by then is passed by for the owner).
    pub(crate) async fn read_from_replica(&self, id: &str, key: &BlockKey) -> Result<MemberRead, PeerError> {
        let (ns, k) = (key.namespace.as_str(), key.key.as_bytes());
        let read = self.call(id, "read", |c| async move { c.read_as_member(ns, k, &[]).await });
        tokio::time::timeout(REPLICA_READ_TIMEOUT.min(self.timeout), read)
            .await
            .unwrap_or_else(|_| Err(PeerError::Timeout { member: id.to_string(), timeout: REPLICA_READ_TIMEOUT }))
    }

    /// Which of `keys` (of one namespace) member `id` holds itself, in order.
    pub(crate) async fn has_on(
        &self,
        id: &str,
        keys: &[BlockKey],
    ) -> Result<Vec<Option<kvtier_client::Presence>>, PeerError> {
        let Some(ns) = keys.first().map(|k| k.namespace.as_str()) else { return Ok(Vec::new()) };
        let wire: Vec<Vec<u8>> = keys.iter().map(|k| k.key.as_bytes().to_vec()).collect();
        let answers = self.call(id, "has", |c| async move { c.has(ns, &wire).await }).await?;
        if answers.len() != keys.len() {
            return Err(PeerError::protocol(id, format!("{id} answered {} of {} keys", answers.len(), keys.len())));
        }
        Ok(answers)
    }

    /// Deletes `key` from member `id`: whether it had a copy.
    pub async fn delete_on(&self, id: &str, key: &BlockKey) -> Result<bool, PeerError> {
        self.delete_on_by(id, key, None).await
    }

    /// [`Cluster::delete_on`], refused by member `id` if it arrives past `deadline`.
    pub async fn delete_on_by(
        &self,
        id: &str,
        key: &BlockKey,
        deadline: Option<std::time::SystemTime>,
    ) -> Result<bool, PeerError> {
        let wire = [key.key.as_bytes().to_vec()];
        let ns = key.namespace.as_str();
        let deleted = self.call(id, "delete", |c| async move { c.delete_by(ns, &wire, deadline).await }).await?;
        Ok(deleted.first().copied().unwrap_or(false))
    }
}

/// Buckets the key space is compared in.
pub(crate) const BUCKETS: usize = 256;

/// A bucket's digest: how many keys, and the XOR of their hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Digest {
    pub(crate) count: u64,
    pub(crate) xor: u64,
}

/// A key as listed by a peer.
pub(crate) fn key_from_wire(namespace: &str, key: &[u8]) -> Option<BlockKey> {
    Some(BlockKey::new(Namespace::new(namespace).ok()?, Key::new(key).ok()?))
}

/// A key as a member names it to another.
pub(crate) fn key_to_wire(k: &BlockKey) -> peer::KeyRef {
    peer::KeyRef {
        namespace: k.namespace.as_str().into(),
        key: k.key.as_bytes().to_vec().into(),
        unflushed: false,
        crc32c: None,
    }
}

/// The members' TLS, from `[server.tls]`: none when it is off.
fn peer_tls(tls: &crate::config::TlsConfig) -> Result<Option<kvtier_client::ClientTls>, Error> {
    if !tls.enabled() {
        return Ok(None);
    }
    let crate::config::TlsPems { cert, key, ca } = tls.read_pems()?;
    let ca = ca.ok_or_else(|| Error::Config("server.tls.ca: a cluster with TLS needs its CA".into()))?;
    Ok(Some(kvtier_client::ClientTls { ca, identity: Some((cert, key)), domain: None }))
}
