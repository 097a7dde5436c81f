// The unmodified phoenix npm client (pinned 1.8.16) over its LongPoll transport
// against a real `chorus` process, on a generic `test:{id}` topic from a config
// file, with signed tokens. On Node 20
// phoenix's Ajax uses the built-in fetch (no XMLHttpRequest needed).
// CHORUS_BIN names the binary (the Makefile builds it).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import WebSocket from "ws";
import {
  Presence, TEST_TOPIC_CONFIG, cleanup, connect as connectWith, freePort, join, mintToken,
  push, startServer, until, users, writeConfig,
} from "./helpers.mjs";

const require = createRequire(import.meta.url);
const { LongPoll } = require("phoenix");

/** The server ends a session this long after its last poll (default 15 s). */
const SESSION_TIMEOUT_MS = 1_000;
const config = writeConfig(TEST_TOPIC_CONFIG);

after(cleanup);

/** A socket on the LongPoll transport unless `opts` names another. */
const connect = (port, opts = {}) => connectWith(port, { transport: LongPoll, ...opts });

const port = await freePort();
await startServer(port, {
  node: "js-lp",
  config,
  args: ["--longpoll-timeout-ms", String(SESSION_TIMEOUT_MS)],
});

test("LongPoll: join, presence, push with reply, broadcast and broadcast_from", async () => {
  const alice = connect(port, { params: { token: mintToken({ sub: "alice" }) } });
  const bob = connect(port, { params: { token: mintToken({ sub: "bob" }) } });
  const ca = alice.channel("test:lp");
  const cb = bob.channel("test:lp");
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
  assert.equal(alice.transportName(alice.transport), "LongPoll");
  await until(() => users(pa).join() === "alice,bob" && users(pb).join() === "alice,bob", "both users");

  assert.deepEqual(await push(ca, "ping", { n: 42, s: "x" }), { n: 42, s: "x" });
  // Pushes in one tick travel in one POST; their replies come back in order.
  const replies = await Promise.all([1, 2, 3].map((n) => push(cb, "ping", { n })));
  assert.deepEqual(replies, [{ n: 1 }, { n: 2 }, { n: 3 }]);

  await push(ca, "new_msg", { body: "hello" });
  await push(cb, "shout", { body: "psst" });
  await until(() => gotA.length === 2 && gotB.length === 1, "broadcasts");
  assert.deepEqual(gotA, [["new_msg", "hello"], ["shout", "psst"]]);
  assert.deepEqual(gotB, [["new_msg", "hello"]], "broadcast_from skips the sender");

  await new Promise((resolve) => cb.leave().receive("ok", resolve));
  await until(() => users(pa).join() === "alice", "bob's leave");
  alice.disconnect();
  bob.disconnect();
});

test("a LongPoll client and a WebSocket client in one room see each other", async () => {
  const lp = connect(port, { params: { token: mintToken({ sub: "poller" }) } });
  const ws = connect(port, { params: { token: mintToken({ sub: "streamer" }) }, transport: WebSocket });
  const clp = lp.channel("test:mixed");
  const cws = ws.channel("test:mixed");
  const plp = new Presence(clp);
  const pws = new Presence(cws);
  const gotLp = [];
  const gotWs = [];
  clp.on("new_msg", (m) => gotLp.push(m.body));
  cws.on("new_msg", (m) => gotWs.push(m.body));
  await join(clp);
  await join(cws);
  await until(
    () => users(plp).join() === "poller,streamer" && users(pws).join() === "poller,streamer",
    "both users on both transports",
  );
  await push(clp, "new_msg", { body: "from longpoll" });
  await push(cws, "new_msg", { body: "from websocket" });
  await until(() => gotLp.length === 2 && gotWs.length === 2, "both broadcasts on both sides");
  assert.deepEqual(gotLp, ["from longpoll", "from websocket"]);
  assert.deepEqual(gotWs, ["from longpoll", "from websocket"]);

  lp.disconnect();
  // The LongPoll session ends once it is no longer polled: the poller leaves.
  await until(() => users(pws).join() === "streamer", "the poller's leave", SESSION_TIMEOUT_MS * 2 + 5_000);
  ws.disconnect();
});

test("an expired session is reported gone; the client reconnects and rejoins", async () => {
  const watcher = connect(port, { params: { token: mintToken({ sub: "watcher" }) }, transport: WebSocket });
  const cw = watcher.channel("test:expiry");
  const pw = new Presence(cw);
  await join(cw);

  // Hold back the poll that follows the one carrying the reply to a ping, as a
  // stalled network would, until the server has ended the session. Not simply
  // "the next poll": frames still on their way (the presence_diff of napper's
  // own join can come after a presence_state that already lists napper) end
  // polls of their own, and a stall of the poll that should carry the reply
  // loses the reply with the session. Every poll goes through this fetch from
  // the first, so that the answer carrying the reply is seen.
  const realFetch = globalThis.fetch;
  let replyDelivered = false;
  let stalled = false;
  let release;
  const released = new Promise((resolve) => (release = resolve));
  const isPoll = (url, opts) => String(url).includes("/socket/longpoll") && opts?.method === "GET";
  globalThis.fetch = async (url, opts) => {
    if (!stalled && replyDelivered && isPoll(url, opts)) {
      stalled = true;
      await released;
    }
    const res = await realFetch(url, opts);
    if (!replyDelivered && isPoll(url, opts)) {
      // Read before phoenix.js sees the answer, so before it polls again.
      const { messages = [] } = await res.clone().json().catch(() => ({}));
      replyDelivered = messages.some((m) => m.includes('{"last":"words"}'));
    }
    return res;
  };
  try {
    const s = connect(port, { params: { token: mintToken({ sub: "napper" }) } });
    const c = s.channel("test:expiry");
    const p = new Presence(c);
    const closes = [];
    s.onClose((e) => closes.push(e.code));
    // Every "ok" to the join push: the first join counts at once, a rejoin adds one.
    let joins = 0;
    await join(c);
    c.joinPush.receive("ok", () => joins++);
    await until(() => users(pw).join() === "napper,watcher" && users(p).join() === "napper,watcher", "napper online");
    const joinsBefore = joins;

    assert.deepEqual(await push(c, "ping", { last: "words" }), { last: "words" });
    await until(() => stalled, "the poll after the reply, held back");
    await until(() => users(pw).join() === "watcher", "napper's session expired", SESSION_TIMEOUT_MS + 5_000);
    // The held poll reaches the server with the old session token: the
    // session is gone. phoenix.js appends that token as a second `token` query
    // param after the connect params, so a new session is authenticated with
    // it, as Phoenix does, and fails (403, close 1008) because the app's own
    // token is also called `token` here; otherwise the answer is 410 (close
    // 3410). Either way the client reconnects from scratch.
    release();
    await until(() => closes.some((c) => c === 3410 || c === 1008), "the close of the lost session", 5_000);

    await until(() => s.isConnected() && c.state === "joined" && joins > joinsBefore, "rejoin", 10_000);
    await until(() => users(pw).join() === "napper,watcher", "napper back", 5_000);
    assert.deepEqual(await push(c, "ping", { back: true }), { back: true });
    s.disconnect();
    watcher.disconnect();
  } finally {
    release();
    globalThis.fetch = realFetch;
  }
});

test("longPollFallbackMs: a refused WebSocket falls back to LongPoll", async () => {
  // A WebSocket whose path a proxy refuses (404): the client errors early and
  // falls back at once, well before longPollFallbackMs.
  class RefusedWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url.replace("/socket/websocket", "/socket/refused"), protocols);
    }
  }
  const store = new Map();
  const sessionStorage = {
    getItem: (k) => store.get(k) ?? null,
    setItem: (k, v) => store.set(k, v),
    removeItem: (k) => store.delete(k),
  };
  const t0 = Date.now();
  const s = connect(port, {
    params: { token: mintToken({ sub: "fallback" }) },
    transport: RefusedWebSocket,
    longPollFallbackMs: 10_000,
    sessionStorage,
  });
  const c = s.channel("test:fallback");
  const p = new Presence(c);
  await join(c);
  assert.ok(Date.now() - t0 < 5_000, "fell back on the error, not after the timer");
  assert.equal(s.transport, LongPoll);
  assert.equal(store.get("phx:fallback:LongPoll"), "true", "the fallback is remembered");
  await until(() => users(p).join() === "fallback", "presence over the fallback");
  assert.deepEqual(await push(c, "ping", { via: "fallback" }), { via: "fallback" });
  s.disconnect();
});
