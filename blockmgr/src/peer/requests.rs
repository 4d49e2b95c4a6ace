//! What a gRPC request says about who sent it and what it asks: a member's peer header
//! (checked against membership and, over TLS, the certificate), a put's deadline, a
//! conditional delete's version, a member's read. The node's services and the peer service
//! read requests through these.

use kvtier_types::CommitIf;

use crate::Manager;

/// Who serves `request`: `manager` (the node and its cluster), or, for a request a member
/// sent ([`kvtier_client::PEER_HEADER`]), this node alone, so a copy is never forwarded
/// again. A request claiming to come from a non-member is refused.
pub async fn serving<T>(manager: &Manager, request: &tonic::Request<T>) -> Result<Manager, tonic::Status> {
    let Some(from) = request.metadata().get(kvtier_client::PEER_HEADER) else { return Ok(manager.clone()) };
    let from = from.to_str().unwrap_or("?");
    check_peer_certificate(request, from)?;
    match manager.cluster() {
        Some(cluster) if cluster.is_member_now(from).await => Ok(manager.here_only()),
        Some(cluster) => Err(tonic::Status::permission_denied(format!(
            "{from:?} is not a member of {}'s cluster: peer requests are refused",
            cluster.local_id()
        ))),
        None => Err(tonic::Status::permission_denied(format!(
            "a peer request from {from:?}, but this node is in no cluster ([cluster] members is empty)"
        ))),
    }
}

/// The deadline a put carries ([`kvtier_client::DEADLINE_HEADER`]), if any.
pub fn deadline_of<T>(request: &tonic::Request<T>) -> Option<std::time::SystemTime> {
    let ms: u64 = request.metadata().get(kvtier_client::DEADLINE_HEADER)?.to_str().ok()?.parse().ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// The version a conditional delete may delete ([`kvtier_client::IF_VERSION_HEADER`]);
/// unconditional without one (a malformed one matches no version).
pub fn if_version_of<T>(request: &tonic::Request<T>) -> CommitIf {
    let Some(v) = request.metadata().get(kvtier_client::IF_VERSION_HEADER) else {
        return CommitIf::Any;
    };
    let parsed =
        v.to_str().ok().and_then(|v| v.split_once('.')).and_then(|(g, c)| Some((g.parse().ok()?, c.parse().ok()?)));
    let (generation, crc32c) = parsed.unwrap_or((0, 0));
    CommitIf::Current { generation, crc32c }
}

/// The member a peer request says it comes from ([`kvtier_client::PEER_HEADER`]).
pub fn peer_of<T>(request: &tonic::Request<T>) -> Option<String> {
    request.metadata().get(kvtier_client::PEER_HEADER)?.to_str().ok().map(String::from)
}

/// A member's read that may count towards read replicas ([`kvtier_client::READ_HEADER`]):
/// the reader, and the read replicas it tried ([`kvtier_client::TRIED_HEADER`]). Only a
/// request [`serving`] accepted as a member's is asked.
pub fn member_read<T>(request: &tonic::Request<T>) -> Option<(String, Vec<String>)> {
    let headers = request.metadata();
    headers.get(kvtier_client::READ_HEADER)?;
    let reader = peer_of(request)?;
    let tried =
        headers.get_all(kvtier_client::TRIED_HEADER).iter().filter_map(|v| v.to_str().ok().map(String::from)).collect();
    Some((reader, tried))
}

/// Over TLS, a member proves its name: the certificate it presented (signed by the cluster
/// CA, or the handshake would have failed) must name the node id it claims. Over the Unix
/// socket (local) or plaintext TCP there is nothing to check.
pub fn check_peer_certificate<T>(request: &tonic::Request<T>, from: &str) -> Result<(), tonic::Status> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    if request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().is_none() {
        return Ok(());
    }
    let refuse = |why: &str| Err(tonic::Status::permission_denied(format!("a peer request as {from:?}: {why}")));
    let Some(certs) = request.peer_certs() else { return refuse("a member must present its certificate") };
    let Some(leaf) = certs.first() else { return refuse("a member must present its certificate") };
    let Ok(name) = rustls_pki_types::ServerName::try_from(from) else { return refuse("not a valid certificate name") };
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) if cert.verify_is_valid_for_subject_name(&name).is_ok() => Ok(()),
        _ => refuse("the client certificate does not name this node id"),
    }
}
