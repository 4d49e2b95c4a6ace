//! Every door with the default config, for sizes from 0 B to several GiB: named objects
//! through the Rust client, `kvtier cp` and S3; blocks up to `max_block_size` (64 MiB) over
//! gRPC and shared memory. Objects are stored in 16 MiB chunks and gRPC messages may not pass
//! 16 MiB, so a chunk must travel in pieces (a 40 MB file once could not be read back).
//! (The `lm://` door's largest block is tested in tests/lmcache.rs, the Python doors in
//! connectors/python/tests/test_sizes.py.)

mod common;

use std::{
    io::{Read, Write},
    path::Path,
    process::Command,
};

use bytes::Bytes;
use common::{BIN, MIB, Node, data, default_config};
use kvtier_blockmgr::{Durability, GetItem, ObjectRange, PutItem};
use kvtier_client::shm::ShmPut;
use object_store::{ObjectStore, PutPayload, path::Path as S3Path};

const CHUNK: u64 = 16 * MIB;
/// Around every boundary: empty, one byte, a gRPC message (4 MiB), a chunk (16 MiB), the
/// largest block (64 MiB), and the 40 MB file of the report.
const SIZES: [u64; 9] = [0, 1, 4 * MIB + 1, CHUNK - 1, CHUNK, CHUNK + 1, 40_000_000, 64 * MIB, 64 * MIB + 3];

/// A node on the default config but for its SSD's capacity (8 GiB by default; the
/// message, block and chunk sizes under test do not depend on it).
fn node(ssd: &str) -> Node {
    let tables = format!(
        "[ssd]\ncapacity = \"{ssd}\"\n[s3]\nlisten = \"127.0.0.1:0\"\n[[s3.keys]]\naccess_key = \"AKIDWRITER\"\n\
         secret_key = \"writer-secret\"\nbuckets = [\"*\"]\n"
    );
    Node::start_with_config(|dir| default_config(dir, &tables))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_every_size_round_trip_through_the_client_and_s3() {
    let node = node("1GiB");
    let client = node.client().await;
    for (i, &size) in SIZES.iter().enumerate() {
        let body = data(i as u64, size as usize);
        let path = format!("sizes/{size}");
        // Sent in 1 MiB pieces, as a file is read.
        let pieces: Vec<Bytes> = (0..body.len())
            .step_by(MIB as usize)
            .map(|at| body.slice(at..(at + MIB as usize).min(body.len())))
            .collect();
        let info = client
            .put_object("ckpt/sizes", &path, futures::stream::iter(pieces), Durability::LocalDisk, Some(size), None)
            .await
            .unwrap_or_else(|e| panic!("put of {size} bytes: {e}"));
        assert_eq!(info.size, size);
        let got = client.read_object("ckpt/sizes", &path, ObjectRange::all()).await;
        assert!(got.as_ref().is_ok_and(|g| *g == body), "{size} bytes read back: {:?}", got.map(|g| g.len()));
        // A range across the first chunk boundary.
        if size > CHUNK + 10 {
            let range = client.read_object("ckpt/sizes", &path, ObjectRange::bytes(CHUNK - 10, 20)).await.unwrap();
            assert_eq!(range, body.slice((CHUNK - 10) as usize..(CHUNK + 10) as usize));
        }
    }

    // S3: a PUT of each size (one request, up to S3's 5 GiB), a GET, a ranged GET.
    let s3 = common::s3::store(&node, "sizes");
    common::s3::boto3(&node, "s3.create_bucket(Bucket='sizes')");
    for (i, &size) in SIZES.iter().enumerate() {
        let body = data(100 + i as u64, size as usize);
        let path = S3Path::from(format!("s3/{size}"));
        s3.put(&path, PutPayload::from_bytes(body.clone())).await.unwrap_or_else(|e| panic!("S3 PUT {size}: {e}"));
        let got = s3.get(&path).await.unwrap().bytes().await.unwrap();
        assert!(got == body, "S3 GET of {size} bytes returned {} bytes, or others", got.len());
        if size > CHUNK + 10 {
            let got = s3.get_range(&path, CHUNK - 10..CHUNK + 10).await.unwrap();
            assert_eq!(got, body.slice((CHUNK - 10) as usize..(CHUNK + 10) as usize));
        }
    }
}

/// Writes `size` bytes to `path`: 1 MiB pieces, each different (its index in its first bytes).
fn write_file(path: &Path, size: u64, seed: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let piece = data(seed, MIB as usize).to_vec();
    let mut left = size;
    for i in 0u64.. {
        if left == 0 {
            break;
        }
        let mut p = piece.clone();
        p[..8].copy_from_slice(&i.to_le_bytes());
        let n = left.min(MIB) as usize;
        file.write_all(&p[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
}

/// Whether two files hold the same bytes (read in pieces: they may be larger than memory).
fn same_file(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = read_full(&mut a, &mut x);
        if n != read_full(&mut b, &mut y) || x[..n] != y[..n] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut at = 0;
    while at < buf.len() {
        match f.read(&mut buf[at..]).unwrap() {
            0 => break,
            n => at += n,
        }
    }
    at
}

#[test]
fn kvtier_cp_copies_files_from_empty_to_several_gib_in_and_out() {
    let node = node("4GiB");
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0, 1, CHUNK + 1, 40_000_000, 3 << 30];
    for (i, size) in sizes.into_iter().enumerate() {
        let (src, back) = (dir.path().join(format!("in-{size}")), dir.path().join(format!("out-{size}")));
        write_file(&src, size, i as u64);
        let url = format!("kvtier://ckpt%2Fcli/run/file-{size}");
        for (from, to) in [(src.to_str().unwrap(), url.as_str()), (url.as_str(), back.to_str().unwrap())] {
            let out = Command::new(BIN).args(["cp", "--server", &node.addrs.grpc, from, to]).output().unwrap();
            assert!(out.status.success(), "cp {from} {to}: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(same_file(&src, &back), "{size} bytes came back different");
        std::fs::remove_file(&src).unwrap();
        std::fs::remove_file(&back).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_up_to_max_block_size_round_trip_over_grpc_and_shared_memory() {
    let node = node("1GiB");
    let client = node.client().await;
    let max = 64 * MIB as usize;
    let blocks = [PutItem::new(b"max".to_vec(), data(1, max)), PutItem::new(b"max-1".to_vec(), data(2, max - 1))];
    for r in client.put("kv/sizes", &blocks, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    let got = client.get("kv/sizes", &[b"max".to_vec(), b"max-1".to_vec()]).await.unwrap();
    for (got, want) in got.iter().zip(&blocks) {
        assert!(matches!(got, GetItem::Hit { data, .. } if *data == want.data), "a {}-byte block", want.data.len());
    }
    // One byte over is refused by name, and nothing is stored.
    let over = client.put("kv/sizes", &[PutItem::new(b"over".to_vec(), data(3, max + 1))], Durability::Cache).await;
    let refused = over.map(|r| format!("{:?}", r[0].result)).unwrap_or_else(|e| e.to_string());
    assert!(refused.contains("67108865"), "{refused}");
    assert!(matches!(client.get("kv/sizes", &[b"over".to_vec()]).await.unwrap()[0], GetItem::Miss { .. }));

    // Shared memory: the same sizes through the arena.
    let mut shm = node.shm(&["kv/shm"]);
    let big = data(4, max);
    let put = shm.put("kv/shm", &[(b"max", &big[..])], Durability::LocalDisk).unwrap();
    assert!(matches!(put[0], ShmPut::Stored(_)), "{put:?}");
    let got = shm.get("kv/shm", &[b"max"]).unwrap();
    assert!(matches!(&got[0], Ok(bytes) if bytes[..] == big[..]), "the 64 MiB block through shared memory");
    let got = client.get("kv/shm", &[b"max".to_vec()]).await.unwrap();
    assert!(matches!(&got[0], GetItem::Hit { data, .. } if *data == big), "and over gRPC");
}
