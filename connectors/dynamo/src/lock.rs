//! `KvtierLockManager`: KVBM's G4 lock protocol (`ObjectLockManager`) on kvtier's own
//! protocol, as `S3LockManager` does it over S3: a lock is the small object `{hash}.lock`
//! (JSON: holder, taken at, deadline) created only if absent; one past its deadline is taken
//! over only if it is still the version read (kvtier's conditional commit, decided by the
//! path's primary: of instances racing through any members, one wins); `{hash}.meta` marks
//! a block offloaded. Unlike S3's If-Match on a deleted lock (404, an error), a lock released
//! between the read and the take-over is simply taken again if absent.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::{TryStreamExt, future::BoxFuture};
use kvbm_engine::{
    SequenceHash,
    object::{LockFileContent, ObjectLockManager},
};
use kvtier_client::{Client, ClientError, CommitIf, Durability};

/// KVBM's G4 locks over kvtier (see the module documentation).
pub struct KvtierLockManager {
    client: Client,
    namespace: String,
    instance_id: String,
    lock_timeout: Duration,
}

impl KvtierLockManager {
    /// How long a lock is held unless released (KVBM's S3 lock manager's default).
    pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(300);

    /// Locks of `instance_id` in `namespace`, through `client`.
    pub fn new(client: Client, namespace: &str, instance_id: String) -> Self {
        KvtierLockManager { client, namespace: namespace.into(), instance_id, lock_timeout: Self::DEFAULT_LOCK_TIMEOUT }
    }

    /// Locks held for `timeout` unless released.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    fn content(&self) -> Result<Bytes> {
        let now = chrono::Utc::now();
        let deadline = now + chrono::Duration::from_std(self.lock_timeout).unwrap_or_default();
        let lock = LockFileContent {
            instance_id: self.instance_id.clone(),
            acquired_at: now.to_rfc3339(),
            deadline: deadline.to_rfc3339(),
        };
        Ok(serde_json::to_vec(&lock)?.into())
    }

    fn cheap_clone(&self) -> KvtierLockManager {
        KvtierLockManager {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            instance_id: self.instance_id.clone(),
            lock_timeout: self.lock_timeout,
        }
    }

    async fn put_if(&self, path: &str, data: Bytes, condition: CommitIf) -> Result<bool> {
        let body = futures::stream::once(async move { data });
        let put = self.client.put_object_if(&self.namespace, path, body, Durability::LocalDisk, condition);
        Ok(put.await.with_context(|| format!("putting {path}"))?.is_some())
    }

    /// The lock at `path` and the version it is; `None` if there is none.
    async fn read(&self, path: &str) -> Result<Option<(Vec<u8>, CommitIf)>> {
        let got = self.client.get_object(&self.namespace, path, kvtier_client::ObjectRange::all()).await;
        let (info, bytes) = match got {
            Ok(found) => found,
            Err(ClientError::Status(s)) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        };
        let data: Vec<Bytes> = bytes.try_collect().await.with_context(|| format!("reading {path}"))?;
        let version = CommitIf::Current { generation: info.generation, crc32c: info.crc32c };
        Ok(Some((data.concat(), version)))
    }

    async fn try_acquire(&self, hash: SequenceHash) -> Result<bool> {
        let path = format!("{hash}.lock");
        let ours = self.content()?;
        // Absent, or released between a read and a take-over: taken if still absent.
        for _ in 0..2 {
            if self.put_if(&path, ours.clone(), CommitIf::Absent).await? {
                return Ok(true);
            }
            let Some((held, version)) = self.read(&path).await? else { continue };
            let expired = match serde_json::from_slice::<LockFileContent>(&held) {
                Ok(lock) if lock.instance_id == self.instance_id => return Ok(true),
                Ok(lock) => chrono::DateTime::parse_from_rfc3339(&lock.deadline)
                    .map_or(true, |deadline| chrono::Utc::now() > deadline.with_timezone(&chrono::Utc)),
                // A malformed lock is taken over, as KVBM's S3 lock manager does.
                Err(_) => true,
            };
            return if expired { self.put_if(&path, ours, version).await } else { Ok(false) };
        }
        Ok(false)
    }
}

impl ObjectLockManager for KvtierLockManager {
    fn has_meta(&self, hash: SequenceHash) -> BoxFuture<'static, Result<bool>> {
        let this = self.cheap_clone();
        Box::pin(async move {
            let path = format!("{hash}.meta");
            Ok(this.client.stat_object(&this.namespace, &path).await.with_context(|| path)?.is_some())
        })
    }

    fn try_acquire_lock(&self, hash: SequenceHash) -> BoxFuture<'static, Result<bool>> {
        let this = self.cheap_clone();
        Box::pin(async move { this.try_acquire(hash).await })
    }

    fn create_meta(&self, hash: SequenceHash) -> BoxFuture<'static, Result<()>> {
        let this = self.cheap_clone();
        Box::pin(async move {
            this.put_if(&format!("{hash}.meta"), Bytes::new(), CommitIf::Any).await?;
            Ok(())
        })
    }

    fn release_lock(&self, hash: SequenceHash) -> BoxFuture<'static, Result<()>> {
        let this = self.cheap_clone();
        Box::pin(async move {
            this.client.delete_object(&this.namespace, &format!("{hash}.lock")).await?;
            Ok(())
        })
    }
}
