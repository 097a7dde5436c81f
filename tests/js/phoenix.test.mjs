// The unmodified phoenix npm client (pinned 1.8.16, `ws` as its transport on
// Node 20) against a real `chorus` process: the protocol itself (presence,
// replies, broadcast and broadcast_from, binary payloads, reconnects) on a
// generic `test:{id}` topic declared in a config file, with signed tokens.
// CHORUS_BIN names the binary (the Makefile builds it).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import {
  Presence, TEST_TOPIC_CONFIG, cleanup, connect, connectAs, freePort, handshakeStatus, join, mintToken,
  push, pushError, startServer, stop, until, users, writeConfig,
} from "./helpers.mjs";

after(cleanup);

const config = writeConfig(TEST_TOPIC_CONFIG);

const port = await freePort();
const server = await startServer(port, { config });

test("join, presence for two users, push with reply, broadcast and broadcast_from", async () => {
  const alice = connectAs(port, { sub: "alice" });
  const bob = connectAs(port, { sub: "bob" });
  const ca = alice.channel("test:lobby");
  const cb = bob.channel("test:lobby");
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
  const s = connectAs(port, { sub: "carol" });
  const c = s.channel("test:errors");
  await join(c);
  const err = new Promise((resolve) => c.on("error", resolve));
  assert.deepEqual(await pushError(c, "nope", {}), { reason: "unknown_event" });
  assert.deepEqual(await err, { reason: "unknown_event" });
  assert.deepEqual(await push(c, "ping", { still: "joined" }), { still: "joined" });
  s.disconnect();
});

test("authToken is carried in the subprotocol and accepted", async () => {
  const s = connect(port, { authToken: mintToken({ sub: "dave" }) });
  const c = s.channel("test:auth");
  await join(c);
  assert.equal(s.isConnected(), true);
  s.disconnect();
});

test("missing, forged, malformed and expired tokens get 403 at connect", async () => {
  const url = (q) => `ws://127.0.0.1:${port}/socket/websocket?vsn=2.0.0${q}`;
  assert.equal(await handshakeStatus(url(`&token=${mintToken({ sub: "ok" })}`)), 101);
  assert.equal(await handshakeStatus(url("")), 403);
  assert.equal(await handshakeStatus(url(`&token=${mintToken({ sub: "x" }, { secret: "wrong-secret-wrong-secret" })}`)), 403);
  assert.equal(await handshakeStatus(url("&token=not-a-jwt")), 403);
  assert.equal(await handshakeStatus(url(`&token=${mintToken({ sub: "x" }, { ttl: -10 })}`)), 403);
  assert.equal(await handshakeStatus(url(""), ["phoenix", `base64url.bearer.phx.${Buffer.from(mintToken({ sub: "sp" })).toString("base64url")}`]), 101);
});

test("binary payloads round-trip as ArrayBuffer", async () => {
  const s = connectAs(port, { sub: "erin" });
  const c = s.channel("test:bin");
  await join(c);
  const reply = await push(c, "ping", new Uint8Array([1, 2, 3, 255]).buffer);
  assert.ok(reply instanceof ArrayBuffer, "binary reply");
  assert.deepEqual([...new Uint8Array(reply)], [1, 2, 3, 255]);
  s.disconnect();
});

test("the client reconnects and rejoins by itself after a server restart", async () => {
  const s = connectAs(port, { sub: "frank" });
  const c = s.channel("test:restart");
  const p = new Presence(c);
  let joins = 0;
  c.on("phx_reply", () => {});
  await join(c);
  await until(() => users(p).join() === "frank", "frank online");
  c.joinPush.receive("ok", () => joins++);

  await stop(server);
  await until(() => !s.isConnected(), "disconnect", 5_000);
  const again = await startServer(port, { config });
  await until(() => s.isConnected() && c.state === "joined", "rejoin", 15_000);
  await until(() => users(p).join() === "frank", "presence after rejoin", 5_000);
  assert.ok(joins >= 1, "the join was sent again");
  s.disconnect();
  await stop(again);
});
