//! LMCache's `lm://` protocol against a real `kvtier serve`: chunks round-trip with their
//! format, dtype and shape, land in a namespace per model; a request that can be refused alone
//! (a foreign key, an oversized PUT) is, and the connection goes on; one that leaves the stream
//! out of step closes only its own connection. Each is counted in the metrics.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::Node;
use kvtier_lmcache::wire::{Command, REPLY_LEN, REQUEST_LEN, Request};

const KEY: &str = "meta-llama/Llama-3.1-8B@1@0@1f2e3d@bfloat16";

fn node() -> Node {
    Node::start_with("", "[lmcache]\nlisten = \"127.0.0.1:0\"\n")
}

fn connect(node: &Node) -> TcpStream {
    let s = TcpStream::connect(node.addrs.lmcache.as_ref().expect("the lm:// address")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn header(command: Command, length: u64, key: &str) -> [u8; REQUEST_LEN] {
    Request { command, length, fmt: 1, dtype: 3, shape: [2, 4, 16, 64], key: key.into() }.encode().unwrap()
}

fn reply(s: &mut TcpStream) -> [i32; 9] {
    let mut b = [0u8; REPLY_LEN];
    s.read_exact(&mut b).unwrap();
    std::array::from_fn(|i| i32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()))
}

fn put(s: &mut TcpStream, key: &str, payload: &[u8]) {
    s.write_all(&header(Command::Put, payload.len() as u64, key)).unwrap();
    s.write_all(payload).unwrap();
}

/// GET: `Some(payload)` on success (checking the echoed format, dtype and shape).
fn get(s: &mut TcpStream, key: &str) -> Option<Vec<u8>> {
    s.write_all(&header(Command::Get, 0, key)).unwrap();
    let r = reply(s);
    if r[0] != 200 {
        assert_eq!(r[0], 400);
        return None;
    }
    assert_eq!(&r[2..8], &[1, 3, 2, 4, 16, 64], "fmt, dtype and shape come back as put");
    let mut data = vec![0u8; r[1] as usize];
    s.read_exact(&mut data).unwrap();
    Some(data)
}

fn exists(s: &mut TcpStream, key: &str) -> bool {
    s.write_all(&header(Command::Exist, 0, key)).unwrap();
    reply(s)[0] == 200
}

/// The connection was closed by the server: a read sees EOF (or a reset).
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

fn chunk(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn chunks_round_trip_with_their_shape_in_a_namespace_per_model() {
    let node = node();
    let mut s = connect(&node);
    s.write_all(&header(Command::Health, 0, "")).unwrap();
    assert_eq!(reply(&mut s)[0], 200);
    let data = chunk(7, 2 * 4 * 16 * 64 * 2);
    assert!(!exists(&mut s, KEY));
    assert_eq!(get(&mut s, KEY), None);
    put(&mut s, KEY, &data);
    // PUT has no answer; the next request on the connection sees it stored.
    assert!(exists(&mut s, KEY));
    assert_eq!(get(&mut s, KEY).as_deref(), Some(&data[..]));
    // Another connection (another worker) sees it too.
    assert_eq!(get(&mut connect(&node), KEY).as_deref(), Some(&data[..]));

    let stats = node.http_get("/metrics");
    let ns = "lmcache/meta-llama/Llama-3.1-8B/ws1.w0.bfloat16";
    assert!(stats.contains(&format!("kvtier_namespace_puts_total{{namespace=\"{ns}\"}} 1")), "{stats}");
    assert!(stats.contains(&format!("kvtier_namespace_hits_total{{namespace=\"{ns}\"}} 2")), "{stats}");
    assert!(stats.contains(&format!("kvtier_namespace_misses_total{{namespace=\"{ns}\"}} 1")), "{stats}");
    // `kvtier stat` shows the model's hit rate.
    let out = std::process::Command::new(common::BIN).args(["stat", "--server", &node.addrs.grpc]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table.lines().find(|l| l.starts_with(ns)).unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("66.7%"), "{line}");
}

#[test]
fn malformed_requests_close_their_connection_and_nothing_else() {
    let node = node();
    let mut healthy = connect(&node);
    put(&mut healthy, KEY, &chunk(1, 4096));

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("header", {
            let mut h = header(Command::Get, 0, KEY);
            h[..4].copy_from_slice(&77i32.to_le_bytes());
            h.to_vec()
        }),
        ("header", {
            let mut h = header(Command::Put, 0, KEY);
            h[4..8].copy_from_slice(&(-1i32).to_le_bytes());
            h.to_vec()
        }),
        ("truncated", header(Command::Get, 0, KEY)[..100].to_vec()),
        ("truncated", {
            let other = KEY.replace("1f2e3d", "aaaa");
            let mut b = header(Command::Put, 4096, &other).to_vec();
            b.extend_from_slice(&chunk(2, 1000));
            b
        }),
    ];
    for (reason, bytes) in &cases {
        let before = node.labelled_metric("lmcache_protocol_errors_total", &format!("reason=\"{reason}\""));
        let mut s = connect(&node);
        s.write_all(bytes).unwrap();
        if *reason == "truncated" {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert!(closed(&mut s), "{reason}: the server closes the connection");
        let after = node.labelled_metric("lmcache_protocol_errors_total", &format!("reason=\"{reason}\""));
        assert_eq!(after, before + 1, "{reason} is counted");
        // The other connection and the stored chunk are untouched.
        assert_eq!(get(&mut healthy, KEY).as_deref(), Some(&chunk(1, 4096)[..]), "after {reason}");
    }
    // The cut-short PUT stored nothing.
    assert!(!exists(&mut healthy, &KEY.replace("1f2e3d", "aaaa")));
    assert!(node.stderr().contains("closing an lm:// connection"));
}

#[test]
fn foreign_keys_and_oversized_puts_are_refused_and_the_connection_goes_on() {
    let node = node();
    let mut s = connect(&node);
    let count = |reason: &str| node.labelled_metric("lmcache_protocol_errors_total", &format!("reason=\"{reason}\""));
    // A key that is not LMCache's: GET and EXIST answer failure; a PUT's payload is dropped.
    assert_eq!(get(&mut s, "not an lmcache key"), None);
    assert!(!exists(&mut s, "m@x@0@ab@half"));
    put(&mut s, "@1@0@ab@half", &chunk(4, 1000));
    // A PUT has no answer: an EXIST after it on the same connection is answered once the
    // server is done with it.
    assert!(!exists(&mut s, KEY));
    assert_eq!(count("key"), 3);
    // 2 MiB is over this node's 1 MiB max_block_size: read, dropped, counted.
    put(&mut s, KEY, &chunk(5, 2 << 20));
    assert!(!exists(&mut s, KEY));
    assert_eq!(count("oversize"), 1);
    // The stream stayed in step: the same connection stores and reads.
    put(&mut s, KEY, &chunk(6, 4096));
    assert_eq!(get(&mut s, KEY).as_deref(), Some(&chunk(6, 4096)[..]));
}

#[test]
fn a_stalled_payload_is_dropped_after_the_idle_timeout() {
    // small_config sets server.stream_idle_timeout = 2s.
    let node = node();
    let mut s = connect(&node);
    s.write_all(&header(Command::Put, 4096, KEY)).unwrap();
    s.write_all(&chunk(3, 100)).unwrap();
    assert!(closed(&mut s));
    assert_eq!(node.labelled_metric("lmcache_protocol_errors_total", "reason=\"stalled\""), 1);
    assert!(!exists(&mut connect(&node), KEY));
}

#[test]
fn chunks_up_to_the_default_max_block_size_round_trip() {
    // The default config (but a smaller SSD): blocks up to 64 MiB, a chunk is its value
    // header plus its payload.
    let tables = "[ssd]\ncapacity = \"512MiB\"\n[lmcache]\nlisten = \"127.0.0.1:0\"\n";
    let node = Node::start_with_config(|dir| common::default_config(dir, tables));
    let mut s = connect(&node);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let big = chunk(8, (64 << 20) - 4096);
    put(&mut s, KEY, &big);
    assert!(get(&mut s, KEY) == Some(big), "a chunk of 64 MiB less its header comes back whole");
    // A payload of 64 MiB leaves no room for the header: refused, and the stream goes on.
    let other = KEY.replace("1f2e3d", "bbbb");
    put(&mut s, &other, &chunk(9, 64 << 20));
    assert!(!exists(&mut s, &other));
    assert_eq!(node.labelled_metric("lmcache_protocol_errors_total", "reason=\"oversize\""), 1);
}
