use super::*;

#[test]
fn defaults_match_the_documented_embedded_setup() {
    let c = Config::default();
    assert_eq!((c.cpu.capacity.0, c.ssd.capacity.0), (1 << 30, 8 << 30));
    assert_eq!(c.server.listen, "127.0.0.1:50051");
    assert_eq!(c.data_dir, PathBuf::from("./kvtier-data"));
    c.validate().unwrap();
    assert_eq!(Config::parse("").unwrap(), c, "an empty file is the default");
    assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "printed config reads back");
}

#[test]
fn the_deploy_example_documents_exactly_the_defaults() {
    let mut example = Config::parse(include_str!("../../../deploy/kvtier.toml")).expect("deploy/kvtier.toml parses");
    assert_eq!(example.data_dir, PathBuf::from("/var/lib/kvtier"));
    example.data_dir = Config::default().data_dir;
    assert_eq!(example, Config::default(), "deploy/kvtier.toml lists every default; update it with the code");
}

#[test]
fn sizes_and_durations_parse_with_units() {
    let c = Config::parse(
        "max_block_size = \"2MiB\"\n[cpu]\ncapacity = 1073741824\n[ssd]\ncapacity = \"1.5GiB\"\n[server]\nstream_idle_timeout = \"500ms\"\ntransfer_budget = \"10MB\"",
    )
    .unwrap();
    assert_eq!(c.max_block_size.0, 2 << 20);
    assert_eq!(c.cpu.capacity.0, 1 << 30);
    assert_eq!(c.ssd.capacity.0, 3 << 29);
    for (size, printed) in
        [(1152 << 20, "1152MiB"), (3 << 29, "1536MiB"), (10_000_000, "10000000B"), (0, "0B"), (5 << 40, "5TiB")]
    {
        assert_eq!(ByteSize(size).to_string(), printed);
        assert_eq!(printed.parse::<ByteSize>().unwrap(), ByteSize(size), "{printed} reads back");
    }
    assert_eq!(c.server.stream_idle_timeout, Duration::from_millis(500));
    assert_eq!(c.server.transfer_budget.0, 10_000_000);
}

#[test]
fn unknown_and_malformed_keys_are_refused_by_name() {
    let e = Config::parse("[cpu]\ncapacty = \"1GiB\"").unwrap_err().to_string();
    assert!(e.contains("unknown field") && e.contains("capacty"), "{e}");
    let e = Config::parse("[ssd]\ncapacity = \"8 parsecs\"").unwrap_err().to_string();
    assert!(e.contains("unknown size unit") && e.contains("parsecs"), "{e}");
    let e = Config::parse("[server]\nstream_idle_timeout = \"soon\"").unwrap_err().to_string();
    assert!(e.contains("soon"), "{e}");
    let e = Config::parse("[server]\nchunk_size = 1").unwrap_err().to_string();
    assert!(e.contains("server.chunk_size"), "{e}");
    let e = Config::parse("[blob]\nmax_unflushed = 1.5").unwrap_err().to_string();
    assert!(e.contains("blob.max_unflushed"), "{e}");
    let e = Config::parse("[namespaces.\"a/*\"]\ncache_olny = true").unwrap_err().to_string();
    assert!(e.contains("cache_olny"), "{e}");
    let e = Config::parse("[namespaces.\"a/*\"]\npolicy = \"fifo\"").unwrap_err().to_string();
    assert!(e.contains("fifo") && e.contains("checkpoint"), "names the bad policy and the good ones: {e}");
    let c = Config::parse("[namespaces.\"a/*\"]\npolicy = \"lru\"").unwrap();
    assert_eq!(c.namespace("a/b").policy, Some(crate::PolicyKind::Lru));
    assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "a policy prints and reads back");
}

#[test]
fn the_most_specific_namespace_pattern_wins() {
    let c = Config::parse(
        "[namespaces.\"acme/*\"]\ncache_only = true\n[namespaces.\"acme/ckpt*\"]\ncache_only = false\n[namespaces.\"acme/ckpt-scratch\"]\ncache_only = true",
    )
    .unwrap();
    let cache_only = |ns: &str| c.namespace(ns).cache_only;
    assert!(cache_only("acme/llama3-8b"));
    assert!(!cache_only("acme/ckpt-run1"), "the longer prefix wins");
    assert!(cache_only("acme/ckpt-scratch"), "an exact name wins over any prefix");
    assert!(!cache_only("other/x"), "unmatched namespaces take the defaults");
}

#[test]
fn cluster_members_and_replication_are_checked() {
    let c =
        Config::parse("[cluster]\nnode_id = \"b\"\nmembers = [\"a=10.0.0.1:50051\", \"b = 10.0.0.2:50051\"]").unwrap();
    assert_eq!(
        c.cluster.static_members().unwrap(),
        [("a".to_string(), "10.0.0.1:50051".to_string()), ("b".to_string(), "10.0.0.2:50051".to_string())]
    );
    for (members, says) in [
        ("[\"a=1:1\", \"b\"]", "is not \"id=host:port\""),
        ("[\"a=1:1\", \"a=2:2\"]", "listed twice"),
        ("[\"a=1:1\", \"c=2:2\"]", "this node (\"b\", cluster.node_id) is not among them"),
    ] {
        let e = Config::parse(&format!("[cluster]\nnode_id = \"b\"\nmembers = {members}")).unwrap_err().to_string();
        assert!(e.contains("cluster.members") && e.contains(says), "{e}");
    }
    let e = Config::parse("[namespaces.\"ckpt/*\"]\nreplicas = 2\nwrite_quorum = 3").unwrap_err().to_string();
    assert!(e.contains("write_quorum") && e.contains("at most replicas"), "{e}");
    let e = Config::parse("[namespaces.\"ckpt/*\"]\nreplicas = 0").unwrap_err().to_string();
    assert!(e.contains("must be positive"), "{e}");
}

#[test]
fn etcd_membership_needs_an_address_the_others_can_reach() {
    let e = Config::parse("[server]\nlisten = \"0.0.0.0:50051\"\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.advertise") && e.contains("0.0.0.0:50051"), "{e}");
    let c = Config::parse(
        "[server]\nlisten = \"0.0.0.0:50051\"\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nadvertise = \"10.0.0.7:50051\"",
    )
    .unwrap();
    assert_eq!(c.cluster.advertised(&c.server.listen).unwrap(), "10.0.0.7:50051");
    let e = Config::parse("[cluster]\netcd = [\"http://e:2379\"]\nmembers = [\"a=1:1\"]\nnode_id = \"a\"").unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    let e = Config::parse("[cluster]\netcd = [\"http://e:2379\"]\nlease_ttl = \"1s\"").unwrap_err();
    assert!(e.to_string().contains("cluster.lease_ttl"), "{e}");
}

#[test]
fn tls_settings_are_checked_together() {
    let e = Config::parse("[server.tls]\ncert = \"/c.pem\"").unwrap_err().to_string();
    assert!(e.contains("cert and key go together"), "{e}");
    let e = Config::parse("[server.tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nrequire_client_cert = true")
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs server.tls.ca"), "{e}");
    let e = Config::parse(
        "[server.tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[cluster]\nnode_id = \"a\"\nmembers = [\"a=1.2.3.4:5\"]",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("server.tls.ca"), "{e}");
}

#[test]
fn lmcache_settings_are_checked_by_name() {
    let c = Config::parse("[lmcache]\nlisten = \"127.0.0.1:65432\"\ndurability = \"write_back\"").unwrap();
    assert_eq!(c.lmcache.durability().unwrap(), crate::Durability::WriteBack);
    assert_eq!(c.lmcache.namespace_prefix, "lmcache");
    let e = Config::parse("[lmcache]\ndurability = \"forever\"").unwrap_err().to_string();
    assert!(e.contains("lmcache.durability") && e.contains("forever"), "{e}");
    let e = Config::parse("[lmcache]\nnamespace_prefix = \"../up\"").unwrap_err().to_string();
    assert!(e.contains("lmcache.namespace_prefix"), "{e}");
    // lm:// cannot carry client certificates: a node requiring them serves it on loopback only.
    let tls = "[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\nrequire_client_cert = true\n";
    let e = Config::parse(&format!("{tls}[lmcache]\nlisten = \"0.0.0.0:65432\"")).unwrap_err().to_string();
    assert!(e.contains("loopback only"), "{e}");
    Config::parse(&format!("{tls}[lmcache]\nlisten = \"127.0.0.1:65432\"")).unwrap();
}
