// Recovery across a partition with the unmodified phoenix.js client, without
// root: each node's gossip goes through a UDP relay in this process (the node
// advertises the relay's address, `--advertise`), so cutting the relays stops
// gossip between the two nodes while their clients are still served. Both
// sides publish during the cut; after the heal a client that left before it
// rejoins with its last `_pos` (channel params as a function) and recovers
// both sides' messages exactly once, in each publisher's order.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { cleanup, connectAs, freePort, push, sleep, startServer, until } from "./helpers.mjs";

const API_KEY = "js-partition-test-api-key";
const relays = [];

after(() => {
  for (const r of relays) r.close();
  cleanup();
});

/**
 * A UDP relay on 127.0.0.1 to `127.0.0.1:target`: one upstream socket per
 * sender, replies sent back from the relay's port. While `open` is false
 * every datagram is dropped, both ways.
 */
async function relay(target) {
  const front = dgram.createSocket("udp4");
  const upstream = new Map();
  const r = {
    open: true,
    port: 0,
    close() {
      front.close();
      for (const up of upstream.values()) up.close();
    },
  };
  front.on("error", () => {});
  front.on("message", (msg, from) => {
    if (!r.open) return;
    const key = `${from.address}:${from.port}`;
    let up = upstream.get(key);
    if (!up) {
      up = dgram.createSocket("udp4");
      up.on("error", () => {});
      up.on("message", (back) => {
        if (r.open) front.send(back, from.port, from.address);
      });
      upstream.set(key, up);
    }
    up.send(msg, target, "127.0.0.1");
  });
  await new Promise((resolve) => front.bind(0, "127.0.0.1", resolve));
  r.port = front.address().port;
  relays.push(r);
  return r;
}

/** The members node `port` lists as up. */
async function upNames(port) {
  const res = await fetch(`http://127.0.0.1:${port}/api/cluster`, {
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  const { members } = await res.json();
  return members.filter((m) => m.state === "up").map((m) => m.name).sort().join(",");
}

/** What node `port` would recover for `since` on `topic` (GET /api/history). */
async function recoverable(port, topic, since) {
  const url = `http://127.0.0.1:${port}/api/history?topic=${topic}&since=${since}`;
  const res = await fetch(url, { headers: { authorization: `Bearer ${API_KEY}` } });
  return res.json();
}

/** Resolves once `check()` (async) holds, polled every 50 ms. */
async function eventually(check, what, ms = 20_000) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (await check()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

const [portA, portB, gossipA, gossipB] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
const [relayA, relayB] = [await relay(gossipA), await relay(gossipB)];
const env = { CHORUS_API_KEY: API_KEY };
const via = (r) => ["--advertise", `127.0.0.1:${r.port}`];
await startServer(portA, { node: "a", gossipPort: gossipA, seeds: [relayB.port], env, args: via(relayA) });
await startServer(portB, { node: "b", gossipPort: gossipB, seeds: [relayA.port], env, args: via(relayB) });

function cut(open) {
  relayA.open = open;
  relayB.open = open;
}

async function publisher(port, sub, topic) {
  const socket = connectAs(port, { sub });
  const channel = socket.channel(topic, {});
  await new Promise((resolve) => channel.join().receive("ok", resolve));
  return channel;
}

test("both sides of a partition are recovered after the heal, once each, in publisher order", async () => {
  await eventually(async () => (await upNames(portA)) === "b" && (await upNames(portB)) === "a", "the nodes to meet");
  const topic = "chat:partition";
  const state = { pos: null, messages: [], replies: [] };
  const socket = connectAs(portA, { sub: "reader" });
  const channel = socket.channel(topic, () => (state.pos ? { since: state.pos } : {}));
  channel.on("message", (m) => {
    state.messages.push(m.body);
    state.pos = m._pos;
  });
  await new Promise((resolve, reject) =>
    channel
      .join()
      .receive("ok", (r) => {
        state.replies.push(r);
        if (!state.pos) state.pos = r.pos;
        resolve();
      })
      .receive("error", (e) => reject(new Error(`join error ${JSON.stringify(e)}`))),
  );
  const [onA, onB] = [await publisher(portA, "alice", topic), await publisher(portB, "bob", topic)];
  await push(onA, "new_message", { message: "a0" });
  await push(onB, "new_message", { message: "b0" });
  await until(() => state.messages.length === 2, "a0 and b0 live");
  socket.disconnect();
  const left = state.pos;

  cut(false);
  await eventually(async () => (await upNames(portA)) === "" && (await upNames(portB)) === "", "the cut to be seen");
  for (const n of [1, 2, 3]) {
    await push(onA, "new_message", { message: `a${n}` });
    await push(onB, "new_message", { message: `b${n}` });
  }
  // Each side has its own messages only.
  const [sideA, sideB] = [await recoverable(portA, topic, left), await recoverable(portB, topic, left)];
  assert.deepEqual(sideA.messages.map((m) => m.payload.body), ["a1", "a2", "a3"], JSON.stringify(sideA));
  assert.deepEqual(sideB.messages.map((m) => m.payload.body), ["b1", "b2", "b3"], JSON.stringify(sideB));

  cut(true);
  await eventually(async () => (await upNames(portA)) === "b" && (await upNames(portB)) === "a", "the heal");
  // Node A has merged B's side (repairs after the heal).
  await eventually(
    async () => (await recoverable(portA, topic, left)).messages?.length === 6,
    "node A to hold both sides",
  );

  // The same phoenix.js socket reconnects; the channel rejoins with {since: _pos}.
  socket.connect();
  await until(() => state.replies.length === 2, "the rejoin");
  assert.equal(state.replies[1].recovered, true, JSON.stringify(state.replies[1]));
  await until(() => state.messages.length === 8, "both sides recovered");
  await push(onB, "new_message", { message: "b4" });
  await until(() => state.messages.length === 9, "b4 live");
  await sleep(200);
  assert.equal(state.messages.length, 9, `nothing twice: ${state.messages}`);
  const of = (p) => state.messages.filter((b) => b.startsWith(p));
  assert.deepEqual(of("a"), ["a0", "a1", "a2", "a3"]);
  assert.deepEqual(of("b"), ["b0", "b1", "b2", "b3", "b4"]);
  assert.deepEqual(new Set(state.messages.slice(2, 8)), new Set(["a1", "a2", "a3", "b1", "b2", "b3"]), "recovered before live");
  socket.disconnect();
});
