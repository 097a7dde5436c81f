// Peer discovery by DNS in the `chorus` binary: a node whose only seed is
// `dns:localhost:PORT` (the system resolver, /etc/hosts) joins the node
// gossiping on 127.0.0.1:PORT, and each lists the other as up.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { TEST_TOPIC_CONFIG, cleanup, freePort, startServer, writeConfig } from "./helpers.mjs";

after(cleanup);

const API_KEY = "js-discovery-test-api-key";

async function upNames(port) {
  const res = await fetch(`http://127.0.0.1:${port}/api/cluster`, {
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  assert.equal(res.status, 200);
  const { members } = await res.json();
  return members.filter((m) => m.state === "up").map((m) => m.name).sort().join(",");
}

test("a dns: seed resolves to the peer and the two nodes join", async () => {
  const config = writeConfig(TEST_TOPIC_CONFIG);
  const env = { CHORUS_API_KEY: API_KEY };
  const [portA, portB, gossipA] = [await freePort(), await freePort(), await freePort()];
  await startServer(portA, { node: "a", gossipPort: gossipA, config, env });
  await startServer(portB, {
    node: "b",
    config,
    env,
    args: ["--seeds", `dns:localhost:${gossipA}`, "--discovery-interval", "200ms"],
  });
  let a = "";
  let b = "";
  const t0 = Date.now();
  while (Date.now() - t0 < 10_000 && !(a === "b" && b === "a")) {
    [a, b] = [await upNames(portA), await upNames(portB)];
    if (a === "b" && b === "a") break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(a, "b", "a lists b up");
  assert.equal(b, "a", "b lists a up");
});
