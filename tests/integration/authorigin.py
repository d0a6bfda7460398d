#!/usr/bin/env python3
"""An origin that checks credentials on every request, for the tests of
whose headers the supernode's seed sends (nginx cannot delay a refusal).

    authorigin.py PORT FILE GOOD_AUTHORIZATION [RATE]

GET /file (or /nohead, the same file whose HEAD is answered 405) with
`Authorization: GOOD_AUTHORIZATION`: FILE, with a strong
ETag; 304 when If-None-Match names it.  Any other Authorization (or none):
401, at once -- or after 2 s when the value contains "slow", so a test can
register something else while that request is still out.  RATE (bytes
per second) paces the body of a 200 GET (a client that goes away ends it).
One line per request on stdout: "arrived <auth>" when it comes in and
"<method> <path> <status> <auth>" when answered."""

import hashlib
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, FILE, GOOD = int(sys.argv[1]), sys.argv[2], sys.argv[3]
RATE = int(sys.argv[4]) if len(sys.argv) > 4 else 0
CHUNK = 64 * 1024
with open(FILE, "rb") as f:
    DATA = f.read()
ETAG = '"' + hashlib.sha256(DATA).hexdigest()[:32] + '"'
SLOW_REFUSAL_S = 2.0
_out = threading.Lock()


def say(line):
    """One whole line on stdout: handler threads print concurrently, and
    print() writes the text and its newline in two calls."""
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and RATE and status == 200:
            try:
                for off in range(0, len(body), CHUNK):
                    self.wfile.write(body[off:off + CHUNK])
                    time.sleep(CHUNK / RATE)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.command != "HEAD":
            self.wfile.write(body)
        auth = self.headers.get("Authorization", "-")
        say(f"{self.command} {self.path} {status} {auth}")

    def do_GET(self):
        auth = self.headers.get("Authorization", "-")
        say(f"arrived {auth}")
        if self.path == "/nohead" and self.command == "HEAD":
            return self.answer(405, headers=[("Allow", "GET")])
        if self.path not in ("/file", "/nohead"):
            return self.answer(404)
        if auth != GOOD:
            if "slow" in auth:
                time.sleep(SLOW_REFUSAL_S)
            return self.answer(401, b"unauthorized\n", [("WWW-Authenticate", 'Bearer realm="test"')])
        if self.headers.get("If-None-Match") == ETAG:
            return self.answer(304, headers=[("ETag", ETAG)])
        self.answer(200, DATA, [("ETag", ETAG), ("Content-Type", "application/octet-stream")])

    do_HEAD = do_GET


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
