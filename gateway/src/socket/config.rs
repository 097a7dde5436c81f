//! How a session is configured.

/// Default cap on channels joined on one connection, as Phoenix's
/// `max_channels_per_transport`.
pub const DEFAULT_MAX_CHANNELS: usize = 100;

/// WebSocket close code for a disconnect-by-socket-id (Phoenix's
/// `{:shutdown, :disconnected}`); never 1000, so clients reconnect.
pub const DISCONNECT_CLOSE_CODE: u16 = 1001;

/// Per-connection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Joins beyond this many channels get `{"reason":"too many channels joined"}`.
    pub max_channels: usize,
    /// Whether the transport can write binary frames (WebSocket: yes; LongPoll: no).
    /// Binary broadcasts are skipped for connections that cannot carry them.
    pub binary_frames: bool,
}

impl SessionConfig {
    /// A WebSocket connection: 100 channels, binary frames.
    pub fn websocket() -> Self {
        Self {
            max_channels: DEFAULT_MAX_CHANNELS,
            binary_frames: true,
        }
    }

    /// A LongPoll session: 100 channels, no binary frames server to client.
    pub fn longpoll() -> Self {
        Self {
            binary_frames: false,
            ..Self::websocket()
        }
    }

    /// The same settings with another channel cap.
    pub fn with_max_channels(self, max_channels: usize) -> Self {
        Self {
            max_channels,
            ..self
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self::websocket()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets() {
        let ws = SessionConfig::default();
        assert_eq!(ws.max_channels, 100);
        assert!(ws.binary_frames);
        let lp = SessionConfig::longpoll().with_max_channels(3);
        assert_eq!((lp.max_channels, lp.binary_frames), (3, false));
    }
}
