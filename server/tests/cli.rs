//! The `kvtier` command line as a user runs it: put/get/lookup/delete/stat against a real
//! node, exit codes and messages, `serve --print-config`, and `demo`.

mod common;

use std::process::{Command, Output};

use common::{BIN, Node};

fn kvtier(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("running kvtier")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn put_get_lookup_delete_stat_from_the_command_line() {
    let node = Node::start();
    let server = node.addrs.grpc.as_str();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("block.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &bytes).unwrap();

    let out =
        kvtier(&["put", "--server", server, "--namespace", "cli/test", "--key", "00ff10", input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("stored 300000 bytes -> cpu"), "{}", text(&out.stderr));

    let output = dir.path().join("out.bin");
    let out = kvtier(&[
        "get",
        "--server",
        server,
        "--namespace",
        "cli/test",
        "--key",
        "00ff10",
        "-o",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&output).unwrap(), bytes);
    let out = kvtier(&["get", "--server", server, "--namespace", "cli/test", "--key", "00ff10"]);
    assert_eq!(out.stdout, bytes, "without -o the block goes to stdout");

    // Over the unix socket, from stdin.
    let unix = node.addrs.unix.as_deref().unwrap();
    let mut child = Command::new(BIN)
        .args(["put", "--server", unix, "--namespace", "cli/test", "--key", "aa", "--durability", "disk"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"from stdin").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && text(&out.stderr).contains("-> "), "{}", text(&out.stderr));

    let out = kvtier(&[
        "lookup",
        "--server",
        server,
        "--namespace",
        "cli/test",
        "--key",
        "00ff10",
        "--key",
        "aa",
        "--key",
        "bb",
    ]);
    assert_eq!(text(&out.stdout), "prefix 2 of 3\n00ff10 cpu\naa cpu\n");

    let out = kvtier(&["stat", "--server", server, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stat --json prints JSON");
    assert_eq!(stats["tiers"][0]["tier"], "cpu");
    assert_eq!(stats["index_blocks"], 2);
    let table = text(&kvtier(&["stat", "--server", server]).stdout);
    assert!(table.contains("cpu(8 MiB)") && table.contains("ssd("), "{table}");

    let out = kvtier(&["delete", "--server", server, "--namespace", "cli/test", "--key", "aa", "--key", "bb"]);
    assert_eq!(text(&out.stdout), "aa deleted\nbb absent\n");
}

#[test]
fn a_miss_exits_1_and_errors_are_clear() {
    let node = Node::start();
    let server = node.addrs.grpc.as_str();
    let out = kvtier(&["get", "--server", server, "--namespace", "cli/test", "--key", "0badc0de"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("miss: cli/test/0badc0de"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());

    let out = kvtier(&["get", "--server", server, "--namespace", "cli/test", "--key", "xyz"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not hex"), "{}", text(&out.stderr));

    let long = "ab".repeat(65);
    let out = kvtier(&["get", "--server", server, "--namespace", "cli/test", "--key", &long]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("key is 65 bytes, allowed 1..=64"), "{}", text(&out.stderr));

    let out = kvtier(&["put", "--server", server, "--namespace", "", "--key", "01", "/dev/null"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("namespace"), "{}", text(&out.stderr));

    let out = kvtier(&["stat", "--server", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot connect to 127.0.0.1:1"), "{}", text(&out.stderr));
}

#[test]
fn serve_prints_its_effective_config() {
    let args = ["serve", "--print-config", "--listen", "0.0.0.0:6000", "--node-id", "gpu-node-7"];
    let out = kvtier(&[&args[..], &["--advertise", "10.1.2.3:6000"]].concat());
    assert!(out.status.success());
    let printed = text(&out.stdout);
    let config = kvtier_blockmgr::Config::parse(&printed).expect("printed config parses");
    assert_eq!(config.server.listen, "0.0.0.0:6000");
    assert_eq!((config.cluster.node_id.as_str(), config.cluster.advertise.as_str()), ("gpu-node-7", "10.1.2.3:6000"));
    assert_eq!(config.cpu.capacity.0, 1 << 30, "the embedded default: CPU 1 GiB");
    assert_eq!(config.ssd.capacity.0, 8 << 30, "the embedded default: SSD 8 GiB");
}

/// Sizes that are no whole number of the largest unit (1152 MiB once printed as "1.1GiB")
/// print exactly, so the printed config, fed back, is the same node: the same SSD region count
/// on the same data dir.
#[test]
fn a_printed_config_fed_back_prints_the_same_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.toml");
    std::fs::write(
        &first,
        "[cpu]\ncapacity = \"1152MiB\"\n[ssd]\ncapacity = \"1.5GiB\"\n[server]\ntransfer_budget = \"100MB\"\n",
    )
    .unwrap();
    let print = |path: &std::path::Path| {
        let out = kvtier(&["serve", "--print-config", "--config", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let printed = print(&first);
    let config = kvtier_blockmgr::Config::parse(&printed).expect("printed config parses");
    assert_eq!(config.cpu.capacity.0, 1152 << 20, "{printed}");
    assert_eq!(config.ssd.capacity.0, 1536 << 20, "{printed}");
    assert_eq!(config.server.transfer_budget.0, 100_000_000, "{printed}");
    let second = dir.path().join("second.toml");
    std::fs::write(&second, &printed).unwrap();
    assert_eq!(print(&second), printed, "the printed config, fed back, prints the same");
}

#[test]
fn the_readme_demo_runs() {
    let out = kvtier(&["demo"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("all 96 byte-exact"), "{stdout}");
    assert!(stdout.contains("on SSD)") && stdout.contains("demotions"), "{stdout}");
}

#[test]
fn cp_copies_files_and_trees_to_objects_and_back() {
    let mut node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("step-100");
    std::fs::create_dir_all(src.join("optim")).unwrap();
    // Larger than a chunk (4 MiB in the test config) and than one 4 MiB read, and empty.
    let shard = common::data(1, 9_000_001);
    std::fs::write(src.join("__0_0.distcp"), &shard).unwrap();
    std::fs::write(src.join(".metadata"), b"meta").unwrap();
    std::fs::write(src.join("optim/state.pt"), b"").unwrap();
    let cp = |server: &str, args: &[&str]| {
        let out = kvtier(&[&["cp", "--server", server], args].concat());
        (out.status.code(), text(&out.stderr))
    };

    let server = node.addrs.grpc.clone();
    let (code, err) = cp(&server, &["-r", src.to_str().unwrap(), "kvtier://acme%2Fckpt/run1/step-100"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("copied 3 file(s)"), "{err}");
    // One file into a "directory" URL keeps its name.
    let (code, err) = cp(&server, &[src.join(".metadata").to_str().unwrap(), "kvtier://acme%2Fckpt/single/"]);
    assert_eq!(code, Some(0), "{err}");

    // Back, after a kill -9 (disk durability by default): a tree, and a single object.
    node.kill9();
    node.restart();
    let server = node.addrs.grpc.clone();
    let back = dir.path().join("back");
    let (code, err) = cp(&server, &["-r", "kvtier://acme%2Fckpt/run1/step-100", back.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read(back.join("__0_0.distcp")).unwrap(), shard);
    assert_eq!(std::fs::read(back.join(".metadata")).unwrap(), b"meta");
    assert_eq!(std::fs::read(back.join("optim/state.pt")).unwrap(), b"");
    let one = dir.path().join("one.bin");
    let (code, err) = cp(&server, &["kvtier://acme%2Fckpt/single/.metadata", one.to_str().unwrap()]);
    assert_eq!((code, std::fs::read(&one).unwrap()), (Some(0), b"meta".to_vec()), "{err}");
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".kvtier-tmp")), "no temporary file is left: {names:?}");

    // Mistakes are named, and nothing is written.
    for (args, says) in [
        (vec![src.to_str().unwrap(), "kvtier://acme%2Fckpt/x"], "is a directory: copy it with -r"),
        (vec!["kvtier://acme%2Fckpt/run1", back.to_str().unwrap()], "copy it with -r"),
        (vec!["kvtier://acme%2Fckpt/nothing", back.to_str().unwrap()], "no such object or directory"),
        (vec!["/no/such/file", "kvtier://acme%2Fckpt/x"], "/no/such/file"),
        (vec!["kvtier:///x", back.to_str().unwrap()], "names a namespace first"),
        (vec!["kvtier://a/x", "kvtier://a/y"], "both sides are kvtier:// URLs"),
        (vec![src.to_str().unwrap(), "kvtier://bad namespace!/x"], "namespace"),
    ] {
        let (code, err) = cp(&server, &args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, err) = cp("127.0.0.1:1", &[src.join(".metadata").to_str().unwrap(), "kvtier://a/x"]);
    assert_eq!(code, Some(2), "a dead node: {err}");
}
