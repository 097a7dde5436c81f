// Recovery on reconnect (PROTOCOL.md of the repository) with the unmodified
// phoenix.js client over a 2-node cluster of the built-in config: channel params
// are a function returning the last `_pos` seen, evaluated at every (re)join.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { cleanup, connectAs, freePort, push, sleep, startServer, until } from "./helpers.mjs";

after(cleanup);

const [portA, portB, gossipA, gossipB] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
const API_KEY = "js-recover-test-api-key";
const env = { CHORUS_API_KEY: API_KEY };
await startServer(portA, { node: "a", gossipPort: gossipA, seeds: [gossipB], env });
await startServer(portB, { node: "b", gossipPort: gossipB, seeds: [gossipA], env });
await sleep(1000); // let the nodes meet

/**
 * A recovering client of `topic` on `port`: joins with `{since: lastPos}` once it
 * has a position, records every message, the join replies and messages_history.
 */
function client(port, sub, topic, state = { pos: null, messages: [], replies: [], histories: [] }) {
  const socket = connectAs(port, { sub });
  const channel = socket.channel(topic, () => (state.pos ? { since: state.pos } : {}));
  channel.on("message", (m) => {
    state.messages.push(m);
    state.pos = m._pos;
  });
  channel.on("messages_history", (h) => state.histories.push(h.messages.map((m) => m.body)));
  const joined = new Promise((resolve, reject) => {
    channel
      .join()
      .receive("ok", (r) => {
        state.replies.push(r);
        if (!state.pos || r.recovered === false) state.pos = r.pos;
        resolve(r);
      })
      .receive("error", (e) => reject(new Error(`join error ${JSON.stringify(e)}`)));
  });
  return { socket, channel, state, joined };
}

/** A publisher of `topic` on `port` (joined). */
async function publisher(port, sub, topic) {
  const socket = connectAs(port, { sub });
  const channel = socket.channel(topic, {});
  await new Promise((resolve) => channel.join().receive("ok", resolve));
  return channel;
}

const bodies = (state) => state.messages.map((m) => m.body);

test("messages sent while away are recovered on the other node, exactly once, in order", async () => {
  const topic = "chat:recover-other-node";
  const away = client(portA, "alice", topic);
  const first = await away.joined;
  assert.equal(typeof first.pos, "string", "the join reply carries pos");
  assert.equal(first.recovered, undefined, "no since: no recovered");
  const bob = await publisher(portB, "bob", topic);
  await push(bob, "new_message", { message: "m1" });
  await until(() => away.state.messages.length === 1, "m1 on node A");
  const m1 = away.state.messages[0];
  assert.equal(typeof m1._pos, "string");
  assert.equal(typeof m1._id, "string");

  away.socket.disconnect();
  for (const text of ["m2", "m3", "m4"]) await push(bob, "new_message", { message: text });

  // Back on node B with the last position seen.
  const back = client(portB, "alice", topic, away.state);
  const reply = await back.joined;
  assert.equal(reply.recovered, true, JSON.stringify(reply));
  await until(() => back.state.messages.length === 4, "m2..m4 recovered");
  assert.deepEqual(bodies(back.state), ["m1", "m2", "m3", "m4"]);
  assert.equal(new Set(back.state.messages.map((m) => m._id)).size, 4, "ids are distinct");
  assert.deepEqual(back.state.histories, [[]], "only the first join got messages_history");

  // Live messages go on after the recovered ones, from either node.
  await push(bob, "new_message", { message: "m5" });
  await until(() => back.state.messages.length === 5, "m5 live");
  assert.equal(back.state.messages[4].body, "m5");

  // A rejoin with the last position recovers nothing more and pushes nothing.
  back.socket.disconnect();
  const again = client(portA, "alice", topic, back.state);
  assert.equal((await again.joined).recovered, true);
  await push(bob, "new_message", { message: "m6" });
  await until(() => again.state.messages.length === 6, "m6 live");
  assert.deepEqual(bodies(again.state), ["m1", "m2", "m3", "m4", "m5", "m6"]);
  again.socket.disconnect();
});

test("a gap larger than history answers recovered: false and pushes messages_history", async () => {
  const topic = "chat:recover-gap";
  const away = client(portA, "carol", topic);
  await away.joined;
  const dave = await publisher(portB, "dave", topic);
  await push(dave, "new_message", { message: "seen" });
  await until(() => away.state.messages.length === 1, "seen");
  away.socket.disconnect();
  // history = 50 for chat:*: 51 missed messages are one too many.
  for (let i = 0; i < 51; i++) await push(dave, "new_message", { message: `missed ${i}` });

  const back = client(portB, "carol", topic, away.state);
  const reply = await back.joined;
  assert.equal(reply.recovered, false, JSON.stringify(reply));
  assert.equal(reply.reason, "trimmed");
  assert.equal(typeof reply.pos, "string");
  await until(() => back.state.histories.length === 2, "messages_history");
  assert.equal(back.state.histories[1].length, 50);
  assert.equal(back.state.histories[1][49], "missed 50");
  assert.equal(back.state.messages.length, 1, "nothing recovered");
  back.socket.disconnect();
});

test("a position that is not one answers recovered: false, unknown_position", async () => {
  const topic = "chat:recover-garbage";
  const state = { pos: "AAAAAAAA", messages: [], replies: [], histories: [] };
  const c = client(portA, "erin", topic, state);
  const reply = await c.joined;
  assert.deepEqual([reply.recovered, reply.reason], [false, "unknown_position"]);
  await until(() => state.histories.length === 1, "messages_history");
  c.socket.disconnect();
});

test("POST /api/broadcast while away is recovered like a client's message", async () => {
  const topic = "chat:recover-api";
  const away = client(portA, "frank", topic);
  await away.joined;
  const news = [];
  away.channel.on("news", (m) => {
    news.push(m);
    away.state.pos = m._pos;
  });
  const broadcast = async (n) => {
    const res = await fetch(`http://127.0.0.1:${portB}/api/broadcast`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ topic, event: "news", payload: { n } }),
    });
    assert.equal(res.status, 202);
    const answer = await res.json();
    assert.equal(answer.status, "sent");
    assert.equal(typeof answer._id, "string", "a recoverable topic's answer names the _id");
    return answer._id;
  };
  const first = await broadcast(0);
  await until(() => news.length === 1, "news 0 live on node A");
  assert.equal(news[0]._id, first);
  assert.equal(typeof news[0]._pos, "string");

  away.socket.disconnect();
  const ids = [first, await broadcast(1), await broadcast(2)];
  // Back on node B: the channel's params function sends the last _pos seen.
  const back = client(portB, "frank", topic, away.state);
  back.channel.on("news", (m) => news.push(m));
  const reply = await back.joined;
  assert.equal(reply.recovered, true, JSON.stringify(reply));
  await until(() => news.length === 3, "news 1 and 2 recovered");
  assert.deepEqual(news.map((m) => m.n), [0, 1, 2]);
  assert.deepEqual(news.map((m) => m._id), ids);
  back.socket.disconnect();
});
