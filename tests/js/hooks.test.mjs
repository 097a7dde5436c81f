// Backend hooks through the real phoenix.js client: a node http backend started
// here answers chorus's connect, join, publish and rpc hooks (allow, deny,
// rewrite, reply), hangs past the timeout, or answers garbage.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createRequire } from "node:module";
import {
  Presence, cleanup, connect, connectAs, freePort, join, joinError, push, pushError,
  startServer, until, users, writeConfig,
} from "./helpers.mjs";

const require = createRequire(import.meta.url);
const { LongPoll } = require("phoenix");

after(cleanup);

const seen = [];
const hung = [];
const backend = http.createServer((req, res) => {
  let text = "";
  req.on("data", (d) => (text += d));
  req.on("end", () => {
    const body = JSON.parse(text);
    seen.push({ path: req.url, body });
    const reply = (value) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(value));
    };
    const { topic, payload = {}, params = {} } = body;
    switch (req.url) {
      case "/connect":
        if (!params.user || params.user === "mallory") return reply({ allow: false, reason: "banned" });
        return reply({ allow: true, user_id: params.user, claims: { name: params.user.toUpperCase() } });
      case "/join":
        if (topic === "room:slow") return hung.push(res); // never answers in time
        if (topic === "room:garbage") return res.end("<html>not json</html>");
        if (topic === "room:secret") return reply({ allow: false, reason: "not_invited" });
        return reply({ allow: true, response: { topic_name: topic.toUpperCase() }, meta: { badge: "gold" } });
      case "/publish":
        if (/spam/.test(payload.message ?? "")) return reply({ allow: false, reason: "spam" });
        return reply({ allow: true, payload: { message: payload.message.replaceAll("darn", "****") } });
      case "/rpc":
        if (payload.q === "?") return reply({ error: "no_question" });
        return reply({ reply: { answer: 42, asked: payload.q } });
    }
    res.writeHead(404).end();
  });
});
await new Promise((r) => backend.listen(0, "127.0.0.1", r));
after(() => {
  for (const res of hung) res.destroy();
  backend.close();
});
const url = (p) => `http://127.0.0.1:${backend.address().port}${p}`;

const port = await freePort();
await startServer(port, {
  config: writeConfig(`
[server]
connect_hook = { url = "${url("/connect")}" }

[[topics]]
pattern = "room:{id}"
presence = true
history = 10
events = { new_message = "message" }
join_hook = { url = "${url("/join")}", timeout_ms = 300 }
publish_hook = { url = "${url("/publish")}", events = ["new_message"] }
rpc_hook = { url = "${url("/rpc")}", events = ["ask"] }
`),
});

test("connect hook: a socket without a token connects as the backend's user; a denied one never opens", async () => {
  const ann = connect(port, { params: { user: "ann" } });
  const channel = ann.channel("room:1");
  const reply = await join(channel);
  assert.deepEqual(reply, { topic_name: "ROOM:1" });
  const joined = seen.filter((s) => s.path === "/join").at(-1).body;
  assert.equal(joined.user_id, "ann");
  assert.equal(joined.claims.name, "ANN");

  const errors = [];
  const mallory = connect(port, { params: { user: "mallory" } });
  mallory.onError(() => errors.push(1));
  await until(() => errors.length >= 1, "mallory's socket error (403)");
  assert.equal(mallory.isConnected(), false);

  // LongPoll: the same hook.
  const lp = connect(port, { transport: LongPoll, params: { user: "lena" } });
  assert.deepEqual(await join(lp.channel("room:lp")), { topic_name: "ROOM:LP" });
});

test("join hook: response merged into the reply, meta into presence; a deny is the join's error reason", async () => {
  const bo = connectAs(port, { sub: "bo" });
  const channel = bo.channel("room:2");
  const presence = new Presence(channel);
  assert.deepEqual(await join(channel), { topic_name: "ROOM:2" });
  await until(() => users(presence).includes("bo"), "bo's presence");
  const [meta] = presence.list((id, { metas }) => metas).flat();
  assert.equal(meta.badge, "gold");
  assert.deepEqual(await joinError(bo.channel("room:secret")), { reason: "not_invited" });
});

test("publish hook: the backend rewrites the message or denies it with a reason", async () => {
  const cy = connectAs(port, { sub: "cy" });
  const channel = cy.channel("room:3");
  const got = [];
  channel.on("message", (m) => got.push(m.body));
  await join(channel);
  const saved = await push(channel, "new_message", { message: "oh darn" });
  assert.equal(saved.body, "oh ****");
  assert.deepEqual(await pushError(channel, "new_message", { message: "buy spam" }), { reason: "spam" });
  await until(() => got.length === 1, "the rewritten broadcast");
  assert.deepEqual(got, ["oh ****"]);
});

test("rpc hook: the push is answered with the backend's reply or error", async () => {
  const di = connectAs(port, { sub: "di" });
  const channel = di.channel("room:4");
  await join(channel);
  assert.deepEqual(await push(channel, "ask", { q: "life" }), { answer: 42, asked: "life" });
  assert.deepEqual(await pushError(channel, "ask", { q: "?" }), { reason: "no_question" });
});

test("a hook that times out or answers garbage denies", async () => {
  const ed = connectAs(port, { sub: "ed" });
  assert.deepEqual(await joinError(ed.channel("room:slow")), { reason: "hook_unavailable" });
  assert.deepEqual(await joinError(ed.channel("room:garbage")), { reason: "hook_error" });
});
