//! `kvtier serve`: the gRPC service on TCP and a Unix socket, `/metrics` and `/healthz`
//! over HTTP, and a graceful shutdown that persists memory-only blocks to SSD.

mod objects;
mod progress;
mod service;
mod shm;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use axum::{Router, extract::State, routing::get};
use kvtier_proto::{
    peer::v1::peer_server::PeerServer,
    v1::{block_store_server::BlockStoreServer, objects_server::ObjectsServer},
};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinHandle,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;

pub use kvtier_blockmgr::peer::PeerService;

pub use self::{objects::ObjectService, progress::Bars, service::BlockService};
use kvtier_client::{MAX_FRAME, MAX_MESSAGE};

use kvtier_blockmgr::{Config, Error, Manager, Metrics, Objects};

/// A started server: where it listens, and how to stop it.
#[derive(Debug)]
pub struct RunningServer {
    /// The gRPC TCP address actually bound (port 0 resolved).
    pub grpc_addr: SocketAddr,
    /// The gRPC Unix socket, if enabled.
    pub unix_socket: Option<PathBuf>,
    /// The HTTP metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The shared-memory data plane's socket, if enabled.
    pub shm_socket: Option<PathBuf>,
    /// LMCache's `lm://` listener, if enabled.
    pub lmcache_addr: Option<SocketAddr>,
    /// The S3 endpoint, if enabled.
    pub s3_addr: Option<SocketAddr>,
    objects: Objects,
    config: Config,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), String>>>,
}

impl RunningServer {
    /// Opens the manager and binds every listener. Returns once the server is accepting.
    pub async fn start(config: Config) -> Result<Self, Error> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::Config(format!("data_dir {}: cannot create it: {e}", config.data_dir.display())))?;
        let bind_err = |addr: &str| {
            let addr = addr.to_string();
            move |source| Error::Bind { addr, source }
        };
        // Bound before the manager registers in etcd: members that see this node at once
        // (to hand it blocks) queue on the port until it serves, instead of being refused.
        let tcp = TcpListener::bind(&config.server.listen).await.map_err(bind_err(&config.server.listen))?;
        let grpc_addr = tcp.local_addr().map_err(bind_err(&config.server.listen))?;
        let objects = Objects::open(&config, Metrics::new().with_progress(std::sync::Arc::new(progress::Bars))).await?;
        let unix = if config.server.unix_socket.as_os_str().is_empty() {
            None
        } else {
            let path = config.in_data_dir(&config.server.unix_socket);
            // A socket file left by a killed server; the data dir lock proves none is running.
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).map_err(bind_err(&path.display().to_string()))?;
            Some((path, listener))
        };
        let shm = if config.shm.socket.as_os_str().is_empty() {
            None
        } else {
            let path = config.in_data_dir(&config.shm.socket);
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).map_err(bind_err(&path.display().to_string()))?;
            crate::shm::open_socket_permissions(&path);
            Some((path, listener))
        };
        let metrics = if config.server.metrics_listen.is_empty() {
            None
        } else {
            let l = TcpListener::bind(&config.server.metrics_listen)
                .await
                .map_err(bind_err(&config.server.metrics_listen))?;
            Some(l)
        };
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        let lmcache = if config.lmcache.listen.is_empty() {
            None
        } else {
            let l = TcpListener::bind(&config.lmcache.listen).await.map_err(bind_err(&config.lmcache.listen))?;
            Some(l)
        };
        let lmcache_addr = lmcache.as_ref().and_then(|l| l.local_addr().ok());
        let s3 = if config.s3.listen.is_empty() {
            None
        } else {
            Some(TcpListener::bind(&config.s3.listen).await.map_err(bind_err(&config.s3.listen))?)
        };
        let s3_addr = s3.as_ref().and_then(|l| l.local_addr().ok());

        let manager = objects.node().clone();
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let tls = server_tls(&config.server.tls)?;
        let grpc = |tls: Option<tonic::transport::ServerTlsConfig>| -> Result<_, Error> {
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).map_err(|e| Error::Config(format!("server.tls: {e}")))?;
            }
            Ok(builder
                .initial_stream_window_size(8 << 20)
                .initial_connection_window_size(32 << 20)
                .http2_adaptive_window(Some(false))
                .max_frame_size(Some(MAX_FRAME))
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_routes(routes(&objects, &config.server)))
        };
        let incoming = TcpIncoming::from(tcp).with_nodelay(Some(true));
        let (signal, router) = (wait_for(stopped.clone()), grpc(tls)?);
        tasks.push(tokio::spawn(async move {
            router.serve_with_incoming_shutdown(incoming, signal).await.map_err(|e| format!("grpc tcp: {e}"))
        }));
        let unix_router = grpc(None)?;
        let unix_socket = unix.map(|(path, listener)| {
            let signal = wait_for(stopped.clone());
            let router = unix_router;
            tasks.push(tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal)
                    .await
                    .map_err(|e| format!("grpc unix: {e}"))
            }));
            path
        });
        let shm_socket = shm.map(|(path, listener)| {
            let serve = crate::shm::serve(
                listener,
                manager.clone(),
                config.shm.clone(),
                config.server.max_batch_keys,
                stopped.clone(),
            );
            tasks.push(tokio::spawn(serve));
            path
        });
        if let Some(listener) = lmcache {
            let settings = kvtier_lmcache::LmSettings {
                namespace_prefix: config.lmcache.namespace_prefix.clone(),
                durability: config.lmcache.durability()?,
                idle_timeout: config.server.stream_idle_timeout,
            };
            tasks.push(tokio::spawn(kvtier_lmcache::serve(listener, manager.clone(), settings, stopped.clone())));
        }
        if let Some(listener) = s3 {
            let serve = kvtier_s3::serve(
                listener,
                objects.clone(),
                config.s3.clone(),
                config.server.stream_idle_timeout,
                wait_for(stopped.clone()),
            );
            tasks.push(tokio::spawn(serve));
        }
        if let Some(listener) = metrics {
            let app = Router::new()
                .route("/metrics", get(metrics_text))
                .route("/healthz", get(healthz))
                .route("/livez", get(|| async { "ok\n" }))
                .with_state(manager.clone());
            let signal = wait_for(stopped.clone());
            tasks.push(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(signal)
                    .await
                    .map_err(|e| format!("metrics http: {e}"))
            }));
        }
        tracing::info!(
            grpc = %grpc_addr,
            unix = ?unix_socket,
            shm = ?shm_socket,
            metrics = ?metrics_addr,
            lmcache = ?lmcache_addr,
            s3 = ?s3_addr,
            data_dir = %config.data_dir.display(),
            "kvtier serving"
        );
        Ok(RunningServer {
            grpc_addr,
            unix_socket,
            metrics_addr,
            shm_socket,
            lmcache_addr,
            s3_addr,
            objects,
            config,
            stop,
            tasks,
        })
    }

    /// The node behind the server.
    pub fn manager(&self) -> &Manager {
        self.objects.node()
    }

    /// The named objects the server serves.
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// One JSON line describing where the server listens (printed by `kvtier serve`).
    pub fn ready_line(&self) -> String {
        serde_json::json!({
            "event": "ready",
            "version": env!("CARGO_PKG_VERSION"),
            "grpc": self.grpc_addr.to_string(),
            "unix": self.unix_socket.as_ref().map(|p| format!("unix://{}", p.display())),
            "metrics": self.metrics_addr.map(|a| a.to_string()),
            "shm": self.shm_socket.as_ref().map(|p| p.display().to_string()),
            "lmcache": self.lmcache_addr.map(|a| a.to_string()),
            "s3": self.s3_addr.map(|a| a.to_string()),
        })
        .to_string()
    }

    /// Stops accepting, waits for requests in flight, persists memory-only blocks to SSD
    /// (if configured), then stops the node's background work and joins it
    /// ([`Manager::shutdown`]), all within `server.shutdown_timeout`.
    pub async fn shutdown(self) -> Result<(), Error> {
        let RunningServer { objects, config, stop, tasks, unix_socket, shm_socket, .. } = self;
        let manager = objects.node();
        let _ = stop.send(true);
        let drain = async {
            for t in tasks {
                match t.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "listener ended with an error"),
                    Err(e) => tracing::warn!(error = %e, "listener task failed"),
                }
            }
            manager.settle().await;
            if config.server.persist_on_shutdown {
                manager.persist_memory().await;
            }
            manager.shutdown().await;
        };
        if tokio::time::timeout(config.server.shutdown_timeout, drain).await.is_err() {
            tracing::warn!(timeout = ?config.server.shutdown_timeout, "shutdown timed out; exiting with work unfinished");
        }
        for path in [unix_socket, shm_socket].into_iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("kvtier stopped");
        Ok(())
    }

    /// Waits until a listener fails (returning its error) or `signal` completes, then shuts
    /// down gracefully.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let failed = futures::future::select_all(self.tasks.iter_mut());
        let (outcome, finished) = tokio::select! {
            _ = signal => (Ok(()), None),
            (res, i, _) = failed => (Err(Error::Server(match res {
                Ok(Ok(())) => "a listener stopped unexpectedly".into(),
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            })), Some(i)),
        };
        if let Some(i) = finished {
            self.tasks.remove(i);
        }
        self.shutdown().await?;
        outcome
    }
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|&s| s).await;
}

/// "ok", or 503 and "degraded: why" while write-back bytes wait too long for Blob
/// ([`Manager::degraded`]): for readiness and alerts. `/livez` only says the process answers
/// (a liveness probe that restarted a node for a Blob outage would make things worse).
async fn healthz(State(manager): State<Manager>) -> (axum::http::StatusCode, String) {
    match manager.degraded() {
        None => (axum::http::StatusCode::OK, "ok\n".into()),
        Some(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("degraded: {why}\n")),
    }
}

async fn metrics_text(State(manager): State<Manager>) -> String {
    manager.refresh_gauges().await;
    manager.metrics().encode()
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed by this call, not when the
/// future is first polled: a SIGTERM right after the ready line (a supervisor, a test)
/// must shut the node down cleanly, not kill it with the default action.
pub fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}

/// The next message of a client stream, `None` at its end. Silence for `idle` abandons the
/// stream: DEADLINE_EXCEEDED, saying `what` that means.
async fn next_message<T>(
    stream: &mut tonic::Streaming<T>,
    idle: Duration,
    what: &str,
) -> Result<Option<T>, tonic::Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no message for {}; {what}",
            humantime::format_duration(idle)
        ))),
        Ok(result) => result,
    }
}

/// The gRPC services of a node serving `objects` (and the node under them): the block API,
/// named objects and what members ask each other. The TCP and Unix listeners serve them;
/// so can anything else that carries gRPC requests (see [`kvtier_client::Transport`]).
pub fn routes(objects: &Objects, server: &kvtier_blockmgr::config::ServerConfig) -> tonic::service::Routes {
    let service = BlockStoreServer::new(BlockService::new(objects.node().clone(), server.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let object_service = ObjectsServer::new(ObjectService::new(objects.clone(), server.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let peer = PeerServer::new(PeerService::new(objects.clone(), server.chunk_size.0 as usize))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tonic::service::Routes::new(service).add_service(object_service).add_service(peer)
}

/// The TCP port's TLS settings, read from `[server.tls]` (none when it is off).
fn server_tls(tls: &kvtier_blockmgr::config::TlsConfig) -> Result<Option<tonic::transport::ServerTlsConfig>, Error> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    if !tls.enabled() {
        return Ok(None);
    }
    let kvtier_blockmgr::config::TlsPems { cert, key, ca } = tls.read_pems()?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = ca {
        config = config.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(!tls.require_client_cert);
    }
    Ok(Some(config))
}
