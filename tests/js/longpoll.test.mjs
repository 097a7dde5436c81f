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

  const s = connect(port, { params: { token: mintToken({ sub: "napper" }) } });
  const c = s.channel("test:expiry");
  const p = new Presence(c);
  const closes = [];
  s.onClose((e) => closes.push(e.code));
  let joins = 0;
  await join(c);
  c.joinPush.receive("ok", () => joins++);
  await until(() => users(pw).join() === "napper,watcher" && users(p).join() === "napper,watcher", "napper online");

  // Hold the client's next poll back for longer than the session timeout, as a
  // stalled network would: the server ends the session and the presence leaves.
  const realFetch = globalThis.fetch;
  let stalled = false;
  globalThis.fetch = async (url, opts) => {
    if (!stalled && String(url).includes("/socket/longpoll") && String(url).includes("token=") && opts?.method === "GET") {
      stalled = true;
      await new Promise((r) => setTimeout(r, SESSION_TIMEOUT_MS * 3));
    }
    return realFetch(url, opts);
  };
  try {
    // The reply ends the poll held now; the next one stalls.
    assert.deepEqual(await push(c, "ping", { last: "words" }), { last: "words" });
    await until(() => stalled, "a stalled poll");
    await until(() => users(pw).join() === "watcher", "napper's session expired", SESSION_TIMEOUT_MS * 3);
    // The stalled poll reaches the server with the old token: 410, session gone.
    // The stalled poll reaches the server with the old session token: the
    // session is gone. phoenix.js appends that token as a second `token` query
    // param after the connect params, so a new session is authenticated with
    // it, as Phoenix does, and fails (403, close 1008) because the app's own
    // token is also called `token` here; otherwise the answer is 410 (close
    // 3410). Either way the client reconnects from scratch.
    await until(() => closes.some((c) => c === 3410 || c === 1008), "the close of the lost session", SESSION_TIMEOUT_MS * 3 + 5_000);
  } finally {
    globalThis.fetch = realFetch;
  }
  await until(() => s.isConnected() && c.state === "joined" && joins >= 1, "rejoin", 10_000);
  await until(() => users(pw).join() === "napper,watcher", "napper back", 5_000);
  assert.deepEqual(await push(c, "ping", { back: true }), { back: true });
  s.disconnect();
  watcher.disconnect();
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
