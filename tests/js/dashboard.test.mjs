// The live dashboard (/dashboard) in a real browser: Debian's chromium,
// headless, driven by playwright-core against a 3-node `chorus` cluster with an
// API key. The page lists all three nodes up with figures from each (every
// node publishes its snapshot on the internal topic); one node is killed and
// the page shows it down within the failure-detection time (lan profile: down
// after 2 s of silence; snapshots each second). Screenshot: target/dashboard.png.
// Also: a wrong key gets no data, a user socket cannot join the internal topic,
// and without an API key there is no dashboard.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import {
  TEST_TOPIC_CONFIG, cleanup, connectAs, freePort, join, joinError, startServer, stop, writeConfig,
} from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = fileURLToPath(new URL("../../target/dashboard.png", import.meta.url));
const API_KEY = "js-dashboard-api-key-0123456789";

// The lan profile declares a silent node down after 2 s; the page learns it
// with the next snapshot (1 s). Slack for a loaded CI machine on top.
const DETECTION_MS = 2_000 + 1_000;
const SLACK_MS = 4_000;

let browser;
after(async () => {
  await browser?.close();
  cleanup();
});

/** The rows of the page's node table: name -> state. */
const rows = (page) =>
  page.$$eval("#nodes tbody tr", (trs) => Object.fromEntries(trs.map((tr) => [tr.dataset.name, tr.dataset.state])));

/** Waits until the node table is exactly `want` (name -> state), or fails saying what it is. */
async function waitRows(page, want, timeout) {
  try {
    await page.waitForFunction(
      (w) => {
        const got = Object.fromEntries([...document.querySelectorAll("#nodes tbody tr")].map((tr) => [tr.dataset.name, tr.dataset.state]));
        return JSON.stringify(Object.entries(got).sort()) === JSON.stringify(Object.entries(w).sort());
      },
      want,
      { timeout },
    );
  } catch {
    assert.fail(`node table is ${JSON.stringify(await rows(page))}, want ${JSON.stringify(want)}`);
  }
}

/** Opens a WebSocket to `url` and resolves with the HTTP status of a refused upgrade (or "open"). */
function upgradeStatus(url, opts) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, opts);
    ws.on("open", () => { ws.close(); resolve("open"); });
    ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
    ws.on("error", () => {});
  });
}

test("the dashboard shows a 3-node cluster live and a killed node down", { timeout: 90_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: install Debian's chromium (make test does) or set CHROMIUM`);
  const config = writeConfig(TEST_TOPIC_CONFIG);
  const http = [await freePort(), await freePort(), await freePort()];
  const gossip = [await freePort(), await freePort(), await freePort()];
  const names = ["n1", "n2", "n3"];
  const nodes = await Promise.all(names.map((node, i) => startServer(http[i], {
    node, config, gossipPort: gossip[i], seeds: gossip.filter((_, j) => j !== i), env: { CHORUS_API_KEY: API_KEY },
  })));

  // Without the key the socket is refused; a user socket cannot join the topic.
  const socketUrl = `ws://127.0.0.1:${http[0]}/dashboard/websocket?vsn=2.0.0`;
  assert.equal(await upgradeStatus(socketUrl), 403);
  assert.equal(await upgradeStatus(socketUrl, { headers: { authorization: "Bearer wrong" } }), 403);
  assert.equal(await upgradeStatus(socketUrl, { headers: { authorization: `Bearer ${API_KEY}` } }), "open");
  const user = connectAs(http[1], { sub: "alice", name: "Alice" });
  assert.deepEqual(await joinError(user.channel("chorus:dashboard", {})), { reason: "unmatched topic" });
  // A subscriber with presence on n2, for the busiest topics.
  const dash = user.channel("test:dash", {});
  await join(dash);

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  const errors = [];
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.setDefaultTimeout(20_000);
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(`http://127.0.0.1:${http[0]}/dashboard#key=${encodeURIComponent(API_KEY)}`);
  assert.equal(new URL(page.url()).hash, "", "the key is taken out of the address bar");

  // All three up, in the table and the picture, with figures from each node.
  await waitRows(page, { n1: "up", n2: "up", n3: "up" }, 20_000);
  await page.waitForFunction(() => document.querySelectorAll('#cluster g.member[data-state="up"]').length === 3);
  await page.waitForFunction(() => {
    const cells = (name) => [...document.querySelectorAll(`#nodes tr[data-name="${name}"] td`)].map((td) => td.textContent);
    // n2's WebSocket count is alice's connection: its snapshot came over the cluster.
    return cells("n2")[2] === "1" && cells("n3")[2] === "0" && cells("n1")[2] === "0";
  });
  await page.locator("#topics tbody tr", { hasText: "test:dash" }).waitFor();
  assert.deepEqual(
    await page.$$eval("#topics tbody tr", (trs) => trs.filter((tr) => tr.cells[0].textContent === "test:dash").map((tr) => [...tr.cells].map((c) => c.textContent))),
    [["test:dash", "1", "1"]],
  );
  assert.equal(await page.locator("#topics tbody tr").count(), 1, "internal topics are not listed");
  assert.match(await page.textContent("#status"), /connected to n1/);

  // Traffic on n2: its frames in per second, and the cluster's, become non-zero.
  const pushing = setInterval(() => dash.push("new_msg", { body: "hi" }), 100);
  try {
    await page.waitForFunction(() => {
      const n2 = [...document.querySelectorAll('#nodes tr[data-name="n2"] td')].map((td) => td.textContent);
      return Number(n2[5]) > 0 && Number(n2[6]) > 0 && Number(document.getElementById("rate-in").textContent) > 0;
    });
  } finally {
    clearInterval(pushing);
  }

  // n3 dies without a word: the page shows it down within the detection time.
  const t0 = Date.now();
  await stop(nodes[2], "SIGKILL");
  await waitRows(page, { n1: "up", n2: "up", n3: "down" }, DETECTION_MS + SLACK_MS);
  const took = Date.now() - t0;
  console.log(`# n3 shown down ${took} ms after SIGKILL`);
  await page.waitForFunction(() => document.querySelector('#cluster g.member[data-name="n3"]')?.dataset.state === "down");

  mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  assert.deepEqual(errors, [], "errors in the page");

  // A wrong key: the page says it cannot connect and shows no member.
  const wrong = await browser.newPage();
  const wrongErrors = [];
  wrong.on("pageerror", (e) => wrongErrors.push(e.message));
  await wrong.goto(`http://127.0.0.1:${http[0]}/dashboard#key=wrong`);
  await wrong.waitForFunction(() => /cannot connect/.test(document.getElementById("status").textContent));
  assert.equal(await wrong.locator("#nodes tbody tr").count(), 0);
  assert.deepEqual(wrongErrors, []);

  await browser.close();
  browser = undefined;
  user.disconnect();
  await Promise.all([stop(nodes[0]), stop(nodes[1])]);
});

test("without an API key there is no dashboard", { timeout: 30_000 }, async () => {
  const port = await freePort();
  const server = await startServer(port, { config: writeConfig(TEST_TOPIC_CONFIG) });
  const res = await fetch(`http://127.0.0.1:${port}/dashboard`);
  assert.equal(res.status, 404);
  assert.match(await res.text(), /API key/);
  assert.equal(await upgradeStatus(`ws://127.0.0.1:${port}/dashboard/websocket?vsn=2.0.0`), 404);
  await stop(server);
});
