//! The container image and the Kubernetes manifests, without a container
//! engine: the `Dockerfile` builds the release `chorus` with a known command
//! line in the pinned toolchain and runs it unprivileged with a health check
//! the binary answers; `deploy/kubernetes/*.yaml` are well-formed objects of the
//! kinds and API versions a cluster accepts, whose ports, probes and
//! environment fit chorus; and a `chorus` started with the manifests'
//! environment (the debug build of the same package and binary) serves the
//! probes' paths, passes the image's `HEALTHCHECK` command, and drains and
//! exits on SIGTERM within the termination grace period.

#[path = "../common/bin.rs"]
mod bin;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chorus_gateway::server::{probe, ServerConfig};
use serde::Deserialize;
use serde_yaml_ng::Value;

const DOCKERFILE: &str = include_str!("../../../Dockerfile");
const DOCKERIGNORE: &str = include_str!("../../../.dockerignore");
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");
const GATEWAY_MANIFEST: &str = include_str!("../../../gateway/Cargo.toml");
/// Where every `CHORUS_*` variable the binary reads is named.
const CHORUS_RS: &str = include_str!("../../../gateway/src/bin/chorus.rs");
const MANIFESTS: [(&str, &str); 3] = [
    (
        "service.yaml",
        include_str!("../../../deploy/kubernetes/service.yaml"),
    ),
    (
        "statefulset.yaml",
        include_str!("../../../deploy/kubernetes/statefulset.yaml"),
    ),
    (
        "poddisruptionbudget.yaml",
        include_str!("../../../deploy/kubernetes/poddisruptionbudget.yaml"),
    ),
];

/// The build command of the image: the release `chorus` of `chorus-gateway`,
/// with the committed `Cargo.lock`.
const BUILD: &str = "cargo build --release --locked -p chorus-gateway --bin chorus";

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_the_release_chorus_and_runs_it_unprivileged() -> anyhow::Result<()> {
    let ins = instructions(DOCKERFILE);
    let get = |op: &str| -> Vec<&str> {
        ins.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let froms = get("FROM");
    ensure!(froms.len() == 2, "two stages, got {froms:?}");
    let channel = TOOLCHAIN
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .context("no channel in rust-toolchain.toml")?
        .trim_matches('"');
    ensure!(
        froms[0].starts_with(&format!("rust:{channel}-")) && froms[0].ends_with(" AS builder"),
        "the builder is the toolchain of rust-toolchain.toml ({channel}): {}",
        froms[0]
    );
    ensure!(
        !froms[1].starts_with("rust:"),
        "a small runtime image, not the Rust one: {}",
        froms[1]
    );
    let runs = get("RUN");
    ensure!(
        runs.iter()
            .any(|r| r.contains(&format!("{BUILD} ")) && r.contains("target/release/chorus")),
        "the builder runs `{BUILD}` and takes target/release/chorus: {runs:?}"
    );
    // The command names a real package and binary, and the lock file it needs
    // is in the build context.
    ensure!(GATEWAY_MANIFEST.contains("name = \"chorus-gateway\""));
    ensure!(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gateway/src/bin/chorus.rs"
    ))
    .is_file());
    for excluded in DOCKERIGNORE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        ensure!(
            !["Cargo.lock", "rust-toolchain.toml", "gateway/", "engine/"].contains(&excluded),
            ".dockerignore leaves out {excluded}, which the build needs"
        );
    }
    ensure!(
        DOCKERIGNORE.lines().any(|l| l == "target/"),
        "target/ is kept out of the build context"
    );

    // The runtime stage: non-root, the health check the binary answers.
    let runtime_at = ins
        .iter()
        .rposition(|(o, _)| o == "FROM")
        .expect("two FROMs");
    let runtime = &ins[runtime_at..];
    let last = |op: &str| {
        runtime
            .iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
    };
    let user = last("USER").context("the runtime stage sets no USER")?;
    ensure!(
        !["root", "0", "0:0"].contains(&user) && !user.starts_with("0:"),
        "runs as root: {user}"
    );
    ensure!(
        runtime
            .iter()
            .any(|(o, a)| o == "COPY" && a == "--from=builder /chorus /usr/local/bin/chorus"),
        "copies the built binary"
    );
    let health = last("HEALTHCHECK").context("no HEALTHCHECK")?;
    ensure!(
        health.ends_with(r#"CMD ["/usr/local/bin/chorus", "health"]"#),
        "{health}"
    );
    ensure!(last("ENTRYPOINT") == Some(r#"["/usr/local/bin/chorus"]"#));
    ensure!(last("ENV") == Some("CHORUS_LISTEN=0.0.0.0:4000"));
    ensure!(last("EXPOSE") == Some("4000/tcp 7400/udp"));
    Ok(())
}

/// One Kubernetes object, as far as these checks read it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    api_version: String,
    kind: String,
    metadata: Value,
    spec: Value,
}

fn objects() -> anyhow::Result<Vec<Object>> {
    let mut out = Vec::new();
    for (file, text) in MANIFESTS {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let object = Object::deserialize(doc)
                .with_context(|| format!("{file}: not a Kubernetes object"))?;
            out.push(object);
        }
    }
    Ok(out)
}

/// `v[a][b]...` as a string.
fn s<'a>(v: &'a Value, path: &[&str]) -> anyhow::Result<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_str)
        .with_context(|| format!("no string at {}", path.join(".")))
}

fn u(v: &Value, path: &[&str]) -> anyhow::Result<u64> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_u64)
        .with_context(|| format!("no number at {}", path.join(".")))
}

fn port_of(addr: &str) -> anyhow::Result<u64> {
    let (_, port) = addr.rsplit_once(':').context("no port")?;
    Ok(port.parse()?)
}

/// The chorus container of the StatefulSet.
struct Container<'a> {
    spec: &'a Value,
    /// Name -> value (`$(POD_IP)` unexpanded) or, for `valueFrom`, the source.
    env: BTreeMap<String, Value>,
    /// Port name -> (number, protocol).
    ports: BTreeMap<String, (u64, String)>,
}

fn container(set: &Object) -> anyhow::Result<Container<'_>> {
    let containers = set
        .spec
        .get("template")
        .and_then(|t| t.get("spec"))
        .and_then(|t| t.get("containers"))
        .and_then(Value::as_sequence)
        .context("no containers")?;
    let spec = containers
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("chorus"))
        .context("no chorus container")?;
    let mut env = BTreeMap::new();
    for e in spec
        .get("env")
        .and_then(Value::as_sequence)
        .context("no env")?
    {
        let name = s(e, &["name"])?.to_owned();
        let value = e
            .get("value")
            .or_else(|| e.get("valueFrom"))
            .cloned()
            .with_context(|| format!("env {name} has neither value nor valueFrom"))?;
        ensure!(
            env.insert(name.clone(), value).is_none(),
            "env {name} twice"
        );
    }
    let mut ports = BTreeMap::new();
    for p in spec
        .get("ports")
        .and_then(Value::as_sequence)
        .context("no ports")?
    {
        ports.insert(
            s(p, &["name"])?.to_owned(),
            (u(p, &["containerPort"])?, s(p, &["protocol"])?.to_owned()),
        );
    }
    Ok(Container { spec, env, ports })
}

#[test]
fn the_manifests_are_kubernetes_objects_that_fit_chorus() -> anyhow::Result<()> {
    let objects = objects()?;
    let find = |kind: &'static str| objects.iter().filter(move |o| o.kind == kind);
    for o in &objects {
        let want = match o.kind.as_str() {
            "Service" => "v1",
            "StatefulSet" => "apps/v1",
            "PodDisruptionBudget" => "policy/v1",
            other => bail!("unexpected kind {other}"),
        };
        ensure!(o.api_version == want, "{} is {}", o.kind, o.api_version);
        s(&o.metadata, &["name"])?;
    }
    let set = find("StatefulSet").next().context("no StatefulSet")?;
    let labels = set
        .spec
        .get("template")
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .context("no pod labels")?;
    ensure!(
        set.spec.get("selector").and_then(|s| s.get("matchLabels")) == Some(labels),
        "the StatefulSet selects its own pods"
    );
    let c = container(set)?;
    let (http, http_proto) = c.ports.get("http").context("no http port")?;
    let (gossip, gossip_proto) = c.ports.get("gossip").context("no gossip port")?;
    ensure!(
        http_proto == "TCP" && gossip_proto == "UDP",
        "gossip is QUIC: UDP"
    );

    // Services: a headless one for discovery (the StatefulSet's), one for clients.
    let headless = find("Service")
        .find(|svc| s(&svc.spec, &["clusterIP"]).ok() == Some("None"))
        .context("no headless Service")?;
    let headless_name = s(&headless.metadata, &["name"])?;
    ensure!(s(&set.spec, &["serviceName"])? == headless_name);
    ensure!(
        headless.spec.get("publishNotReadyAddresses") == Some(&Value::Bool(true)),
        "a node is ready once it has a peer: peers must be listed before they are ready"
    );
    for svc in find("Service") {
        let selector = svc.spec.get("selector").context("no selector")?;
        for (k, v) in selector.as_mapping().context("selector")? {
            ensure!(labels.get(k) == Some(v), "a Service selects no chorus pod");
        }
        for p in svc
            .spec
            .get("ports")
            .and_then(Value::as_sequence)
            .context("no ports")?
        {
            let target = s(p, &["targetPort"])?;
            let (number, proto) = c.ports.get(target).context("unknown targetPort")?;
            ensure!(s(p, &["protocol"])? == proto, "{target}: protocol");
            ensure!(u(p, &["port"])? == *number, "{target}: port");
        }
    }
    let pdb = find("PodDisruptionBudget")
        .next()
        .context("no PodDisruptionBudget")?;
    ensure!(
        pdb.spec.get("selector").and_then(|s| s.get("matchLabels")) == Some(labels),
        "the budget covers the chorus pods"
    );

    // Environment: every CHORUS_* variable is one chorus reads; the ports and
    // the discovery name agree with the ports and the headless service.
    for name in c.env.keys() {
        if name.starts_with("CHORUS_") {
            ensure!(
                CHORUS_RS.contains(&format!("\"{name}\"")),
                "chorus reads no {name}"
            );
        } else {
            let used = format!("$({name})");
            ensure!(
                c.env
                    .values()
                    .any(|v| v.as_str().is_some_and(|v| v.contains(&used))),
                "{name} is set for nothing"
            );
        }
    }
    let env = |name: &str| {
        c.env
            .get(name)
            .and_then(Value::as_str)
            .with_context(|| format!("{name} is not a plain value"))
    };
    ensure!(port_of(env("CHORUS_LISTEN")?)? == *http);
    ensure!(env("CHORUS_GOSSIP")? == format!("$(POD_IP):{gossip}"));
    let namespace = s(&set.metadata, &["namespace"]).unwrap_or("default");
    ensure!(
        env("CHORUS_SEEDS")?
            == format!("dns:{headless_name}.{namespace}.svc.cluster.local:{gossip}"),
        "the seeds are the headless service's DNS name"
    );

    // Probes on chorus's paths and the http port; the grace period covers
    // the drain (ServerConfig::drain_timeout after the last batch).
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = c
            .spec
            .get(probe)
            .and_then(|p| p.get("httpGet"))
            .with_context(|| format!("no {probe}"))?;
        ensure!(s(get, &["path"])? == path, "{probe}");
        ensure!(s(get, &["port"])? == "http", "{probe}");
    }
    let grace = set
        .spec
        .get("template")
        .and_then(|t| t.get("spec"))
        .map(|t| u(t, &["terminationGracePeriodSeconds"]))
        .context("no pod spec")??;
    let drain = ServerConfig::default().drain_timeout.as_secs();
    ensure!(
        grace >= drain + 10,
        "terminationGracePeriodSeconds {grace} leaves no room after the {drain} s drain"
    );
    Ok(())
}

fn free_tcp() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills the node if the test fails before it stops it.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `f` holds, polling, for at most `within`.
fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn a_node_with_the_manifest_environment_serves_its_probes_and_drains_on_sigterm(
) -> anyhow::Result<()> {
    let chorus = bin::chorus_bin()?;
    let objects = objects()?;
    let set = objects
        .iter()
        .find(|o| o.kind == "StatefulSet")
        .context("no StatefulSet")?;
    let c = container(set)?;
    // What the kubelet would give the pod: its IP (here loopback), its name, the
    // secrets; `$(VAR)` expanded as Kubernetes does.
    let pod_ip = "127.0.0.1";
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &c.env {
        let value = match value {
            Value::String(v) => v.replace("$(POD_IP)", pod_ip),
            from => match (
                s(from, &["fieldRef", "fieldPath"]).ok(),
                s(from, &["secretKeyRef", "key"]).ok(),
            ) {
                (Some("status.podIP"), _) => pod_ip.to_owned(),
                (Some("metadata.name"), _) => "chorus-0".to_owned(),
                (_, Some(key)) => format!("{key}-for-the-deploy-test-0123456789"),
                _ => bail!("{name}: unknown valueFrom {from:?}"),
            },
        };
        env.insert(name.clone(), value);
    }
    // Free ports on loopback instead of the fixed ones, the host the manifest's.
    let http = free_tcp()?;
    env.insert("CHORUS_LISTEN".into(), format!("127.0.0.1:{http}"));
    let gossip = env["CHORUS_GOSSIP"].replace(":7400", &format!(":{}", free_udp()?));
    ensure!(gossip.starts_with("127.0.0.1:"), "{gossip}");
    env.insert("CHORUS_GOSSIP".into(), gossip);
    // The manifest's `dns:` seed (the headless service) does not resolve
    // here: the node logs it, retries, and is ready alone, as the first pod of
    // a StatefulSet is.

    let run = |args: &[&str]| {
        Command::new(&chorus)
            .args(args)
            .env_clear()
            .envs(&env)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    // Before the node runs, the image's HEALTHCHECK fails.
    ensure!(!run(&["health", "--timeout", "1s"])?.success());

    let mut node = Node(
        Command::new(&chorus)
            .env_clear()
            .envs(&env)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start chorus")?,
    );
    let addr: SocketAddr = format!("127.0.0.1:{http}").parse()?;
    let t = Duration::from_secs(2);
    ensure!(
        until(Duration::from_secs(20), || probe(addr, "/healthz", t).ok()
            == Some(200)),
        "/healthz never answered 200"
    );
    ensure!(
        until(Duration::from_secs(10), || probe(addr, "/readyz", t).ok()
            == Some(200)),
        "/readyz never answered 200"
    );
    // The image's HEALTHCHECK, and the same command for readiness.
    ensure!(run(&["health"])?.success(), "chorus health failed");
    ensure!(run(&["health", "--path", "/readyz"])?.success());
    ensure!(!run(&["health", "--path", "/no-such-path"])?.success());

    // SIGTERM: the node drains and exits 0 within the grace period.
    let grace = set
        .spec
        .get("template")
        .and_then(|t| t.get("spec"))
        .map(|t| u(t, &["terminationGracePeriodSeconds"]))
        .context("no pod spec")??;
    let pid = node.0.id().to_string();
    let t0 = Instant::now();
    ensure!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()?
        .success());
    let mut status = None;
    ensure!(
        until(Duration::from_secs(grace), || {
            status = node.0.try_wait().ok().flatten();
            status.is_some()
        }),
        "still running {grace} s after SIGTERM"
    );
    let status = status.expect("exited");
    ensure!(status.success(), "exit after SIGTERM: {status}");
    eprintln!("drained and exited {:?} after SIGTERM", t0.elapsed());
    ensure!(!run(&["health", "--timeout", "1s"])?.success());
    Ok(())
}
