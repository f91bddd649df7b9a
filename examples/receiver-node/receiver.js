#!/usr/bin/env node
// A webhook receiver for hookd: verifies Standard Webhooks signatures, records each event.
//
// Answers 204 to a POST whose signature verifies and 400 to one that does not. Each verified
// event is printed and, with --events-file, appended to that file as one JSON line.
//
//     HOOKD_WEBHOOK_SECRET=whsec_... node receiver.js --port 9000 --events-file events.jsonl
//
// --port 0 picks a free port. The first line on stdout is always `listening on 127.0.0.1:<port>`.
"use strict";

const fs = require("node:fs");
const http = require("node:http");
const { parseArgs } = require("node:util");
const { Webhook, WebhookVerificationError } = require("standardwebhooks");

// hookd's payloads are at most 1 MiB; the envelope adds little. Refuse anything far larger.
const MAX_BODY_BYTES = 4 * 1024 * 1024;

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: process.env.HOOKD_RECEIVER_PORT ?? "9000" },
    "events-file": { type: "string", default: process.env.HOOKD_EVENTS_FILE },
  },
});

const secret = process.env.HOOKD_WEBHOOK_SECRET;
if (!secret) {
  console.error("set HOOKD_WEBHOOK_SECRET to the webhook's secret (whsec_...)");
  process.exit(1);
}
let webhook;
try {
  webhook = new Webhook(secret);
} catch (err) {
  console.error(`HOOKD_WEBHOOK_SECRET is not a whsec_<base64> secret: ${err.message}`);
  process.exit(1);
}

// hookd delivers at least once: a resend carries the same webhook-id. A real receiver keeps
// these ids in its database; memory is enough for an example.
const seen = new Set();

// Returns [status, reason] for one request's raw body and (lower-case) headers.
function handle(body, headers) {
  try {
    // Checks the signature against the raw bytes, and that the timestamp is recent.
    webhook.verify(body, headers, { jsonParse: false });
  } catch (err) {
    if (err instanceof WebhookVerificationError) return [400, err.message];
    return [400, `malformed request: ${err.message}`]; // not signed by hookd either
  }
  const webhookId = headers["webhook-id"];
  if (seen.has(webhookId)) return [204, "duplicate"];
  seen.add(webhookId);

  let event;
  try {
    event = JSON.parse(body.toString("utf8"));
  } catch {
    event = body.toString("utf8");
  }
  const record = JSON.stringify({
    webhook_id: webhookId,
    webhook_timestamp: Number(headers["webhook-timestamp"]),
    event,
  });
  console.log(record);
  if (args["events-file"]) fs.appendFileSync(args["events-file"], `${record}\n`);
  return [204, "verified"];
}

function reply(res, status, text) {
  if (status === 204) {
    res.writeHead(204).end();
  } else {
    res.writeHead(status, { "content-type": "text/plain; charset=utf-8" }).end(text);
  }
}

const server = http.createServer((req, res) => {
  if (req.method !== "POST") return reply(res, 405, "POST only");
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      reply(res, 400, "a body of at most 4 MiB is expected");
      req.destroy();
    } else {
      chunks.push(chunk);
    }
  });
  req.on("end", () => {
    const [status, reason] = handle(Buffer.concat(chunks), req.headers);
    console.error(`${new Date().toISOString()} ${req.method} ${req.url} ${status} ${reason}`);
    reply(res, status, reason);
  });
});

server.listen(Number(args.port), "127.0.0.1", () => {
  const { address, port } = server.address();
  // The first line of stdout; console.log writes it before anything else is printed.
  console.log(`listening on ${address}:${port}`);
});
