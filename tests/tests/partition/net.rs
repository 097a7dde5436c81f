//! Test hosts in network namespaces (iproute2), removed when dropped.
//!
//! Node `i` lives in its own namespace with two links:
//! - gossip: `10.B.0.i/24` on a veth whose other end is on a bridge in a hub
//!   namespace; cutting node `i` takes its bridge port down;
//! - clients: `10.B+1.i.2/24` on a veth to the test's own namespace
//!   (`10.B+1.i.1`), so the test reaches every node, on either side of a cut.
//!
//! Each test that uses it has its own [`Layout`] (a name tag and the subnet
//! base B), so the partition test and the soak (shared by path) can run at
//! once without taking each other's names or addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use anyhow::{bail, Context};

/// The HTTP and gossip port of every node (each has its own addresses).
const HTTP_PORT: u16 = 4000;
const GOSSIP_PORT: u16 = 7400;

/// What keeps one test's namespaces apart from another's.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Three letters starting every namespace and interface name.
    pub tag: &'static str,
    /// The second byte of the gossip subnet; clients use the next one.
    pub base: u8,
}

/// The partition test's layout: `chp*`, 10.211/10.212.
pub const PARTITION: Layout = Layout {
    tag: "chp",
    base: 211,
};

pub struct Net {
    /// Prefix of every namespace and interface this test made (`chp<pid>`).
    prefix: String,
    layout: Layout,
    nodes: usize,
}

/// Runs `ip ARGS`; an error carries what it printed.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Net {
    /// Creates the hub and `nodes` node namespaces; an error says why it
    /// cannot (not root, no iproute2, no namespaces).
    pub fn create(nodes: usize) -> anyhow::Result<Self> {
        Self::create_with(nodes, PARTITION)
    }

    /// [`Net::create`] with its own names and addresses.
    pub fn create_with(nodes: usize, layout: Layout) -> anyhow::Result<Self> {
        if !is_root() {
            bail!("not running as root");
        }
        remove_leftovers(layout.tag);
        // Interface names have at most 15 bytes: tag + 5 digits + 2.
        let prefix = format!("{}{}", layout.tag, std::process::id() % 100_000);
        let net = Self {
            prefix,
            layout,
            nodes,
        };
        net.build().context("set up network namespaces")?;
        Ok(net)
    }

    fn build(&self) -> anyhow::Result<()> {
        let p = &self.prefix;
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=self.nodes {
            let ns = self.namespace(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;

            let (node_end, hub_end) = (format!("{p}g{i}"), self.port(i));
            ip(&[
                "link", "add", &node_end, "netns", &ns, "type", "veth", "peer", "name", &hub_end,
                "netns", &hub,
            ])?;
            let gossip = format!("{}/24", self.gossip_addr(i).ip());
            ip(&["-n", &ns, "addr", "add", &gossip, "dev", &node_end])?;
            ip(&["-n", &ns, "link", "set", &node_end, "up"])?;
            ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &hub_end, "up"])?;

            let (test_end, node_client) = (format!("{p}c{i}"), format!("{p}s{i}"));
            ip(&[
                "link",
                "add",
                &test_end,
                "type",
                "veth",
                "peer",
                "name",
                &node_client,
                "netns",
                &ns,
            ])?;
            let test_addr = format!("10.{}.{i}.1/24", self.layout.base + 1);
            ip(&["addr", "add", &test_addr, "dev", &test_end])?;
            ip(&["link", "set", &test_end, "up"])?;
            let client = format!("{}/24", self.http_addr(i).ip());
            ip(&["-n", &ns, "addr", "add", &client, "dev", &node_client])?;
            ip(&["-n", &ns, "link", "set", &node_client, "up"])?;
        }
        Ok(())
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn namespace(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    /// Node `i`'s port on the hub's bridge.
    fn port(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    pub fn gossip_addr(&self, i: usize) -> SocketAddr {
        let i = u8::try_from(i).expect("node index fits an address byte");
        SocketAddr::from((Ipv4Addr::new(10, self.layout.base, 0, i), GOSSIP_PORT))
    }

    pub fn http_addr(&self, i: usize) -> SocketAddr {
        let i = u8::try_from(i).expect("node index fits an address byte");
        SocketAddr::from((Ipv4Addr::new(10, self.layout.base + 1, i, 2), HTTP_PORT))
    }

    /// Cuts node `i` off from the others (its clients still reach it).
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.hub(), "link", "set", &self.port(i), "down"])
    }

    /// Reconnects node `i`.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.hub(), "link", "set", &self.port(i), "up"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, and with them their peers.
        for i in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}

/// Namespaces left by a run that was killed before it could clean up: their
/// client links would hold the addresses this run needs.
fn remove_leftovers(tag: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let ours = name
            .strip_prefix(tag)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
        if ours {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
