//! The simulated network of `kvtier-bench sim`: every node's gRPC services (the same
//! `Routes` a `kvtier serve` listens with) in one process, reached by a [`Transport`] that
//! hands each request straight to the target's services instead of a socket. The client
//! and server code on both ends is kvtier's own, message encoding included; only TCP and
//! HTTP/2 are left out, so a thousand nodes fit in one process. Every request and the
//! bytes of its bodies are counted, by gRPC method and by the node that answered.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Frame;
use kvtier_blockmgr::cluster::Dialer;
use kvtier_client::{Client, Transport, TransportError};
use tonic::service::Routes;
use tower::ServiceExt;

/// What crossed the network since the last [`SimNet::take`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Traffic {
    /// Requests and body bytes (both ways), by gRPC method (`Peer/Digests`, ...).
    pub(crate) by_method: HashMap<String, (u64, u64)>,
    /// Response body bytes, by the node that answered.
    pub(crate) served: HashMap<String, u64>,
}

impl Traffic {
    pub(crate) fn requests(&self) -> u64 {
        self.by_method.values().map(|(n, _)| n).sum()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.by_method.values().map(|(_, b)| b).sum()
    }

    /// Requests to methods whose name contains `part`.
    pub(crate) fn requests_to(&self, part: &str) -> u64 {
        self.by_method.iter().filter(|(m, _)| m.contains(part)).map(|(_, (n, _))| n).sum()
    }
}

/// The nodes and what they sent each other.
#[derive(Default)]
pub(crate) struct SimNet {
    nodes: RwLock<HashMap<String, Routes>>,
    traffic: Mutex<Traffic>,
}

impl SimNet {
    /// Node `id` answers at `sim:<id>` from now on.
    pub(crate) fn attach(&self, id: &str, routes: Routes) {
        self.nodes.write().expect("not poisoned").insert(id.to_string(), routes);
    }

    /// Node `id` is gone: requests to it fail as a refused connection does (UNAVAILABLE).
    pub(crate) fn detach(&self, id: &str) {
        self.nodes.write().expect("not poisoned").remove(id);
    }

    /// Requests so far (since the last [`SimNet::take`]).
    pub(crate) fn peek_requests(&self) -> u64 {
        self.traffic.lock().expect("not poisoned").requests()
    }

    /// The traffic so far, and a fresh count from here.
    pub(crate) fn take(&self) -> Traffic {
        std::mem::take(&mut *self.traffic.lock().expect("not poisoned"))
    }

    /// How nodes reach `sim:<id>` addresses over this network.
    pub(crate) fn dialer(self: &Arc<Self>) -> Dialer {
        let net = self.clone();
        Arc::new(move |addr: &str| {
            let (net, id) = (net.clone(), addr.trim_start_matches("sim:").to_string());
            Box::pin(async move { Ok(Client::over(net.transport(id))) })
        })
    }

    /// Requests to node `id`, counted.
    fn transport(self: &Arc<Self>, id: String) -> Transport {
        let net = self.clone();
        let service = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
            let (net, id) = (net.clone(), id.clone());
            async move {
                let routes = net.nodes.read().expect("not poisoned").get(&id).cloned();
                let Some(routes) = routes else {
                    return Err(TransportError(Box::new(tonic::Status::unavailable(format!("{id} is down")))));
                };
                let method = request.uri().path().rsplit('.').next().unwrap_or("?").to_string();
                let counted = net.counter(&method, None);
                let request = request.map(|body| tonic::body::Body::new(Counted { body, counted }));
                let response = routes.oneshot(request).await.unwrap_or_else(|e: Infallible| match e {});
                let counted = net.counter(&method, Some(&id));
                Ok(response.map(|body| tonic::body::Body::new(Counted { body, counted })))
            }
        });
        Transport::new(service)
    }

    /// Where one body's bytes are added: its method's count (a request is counted once,
    /// with its request body) and, for a response, the node that answered.
    fn counter(self: &Arc<Self>, method: &str, answered_by: Option<&str>) -> Counter {
        if answered_by.is_none() {
            self.traffic.lock().expect("not poisoned").by_method.entry(method.to_string()).or_default().0 += 1;
        }
        Counter {
            net: self.clone(),
            method: method.to_string(),
            node: answered_by.map(String::from),
            pending: AtomicU64::new(0),
        }
    }
}

/// Adds a body's bytes to the traffic when it ends (or is dropped).
struct Counter {
    net: Arc<SimNet>,
    method: String,
    node: Option<String>,
    pending: AtomicU64,
}

impl Drop for Counter {
    fn drop(&mut self) {
        let bytes = *self.pending.get_mut();
        let mut t = self.net.traffic.lock().expect("not poisoned");
        t.by_method.entry(std::mem::take(&mut self.method)).or_default().1 += bytes;
        if let Some(node) = self.node.take() {
            *t.served.entry(node).or_default() += bytes;
        }
    }
}

/// A body whose data frames are counted.
struct Counted {
    body: tonic::body::Body,
    counted: Counter,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counted.pending.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
