//! TLS on the TCP port (rustls): clients need the CA, a node requiring client certificates
//! refuses those without one the cluster CA signed, and members replicate over TLS,
//! verifying each other by node id. Certificates are made here (rcgen).

mod common;

use std::path::{Path, PathBuf};

use common::{Node, data, free_port, key, start_static_cluster};
use kvtier_blockmgr::{Client, ClientTls, Durability, GetItem, PutItem};

/// A CA and the certificates it signs, written as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        Pki { dir, ca_cert, ca_key }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IPs): (cert path, key path).
    fn issue(&self, id: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let (c, k) = (self.dir.join(format!("{id}.pem")), self.dir.join(format!("{id}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// What a client presents: this CA, and optionally a certificate it signed.
    fn client(&self, identity: Option<&str>) -> ClientTls {
        let identity = identity.map(|id| {
            let (c, k) = self.issue(id, &[id]);
            (std::fs::read(c).unwrap(), std::fs::read(k).unwrap())
        });
        ClientTls { ca: std::fs::read(self.ca()).unwrap(), identity, domain: None }
    }
}

fn tls_table(pki: &Pki, id: &str, require_client_cert: bool) -> String {
    let (cert, key) = pki.issue(id, &[id, "127.0.0.1", "localhost"]);
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\nrequire_client_cert = {require_client_cert}\n",
        cert.display(),
        key.display(),
        pki.ca().display()
    )
}

async fn round_trip(client: &Client) -> Result<(), String> {
    let item = PutItem::new(key(1), data(1, 10_000));
    let r = client.put("tls/test", std::slice::from_ref(&item), Durability::Cache).await.map_err(|e| e.to_string())?;
    r[0].result.clone().map_err(|(c, m)| format!("{c}: {m}"))?;
    match client.get("tls/test", &[key(1)]).await.map_err(|e| e.to_string())?.pop() {
        Some(GetItem::Hit { data, .. }) if data == item.data => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// Connecting (and a first request) as `tls` describes; the error text on failure.
async fn try_client(addr: &str, tls: Option<&ClientTls>) -> Result<(), String> {
    let client = Client::connect_with(addr, tls).await.map_err(|e| format!("{e:?}"))?;
    round_trip(&client).await
}

#[tokio::test]
async fn clients_need_the_ca_and_with_mtls_a_certificate_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, stranger) = (Pki::new(dir.path(), "cluster"), Pki::new(dir.path(), "stranger"));
    let open = Node::start_on_port(free_port(), &tls_table(&pki, "n1", false));
    let addr = open.addrs.grpc.clone();
    try_client(&addr, Some(&pki.client(None))).await.expect("a TLS client with the CA");
    assert!(try_client(&addr, None).await.is_err(), "plaintext is refused on a TLS port");
    assert!(try_client(&addr, Some(&stranger.client(None))).await.is_err(), "a server cert of another CA is refused");
    // The Unix socket stays local and plain.
    round_trip(&open.unix_client().await).await.unwrap();

    let strict = Node::start_on_port(free_port(), &tls_table(&pki, "n2", true));
    let addr = strict.addrs.grpc.clone();
    assert!(try_client(&addr, Some(&pki.client(None))).await.is_err(), "no client certificate: refused");
    let wrong = ClientTls { ca: std::fs::read(pki.ca()).unwrap(), ..stranger.client(Some("intruder")) };
    assert!(try_client(&addr, Some(&wrong)).await.is_err(), "a client certificate of another CA: refused");
    try_client(&addr, Some(&pki.client(Some("trainer-0")))).await.expect("a certificate the cluster CA signed");
}

#[tokio::test]
async fn members_replicate_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let nodes = start_static_cluster(&["n1", "n2", "n3"], |id| {
        format!("\n[namespaces.\"tls/*\"]\nreplicas = 3\n\n{}", tls_table(&pki, id, true))
    });
    // W = R = 3: acknowledged only once every member, over mTLS, stored a copy.
    let writer = Client::connect_with(&nodes[0].addrs.grpc, Some(&pki.client(Some("trainer-0")))).await.unwrap();
    let items: Vec<PutItem> = (0..8).map(|i| PutItem::new(key(i), data(i, 20_000))).collect();
    for r in writer.put("tls/test", &items, Durability::Cache).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    let member = ClientTls { domain: Some("n3".into()), ..pki.client(Some("n1")) };
    let n3 = Client::connect_with(&nodes[2].addrs.grpc, Some(&member)).await.unwrap().as_peer("n1").unwrap();
    let got = n3.get("tls/test", &items.iter().map(|i| i.key.clone()).collect::<Vec<_>>()).await.unwrap();
    assert!(got.iter().all(|g| matches!(g, GetItem::Hit { .. })), "n3 holds its own copies: {got:?}");

    // A client with a good certificate that is not n2's cannot speak as n2.
    let impostor = Client::connect_with(&nodes[0].addrs.grpc, Some(&pki.client(Some("trainer-0")))).await.unwrap();
    let err = impostor.as_peer("n2").unwrap().get("tls/test", &[key(0)]).await.unwrap_err();
    assert!(
        matches!(&err, kvtier_blockmgr::ClientError::Status(s) if s.code() == tonic::Code::PermissionDenied),
        "{err}"
    );
    assert!(err.to_string().contains("does not name this node id"), "{err}");
}
