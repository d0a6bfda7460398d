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
"<method> <path> <status> <auth>" when answered (the status is "closed"
for a connection closed without an answer, "cut" for a body cut short;
see the faults below).

Faults, for the tests of what the seed does when the origin breaks: GET
/_mode/<mode> (any Authorization) makes every later /file request
  ok      as above (the default)
  503     answer 503 Service Unavailable
  404     answer 404 Not Found
  close   close the connection without answering
  cut     send the headers and half of the body, then close
  hang    close the connection without answering after HANG_S (longer
          than a test's origin timeout), status "hung"
A Range "bytes=N-" with an If-Range naming the ETag is answered 206."""

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
HANG_S = 8.0
MODES = ("ok", "503", "404", "close", "cut", "hang")
_out = threading.Lock()
mode = "ok"


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
        global mode
        if self.path.startswith("/_mode/") and self.path[7:] in MODES:
            mode = self.path[7:]
            return self.answer(200, mode.encode() + b"\n")
        if self.path == "/nohead" and self.command == "HEAD":
            return self.answer(405, headers=[("Allow", "GET")])
        if self.path not in ("/file", "/nohead"):
            return self.answer(404)
        if mode == "close":
            self.close_connection = True
            say(f"{self.command} {self.path} closed {auth}")
            return
        if mode == "hang":
            say(f"{self.command} {self.path} hung {auth}")
            time.sleep(HANG_S)
            self.close_connection = True
            return
        if mode in ("503", "404"):
            return self.answer(int(mode), b"fault\n")
        if auth != GOOD:
            if "slow" in auth:
                time.sleep(SLOW_REFUSAL_S)
            return self.answer(401, b"unauthorized\n", [("WWW-Authenticate", 'Bearer realm="test"')])
        if self.headers.get("If-None-Match") == ETAG:
            return self.answer(304, headers=[("ETag", ETAG)])
        rng, if_range = self.headers.get("Range", ""), self.headers.get("If-Range")
        if rng:
            say(f"range {rng}")
        if rng.startswith("bytes=") and rng.endswith("-") and rng[6:-1].isdigit() and if_range == ETAG \
                and int(rng[6:-1]) < len(DATA):
            first = int(rng[6:-1])
            return self.answer(206, DATA[first:], [("ETag", ETAG), ("Content-Range",
                               f"bytes {first}-{len(DATA) - 1}/{len(DATA)}")])
        if mode == "cut" and self.command == "GET":
            self.send_response(200)
            self.send_header("ETag", ETAG)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA[:len(DATA) // 2])
            self.wfile.flush()
            self.close_connection = True
            say(f"{self.command} {self.path} cut {auth}")
            return
        self.answer(200, DATA, [("ETag", ETAG), ("Content-Type", "application/octet-stream")])

    do_HEAD = do_GET


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
