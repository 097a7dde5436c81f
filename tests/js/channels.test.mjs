// The built-in channels of the default config, through the real phoenix.js
// client, over a 2-node cluster (nodes A and B): every rule and every refusal.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import {
  Presence, cleanup, connectAs, freePort, join, joinError, push, pushError, sleep,
  startServer, stop, until, users,
} from "./helpers.mjs";

after(cleanup);

const [portA, portB, gossipA, gossipB] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
const API_KEY = "js-test-api-key";
const env = { CHORUS_API_KEY: API_KEY };
const nodeA = await startServer(portA, { node: "a", gossipPort: gossipA, seeds: [gossipB], env });
const nodeB = await startServer(portB, { node: "b", gossipPort: gossipB, seeds: [gossipA], env });
await sleep(1000); // let the nodes meet

/** Collects `event` payloads of `channel`. */
function collect(channel, event) {
  const got = [];
  channel.on(event, (p) => got.push(p));
  return got;
}

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

test("user:{id}: only that user; init counts the user's sockets across the cluster", async () => {
  const a1 = connectAs(portA, { sub: "uma" });
  const a2 = connectAs(portB, { sub: "uma" });
  await until(() => a1.isConnected() && a2.isConnected(), "both sockets");
  await sleep(300); // the second socket's presence replicates
  const c = a1.channel("user:uma");
  const init = collect(c, "init");
  await join(c);
  await until(() => init.length === 1, "init");
  assert.deepEqual(init[0], { user_id: "uma", sockets: 2 });

  const other = connectAs(portA, { sub: "eve" });
  assert.deepEqual(await joinError(other.channel("user:uma")), { reason: "unauthorized" });
});

test("room:{id}: unknown rooms refused; history, then presence with online_at and username, across nodes", async () => {
  const alice = connectAs(portA, { sub: "alice", name: "Alice" });
  assert.deepEqual(await joinError(alice.channel("room:nowhere")), { reason: "room_not_found" });

  const ca = alice.channel("room:lobby");
  await join(ca);
  const saved = await push(ca, "new_message", { message: "  hello from A  " });
  assert.equal(saved.body, "hello from A");
  assert.equal(saved.user_id, "alice");
  assert.equal(saved.username, "Alice");
  assert.match(saved.inserted_at, ISO);
  assert.equal(typeof saved.id, "string");

  // A user joining on node B a moment later gets the message in the history,
  // then presence_state with both users.
  await sleep(200);
  const bob = connectAs(portB, { sub: "bob", name: "Bob" });
  const cb = bob.channel("room:lobby");
  const order = [];
  cb.on("messages_history", (p) => order.push(["messages_history", p]));
  cb.on("presence_state", (p) => order.push(["presence_state", p]));
  const pb = new Presence(cb);
  const gotB = collect(cb, "message");
  await join(cb);
  await until(() => order.length >= 2, "history and presence_state");
  assert.equal(order[0][0], "messages_history", "history comes first");
  const history = order[0][1].messages;
  assert.deepEqual(history.at(-1), saved);
  await until(() => users(pb).join() === "alice,bob", "both users in presence");
  const meta = pb.list((id, { metas }) => [id, metas[0]]).find(([id]) => id === "bob")[1];
  assert.equal(meta.username, "Bob");
  assert.match(meta.online_at, ISO);

  // A message from A reaches B's client as `message`.
  await push(ca, "new_message", { message: "second" });
  await until(() => gotB.some((m) => m.body === "second"), "broadcast on B");
});

test("new_message validation: blank and too long are refused with validation_error", async () => {
  const s = connectAs(portA, { sub: "val" });
  const c = s.channel("room:lobby");
  const errors = collect(c, "error");
  const got = collect(c, "message");
  await join(c);
  const blank = await pushError(c, "new_message", { message: "   " });
  const want = { reason: "validation_error", errors: { message: ["can't be blank"] } };
  assert.deepEqual(blank, want);
  const long = await pushError(c, "new_message", { message: "x".repeat(4001) });
  assert.equal(long.reason, "validation_error");
  await pushError(c, "new_message", { message: 42 });
  await until(() => errors.length === 3, "three pushed errors");
  assert.deepEqual(errors[0], want);
  assert.equal(got.length, 0, "nothing broadcast");
  assert.equal((await push(c, "new_message", { message: "x".repeat(4000) })).body.length, 4000);
});

test("an unknown event: error reply, pushed error, channel stays joined", async () => {
  const s = connectAs(portA, { sub: "unk" });
  const c = s.channel("room:lobby");
  const errors = collect(c, "error");
  await join(c);
  assert.deepEqual(await pushError(c, "dance", {}), { reason: "unknown_event" });
  await until(() => errors.length === 1, "pushed error");
  assert.deepEqual(errors[0], { reason: "unknown_event" });
  assert.equal(c.state, "joined");
  await push(c, "new_message", { message: "still here" });
});

test("rate limit: the 61st new_message in a minute is refused and not broadcast", async () => {
  const s = connectAs(portA, { sub: "spammer" });
  const watcher = connectAs(portB, { sub: "watcher" });
  const c = s.channel("chat:rl");
  const w = watcher.channel("chat:rl");
  const errors = collect(c, "error");
  const seen = collect(w, "message");
  await join(c);
  await join(w);
  await sleep(200);
  const results = await Promise.allSettled(
    Array.from({ length: 61 }, (_, i) => push(c, "new_message", { message: `m${i}` })),
  );
  const ok = results.filter((r) => r.status === "fulfilled").length;
  assert.equal(ok, 60);
  assert.match(results[60].reason.message, /rate_limit_exceeded/);
  await until(() => errors.some((e) => e.reason === "rate_limit_exceeded"), "pushed error");
  await until(() => seen.length === 60, "60 broadcasts");
  await sleep(200);
  assert.equal(seen.length, 60, "the refused message was not broadcast");
});

test("a room created through the HTTP API on node A can be joined on node B", async () => {
  const s = connectAs(portB, { sub: "newsreader" });
  assert.deepEqual(await joinError(s.channel("room:news")), { reason: "room_not_found" });
  const res = await fetch(`http://127.0.0.1:${portA}/api/rooms`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ id: "news", name: "News" }),
  });
  assert.equal(res.status, 201);
  await sleep(300);
  await join(s.channel("room:news"));
});

test("rooms:user:{id}: the rooms the user joined; only that user", async () => {
  const s = connectAs(portB, { sub: "member" });
  await join(s.channel("room:lobby"));
  await sleep(100);
  const reply = await join(s.channel("rooms:user:member"));
  assert.deepEqual(reply, { rooms: ["lobby"] });
  const other = connectAs(portB, { sub: "nosy" });
  assert.deepEqual(await joinError(other.channel("rooms:user:member")), { reason: "unauthorized" });
});

test("org:{org} and org:{org}:team:{team} follow the org and teams claims", async () => {
  const s = connectAs(portA, { sub: "olga", org: "7", teams: ["3"] });
  await join(s.channel("org:7"));
  await join(s.channel("org:7:team:3"));
  assert.deepEqual(await joinError(s.channel("org:8")), { reason: "unauthorized" });
  assert.deepEqual(await joinError(s.channel("org:7:team:4")), { reason: "unauthorized" });
  assert.deepEqual(await joinError(s.channel("org:8:team:3")), { reason: "unauthorized" });
  const none = connectAs(portA, { sub: "noorg" });
  assert.deepEqual(await joinError(none.channel("org:7")), { reason: "unauthorized" });
});

test("chat:{id}: update_presence is one diff, new meta with phx_ref_prev in joins, old in leaves", async () => {
  const a = connectAs(portA, { sub: "cat", name: "Cat" });
  const b = connectAs(portB, { sub: "dog" });
  const ca = a.channel("chat:7");
  const cb = b.channel("chat:7");
  const pb = new Presence(cb);
  const diffs = collect(cb, "presence_diff");
  await join(ca);
  await join(cb);
  await until(() => users(pb).join() === "cat,dog", "both present");
  await push(ca, "update_presence", { status: "away" });
  const isUpdate = (d) => d.joins.cat?.metas.some((m) => m.status === "away");
  await until(() => diffs.some(isUpdate), "the update diff");
  assert.equal(diffs.filter(isUpdate).length, 1, "one diff");
  const diff = diffs.find(isUpdate);
  const [joined] = diff.joins.cat.metas;
  const [left] = diff.leaves.cat.metas;
  assert.equal(joined.status, "away");
  assert.equal(joined.username, "Cat");
  assert.equal(joined.phx_ref_prev, left.phx_ref);
  assert.equal(left.status, undefined);
  const meta = pb.list((id, { metas }) => [id, metas]).find(([id]) => id === "cat")[1];
  assert.equal(meta.length, 1);
  assert.equal(meta[0].status, "away");
});

test("notifications:{id}: only to friends, delivered live and kept in the target's history", async () => {
  const ann = connectAs(portA, { sub: "ann", friends: ["ben"] });
  const ben = connectAs(portB, { sub: "ben" });
  const mallory = connectAs(portA, { sub: "mallory" });
  assert.deepEqual(await joinError(mallory.channel("notifications:ben")), { reason: "unauthorized" });
  const cb = ben.channel("notifications:ben");
  const got = collect(cb, "new_notification");
  await join(cb);
  const ca = ann.channel("notifications:ann");
  await join(ca);
  const cm = mallory.channel("notifications:mallory");
  await join(cm);
  await sleep(200);
  const sent = await push(ca, "send_notification", { user_id: "ben", message: "hi ben" });
  assert.equal(sent.body, "hi ben");
  await until(() => got.length === 1, "notification delivered");
  assert.equal(got[0].user_id, "ann");
  assert.deepEqual(await pushError(cm, "send_notification", { user_id: "ben", message: "spam" }), {
    reason: "unauthorized",
  });
  await sleep(200);
  assert.equal(got.length, 1, "nothing from a non-friend");

  // Ben's other device joins on node A later: the notification is in history.
  const ben2 = connectAs(portA, { sub: "ben" });
  const c2 = ben2.channel("notifications:ben");
  const hist = collect(c2, "messages_history");
  await join(c2);
  await until(() => hist.length === 1, "history");
  assert.deepEqual(hist[0].messages.map((m) => m.body), ["hi ben"]);
});

test("history survives the crash of the node it was posted on", async () => {
  const s = connectAs(portB, { sub: "crash" });
  const c = s.channel("room:lobby");
  await join(c);
  await push(c, "new_message", { message: "posted on B" });
  await sleep(300);
  s.disconnect();
  await stop(nodeB, "SIGKILL");
  const late = connectAs(portA, { sub: "late" });
  const cl = late.channel("room:lobby");
  const hist = collect(cl, "messages_history");
  await join(cl);
  await until(() => hist.length === 1, "history");
  assert.equal(hist[0].messages.at(-1).body, "posted on B");
  await stop(nodeA);
});
