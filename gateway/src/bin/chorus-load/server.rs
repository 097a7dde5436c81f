//! The server under load: a `chorus` process this tool starts (`--spawn`), or
//! one started elsewhere (`--url`, and `--pid` to read its memory); and, with
//! `--compare`, the ceiling (`../shared/ceiling`, a minimal Phoenix server).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The topic rules the scenarios need (`gateway/bench/load.toml`).
pub const CONFIG: &str = include_str!("../../../bench/load.toml");

/// A server child process on a free port of 127.0.0.1; killed on drop.
pub struct Spawned {
    child: Child,
    /// The config file written for it (`chorus` only).
    config: Option<PathBuf>,
    /// The socket URL.
    pub url: String,
}

impl Spawned {
    /// Starts `bin --config <CONFIG + extra> --listen 127.0.0.1:<free>` with the
    /// token secret, and waits until `GET /healthz` answers 200.
    pub async fn start(bin: &Path, token_secret: &str, extra: &str) -> anyhow::Result<Self> {
        Self::start_with(bin, token_secret, extra, free_port()?, &[], &[]).await
    }

    /// [`Spawned::start`] listening on `addr`, with more flags and
    /// environment variables (a cluster node: `--node`, `--gossip`,
    /// `--seeds`, `CHORUS_CLUSTER_SECRET`).
    pub async fn start_with(
        bin: &Path,
        token_secret: &str,
        extra: &str,
        addr: SocketAddr,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let config = std::env::temp_dir().join(format!(
            "chorus-load-{}-{}.toml",
            std::process::id(),
            addr.port()
        ));
        std::fs::write(&config, format!("{CONFIG}{extra}")).context("writing the server config")?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["--listen", &addr.to_string()])
            .args(args)
            .envs(env.iter().copied())
            .env("CHORUS_TOKEN_SECRET", token_secret)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self {
            child,
            config: Some(config),
            url: format!("ws://{addr}/socket/websocket"),
        };
        server
            .wait_until(bin, "answer /healthz", || healthy(addr))
            .await?;
        Ok(server)
    }

    /// Starts the ceiling, `bin --port <free> --threads <threads>` (it takes
    /// any topic, `new_msg` broadcasts and `ping` echoes; it ignores the
    /// token), and waits until it accepts a WebSocket.
    pub async fn ceiling(bin: &Path, threads: usize) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let child = Command::new(bin)
            .args(["--port", &addr.port().to_string()])
            .args(["--threads", &threads.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let url = format!("ws://{addr}/socket/websocket");
        let mut server = Self {
            child,
            config: None,
            url: url.clone(),
        };
        let accepts = || {
            let url = url.clone();
            async move {
                tokio_tungstenite::connect_async(format!("{url}?vsn=2.0.0"))
                    .await
                    .is_ok()
            }
        };
        server
            .wait_until(bin, "accept a WebSocket", accepts)
            .await?;
        Ok(server)
    }

    /// Polls `ready` every 50 ms for up to 30 s; an error if the process
    /// exits first or never becomes ready.
    async fn wait_until<F, Fut>(&mut self, bin: &Path, what: &str, ready: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready().await {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}", bin.display());
            }
            if Instant::now() > deadline {
                bail!("{} did not {what} at {}", bin.display(), self.url);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}

/// Resident memory of process `pid` in bytes (`VmRSS` of /proc/<pid>/status).
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kb * 1024)
}

/// CPU time (user + system) of process `pid` so far, in seconds, from
/// /proc/<pid>/stat (clock ticks of 1/100 s, as on every Linux this runs on;
/// `getconf CLK_TCK` says).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name, which is in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        bail!("no utime/stime in {path}");
    };
    Ok((user + system) as f64 / 100.0)
}

/// A port of 127.0.0.1 free now (TCP; the same number serves for UDP
/// gossip, which the system also allots freely).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

async fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
    answer.starts_with(b"HTTP/1.1 200")
}

/// The whole answer (head and body) to `GET path` on `host` with the extra
/// header lines `headers`, read until the server closes (5 s at most).
async fn http_get(host: &str, path: &str, headers: &str) -> Option<String> {
    let mut stream = TcpStream::connect(host).await.ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// The body of `GET path` on `addr` with `Authorization: Bearer key`, if it
/// answered 200 (the API's JSON answers).
pub async fn get_authed(addr: SocketAddr, path: &str, key: &str) -> Option<String> {
    let auth = format!("Authorization: Bearer {key}\r\n");
    let text = http_get(&addr.to_string(), path, &auth).await?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // The API's answers carry a Content-Length: the body is the rest.
    Some(body.to_owned())
}

/// The value of the `/metrics` sample `name` (no labels) of the server whose
/// socket URL is `ws_url` (`ws://HOST:PORT/...`); `None` if it cannot be read.
pub async fn metric(ws_url: &str, name: &str) -> Option<u64> {
    let host = ws_url.strip_prefix("ws://")?.split('/').next()?;
    let text = http_get(host, "/metrics", "").await?;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU used by the server and by this process over a stretch of wall time.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Cpu {
    pub wall_s: f64,
    /// Server CPU seconds (user + system), when its pid is known.
    pub server_s: Option<f64>,
    /// This load generator's CPU seconds.
    pub load_s: Option<f64>,
}

/// Starts measuring [`Cpu`] at creation.
pub struct CpuMeter {
    pid: Option<u32>,
    started: Instant,
    server: Option<f64>,
    load: Option<f64>,
}

impl CpuMeter {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            started: Instant::now(),
            server: pid.and_then(|p| cpu_secs(p).ok()),
            load: cpu_secs(std::process::id()).ok(),
        }
    }

    pub fn stop(&self) -> Cpu {
        let delta = |before: Option<f64>, pid: Option<u32>| Some(cpu_secs(pid?).ok()? - before?);
        Cpu {
            wall_s: self.started.elapsed().as_secs_f64(),
            server_s: delta(self.server, self.pid),
            load_s: delta(self.load, Some(std::process::id())),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1} s"));
        write!(
            f,
            "CPU over {:.1} s: server {}, load generator {}",
            self.wall_s,
            s(self.server_s),
            s(self.load_s)
        )
    }
}
