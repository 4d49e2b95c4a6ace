//! The S3 endpoint against a real S3 client: boto3 (from the moto venv scripts/moto.sh
//! installs) runs `tests/s3/boto3_suite.py` against a real `kvtier serve`; what it stores
//! is then read through kvtier's own client as the named object it is.

mod common;

use std::{process::Command, time::Duration};

use bytes::Bytes;
use common::{
    Node,
    blob::Backend,
    data,
    s3::{boto3, endpoint, python},
};
use futures::TryStreamExt;
use kvtier_tiers::{Namespace, ObjectBlobs, Retries};
use object_store::{ObjectStore, PutMode, PutPayload, UpdateVersion, multipart::MultipartStore, path::Path};

const MAX_OBJECT: u64 = 8 << 20; // above a part (5 MiB), below the 12 MiB multipart object

fn s3_table(durability: &str) -> String {
    format!(
        "[s3]\nlisten = \"127.0.0.1:0\"\nmax_object_size = {MAX_OBJECT}\ndurability = \"{durability}\"\ndomain = \"s3.test\"\n\
         [[s3.keys]]\naccess_key = \"AKIDWRITER\"\nsecret_key = \"writer-secret\"\nbuckets = [\"*\"]\n\
         [[s3.keys]]\naccess_key = \"AKIDREADER\"\nsecret_key = \"reader-secret\"\nbuckets = [\"logs-*\"]\n"
    )
}

fn node() -> Node {
    Node::start_with("", &s3_table("local_disk"))
}

/// Runs boto3 suite `name` (tests/s3/) against `node` as the writer's key; it must print "ok".
fn run_suite(node: &Node, name: &str) {
    let (stdout, stderr) = run_suite_on(&endpoint(node), ("AKIDWRITER", "writer-secret"), &[], name);
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}\n{stderr}\n{}", node.stderr());
}

/// Runs suite `name` against `endpoint` with `key`, plus `env`: its stdout and stderr.
fn run_suite_on(endpoint: &str, key: (&str, &str), env: &[(&str, &str)], name: &str) -> (String, String) {
    let out = Command::new(python())
        .env("AWS", common::s3::aws_cli())
        .arg(format!("{}/tests/s3/{name}", env!("CARGO_MANIFEST_DIR")))
        .env("S3_ENDPOINT", endpoint)
        .env("S3_KEY", key.0)
        .env("S3_SECRET", key.1)
        .env("S3_MAX_OBJECT", MAX_OBJECT.to_string())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The conditional-request and listing suites against moto's S3 server as a reference: what
/// they expect of kvtier holds there too, but where moto differs from S3's documentation,
/// which the suites name (and S3's documentation decides). A suite that fails on the
/// reference is asking for something S3 does not do.
#[tokio::test]
async fn the_suites_hold_against_moto_but_where_moto_differs_from_s3s_documentation() {
    let moto = kvtier_testkit::S3Server::start();
    for suite in ["conditions_suite.py", "listing_suite.py", "checksums_suite.py"] {
        let (stdout, stderr) = run_suite_on(&moto.endpoint, ("test", "test"), &[("S3_REFERENCE", "moto")], suite);
        assert!(stdout.trim_end().ends_with("ok"), "{suite} against moto:\n{stdout}\n{stderr}");
        let differs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("moto differs")).collect();
        eprintln!("{suite}: {}", differs.join("; "));
    }
}

#[tokio::test]
async fn boto3_puts_gets_lists_and_is_refused_with_s3_errors() {
    let node = node();
    run_suite(&node, "boto3_suite.py");

    // What boto3 stored is a named object of namespace s3/ckpt, path o/<key>.
    let client = node.client().await;
    let objects = client.list_objects("s3/ckpt", "o/run1/step-2/").await.unwrap();
    let paths: Vec<&str> = objects.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(paths, (0..5).map(|i| format!("o/run1/step-2/shard-{i}.bin")).collect::<Vec<_>>());
    let whole = kvtier_blockmgr::ObjectRange::default();
    assert_eq!(client.read_object("s3/ckpt", "o/run1/step-2/shard-3.bin", whole).await.unwrap().as_ref(), b"s3");
    // The server kept serving through every refusal, and counted them.
    assert!(node.http_get("/healthz").contains("ok"));
    assert!(node.labelled_metric("s3_requests_total", "code=\"SignatureDoesNotMatch\"") >= 1);
    assert!(node.labelled_metric("s3_requests_total", "code=\"OK\"") >= 40);
    assert_eq!(node.labelled_metric("s3_requests_total", "code=\"RequestTimeout\""), 1);
    // Each operation's latency, under its own name.
    let timed = |op: &str| node.labelled_metric("request_duration_seconds_count", &format!("op=\"s3_{op}\""));
    for (op, at_least) in [
        ("put_object", 10),
        ("get_object", 10),
        ("head_object", 1),
        ("list_objects", 3),
        ("create_multipart_upload", 3),
        ("upload_part", 6),
        ("complete_multipart_upload", 3),
        ("abort_multipart_upload", 1),
        ("delete_objects", 1),
        ("copy_object", 1),
        ("upload_part_copy", 4), // boto3's managed copy: 3 parts; and one ranged
        ("list_parts", 3),
        ("list_multipart_uploads", 3),
        ("create_bucket", 1),
    ] {
        assert!(timed(op) >= at_least, "{op}: {} timed", timed(op));
    }
}

/// Every S3 operation kvtier does not implement, as boto3 sends it (PutObjectTagging,
/// PutObjectAcl, DeleteBucketTagging, GetObject of a version, ...), is answered 501 and
/// changes nothing: the suite checks the object, the listing and the buckets after each.
#[tokio::test]
async fn unimplemented_operations_answer_501_and_change_nothing() {
    let node = node();
    run_suite(&node, "unimplemented_suite.py");
    let refused = node.labelled_metric("request_duration_seconds_count", "op=\"s3_not_implemented\"");
    assert!(refused >= 100, "{refused} requests timed as not implemented");
    assert_eq!(node.labelled_metric("s3_requests_total", "code=\"NotImplemented\""), refused);
}

/// Conditional requests as boto3 sends them: writes (If-Match, If-None-Match: *, on PutObject
/// and CompleteMultipartUpload), reads (the four conditions: 412, 304) and copies (the
/// source's four); each refusal leaves the objects as they were.
#[tokio::test]
async fn conditional_requests_answer_as_s3_and_a_failed_one_changes_nothing() {
    let node = node();
    run_suite(&node, "conditions_suite.py");
}

/// With `s3.md5_etags = false` nothing computes an MD5 of the bytes: an ETag is the object's
/// CRC-32C and generation, and names its version to conditional requests all the same.
#[tokio::test]
async fn without_md5_etags_an_etag_still_names_its_version() {
    let node = Node::start_with("", &s3_table("local_disk").replacen("domain", "md5_etags = false\ndomain", 1));
    boto3(
        &node,
        "import hashlib\nfrom botocore.exceptions import ClientError\ns3.create_bucket(Bucket='bkt')\n\
         e = s3.put_object(Bucket='bkt', Key='k', Body=b'x')['ETag']\n\
         assert e != '\"%s\"' % hashlib.md5(b'x').hexdigest() and len(e) == 26, e\n\
         s3.put_object(Bucket='bkt', Key='k', Body=b'y', IfMatch=e)\n\
         try:\n    s3.put_object(Bucket='bkt', Key='k', Body=b'z', IfMatch=e)\n    raise SystemExit('stale')\n\
         except ClientError as err:\n    assert err.response['Error']['Code'] == 'PreconditionFailed'\n\
         assert s3.get_object(Bucket='bkt', Key='k')['Body'].read() == b'y'",
    );
}

/// The AWS CLI as a user types it: cp in and out (multipart and ranged), ls, sync twice, rm
/// --recursive, s3api head-object, put-object-acl (501, nothing changed), a part's get-object.
#[tokio::test]
async fn the_aws_cli_copies_syncs_lists_and_removes() {
    let node = node();
    run_suite(&node, "awscli_suite.py");
}

/// Multipart uploads' checksums as boto3 sends them (composite and full-object, each
/// algorithm, parts with and without checksums, UploadPartCopy), and S3's refusals of wrong
/// ones: the completion and HeadObject answer the object's checksum, as S3 computes it.
#[tokio::test]
async fn multipart_uploads_keep_and_answer_their_checksums_as_s3_does() {
    let node = node();
    run_suite(&node, "checksums_suite.py");
}

/// Listings as boto3 pages through them, V1 (marker) and V2, with and without a delimiter,
/// keys that need URL encoding, MaxKeys=0, FetchOwner, and ListBuckets a page at a time.
#[tokio::test]
async fn listings_page_through_every_key_once_in_v1_and_v2() {
    let node = node();
    run_suite(&node, "listing_suite.py");
}

/// The `object_store` crate's S3 client (what Rust tools and many engines use), and objects
/// put with write-back durability landing in Azure Blob (a real Azurite) under their names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_s3_client_round_trips_and_write_back_objects_reach_azurite() {
    let backend = Backend::azurite();
    let node = Node::start_with("", &format!("{}\n{}", backend.toml(""), s3_table("write_back")));
    boto3(&node, "s3.create_bucket(Bucket='ckpt')");
    let store = common::s3::store(&node, "ckpt");
    let data = Bytes::from((0..(3u32 << 20)).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let path = Path::from("run1/step-7/rank-0.distcp");
    store.put(&path, PutPayload::from_bytes(data.clone())).await.unwrap();
    assert_eq!(store.get(&path).await.unwrap().bytes().await.unwrap(), data);
    assert_eq!(store.get_range(&path, 1000..2000).await.unwrap(), data.slice(1000..2000));
    assert_eq!(store.head(&path).await.unwrap().size, data.len() as u64);
    // Conditional create: PutMode::Create sends If-None-Match: *.
    let lock = Path::from("run1/LOCK");
    store.put_opts(&lock, PutPayload::from_static(b"writer-1"), PutMode::Create.into()).await.unwrap();
    let second = store.put_opts(&lock, PutPayload::from_static(b"writer-2"), PutMode::Create.into()).await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })),
        "{second:?}"
    );
    assert_eq!(store.get(&lock).await.unwrap().bytes().await.unwrap().as_ref(), b"writer-1");
    // Multipart through object_store's writer.
    let big = Bytes::from((0..(11u32 << 20)).map(|i| (i % 241) as u8).collect::<Vec<u8>>());
    let mut upload = object_store::WriteMultipart::new_with_chunk_size(
        store.put_multipart(&Path::from("model.bin")).await.unwrap(),
        5 << 20,
    );
    upload.write(&big);
    upload.finish().await.unwrap();
    assert_eq!(store.get(&Path::from("model.bin")).await.unwrap().bytes().await.unwrap(), big);
    // By hand (object_store's MultipartStore): completing joins the parts into the object
    // without writing a byte of them again (the object adopts their chunks).
    let parts: Vec<Bytes> = [5u32 << 20, 5 << 20, 700_000]
        .iter()
        .enumerate()
        .map(|(i, &n)| Bytes::from((0..n).map(|j| ((j as usize + i * 7) % 253) as u8).collect::<Vec<u8>>()))
        .collect();
    let whole = Bytes::from(parts.concat());
    let joined = Path::from("model/joined.bin");
    let upload = store.create_multipart(&joined).await.unwrap();
    let mut ids = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        ids.push(store.put_part(&joined, &upload, i, PutPayload::from_bytes(p.clone())).await.unwrap());
    }
    let puts = || node.labelled_metric("namespace_puts_total", "namespace=\"s3/ckpt\"");
    let (before, adopted) = (puts(), node.metric("object_parts_joined_total"));
    store.complete_multipart(&joined, &upload, ids).await.unwrap();
    // Two blocks stored: the joined manifest and the upload's claim (a delete marker of its
    // record); a copy would have stored the bytes again.
    assert_eq!(puts() - before, 2, "completing stored more than two manifests: the parts were copied");
    assert_eq!(node.metric("object_parts_joined_total") - adopted, 3);
    assert_eq!(store.get(&joined).await.unwrap().bytes().await.unwrap(), whole);
    let across = (5 << 20) - 10..(5 << 20) + 10;
    assert_eq!(
        store.get_range(&joined, across.clone()).await.unwrap(),
        whole.slice(across.start as usize..across.end as usize)
    );
    let listed: Vec<String> =
        store.list(Some(&Path::from("run1"))).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
    assert_eq!(listed, vec!["run1/LOCK".to_string(), "run1/step-7/rank-0.distcp".to_string()]);
    let dirs = store.list_with_delimiter(Some(&Path::from("run1"))).await.unwrap();
    assert_eq!(dirs.common_prefixes, vec![Path::from("run1/step-7")]);
    assert_eq!(dirs.objects.len(), 1);
    store.delete(&lock).await.unwrap();
    assert!(matches!(store.head(&lock).await, Err(object_store::Error::NotFound { .. })));

    // Written with write-back durability: each object is exported to Blob under its name
    // (the joined one staged from its parts' chunks), and no part on its own.
    let blobs = ObjectBlobs::open(&format!("{}/objects", backend.url), &backend.options(), Retries::default()).unwrap();
    let ns = Namespace::new("s3/ckpt").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for (path, want) in [("o/run1/step-7/rank-0.distcp", &data), ("o/model.bin", &big), ("o/model/joined.bin", &whole)]
    {
        let name = blobs.name(&ns, path);
        loop {
            if let Ok(Some(file)) = blobs.read(&name, 0..want.len() as u64).await {
                assert!(file == want, "Azurite holds other bytes for {path}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{path} was not exported: {}", node.stderr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut azure = object_store::azure::MicrosoftAzureBuilder::new().with_url("az://kvtier");
    for (k, v) in backend.options() {
        azure = azure.with_config(k.parse().unwrap(), v);
    }
    let files: Vec<String> = azure
        .build()
        .unwrap()
        .list(Some(&Path::from("nodes/kv/objects")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(files.iter().any(|f| f.ends_with("joined.bin")), "{files:?}");
    assert!(!files.iter().any(|f| f.contains("/u/")), "parts were exported on their own: {files:?}");
}

/// The fan-in through a cluster: one upload's parts sent to three different members, the
/// completion to one of them, the object read from the third; its file in Blob is staged
/// from the parts' chunks by their owners; it outlives a member's kill -9 and restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_fans_in_through_every_member_and_survives_one_dying() {
    let shared = tempfile::tempdir().unwrap();
    let objects = shared.path().join("objects");
    let mut nodes = common::start_static_cluster(&["n1", "n2", "n3"], |id| {
        format!(
            "peer_timeout = \"3s\"\n\n[namespaces.\"s3*\"]\nreplicas = 2\n\n[blob]\nurl = \"file://{}/nodes/{id}\"\n\
             objects_url = \"file://{}\"\nflush_linger = \"10ms\"\n\n{}",
            shared.path().display(),
            objects.display(),
            s3_table("write_back")
        )
    });
    boto3(&nodes[0], "s3.create_bucket(Bucket='ckpt')");
    boto3(&nodes[1], "s3.create_bucket(Bucket='logs')");
    boto3(&nodes[2], "s3.create_bucket(Bucket='data')");
    // Each member lists every bucket, whichever member holds its marker.
    let all_buckets = "assert sorted(b['Name'] for b in s3.list_buckets()['Buckets']) == ['ckpt', 'data', 'logs']";
    nodes.iter().for_each(|node| boto3(node, all_buckets));
    let parts: Vec<Bytes> = [6 << 20, 5 << 20, 1 << 20].iter().enumerate().map(|(i, &n)| data(i as u64, n)).collect();
    let whole = Bytes::from(parts.concat());
    let path = Path::from("step-9/model.safetensors");
    let upload = common::s3::store(&nodes[0], "ckpt").create_multipart(&path).await.unwrap();
    let mut ids = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let via = common::s3::store(&nodes[(i + 1) % 3], "ckpt");
        ids.push(via.put_part(&path, &upload, i, PutPayload::from_bytes(p.clone())).await.unwrap());
    }
    common::s3::store(&nodes[1], "ckpt").complete_multipart(&path, &upload, ids).await.unwrap();
    assert_eq!(nodes[1].metric("object_parts_joined_total"), 3);
    let reader = common::s3::store(&nodes[2], "ckpt");
    assert_eq!(reader.get(&path).await.unwrap().bytes().await.unwrap(), whole);
    assert_eq!(
        reader.get_range(&path, (6 << 20) - 3..(6 << 20) + 3).await.unwrap(),
        whole.slice((6 << 20) - 3..(6 << 20) + 3)
    );

    // Exported: the file under its name, staged from the chunks (no part exported alone).
    let file = objects.join("s3%2Fckpt/o/step-9/model.safetensors");
    common::wait_until("the joined object's export", Duration::from_secs(60), || {
        std::fs::read(&file).is_ok_and(|b| b == whole)
    });
    assert!(!objects.join("s3%2Fckpt/u").exists(), "a part or marker was exported on its own");
    let staged: u64 = nodes.iter().map(|n| n.metric("object_parts_staged_total")).sum();
    assert!(staged >= 3, "{staged} parts staged");

    // Conditional creates racing through every member: one writer of each key wins, and the
    // key holds its bytes (decided by the key's primary at the commit, not per node).
    for round in 0..4 {
        let lock = Path::from(format!("locks/lock-{round}"));
        let racers = (0..6).map(|w| {
            let (store, lock) = (common::s3::store(&nodes[w % 3], "ckpt"), lock.clone());
            async move {
                let body = data((100 + w) as u64, 1 << 20);
                let put = store.put_opts(&lock, PutPayload::from_bytes(body.clone()), PutMode::Create.into()).await;
                match put {
                    Ok(_) => Some(body),
                    Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => None,
                    Err(e) => panic!("a racing create failed otherwise: {e}"),
                }
            }
        });
        let winners: Vec<Bytes> = futures::future::join_all(racers).await.into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: {} writers created the key", winners.len());
        assert_eq!(reader.get(&lock).await.unwrap().bytes().await.unwrap(), winners[0]);

        // Compare-and-swap (If-Match: the ETag all of them read, as KVBM's G4 takes a lock
        // over), racing through every member: one replaces the object, the others get 412.
        let seen = reader.head(&lock).await.unwrap().e_tag;
        let racers = (0..6).map(|w| {
            let (store, lock) = (common::s3::store(&nodes[w % 3], "ckpt"), lock.clone());
            let update = PutMode::Update(UpdateVersion { e_tag: seen.clone(), version: None });
            async move {
                let body = data((200 + w) as u64, 100_000);
                match store.put_opts(&lock, PutPayload::from_bytes(body.clone()), update.into()).await {
                    Ok(_) => Some(body),
                    Err(object_store::Error::Precondition { .. }) => None,
                    Err(e) => panic!("a racing swap failed otherwise: {e}"),
                }
            }
        });
        let winners: Vec<Bytes> = futures::future::join_all(racers).await.into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: {} writers swapped the key", winners.len());
        assert_eq!(reader.get(&lock).await.unwrap().bytes().await.unwrap(), winners[0]);

        // A conditional delete through any member is decided by the key's primary: the ETag
        // all of them read before the swap deletes nothing, the current one deletes it.
        let stale = seen.expect("an ETag");
        boto3(
            &nodes[round % 3],
            &format!(
                "from botocore.exceptions import ClientError\nk = '{lock}'\n\
                 try:\n    s3.delete_object(Bucket='ckpt', Key=k, IfMatch='{stale}')\n    raise SystemExit('deleted')\n\
                 except ClientError as e:\n    assert e.response['Error']['Code'] == 'PreconditionFailed', e\n\
                 s3.delete_object(Bucket='ckpt', Key=k, IfMatch=s3.head_object(Bucket='ckpt', Key=k)['ETag'])"
            ),
        );
        assert!(matches!(reader.head(&lock).await, Err(object_store::Error::NotFound { .. })));
    }

    nodes[0].kill9();
    assert_eq!(
        reader.get(&path).await.unwrap().bytes().await.unwrap(),
        whole,
        "two copies: one member's loss keeps it"
    );
    boto3(&nodes[2], all_buckets);
    // A conditional create is decided only with every owner of the key answering: with n1
    // (one of two owners) down it is refused, not decided blindly; without n1 it goes on.
    let ids = ["n1", "n2", "n3"];
    let key_owned = |by_n1: bool| {
        (0..100)
            .map(|i| format!("locks/down-{i}"))
            .find(|k| common::path_owners(&ids, "s3/ckpt", &format!("o/{k}")).contains(&"n1") == by_n1)
            .unwrap()
    };
    let writer = common::s3::store(&nodes[2], "ckpt");
    let create = |k: String| {
        let writer = writer.clone();
        async move { writer.put_opts(&Path::from(k), PutPayload::from_static(b"l"), PutMode::Create.into()).await }
    };
    let blind = create(key_owned(true)).await;
    assert!(blind.is_err(), "a create with an owner down was decided: {blind:?}");
    assert!(format!("{blind:?}").contains("status: 503"), "a 503 a client retries: {blind:?}");
    create(key_owned(false)).await.unwrap();
    nodes[0].restart();
    boto3(&nodes[0], all_buckets);
    let back = common::s3::store(&nodes[0], "ckpt");
    assert_eq!(back.get(&path).await.unwrap().bytes().await.unwrap(), whole);
}

/// A joined object's chunks are its own after a restart: the start-up sweep of chunks no
/// manifest names keeps them (the parts' manifests are gone), and nothing of the parts is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_object_outlives_kill_9_and_the_restart_sweep() {
    let mut node = node();
    boto3(&node, "s3.create_bucket(Bucket='ckpt')");
    let store = common::s3::store(&node, "ckpt");
    let empty = node.client().await.stats().await.unwrap().index_blocks;
    let parts: Vec<Bytes> = [5 << 20, 5 << 20, 3].iter().enumerate().map(|(i, &n)| data(i as u64, n)).collect();
    let path = Path::from("joined.bin");
    let upload = store.create_multipart(&path).await.unwrap();
    let mut ids = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        ids.push(store.put_part(&path, &upload, i, PutPayload::from_bytes(p.clone())).await.unwrap());
    }
    store.complete_multipart(&path, &upload, ids).await.unwrap();
    node.kill9();
    node.restart();
    let store = common::s3::store(&node, "ckpt");
    assert_eq!(store.get(&path).await.unwrap().bytes().await.unwrap(), Bytes::from(parts.concat()));
    let client = node.client().await;
    let left: Vec<String> = client.list_objects("s3/ckpt", "u/").await.unwrap().into_iter().map(|o| o.path).collect();
    assert!(left.is_empty(), "parts left behind: {left:?}");
    // Deleting it deletes every chunk it adopted (and its delete marker, once its export
    // has removed the file from Blob).
    store.delete(&path).await.unwrap();
    assert!(matches!(store.head(&path).await, Err(object_store::Error::NotFound { .. })));
    let client = node.client().await;
    let started = std::time::Instant::now();
    while client.stats().await.unwrap().index_blocks != empty {
        let left = client.stats().await.unwrap().index_blocks;
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{left} blocks left, {empty} before");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An upload its client never finishes is removed with its parts once
/// `s3.stale_uploads_expiry` has passed; one begun since is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_are_removed_with_their_parts_after_the_expiry() {
    let node = Node::start_with(
        "",
        &s3_table("write_back").replacen("[[s3.keys]]", "stale_uploads_expiry = \"3s\"\n[[s3.keys]]", 1),
    );
    boto3(&node, "s3.create_bucket(Bucket='ckpt')");
    let store = common::s3::store(&node, "ckpt");
    let path = Path::from("abandoned.bin");
    let upload = store.create_multipart(&path).await.unwrap();
    store.put_part(&path, &upload, 0, PutPayload::from_bytes(data(1, 5 << 20))).await.unwrap();
    let client = node.client().await;
    let pending = || async { client.list_objects("s3/ckpt", "u/").await.unwrap().len() };
    assert_eq!(pending().await, 2, "the marker and its part");
    common::wait_until("the abandoned upload's removal", Duration::from_secs(30), || {
        node.metric("s3_uploads_expired_total") >= 1
    });
    assert_eq!(pending().await, 0, "its part went with it");
    let late = store.put_part(&path, &upload, 1, PutPayload::from_bytes(data(2, 100))).await;
    assert!(late.is_err(), "a part for a removed upload: {late:?}");
    assert_eq!(pending().await, 0, "the late part deleted itself");
    // A fresh upload is not touched before its own expiry, and completes.
    let fresh = store.create_multipart(&path).await.unwrap();
    let part = store.put_part(&path, &fresh, 0, PutPayload::from_bytes(data(3, 1000))).await.unwrap();
    store.complete_multipart(&path, &fresh, vec![part]).await.unwrap();
    assert_eq!(store.get(&path).await.unwrap().bytes().await.unwrap(), data(3, 1000));
    assert_eq!(node.metric("s3_uploads_expired_total"), 1);
}

/// A GET whose second chunk fails its checksum (one byte flipped on SSD, the node restarted
/// with memory empty): the status and headers are out by then, so the body is cut short.
/// The client must see an error, not a short object, and the node must say which object,
/// where, and why (it once logged nothing).
#[tokio::test]
async fn a_chunk_that_cannot_be_read_mid_get_cuts_the_body_and_is_logged_and_counted() {
    let mut node = node();
    boto3(&node, "s3.create_bucket(Bucket='ckpt')");
    let data = Bytes::from((0..(2u32 << 20)).map(|i| (i % 249) as u8 ^ (i >> 12) as u8).collect::<Vec<u8>>());
    let path = Path::from("run1/weights.bin");
    common::s3::store(&node, "ckpt").put(&path, PutPayload::from_bytes(data.clone())).await.unwrap();
    assert!(node.terminate().success());
    let slots = node.data_dir().join("ssd").join(kvtier_tiers::SLOT_FILE);
    let mut file = std::fs::read(&slots).unwrap();
    let needle = &data[(1 << 20) + 5000..(1 << 20) + 5064]; // in the second 1 MiB chunk
    let at = file.windows(needle.len()).position(|w| w == needle).expect("the chunk's bytes on disk");
    file[at + 10] ^= 0x40;
    std::fs::write(&slots, &file).unwrap();
    node.restart();

    let got = common::s3::store(&node, "ckpt").get(&path).await.unwrap().bytes().await;
    assert!(got.is_err(), "a short body read as the object: {:?}", got.map(|b| b.len()));
    assert!(node.metric("s3_bodies_cut_total") >= 1);
    let logged = node.stderr();
    assert!(logged.contains("S3 GET cut short") && logged.contains("ckpt/run1/weights.bin"), "{logged}");
}
