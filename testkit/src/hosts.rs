//! Hosts for multi-node tests. Where the test may make network namespaces (root, with
//! iproute2), each node runs in a namespace of its own, joined by a veth pair to a bridge
//! in the test's namespace, which also holds the services (etcd, Azurite) on the bridge's
//! address: separate hosts on one machine, one of which can be cut off from all the others
//! (its veth taken down: packets vanish, connections time out) and reconnected. Elsewhere
//! every node is on loopback and nothing can be cut.

use std::process::Command;

/// The machines of one test.
#[derive(Debug)]
pub struct Hosts {
    /// Namespaced hosts, or `None` on loopback.
    net: Option<Net>,
}

#[derive(Debug)]
struct Net {
    tag: String,
    /// The second octet of the test's 10.x.0.0/24.
    octet: u8,
    hosts: usize,
}

impl Hosts {
    /// `n` hosts: namespaces where they can be made, loopback otherwise (said on stderr).
    pub fn new(n: usize) -> Hosts {
        let pid = std::process::id();
        let net = Net { tag: format!("{:04x}", pid & 0xffff), octet: 100 + (pid % 150) as u8, hosts: n };
        match net.create() {
            Ok(()) => Hosts { net: Some(net) },
            Err(e) if crate::require_all() => {
                panic!("network namespaces unavailable ({e}), and KVTIER_REQUIRE_ALL=1 (CI) requires the partition leg")
            }
            Err(e) => {
                eprintln!("network namespaces unavailable ({e}); the nodes share loopback and cannot be cut off");
                drop(net); // removes what was made
                Hosts { net: None }
            }
        }
    }

    /// Every node on loopback.
    pub fn loopback() -> Hosts {
        Hosts { net: None }
    }

    /// Whether the hosts are namespaces (so [`Hosts::cut`] works).
    pub fn separate(&self) -> bool {
        self.net.is_some()
    }

    /// The address services every host reaches listen on.
    pub fn services(&self) -> String {
        match &self.net {
            Some(net) => format!("10.{}.0.1", net.octet),
            None => "127.0.0.1".into(),
        }
    }

    /// Host `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        match &self.net {
            Some(net) => format!("10.{}.0.{}", net.octet, 10 + i),
            None => "127.0.0.1".into(),
        }
    }

    /// What a process of host `i` is started under.
    pub fn prefix(&self, i: usize) -> Vec<String> {
        match &self.net {
            Some(net) => ["ip", "netns", "exec", &net.namespace(i)].map(String::from).to_vec(),
            None => Vec::new(),
        }
    }

    /// Cuts host `i` off from every other host and the services.
    pub fn cut(&self, i: usize) {
        let net = self.net.as_ref().expect("only namespaced hosts can be cut off");
        ip(&["link", "set", &net.veth(i), "down"]).expect("taking a host's veth down");
    }

    /// Reconnects host `i` after [`Hosts::cut`].
    pub fn heal(&self, i: usize) {
        let net = self.net.as_ref().expect("only namespaced hosts can be cut off");
        ip(&["link", "set", &net.veth(i), "up"]).expect("bringing a host's veth up");
    }
}

impl Net {
    fn namespace(&self, i: usize) -> String {
        format!("kvt{}-{i}", self.tag)
    }
    fn bridge(&self) -> String {
        format!("kvb{}", self.tag)
    }
    fn veth(&self, i: usize) -> String {
        format!("kvh{}{i}", self.tag)
    }

    fn create(&self) -> Result<(), String> {
        let (bridge, octet) = (self.bridge(), self.octet);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.{octet}.0.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..self.hosts {
            let (ns, outside, inside) = (self.namespace(i), self.veth(i), format!("kvn{}{i}", self.tag));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &bridge, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("10.{octet}.0.{}/24", 10 + i), "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.namespace(i)]); // takes its veth pair along
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Runs `ip ARGS`; its stderr as the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
