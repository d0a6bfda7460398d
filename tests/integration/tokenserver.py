#!/usr/bin/env python3
"""A Docker registry token server for the mirror tests (the "token" auth of
Docker Distribution, as auth.docker.io is for Docker Hub).

    tokenserver.py [--lifetime=SECONDS] PORT KEY CERT SERVICE ISSUER USER:PASSWORD [PUBLIC_PREFIX]

GET /token?service=S&scope=repository:NAME:ACTIONS[&scope=...]
  - with Basic credentials matching USER:PASSWORD: a token granting every
    action asked for;
  - without credentials: an anonymous token granting "pull" on repositories
    whose name starts with PUBLIC_PREFIX (Docker Hub's public images, e.g.
    "library/") and nothing else (its answer for a private repository), so
    the registry refuses it there;
  - with wrong credentials, or another service: 401.
The token is a JWT signed RS256 with KEY (by `openssl dgst`), whose header
carries CERT (self-signed; the registry's rootcertbundle) as x5c: Docker
Distribution verifies the x5c chain against its bundle, then the signature.
One line per request on stdout: "token <user|-> <status> <scope...>".

--lifetime: how long the registry accepts a token (default 600 s).  Docker
Distribution accepts a token up to 60 s past its "exp" (clock-skew leeway),
so a lifetime under that is written as an "exp" in the past: the token then
stops working exactly `lifetime` seconds after it was issued."""

import base64
import json
import os
import subprocess
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LEEWAY = 60  # Docker Distribution's allowance past "exp" (registry/auth/token)
LIFETIME = 600
ARGS = []
for a in sys.argv[1:]:
    if a.startswith("--lifetime="):
        LIFETIME = int(a.split("=", 1)[1])
    else:
        ARGS.append(a)
PORT, KEY, CERT, SERVICE, ISSUER, CREDS = ARGS[0:6]
PUBLIC = ARGS[6] if len(ARGS) > 6 else None
USER, PASSWORD = CREDS.split(":", 1)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_der():
    with open(CERT) as f:
        pem = f.read()
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return base64.b64decode("".join(body.split()))


X5C = base64.b64encode(cert_der()).decode()


def sign(signing_input):
    p = subprocess.run(["openssl", "dgst", "-sha256", "-sign", KEY], input=signing_input,
                       capture_output=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode())
    return p.stdout


def make_token(sub, access):
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [X5C]}
    claims = {"iss": ISSUER, "sub": sub, "aud": SERVICE, "exp": now + LIFETIME - LEEWAY, "nbf": now - 10,
              "iat": now, "jti": b64url(os.urandom(12)), "access": access}
    si = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    return si + "." + b64url(sign(si.encode()))


def parse_scope(scope):
    # repository:NAME:ACTION[,ACTION]; NAME may hold ':' only for a port-less
    # name, so split from both ends.
    parts = scope.split(":")
    if len(parts) < 3:
        return None
    return {"type": parts[0], "name": ":".join(parts[1:-1]), "actions": parts[-1].split(",")}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, user, scopes):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="dfly token server"')
        self.end_headers()
        self.wfile.write(data)
        print(f"token {user} {status} {' '.join(scopes)}", flush=True)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        scopes = q.get("scope", [])
        if url.path != "/token" or q.get("service", [""])[0] != SERVICE:
            return self.reply(401, {"details": "unknown service"}, "-", scopes)
        user = "-"
        auth = self.headers.get("Authorization", "")
        if auth:
            try:
                u, _, pw = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":")
            except (IndexError, ValueError):
                u, pw = "", ""
            if not auth.startswith("Basic ") or (u, pw) != (USER, PASSWORD):
                return self.reply(401, {"details": "bad credentials"}, u or "?", scopes)
            user = u
        access = []
        for s in scopes:
            for one in s.split(" "):
                a = parse_scope(one)
                if a and user == "-":
                    public = PUBLIC and a["type"] == "repository" and a["name"].startswith(PUBLIC)
                    a["actions"] = [x for x in a["actions"] if x == "pull"] if public else []
                if a and a["actions"]:
                    access.append(a)
        tok = make_token(user if user != "-" else "", access)
        self.reply(200, {"token": tok, "access_token": tok, "expires_in": LIFETIME,
                         "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, user, scopes)


ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler).serve_forever()
