// The unmodified phoenix npm client (pinned 1.8.16, `ws` as its transport on
// Node 20) against a real `chorus` process serving the demo `room:*` channel.
// CHORUS_BIN names the binary (the Makefile builds it).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { createRequire } from "node:module";
import WebSocket from "ws";

const require = createRequire(import.meta.url);
const { Socket, Presence } = require("phoenix");

const BIN = process.env.CHORUS_BIN ?? "../../target/debug/chorus";
const children = new Set();
const sockets = new Set();

after(() => {
  for (const s of sockets) s.disconnect();
  for (const c of children) c.kill("SIGKILL");
});

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function startServer(httpPort, gossipPort) {
  const child = spawn(
    BIN,
    ["--listen", `127.0.0.1:${httpPort}`, "--gossip", `127.0.0.1:${gossipPort}`, "--node", "js"],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "warn" } },
  );
  children.add(child);
  child.on("exit", () => children.delete(child));
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`http://127.0.0.1:${httpPort}/healthz`);
      if (res.ok) return child;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  throw new Error("chorus did not answer /healthz within 20 s");
}

function stop(child) {
  return new Promise((resolve) => {
    child.once("exit", resolve);
    child.kill("SIGTERM");
  });
}

function connect(port, opts = {}) {
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

function join(channel) {
  return new Promise((resolve, reject) => {
    channel
      .join()
      .receive("ok", resolve)
      .receive("error", (e) => reject(new Error(`join error ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("join timeout")));
  });
}

function push(channel, event, payload) {
  return new Promise((resolve, reject) => {
    channel
      .push(event, payload)
      .receive("ok", resolve)
      .receive("error", (e) => reject(new Error(`push error ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("push timeout")));
  });
}

/** Resolves when `pred()` holds, checked after every Presence sync. */
function until(pred, what, ms = 5_000) {
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

const users = (presence) => presence.list((id) => id).sort();

const port = await freePort();
const server = await startServer(port, await freePort());

test("join, presence for two users, push with reply, broadcast and broadcast_from", async () => {
  const alice = connect(port, { params: { user_id: "alice" } });
  const bob = connect(port, { params: { user_id: "bob" } });
  const ca = alice.channel("room:lobby");
  const cb = bob.channel("room:lobby");
  const pa = new Presence(ca);
  const pb = new Presence(cb);
  const gotA = [];
  const gotB = [];
  ca.on("new_msg", (m) => gotA.push(["new_msg", m.body]));
  cb.on("new_msg", (m) => gotB.push(["new_msg", m.body]));
  ca.on("shout", (m) => gotA.push(["shout", m.body]));
  cb.on("shout", (m) => gotB.push(["shout", m.body]));

  await join(ca);
  await join(cb);
  await until(() => users(pa).join() === "alice,bob" && users(pb).join() === "alice,bob", "both users");

  assert.deepEqual(await push(ca, "ping", { n: 42, s: "x" }), { n: 42, s: "x" });

  await push(ca, "new_msg", { body: "hello" });
  await push(cb, "shout", { body: "psst" });
  await until(() => gotA.length === 2 && gotB.length === 1, "broadcasts");
  assert.deepEqual(gotA, [["new_msg", "hello"], ["shout", "psst"]]);
  assert.deepEqual(gotB, [["new_msg", "hello"]], "broadcast_from skips the sender");

  // Leave: the other side sees bob go.
  await new Promise((resolve) => cb.leave().receive("ok", resolve));
  await until(() => users(pa).join() === "alice", "bob's leave");
  alice.disconnect();
  bob.disconnect();
});

test("an unknown event is answered with an error and the channel stays joined", async () => {
  const s = connect(port, { params: { user_id: "carol" } });
  const c = s.channel("room:errors");
  await join(c);
  await assert.rejects(push(c, "nope", {}), /unknown event/);
  assert.deepEqual(await push(c, "ping", { still: "joined" }), { still: "joined" });
  s.disconnect();
});

test("authToken is carried in the subprotocol and accepted", async () => {
  const s = connect(port, { authToken: "my-secret-token", params: { user_id: "dave" } });
  const c = s.channel("room:auth");
  await join(c);
  assert.equal(s.isConnected(), true);
  s.disconnect();
});

test("binary payloads round-trip as ArrayBuffer", async () => {
  const s = connect(port, { params: { user_id: "erin" } });
  const c = s.channel("room:bin");
  await join(c);
  const reply = await push(c, "ping", new Uint8Array([1, 2, 3, 255]).buffer);
  assert.ok(reply instanceof ArrayBuffer, "binary reply");
  assert.deepEqual([...new Uint8Array(reply)], [1, 2, 3, 255]);
  s.disconnect();
});

test("the client reconnects and rejoins by itself after a server restart", async () => {
  const s = connect(port, { params: { user_id: "frank" } });
  const c = s.channel("room:restart");
  const p = new Presence(c);
  let joins = 0;
  c.on("phx_reply", () => {});
  await join(c);
  await until(() => users(p).join() === "frank", "frank online");
  c.joinPush.receive("ok", () => joins++);

  await stop(server);
  await until(() => !s.isConnected(), "disconnect", 5_000);
  const again = await startServer(port, await freePort());
  await until(() => s.isConnected() && c.state === "joined", "rejoin", 15_000);
  await until(() => users(p).join() === "frank", "presence after rejoin", 5_000);
  assert.ok(joins >= 1, "the join was sent again");
  s.disconnect();
  await stop(again);
});
