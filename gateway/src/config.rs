//! The `chorus` configuration: a TOML file (or the embedded default,
//! [`DEFAULT_CONFIG`]), then `CHORUS_*` environment variables and command-line
//! flags on top (applied by the binary).
//!
//! Unknown keys are errors, so a typo stops startup with the file, line and
//! column instead of being silently ignored. Secrets are [`Secret`]s: their
//! `Debug` prints `<redacted>`, so a logged config never shows them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::builtin::rules::{EventAction, TopicRule};

/// The configuration used when no `--config` is given: the room `lobby` and the
/// reference topic rules, dev mode off (`make run` adds `--dev-mode`).
pub const DEFAULT_CONFIG: &str = include_str!("../chorus.toml");

/// The most messages a topic's history may keep: the engine's per-topic log
/// bound when `cluster.history_cap` is not set.
pub const DEFAULT_HISTORY_CAP: usize = 100;

/// How long history is kept when `cluster.history_ttl` is not set: a day.
pub const DEFAULT_HISTORY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// A secret string. Never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret's text. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP side.
    #[serde(default)]
    pub server: ServerSection,
    /// Cluster membership.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Client authentication.
    #[serde(default)]
    pub auth: AuthSection,
    /// The server HTTP API.
    #[serde(default)]
    pub api: ApiSection,
    /// What one client or API caller may cost the node.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Rooms that always exist (the HTTP API creates more at run time).
    #[serde(default)]
    pub rooms: Vec<RoomConfig>,
    /// Topic rules, first match wins. Absent: the default rules of
    /// [`DEFAULT_CONFIG`].
    pub topics: Option<Vec<TopicRule>>,
    /// `[[webhooks]]`: signed POSTs telling a backend about presence and
    /// broadcasts (none by default).
    #[serde(default)]
    pub webhooks: Vec<crate::webhooks::WebhookConfig>,
}

/// `[limits]`: what one client or API caller may cost the node. Every breach is
/// refused and counted in `/metrics` as `chorus_limit_exceeded_total{limit="<key>"}`.
/// A rate or size of 0 turns that limit off (the edge's two must be at least 1).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    // The server's edge: handshakes and connections.
    /// The HTTP request headers (each request's, and the next one's on a
    /// kept-alive connection), a request body the server reads, and the
    /// WebSocket upgrade must arrive within this many milliseconds; else the
    /// connection is closed (a body: 408).
    pub handshake_timeout_ms: u64,
    /// Most live client connections (WebSocket connections plus LongPoll
    /// sessions), and separately most TCP connections still in their HTTP
    /// phase; beyond either, 503.
    pub max_connections: usize,
    /// New connections per second from one client address (an IPv4 address,
    /// an IPv6 /64), checked before anything is read; beyond, 429.
    pub connection_rate: u32,
    /// New connections one address may open in a burst above `connection_rate`.
    pub connection_burst: u32,
    /// Networks `connection_rate` does not apply to: a reverse proxy's (every
    /// client behind it shares its address). Default: loopback.
    pub connection_rate_exempt: Vec<ipnet::IpNet>,
    // Client limits (socket, channels): frames, publishes, presence, JSON.
    /// Frames per second one connection may send, all events (token bucket).
    pub frame_rate: u32,
    /// Frames one connection may send in a burst above `frame_rate`.
    pub frame_burst: u32,
    /// Bytes per second the server reads from one WebSocket connection; past
    /// it, reading pauses until the rate is kept (TCP pushes back).
    pub byte_rate: u32,
    /// Bytes one WebSocket connection may send in a burst above `byte_rate`.
    pub byte_burst: u32,
    /// Publishes (`message`, `notify`, `broadcast`, `broadcast_from`) and
    /// presence updates per second of one user, all topics and connections,
    /// on each node (token bucket).
    pub user_publish_rate: u32,
    /// Publishes and presence updates one user may make in a burst.
    pub user_publish_burst: u32,
    /// Largest presence meta, in bytes of its JSON encoding.
    pub presence_meta_bytes: usize,
    /// Presences one user may hold in one topic on each node (tabs, devices).
    pub presences_per_user_topic: usize,
    /// Deepest nesting of arrays and objects in a client frame's payload or
    /// an HTTP API body.
    pub json_max_depth: usize,
    /// Longest string (or object key) in a client frame's payload or an HTTP
    /// API body, in bytes as sent (escapes included).
    pub json_max_string_bytes: usize,
    // The node's memory: topic history.
    /// Most bytes of topic history this node holds (each message's body and
    /// topic plus 48 bytes, as `chorus_history_bytes` counts them); past it
    /// the oldest messages of every topic go first, on every node alike
    /// (0: no budget). Set it alike on every node: the smallest rules.
    pub history_budget_bytes: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let client = crate::limits::ClientLimits::default();
        Self {
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connection_rate: crate::limits::DEFAULT_CONNECTION_RATE,
            connection_burst: crate::limits::DEFAULT_CONNECTION_BURST,
            connection_rate_exempt: crate::limits::default_connection_rate_exempt(),
            frame_rate: client.frame_rate,
            frame_burst: client.frame_burst,
            byte_rate: client.byte_rate,
            byte_burst: client.byte_burst,
            user_publish_rate: DEFAULT_USER_PUBLISH_RATE,
            user_publish_burst: DEFAULT_USER_PUBLISH_BURST,
            presence_meta_bytes: DEFAULT_PRESENCE_META_BYTES,
            presences_per_user_topic: DEFAULT_PRESENCES_PER_USER_TOPIC,
            json_max_depth: client.json.max_depth,
            json_max_string_bytes: client.json.max_string_bytes,
            history_budget_bytes: DEFAULT_HISTORY_BUDGET_BYTES,
        }
    }
}

impl LimitsSection {
    /// The limits the server enforces on every connection.
    pub fn client(&self) -> crate::limits::ClientLimits {
        crate::limits::ClientLimits {
            frame_rate: self.frame_rate,
            frame_burst: self.frame_burst,
            byte_rate: self.byte_rate,
            byte_burst: self.byte_burst,
            json: crate::protocol::JsonLimits {
                max_depth: self.json_max_depth,
                max_string_bytes: self.json_max_string_bytes,
            },
        }
    }

    /// The new-connection limits the server holds each client address to.
    pub fn connections(&self) -> crate::limits::ConnectionLimits {
        crate::limits::ConnectionLimits {
            rate: self.connection_rate,
            burst: self.connection_burst,
            exempt: self.connection_rate_exempt.clone(),
        }
    }

    /// The engine's `NodeConfig::history_budget` (`None`: 0, no budget).
    pub fn history_budget(&self) -> Option<usize> {
        (self.history_budget_bytes > 0).then_some(self.history_budget_bytes)
    }
}

/// Default `limits.history_budget_bytes`: 256 MiB.
pub const DEFAULT_HISTORY_BUDGET_BYTES: usize = 256 << 20;

/// Default `limits.user_publish_rate`: a chat user types far less; a client
/// looping on `update_presence` is held to this.
pub const DEFAULT_USER_PUBLISH_RATE: u32 = 20;
/// Default `limits.user_publish_burst`.
pub const DEFAULT_USER_PUBLISH_BURST: u32 = 60;
/// Default `limits.presence_meta_bytes`: 4 KiB.
pub const DEFAULT_PRESENCE_META_BYTES: usize = 4096;
/// Default `limits.presences_per_user_topic`: a user with several tabs.
pub const DEFAULT_PRESENCES_PER_USER_TOPIC: usize = 10;

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// HTTP address for clients, the API and the demo page.
    pub listen: SocketAddr,
    /// Development mode: `/dev/token` mints a token for any name, and the demo
    /// page uses it. Never enable it in production. Off unless asked for.
    pub dev_mode: bool,
    /// Allows dev mode while a token secret is configured: `/dev/token` then
    /// mints tokens that every node sharing the secret accepts. Without it a
    /// node refuses to start in dev mode with a token secret.
    pub dev_mode_with_token_secret: bool,
    /// A LongPoll session without a poll for this long ends, in milliseconds.
    pub longpoll_timeout_ms: u64,
    /// Browser origins allowed to open sockets (`https://app.example.com`,
    /// `//app.example.com`, `https://*.example.com`); empty: any origin.
    pub allowed_origins: Vec<String>,
    /// The live dashboard at `/dashboard`: on (the default) only while the
    /// HTTP API key is set, which the page asks for; false turns it off
    /// (`/dashboard` answers 404 and no snapshot is published).
    pub dashboard: bool,
    // -- TLS for clients --
    /// PEM certificate chain for `wss://` and `https://`; with `tls_key`
    /// (one without the other is refused by [`Config::check`]).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`; with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    // -- end of TLS for clients --
    /// A backend asked about connect requests that carry no token (README
    /// "Backend hooks"); `None`: no connect hook.
    pub connect_hook: Option<crate::hooks::HookConfig>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            dev_mode: false,
            dev_mode_with_token_secret: false,
            longpoll_timeout_ms: 15_000,
            allowed_origins: Vec::new(),
            dashboard: true,
            tls_cert: None,
            tls_key: None,
            connect_hook: None,
        }
    }
}

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This node's name, stable across restarts.
    pub node: String,
    /// UDP address for gossip (QUIC).
    pub gossip: SocketAddr,
    /// The gossip address the other nodes dial, when it is not `gossip`
    /// (behind NAT or a relay, or `gossip` on `0.0.0.0`); default: `gossip`.
    pub advertise: Option<SocketAddr>,
    /// Nodes to join through: gossip addresses (`"10.0.0.7:7400"`) and DNS
    /// names (`"dns:chorus-headless.default.svc:7400"`: every address the name
    /// has, re-resolved every `discovery_interval`).
    pub seeds: Vec<chorus_engine::runtime::Seed>,
    /// How often `dns:` seeds are resolved again, e.g. `"5s"`.
    #[serde(deserialize_with = "duration")]
    pub discovery_interval: std::time::Duration,
    /// Failure-detection timing.
    pub profile: Profile,
    /// The shared cluster secret (at least 16 bytes); better given as
    /// `CHORUS_CLUSTER_SECRET`.
    pub secret: Option<Secret>,
    /// Messages kept per topic log. Must be the same on every node.
    pub history_cap: usize,
    /// Messages older than this are dropped from topic history (by their
    /// stamp, against this node's wall clock). A duration such as `"10m"`,
    /// `"24h"` or `"7days"`. Must be the same on every node.
    #[serde(deserialize_with = "duration")]
    pub history_ttl: std::time::Duration,
}

/// A humane duration string (`"1s"`, `"10m"`, `"24h"`, `"7days"`).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"10m\" or \"24h\""
        ))
    })
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            node: "chorus".into(),
            gossip: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: None,
            seeds: Vec::new(),
            discovery_interval: chorus_engine::runtime::discovery::DEFAULT_INTERVAL,
            profile: Profile::Lan,
            secret: None,
            history_cap: DEFAULT_HISTORY_CAP,
            history_ttl: DEFAULT_HISTORY_TTL,
        }
    }
}

/// Failure-detection timing of the cluster.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Down after 2 s of silence, purged after 5 min.
    #[default]
    Lan,
    /// Phoenix.Tracker's timing: down after 30 s, purged after 20 min.
    Phoenix,
}

/// `[auth]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 secret of client tokens; better given as `CHORUS_TOKEN_SECRET`.
    pub token_secret: Option<Secret>,
}

/// `[api]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// The API key (`Authorization: Bearer <key>`); better given as
    /// `CHORUS_API_KEY`. No key: the API is disabled.
    pub key: Option<Secret>,
}

/// `limits.handshake_timeout_ms` by default: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// `limits.max_connections` by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// A `[[rooms]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    /// The room id, as in `room:{id}`.
    pub id: String,
    /// A display name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or not a valid configuration; the message names the
    /// line and column.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, where.
        message: String,
    },
    /// Parsed, but inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// The embedded default configuration.
    pub fn default_config() -> Self {
        Self::parse(DEFAULT_CONFIG, "<built-in default config>")
            .expect("the embedded default config is valid")
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    /// Parses and checks configuration text; `name` labels errors.
    pub fn parse(text: &str, name: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_owned(),
            message: describe(text, &e),
        })?;
        if config.topics.is_none() && text != DEFAULT_CONFIG {
            config.topics = Self::default_config().topics;
        }
        config.check().map_err(|message| ConfigError::Invalid {
            path: name.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// The topic rules in force.
    pub fn topic_rules(&self) -> &[TopicRule] {
        self.topics.as_deref().unwrap_or_default()
    }

    /// Consistency checks serde cannot express.
    pub fn check(&self) -> Result<(), String> {
        if self.cluster.history_cap == 0 {
            return Err("cluster.history_cap must be at least 1".into());
        }
        if self.cluster.discovery_interval.as_millis() == 0 {
            return Err("cluster.discovery_interval must be at least 1ms".into());
        }
        if self.cluster.history_ttl.as_millis() == 0 {
            return Err("cluster.history_ttl must be at least 1ms".into());
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => {
                return Err("server.tls_cert is set without server.tls_key: TLS needs both (or neither, for plain ws:// and http://)".into())
            }
            (None, Some(_)) => {
                return Err("server.tls_key is set without server.tls_cert: TLS needs both (or neither, for plain ws:// and http://)".into())
            }
            _ => {}
        }
        if self
            .api
            .key
            .as_ref()
            .is_some_and(|k| k.expose().trim().is_empty())
        {
            return Err("api.key (or CHORUS_API_KEY) is empty: give the HTTP API a key, or leave it unset to turn the API off".into());
        }
        let limits = &self.limits;
        if limits.handshake_timeout_ms == 0 {
            return Err("limits.handshake_timeout_ms must be at least 1".into());
        }
        if limits.max_connections == 0 {
            return Err("limits.max_connections must be at least 1".into());
        }
        for (i, rule) in self.topic_rules().iter().enumerate() {
            rule.check(self.cluster.history_cap, self.cluster.history_ttl)
                .map_err(|e| format!("topics[{i}] (pattern {:?}): {e}", rule.pattern))?;
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            hook.check()
                .map_err(|e| format!("webhooks[{i}] ({:?}): {e}", hook.url))?;
        }
        if let Some(hook) = &self.server.connect_hook {
            hook.check()
                .map_err(|e| format!("server.connect_hook: {e}"))?;
            if !hook.events.is_empty() {
                return Err(
                    "server.connect_hook: `events` is for publish_hook and rpc_hook".into(),
                );
            }
        }
        let mut seen = BTreeMap::new();
        for room in &self.rooms {
            if room.id.is_empty() || room.id.len() > 200 {
                return Err(format!("rooms: bad room id {:?}", room.id));
            }
            if seen.insert(room.id.clone(), ()).is_some() {
                return Err(format!("rooms: room {:?} is listed twice", room.id));
            }
        }
        Ok(())
    }

    /// Whether any topic accepts an event that stores messages.
    pub fn stores_messages(&self) -> bool {
        self.topic_rules().iter().any(|r| {
            r.events
                .values()
                .any(|a| matches!(a, EventAction::Message | EventAction::Notify))
        })
    }
}

/// A TOML error as `line L, column C: message`, from its byte span.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid_with_a_lobby_and_dev_mode_off() {
        let c = Config::default_config();
        assert!(!c.server.dev_mode && !c.server.dev_mode_with_token_secret);
        assert_eq!(
            c.limits,
            LimitsSection::default(),
            "chorus.toml states the defaults"
        );
        assert_eq!(c.rooms[0].id, "lobby");
        assert!(c.topic_rules().len() >= 7);
        assert!(c.stores_messages());
    }

    /// An empty key (`CHORUS_API_KEY=`, as `KEY=${UNSET}` in a compose file
    /// gives) is refused at start, not taken as a key anyone can present.
    #[test]
    fn an_empty_api_key_is_a_config_error() {
        for key in ["", "  "] {
            let mut c = Config::default_config();
            c.api.key = Some(Secret::new(key.to_owned()));
            let err = c.check().expect_err("an empty key");
            assert!(
                err.contains("api.key (or CHORUS_API_KEY) is empty"),
                "{err}"
            );
        }
        let mut c = Config::default_config();
        c.api.key = Some(Secret::new("dev-key".to_owned()));
        assert_eq!(c.check(), Ok(()));
    }

    #[test]
    fn errors_name_the_file_line_and_problem() {
        let text = "[server]\nlisten = \"127.0.0.1:4000\"\nlistne = 3\n";
        let e = Config::parse(text, "my.toml").unwrap_err().to_string();
        assert!(e.starts_with("my.toml: line 3, column 1:"), "{e}");
        assert!(e.contains("unknown field `listne`"), "{e}");

        let e = Config::parse("[server]\nlisten = \"nowhere\"\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.toml: line 2, column 10:"), "{e}");

        let e = Config::parse(
            "[[topics]]\npattern = \"x:{id}\"\njoin = \"owner\"\n",
            "b.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 3") && e.contains("unknown variant `owner`"),
            "{e}"
        );

        let e = Config::parse(
            "[[topics]]\npattern = \"x:{id}\"\njoin = \"org\"\n",
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("c.toml: topics[0]") && e.contains("{org}"),
            "{e}"
        );

        let e = Config::parse("[[rooms]]\nid = \"a\"\n[[rooms]]\nid = \"a\"\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn history_ttl_is_a_humane_duration_a_day_by_default() {
        let c = Config::default_config();
        assert_eq!(c.cluster.history_ttl, DEFAULT_HISTORY_TTL);
        assert_eq!(
            ClusterSection::default().history_ttl,
            DEFAULT_HISTORY_TTL,
            "chorus.toml states the default"
        );
        let c = Config::parse("[cluster]\nhistory_ttl = \"10m\"\n", "t.toml").expect("10m");
        assert_eq!(c.cluster.history_ttl, std::time::Duration::from_secs(600));
        let e = Config::parse("[cluster]\nhistory_ttl = \"soon\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("not a duration"), "{e}");
        let e = Config::parse("[cluster]\nhistory_ttl = \"0s\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.history_ttl must be"), "{e}");
    }

    #[test]
    fn a_file_without_topics_gets_the_default_rules() {
        let c = Config::parse("[server]\ndev_mode = false\n", "x.toml").unwrap();
        assert!(!c.server.dev_mode);
        assert_eq!(
            c.topic_rules().len(),
            Config::default_config().topic_rules().len()
        );
        assert!(c.rooms.is_empty());
    }

    #[test]
    fn history_budget_is_256_mib_by_default_and_0_turns_it_off() {
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!(c.limits.history_budget_bytes, 256 << 20);
        assert_eq!(c.limits.history_budget(), Some(256 << 20));
        let c = Config::parse("[limits]\nhistory_budget_bytes = 0\n", "x.toml").unwrap();
        assert_eq!(c.limits.history_budget(), None);
    }

    #[test]
    fn limits_have_defaults_and_refuse_unknown_keys() {
        let c = Config::parse("[limits]\nframe_rate = 5\n", "x.toml").unwrap();
        assert_eq!(c.limits.frame_rate, 5);
        assert_eq!(c.limits.frame_burst, 200);
        assert_eq!(c.limits.presence_meta_bytes, 4096);
        assert_eq!(c.limits.client().json.max_depth, 32);
        assert_eq!(Config::default_config().limits, LimitsSection::default());
        let e = Config::parse("[limits]\nframe_rates = 5\n", "y.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `frame_rates`"), "{e}");
    }

    #[test]
    fn the_connection_rate_exempts_networks_given_as_cidrs() {
        let c = Config::parse("", "x.toml").unwrap();
        let limits = c.limits.connections();
        assert_eq!((limits.rate, limits.burst), (50, 500));
        assert!(limits
            .exempt
            .iter()
            .any(|n| n.contains(&"127.0.0.9".parse::<std::net::IpAddr>().unwrap())));
        let c = Config::parse(
            "[limits]\nconnection_rate_exempt = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.limits.connection_rate_exempt.len(), 2);
        let e = Config::parse(
            "[limits]\nconnection_rate_exempt = [\"10.0.0.0/33\"]\n",
            "y.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 2") && e.contains("invalid IP address"),
            "{e}"
        );
    }

    #[test]
    fn seeds_mix_addresses_and_dns_names_and_a_bad_one_is_refused() {
        use chorus_engine::runtime::{DnsName, Seed};
        let c = Config::default_config();
        assert_eq!(
            c.cluster.discovery_interval,
            ClusterSection::default().discovery_interval,
            "chorus.toml states the default"
        );
        let c = Config::parse(
            "[cluster]\nseeds = [\"10.0.0.7:7400\", \"dns:chorus-headless.default.svc:7400\"]\ndiscovery_interval = \"2s\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(
            c.cluster.seeds,
            [
                Seed::Addr("10.0.0.7:7400".parse().unwrap()),
                Seed::Dns(DnsName {
                    host: "chorus-headless.default.svc".into(),
                    port: 7400
                })
            ]
        );
        assert_eq!(
            c.cluster.discovery_interval,
            std::time::Duration::from_secs(2)
        );
        let e = Config::parse("[cluster]\nseeds = [\"dns:chorus\"]\n", "y.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("y.toml: line 2") && e.contains("bad seed \"dns:chorus\""),
            "{e}"
        );
    }

    #[test]
    fn tls_needs_both_files_or_neither() {
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!((c.server.tls_cert, c.server.tls_key), (None, None));
        let c = Config::parse(
            "[server]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.server.tls_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(c.server.tls_key.as_deref(), Some(Path::new("/k.pem")));
        let e = Config::parse("[server]\ntls_cert = \"/c.pem\"\n", "y.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("y.toml") && e.contains("without server.tls_key"),
            "{e}"
        );
        let e = Config::parse("[server]\ntls_key = \"/k.pem\"\n", "y.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("without server.tls_cert"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::parse(
            "[auth]\ntoken_secret = \"s3cr3t-s3cr3t-s3cr3t\"\n[api]\nkey = \"k3y-k3y\"\n",
            "x.toml",
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("k3y-k3y"));
        assert!(shown.contains("<redacted>"));
    }
}
