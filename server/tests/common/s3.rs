//! boto3 (from the moto venv scripts/moto.sh installs) against a node's S3 endpoint.

use std::process::Command;

use super::Node;

/// `what` under the project's cache (`$KVTIER_CACHE`, `~/.cache/kvtier`); a missing one fails
/// the test, naming the fix (`scripts/moto.sh install` makes both of these).
fn cached(what: &str, why: &str) -> String {
    let cache = std::env::var("KVTIER_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/kvtier", std::env::var("HOME").unwrap_or_default()));
    let path = format!("{cache}/{what}");
    assert!(std::path::Path::new(&path).exists(), "{path} is missing: run scripts/moto.sh install ({why})");
    path
}

/// The Python with boto3: the moto venv.
pub fn python() -> String {
    cached("moto/bin/python", "boto3")
}

/// The AWS CLI (PyPI `awscli`, in a venv of its own: it pins its own botocore).
pub fn aws_cli() -> String {
    cached("awscli/bin/aws", "the AWS CLI")
}

/// The node's S3 endpoint URL.
pub fn endpoint(node: &Node) -> String {
    format!("http://{}", node.addrs.s3.as_ref().expect("the s3 address"))
}

/// object_store's S3 client for `bucket` on the node (key `AKIDWRITER` / `writer-secret`).
pub fn store(node: &Node, bucket: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint(node))
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("AKIDWRITER")
        .with_secret_access_key("writer-secret")
        .with_allow_http(true)
        .build()
        .unwrap()
}

/// Runs a few lines of boto3 (client `s3`, key `AKIDWRITER` / `writer-secret`) against the node.
pub fn boto3(node: &Node, code: &str) {
    let script = format!(
        "import boto3, os\nfrom botocore.config import Config\n\
         s3 = boto3.client('s3', endpoint_url=os.environ['E'], aws_access_key_id='AKIDWRITER', \
         aws_secret_access_key='writer-secret', region_name='us-east-1', config=Config(s3={{'addressing_style': 'path'}}))\n{code}\n"
    );
    let out = Command::new(python()).args(["-c", &script]).env("E", endpoint(node)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
