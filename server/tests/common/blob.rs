//! A node's Blob store for tests: a local directory or a real Azurite, the same suite on
//! both, and a way to make it unreachable and bring it back.

use kvtier_testkit::{Azurite, FaultProxy};
use kvtier_tiers::{BlobTier, BlobTierBuilder};

/// Where the node's Blob tier lives.
pub enum Store {
    Dir(tempfile::TempDir),
    Azurite(Azurite),
}

pub struct Backend {
    pub store: Store,
    pub url: String,
}

impl Backend {
    pub fn dir() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/bucket/kv", dir.path().display());
        Backend { store: Store::Dir(dir), url }
    }

    pub fn azurite() -> Backend {
        Backend { store: Store::Azurite(Azurite::start()), url: "az://kvtier/nodes/kv".into() }
    }

    pub fn options(&self) -> Vec<(String, String)> {
        match &self.store {
            Store::Dir(_) => Vec::new(),
            Store::Azurite(a) => a.options(),
        }
    }

    /// The node's `[blob]` table: 4 MiB segments plus `extra` lines.
    pub fn toml(&self, extra: &str) -> String {
        let options: String = self.options().iter().map(|(k, v)| format!("{k} = \"{v}\"\n")).collect();
        let segment = if extra.contains("segment_size") { "" } else { "segment_size = \"4MiB\"" };
        format!("[blob]\nurl = \"{}\"\n{segment}\n{extra}\n[blob.options]\n{options}", self.url)
    }

    /// An independent view of what Blob holds (a fresh replay of its records).
    pub async fn view(&self) -> BlobTier {
        BlobTierBuilder::new(&self.url).options(self.options()).open().await.unwrap()
    }

    /// Makes the store unreachable: Azurite stops; a directory is moved away and a plain
    /// file takes its place, so every write under it fails.
    pub fn stop(&mut self) {
        match &mut self.store {
            Store::Azurite(a) => a.stop(),
            Store::Dir(d) => {
                let bucket = d.path().join("bucket");
                std::fs::rename(&bucket, d.path().join("away")).unwrap();
                std::fs::write(&bucket, b"not a directory").unwrap();
            }
        }
    }

    pub fn resume(&mut self) {
        match &mut self.store {
            Store::Azurite(a) => a.resume(),
            Store::Dir(d) => {
                std::fs::remove_file(d.path().join("bucket")).unwrap();
                std::fs::rename(d.path().join("away"), d.path().join("bucket")).unwrap();
            }
        }
    }
}

/// Azurite behind a fault proxy, and the `[blob]` table (url `az://kvtier/<prefix>`, plus
/// `extra` lines) of a node that goes through it.
pub fn behind_fault_proxy(prefix: &str, extra: &str) -> (Azurite, FaultProxy, String) {
    let azurite = Azurite::start();
    let upstream = azurite.endpoint.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let proxy = FaultProxy::start(&upstream);
    let options: String = azurite
        .options()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "azure_storage_endpoint" => format!("{k} = \"http://{}/devstoreaccount1\"\n", proxy.addr),
            _ => format!("{k} = \"{v}\"\n"),
        })
        .collect();
    let toml = format!("[blob]\nurl = \"az://kvtier/{prefix}\"\nretries = 1\n{extra}\n[blob.options]\n{options}");
    (azurite, proxy, toml)
}

/// Runs each named `async fn(Backend)` of the calling test file as two tests, `dir::<name>`
/// and `azurite::<name>` (the file imports `Backend`).
#[allow(unused_macros, reason = "test files that run on one backend do not use it")]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local_dir {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::dir()).await })*
        }
        mod azurite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::azurite()).await })*
        }
    };
}
#[allow(unused_imports, reason = "test files that run on one backend do not use it")]
pub(crate) use on_both_backends;
