//! Shared-memory sessions of one client, one per set of namespaces.
//!
//! A session opens its namespaces in its hello. A client built with namespaces opens one
//! session for them all and uses no other (the server refuses the rest, as it always has);
//! a client built without (LMCache's connectors learn their namespaces from each key) opens a
//! session per namespace the first time it is used. A namespace whose session the server
//! refuses (no grant, no shareable arena) goes over gRPC from then on; one whose socket
//! cannot be reached goes over gRPC for a second, then shared memory is tried again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kvtier_client::shm::{ShmClient, ShmError};

pub(crate) struct ShmSessions {
    path: String,
    /// The one session of a client that named its namespaces.
    fixed: Option<Arc<Mutex<ShmClient>>>,
    open: Mutex<HashMap<String, Arc<Mutex<ShmClient>>>>,
    /// Namespaces without a session: refused for good (`None`) or unreachable until then.
    without: Mutex<HashMap<String, Option<Instant>>>,
}

impl ShmSessions {
    /// Connects to the shm socket at `path`; with `namespaces`, opens one session for them.
    pub(crate) fn connect(path: String, namespaces: &[String]) -> Result<Self, ShmError> {
        let fixed = if namespaces.is_empty() {
            None
        } else {
            let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
            Some(Arc::new(Mutex::new(ShmClient::connect(&path, &names)?)))
        };
        Ok(ShmSessions { path, fixed, open: Mutex::new(HashMap::new()), without: Mutex::new(HashMap::new()) })
    }

    /// The session serving `namespace`, opened now if none does (the one session of a client
    /// that named its namespaces, whatever `namespace` is: the server answers for it); `None`
    /// when this namespace goes over gRPC.
    fn session(&self, namespace: &str) -> Option<Arc<Mutex<ShmClient>>> {
        if let Some(s) = &self.fixed {
            return Some(s.clone());
        }
        if let Some(s) = self.open.lock().expect("sessions lock").get(namespace) {
            return Some(s.clone());
        }
        if let Some(until) = self.without.lock().expect("sessions lock").get(namespace)
            && until.is_none_or(|t| Instant::now() < t)
        {
            return None;
        }
        // Connected outside the maps' locks: a hello is a round trip.
        match ShmClient::connect(&self.path, &[namespace]) {
            Ok(c) => {
                self.without.lock().expect("sessions lock").remove(namespace);
                let session = Arc::new(Mutex::new(c));
                Some(self.open.lock().expect("sessions lock").entry(namespace.to_string()).or_insert(session).clone())
            }
            Err(e) => {
                let until = match e {
                    ShmError::Refused { .. } => None,
                    _ => Some(Instant::now() + Duration::from_secs(1)),
                };
                self.without.lock().expect("sessions lock").insert(namespace.to_string(), until);
                None
            }
        }
    }

    /// Runs `op` on the session of `namespace`. A per-namespace session whose socket failed
    /// (the server went away or broke the protocol) is forgotten, so the next call connects
    /// afresh.
    /// `None`: no shared memory for this namespace, use gRPC.
    pub(crate) fn call<T>(
        &self,
        namespace: &str,
        op: impl FnOnce(&mut ShmClient) -> Result<T, ShmError>,
    ) -> Option<Result<T, ShmError>> {
        let session = self.session(namespace)?;
        let result = op(&mut session.lock().expect("shm session lock"));
        // A fixed session stays: its namespaces were the caller's choice at construction.
        if let Err(ShmError::Io { .. } | ShmError::Protocol(_)) = &result {
            self.open.lock().expect("sessions lock").retain(|_, s| !Arc::ptr_eq(s, &session));
        }
        Some(result)
    }
}
