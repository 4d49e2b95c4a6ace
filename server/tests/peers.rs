//! Who may ask a node what members ask each other: a request naming itself a peer is
//! answered only when the name is a member (the peer header alone proves nothing more; over
//! TLS the certificate must name it too, tls.rs).

mod common;

use common::{Node, key, start_cluster};
use kvtier_blockmgr::{Client, ClientError};
use tonic::Code;

#[tokio::test]
async fn peer_requests_from_non_members_are_refused() {
    let nodes = start_cluster(2);
    let intruder = Client::connect(&nodes[0].addrs.grpc).await.unwrap().as_peer("intruder").unwrap();
    let err = intruder.get("ckpt/run1", &[key(1)]).await.unwrap_err();
    assert!(matches!(&err, ClientError::Status(s) if s.code() == Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("\"intruder\" is not a member"), "{err}");
    let single = Node::start();
    let peer = Client::connect(&single.addrs.grpc).await.unwrap().as_peer("n1").unwrap();
    let err = peer.delete("kv", &[key(1)]).await.unwrap_err();
    assert!(err.to_string().contains("this node is in no cluster"), "{err}");
}

#[tokio::test]
async fn the_peer_service_answers_members_only() {
    use kvtier_proto::{peer::v1::peer_client::PeerClient, v1::ObjectRef};
    let nodes = start_cluster(2);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", nodes[0].addrs.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut peer = PeerClient::new(channel);
    let ask = |from: Option<&str>| {
        let mut req = tonic::Request::new(ObjectRef { namespace: "ckpt/x".into(), path: "p".into() });
        if let Some(from) = from {
            req.metadata_mut().insert("x-kvtier-peer", from.parse().unwrap());
        }
        req
    };
    let err = peer.stat_object(ask(None)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("members only"), "{err}");
    let err = peer.stat_object(ask(Some("stranger"))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("\"stranger\" is not a member"), "{err}");
    let answer = peer.stat_object(ask(Some("n2"))).await.unwrap().into_inner();
    assert!(answer.json.is_empty(), "a member is answered: no such object");
}
