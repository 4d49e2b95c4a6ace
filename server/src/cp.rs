//! `kvtier cp`: files to and from named objects. One side is a local path, the other
//! `kvtier://NAMESPACE/PATH` (the namespace is the first segment; `%2F` stands for a `/` in
//! it, as in the Python `kvtier://` filesystem). With `-r`, a directory tree maps to the
//! objects under a prefix and back.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use kvtier_blockmgr::{Client, Durability, ObjectInfo, ObjectRange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes read from a local file per message.
const PIECE: usize = 4 << 20;
/// Files copied at once in a recursive copy.
const PARALLEL: usize = 4;

/// `kvtier://NAMESPACE/PATH`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObjectUrl {
    namespace: String,
    path: String,
}

impl ObjectUrl {
    /// `Some` for a `kvtier://` URL (an error if malformed), `None` for a local path.
    fn parse(text: &str) -> Result<Option<ObjectUrl>> {
        let Some(rest) = text.strip_prefix("kvtier://") else { return Ok(None) };
        let (ns, path) = rest.split_once('/').unwrap_or((rest, ""));
        if ns.is_empty() {
            bail!("{text}: a kvtier:// URL names a namespace first: kvtier://NAMESPACE/PATH");
        }
        let namespace = ns.replace("%2F", "/").replace("%2f", "/");
        if namespace.contains('%') {
            bail!("{text}: only %2F (a '/' in the namespace) is decoded in the namespace");
        }
        kvtier_tiers::Namespace::new(&namespace).with_context(|| text.to_string())?;
        Ok(Some(ObjectUrl { namespace, path: path.trim_matches('/').to_string() }))
    }

    fn join(&self, rest: &str) -> ObjectUrl {
        let path = if self.path.is_empty() { rest.to_string() } else { format!("{}/{rest}", self.path) };
        ObjectUrl { namespace: self.namespace.clone(), path }
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kvtier://{}/{}", self.namespace.replace('/', "%2F"), self.path)
    }
}

/// What `kvtier cp` was asked.
pub(crate) struct CpArgs {
    pub(crate) server: String,
    pub(crate) src: String,
    pub(crate) dst: String,
    pub(crate) recursive: bool,
    pub(crate) durability: Durability,
    /// Tries again of a file whose put failed transiently (or with an unknown outcome).
    pub(crate) retries: u32,
}

/// Copies; prints one summary line. A refused or failed file fails the copy (files
/// already copied stay).
pub(crate) async fn cp(args: CpArgs) -> Result<()> {
    let (src, dst) = (ObjectUrl::parse(&args.src)?, ObjectUrl::parse(&args.dst)?);
    let started = Instant::now();
    let tls = kvtier_blockmgr::ClientTls::from_env()?;
    let client = Client::connect_with(&args.server, tls.as_ref()).await?;
    let (files, bytes) = match (src, dst) {
        (None, Some(dst)) => upload(&client, Path::new(&args.src), &dst, &args).await?,
        (Some(src), None) => {
            download(&client, &src, Path::new(&args.dst), args.dst.ends_with('/'), args.recursive).await?
        }
        (Some(_), Some(_)) => bail!("both sides are kvtier:// URLs: copy between objects with the Python filesystem"),
        (None, None) => bail!("neither side is a kvtier:// URL: use cp"),
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "copied {files} file(s), {} in {secs:.2}s ({:.1} MiB/s)",
        kvtier_tiers::human_bytes(bytes),
        bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
            .expect("a valid template"),
    );
    bar
}

/// Local files under `root` (itself if a file), as (path, relative name, size), by name.
fn local_files(root: &Path, recursive: bool) -> Result<Vec<(PathBuf, String, u64)>> {
    let meta = std::fs::metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if meta.is_file() {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![(root.to_path_buf(), name, meta.len())]);
    }
    if !recursive {
        bail!("{} is a directory: copy it with -r", root.display());
    }
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() {
                let rel = path.strip_prefix(root).expect("under root");
                let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                found.push((path, name, entry.metadata()?.len()));
            }
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(found)
}

async fn upload(client: &Client, src: &Path, dst: &ObjectUrl, args: &CpArgs) -> Result<(usize, u64)> {
    let files = local_files(src, args.recursive)?;
    let single = std::fs::metadata(src)?.is_file();
    let total: u64 = files.iter().map(|f| f.2).sum();
    let bar = progress(total);
    let jobs = files.into_iter().map(|(path, name, size)| {
        // A file to a URL ending in '/' (or to the namespace) keeps its name.
        let to =
            if single && !(args.dst.ends_with('/') || dst.path.is_empty()) { dst.clone() } else { dst.join(&name) };
        let bar = bar.clone();
        async move { upload_file(client, &path, &to, size, args.durability, &bar, args.retries).await }
    });
    let done: Vec<u64> = futures::stream::iter(jobs).buffer_unordered(PARALLEL).try_collect().await?;
    bar.finish_and_clear();
    Ok((done.len(), done.iter().sum()))
}

/// A file whose put failed with an unknown outcome every time it was tried, and whose
/// object, read after, did not show its bytes: `kvtier cp` exits 3 for it.
#[derive(Debug)]
pub(crate) struct OutcomeUnknown(pub(crate) String);

impl std::fmt::Display for OutcomeUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: the outcome is unknown (it may or may not have been stored); copying it again is safe", self.0)
    }
}

impl std::error::Error for OutcomeUnknown {}

/// Copies one file, trying a transient failure again (`retries` times, backing off): a
/// retry writes the same bytes as a newer version, so it is safe even when the first try's
/// outcome was unknown. An unknown outcome is first looked up: if the object's current
/// version has this file's size and CRC-32C, the put landed.
async fn upload_file(
    client: &Client,
    path: &Path,
    to: &ObjectUrl,
    size: u64,
    durability: Durability,
    bar: &ProgressBar,
    retries: u32,
) -> Result<u64> {
    let what = || format!("{} -> {to}", path.display());
    for attempt in 0.. {
        let start = bar.position();
        let (put, read_crc) = upload_once(client, path, to, size, durability, bar).await?;
        let e = match put {
            Ok(info) if read_crc.is_some_and(|crc| crc != info.crc32c) => {
                bail!("{}: the node stored bytes whose CRC-32C differs from what was read", what());
            }
            Ok(info) => return Ok(info.size),
            Err(e) => e,
        };
        let unknown = e.outcome() == kvtier_blockmgr::Outcome::Unknown;
        if unknown
            && let Some(crc) = read_crc
            && let Ok(Some(info)) = client.stat_object(&to.namespace, &to.path).await
            && (info.size, info.crc32c) == (size, crc)
        {
            return Ok(size); // it landed
        }
        if !e.is_transient() || attempt >= retries {
            if unknown {
                return Err(anyhow::Error::new(OutcomeUnknown(what())).context(e.to_string()));
            }
            return Err(e).with_context(what);
        }
        bar.set_position(start);
        tracing::warn!(file = %what(), error = %e, attempt, "copying a file failed; trying again");
        tokio::time::sleep(std::time::Duration::from_millis(200 << attempt.min(5))).await;
    }
    unreachable!("the loop returns")
}

/// One put of the file: the node's answer, and the CRC-32C of what was read when the whole
/// file was (a put cut short never sent its commit).
async fn upload_once(
    client: &Client,
    path: &Path,
    to: &ObjectUrl,
    size: u64,
    durability: Durability,
    bar: &ProgressBar,
) -> Result<(Result<ObjectInfo, kvtier_blockmgr::ClientError>, Option<u32>)> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<std::io::Result<u32>>();
    // Reads feed the put; the CRC-32C of what was read is checked against what the node
    // stored. A read error ends the stream short of `size`, so the node does not commit.
    let reads = futures::stream::unfold((file, 0u32, Some(tx), bar.clone()), |(mut file, crc, tx, bar)| async move {
        let tx = tx?;
        let mut buf = BytesMut::zeroed(PIECE);
        let mut filled = 0;
        while filled < PIECE {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return None;
                }
            }
        }
        if filled == 0 {
            let _ = tx.send(Ok(crc));
            return None;
        }
        buf.truncate(filled);
        bar.inc(filled as u64);
        let crc = kvtier_tiers::crc32c_append(crc, &buf);
        Some((Bytes::from(buf), (file, crc, Some(tx), bar)))
    });
    let put = client.put_object(&to.namespace, &to.path, reads, durability, Some(size), None).await;
    let read_crc = match rx.await {
        Ok(Ok(crc)) => Some(crc),
        Ok(Err(e)) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Err(_) => None, // the put ended before the last read
    };
    Ok((put, read_crc))
}

async fn download(
    client: &Client,
    src: &ObjectUrl,
    dst: &Path,
    into_dir: bool,
    recursive: bool,
) -> Result<(usize, u64)> {
    let single = if src.path.is_empty() { None } else { client.stat_object(&src.namespace, &src.path).await? };
    let targets: Vec<(ObjectInfo, PathBuf)> = match single {
        Some(info) => {
            let name = src.path.rsplit('/').next().expect("a path").to_string();
            let to = if into_dir || dst.is_dir() { dst.join(name) } else { dst.to_path_buf() };
            vec![(info, to)]
        }
        None => {
            let prefix = if src.path.is_empty() { String::new() } else { format!("{}/", src.path) };
            let under = client.list_objects(&src.namespace, &prefix).await?;
            if under.is_empty() {
                bail!("{src}: no such object or directory");
            }
            if !recursive {
                bail!("{src} is a directory of {} object(s): copy it with -r", under.len());
            }
            under
                .into_iter()
                .map(|info| {
                    let rel = info.path[prefix.len()..].to_string();
                    if rel.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
                        bail!("{src}: object {:?} does not map to a local path", info.path);
                    }
                    Ok((info, dst.join(rel)))
                })
                .collect::<Result<_>>()?
        }
    };
    let bar = progress(targets.iter().map(|t| t.0.size).sum());
    let jobs = targets.into_iter().map(|(info, to)| {
        let bar = bar.clone();
        async move { download_file(client, &src.namespace, &info, &to, &bar).await }
    });
    let done: Vec<u64> = futures::stream::iter(jobs).buffer_unordered(PARALLEL).try_collect().await?;
    bar.finish_and_clear();
    Ok((done.len(), done.iter().sum()))
}

/// Reads one version into a temporary file beside `to`, checks its CRC-32C, then renames
/// it into place: `to` is never left half written.
async fn download_file(
    client: &Client,
    namespace: &str,
    info: &ObjectInfo,
    to: &Path,
    bar: &ProgressBar,
) -> Result<u64> {
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = to.with_file_name(format!(".{}.kvtier-tmp", to.file_name().expect("a file name").to_string_lossy()));
    let result = async {
        let mut out = tokio::fs::File::create(&tmp).await.with_context(|| format!("creating {}", tmp.display()))?;
        let range = ObjectRange::all().of_generation(info.generation);
        let (_, pieces) = client.get_object(namespace, &info.path, range).await?;
        let mut pieces = std::pin::pin!(pieces);
        let (mut crc, mut got) = (0u32, 0u64);
        while let Some(piece) = pieces.next().await {
            let piece = piece?;
            crc = kvtier_tiers::crc32c_append(crc, &piece);
            got += piece.len() as u64;
            out.write_all(&piece).await.with_context(|| format!("writing {}", tmp.display()))?;
            bar.inc(piece.len() as u64);
        }
        if (got, crc) != (info.size, info.crc32c) {
            bail!(
                "{}: {got} bytes read with CRC-32C {crc:#010x}, the object has {} with {:#010x}",
                info.path,
                info.size,
                info.crc32c
            );
        }
        out.sync_all().await.with_context(|| format!("syncing {}", tmp.display()))?;
        tokio::fs::rename(&tmp, to).await.with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result.map(|()| info.size)
}

#[cfg(test)]
mod tests {
    use super::ObjectUrl;

    #[test]
    fn urls_name_a_namespace_then_a_path() {
        let u = ObjectUrl::parse("kvtier://acme%2Fckpt/run1/step-1/").unwrap().unwrap();
        assert_eq!((u.namespace.as_str(), u.path.as_str()), ("acme/ckpt", "run1/step-1"));
        assert_eq!(u.to_string(), "kvtier://acme%2Fckpt/run1/step-1");
        assert_eq!(u.join("a.pt").path, "run1/step-1/a.pt");
        let root = ObjectUrl::parse("kvtier://ckpt").unwrap().unwrap();
        assert_eq!((root.namespace.as_str(), root.path.as_str(), root.join("x").path.as_str()), ("ckpt", "", "x"));
        assert_eq!(ObjectUrl::parse("./local/kvtier://x").unwrap(), None);
        assert!(ObjectUrl::parse("kvtier:///x").unwrap_err().to_string().contains("names a namespace first"));
        assert!(ObjectUrl::parse("kvtier://a%20b/x").is_err());
    }
}
