//! `[[webhooks]]`: where the node tells a backend what happened.

use serde::Deserialize;

use crate::builtin::rules::match_pattern;

/// What a webhook reports.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The first presence or subscriber of the topic anywhere in the cluster.
    ChannelOccupied,
    /// The last presence and subscriber of the topic gone everywhere.
    ChannelVacated,
    /// The first presence of a user key in the topic, cluster-wide.
    MemberAdded,
    /// The last presence of a user key gone from the topic, cluster-wide.
    MemberRemoved,
    /// A broadcast on the topic.
    Message,
}

impl EventKind {
    /// The name in the JSON body (and the config).
    pub fn name(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::Message => "message",
        }
    }
}

fn default_batch_max() -> usize {
    100
}

fn default_batch_ms() -> u64 {
    50
}

fn default_retry_for_ms() -> u64 {
    30_000
}

fn default_timeout_ms() -> u64 {
    5_000
}

/// One `[[webhooks]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the batches are `POST`ed to; it must answer
    /// 2xx itself (redirects are not followed: [`deliver::client`](super::deliver::client)).
    pub url: String,
    /// Topic patterns (the syntax of `[[topics]]`: `room:{id}`).
    pub topics: Vec<String>,
    /// What to report.
    pub events: Vec<EventKind>,
    /// At most this many events per request.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// A request is sent when `batch_max` events wait or the oldest has waited
    /// this long (milliseconds).
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// A batch that fails (no answer, or not 2xx) is retried with exponential
    /// backoff (100 ms doubling, at most 5 s apart) for this long, then dropped
    /// and logged.
    #[serde(default = "default_retry_for_ms")]
    pub retry_for_ms: u64,
    /// Timeout of one request (milliseconds).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl WebhookConfig {
    /// Whether this webhook reports `kind` events of `topic`.
    pub fn wants(&self, kind: EventKind, topic: &str) -> bool {
        self.events.contains(&kind) && self.matches(topic)
    }

    /// Whether `topic` matches one of the patterns.
    pub fn matches(&self, topic: &str) -> bool {
        self.topics
            .iter()
            .any(|p| match_pattern(p, topic).is_some())
    }

    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {:?}: must be http:// or https://", self.url));
        }
        if self.topics.is_empty() {
            return Err("topics: give at least one topic pattern".into());
        }
        if let Some(p) = self.topics.iter().find(|p| p.is_empty()) {
            return Err(format!("topics: bad pattern {p:?}"));
        }
        if self.events.is_empty() {
            return Err("events: give at least one event".into());
        }
        if self.batch_max == 0 {
            return Err("batch_max must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(webhook: &str) -> Result<Config, String> {
        Config::parse(&format!("[[webhooks]]\n{webhook}"), "w.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn an_entry_with_defaults_and_its_topic_patterns() {
        let config = parse(
            "url = \"https://hooks.example.com/events\"\ntopics = [\"room:{id}\", \"lobby\"]\nevents = [\"member_added\", \"message\"]\n",
        )
        .unwrap();
        let hook = &config.webhooks[0];
        assert_eq!(
            (
                hook.batch_max,
                hook.batch_ms,
                hook.retry_for_ms,
                hook.timeout_ms
            ),
            (100, 50, 30_000, 5_000)
        );
        assert!(hook.wants(EventKind::MemberAdded, "room:7"));
        assert!(hook.wants(EventKind::Message, "lobby"));
        assert!(!hook.wants(EventKind::MemberRemoved, "room:7"));
        assert!(!hook.wants(EventKind::MemberAdded, "room:7:x"));
        assert!(!hook.wants(EventKind::MemberAdded, "chat:7"));
        // The built-in default config has none.
        assert!(Config::default_config().webhooks.is_empty());
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for (entry, wanted) in [
            (
                "url = \"ftp://x/y\"\ntopics = [\"a\"]\nevents = [\"message\"]\n",
                "webhooks[0] (\"ftp://x/y\"): url \"ftp://x/y\": must be http:// or https://",
            ),
            (
                "url = \"not a url\"\ntopics = [\"a\"]\nevents = [\"message\"]\n",
                "url \"not a url\"",
            ),
            (
                "url = \"http://x/\"\ntopics = []\nevents = [\"message\"]\n",
                "topics: give at least one topic pattern",
            ),
            (
                "url = \"http://x/\"\ntopics = [\"a\"]\nevents = []\n",
                "events: give at least one event",
            ),
            (
                "url = \"http://x/\"\ntopics = [\"a\"]\nevents = [\"member_joined\"]\n",
                "unknown variant `member_joined`",
            ),
            (
                "url = \"http://x/\"\ntopics = [\"a\"]\nevents = [\"message\"]\nbatch_max = 0\n",
                "batch_max must be at least 1",
            ),
            (
                "url = \"http://x/\"\ntopics = [\"a\"]\nevents = [\"message\"]\nsecret = \"s\"\n",
                "unknown field `secret`",
            ),
        ] {
            let e = parse(entry).unwrap_err();
            assert!(e.contains(wanted), "{entry}: {e}");
        }
    }
}
