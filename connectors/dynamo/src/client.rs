//! `KvtierObjectBlockClient`: KVBM's G4 (object) tier on kvtier's own protocol instead of
//! S3. Blocks are kvtier blocks under the keys KVBM's key formatter makes (rank-prefixed on
//! workers), in one namespace; a batch of blocks is one request. On the node's host the
//! blocks go through its shared-memory socket (`[shm]`): copied straight between the KV
//! layout's regions and the node's arena, one copy each way and no HTTP; what that path
//! cannot serve (a block held by another member, no arena room) goes over gRPC, which
//! reaches the whole cluster. `has_blocks` asks the cluster (kvtier's `Has`).

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result, anyhow};
use futures::future::BoxFuture;
use kvbm_engine::{
    BlockId, LogicalLayoutHandle, SequenceHash,
    object::{DefaultKeyFormatter, KeyFormatter, LayoutConfigExt, ObjectBlockOps},
};
use kvbm_physical::transfer::PhysicalLayout;
use kvtier_client::{
    Client, Durability, GetItem, PutItem,
    shm::{ShmClient, ShmGet, ShmPut},
};
use parking_lot::Mutex;

/// Where and how a [`KvtierObjectBlockClient`] stores blocks: what KVBM's config would say
/// under `[leader.object.client] type = "kvtier"` (docs/connectors.md).
#[derive(Debug, Clone)]
pub struct KvtierConfig {
    /// The node's gRPC address: `host:port`, `http://host:port` or `unix:///path`.
    pub server: String,
    /// The node's shared-memory socket (`[shm] socket`), for engines on its host.
    pub shm_socket: Option<PathBuf>,
    /// The kvtier namespace of the blocks (its `[namespaces]` rules apply: copies, Blob).
    pub namespace: String,
    /// When a put is acknowledged (write-back: on the node's SSD, then in Blob).
    pub durability: Durability,
}

/// KVBM's G4 client over kvtier (see the module documentation).
pub struct KvtierObjectBlockClient {
    grpc: Client,
    shm: Option<Arc<Mutex<ShmClient>>>,
    namespace: String,
    durability: Durability,
    key_formatter: Arc<dyn KeyFormatter>,
}

/// A block's bytes in a layout: its regions, in order (one for a fully contiguous layout).
struct Regions(Vec<(usize, usize)>);

impl Regions {
    fn of(layout: &PhysicalLayout, block_id: BlockId) -> Result<Regions> {
        let config = layout.layout().config();
        let inner = layout.layout();
        if inner.is_fully_contiguous() {
            let region = layout.memory_region(block_id, 0, 0)?;
            return Ok(Regions(vec![(region.addr(), config.block_size_bytes())]));
        }
        let size = config.region_size();
        let mut regions = Vec::with_capacity(inner.num_layers() * inner.outer_dim());
        for layer in 0..inner.num_layers() {
            for outer in 0..inner.outer_dim() {
                let region = layout.memory_region(block_id, layer, outer)?;
                if region.size() < size {
                    return Err(anyhow!("block {block_id}: a region of {} bytes, {size} needed", region.size()));
                }
                regions.push((region.addr(), size));
            }
        }
        Ok(Regions(regions))
    }

    fn len(&self) -> usize {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// The regions' bytes.
    ///
    /// SAFETY: the layout's memory outlives the borrow and no one writes it meanwhile (KVBM
    /// hands a block to one transfer at a time).
    unsafe fn slices(&self) -> Vec<&[u8]> {
        self.0.iter().map(|&(addr, n)| unsafe { std::slice::from_raw_parts(addr as *const u8, n) }).collect()
    }

    /// The regions to write.
    ///
    /// SAFETY: as [`Regions::slices`], and no one reads them meanwhile.
    unsafe fn slices_mut(&mut self) -> Vec<&mut [u8]> {
        self.0.iter().map(|&(addr, n)| unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, n) }).collect()
    }
}

impl KvtierObjectBlockClient {
    /// Connects to the node `config` names (and its shared-memory socket, if given).
    pub async fn connect(config: KvtierConfig) -> Result<Self> {
        Self::with_key_formatter(config, Arc::new(DefaultKeyFormatter)).await
    }

    /// [`KvtierObjectBlockClient::connect`], keys made by `key_formatter` (a worker's are
    /// rank-prefixed).
    pub async fn with_key_formatter(config: KvtierConfig, key_formatter: Arc<dyn KeyFormatter>) -> Result<Self> {
        let grpc = Client::connect(&config.server).await.with_context(|| format!("connecting to {}", config.server))?;
        let shm = match &config.shm_socket {
            Some(path) => {
                let (path, ns) = (path.clone(), config.namespace.clone());
                let shm = tokio::task::spawn_blocking(move || ShmClient::connect(&path, &[&ns])).await?;
                Some(Arc::new(Mutex::new(shm.context("connecting to the node's shared-memory socket")?)))
            }
            None => None,
        };
        Ok(KvtierObjectBlockClient {
            grpc,
            shm,
            namespace: config.namespace,
            durability: config.durability,
            key_formatter,
        })
    }

    fn key(&self, hash: &SequenceHash) -> Vec<u8> {
        self.key_formatter.format_key(hash).into_bytes()
    }

    /// Stores each block of `layout` named by `block_ids` under its key; which were stored.
    async fn put_layout(&self, keys: &[Vec<u8>], layout: PhysicalLayout, block_ids: Vec<BlockId>) -> Vec<bool> {
        let regions: Vec<Option<Regions>> =
            block_ids.iter().map(|&id| Regions::of(&layout, id).inspect_err(|e| warn("put", e)).ok()).collect();
        let mut stored = vec![false; keys.len()];
        let mut rest: Vec<usize> = (0..keys.len()).filter(|&i| regions[i].is_some()).collect();
        if let Some(shm) = &self.shm {
            let (shm, ns, durability) = (shm.clone(), self.namespace.clone(), self.durability);
            let (keys, want) = (keys.to_vec(), rest.clone());
            let sources = regions_ref(&regions, &want);
            let outcomes = tokio::task::spawn_blocking(move || {
                // SAFETY: see `Regions::slices`; the layout is held (`layout` below) until then.
                let parts: Vec<Vec<&[u8]>> = sources.iter().map(|r| unsafe { r.slices() }).collect();
                let blocks: Vec<(&[u8], &[&[u8]])> =
                    want.iter().zip(&parts).map(|(&i, p)| (keys[i].as_slice(), p.as_slice())).collect();
                shm.lock().put_parts(&ns, &blocks, durability)
            })
            .await;
            match outcomes {
                Ok(Ok(outcomes)) => {
                    for (i, outcome) in rest.iter().zip(outcomes) {
                        stored[*i] = matches!(outcome, ShmPut::Stored(_) | ShmPut::Existed);
                    }
                    rest.retain(|&i| !stored[i]);
                }
                Ok(Err(e)) => warn("put (shared memory)", &anyhow!(e)),
                Err(e) => warn("put (shared memory)", &anyhow!(e)),
            }
        }
        if !rest.is_empty() {
            let items: Vec<PutItem> = rest
                .iter()
                .map(|&i| {
                    let r = regions[i].as_ref().expect("only blocks with regions");
                    let mut data = Vec::with_capacity(r.len());
                    // SAFETY: see `Regions::slices`.
                    unsafe { r.slices() }.into_iter().for_each(|s| data.extend_from_slice(s));
                    PutItem::new(keys[i].clone(), data.into())
                })
                .collect();
            match self.grpc.put(&self.namespace, &items, self.durability).await {
                Ok(reports) => {
                    for (&i, report) in rest.iter().zip(reports) {
                        match report.result {
                            Ok(()) => stored[i] = true,
                            Err((code, message)) => warn("put", &anyhow!("{code:?}: {message}")),
                        }
                    }
                }
                Err(e) => warn("put", &anyhow!(e)),
            }
        }
        drop(layout);
        stored
    }

    /// Reads each block under its key into `layout`'s block of `block_ids`; which were read.
    async fn get_layout(&self, keys: &[Vec<u8>], layout: PhysicalLayout, block_ids: Vec<BlockId>) -> Vec<bool> {
        let mut regions: Vec<Option<Regions>> =
            block_ids.iter().map(|&id| Regions::of(&layout, id).inspect_err(|e| warn("get", e)).ok()).collect();
        let mut read = vec![false; keys.len()];
        let mut rest: Vec<usize> = (0..keys.len()).filter(|&i| regions[i].is_some()).collect();
        if let Some(shm) = &self.shm {
            let (shm, ns) = (shm.clone(), self.namespace.clone());
            let (keys, want) = (keys.to_vec(), rest.clone());
            let mut targets = regions_ref(&regions, &want);
            let lens: Vec<usize> = targets.iter().map(Regions::len).collect();
            let outcomes = tokio::task::spawn_blocking(move || {
                // SAFETY: see `Regions::slices_mut`; the layout is held until then.
                let mut parts: Vec<Vec<&mut [u8]>> = targets.iter_mut().map(|r| unsafe { r.slices_mut() }).collect();
                let mut outs: Vec<&mut [&mut [u8]]> = parts.iter_mut().map(|p| p.as_mut_slice()).collect();
                let asked: Vec<&[u8]> = want.iter().map(|&i| keys[i].as_slice()).collect();
                shm.lock().get_into_parts(&ns, &asked, &mut outs)
            })
            .await;
            match outcomes {
                Ok(Ok(outcomes)) => {
                    for ((i, outcome), want) in rest.iter().zip(outcomes).zip(lens) {
                        read[*i] = matches!(outcome, ShmGet::Hit { len, .. } if len == want);
                    }
                    rest.retain(|&i| !read[i]);
                }
                Ok(Err(e)) => warn("get (shared memory)", &anyhow!(e)),
                Err(e) => warn("get (shared memory)", &anyhow!(e)),
            }
        }
        if !rest.is_empty() {
            let asked: Vec<Vec<u8>> = rest.iter().map(|&i| keys[i].clone()).collect();
            match self.grpc.get(&self.namespace, &asked).await {
                Ok(items) => {
                    for (&i, item) in rest.iter().zip(items) {
                        let r = regions[i].as_mut().expect("only blocks with regions");
                        match item {
                            GetItem::Hit { data, .. } if data.len() == r.len() => {
                                // SAFETY: see `Regions::slices_mut`.
                                let mut parts = unsafe { r.slices_mut() };
                                read[i] = kvtier_client::shm::scatter(&data, &mut parts).is_ok();
                            }
                            GetItem::Hit { data, .. } => {
                                warn("get", &anyhow!("{} bytes stored, the layout's block is {}", data.len(), r.len()))
                            }
                            GetItem::Miss { .. } => {}
                        }
                    }
                }
                Err(e) => warn("get", &anyhow!(e)),
            }
        }
        drop(layout);
        read
    }
}

/// The regions of the blocks at `at` (their addresses: what a blocking task can take).
fn regions_ref(regions: &[Option<Regions>], at: &[usize]) -> Vec<Regions> {
    at.iter().map(|&i| Regions(regions[i].as_ref().expect("only blocks with regions").0.clone())).collect()
}

fn warn(what: &str, error: &anyhow::Error) {
    tracing::warn!(error = %error, "kvtier G4 {what} failed");
}

/// `keys` answered by `ok`: `Ok(hash)` where it holds, `Err(hash)` elsewhere.
fn answers(keys: Vec<SequenceHash>, ok: Vec<bool>) -> Vec<Result<SequenceHash, SequenceHash>> {
    keys.into_iter().zip(ok).map(|(k, ok)| if ok { Ok(k) } else { Err(k) }).collect()
}

impl ObjectBlockOps for KvtierObjectBlockClient {
    fn has_blocks(&self, keys: Vec<SequenceHash>) -> BoxFuture<'static, Vec<(SequenceHash, Option<usize>)>> {
        let (grpc, ns) = (self.grpc.clone(), self.namespace.clone());
        let wire: Vec<Vec<u8>> = keys.iter().map(|k| self.key(k)).collect();
        Box::pin(async move {
            match grpc.has(&ns, &wire).await {
                Ok(found) => keys.into_iter().zip(found).map(|(k, p)| (k, p.map(|p| p.length as usize))).collect(),
                Err(e) => {
                    warn("has_blocks", &anyhow!(e));
                    keys.into_iter().map(|k| (k, None)).collect()
                }
            }
        })
    }

    fn put_blocks(
        &self,
        keys: Vec<SequenceHash>,
        _src_layout: LogicalLayoutHandle,
        _block_ids: Vec<BlockId>,
    ) -> BoxFuture<'static, Vec<Result<SequenceHash, SequenceHash>>> {
        // As KVBM's S3 client: a logical handle is resolved by the worker, which then calls
        // put_blocks_with_layout.
        tracing::error!("KvtierObjectBlockClient::put_blocks needs a physical layout: use put_blocks_with_layout");
        Box::pin(async move { keys.into_iter().map(Err).collect() })
    }

    fn get_blocks(
        &self,
        keys: Vec<SequenceHash>,
        _dst_layout: LogicalLayoutHandle,
        _block_ids: Vec<BlockId>,
    ) -> BoxFuture<'static, Vec<Result<SequenceHash, SequenceHash>>> {
        tracing::error!("KvtierObjectBlockClient::get_blocks needs a physical layout: use get_blocks_with_layout");
        Box::pin(async move { keys.into_iter().map(Err).collect() })
    }

    fn put_blocks_with_layout(
        &self,
        keys: Vec<SequenceHash>,
        layout: PhysicalLayout,
        block_ids: Vec<BlockId>,
    ) -> BoxFuture<'static, Vec<Result<SequenceHash, SequenceHash>>> {
        let this = self.cheap_clone();
        let wire: Vec<Vec<u8>> = keys.iter().map(|k| self.key(k)).collect();
        Box::pin(async move {
            let stored = this.put_layout(&wire, layout, block_ids).await;
            answers(keys, stored)
        })
    }

    fn get_blocks_with_layout(
        &self,
        keys: Vec<SequenceHash>,
        layout: PhysicalLayout,
        block_ids: Vec<BlockId>,
    ) -> BoxFuture<'static, Vec<Result<SequenceHash, SequenceHash>>> {
        let this = self.cheap_clone();
        let wire: Vec<Vec<u8>> = keys.iter().map(|k| self.key(k)).collect();
        Box::pin(async move {
            let read = this.get_layout(&wire, layout, block_ids).await;
            answers(keys, read)
        })
    }
}

impl KvtierObjectBlockClient {
    /// The same client (connections shared): the futures KVBM's trait returns are `'static`.
    fn cheap_clone(&self) -> KvtierObjectBlockClient {
        KvtierObjectBlockClient {
            grpc: self.grpc.clone(),
            shm: self.shm.clone(),
            namespace: self.namespace.clone(),
            durability: self.durability,
            key_formatter: self.key_formatter.clone(),
        }
    }
}
