//! Two real `chorus` processes seeded to each other on 127.0.0.1: one is killed
//! with SIGKILL; its users leave the other's presence within the `lan` bound,
//! and after a restart (a new incarnation) they never come back.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chorus_gateway::token::{Claims, Tokens};
use serde_json::Value;
use tokio::time::timeout;

use crate::util::{Client, Ended};

const SECRET: &str = "process-test-cluster-secret-0123456789";

fn free_tcp() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    l.local_addr().expect("addr")
}

fn free_udp() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.local_addr().expect("addr")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn(
    name: &str,
    http: SocketAddr,
    gossip: SocketAddr,
    seed: SocketAddr,
) -> anyhow::Result<Proc> {
    let child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args([
            "--node",
            name,
            "--listen",
            &http.to_string(),
            "--gossip",
            &gossip.to_string(),
        ])
        .args(["--seeds", &seed.to_string()])
        .env("CHORUS_CLUSTER_SECRET", SECRET)
        .env("CHORUS_TOKEN_SECRET", TOKEN_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let proc = Proc(child);
    listening(name, http).await?;
    Ok(proc)
}

/// Waits until `http` accepts connections.
async fn listening(name: &str, http: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(http).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("chorus {name} did not listen on {http}")
}

/// The token secret the processes verify client tokens with.
const TOKEN_SECRET: &str = "process-test-token-secret-0123";

/// A connect URL with a token for `user`; `chat:*` (default config) tracks
/// presence for anyone.
fn url(http: SocketAddr, user: &str) -> String {
    let tokens = Tokens::new(TOKEN_SECRET.as_bytes());
    let token = tokens.sign(&Claims::new(user, Duration::from_secs(600)));
    format!("ws://{http}/socket/websocket?token={token}&vsn=2.0.0")
}

/// Reads frames until `key` is present (`true`) or gone (`false`) in the
/// client's view of the topic; returns when that holds.
async fn wait_presence(client: &mut Client, key: &str, present: bool) -> anyhow::Result<()> {
    loop {
        let v: Value = serde_json::from_str(&client.recv_text().await?)?;
        let holds = match v[3].as_str() {
            Some("presence_state") => v[4].get(key).is_some() == present,
            Some("presence_diff") if present => v[4]["joins"].get(key).is_some(),
            Some("presence_diff") => v[4]["leaves"].get(key).is_some(),
            _ => false,
        };
        if holds {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_leaves_within_the_lan_bound_and_its_restart_brings_no_zombie(
) -> anyhow::Result<()> {
    let (http_a, gossip_a) = (free_tcp(), free_udp());
    let (http_b, gossip_b) = (free_tcp(), free_udp());
    let _a = spawn("a", http_a, gossip_a, gossip_b).await?;
    let mut b = spawn("b", http_b, gossip_b, gossip_a).await?;

    let mut alice = Client::connect(&url(http_a, "alice")).await?;
    alice.join("1", "chat:kill", "{}").await?;
    let mut bob = Client::connect(&url(http_b, "bob")).await?;
    bob.join("1", "chat:kill", "{}").await?;
    timeout(
        Duration::from_secs(10),
        wait_presence(&mut alice, "bob", true),
    )
    .await??;

    // kill -9: no Leave reaches node a.
    b.0.kill()?;
    b.0.wait()?;
    let killed = Instant::now();
    timeout(
        Duration::from_secs(10),
        wait_presence(&mut alice, "bob", false),
    )
    .await??;
    let took = killed.elapsed();
    eprintln!("bob left node a {took:?} after kill -9 of node b");
    assert!(
        took < Duration::from_millis(3500),
        "bob left after {took:?}, over the lan bound"
    );

    // Restart b: a new incarnation. Once it holds alice, the cluster is whole
    // again, and bob's old entry must not be anywhere.
    drop(b);
    let _b2 = spawn("b", http_b, gossip_b, gossip_a).await?;
    let mut carol = Client::connect(&url(http_b, "carol")).await?;
    carol.join("1", "chat:kill", "{}").await?;
    timeout(
        Duration::from_secs(10),
        wait_presence(&mut carol, "alice", true),
    )
    .await??;
    tokio::time::sleep(Duration::from_millis(500)).await;

    for http in [http_a, http_b] {
        let mut probe = Client::connect(&url(http, "probe")).await?;
        probe.join("1", "chat:kill", "{}").await?;
        let state = probe.recv_event("presence_state").await?;
        let keys: Vec<&String> = state[4].as_object().expect("object").keys().collect();
        assert!(
            !keys.iter().any(|k| k.as_str() == "bob"),
            "zombie bob on {http}: {keys:?}"
        );
        assert!(
            keys.iter().any(|k| k.as_str() == "alice")
                && keys.iter().any(|k| k.as_str() == "carol")
        );
    }
    Ok(())
}

/// `chorus token` prints a token the server accepts, with the claims given.
#[test]
fn the_token_subcommand_mints_a_valid_token() -> anyhow::Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["token", "--sub", "alice", "--name", "Alice", "--org", "7"])
        .args(["--teams", "3,4", "--friends", "bob", "--ttl", "2h"])
        .env("CHORUS_TOKEN_SECRET", TOKEN_SECRET)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?;
    let claims = Tokens::new(TOKEN_SECRET.as_bytes()).verify(token.trim())?;
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.name.as_deref(), Some("Alice"));
    assert_eq!(claims.org.as_deref(), Some("7"));
    assert_eq!(claims.teams, ["3", "4"]);
    assert_eq!(claims.friends, ["bob"]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let ttl = claims.exp.saturating_sub(now.as_secs());
    assert!((7190..=7200).contains(&ttl), "exp {ttl} s from now");

    let no_secret = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["token", "--sub", "alice"])
        .env_remove("CHORUS_TOKEN_SECRET")
        .output()?;
    assert!(!no_secret.status.success());
    assert!(String::from_utf8_lossy(&no_secret.stderr).contains("CHORUS_TOKEN_SECRET"));
    Ok(())
}

/// A bad config file stops startup with the file, the line and the problem,
/// before anything listens.
#[test]
fn a_bad_config_file_stops_startup_naming_file_and_line() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("chorus-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[server]\ndev_mode = false\n\n[[topics]]\npattern = \"room:{id}\"\njoin = \"owner\"\n",
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--config")
        .arg(&path)
        .env("CHORUS_TOKEN_SECRET", TOKEN_SECRET)
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml: line 6, column 8"), "{err}");
    assert!(err.contains("unknown variant `owner`"), "{err}");
    Ok(())
}

/// Starts `chorus` alone on `http` with `args`, the token secret set or not;
/// waits until it listens.
async fn spawn_alone(http: SocketAddr, args: &[&str], token_secret: bool) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chorus"));
    cmd.args(["--node", "alone", "--listen", &http.to_string()])
        .args(["--gossip", &free_udp().to_string()])
        .args(args)
        .env_remove("CHORUS_CLUSTER_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if token_secret {
        cmd.env("CHORUS_TOKEN_SECRET", TOKEN_SECRET);
    } else {
        cmd.env_remove("CHORUS_TOKEN_SECRET");
    }
    let mut proc = Proc(cmd.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(http).await.is_ok() {
            return Ok(proc);
        }
        if let Some(status) = proc.0.try_wait()? {
            anyhow::bail!("chorus exited with {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("chorus did not listen on {http}")
}

/// `GET path` on a fresh connection: the status code and the body.
async fn get(http: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8(answer)?;
    let code = answer.get(9..12).unwrap_or_default().parse()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok((code, body.to_owned()))
}

/// The README's cluster command line (no --config, a token secret set) serves
/// no /dev/token and no demo page: dev mode is off unless asked for.
#[tokio::test]
async fn dev_mode_is_off_unless_asked_for() -> anyhow::Result<()> {
    let http = free_tcp();
    let _node = spawn_alone(http, &[], true).await?;
    assert_eq!(get(http, "/dev/token?name=Mallory").await?.0, 404);
    assert_eq!(get(http, "/").await?.0, 404);
    assert_eq!(get(http, "/healthz").await?.0, 200);
    Ok(())
}

/// Dev mode with a token secret other nodes accept refuses to start and says
/// why, unless --dev-mode-with-token-secret says it is meant.
#[test]
fn dev_mode_with_a_token_secret_refuses_to_start_unless_told() -> anyhow::Result<()> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args([
            "--dev-mode",
            "--listen",
            "127.0.0.1:0",
            "--gossip",
            "127.0.0.1:0",
        ])
        .env("CHORUS_TOKEN_SECRET", TOKEN_SECRET)
        .env_remove("CHORUS_CLUSTER_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("chorus started in dev mode with a token secret");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut err)?;
    assert!(!status.success());
    assert!(
        err.contains("dev mode is on and a token secret is set")
            && err.contains("--dev-mode-with-token-secret"),
        "{err}"
    );
    Ok(())
}

/// `make run`'s dev mode (no secret) signs with a random per-process secret:
/// its tokens work there and nowhere else. Told explicitly, dev mode uses the
/// configured secret.
#[tokio::test]
async fn dev_tokens_are_accepted_only_where_meant() -> anyhow::Result<()> {
    let token_of = |body: &str| -> anyhow::Result<String> {
        let v: Value = serde_json::from_str(body)?;
        Ok(v["token"].as_str().unwrap_or_default().to_owned())
    };
    let http = free_tcp();
    let dev = spawn_alone(http, &["--dev-mode"], false).await?;
    let (code, body) = get(http, "/dev/token?name=Alice").await?;
    assert_eq!(code, 200, "{body}");
    let token = token_of(&body)?;
    assert!(
        Tokens::new(TOKEN_SECRET.as_bytes()).verify(&token).is_err(),
        "a production secret accepts a dev token"
    );
    let url = format!("ws://{http}/socket/websocket?token={token}&vsn=2.0.0");
    let mut alice = Client::connect(&url).await?;
    alice.join("1", "chat:dev", "{}").await?;
    drop(dev);

    let http = free_tcp();
    let _explicit =
        spawn_alone(http, &["--dev-mode", "--dev-mode-with-token-secret"], true).await?;
    let (code, body) = get(http, "/dev/token?name=Bob").await?;
    assert_eq!(code, 200, "{body}");
    let claims = Tokens::new(TOKEN_SECRET.as_bytes()).verify(&token_of(&body)?)?;
    assert_eq!(claims.sub, "bob");
    Ok(())
}

/// Fail fast, as a supervisor sees it: when a node's engine stops on its own
/// (here: a second process started under the same `--node` name, which makes
/// the older engine stop, the same path a panicking engine task takes through
/// `Server::engine_failed`), the `chorus` process drains and exits non-zero
/// with one clear error line, instead of serving deaf clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_engine_stops_exits_non_zero_with_a_clear_line() -> anyhow::Result<()> {
    let (http_x, gossip_x) = (free_tcp(), free_udp());
    let (http_old, gossip_old) = (free_tcp(), free_udp());
    let (http_new, gossip_new) = (free_tcp(), free_udp());
    let _x = spawn("x", http_x, gossip_x, gossip_old).await?;
    // Logs go to stdout, the final error to stderr: both into one file.
    let log = std::env::temp_dir().join(format!("chorus-failfast-{}.log", std::process::id()));
    let out = std::fs::File::create(&log)?;
    let child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["--node", "dup", "--listen", &http_old.to_string()])
        .args(["--gossip", &gossip_old.to_string()])
        .args(["--seeds", &gossip_x.to_string()])
        .env("CHORUS_CLUSTER_SECRET", SECRET)
        .env("CHORUS_TOKEN_SECRET", TOKEN_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    let mut old = Proc(child);
    listening("dup", http_old).await?;
    let mut alice = Client::connect(&url(http_old, "alice")).await?;
    alice.join("1", "chat:dup", "{}").await?;
    let mut xavier = Client::connect(&url(http_x, "xavier")).await?;
    xavier.join("1", "chat:dup", "{}").await?;
    timeout(
        Duration::from_secs(10),
        wait_presence(&mut xavier, "alice", true),
    )
    .await??;

    // Incarnations are start times in ms: this one starts well after `old`.
    let _new = spawn("dup", http_new, gossip_new, gossip_x).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = old.0.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the older `dup` still runs 30 s after its name was taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("the cluster engine failed: draining clients and exiting non-zero"),
        "{output}"
    );
    assert!(
        output.contains("give each process its own --node"),
        "{output}"
    );
    // Its client was told to go (1012) rather than left connected and deaf.
    assert_eq!(alice.ended().await?, Ended::Code(1012));
    Ok(())
}
