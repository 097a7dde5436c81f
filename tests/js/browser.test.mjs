// The demo page in a real browser: Debian's chromium, headless, driven by
// playwright-core against a `chorus` started as `make run` starts it (the
// built-in config, --dev-mode). Two pages pick names, join `lobby`, see each other
// online and chat; a screenshot is saved to target/demo-chat.png.
// CHROMIUM names the browser (default /usr/bin/chromium; `make test` installs
// Debian's package when it is missing). Without it this test fails, never skips.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { cleanup, freePort, startServer, stop } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = fileURLToPath(new URL("../../target/demo-chat.png", import.meta.url));

let browser;
after(async () => {
  await browser?.close();
  cleanup();
});

/** Opens the demo page, joins `room` as `name` and waits for the chat form. */
async function joinAs(port, name, room, errors) {
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  page.setDefaultTimeout(10_000);
  page.on("pageerror", (e) => errors.push(`${name}: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && errors.push(`${name}: ${m.text()}`));
  page.on("response", (r) => r.status() >= 400 && errors.push(`${name}: ${r.status()} ${r.url()}`));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.click("#login button");
  await page.locator("#send").waitFor({ state: "visible" });
  await page.locator("#login").waitFor({ state: "hidden" });
  return page;
}

/** The names a page shows as online, sorted. */
const online = async (page) => (await page.locator("#online li").allTextContents()).sort();

/** Waits until the page's online list is exactly `names`. */
async function waitOnline(page, names) {
  try {
    await page.waitForFunction(
      (want) => [...document.querySelectorAll("#online li")].map((li) => li.textContent).sort().join("\n") === want,
      [...names].sort().join("\n"),
    );
  } catch {
    assert.fail(`online list is ${JSON.stringify(await online(page))}, want ${JSON.stringify(names)}`);
  }
}

/** Sends `text` from the page's chat form and waits for the input to clear (the ok reply). */
async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
  await page.waitForFunction(() => document.getElementById("text").value === "");
}

/** Waits until the page shows a message `body` from `who`. */
async function waitMessage(page, who, body) {
  const li = page.locator("#messages li", { hasText: body });
  await li.waitFor();
  assert.equal(await li.locator(".who").textContent(), who);
}

test("two pages chat in lobby and each shows the other online", { timeout: 60_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: install Debian's chromium (make test does) or set CHROMIUM`);
  const port = await freePort();
  // As `make run`: the built-in config with --dev-mode, which signs its /dev/token
  // tokens with a random per-process secret (a node refuses dev mode while
  // CHORUS_TOKEN_SECRET is set).
  const server = await startServer(port, { args: ["--dev-mode"], env: { CHORUS_TOKEN_SECRET: undefined } });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  const errors = [];

  const alice = await joinAs(port, "Alice", "lobby", errors);
  const bob = await joinAs(port, "Bob", "lobby", errors);
  await waitOnline(alice, ["Alice", "Bob"]);
  await waitOnline(bob, ["Alice", "Bob"]);
  assert.equal(await alice.textContent("#status"), "connected");

  await say(alice, "Hello from Alice");
  await waitMessage(bob, "Alice", "Hello from Alice");
  await waitMessage(alice, "Alice", "Hello from Alice");
  await say(bob, "Hi Alice, Bob here");
  await waitMessage(alice, "Bob", "Hi Alice, Bob here");
  assert.deepEqual(await alice.locator("#messages li .who").allTextContents(), ["Alice", "Bob"]);

  mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await alice.screenshot({ path: SCREENSHOT });

  // Bob closes his tab: Alice sees him go.
  await bob.close();
  await waitOnline(alice, ["Alice"]);

  assert.deepEqual(errors, [], "errors in the pages");
  await browser.close();
  browser = undefined;
  await stop(server);
});
