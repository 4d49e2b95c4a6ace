//! Building an [`SsdTier`]: opening (or formatting) the slot file, locking it, checking
//! its superblock against the configuration, then recovering its blocks.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    DEFAULT_REGION_SIZE, SLOT_FILE, SsdTier,
    io::{self, BufPool, IoEngine, PsyncEngine},
    layout::{DATA_START, HEADER, Superblock, VERSION},
    recover,
};
use crate::{
    Error, Result, exact_bytes,
    slab::{PAGE, SlabLayout},
};

/// Builds an [`SsdTier`], formatting a new slot file or recovering an existing one.
#[derive(Debug, Clone)]
pub struct SsdTierBuilder {
    dir: PathBuf,
    capacity: u64,
    region_size: u64,
    max_block_size: u64,
    direct_io: bool,
    sync_writes: bool,
    buffer_pool: usize,
    /// New blocks in packed regions (always, but in tests of files written by a class layout).
    packed: bool,
}

impl SsdTierBuilder {
    /// A tier of `capacity` bytes (rounded down to whole regions) in directory `dir`.
    pub fn new(dir: impl Into<PathBuf>, capacity: u64) -> Self {
        SsdTierBuilder {
            dir: dir.into(),
            capacity,
            region_size: DEFAULT_REGION_SIZE,
            max_block_size: 64 << 20,
            direct_io: true,
            sync_writes: false,
            buffer_pool: 64 << 20,
            packed: true,
        }
    }

    /// New blocks in regions of one size class each, as format version 1 placed them: to
    /// write such files in tests and to measure what packed regions save
    /// (`kvtier-bench ssd-fill`). Nothing else should want it: mixed sizes strand regions.
    pub fn with_class_layout(mut self) -> Self {
        self.packed = false;
        self
    }

    /// Bytes per region; fixed when the file is formatted. Default 65 MiB: 64 MiB of
    /// power-of-two blocks plus their 4 KiB headers pack a region exactly.
    pub fn with_region_size(mut self, bytes: u64) -> Self {
        self.region_size = bytes;
        self
    }

    /// Largest block accepted. Default 64 MiB.
    pub fn with_max_block_size(mut self, bytes: u64) -> Self {
        self.max_block_size = bytes;
        self
    }

    /// Opens the file with O_DIRECT, bypassing the page cache; falls back to buffered I/O
    /// with a warning where the filesystem refuses it. Default true.
    pub fn with_direct_io(mut self, direct: bool) -> Self {
        self.direct_io = direct;
        self
    }

    /// Opens the file O_DSYNC so an acknowledged put also survives power loss, at the cost
    /// of write latency. Default false (acknowledged puts survive process crashes).
    pub fn with_sync_writes(mut self, sync: bool) -> Self {
        self.sync_writes = sync;
        self
    }

    /// Bytes of idle aligned read/write buffers kept for reuse. Default 64 MiB.
    pub fn with_buffer_pool(mut self, bytes: usize) -> Self {
        self.buffer_pool = bytes;
        self
    }

    /// Opens (or formats) the slot file and rebuilds the index from its headers.
    pub async fn build(self) -> Result<SsdTier> {
        let runtime = tokio::runtime::Handle::current();
        runtime
            .clone()
            .spawn_blocking(move || self.build_blocking(runtime))
            .await
            .map_err(|e| Error::Generic { tier: "ssd".into(), source: Box::new(e) })?
    }

    fn build_blocking(self, runtime: tokio::runtime::Handle) -> Result<SsdTier> {
        let layout = SlabLayout::new("ssd", self.capacity, self.region_size, HEADER, HEADER, self.max_block_size)?;
        let layout = if self.packed { layout.packed() } else { layout };
        let name = format!("ssd({})", self.dir.display());
        let io_err = |op: &'static str, path: &Path| {
            let name = name.clone();
            let path = path.to_path_buf();
            move |source| Error::Io { tier: name, op, path, offset: None, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io_err("create directory", &self.dir))?;
        let path = self.dir.join(SLOT_FILE);
        if !path.exists() {
            format_new(&path, &layout).map_err(|(op, source)| Error::Io {
                tier: name.clone(),
                op,
                path: path.clone(),
                offset: None,
                source,
            })?;
        }
        let (file, direct_io) =
            open_slot_file(&path, self.direct_io, self.sync_writes).map_err(io_err("open", &path))?;
        lock_exclusive(&file).map_err(|e| Error::Corrupt {
            tier: name.clone(),
            path: path.clone(),
            reason: format!("cannot lock the slot file ({e}); is another kvtier using this data dir?"),
        })?;
        let pool = BufPool::new(self.buffer_pool);
        let file_len = file.metadata().map_err(io_err("stat", &path))?.len();
        let store_id = check_superblock(&file, &layout, file_len, &pool).map_err(|reason| Error::Corrupt {
            tier: name.clone(),
            path: path.clone(),
            reason,
        })?;
        let recovered = recover::scan(&file, &layout, store_id, &pool).map_err(io_err("recover (pread)", &path))?;
        let engine: Arc<dyn IoEngine> = Arc::new(PsyncEngine::new(file, runtime.clone()));
        let tier =
            SsdTier::assemble(name, self.dir, path, layout, engine, pool, store_id, self.max_block_size, direct_io);
        tier.restore(recovered);
        tracing::info!(tier = %tier, blocks = tier.map.len(), direct_io, "ssd tier ready");
        Ok(tier)
    }
}

fn open_slot_file(path: &Path, direct: bool, sync: bool) -> std::io::Result<(File, bool)> {
    let open = |direct: bool| {
        let mut flags = libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        if sync {
            flags |= libc::O_DSYNC;
        }
        OpenOptions::new().read(true).write(true).custom_flags(flags).open(path)
    };
    if direct {
        match open(true) {
            Ok(f) if probe_direct(&f) => return Ok((f, true)),
            Ok(_) | Err(_) => {
                tracing::warn!(path = %path.display(), "the filesystem refuses O_DIRECT; using buffered I/O (reads may come from the page cache)");
            }
        }
    }
    Ok((open(false)?, false))
}

/// True if an aligned O_DIRECT read works on `file` (some filesystems accept the flag at
/// open time and fail every I/O).
fn probe_direct(file: &File) -> bool {
    let mut buf = io::BufPool::new(0).take(PAGE as usize);
    match io::pread_all(file, buf.as_mut_slice(), 0) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::UnexpectedEof,
    }
}

fn lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a preallocated slot file with a fresh superblock. It is built under a temporary
/// name and renamed into place, so a crash never leaves a half-formatted file at `path`.
fn format_new(path: &Path, layout: &SlabLayout) -> Result<(), (&'static str, std::io::Error)> {
    use std::os::fd::AsRawFd;
    let tmp = path.with_extension("kvt.new");
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(|e| ("create", e))?;
    let len = DATA_START + layout.capacity();
    // SAFETY: fallocate on a descriptor we own.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            let _ = std::fs::remove_file(&tmp);
            return Err(("preallocate (fallocate)", e));
        }
        tracing::warn!("the filesystem cannot preallocate; the slot file will be sparse");
        file.set_len(len).map_err(|e| ("ftruncate", e))?;
    }
    let mut page = vec![0u8; HEADER as usize];
    Superblock { region_size: layout.region_size, regions: layout.regions, store_id: rand_u64(), version: VERSION }
        .encode(&mut page);
    io::pwritev_all(&file, &[&page], 0).map_err(|e| ("write superblock", e))?;
    file.sync_all().map_err(|e| ("fsync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| ("rename", e))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ("fsync directory", e))?;
    }
    Ok(())
}

fn check_superblock(file: &File, layout: &SlabLayout, file_len: u64, pool: &Arc<BufPool>) -> Result<u64, String> {
    let mut page = pool.take(HEADER as usize);
    io::pread_all(file, page.as_mut_slice(), 0).map_err(|e| format!("cannot read the superblock: {e}"))?;
    let sb = Superblock::decode(page.as_ref())?;
    if sb.region_size != layout.region_size || sb.regions != layout.regions {
        return Err(format!(
            "formatted with region_size {} and {} regions ({}), but the configuration asks for region_size {} and {} regions ({}); \
             restore the old ssd.capacity/ssd.region_size or use a new data dir",
            sb.region_size,
            sb.regions,
            exact_bytes(sb.region_size * sb.regions as u64),
            layout.region_size,
            layout.regions,
            exact_bytes(layout.capacity()),
        ));
    }
    let expected = DATA_START + layout.capacity();
    if file_len < expected {
        return Err(format!("truncated: {file_len} bytes, a store of this size needs {expected}"));
    }
    if sb.version < VERSION {
        // Before any packed region is written: a build of the old format must refuse the
        // file from now on rather than take packed regions for free space.
        let mut page = pool.take(HEADER as usize);
        Superblock { version: VERSION, ..sb }.encode(page.as_mut_slice());
        io::pwritev_all(file, &[page.as_ref()], 0).map_err(|e| format!("cannot upgrade the superblock: {e}"))?;
        file.sync_all().map_err(|e| format!("cannot upgrade the superblock (fsync): {e}"))?;
        tracing::info!(from = sb.version, to = VERSION, "ssd: slot file format upgraded (its data stays as it is)");
    }
    Ok(sb.store_id)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    RandomState::new().hash_one((t, std::process::id()))
}
