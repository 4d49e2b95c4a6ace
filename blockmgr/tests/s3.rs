//! The S3 endpoint against a real S3 client: boto3 (from the moto venv scripts/moto.sh
//! installs) runs `tests/s3/boto3_suite.py` against a real `kvtier serve`; what it stores
//! is then read through kvtier's own client as the named object it is.

mod common;

use std::process::Command;

use common::Node;

const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3/boto3_suite.py");
const MAX_OBJECT: u64 = 8 << 20; // above a part (5 MiB), below the 12 MiB multipart object

fn python() -> String {
    let cache = std::env::var("KVTIER_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/kvtier", std::env::var("HOME").unwrap_or_default()));
    let python = format!("{cache}/moto/bin/python");
    assert!(std::path::Path::new(&python).exists(), "{python} is missing: run scripts/moto.sh install (boto3)");
    python
}

fn node() -> Node {
    Node::start_with(
        "",
        &format!(
            "[s3]\nlisten = \"127.0.0.1:0\"\nmax_object_size = {MAX_OBJECT}\n\
             [[s3.keys]]\naccess_key = \"AKIDWRITER\"\nsecret_key = \"writer-secret\"\nbuckets = [\"*\"]\n\
             [[s3.keys]]\naccess_key = \"AKIDREADER\"\nsecret_key = \"reader-secret\"\nbuckets = [\"logs-*\"]\n"
        ),
    )
}

#[tokio::test]
async fn boto3_puts_gets_lists_and_is_refused_with_s3_errors() {
    let node = node();
    let endpoint = format!("http://{}", node.addrs.s3.as_ref().expect("the s3 address"));
    let out = Command::new(python())
        .arg(SUITE)
        .env("S3_ENDPOINT", &endpoint)
        .env("S3_KEY", "AKIDWRITER")
        .env("S3_SECRET", "writer-secret")
        .env("S3_MAX_OBJECT", MAX_OBJECT.to_string())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.trim_end().ends_with("ok"), "{stdout}\n{stderr}\n{}", node.stderr());

    // What boto3 stored is a named object of namespace s3/ckpt, path o/<key>.
    let client = node.client().await;
    let objects = client.list_objects("s3/ckpt", "o/run1/step-2/").await.unwrap();
    let paths: Vec<&str> = objects.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(paths, (0..5).map(|i| format!("o/run1/step-2/shard-{i}.bin")).collect::<Vec<_>>());
    let whole = kvtier_blockmgr::ObjectRange::default();
    assert_eq!(client.read_object("s3/ckpt", "o/run1/step-2/shard-3.bin", whole).await.unwrap().as_ref(), b"s3");
    // The server kept serving through every refusal.
    assert!(node.http_get("/healthz").contains("ok"));
}
