#!/usr/bin/env python3
"""A webhook receiver for hookd: verifies Standard Webhooks signatures, records each event.

Answers 204 to a POST whose signature verifies and 400 to one that does not. Each verified
event is printed and, with --events-file, appended to that file as one JSON line.

    HOOKD_WEBHOOK_SECRET=whsec_... python receiver.py --port 9000 --events-file events.jsonl

--port 0 picks a free port. The first line on stdout is always `listening on 127.0.0.1:<port>`.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

# hookd's payloads are at most 1 MiB; the envelope adds little. Refuse anything far larger.
MAX_BODY_BYTES = 4 * 1024 * 1024


class Receiver:
    def __init__(self, secret, events_file):
        self.webhook = Webhook(secret)
        self.events_file = events_file
        self.lock = threading.Lock()
        # hookd delivers at least once: a resend carries the same webhook-id. A real receiver
        # keeps these ids in its database; memory is enough for an example.
        self.seen = set()

    def handle(self, body, headers):
        """Returns (status, reason)."""
        try:
            # Checks the signature against the raw bytes, and that the timestamp is recent.
            self.webhook.verify(body, headers, json_parse=False)
        except WebhookVerificationError as err:
            return 400, str(err)
        except Exception as err:  # malformed headers or body: not signed by hookd either
            return 400, f"malformed request: {err}"

        webhook_id = headers["webhook-id"]
        with self.lock:
            if webhook_id in self.seen:
                return 204, "duplicate"
            self.seen.add(webhook_id)
            try:
                event = json.loads(body)
            except ValueError:
                event = body.decode()
            record = {
                "webhook_id": webhook_id,
                "webhook_timestamp": int(headers["webhook-timestamp"]),
                "event": event,
            }
            record = json.dumps(record, separators=(",", ":"))
            print(record, flush=True)
            if self.events_file:
                with open(self.events_file, "a", encoding="utf-8") as f:
                    f.write(record + "\n")
        return 204, "verified"


def make_handler(receiver):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: hookd reuses connections

        def do_POST(self):
            length = self.headers.get("content-length", "")
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self.close_connection = True  # the body, if any, is left unread
                self.reply(400, "a body of at most 4 MiB with a content-length is expected")
                return
            body = self.rfile.read(int(length))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, reason = receiver.handle(body, headers)
            self.reply(status, "" if status == 204 else reason)

        def reply(self, status, text):
            data = text.encode()
            self.send_response(status)
            if status != 204:
                self.send_header("content-type", "text/plain; charset=utf-8")
                self.send_header("content-length", str(len(data)))
            self.end_headers()
            if status != 204:
                self.wfile.write(data)

        def log_message(self, format, *args):
            sys.stderr.write("%s %s\n" % (self.log_date_time_string(), format % args))

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("HOOKD_RECEIVER_PORT", "9000")),
        help="port on 127.0.0.1, 0 = any free one (env HOOKD_RECEIVER_PORT, default 9000)",
    )
    parser.add_argument(
        "--events-file",
        default=os.environ.get("HOOKD_EVENTS_FILE"),
        help="append each verified event to this file as a JSON line (env HOOKD_EVENTS_FILE)",
    )
    args = parser.parse_args()

    secret = os.environ.get("HOOKD_WEBHOOK_SECRET")
    if not secret:
        sys.exit("set HOOKD_WEBHOOK_SECRET to the webhook's secret (whsec_...)")
    try:
        receiver = Receiver(secret, args.events_file)
    except Exception as err:
        sys.exit(f"HOOKD_WEBHOOK_SECRET is not a whsec_<base64> secret: {err}")

    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(receiver))
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
