//! Peer discovery by DNS: seeds written `dns:NAME:PORT` are resolved to every
//! address the name has (A and AAAA) and re-resolved every
//! [`Discovery::interval`], so a Kubernetes headless service (or any DNS name)
//! lists the peers.
//!
//! A task of the node driver resolves; the sans-IO node only receives the
//! resulting address list ([`Node::handle_seeds`](crate::Node::handle_seeds)),
//! which greets the addresses it has not seen. Addresses that vanish from the
//! answer are left to SWIM. A failed lookup is logged and retried at the next
//! round, keeping that name's last answer; it is never fatal. This node's own
//! gossip address is dropped from the answer (it is usually among them).
//!
//! The [`Resolver`] is injectable so tests can change the answer set.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The prefix of a DNS seed.
pub const DNS_PREFIX: &str = "dns:";

/// How often names are resolved again by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// One entry of the `seeds` setting: a gossip address, or a DNS name and the
/// gossip port of the addresses it resolves to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seed {
    /// `IP:PORT`, e.g. `10.0.0.7:7400` or `[fd00::7]:7400`.
    Addr(SocketAddr),
    /// `dns:NAME:PORT`, e.g. `dns:chorus-headless.default.svc:7400`.
    Dns(DnsName),
}

/// A name to resolve and the port to pair its addresses with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsName {
    /// The host name.
    pub host: String,
    /// The gossip port.
    pub port: u16,
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DNS_PREFIX}{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::Addr(addr) => addr.fmt(f),
            Seed::Dns(name) => name.fmt(f),
        }
    }
}

/// Why a seed was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad seed {text:?}: {why} (write IP:PORT, e.g. 10.0.0.7:7400, or dns:NAME:PORT, e.g. dns:chorus-headless.default.svc:7400)")]
pub struct SeedError {
    text: String,
    why: &'static str,
}

impl FromStr for Seed {
    type Err = SeedError;

    fn from_str(text: &str) -> Result<Self, SeedError> {
        let err = |why| SeedError {
            text: text.to_owned(),
            why,
        };
        let Some(rest) = text.strip_prefix(DNS_PREFIX) else {
            return text
                .parse()
                .map(Seed::Addr)
                .map_err(|_| err("not an IP:PORT address"));
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or(err("no :PORT after the name"))?;
        let port: u16 = port.parse().map_err(|_| err("the port is not a number"))?;
        if port == 0 {
            return Err(err("port 0"));
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(err("not a DNS name"));
        }
        Ok(Seed::Dns(DnsName {
            host: host.to_owned(),
            port,
        }))
    }
}

impl<'de> serde::Deserialize<'de> for Seed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The answer of a lookup.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves a name to socket addresses. [`SystemResolver`] in production; tests
/// give their own.
pub trait Resolver: fmt::Debug + Send + Sync + 'static {
    /// Every address of `host` (A and AAAA), each with `port`.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a>;
}

/// The system's resolver (`getaddrinfo` through tokio's `lookup_host`): the
/// same answers as the rest of the machine, `/etc/hosts` and
/// `/etc/resolv.conf` included (a Kubernetes pod's cluster DNS).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// DNS discovery settings of an engine.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// The names to resolve; none: no discovery task.
    pub names: Vec<DnsName>,
    /// How often every name is resolved again (also the bound on one lookup).
    pub interval: Duration,
    /// Who resolves.
    pub resolver: Arc<dyn Resolver>,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            interval: DEFAULT_INTERVAL,
            resolver: Arc::new(SystemResolver),
        }
    }
}

/// Resolves the names every interval and sends the node's whole seed list
/// (`statics` plus every name's latest answer, without `own`) whenever it
/// changes. Ends when the node task is gone.
pub(crate) async fn run(
    discovery: Discovery,
    statics: Vec<SocketAddr>,
    own: SocketAddr,
    seeds: mpsc::Sender<Vec<SocketAddr>>,
) {
    let interval = discovery.interval.max(Duration::from_millis(10));
    let mut answers: BTreeMap<&DnsName, Vec<SocketAddr>> = BTreeMap::new();
    let mut failing: BTreeSet<&DnsName> = BTreeSet::new();
    let mut sent: Option<BTreeSet<SocketAddr>> = None;
    loop {
        for name in &discovery.names {
            let lookup = discovery.resolver.resolve(&name.host, name.port);
            let error = match tokio::time::timeout(interval, lookup).await {
                Ok(Ok(addrs)) => {
                    if failing.remove(name) {
                        warn!(%name, "DNS discovery: the name resolves again");
                    }
                    answers.insert(name, addrs);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {interval:?}"),
            };
            // Said once per failing spell; the last answer stays in use.
            if failing.insert(name) {
                warn!(%name, %error, "DNS discovery: lookup failed; retrying every interval");
            } else {
                debug!(%name, %error, "DNS discovery: lookup failed again");
            }
        }
        let all: BTreeSet<SocketAddr> = statics
            .iter()
            .chain(answers.values().flatten())
            .copied()
            .filter(|addr| *addr != own)
            .collect();
        if sent.as_ref() != Some(&all) {
            debug!(seeds = ?all, "DNS discovery: the seed list changed");
            if seeds.send(all.iter().copied().collect()).await.is_err() {
                return;
            }
            sent = Some(all);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = seeds.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_addresses_and_dns_names() {
        assert_eq!(
            "10.0.0.7:7400".parse::<Seed>().unwrap(),
            Seed::Addr("10.0.0.7:7400".parse().unwrap())
        );
        assert_eq!(
            "[fd00::7]:7400".parse::<Seed>().unwrap(),
            Seed::Addr("[fd00::7]:7400".parse().unwrap())
        );
        let dns = "dns:chorus-headless.default.svc:7400"
            .parse::<Seed>()
            .unwrap();
        assert_eq!(
            dns,
            Seed::Dns(DnsName {
                host: "chorus-headless.default.svc".into(),
                port: 7400
            })
        );
        assert_eq!(dns.to_string(), "dns:chorus-headless.default.svc:7400");
        assert!(matches!(
            "dns:localhost.:7400".parse::<Seed>(),
            Ok(Seed::Dns(DnsName { host, .. })) if host == "localhost"
        ));
        for bad in [
            "chorus:7400",
            "10.0.0.7",
            "dns:",
            "dns:chorus",
            "dns:chorus:",
            "dns::7400",
            "dns:chorus:0",
            "dns:chorus:99999",
            "dns:bad name:7400",
            "dns:a..b:7400",
            "dns:-a:7400",
        ] {
            let e = bad.parse::<Seed>().unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
