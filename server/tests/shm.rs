//! The shared-memory data plane against a real `kvtier serve`: bytes written through the
//! mapping read back byte-exact over gRPC and the other way round, sessions of different
//! processes share blocks, namespaces and uids are enforced by the server, and a session
//! that dies releases what it held.

mod common;

use std::{io::Write, os::unix::net::UnixStream, process::Command};

use common::{MIB, Node, data, key};
use kvtier_blockmgr::{Durability, GetItem, MissReason, PutItem};
use kvtier_client::shm::{ShmAlloc, ShmError, ShmGet, ShmPin, ShmPut};
use kvtier_proto::v1;
use kvtier_tiers::TierKind;
use tonic::Code;

const NS: &str = "llama-8b/bf16/tp0";

#[tokio::test]
async fn blocks_put_through_shm_read_back_over_grpc_and_back() {
    let node = Node::start();
    let mut shm = node.shm(&[NS]);
    assert_eq!(shm.arena_size(), 8 * MIB);
    let blocks: Vec<(Vec<u8>, bytes::Bytes)> = (0..6).map(|i| (key(i), data(i, 100_000 + i as usize * 7777))).collect();
    let refs: Vec<(&[u8], &[u8])> = blocks.iter().map(|(k, v)| (k.as_slice(), v.as_ref())).collect();
    let put = shm.put(NS, &refs, Durability::Cache).unwrap();
    assert!(put.iter().all(|p| *p == ShmPut::Stored(TierKind::Cpu)), "{put:?}");
    assert!(shm.put(NS, &refs[..2], Durability::Cache).unwrap().iter().all(|p| *p == ShmPut::Existed));
    // Lookups on the shm socket answer the longest present prefix, as gRPC does.
    let keys: Vec<&[u8]> = blocks.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(shm.lookup(NS, &keys).unwrap(), vec![TierKind::Cpu; 6]);
    assert_eq!(shm.lookup(NS, &[keys[0], b"absent", keys[1]]).unwrap(), vec![TierKind::Cpu]);
    assert!(matches!(shm.lookup("other/ns", &keys), Err(ShmError::Refused { code: Code::PermissionDenied, .. })));

    let client = node.unix_client().await;
    let keys: Vec<Vec<u8>> = blocks.iter().map(|(k, _)| k.clone()).collect();
    for (item, (_, want)) in client.get(NS, &keys).await.unwrap().into_iter().zip(&blocks) {
        let GetItem::Hit { data, .. } = item else { panic!("{item:?}") };
        assert_eq!(&data, want, "bytes written through the mapping read back over gRPC");
    }

    // The other way: gRPC in, shared memory out, into caller buffers.
    let items: Vec<PutItem> = (10..13).map(|i| PutItem { key: key(i), data: data(i, 300_000) }).collect();
    client.put(NS, &items, Durability::Cache).await.unwrap();
    let mut bufs = vec![vec![0u8; 300_000]; 4];
    let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let got = shm.get_into(NS, &[&key(10), &key(11), &key(12), &key(99)], &mut outs).unwrap();
    assert!(matches!(got[3], ShmGet::Miss { reason: MissReason::NotFound, .. }), "{:?}", got[3]);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(got[i], ShmGet::Hit { len: 300_000, tier: TierKind::Cpu });
        assert_eq!(bufs[i], item.data.as_ref());
    }
    // A buffer too small is a miss that says so, not a partial copy.
    let mut small = [0u8; 10];
    let got = shm.get_into(NS, &[&key(10)], &mut [&mut small[..]]).unwrap();
    assert!(matches!(&got[0], ShmGet::Miss { message, .. } if message.contains("300000")), "{got:?}");
}

#[tokio::test]
async fn two_engines_share_one_cache_through_their_own_sessions() {
    let node = Node::start();
    let (mut a, mut b) = (node.shm(&[NS]), node.shm(&[NS]));
    let v = data(7, MIB as usize);
    assert_eq!(a.put(NS, &[(&key(7), &v)], Durability::Cache).unwrap(), vec![ShmPut::Stored(TierKind::Cpu)]);
    assert_eq!(b.get(NS, &[&key(7)]).unwrap(), vec![Ok(v.to_vec())]);
    assert!(node.http_get("/metrics").contains("kvtier_shm_sessions 2"));
}

/// What an engine that copies by itself does (vLLM's GPU workers writing into slots a
/// scheduler allocated): the slot ops one by one, across sessions that share the arena.
#[tokio::test]
async fn slots_allocated_by_one_session_are_filled_through_another_and_pinned_by_a_third() {
    let node = Node::start();
    let (mut scheduler, writer, mut reader) = (node.shm(&[NS]), node.shm(&[NS]), node.shm(&[NS]));
    let arena = writer.arena();
    assert_eq!(arena.id(), scheduler.arena().id(), "sessions of one server map one arena");
    assert_eq!(arena.len() as u64, scheduler.arena_size());

    let blocks: Vec<(Vec<u8>, bytes::Bytes)> = (0..3).map(|i| (key(i), data(i, 256 * 1024))).collect();
    let sizes: Vec<(&[u8], u64)> = blocks.iter().map(|(k, v)| (k.as_slice(), v.len() as u64)).collect();
    let slots: Vec<_> = scheduler
        .alloc(NS, &sizes, Durability::Cache, Some(std::time::Duration::ZERO))
        .unwrap()
        .into_iter()
        .map(|a| match a {
            ShmAlloc::Slot(s) => s,
            other => panic!("{other:?}"),
        })
        .collect();
    for (slot, (_, bytes)) in slots.iter().zip(&blocks) {
        assert_eq!(slot.offset % 4096, 0, "slots start on pages (GPU copies address them by page)");
        // SAFETY: the slot is allocated, unshared until committed, inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), arena.as_ptr().add(slot.offset as usize), bytes.len()) };
    }
    // The last one is abandoned: released, never committed, never readable.
    let committed = scheduler.commit(&[slots[0].handle, slots[1].handle]).unwrap();
    assert_eq!(committed, vec![ShmPut::Stored(TierKind::Cpu); 2]);
    assert_eq!(scheduler.release(&[slots[2].handle, slots[0].handle]).unwrap(), 1, "a committed handle is gone");
    assert!(matches!(scheduler.commit(&[slots[2].handle]).unwrap()[0], ShmPut::Failed { .. }));
    assert!(matches!(&scheduler.alloc(NS, &sizes[..1], Durability::Cache, None).unwrap()[0], ShmAlloc::Existed));

    let keys: Vec<&[u8]> = blocks.iter().map(|(k, _)| k.as_slice()).collect();
    let pinned = reader.pin(NS, &keys).unwrap();
    for (pin, (_, want)) in pinned.iter().take(2).zip(&blocks) {
        let ShmPin::Pinned { slot, tier: TierKind::Cpu } = pin else { panic!("{pin:?}") };
        // SAFETY: pinned, inside the mapping.
        let got = unsafe { std::slice::from_raw_parts(arena.as_ptr().add(slot.offset as usize), slot.len as usize) };
        assert_eq!(got, want.as_ref());
    }
    assert!(matches!(&pinned[2], ShmPin::Not(ShmGet::Miss { reason: MissReason::NotFound, .. })), "{pinned:?}");

    // The mapping outlives its session, and a restarted server is a different arena.
    drop(writer);
    let other = Node::start();
    assert_ne!(other.shm(&[NS]).arena().id(), arena.id());
    assert_eq!(arena.len(), 8 * MIB as usize, "still mapped after its session closed");
}

#[tokio::test]
async fn blocks_on_ssd_are_pinned_through_copies_in_rounds_that_fit_in_memory() {
    // 24 blocks of 900 KB do not fit in 8 MiB of memory, and copies of those on SSD may
    // hold at most a quarter of it at once: one read of all 24 takes several pin rounds.
    let node = Node::start();
    let client = node.client().await;
    let put: Vec<PutItem> = (0..24).map(|i| PutItem { key: key(i), data: data(i, 900_000) }).collect();
    client.put(NS, &put, Durability::LocalDisk).await.unwrap();
    let mut shm = node.shm(&[NS]);
    let mut bufs = vec![vec![0u8; 900_000]; 24];
    let keys: Vec<Vec<u8>> = (0..24).map(key).collect();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    let got = shm.get_into(NS, &refs, &mut outs).unwrap();
    let from_ssd = got.iter().filter(|g| matches!(g, ShmGet::Hit { tier: TierKind::Ssd, .. })).count();
    assert!(got.iter().all(|g| matches!(g, ShmGet::Hit { len: 900_000, .. })), "{got:?}");
    assert!(from_ssd >= 12, "only {from_ssd} of 24 blocks came from SSD: {got:?}");
    for (b, p) in bufs.iter().zip(&put) {
        assert_eq!(b.as_slice(), p.data.as_ref());
    }
}

#[tokio::test]
async fn a_block_with_no_memory_for_its_copy_is_sent_to_grpc_not_missed() {
    // 2 MiB of memory: copies may hold 512 KiB, less than one 600 KB block.
    let node =
        Node::start_with("", "[cpu]\ncapacity = \"2MiB\"\nregion_size = \"1MiB\"\n\n[shm]\nalloc_wait = \"20ms\"");
    let client = node.client().await;
    let put: Vec<PutItem> = (0..6).map(|i| PutItem { key: key(i), data: data(i, 600_000) }).collect();
    client.put(NS, &put, Durability::LocalDisk).await.unwrap();
    let mut on_ssd = None;
    for i in 0..6 {
        if client.lookup(NS, &[key(i)]).await.unwrap() == vec![TierKind::Ssd] {
            on_ssd = Some(i as usize);
            break;
        }
    }
    let i = on_ssd.expect("six blocks of 600 KB do not all fit in 2 MiB of memory");
    let mut shm = node.shm(&[NS]);
    let got = shm.get(NS, &[&key(i as u64)]).unwrap();
    assert!(
        matches!(&got[..], [Err(ShmGet::NoRoom { message })] if message.contains("no shared memory free")),
        "{got:?}"
    );
    // What the client then does: read it over gRPC, which needs no arena slot.
    match &client.get(NS, &[key(i as u64)]).await.unwrap()[..] {
        [GetItem::Hit { data, .. }] => assert_eq!(data, &put[i].data),
        other => panic!("{other:?}"),
    }
    // A key that does not exist is still a plain miss, not "no room".
    let got = shm.get(NS, &[b"absent"]).unwrap();
    assert!(matches!(&got[..], [Err(ShmGet::Miss { reason: MissReason::NotFound, .. })]), "{got:?}");
}

#[tokio::test]
async fn sessions_only_name_blocks_of_the_namespaces_they_opened() {
    let node = Node::start();
    let mut a = node.shm(&["tenant-a/m"]);
    a.put("tenant-a/m", &[(b"k", b"secret")], Durability::Cache).unwrap();
    let mut b = node.shm(&["tenant-b/m"]);
    let err = b.get("tenant-a/m", &[b"k"]).unwrap_err();
    assert!(
        matches!(&err, ShmError::Refused { code: Code::PermissionDenied, message } if message.contains("tenant-a/m")),
        "{err}"
    );
    let err = b.put("tenant-a/m", &[(b"k2", b"x")], Durability::Cache).unwrap_err();
    assert!(matches!(err, ShmError::Refused { code: Code::PermissionDenied, .. }), "{err}");
    // The refused requests cost the session nothing; it still works in its own namespace.
    assert!(matches!(
        &b.get("tenant-b/m", &[b"k"]).unwrap()[..],
        [Err(ShmGet::Miss { reason: MissReason::NotFound, .. })]
    ));
    // A malformed namespace in hello is refused by name.
    let err = kvtier_client::shm::ShmClient::connect(node.addrs.shm.as_ref().unwrap(), &[""]).unwrap_err();
    assert!(matches!(err, ShmError::Refused { code: Code::InvalidArgument, .. }), "{err}");
}

/// Runs a hello as uid `nobody` (65534) through `setpriv`: whether a file descriptor came
/// with the answer, and the answer.
fn hello_as_nobody(socket: &str, namespace: &str) -> (bool, v1::ShmResponse) {
    // ShmRequest{hello: ShmHello{namespaces: [namespace]}}, hand-encoded.
    let inner = [&[0x0a, namespace.len() as u8][..], namespace.as_bytes()].concat();
    let msg = [&[0x0a, inner.len() as u8][..], &inner].concat();
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({socket:?})\ns.sendall(bytes({frame:?}))\n\
         msg,anc,_,_=s.recvmsg(4096,socket.CMSG_SPACE(4))\nmsg+=s.recv(4096) if len(msg)<4 else b''\n\
         print('fd' if anc else 'nofd', msg.hex())",
        frame = [&(msg.len() as u32).to_le_bytes()[..], &msg].concat(),
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", &script])
        .output()
        .expect("setpriv runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let (fd, hex) = text.trim().split_once(' ').expect("two words");
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    use prost::Message;
    (fd == "fd", v1::ShmResponse::decode(&bytes[4..]).expect("one whole frame"))
}

fn welcome(answer: &(bool, v1::ShmResponse)) -> Option<&v1::ShmWelcome> {
    match &answer.1.msg {
        Some(v1::shm_response::Msg::Welcome(w)) if answer.0 => Some(w),
        _ => None,
    }
}

fn refusal(answer: &(bool, v1::ShmResponse)) -> String {
    match &answer.1.msg {
        Some(v1::shm_response::Msg::Error(e)) if !answer.0 => e.message.clone(),
        other => panic!("expected a refusal without a descriptor, got {other:?}"),
    }
}

#[test]
fn uids_get_the_arena_only_when_granted_every_namespace() {
    let node = Node::start_with("", "[[shm.grants]]\nuid = 65534\nnamespaces = [\"tenant-a/*\"]\n");
    // Let `nobody` reach the socket inside the test's private temp dir.
    use std::os::unix::fs::PermissionsExt;
    for dir in [node.dir.path(), &node.data_dir()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let socket = node.addrs.shm.clone().unwrap();
    let granted = hello_as_nobody(&socket, "tenant-a/llama");
    // Granted some namespaces only: a window of its own, never the arena.
    let w = welcome(&granted).expect("a granted namespace gets a mapping");
    assert!(w.private_window && w.arena_size == w.session_limit, "{w:?}");
    assert!(refusal(&hello_as_nobody(&socket, "tenant-b/llama")).contains("may not open namespace"));

    let other = Node::start();
    for dir in [other.dir.path(), &other.data_dir()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert!(refusal(&hello_as_nobody(other.addrs.shm.as_ref().unwrap(), "tenant-a/llama")).contains("not granted"));

    // Granted every namespace: the arena itself.
    let trusted = Node::start_with("", "[[shm.grants]]\nuid = 65534\nnamespaces = [\"*\"]\n");
    for dir in [trusted.dir.path(), &trusted.data_dir()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let w = hello_as_nobody(trusted.addrs.shm.as_ref().unwrap(), "tenant-a/llama");
    let w = welcome(&w).expect("a mapping");
    assert!(!w.private_window && w.arena_size == 8 * MIB, "{w:?}");
}

/// Sends one frame on a raw shm connection and reads the answer (ancillary data dropped).
fn raw_call(s: &mut UnixStream, msg: v1::shm_request::Msg) -> v1::ShmResponse {
    use prost::Message;
    let body = v1::ShmRequest { msg: Some(msg) }.encode_to_vec();
    s.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut head = [0u8; 4];
    std::io::Read::read_exact(s, &mut head).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(head) as usize];
    std::io::Read::read_exact(s, &mut body).unwrap();
    v1::ShmResponse::decode(body.as_slice()).unwrap()
}

#[tokio::test]
async fn a_session_that_dies_holding_slots_gives_them_back() {
    use v1::shm_request::Msg;
    let node = Node::start();
    let client = node.client().await;
    let used = async || {
        let s = client.stats().await.unwrap();
        s.tiers.iter().find(|t| t.tier == TierKind::Cpu).unwrap().used_bytes
    };
    let before = used().await;
    // An engine allocates slots for two blocks, then dies before committing them.
    let mut s = UnixStream::connect(node.addrs.shm.as_ref().unwrap()).unwrap();
    raw_call(&mut s, Msg::Hello(v1::ShmHello { namespaces: vec![NS.into()] }));
    let blocks = (0..2).map(|i| v1::BlockHeader { key: key(i).into(), length: MIB, crc32c: None }).collect();
    let reply =
        raw_call(&mut s, Msg::Alloc(v1::ShmAlloc { namespace: NS.into(), blocks, durability: 0, wait_ms: None }));
    let Some(v1::shm_response::Msg::Allocated(a)) = reply.msg else { panic!("{reply:?}") };
    assert!(a.results.iter().all(|r| r.slot.is_some()), "{a:?}");
    assert!(used().await >= before + 2 * MIB, "the allocations take arena space");
    drop(s);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while used().await != before {
        assert!(std::time::Instant::now() < deadline, "slots of a dead session were not given back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(client.lookup(NS, &[key(0)]).await.unwrap().is_empty(), "nothing uncommitted became visible");
}

#[tokio::test]
async fn a_session_holds_at_most_its_limit() {
    let node = Node::start_with("", "[shm]\nsession_limit = \"2MiB\"\n");
    let mut shm = node.shm(&[NS]);
    let blocks: Vec<(Vec<u8>, bytes::Bytes)> = (0..4).map(|i| (key(i), data(i, MIB as usize))).collect();
    let refs: Vec<(&[u8], &[u8])> = blocks.iter().map(|(k, v)| (k.as_slice(), v.as_ref())).collect();
    // The server gives one alloc no more than the limit.
    let sizes: Vec<(&[u8], u64)> = refs.iter().map(|(k, v)| (*k, v.len() as u64)).collect();
    let allocated = shm.alloc(NS, &sizes, Durability::Cache, None).unwrap();
    let slots: Vec<u64> =
        allocated.iter().filter_map(|a| if let ShmAlloc::Slot(s) = a { Some(s.handle) } else { None }).collect();
    assert_eq!(slots.len(), 2, "{allocated:?}");
    assert!(
        allocated.iter().any(|a| matches!(a, ShmAlloc::Failed { code: Code::ResourceExhausted, message } if message.contains("shm session"))),
        "{allocated:?}"
    );
    shm.release(&slots).unwrap();
    // A put sends blocks in batches the limit holds (committed blocks no longer count).
    let put = shm.put(NS, &refs, Durability::Cache).unwrap();
    assert_eq!(put.iter().filter(|p| matches!(p, ShmPut::Stored(_))).count(), 4, "{put:?}");
    // Reads pin at most the limit at once too: 4 MiB come back in rounds of 2 MiB.
    let keys: Vec<&[u8]> = blocks.iter().map(|(k, _)| k.as_slice()).collect();
    let got = shm.get(NS, &keys).unwrap();
    assert_eq!(got, blocks.iter().map(|(_, v)| Ok(v.to_vec())).collect::<Vec<_>>());
}

#[tokio::test]
async fn garbage_on_the_socket_ends_that_session_only() {
    let node = Node::start();
    let mut s = UnixStream::connect(node.addrs.shm.as_ref().unwrap()).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    // An operation before hello is refused with a reason.
    let mut s = UnixStream::connect(node.addrs.shm.as_ref().unwrap()).unwrap();
    // ShmRequest{release: ShmRelease{}} = field 5, empty.
    s.write_all(&[2, 0, 0, 0, 0x2a, 0]).unwrap();
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut head).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(head) as usize];
    std::io::Read::read_exact(&mut s, &mut body).unwrap();
    assert!(String::from_utf8_lossy(&body).contains("must be hello"), "{:?}", String::from_utf8_lossy(&body));
    // The server is unharmed.
    let mut shm = node.shm(&[NS]);
    shm.put(NS, &[(b"k", b"v")], Durability::Cache).unwrap();
    assert_eq!(shm.get(NS, &[b"k"]).unwrap(), vec![Ok(b"v".to_vec())]);
}

#[tokio::test]
async fn puts_into_a_full_arena_make_room_instead_of_falling_back() {
    // 8 MiB of memory filled several times over through shm: every allocation must get a
    // slot (blocks demoted to SSD to make room), none sent back to gRPC for lack of room.
    let node = Node::start_with("", "[shm]\nalloc_wait = \"2s\"\n");
    let mut shm = node.shm(&[NS]);
    for round in 0..12u64 {
        let blocks: Vec<(Vec<u8>, bytes::Bytes)> =
            (0..4).map(|i| (key(round * 4 + i), data(round * 4 + i, 500_000))).collect();
        let refs: Vec<(&[u8], &[u8])> = blocks.iter().map(|(k, v)| (k.as_slice(), v.as_ref())).collect();
        let put = shm.put(NS, &refs, Durability::Cache).unwrap();
        assert!(put.iter().all(|p| matches!(p, ShmPut::Stored(_))), "round {round}: {put:?}");
    }
    let client = node.client().await;
    let tiers = client.lookup(NS, &(0..48).map(key).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(tiers.len(), 48);
    assert!(tiers.contains(&TierKind::Ssd), "{tiers:?}");
}

/// Sessions that get private windows (forced here; uids limited to some namespaces always
/// get one) move bytes through copies: the same protocol, and a window never shows a byte
/// of a block its session did not write or pin.
#[tokio::test]
async fn private_windows_hold_only_what_their_session_wrote_or_pinned() {
    let node = Node::start_with("", "[shm]\nprivate_windows = true\nsession_limit = \"2MiB\"\n");
    let (mut a, mut b) = (node.shm(&[NS]), node.shm(&[NS]));
    let (wa, wb) = (a.arena(), b.arena());
    assert!(wa.is_private() && wb.is_private());
    assert_ne!(wa.id(), wb.id(), "each session its own memory");
    assert_eq!(wa.len(), 2 * MIB as usize, "a window is the session's limit, not the arena");
    // SAFETY: reading our own mapping.
    let window = |w: &kvtier_client::shm::ShmArena| unsafe { std::slice::from_raw_parts(w.as_ptr(), w.len()) }.to_vec();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);

    let secret = [b"tenant-b-secret:".as_slice(), &data(1, 300_000)].concat();
    assert_eq!(b.put(NS, &[(b"s", &secret)], Durability::Cache).unwrap(), vec![ShmPut::Stored(TierKind::Cpu)]);
    assert!(!contains(&window(&wa), b"tenant-b-secret:"), "another session's block is not in this window");
    // Read back through the window, and over gRPC: the commit copied it into the store.
    assert_eq!(a.get(NS, &[b"s"]).unwrap(), vec![Ok(secret.clone())]);
    let GetItem::Hit { data: over_grpc, .. } =
        node.unix_client().await.get(NS, &[b"s".to_vec()]).await.unwrap().remove(0)
    else {
        panic!("stored")
    };
    assert_eq!(over_grpc.as_ref(), secret.as_slice());

    // More than the window holds at once: pins go in rounds, as in the arena.
    let blocks: Vec<(Vec<u8>, bytes::Bytes)> = (0..5).map(|i| (key(i), data(10 + i, 700_000))).collect();
    let refs: Vec<(&[u8], &[u8])> = blocks.iter().map(|(k, v)| (k.as_slice(), v.as_ref())).collect();
    for chunk in refs.chunks(2) {
        assert!(a.put(NS, chunk, Durability::Cache).unwrap().iter().all(|p| *p == ShmPut::Stored(TierKind::Cpu)));
    }
    let keys: Vec<&[u8]> = blocks.iter().map(|(k, _)| k.as_slice()).collect();
    let got = b.get(NS, &keys).unwrap();
    assert_eq!(got, blocks.iter().map(|(_, v)| Ok(v.to_vec())).collect::<Vec<_>>());
}
