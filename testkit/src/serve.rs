//! `kvtier serve` as a process: started on a config, found by the JSON line it prints when
//! ready (its listeners' addresses, ports chosen by the OS), its stderr kept in a file.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Where a started node listens: the fields of its ready line.
#[derive(Debug, Clone)]
pub struct Addrs {
    /// The gRPC address (`host:port`).
    pub grpc: String,
    /// The Unix socket, when it has one.
    pub unix: Option<String>,
    /// The metrics and health address.
    pub metrics: Option<String>,
    /// The shared-memory socket.
    pub shm: Option<String>,
    /// The `lm://` listener.
    pub lmcache: Option<String>,
    /// The S3 endpoint.
    pub s3: Option<String>,
}

/// Spawns `bin serve --config config` (under `prefix`, e.g. `ip netns exec NAME`, when not
/// empty), with `RUST_LOG` = `log`, its stderr appended to a new file in `dir`, and waits
/// (a minute at most) for its ready line. On failure, what it logged.
pub fn spawn(
    bin: &Path,
    config: &Path,
    dir: &Path,
    prefix: &[&str],
    log: &str,
) -> Result<(Child, Addrs, PathBuf), String> {
    let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let stderr_path = dir.join(format!("kvtier-{n}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| format!("{}: {e}", stderr_path.display()))?;
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"event\":\"ready\"") {
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => {
            let field = |k: &str| {
                let at = line.find(&format!("\"{k}\":\""))? + k.len() + 4;
                line[at..].split('"').next().map(String::from)
            };
            let grpc = field("grpc").ok_or_else(|| format!("a ready line without its gRPC address: {line}"))?;
            let addrs = Addrs {
                grpc,
                unix: field("unix"),
                metrics: field("metrics"),
                shm: field("shm"),
                lmcache: field("lmcache"),
                s3: field("s3"),
            };
            Ok((child, addrs, stderr_path))
        }
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(format!(
                "kvtier serve did not become ready ({status}); it logged:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            ))
        }
    }
}

/// A plain HTTP GET of `path` on `addr` (a node's metrics port): the status and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let status =
        head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(head.to_string()))?;
    Ok((status, body.to_string()))
}

/// The value of the unlabelled metric `kvtier_<name>` in a `/metrics` text (labelled
/// series: their sum).
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    let plain = format!("kvtier_{name} ");
    let labelled = format!("kvtier_{name}{{");
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with(&plain) || l.starts_with(&labelled))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
