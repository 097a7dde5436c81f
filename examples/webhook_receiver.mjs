// A Chorus webhook receiver: checks X-Chorus-Signature and keeps, per topic,
// who is online (member_added / member_removed) and which topics are occupied.
// Node.js 18+, no dependencies.
//
//   CHORUS_WEBHOOK_SECRET=... node examples/webhook_receiver.mjs   # listens on 127.0.0.1:9000
//
// and in the chorus config:
//
//   [[webhooks]]
//   url = "http://127.0.0.1:9000/events"
//   topics = ["room:{id}"]
//   events = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "message"]
//
// Delivery is at least once: the handlers below are idempotent (a repeated
// member_added adds nothing), as every receiver's must be.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";

const secret = process.env.CHORUS_WEBHOOK_SECRET;
if (!secret) {
  console.error("set CHORUS_WEBHOOK_SECRET (the same as the chorus nodes')");
  process.exit(1);
}
const port = Number(process.env.PORT ?? 9000);
const MAX_BODY = 4 * 1024 * 1024;

/** topic -> Set of user ids online */
const online = new Map();
/** topics with a presence or a subscriber somewhere in the cluster */
const occupied = new Set();

function validSignature(header, body) {
  const expected = "sha256=" + createHmac("sha256", secret).update(body).digest("hex");
  return (
    typeof header === "string" &&
    header.length === expected.length &&
    timingSafeEqual(Buffer.from(header), Buffer.from(expected))
  );
}

function handle(event) {
  switch (event.name) {
    case "channel_occupied":
      occupied.add(event.topic);
      break;
    case "channel_vacated":
      occupied.delete(event.topic);
      online.delete(event.topic);
      break;
    case "member_added": {
      let users = online.get(event.topic);
      if (!users) online.set(event.topic, (users = new Set()));
      if (!users.has(event.user_id)) {
        users.add(event.user_id);
        console.log(`${event.user_id} is online in ${event.topic}`);
      }
      break;
    }
    case "member_removed":
      if (online.get(event.topic)?.delete(event.user_id)) {
        console.log(`${event.user_id} went offline from ${event.topic}`);
        // Here an app would, say, notify the user's friends or close a call.
      }
      break;
    case "message":
      console.log(`${event.topic} ${event.event}:`, JSON.stringify(event.payload));
      break;
    default:
      // Newer Chorus versions may add event names: ignore what you do not know.
      break;
  }
}

const server = createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/events") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      res.writeHead(413).end();
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    // Check the signature over the raw bytes, before parsing anything.
    if (!validSignature(req.headers["x-chorus-signature"], body)) {
      res.writeHead(401).end();
      return;
    }
    let batch;
    try {
      batch = JSON.parse(body);
    } catch {
      res.writeHead(400).end();
      return;
    }
    for (const event of batch.events ?? []) handle(event);
    // Any 2xx acknowledges the batch; anything else makes Chorus retry it.
    res.writeHead(204).end();
  });
});

// kill -USR2 <pid> prints who is online where.
process.on("SIGUSR2", () => {
  for (const topic of occupied) {
    console.log(topic, [...(online.get(topic) ?? [])].join(", ") || "(subscribers only)");
  }
});

server.listen(port, "127.0.0.1", () => {
  console.log(`webhook receiver on http://127.0.0.1:${port}/events`);
});
