//! `kvtier`: run a node (`serve`), talk to one (`put`, `get`, `lookup`, `delete`, `stat`),
//! copy files to and from its named objects (`cp`), or watch the whole block path once
//! (`demo`).

mod cp;
mod demo;

use std::{
    io::{Read, Write},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kvtier_blockmgr::{Client, Config, Durability, GetItem, PutItem, Stats, config::LogFormat};
use kvtier_server::{RunningServer, termination};
use kvtier_tiers::human_bytes;

#[derive(Parser, Debug)]
#[command(name = "kvtier", version, about = "A tiered, replicated block store for KV caches and checkpoints")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. With no options: CPU 1 GiB + SSD 8 GiB under ./kvtier-data, gRPC on
    /// 127.0.0.1:50051, metrics on 127.0.0.1:50052.
    Serve(ServeArgs),
    /// Store one block read from FILE (or stdin).
    Put {
        #[command(flatten)]
        target: Target,
        /// Key as hex (1..=64 bytes).
        #[arg(long)]
        key: String,
        /// When to acknowledge: in the fastest tier (cache) or on SSD (disk).
        #[arg(long, value_enum, default_value_t = DurabilityArg::Cache)]
        durability: DurabilityArg,
        /// File to read, or - for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Fetch one block to stdout or a file; exits 1 if it is not there.
    Get {
        #[command(flatten)]
        target: Target,
        /// Key as hex.
        #[arg(long)]
        key: String,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Show the longest present prefix of a key list and the tier of each block.
    Lookup {
        #[command(flatten)]
        target: Target,
        /// Keys as hex, in order.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
    /// Delete blocks from every tier.
    Delete {
        #[command(flatten)]
        target: Target,
        /// Keys as hex.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
    /// Copy files to or from named objects: one side a local path, the other
    /// kvtier://NAMESPACE/PATH (%2F for a '/' in the namespace). A URL ending in '/' is a
    /// directory to copy into.
    Cp {
        /// Server address: host:port, http://host:port or unix:///path.
        #[arg(long, env = "KVTIER_SERVER", default_value = "127.0.0.1:50051")]
        server: String,
        /// Copy a directory tree, or every object under a prefix.
        #[arg(short, long)]
        recursive: bool,
        /// When an uploaded object is acknowledged: on SSD (disk), also queued for Blob
        /// (write-back), or in the fastest tier (cache, evictable).
        #[arg(long, value_enum, default_value_t = DurabilityArg::Disk)]
        durability: DurabilityArg,
        /// Tries again of a file whose upload failed transiently (no node to hold a copy,
        /// backpressure) or with an unknown outcome, which is safe: the same bytes become a
        /// newer version. Exit status 3: a file's outcome stayed unknown.
        #[arg(long, default_value_t = 3)]
        retries: u32,
        /// From: a file, a directory (with -r) or a kvtier:// URL.
        src: String,
        /// To.
        dst: String,
    },
    /// Show usage and counters of a node.
    Stat {
        /// Server address: host:port, http://host:port or unix:///path.
        #[arg(long, env = "KVTIER_SERVER", default_value = "127.0.0.1:50051")]
        server: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a node in-process, push blocks through memory and SSD, read them back, print
    /// stats, and stop.
    Demo {
        /// Where the demo keeps its data (a fresh temporary directory by default).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// kvtier.toml; without it the embedded defaults apply.
    #[arg(long, env = "KVTIER_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long, env = "KVTIER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides `server.listen` (gRPC TCP address).
    #[arg(long, env = "KVTIER_LISTEN")]
    listen: Option<String>,
    /// Overrides `server.metrics_listen` (empty disables it).
    #[arg(long, env = "KVTIER_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Overrides `lmcache.listen`: serve LMCache's `lm://` protocol there (empty: not).
    #[arg(long, env = "KVTIER_LMCACHE_LISTEN")]
    lmcache_listen: Option<String>,
    /// Overrides `cluster.node_id` (default: the host name).
    #[arg(long, env = "KVTIER_NODE_ID")]
    node_id: Option<String>,
    /// Overrides `cluster.advertise`, the address the other members dial (on Kubernetes,
    /// `KVTIER_ADVERTISE=$(POD_IP):50051` from the downward API).
    #[arg(long, env = "KVTIER_ADVERTISE")]
    advertise: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(clap::Args, Debug)]
struct Target {
    /// Server address: host:port, http://host:port or unix:///path.
    #[arg(long, env = "KVTIER_SERVER", default_value = "127.0.0.1:50051")]
    server: String,
    /// Namespace (tenant/model/layout).
    #[arg(long)]
    namespace: String,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum DurabilityArg {
    Cache,
    Disk,
    WriteBack,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Cache => Durability::Cache,
            DurabilityArg::Disk => Durability::LocalDisk,
            DurabilityArg::WriteBack => Durability::WriteBack,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            // 3: a write whose outcome is unknown (it may have landed); 2: anything else.
            std::process::exit(if e.downcast_ref::<cp::OutcomeUnknown>().is_some() { 3 } else { 2 });
        }
    }
}

async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve(args) => serve(args).await.map(|()| 0),
        Command::Put { target, key, durability, file } => {
            init_logging("warn", LogFormat::Text);
            let data = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).context("reading stdin")?;
                buf
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let client = connect(&target.server).await?;
            let len = data.len();
            let report = client
                .put(&target.namespace, &[PutItem::new(parse_key(&key)?, data.into())], durability.into())
                .await?;
            let r = &report[0];
            if let Err((code, msg)) = &r.result {
                bail!("put refused ({code}): {msg}");
            }
            let tier = r.tier.map_or("?", |t| t.as_str());
            eprintln!("{} {} bytes -> {tier}", if r.existed { "already present:" } else { "stored" }, len);
            Ok(0)
        }
        Command::Get { target, key, output } => {
            init_logging("warn", LogFormat::Text);
            let wire_key = parse_key(&key)?;
            let client = connect(&target.server).await?;
            match client.get(&target.namespace, &[wire_key]).await?.remove(0) {
                GetItem::Hit { data, tier, .. } => {
                    match output {
                        Some(path) => {
                            std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?
                        }
                        None => std::io::stdout().write_all(&data).context("writing stdout")?,
                    }
                    eprintln!("{} bytes from {tier}", data.len());
                    Ok(0)
                }
                GetItem::Miss { reason, message } => {
                    eprintln!("miss: {}/{key}: {message} ({reason:?})", target.namespace);
                    Ok(1)
                }
            }
        }
        Command::Cp { server, recursive, durability, retries, src, dst } => {
            init_logging("warn", LogFormat::Text);
            cp::cp(cp::CpArgs { server, src, dst, recursive, durability: durability.into(), retries }).await.map(|()| 0)
        }
        Command::Lookup { target, keys } => {
            init_logging("warn", LogFormat::Text);
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| parse_key(k)).collect::<Result<_>>()?;
            let client = connect(&target.server).await?;
            let tiers = client.lookup(&target.namespace, &keys).await?;
            println!("prefix {} of {}", tiers.len(), keys.len());
            for (k, t) in keys.iter().zip(&tiers) {
                println!("{} {t}", hex::encode(k));
            }
            Ok(0)
        }
        Command::Delete { target, keys } => {
            init_logging("warn", LogFormat::Text);
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| parse_key(k)).collect::<Result<_>>()?;
            let client = connect(&target.server).await?;
            for (k, d) in keys.iter().zip(client.delete(&target.namespace, &keys).await?) {
                println!("{} {}", hex::encode(k), if d { "deleted" } else { "absent" });
            }
            Ok(0)
        }
        Command::Stat { server, json } => {
            init_logging("warn", LogFormat::Text);
            let stats = connect(&server).await?.stats().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", render_stats(&stats));
            }
            Ok(0)
        }
        Command::Demo { data_dir } => {
            init_logging("warn", LogFormat::Text);
            demo::run(data_dir).await.map(|()| 0)
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    if let Some(id) = args.node_id {
        config.cluster.node_id = id;
    }
    if let Some(addr) = args.advertise {
        config.cluster.advertise = addr;
    }
    if let Some(l) = args.lmcache_listen {
        config.lmcache.listen = l;
    }
    if let Some(m) = args.metrics_listen {
        config.server.metrics_listen = m;
    }
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    init_logging(&config.log.level, config.log.format);
    let server = RunningServer::start(config).await?;
    let stop = termination(); // the handlers are in place before anyone is told we are ready
    println!("{}", server.ready_line());
    server.run_until(stop).await?;
    Ok(())
}

fn parse_key(hex_key: &str) -> Result<Vec<u8>> {
    let key = hex::decode(hex_key).with_context(|| format!("--key {hex_key:?} is not hex"))?;
    kvtier_tiers::Key::new(&key).with_context(|| format!("--key {hex_key}"))?;
    Ok(key)
}

fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The table `kvtier stat` prints.
pub(crate) fn render_stats(s: &Stats) -> String {
    let mut out = format!(
        "kvtier {}  up {}s  {} blocks indexed\n{:<5} {:<40} {:>22} {:>8} {:>8} {:>10} {:>10} {:>9}\n",
        s.version,
        s.uptime_seconds,
        s.index_blocks,
        "tier",
        "name",
        "used / capacity",
        "blocks",
        "hits",
        "read",
        "written",
        "evictions"
    );
    for t in &s.tiers {
        // Blob reports u64::MAX: it never fills.
        let used = match t.capacity_bytes {
            u64::MAX => format!("{} (unbounded)", human_bytes(t.used_bytes)),
            cap => {
                let pct = (100 * t.used_bytes).checked_div(cap).unwrap_or(0);
                format!("{} / {} ({pct}%)", human_bytes(t.used_bytes), human_bytes(cap))
            }
        };
        out += &format!(
            "{:<5} {:<40} {:>22} {:>8} {:>8} {:>10} {:>10} {:>9}\n",
            t.tier.as_str(),
            t.name,
            used,
            t.blocks,
            t.hits,
            human_bytes(t.bytes_read),
            human_bytes(t.bytes_written),
            t.evictions
        );
    }
    out += &format!(
        "puts {}  gets {} (hits {}, misses {})  demotions {}  promotions {}  checksum failures {}  dropped {}\n",
        s.puts, s.gets, s.hits, s.misses, s.demotions, s.promotions, s.checksum_failures, s.dropped
    );
    if s.flushed_blocks + s.unflushed_bytes + s.flush_queue > 0 {
        out += &format!(
            "flushed to blob {}  unflushed {}  flush queue {}\n",
            s.flushed_blocks,
            human_bytes(s.unflushed_bytes),
            s.flush_queue
        );
    }
    if !s.namespaces.is_empty() {
        out += &format!(
            "\n{:<64} {:>10} {:>10} {:>10} {:>8} {:>10}\n",
            "namespace", "puts", "hits", "misses", "hit rate", "read"
        );
        for n in &s.namespaces {
            let gets = n.hits + n.misses;
            let rate = if gets == 0 { "-".to_string() } else { format!("{:.1}%", 100.0 * n.hits as f64 / gets as f64) };
            out += &format!(
                "{:<64} {:>10} {:>10} {:>10} {:>8} {:>10}\n",
                n.namespace,
                n.puts,
                n.hits,
                n.misses,
                rate,
                human_bytes(n.bytes_read)
            );
        }
    }
    out
}

/// A client of `server`, over TLS when `KVTIER_TLS_CA` names the CA (see `ClientTls::from_env`).
async fn connect(server: &str) -> Result<Client> {
    let tls = kvtier_blockmgr::ClientTls::from_env()?;
    Ok(Client::connect_with(server, tls.as_ref()).await?)
}
