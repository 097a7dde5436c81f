// A small application backend for Chorus's hooks (README "Backend hooks"):
// node examples/backend.mjs, then start chorus with
//
//   [[topics]]
//   pattern = "room:{id}"
//   history = 50
//   events = { new_message = "message" }
//   publish_hook = { url = "http://127.0.0.1:9000/publish", events = ["new_message"] }
//
// The publish hook moderates chat messages: a message with a banned word is
// refused with {"reason":"moderated"}; shouting is turned down to lower case;
// messages starting with "/tmp " are broadcast without being stored.

import http from "node:http";

const BANNED = /\b(spam|scam)\b/i;

function publish({ user_id, topic, event, payload }) {
  const text = String(payload.message ?? "");
  if (BANNED.test(text)) {
    console.log(`refused ${event} from ${user_id} on ${topic}`);
    return { allow: false, reason: "moderated" };
  }
  const calm = text === text.toUpperCase() && /[A-Z]/.test(text) ? text.toLowerCase() : text;
  const ephemeral = calm.startsWith("/tmp ");
  return {
    allow: true,
    payload: { message: ephemeral ? calm.slice(5) : calm },
    skip_history: ephemeral,
  };
}

const hooks = { "/publish": publish };

http
  .createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const hook = hooks[req.url];
      let answer;
      try {
        answer = hook && hook(JSON.parse(body));
      } catch (e) {
        console.error(e);
      }
      if (!answer) return res.writeHead(404).end();
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(answer));
    });
  })
  .listen(Number(process.env.PORT ?? 9000), "127.0.0.1", () =>
    console.log(`backend hooks on http://127.0.0.1:${process.env.PORT ?? 9000}`),
  );
