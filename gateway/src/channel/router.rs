//! The topic router: which [`Channel`] serves a topic, as Phoenix's
//! `channel "room:*", RoomChannel` declarations in a socket module.
//!
//! A pattern is an exact topic (`lobby`) or a prefix ending in one trailing `*`
//! (`room:*` matches `room:` and `room:1`). Routes are tried in registration order and
//! the first match wins. A topic no route matches gets the `unmatched topic` error.

use std::fmt;
use std::sync::Arc;

use super::Channel;

/// A topic pattern: an exact topic, or a prefix followed by `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicPattern {
    /// Matches exactly this topic.
    Exact(String),
    /// Matches every topic that starts with this prefix (the pattern minus its `*`).
    Prefix(String),
}

/// Why a pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A `*` anywhere but at the very end (Phoenix: "channels using splat patterns
    /// must end with *").
    #[error("topic pattern {0:?}: a `*` may only end the pattern")]
    MisplacedSplat(String),
    /// An empty pattern, which no client topic could use.
    #[error("topic pattern is empty")]
    Empty,
}

impl TopicPattern {
    /// Parses `room:*` (prefix) or `lobby` (exact).
    pub fn parse(pattern: &str) -> Result<Self, RouteError> {
        if pattern.is_empty() {
            return Err(RouteError::Empty);
        }
        match pattern.find('*') {
            None => Ok(Self::Exact(pattern.to_owned())),
            Some(at) if at == pattern.len() - 1 => Ok(Self::Prefix(pattern[..at].to_owned())),
            Some(_) => Err(RouteError::MisplacedSplat(pattern.to_owned())),
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(exact) => topic == exact,
            Self::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(exact) => f.write_str(exact),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Makes one channel instance per join.
type Factory = Arc<dyn Fn() -> Box<dyn Channel> + Send + Sync>;

/// The channel routes of a socket, shared by all its connections (wrap it in an
/// `Arc`).
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(TopicPattern, Factory)>,
}

impl Router {
    /// A router with no routes: every join gets `unmatched topic`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `pattern`, served by a new channel from `factory` for every join.
    ///
    /// ```
    /// # use chorus_gateway::channel::*;
    /// # use chorus_gateway::protocol::Payload;
    /// #[derive(Default)]
    /// struct Room;
    /// impl Channel for Room {
    ///     fn join(&mut self, _: &str, _: Payload, _: &mut ChannelContext<'_>) -> JoinResult {
    ///         Ok(None)
    ///     }
    ///     fn handle_in(&mut self, _: &str, _: Payload, _: &mut ChannelContext<'_>) -> HandleIn {
    ///         HandleIn::NoReply
    ///     }
    /// }
    /// let router = Router::new().channel("room:*", Room::default)?;
    /// assert!(router.matches("room:lobby"));
    /// assert!(!router.matches("nope:1"));
    /// # Ok::<(), RouteError>(())
    /// ```
    pub fn channel<C, F>(mut self, pattern: &str, factory: F) -> Result<Self, RouteError>
    where
        C: Channel,
        F: Fn() -> C + Send + Sync + 'static,
    {
        let pattern = TopicPattern::parse(pattern)?;
        let factory: Factory = Arc::new(move || Box::new(factory()));
        self.routes.push((pattern, factory));
        Ok(self)
    }

    /// A new channel for `topic` from the first matching route, or `None`.
    pub fn route(&self, topic: &str) -> Option<Box<dyn Channel>> {
        self.find(topic).map(|factory| factory())
    }

    /// Whether any route matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.find(topic).is_some()
    }

    /// The registered patterns, in the order they are tried.
    pub fn patterns(&self) -> impl Iterator<Item = &TopicPattern> {
        self.routes.iter().map(|(pattern, _)| pattern)
    }

    fn find(&self, topic: &str) -> Option<&Factory> {
        self.routes
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .map(|(_, factory)| factory)
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.patterns().map(ToString::to_string))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{ChannelContext, HandleIn, JoinResult};
    use crate::protocol::Payload;

    /// Answers every event with its own name, so a test can tell which route served.
    struct Named(&'static str);

    impl Channel for Named {
        fn join(&mut self, _: &str, _: Payload, _: &mut ChannelContext<'_>) -> JoinResult {
            Ok(None)
        }

        fn handle_in(&mut self, _: &str, _: Payload, _: &mut ChannelContext<'_>) -> HandleIn {
            HandleIn::NoReply
        }

        fn intercepts(&self) -> &[&str] {
            std::slice::from_ref(&self.0)
        }
    }

    fn served_by(router: &Router, topic: &str) -> Option<String> {
        router.route(topic).map(|c| c.intercepts().join(","))
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(
            TopicPattern::parse("room:*"),
            Ok(TopicPattern::Prefix("room:".into()))
        );
        assert_eq!(
            TopicPattern::parse("lobby"),
            Ok(TopicPattern::Exact("lobby".into()))
        );
        assert_eq!(
            TopicPattern::parse("*"),
            Ok(TopicPattern::Prefix("".into()))
        );
        assert_eq!(
            TopicPattern::parse("room:*:x"),
            Err(RouteError::MisplacedSplat("room:*:x".into()))
        );
        assert_eq!(
            TopicPattern::parse("a**"),
            Err(RouteError::MisplacedSplat("a**".into()))
        );
        assert_eq!(TopicPattern::parse(""), Err(RouteError::Empty));
        assert_eq!(
            TopicPattern::parse("room:*").expect("ok").to_string(),
            "room:*"
        );
    }

    #[test]
    fn exact_and_prefix_matching() {
        let exact = TopicPattern::parse("lobby").expect("ok");
        assert!(exact.matches("lobby"));
        assert!(!exact.matches("lobby:1"));
        assert!(!exact.matches("lobb"));
        let prefix = TopicPattern::parse("room:*").expect("ok");
        assert!(prefix.matches("room:"));
        assert!(prefix.matches("room:lobby"));
        assert!(!prefix.matches("room"));
        assert!(!prefix.matches("rooms:1"));
    }

    #[test]
    fn first_match_wins() {
        let router = Router::new()
            .channel("room:admin", || Named("admin"))
            .and_then(|r| r.channel("room:*", || Named("room")))
            .and_then(|r| r.channel("room:other", || Named("unreachable")))
            .expect("valid patterns");
        assert_eq!(served_by(&router, "room:admin").as_deref(), Some("admin"));
        assert_eq!(served_by(&router, "room:other").as_deref(), Some("room"));
        assert_eq!(served_by(&router, "room:1").as_deref(), Some("room"));
        assert_eq!(served_by(&router, "nope:1"), None);
        assert!(!router.matches("phoenix"));
        assert_eq!(
            format!("{router:?}"),
            r#"["room:admin", "room:*", "room:other"]"#
        );
    }

    #[test]
    fn bad_pattern_is_an_error() {
        let err = Router::new()
            .channel("a*b", || Named("x"))
            .expect_err("misplaced splat");
        assert_eq!(
            err.to_string(),
            r#"topic pattern "a*b": a `*` may only end the pattern"#
        );
    }
}
