// Shared helpers of the phoenix.js suites: start real `chorus` processes, mint
// tokens as an application backend would, and promise-wrap the client.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import https from "node:https";
import { mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import WebSocket from "ws";

const require = createRequire(import.meta.url);
export const { Socket, Presence } = require("phoenix");

export const BIN = process.env.CHORUS_BIN ?? "../../target/debug/chorus";
export const TOKEN_SECRET = "js-test-token-secret-0123456789";
export const CLUSTER_SECRET = "js-test-cluster-secret-012345678";

/** A config with one generic topic rule, for protocol tests. */
export const TEST_TOPIC_CONFIG = `
[server]
dev_mode = false

[[topics]]
pattern = "test:{id}"
presence = true
events = { new_msg = "broadcast", shout = "broadcast_from", ping = "echo" }
`;

const children = new Set();
const sockets = new Set();

/** Kills every server and disconnects every client (call from `after`). */
export function cleanup() {
  for (const s of sockets) s.disconnect();
  for (const c of children) c.kill("SIGKILL");
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Writes `text` to a fresh temporary file and returns its path. */
export function writeConfig(text) {
  const dir = mkdtempSync(path.join(tmpdir(), "chorus-js-"));
  const file = path.join(dir, "chorus.toml");
  writeFileSync(file, text);
  return file;
}

/**
 * Starts `chorus` on `httpPort` and resolves once /healthz answers.
 * `opts`: `gossipPort`, `node`, `config` (a file), `seeds` (gossip ports), `env`,
 * `args` (more flags), `logs` (pipe stdout, the log), `ca` (a PEM the server's TLS certificate is trusted by:
 * /healthz is then asked over https).
 */
export async function startServer(httpPort, opts = {}) {
  const gossipPort = opts.gossipPort ?? (await freePort());
  const args = [
    "--listen", `127.0.0.1:${httpPort}`,
    "--gossip", `127.0.0.1:${gossipPort}`,
    "--node", opts.node ?? "js",
  ];
  if (opts.config) args.push("--config", opts.config);
  if (opts.args) args.push(...opts.args);
  if (opts.seeds?.length) args.push("--seeds", opts.seeds.map((p) => `127.0.0.1:${p}`).join(","));
  const child = spawn(BIN, args, {
    // `logs`: the log lines (stdout) are piped too, for the caller to read.
    stdio: ["ignore", opts.logs ? "pipe" : "ignore", "pipe"],
    env: {
      ...process.env,
      RUST_LOG: "warn",
      CHORUS_TOKEN_SECRET: TOKEN_SECRET,
      CHORUS_CLUSTER_SECRET: CLUSTER_SECRET,
      ...opts.env,
    },
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  children.add(child);
  child.on("exit", () => children.delete(child));
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`chorus exited: ${stderr}`);
    try {
      if (opts.ca) {
        const res = await httpsRequest(`https://127.0.0.1:${httpPort}/healthz`, { ca: opts.ca });
        if (res.status === 200) return child;
      } else {
        const res = await fetch(`http://127.0.0.1:${httpPort}/healthz`);
        if (res.ok) return child;
      }
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  child.kill("SIGKILL");
  throw new Error("chorus did not answer /healthz within 20 s");
}

export function stop(child, signal = "SIGTERM") {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", resolve);
    child.kill(signal);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const b64url = (s) => Buffer.from(s).toString("base64url");

/** An HS256 JWT, as any backend's JWT library would sign it. */
export function mintToken(claims, { secret = TOKEN_SECRET, ttl = 3600 } = {}) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const exp = Math.floor(Date.now() / 1000) + ttl;
  const body = b64url(JSON.stringify({ exp, ...claims }));
  const sig = createHmac("sha256", secret).update(`${header}.${body}`).digest("base64url");
  return `${header}.${body}.${sig}`;
}

export function connect(port, opts = {}) {
  const socket = new Socket(`ws://127.0.0.1:${port}/socket`, {
    transport: WebSocket,
    reconnectAfterMs: () => 50,
    rejoinAfterMs: () => 50,
    ...opts,
  });
  socket.connect();
  sockets.add(socket);
  return socket;
}

/** A socket authenticated as `claims.sub` with the token in the `token` param. */
export function connectAs(port, claims, opts = {}) {
  return connect(port, { params: { token: mintToken(claims) }, ...opts });
}

export function join(channel) {
  return new Promise((resolve, reject) => {
    channel
      .join()
      .receive("ok", resolve)
      .receive("error", (e) => reject(new Error(`join error ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("join timeout")));
  });
}

/** Resolves with the error reply of a join that must fail (and stops retrying). */
export function joinError(channel) {
  return new Promise((resolve, reject) => {
    channel
      .join()
      .receive("ok", () => reject(new Error("join succeeded")))
      .receive("error", (e) => {
        channel.leave();
        resolve(e);
      })
      .receive("timeout", () => reject(new Error("join timeout")));
  });
}

export function push(channel, event, payload) {
  return new Promise((resolve, reject) => {
    channel
      .push(event, payload)
      .receive("ok", resolve)
      .receive("error", (e) => reject(new Error(`push error ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("push timeout")));
  });
}

/** Resolves with the error reply of a push that must fail. */
export function pushError(channel, event, payload) {
  return new Promise((resolve, reject) => {
    channel
      .push(event, payload)
      .receive("ok", (r) => reject(new Error(`push succeeded: ${JSON.stringify(r)}`)))
      .receive("error", resolve)
      .receive("timeout", () => reject(new Error("push timeout")));
  });
}

/** Resolves when `pred()` holds, polled every 10 ms. */
export function until(pred, what, ms = 5_000) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (pred()) return resolve();
      if (Date.now() - t0 > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

export const users = (presence) => presence.list((id) => id).sort();

/** The HTTP status a WebSocket handshake to `url` gets (101 if it opens). */
export function handshakeStatus(url, protocols) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, protocols);
    ws.on("open", () => {
      ws.close();
      resolve(101);
    });
    ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
    ws.on("error", () => {});
  });
}

/**
 * An https request trusting `ca` (a PEM); resolves with `{ status, body, cert }`
 * (`cert`: the server's certificate as node reports it).
 */
export function httpsRequest(url, { ca, method = "GET", headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { ca, method, headers, agent: false }, (res) => {
      const cert = res.socket.getPeerCertificate();
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode, body: text, cert }));
    });
    req.on("error", reject);
    req.end(body);
  });
}
