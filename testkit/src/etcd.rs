//! A one-member etcd for a test or a benchmark.

use std::process::Command;

/// A one-member etcd (Debian's etcd-server, which `scripts/etcd.sh` installs), killed on drop.
#[derive(Debug)]
pub struct Etcd {
    /// Its client URL, e.g. `http://127.0.0.1:41235`.
    pub endpoint: String,
    pid: i32,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// One on loopback.
    pub fn start() -> Etcd {
        Self::start_on("127.0.0.1")
    }

    /// One listening on `host` (a test network's bridge).
    pub fn start_on(host: &str) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/etcd.sh");
        let out = Command::new(script)
            .arg("start")
            .arg(dir.path())
            .env("KVTIER_LISTEN_HOST", host)
            .output()
            .expect("running scripts/etcd.sh");
        assert!(out.status.success(), "etcd did not start: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).unwrap();
        let (endpoint, pid) = line.trim().split_once(' ').expect("\"<endpoint> <pid>\"");
        Etcd { endpoint: endpoint.to_string(), pid: pid.parse().unwrap(), _dir: dir }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // SAFETY: a plain kill of the etcd this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}
