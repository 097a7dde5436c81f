//! The three `chorus` processes of the soak and the faults done to them: kill
//! -9, SIGTERM, restart, and (in network namespaces) cut and heal.
//!
//! With root and iproute2 the nodes live in network namespaces (the partition
//! test's [`Net`], with the soak's own names and subnets), so a node can be cut
//! off; elsewhere they listen on 127.0.0.1 and partitions are skipped.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::http::KEY;
use crate::net::{Layout, Net};

pub const CLUSTER_SECRET: &str = "soak-test-cluster-secret-0123456789";
pub const TOKEN_SECRET: &str = "soak-test-token-secret-0123456789";
/// The soak's namespaces and subnets: apart from the partition test's.
const LAYOUT: Layout = Layout {
    tag: "chs",
    base: 221,
};
/// Nodes in the cluster.
pub const NODES: usize = 3;

/// The configuration every node runs: `soak:{id}` tracks presence, stores
/// `new_message` in the topic's history and broadcasts it; `lobby` is a room
/// of the config, more are made through `POST /api/rooms`.
const CONFIG: &str = r#"
[server]
dev_mode = false

[cluster]
profile = "lan"
history_cap = 100

[[rooms]]
id = "lobby"
name = "Lobby"

[[topics]]
pattern = "soak:{id}"
presence = true
history = 5
events = { new_message = "message" }
"#;

/// Where the nodes listen.
enum Place {
    Loopback {
        http: [SocketAddr; NODES],
        gossip: [SocketAddr; NODES],
    },
    Namespaces(Net),
}

pub struct Cluster {
    bin: PathBuf,
    place: Place,
    config: PathBuf,
    logs: PathBuf,
    procs: [Option<Child>; NODES],
    /// Processes started per node so far (the log file's number).
    starts: [u32; NODES],
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free TCP port below Linux's ephemeral range (32768 up): a node restarted
/// on it must not find it taken by one of the clients' own outgoing
/// connections meanwhile.
fn free_tcp(taken: &[SocketAddr]) -> anyhow::Result<SocketAddr> {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    for port in (start..32_000).chain(20_000..start) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !taken.contains(&addr) && std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no free TCP port in 20000-32000")
}

/// Free UDP ports, all bound at once so none is handed out twice.
fn free_udp() -> anyhow::Result<[SocketAddr; NODES]> {
    let sockets = (0..NODES)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs = sockets
        .iter()
        .map(std::net::UdpSocket::local_addr)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(addrs.try_into().expect("NODES addresses"))
}

impl Cluster {
    /// Three nodes' places (namespaces if possible, else 127.0.0.1) and their
    /// config file; nothing started yet. Node logs go to `logs`.
    pub fn new(bin: PathBuf, logs: &Path) -> anyhow::Result<(Self, Option<String>)> {
        std::fs::create_dir_all(logs).with_context(|| format!("create {}", logs.display()))?;
        let config = logs.join("soak.toml");
        std::fs::write(&config, CONFIG)?;
        let (place, skipped) = match Net::create_with(NODES, LAYOUT) {
            Ok(net) => (Place::Namespaces(net), None),
            Err(why) => {
                let mut http = Vec::new();
                for _ in 0..NODES {
                    http.push(free_tcp(&http)?);
                }
                let http: [SocketAddr; NODES] = http.try_into().expect("NODES addresses");
                let gossip = free_udp()?;
                (Place::Loopback { http, gossip }, Some(format!("{why:#}")))
            }
        };
        let cluster = Self {
            bin,
            place,
            config,
            logs: logs.to_owned(),
            procs: [None, None, None],
            starts: [0; NODES],
        };
        Ok((cluster, skipped))
    }

    /// Whether nodes can be cut off (they run in namespaces).
    pub fn can_partition(&self) -> bool {
        matches!(self.place, Place::Namespaces(_))
    }

    pub fn http(&self, i: usize) -> SocketAddr {
        match &self.place {
            Place::Loopback { http, .. } => http[i],
            Place::Namespaces(net) => net.http_addr(i + 1),
        }
    }

    fn gossip(&self, i: usize) -> SocketAddr {
        match &self.place {
            Place::Loopback { gossip, .. } => gossip[i],
            Place::Namespaces(net) => net.gossip_addr(i + 1),
        }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.logs.join(format!("n{}-{}.log", i + 1, self.starts[i]))
    }

    /// Starts node `i` (a new process: a new incarnation) and waits until it
    /// accepts HTTP connections.
    pub async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.procs[i].is_none(), "n{} already runs", i + 1);
        self.starts[i] += 1;
        let seeds: Vec<String> = (0..NODES)
            .filter(|&j| j != i)
            .map(|j| self.gossip(j).to_string())
            .collect();
        let log = File::create(self.log_path(i))?;
        let mut cmd = match &self.place {
            Place::Loopback { .. } => Command::new(&self.bin),
            Place::Namespaces(net) => {
                // `ip netns exec` execs the binary: the child is chorus itself.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &net.namespace(i + 1)])
                    .arg(&self.bin);
                cmd
            }
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .args(["--node", &format!("n{}", i + 1)])
            .args(["--listen", &self.http(i).to_string()])
            .args(["--gossip", &self.gossip(i).to_string()])
            .args(["--seeds", &seeds.join(",")])
            .env("CHORUS_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("CHORUS_TOKEN_SECRET", TOKEN_SECRET)
            .env("CHORUS_API_KEY", KEY)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.procs[i] = Some(child);
        let addr = self.http(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = self.procs[i]
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "n{} exited at start ({status}); log: {}",
                    i + 1,
                    self.log_path(i).display()
                );
            }
            if Instant::now() > deadline {
                bail!("n{} does not listen on {addr} after 30 s", i + 1);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// kill -9: no leave, no drain; peers find out by failure detection.
    pub fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.procs[i].take().context("kill -9 of a stopped node")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the process to drain, leave and exit 0.
    pub async fn term(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.procs[i].take().context("SIGTERM to a stopped node")?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "n{} exited with {status} after SIGTERM; log: {}",
                        i + 1,
                        self.log_path(i).display()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("n{} still runs 30 s after SIGTERM", i + 1);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cuts node `i` off from the others' gossip (its clients still reach it).
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        match &self.place {
            Place::Namespaces(net) => net.cut(i + 1),
            Place::Loopback { .. } => bail!("no partitions on loopback"),
        }
    }

    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        match &self.place {
            Place::Namespaces(net) => net.heal(i + 1),
            Place::Loopback { .. } => bail!("no partitions on loopback"),
        }
    }

    /// A node that is not running when it should: exited on its own (a crash).
    pub fn exited(&mut self) -> Option<String> {
        for i in 0..NODES {
            if let Some(child) = self.procs[i].as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(format!(
                        "n{} exited on its own ({status}); log: {}",
                        i + 1,
                        self.log_path(i).display()
                    ));
                }
            }
        }
        None
    }

    /// Node `i`'s resident memory in KiB (`VmRSS`), if it runs.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.procs[i].as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The process number of node `i`'s current process (1 = first start).
    pub fn generation(&self, i: usize) -> u32 {
        self.starts[i]
    }
}
