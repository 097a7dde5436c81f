//! Phoenix Channels gateway (filled by the gateway issue).

pub mod protocol;
