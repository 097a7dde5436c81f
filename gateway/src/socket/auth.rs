//! Connect-time authentication: the hook Phoenix calls `UserSocket.connect/3` plus
//! `id/1`. It sees the connect params (query string, nested as Phoenix nests them)
//! and the decoded `authToken` subprotocol, and either refuses the connection (HTTP
//! 403 before the upgrade) or gives the socket its id and assigns.

use crate::channel::Assigns;

/// What a successful connect gives the socket.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SocketInfo {
    /// The socket id (Phoenix's `id/1`): the connection subscribes to this topic, and
    /// a `disconnect` broadcast on it closes the connection with 1001.
    pub id: Option<String>,
    /// Socket-wide data channels read with `ctx.assigns()`.
    pub assigns: Assigns,
}

/// A refused connect; the client gets HTTP 403.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("connection refused by the authenticator")]
pub struct Denied;

/// The connect hook. Runs on the HTTP task before the upgrade, so it must not block.
pub trait Authenticator: Send + Sync + 'static {
    /// Decides on a connect request from its `params` and optional `auth_token`.
    fn connect(&self, params: &Assigns, auth_token: Option<&str>) -> Result<SocketInfo, Denied>;

    /// Whether the request carries credentials this authenticator decides on
    /// (a token). Without, a server with a backend connect hook asks the hook
    /// instead. By default: whether there is an `auth_token`.
    fn has_credentials(&self, params: &Assigns, auth_token: Option<&str>) -> bool {
        let _ = params;
        auth_token.is_some()
    }
}

/// Accepts everyone, sets no socket id, and exposes the connect params as assigns
/// (so a channel can read e.g. `user_id`). The default until real authentication
/// (signed tokens) is configured; it authenticates nobody.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn connect(&self, params: &Assigns, _auth_token: Option<&str>) -> Result<SocketInfo, Denied> {
        let mut assigns = params.clone();
        assigns.remove("vsn");
        Ok(SocketInfo { id: None, assigns })
    }
}

impl<F> Authenticator for F
where
    F: Fn(&Assigns, Option<&str>) -> Result<SocketInfo, Denied> + Send + Sync + 'static,
{
    fn connect(&self, params: &Assigns, auth_token: Option<&str>) -> Result<SocketInfo, Denied> {
        self(params, auth_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_all_passes_params_as_assigns() {
        let mut params = Assigns::new();
        params.insert("user_id".into(), "u1".into());
        params.insert("vsn".into(), "2.0.0".into());
        let info = AllowAll.connect(&params, Some("t")).expect("allowed");
        assert_eq!(info.id, None);
        assert_eq!(info.assigns.get("user_id"), Some(&"u1".into()));
        assert!(!info.assigns.contains_key("vsn"));
    }

    #[test]
    fn closures_are_authenticators() {
        let only_token = |_: &Assigns, token: Option<&str>| match token {
            Some("ok") => Ok(SocketInfo {
                id: Some("user_socket:1".into()),
                assigns: Assigns::new(),
            }),
            _ => Err(Denied),
        };
        assert_eq!(only_token.connect(&Assigns::new(), None), Err(Denied));
        let info = only_token.connect(&Assigns::new(), Some("ok")).expect("ok");
        assert_eq!(info.id.as_deref(), Some("user_socket:1"));
    }
}
