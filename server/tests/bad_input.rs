//! Bad input against the real binary: each case gets a clear error (naming the problem) or
//! a miss, the server keeps serving, and nothing acknowledged is lost.

mod common;

use bytes::Bytes;
use common::{MIB, Node, data, key};
use kvtier_blockmgr::{Client, ClientError, Durability, GetItem, PutItem};
use kvtier_proto::v1::{self, put_request::Msg};
use tonic::Code;

const NS: &str = "tenant-a/model";

/// The node still takes and returns a block, and what was acknowledged before is intact.
async fn still_serving(client: &Client, acknowledged: &[u64]) {
    let (ok, _) = client.health().await.unwrap();
    assert!(ok);
    client.put(NS, &[PutItem::new(b"after".to_vec(), data(999, 1000))], Durability::Cache).await.unwrap();
    assert!(
        matches!(&client.get(NS, &[b"after".to_vec()]).await.unwrap()[0], GetItem::Hit { data: d, .. } if *d == data(999, 1000))
    );
    let keys: Vec<Vec<u8>> = acknowledged.iter().map(|&i| key(i)).collect();
    for (item, &i) in client.get(NS, &keys).await.unwrap().iter().zip(acknowledged) {
        assert!(matches!(item, GetItem::Hit { data: d, .. } if *d == data(i, 5000)), "acknowledged block {i} lost");
    }
}

async fn node_with_blocks() -> (Node, Client) {
    let node = Node::start();
    let client = node.client().await;
    client
        .put(NS, &(0..3).map(|i| PutItem::new(key(i), data(i, 5000))).collect::<Vec<_>>(), Durability::LocalDisk)
        .await
        .unwrap();
    (node, client)
}

fn status(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Status(s) => s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn open(ns: &str) -> v1::PutRequest {
    v1::PutRequest { msg: Some(Msg::Open(v1::PutOpen { namespace: ns.into(), durability: 0 })) }
}

fn header(key: &[u8], length: u64) -> v1::PutRequest {
    v1::PutRequest { msg: Some(Msg::Block(v1::BlockHeader { key: Bytes::copy_from_slice(key), length, crc32c: None })) }
}

fn chunk(d: Bytes) -> v1::PutRequest {
    v1::PutRequest { msg: Some(Msg::Data(d)) }
}

#[test_log::test(tokio::test)]
async fn key_longer_than_64_bytes() {
    let (_node, client) = node_with_blocks().await;
    let r = client
        .put(NS, &[PutItem::new(vec![7; 65], data(5, 100)), PutItem::new(key(5), data(5, 100))], Durability::Cache)
        .await
        .unwrap();
    let (code, msg) = r[0].result.clone().unwrap_err();
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("65 bytes") && msg.contains("1..=64"), "{msg}");
    assert!(r[1].result.is_ok(), "the rest of the batch is stored");
    let e = status(client.get(NS, &[vec![1; 65]]).await.unwrap_err());
    assert!(e.code() == Code::InvalidArgument && e.message().contains("key 0"), "{e:?}");
    let e = status(client.has(NS, &[key(0), vec![1; 65]]).await.unwrap_err());
    assert!(e.code() == Code::InvalidArgument && e.message().contains("key 1"), "{e:?}");
    still_serving(&client, &[0, 1, 2]).await;
}

#[test_log::test(tokio::test)]
async fn empty_or_malformed_namespace() {
    let (_node, client) = node_with_blocks().await;
    for (ns, why) in [("", "must not be empty"), ("a/../b", "'..'"), ("has space", "not allowed")] {
        let e = status(client.put(ns, &[PutItem::new(key(9), data(9, 10))], Durability::Cache).await.unwrap_err());
        assert!(e.code() == Code::InvalidArgument && e.message().contains(why), "{ns:?}: {e:?}");
        let e = status(client.lookup(ns, &[key(0)]).await.unwrap_err());
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = status(client.has(ns, &[key(0)]).await.unwrap_err());
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    still_serving(&client, &[0, 1, 2]).await;
}

#[test_log::test(tokio::test)]
async fn block_larger_than_the_configured_maximum() {
    let (_node, client) = node_with_blocks().await;
    let r = client
        .put(
            NS,
            &[PutItem::new(key(7), data(7, MIB as usize + 1)), PutItem::new(key(8), data(8, 5000))],
            Durability::Cache,
        )
        .await
        .unwrap();
    let (code, msg) = r[0].result.clone().unwrap_err();
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("1048577") && msg.contains("1048576"), "names the size and the limit: {msg}");
    assert!(r[1].result.is_ok(), "the next block in the same stream is stored");
    assert!(matches!(client.get(NS, &[key(7)]).await.unwrap()[0], GetItem::Miss { .. }));
    // A header claiming a huge block is refused without the server buffering anything.
    let resp = client.put_raw(vec![open(NS), header(&key(9), 1 << 40), chunk(Bytes::from_static(b"x"))]).await.unwrap();
    assert_eq!(resp.results[0].status.as_ref().unwrap().code, Code::InvalidArgument as u32);
    still_serving(&client, &[0, 1, 2, 8]).await;
}

#[test_log::test(tokio::test)]
async fn truncated_stream() {
    let (_node, client) = node_with_blocks().await;
    let whole = data(20, 4096);
    let resp = client
        .put_raw(vec![
            open(NS),
            header(&key(20), 4096),
            chunk(whole.clone()),
            header(&key(21), 100_000),
            chunk(data(21, 40_000)),
        ])
        .await
        .unwrap();
    assert_eq!(resp.results[0].status.as_ref().unwrap().code, 0, "the complete block is stored");
    let st = resp.results[1].status.clone().unwrap();
    assert_eq!(st.code, Code::InvalidArgument as u32);
    assert!(st.message.contains("truncated") && st.message.contains("40000 of its 100000"), "{}", st.message);
    let got = client.get(NS, &[key(20), key(21)]).await.unwrap();
    assert!(matches!(&got[0], GetItem::Hit { data: d, .. } if *d == whole));
    assert!(matches!(got[1], GetItem::Miss { .. }), "nothing of a truncated block is stored");
    // A block cut short by the next header is refused the same way.
    let resp = client
        .put_raw(vec![
            open(NS),
            header(&key(22), 10),
            chunk(Bytes::from_static(b"12345")),
            header(&key(23), 3),
            chunk(Bytes::from_static(b"abc")),
        ])
        .await
        .unwrap();
    assert!(resp.results[0].status.as_ref().unwrap().message.contains("5 of its 10"));
    assert_eq!(resp.results[1].status.as_ref().unwrap().code, 0);
    still_serving(&client, &[0, 1, 2]).await;
}

#[test_log::test(tokio::test)]
async fn client_vanishing_mid_stream() {
    let (node, client) = node_with_blocks().await;
    // Raw TCP: open an HTTP/2 connection, start sending, drop it.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(&node.addrs.grpc).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
        s.write_all(&[0u8; 100]).await.unwrap();
    }
    // A put cancelled by its client in the middle of a block.
    let puts_started = |n: &Node| {
        n.http_get("/metrics")
            .lines()
            .find(|l| l.starts_with("kvtier_requests_total{op=\"put\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    let before = puts_started(&node);
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::PutRequest>(4);
    let mut rpc =
        kvtier_proto::v1::block_store_client::BlockStoreClient::connect(format!("http://{}", node.addrs.grpc))
            .await
            .unwrap();
    let call = tokio::spawn(async move { rpc.put(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    for m in [open(NS), header(&key(30), 900_000), chunk(data(30, 100_000))] {
        tx.send(m).await.unwrap();
    }
    while puts_started(&node) == before {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    call.abort();
    let _ = call.await;
    still_serving(&client, &[0, 1, 2]).await;
    assert!(
        matches!(client.get(NS, &[key(30)]).await.unwrap()[0], GetItem::Miss { .. }),
        "a cancelled block is not stored"
    );
}

#[test_log::test(tokio::test)]
async fn protocol_violations_are_named() {
    let (_node, client) = node_with_blocks().await;
    let cases: Vec<(Vec<v1::PutRequest>, &str)> = vec![
        (vec![header(&key(1), 3)], "must begin with `open`"),
        (vec![open(NS), open(NS)], "`open` sent twice"),
        (vec![open(NS), chunk(Bytes::from_static(b"abc"))], "data before any block header"),
        (vec![open(NS), header(&key(40), 2), chunk(Bytes::from_static(b"abc"))], "more data than its declared length"),
        (vec![], "empty put stream"),
        (vec![open(NS), v1::PutRequest { msg: None }], "no field set"),
        (
            vec![v1::PutRequest { msg: Some(Msg::Open(v1::PutOpen { namespace: NS.into(), durability: 7 })) }],
            "unknown durability 7",
        ),
    ];
    for (msgs, needle) in cases {
        let e = status(client.put_raw(msgs).await.unwrap_err());
        assert!(e.code() == Code::InvalidArgument && e.message().contains(needle), "{needle}: {e:?}");
    }
    let too_many: Vec<Vec<u8>> = (0..513).map(key).collect();
    let e = status(client.get(NS, &too_many).await.unwrap_err());
    assert!(e.message().contains("513 blocks") && e.message().contains("max_batch_keys"), "{e:?}");
    still_serving(&client, &[0, 1, 2]).await;
}

#[test_log::test(tokio::test)]
async fn wrong_checksum_from_the_client() {
    let (_node, client) = node_with_blocks().await;
    let d = data(50, 10_000);
    let bad = v1::PutRequest {
        msg: Some(Msg::Block(v1::BlockHeader {
            key: Bytes::from(key(50)),
            length: 10_000,
            crc32c: Some(kvtier_tiers::crc32c(&d) ^ 1),
        })),
    };
    let resp = client.put_raw(vec![open(NS), bad, chunk(d)]).await.unwrap();
    let st = resp.results[0].status.clone().unwrap();
    assert_eq!(st.code, Code::DataLoss as u32);
    assert!(st.message.contains("checksum mismatch"), "{}", st.message);
    assert!(
        matches!(client.get(NS, &[key(50)]).await.unwrap()[0], GetItem::Miss { .. }),
        "a block that fails its checksum is not stored"
    );
    still_serving(&client, &[0, 1, 2]).await;
}

#[test_log::test(tokio::test)]
async fn oversized_message_and_idle_stream() {
    let (_node, client) = node_with_blocks().await;
    // One 17 MiB data message: over the message limit.
    let e = status(
        client
            .put_raw(vec![open(NS), header(&key(60), 17 * MIB), chunk(Bytes::from(vec![0u8; 17 * MIB as usize]))])
            .await
            .unwrap_err(),
    );
    assert!(matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange | Code::Internal | Code::Cancelled), "{e:?}");
    // A stream that opens and then says nothing is abandoned after stream_idle_timeout (2s).
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::PutRequest>(1);
    tx.send(open(NS)).await.unwrap();
    let mut rpc =
        kvtier_proto::v1::block_store_client::BlockStoreClient::connect(format!("http://{}", _node.addrs.grpc))
            .await
            .unwrap();
    let e = rpc.put(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap_err();
    assert!(e.code() == Code::DeadlineExceeded && e.message().contains("abandoned"), "{e:?}");
    drop(tx);
    still_serving(&client, &[0, 1, 2]).await;
}

/// A newer client's message: the same fields plus ones this server does not know.
mod future {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct BlockHeader {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(uint64, tag = "2")]
        pub length: u64,
        #[prost(string, tag = "15")]
        pub compression: String,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum Msg {
        #[prost(message, tag = "1")]
        Open(kvtier_proto::v1::PutOpen),
        #[prost(message, tag = "2")]
        Block(BlockHeader),
        #[prost(bytes = "bytes", tag = "3")]
        Data(bytes::Bytes),
        #[prost(string, tag = "9")]
        Hint(String),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PutRequest {
        #[prost(oneof = "Msg", tags = "1, 2, 3, 9")]
        pub msg: Option<Msg>,
    }
}

#[test_log::test(tokio::test)]
async fn unknown_fields() {
    let (node, client) = node_with_blocks().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.addrs.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let send = |msgs: Vec<future::PutRequest>| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        async move {
            grpc.ready().await.unwrap();
            let codec = tonic_prost::ProstCodec::<future::PutRequest, v1::PutResponse>::default();
            let path = http::uri::PathAndQuery::from_static("/kvtier.v1.BlockStore/Put");
            grpc.client_streaming(tonic::Request::new(tokio_stream::iter(msgs)), path, codec).await
        }
    };
    let open = future::PutRequest { msg: Some(future::Msg::Open(v1::PutOpen { namespace: NS.into(), durability: 0 })) };
    // An unknown field inside a known message is ignored (forward compatible).
    let block = future::PutRequest {
        msg: Some(future::Msg::Block(future::BlockHeader { key: key(70), length: 3, compression: "zstd".into() })),
    };
    let bytes = future::PutRequest { msg: Some(future::Msg::Data(Bytes::from_static(b"abc"))) };
    let resp = send(vec![open.clone(), block, bytes]).await.unwrap().into_inner();
    assert_eq!(resp.results[0].status.as_ref().unwrap().code, 0);
    // A message whose only content is an unknown field is refused by name.
    let hint = future::PutRequest { msg: Some(future::Msg::Hint("prefetch".into())) };
    let e = send(vec![open, hint]).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("no field set"), "{e:?}");
    still_serving(&client, &[0, 1, 2]).await;
}

#[test_log::test]
fn full_disk_at_startup_is_a_clear_error() {
    // The node runs in its own mount namespace on a 16 MiB tmpfs: its 32 MiB slot file
    // cannot be preallocated. The mount vanishes with the process.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let config = dir.path().join("kvtier.toml");
    std::fs::write(&config, common::small_config(&data_dir, "", "")).unwrap();
    let script = format!("mount -t tmpfs -o size=16m kvtier-full {} && exec \"$0\" \"$@\"", data_dir.display());
    let unshare: &[&str] = if unsafe { libc::geteuid() } == 0 {
        &["unshare", "--mount", "--propagation", "private"]
    } else {
        &["unshare", "-rm"]
    };
    let prefix: Vec<&str> = unshare.iter().copied().chain(["sh", "-c", &script]).collect();
    let err = common::spawn(&config, dir.path(), &prefix).expect_err("the node must not start on a full disk");
    assert!(err.contains("No space left on device") && err.contains("slots.kvt"), "{err}");
    assert!(err.contains("preallocate"), "names the operation: {err}");
}

#[test_log::test]
fn unwritable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let config = dir.path().join("kvtier.toml");
    std::fs::write(&config, common::small_config(&blocker.join("data"), "", "")).unwrap();
    let err = common::spawn(&config, dir.path(), &[]).expect_err("the node must not start");
    assert!(err.contains("a-file") && (err.contains("Not a directory") || err.contains("cannot create")), "{err}");
}

#[test_log::test(tokio::test)]
async fn corrupted_superblock_is_a_clear_startup_error() {
    let mut node = Node::start();
    node.kill9();
    let path = node.data_dir().join("ssd").join(kvtier_tiers::SLOT_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = common::spawn(&node.config_path, node.dir.path(), &[]).expect_err("must refuse a corrupt slot file");
    assert!(err.contains("superblock checksum mismatch") && err.contains("slots.kvt"), "{err}");
}

#[test_log::test]
fn unknown_config_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kvtier.toml");
    std::fs::write(&config, common::small_config(&dir.path().join("data"), "", "[cpu2]\ncapacity = 1")).unwrap();
    let err = common::spawn(&config, dir.path(), &[]).expect_err("must refuse the config");
    assert!(err.contains("unknown field") && err.contains("cpu2") && err.contains("kvtier.toml"), "{err}");
}

#[test_log::test]
fn a_plain_http_blob_endpoint_without_allow_http_refuses_to_start_naming_the_key() {
    // The store's client refuses plain HTTP unless allowed: such a node used to report ready
    // and then fail every flush with "builder error" for ever.
    for (url, options, allow_key) in [
        (
            "az://kvtier/nodes",
            "azure_storage_endpoint = \"http://127.0.0.1:9/a\"\nazure_storage_account_name = \"a\"",
            "azure_allow_http",
        ),
        ("s3://kvtier/nodes", "aws_endpoint = \"http://127.0.0.1:9\"\naws_region = \"us-east-1\"", "aws_allow_http"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("kvtier.toml");
        let blob = format!("[blob]\nurl = \"{url}\"\n[blob.options]\n{options}\n");
        std::fs::write(&config, common::small_config(&dir.path().join("data"), "", &blob)).unwrap();
        let err = common::spawn(&config, dir.path(), &[]).expect_err("the node must not start");
        assert!(err.contains(&format!("blob.options.{allow_key}")) && err.contains("plain HTTP"), "{err}");
    }
}

/// A node gone (killed) under a connected client: the next put cannot connect, so it never
/// left the client, and says so (NotApplied: safe to retry elsewhere, nothing landed). It
/// once said Unknown, and a member deleting with its second owner down reported a delete
/// that may have landed where none could (deletes.rs's quorum test flaked on it).
#[tokio::test]
async fn a_put_to_a_node_that_died_under_the_client_was_never_sent() {
    let (mut node, client) = node_with_blocks().await;
    node.kill9();
    let items = [PutItem::new(b"after".to_vec(), Bytes::from_static(b"x"))];
    // The first request may find the old connection breaking under it (unknown, honestly);
    // the next ones dial again and are refused.
    let mut e = client.put("test/bad", &items, Durability::Cache).await.expect_err("the node is gone");
    for _ in 0..3 {
        if e.to_string().contains("connect") {
            break;
        }
        e = client.put("test/bad", &items, Durability::Cache).await.expect_err("the node is gone");
    }
    assert_eq!(e.outcome(), kvtier_blockmgr::Outcome::NotApplied, "{e}");
    assert!(e.is_transient(), "{e}");
}
