//! Object-store emulators for tests and benchmarks: Azurite (Azure Blob) and moto (S3), each
//! started by its script under `scripts/`, which installs it on first use.

/// Runs `scripts/<script> start DIR [PORT]`, which prints "<endpoint> <pid>".
fn start_emulator(script: &str, dir: &std::path::Path, port: Option<&str>, host: &str) -> (String, i32) {
    let path = format!("{}/../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&path)
        .arg("start")
        .arg(dir)
        .args(port)
        .env("KVTIER_LISTEN_HOST", host)
        .output()
        .unwrap_or_else(|e| panic!("running {path}: {e}"));
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).expect("utf-8");
    let (endpoint, pid) = line.trim().split_once(' ').expect("endpoint and pid");
    (endpoint.into(), pid.parse().expect("a pid"))
}

/// A running S3-compatible server (moto, from PyPI) with the bucket `kvtier`, started by
/// `scripts/moto.sh` (which installs it on first use); killed when dropped.
#[derive(Debug)]
pub struct S3Server {
    /// Its endpoint, e.g. `http://127.0.0.1:41235`.
    pub endpoint: String,
    pid: i32,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts one on a free port. Panics with its log if it cannot.
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (endpoint, pid) = start_emulator("moto.sh", dir.path(), None, "127.0.0.1");
        S3Server { endpoint, pid, _dir: dir }
    }

    /// `object_store`'s options for it (moto takes any credentials).
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // SAFETY: signalling the process the script started for us.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

/// The Azure Blob emulator's well-known account key (account `devstoreaccount1`).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite with the container `kvtier`, started by `scripts/azurite.sh` (which
/// installs it from npm on first use); killed when dropped.
#[derive(Debug)]
pub struct Azurite {
    /// Its Blob endpoint, e.g. `http://127.0.0.1:41234/devstoreaccount1`.
    pub endpoint: String,
    host: String,
    pid: i32,
    dir: tempfile::TempDir,
}

impl Azurite {
    /// Starts one on a free port of 127.0.0.1 with a fresh workspace. Panics with its log
    /// if it cannot.
    pub fn start() -> Azurite {
        Self::start_on("127.0.0.1")
    }

    /// Starts one listening on `host` (an address of this machine, e.g. a test network's
    /// bridge).
    pub fn start_on(host: &str) -> Azurite {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (endpoint, pid) = start_emulator("azurite.sh", dir.path(), None, host);
        Azurite { endpoint, host: host.to_string(), pid, dir }
    }

    /// Stops it (SIGTERM, so it saves what it holds) and waits until it is gone: its
    /// endpoint then refuses connections, as a dead Blob endpoint does. Never SIGKILL in a
    /// fault test: Azurite keeps its index in memory and saves it every few seconds, so a
    /// `kill -9` makes it forget blobs it acknowledged, which real Azure never does.
    pub fn stop(&mut self) {
        // SAFETY: signalling the process the script started for us. (SIGCONT: a frozen one
        // handles SIGTERM only once it runs.)
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
            libc::kill(self.pid, libc::SIGCONT);
        }
        // Saving its index takes a while with gigabytes of blobs on a busy machine (6 s was
        // too short for a long fault run's).
        for _ in 0..3000 {
            // Gone, or a zombie nobody reaps (its parent, the script, has exited).
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("azurite (pid {}) did not stop within 60 s of SIGTERM", self.pid);
    }

    /// Freezes it (SIGSTOP): connections are accepted by the kernel but never answered, as
    /// an overloaded or hung endpoint does. [`Azurite::thaw`] resumes it.
    pub fn freeze(&self) {
        // SAFETY: signalling the process the script started for us.
        unsafe { libc::kill(self.pid, libc::SIGSTOP) };
    }

    /// Resumes it after [`Azurite::freeze`].
    pub fn thaw(&self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }

    /// Starts it again on the same port and workspace, after [`Azurite::stop`].
    pub fn resume(&mut self) {
        let port = self.endpoint.rsplit(':').next().and_then(|p| p.split('/').next()).expect("a port").to_string();
        let (endpoint, pid) = start_emulator("azurite.sh", self.dir.path(), Some(&port), &self.host);
        assert_eq!(endpoint, self.endpoint, "resumed on the same endpoint");
        self.pid = pid;
    }

    /// `object_store`'s options for it (the emulator's account and key).
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("azure_storage_account_name", "devstoreaccount1"),
            ("azure_storage_account_key", AZURITE_KEY),
            ("azure_storage_endpoint", self.endpoint.as_str()),
            ("azure_allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        // SAFETY: signalling the process the script started for us.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}
