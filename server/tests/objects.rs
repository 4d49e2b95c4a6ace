//! Named objects through a real `kvtier serve`: streamed puts of any size, whole and ranged
//! reads, versions, deletes; a truncated, mismatched or abandoned upload never commits; objects
//! written to disk survive `kill -9`.

mod common;

use bytes::Bytes;
use common::{Node, data};
use kvtier_blockmgr::{ClientError, Durability, ObjectRange};
use tonic::Code;

const NS: &str = "acme/ckpt";

fn pieces(data: &Bytes, size: usize) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let parts: Vec<Bytes> =
        (0..data.len()).step_by(size).map(|at| data.slice(at..(at + size).min(data.len()))).collect();
    futures::stream::iter(parts)
}

#[tokio::test]
async fn objects_stream_in_and_out_by_version_and_survive_a_kill_9() {
    let mut node = Node::start();
    let client = node.unix_client().await;
    let v1 = data(1, 5 << 20);
    let info = client
        .put_object(NS, "step-100/rank-0.distcp", pieces(&v1, 300_000), Durability::LocalDisk, Some(5 << 20), None)
        .await
        .unwrap();
    assert_eq!((info.size, info.crc32c), (5 << 20, kvtier_tiers::crc32c(&v1)));
    let g1 = info.generation;
    assert_eq!(client.read_object(NS, "step-100/rank-0.distcp", ObjectRange::all()).await.unwrap(), v1);
    let range = client.read_object(NS, "step-100/rank-0.distcp", ObjectRange::bytes((1 << 20) - 10, 20)).await.unwrap();
    assert_eq!(range, v1.slice((1 << 20) - 10..(1 << 20) + 10), "a range across a chunk boundary");
    let small = data(2, 1000);
    client.put_object(NS, "step-100/meta.json", pieces(&small, 64), Durability::LocalDisk, None, None).await.unwrap();
    let listed: Vec<String> = client.list_objects(NS, "step-100/").await.unwrap().into_iter().map(|o| o.path).collect();
    assert_eq!(listed, ["step-100/meta.json", "step-100/rank-0.distcp"]);

    node.kill9();
    node.restart();
    let client = node.unix_client().await;
    assert_eq!(client.stat_object(NS, "step-100/rank-0.distcp").await.unwrap(), Some(info));
    assert_eq!(client.read_object(NS, "step-100/rank-0.distcp", ObjectRange::all()).await.unwrap(), v1);

    // A new version replaces it whole; a delete removes it.
    let v2 = data(3, 2 << 20);
    let info2 =
        client.put_object(NS, "step-100/rank-0.distcp", pieces(&v2, 1 << 20), Durability::LocalDisk, None, None);
    let g2 = info2.await.unwrap().generation;
    assert!(g2 > g1, "a new version numbers above the old: {g2} vs {g1}");
    assert_eq!(client.read_object(NS, "step-100/rank-0.distcp", ObjectRange::all()).await.unwrap(), v2);
    // A reader pinned to the first generation (several ranged reads of one version) is told
    // it was replaced, rather than given the second's bytes.
    let pinned = ObjectRange::bytes(0, 10).of_generation(g1);
    let err = client.read_object(NS, "step-100/rank-0.distcp", pinned).await.unwrap_err();
    assert!(matches!(&err, ClientError::Status(s) if s.code() == Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains(&format!("generation {g1} was replaced by generation {g2}")), "{err}");
    let current = client.read_object(NS, "step-100/rank-0.distcp", pinned.of_generation(g2)).await.unwrap();
    assert_eq!(current, v2.slice(0..10));
    assert!(client.delete_object(NS, "step-100/rank-0.distcp").await.unwrap());
    assert_eq!(client.stat_object(NS, "step-100/rank-0.distcp").await.unwrap(), None);
    let err = client.read_object(NS, "step-100/rank-0.distcp", ObjectRange::all()).await.unwrap_err();
    assert!(matches!(&err, ClientError::Status(s) if s.code() == Code::NotFound), "{err}");
}

#[tokio::test]
async fn a_truncated_or_mismatched_upload_never_commits() {
    let node = Node::start();
    let client = node.unix_client().await;
    let old = data(1, 100_000);
    client.put_object(NS, "weights.bin", pieces(&old, 10_000), Durability::LocalDisk, None, None).await.unwrap();
    let blocks_before = client.stats().await.unwrap().index_blocks;

    let new = data(2, 3 << 20);
    let err = client
        .put_object(NS, "weights.bin", pieces(&new, 1 << 20), Durability::LocalDisk, Some(5 << 20), None)
        .await
        .unwrap_err();
    assert!(matches!(&err, ClientError::Status(s) if s.code() == Code::DataLoss), "{err}");
    assert!(err.to_string().contains("not committed"), "{err}");
    let err = client
        .put_object(NS, "weights.bin", pieces(&new, 1 << 20), Durability::LocalDisk, None, Some(0xdead_beef))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("crc32c"), "{err}");

    assert_eq!(client.read_object(NS, "weights.bin", ObjectRange::all()).await.unwrap(), old, "the old version stands");
    assert_eq!(client.stats().await.unwrap().index_blocks, blocks_before, "the refused uploads left no chunks");
    let err = client.put_object(NS, "", pieces(&old, 10), Durability::Cache, None, None).await.unwrap_err();
    assert!(matches!(&err, ClientError::Status(s) if s.code() == Code::InvalidArgument), "{err}");

    // A writer that sends 3 MiB and then goes silent: abandoned after stream_idle_timeout
    // (2s), its chunks deleted, nothing committed.
    use futures::StreamExt;
    let stalled = pieces(&new, 1 << 20).chain(futures::stream::pending());
    let err = client.put_object(NS, "weights.bin", stalled, Durability::LocalDisk, None, None).await.unwrap_err();
    assert!(matches!(&err, ClientError::Status(s) if s.code() == Code::DeadlineExceeded), "{err}");
    assert!(err.to_string().contains("not committed"), "{err}");
    assert_eq!(client.read_object(NS, "weights.bin", ObjectRange::all()).await.unwrap(), old);
    assert_eq!(client.stats().await.unwrap().index_blocks, blocks_before);
}

#[tokio::test]
async fn only_the_commit_message_commits_an_upload() {
    use futures::StreamExt;
    use kvtier_proto::v1::{self, put_object_request::Msg};
    let node = Node::start();
    let client = node.client().await;
    let old = data(1, 100_000);
    let first =
        client.put_object(NS, "weights.bin", pieces(&old, 10_000), Durability::LocalDisk, None, None).await.unwrap();
    let blocks_before = client.stats().await.unwrap().index_blocks;

    // A stream that ends cleanly after its bytes but without `commit`: ABORTED, not kept.
    let mut raw = v1::objects_client::ObjectsClient::connect(format!("http://{}", node.addrs.grpc)).await.unwrap();
    let open = v1::PutObjectOpen {
        namespace: NS.into(),
        path: "weights.bin".into(),
        durability: v1::Durability::LocalDisk as i32,
        ..Default::default()
    };
    let msgs = vec![Msg::Open(open), Msg::Data(data(2, 1 << 20)), Msg::Data(data(3, 1 << 20))];
    let requests = futures::stream::iter(msgs).map(|m| v1::PutObjectRequest { msg: Some(m) });
    let status = raw.put_object(requests).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status}");
    assert!(status.message().contains("without `commit`") && status.message().contains("not committed"), "{status}");

    // A call cancelled mid-upload (the client's task is aborted: HTTP/2 RST_STREAM CANCEL,
    // which the server's HTTP stack hands over as a clean end of the request).
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sent.clone();
    let stalled = pieces(&data(4, 3 << 20), 1 << 20)
        .inspect(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .chain(futures::stream::pending());
    let uploader = client.clone();
    let call = tokio::spawn(async move {
        uploader.put_object(NS, "weights.bin", stalled, Durability::LocalDisk, None, None).await
    });
    while sent.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await; // the pieces reach the node
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    // The node deletes what either upload stored, well before the 2s idle timeout would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while client.stats().await.unwrap().index_blocks != blocks_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned uploads' chunks were never deleted: {}",
            node.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let info = client.stat_object(NS, "weights.bin").await.unwrap().expect("the object");
    assert_eq!(info.generation, first.generation, "nothing but the first put committed");
    assert_eq!(client.read_object(NS, "weights.bin", ObjectRange::all()).await.unwrap(), old, "the old version stands");
}
