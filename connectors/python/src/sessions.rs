//! Shared-memory sessions of one client, one per set of namespaces.
//!
//! A session opens its namespaces in its hello. A client built with namespaces opens one
//! session for them all and uses no other (the server refuses the rest, as it always has);
//! a client built without (LMCache's connectors learn their namespaces from each key) opens a
//! session per namespace the first time it is used.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kvtier_blockmgr::shm::{ShmClient, ShmError};

pub(crate) struct ShmSessions {
    path: String,
    /// The one session of a client that named its namespaces.
    fixed: Option<Arc<Mutex<ShmClient>>>,
    open: Mutex<HashMap<String, Arc<Mutex<ShmClient>>>>,
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
        Ok(ShmSessions { path, fixed, open: Mutex::new(HashMap::new()) })
    }

    /// The session serving `namespace`, opened now if none does (the one session of a client
    /// that named its namespaces, whatever `namespace` is: the server answers for it).
    pub(crate) fn session(&self, namespace: &str) -> Result<Arc<Mutex<ShmClient>>, ShmError> {
        if let Some(s) = &self.fixed {
            return Ok(s.clone());
        }
        if let Some(s) = self.open.lock().expect("sessions lock").get(namespace) {
            return Ok(s.clone());
        }
        // Connected outside the map's lock: a hello is a round trip.
        let session = Arc::new(Mutex::new(ShmClient::connect(&self.path, &[namespace])?));
        Ok(self.open.lock().expect("sessions lock").entry(namespace.to_string()).or_insert(session).clone())
    }

    /// Runs `op` on the session of `namespace`. A per-namespace session whose socket failed
    /// (the server went away or broke the protocol) is forgotten, so the next call connects
    /// afresh.
    pub(crate) fn call<T>(
        &self,
        namespace: &str,
        op: impl FnOnce(&mut ShmClient) -> Result<T, ShmError>,
    ) -> Result<T, ShmError> {
        let session = self.session(namespace)?;
        let result = op(&mut session.lock().expect("shm session lock"));
        // A fixed session stays: its namespaces were the caller's choice at construction.
        if let Err(ShmError::Io { .. } | ShmError::Protocol(_)) = &result {
            self.open.lock().expect("sessions lock").retain(|_, s| !Arc::ptr_eq(s, &session));
        }
        result
    }
}
