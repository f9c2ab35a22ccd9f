#!/usr/bin/env python3
"""A webhook receiver for chatd's tests.

Listens on 127.0.0.1 (the port given, or any), verifies every request with
the Standard Webhooks library from PyPI (`pip install standardwebhooks`),
not with chatd's code, and prints one JSON line per request on stdout:
{"id", "verified", "content_type", "answer", "body"}. The first line is
{"port": N}.

What it answers is set by a line on stdin, acknowledged with {"mode": M}:
  ok    answer 200 (the default)
  fail  answer 503
  hang  answer nothing for 60 s (longer than any test's webhook timeout)
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

SECRET = sys.argv[1]
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 0
HOOK = Webhook(SECRET)
MODE = {"now": "ok"}
OUT = threading.Lock()


def emit(obj):
    with OUT:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1: connections are kept alive between requests.
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = HOOK.verify(body, headers)
            verified = True
        except Exception as e:  # noqa: BLE001 - any failure is "not verified"
            payload = {"error": str(e)}
            verified = False
        mode = MODE["now"]
        emit(
            {
                "id": headers.get("webhook-id"),
                "verified": verified,
                "content_type": headers.get("content-type"),
                "answer": mode,
                "body": payload,
            }
        )
        if mode == "hang":
            time.sleep(60)
            return
        status = 200 if mode == "ok" else 503
        try:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
        except OSError:
            pass


def control():
    for line in sys.stdin:
        mode = line.strip()
        if mode in ("ok", "fail", "hang"):
            MODE["now"] = mode
            emit({"mode": mode})


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
emit({"port": server.server_address[1]})
threading.Thread(target=control, daemon=True).start()
server.serve_forever()
