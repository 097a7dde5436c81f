// TLS for clients: a `chorus` started with --tls-cert/--tls-key (a certificate
// this test makes with `selfsigned`) serves the unmodified phoenix client over
// wss:// and the HTTP API over https://, reloads its certificate on SIGHUP
// without dropping connections, closes a TCP connection that never finishes
// the TLS handshake within limits.handshake_timeout_ms, and refuses to start on
// an unusable file, naming it.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import WebSocket from "ws";
import {
  BIN, CLUSTER_SECRET, Presence, Socket, TEST_TOPIC_CONFIG, TOKEN_SECRET, cleanup, freePort,
  httpsRequest, join, mintToken, push, startServer, until, users, writeConfig,
} from "./helpers.mjs";

const require = createRequire(import.meta.url);
const selfsigned = require("selfsigned");

const sockets = [];
after(() => {
  for (const s of sockets) s.disconnect();
  cleanup();
});

const API_KEY = "js-tls-test-api-key";
const HANDSHAKE_TIMEOUT_MS = 1000;

/** A self-signed certificate for 127.0.0.1 and localhost, as PEM. */
async function certificate(name) {
  const pems = await selfsigned.generate([{ name: "commonName", value: name }], {
    keyType: "ec",
    algorithm: "sha256",
    extensions: [
      { name: "basicConstraints", cA: true },
      { name: "subjectAltName", altNames: [{ type: 2, value: "localhost" }, { type: 7, ip: "127.0.0.1" }] },
    ],
  });
  return { cert: pems.cert, key: pems.private };
}

const dir = mkdtempSync(path.join(tmpdir(), "chorus-tls-"));
const certFile = path.join(dir, "cert.pem");
const keyFile = path.join(dir, "key.pem");
const first = await certificate("chorus-tls-first");
writeFileSync(certFile, first.cert);
writeFileSync(keyFile, first.key);

const config = writeConfig(TEST_TOPIC_CONFIG);
const port = await freePort();
const server = await startServer(port, {
  config,
  logs: true,
  ca: first.cert,
  args: ["--tls-cert", certFile, "--handshake-timeout-ms", String(HANDSHAKE_TIMEOUT_MS)],
  env: { CHORUS_API_KEY: API_KEY, CHORUS_TLS_KEY: keyFile },
});
let serverLog = "";
server.stdout.on("data", (d) => (serverLog += d));

/** A phoenix client over wss:// trusting `ca`, authenticated as `sub`. */
function connectTls(sub, ca) {
  class TrustingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca });
    }
  }
  const socket = new Socket(`wss://127.0.0.1:${port}/socket`, {
    transport: TrustingWebSocket,
    params: { token: mintToken({ sub }) },
    reconnectAfterMs: () => 50,
    rejoinAfterMs: () => 50,
  });
  socket.connect();
  sockets.push(socket);
  return socket;
}

/** Resolves once `probe()` resolves truthy, retried every 20 ms. */
async function eventually(probe, what, ms = 5_000) {
  const t0 = Date.now();
  let last;
  while (Date.now() - t0 < ms) {
    try {
      if (await probe()) return;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

const fingerprint = (pem) => new (require("node:crypto").X509Certificate)(pem).fingerprint256;

test("wss://: join, presence for two users, push with reply and broadcast", async () => {
  const alice = connectTls("alice", first.cert);
  const bob = connectTls("bob", first.cert);
  const ca = alice.channel("test:tls");
  const cb = bob.channel("test:tls");
  const pa = new Presence(ca);
  const got = [];
  cb.on("new_msg", (m) => got.push(m.body));
  await join(ca);
  await join(cb);
  await until(() => users(pa).join() === "alice,bob", "both users");
  assert.deepEqual(await push(ca, "ping", { n: 1 }), { n: 1 });
  await push(ca, "new_msg", { body: "over tls" });
  await until(() => got.length === 1, "the broadcast");
  assert.deepEqual(got, ["over tls"]);
  alice.disconnect();
  bob.disconnect();
});

test("https://: the HTTP API and /metrics; plain http:// gets no answer", async () => {
  const cluster = await httpsRequest(`https://127.0.0.1:${port}/api/cluster`, {
    ca: first.cert,
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  assert.equal(cluster.status, 200, cluster.body);
  assert.ok(Array.isArray(JSON.parse(cluster.body).members), cluster.body);
  const refused = await httpsRequest(`https://127.0.0.1:${port}/api/cluster`, { ca: first.cert });
  assert.equal(refused.status, 401);
  const bcast = await httpsRequest(`https://127.0.0.1:${port}/api/broadcast`, {
    ca: first.cert,
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ topic: "test:api", event: "new_msg", payload: { body: "hi" } }),
  });
  assert.equal(bcast.status, 202, bcast.body);
  const metrics = await httpsRequest(`https://127.0.0.1:${port}/metrics`, { ca: first.cert });
  assert.equal(metrics.status, 200);
  assert.match(metrics.body, /chorus_/);
  await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`), "plain HTTP on the TLS port");
  // A client that does not trust the certificate refuses it.
  await assert.rejects(httpsRequest(`https://127.0.0.1:${port}/healthz`, {}), /self.signed|certificate/i);
});

test("a TCP connection that never starts the TLS handshake is closed by the handshake timeout", async () => {
  const t0 = Date.now();
  const closed = await new Promise((resolve, reject) => {
    const c = net.connect(port, "127.0.0.1");
    const guard = setTimeout(() => {
      c.destroy();
      reject(new Error("the silent connection was not closed within 10 s"));
    }, 10_000);
    c.on("error", () => {});
    c.on("close", () => {
      clearTimeout(guard);
      resolve(Date.now() - t0);
    });
  });
  assert.ok(closed >= HANDSHAKE_TIMEOUT_MS - 100, `closed after ${closed} ms, before the timeout`);
  const metrics = await httpsRequest(`https://127.0.0.1:${port}/metrics`, { ca: first.cert });
  assert.match(metrics.body, /chorus_limit_exceeded_total\{limit="handshake_timeout_ms"\} [1-9]/);
});

test("SIGHUP reloads the certificate: new handshakes get it, an open wss:// connection stays", async () => {
  let opens = 0;
  const alice = connectTls("alice", first.cert);
  alice.onOpen(() => opens++);
  const c = alice.channel("test:reload");
  await join(c);
  const before = await httpsRequest(`https://127.0.0.1:${port}/healthz`, { ca: first.cert });
  assert.equal(before.cert.fingerprint256, fingerprint(first.cert));

  const second = await certificate("chorus-tls-second");
  writeFileSync(keyFile, second.key);
  writeFileSync(certFile, second.cert);
  server.kill("SIGHUP");
  await eventually(async () => {
    const res = await httpsRequest(`https://127.0.0.1:${port}/healthz`, { ca: second.cert });
    return res.cert.fingerprint256 === fingerprint(second.cert);
  }, "the new certificate after SIGHUP");
  // The connection opened under the old certificate is the same one, still joined.
  assert.deepEqual(await push(c, "ping", { still: "here" }), { still: "here" });
  assert.equal(opens, 1, "the wss:// connection was not reopened");
  assert.equal(alice.isConnected(), true);

  // A bad file on the next SIGHUP: logged, and the second certificate stays.
  writeFileSync(certFile, "not a certificate\n");
  server.kill("SIGHUP");
  await until(() => serverLog.includes("TLS certificate not reloaded"), "the reload error in the log");
  assert.ok(serverLog.includes(certFile), serverLog);
  const after = await httpsRequest(`https://127.0.0.1:${port}/healthz`, { ca: second.cert });
  assert.equal(after.cert.fingerprint256, fingerprint(second.cert));
  assert.deepEqual(await push(c, "ping", { n: 2 }), { n: 2 });
  alice.disconnect();
});

/** Runs `chorus` with `args` until it exits (within 10 s); its exit code and stderr. */
function runToExit(args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, {
      stdio: ["ignore", "ignore", "pipe"],
      env: {
        ...process.env,
        RUST_LOG: "warn",
        CHORUS_TOKEN_SECRET: TOKEN_SECRET,
        CHORUS_CLUSTER_SECRET: CLUSTER_SECRET,
        ...env,
      },
    });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const guard = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`chorus did not exit: ${stderr}`));
    }, 10_000);
    child.on("exit", (code) => {
      clearTimeout(guard);
      resolve({ code, stderr });
    });
  });
}

test("an unusable certificate or key stops startup with an error naming the file", async () => {
  const base = ["--listen", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--node", "bad-tls"];
  const good = await certificate("chorus-tls-good");
  const goodCert = path.join(dir, "good-cert.pem");
  const goodKey = path.join(dir, "good-key.pem");
  writeFileSync(goodCert, good.cert);
  writeFileSync(goodKey, good.key);
  const garbage = path.join(dir, "garbage.pem");
  writeFileSync(garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n");
  const missing = path.join(dir, "missing.pem");

  const cases = [
    [["--tls-cert", missing, "--tls-key", goodKey], missing],
    [["--tls-cert", garbage, "--tls-key", goodKey], garbage],
    [["--tls-cert", goodCert, "--tls-key", goodCert], goodCert],
    [["--tls-cert", goodCert, "--tls-key", keyFile], "does not belong"],
    [["--tls-cert", goodCert], "without server.tls_key"],
  ];
  for (const [args, named] of cases) {
    const { code, stderr } = await runToExit([...base, ...args]);
    assert.notEqual(code, 0, `${args.join(" ")}: exit code`);
    assert.ok(stderr.includes(named), `${args.join(" ")}: ${stderr}`);
  }
});
