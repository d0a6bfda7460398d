#!/usr/bin/env python3
"""Hostile and sloppy clients against the supernode API, the piece upload
server (supernode and dfdaemon), and the /metrics format."""

import json
import re
import socket
import time

import dflytest as T

H = "127.0.0.1"


def err_body(data):
    try:
        j = json.loads(data.decode())
    except ValueError:
        return None
    return j if isinstance(j, dict) and isinstance(j.get("error"), str) else None


def expect(sn, method, path, body, want, raw=False):
    if raw:
        st, _, data = sn.request(method, path, body=body,
                                 headers={"Content-Type": "application/json"})
    else:
        st, _, data = sn.request(method, path, body=body)
    T.check(st == want, f"{method} {path} body={str(body)[:80]!r} -> {st}, want {want}: {data[:200]!r}")
    if st >= 400 and method != "HEAD":
        T.check(err_body(data) is not None,
                f"{method} {path} -> {st} without a JSON error body: {data[:200]!r}")


@T.timeout(120)
def test_api_rejects_bad_requests(env):
    sn = env.supernode()
    peer = {"ip": H, "port": 0, "hostname": "t"}
    # malformed JSON
    for body in (b"{", b"not json", b'{"url": "http://x/"', b"\xff\xfe\x00", b"", b"[]", b"42",
                 b"null"):
        expect(sn, "POST", "/api/v1/register", body, 400, raw=True)
    for path in ("/api/v1/pull", "/api/v1/report", "/api/v1/service_down", "/api/v1/error",
                 "/api/v1/heartbeat"):
        expect(sn, "POST", path, b"{oops", 400, raw=True)
    # missing or ill-typed fields
    for body in ({}, {"url": "http://127.0.0.1:1/x"}, {"peer": peer},
                 {"url": 5, "peer": peer}, {"url": "http://127.0.0.1:1/x", "peer": {"port": 1}},
                 {"url": "http://127.0.0.1:1/x", "peer": "me"},
                 {"url": "http://127.0.0.1:1/x", "peer": {"ip": 7, "port": 1}},
                 {"url": "http://127.0.0.1:1/x", "peer": {"ip": H, "port": "80"}},
                 {"url": "http://127.0.0.1:1/x", "peer": {"ip": H, "port": 70000}},
                 {"url": "http://127.0.0.1:1/x", "filter": "token", "peer": peer},
                 {"url": "http://127.0.0.1:1/x", "headers": "A: b", "peer": peer}):
        expect(sn, "POST", "/api/v1/register", body, 400)
    for path, body in (("/api/v1/pull", {}), ("/api/v1/pull", {"task_id": "a" * 64}),
                       ("/api/v1/pull", {"task_id": 1, "peer_id": "p"}),
                       ("/api/v1/pull", {"task_id": "a" * 64, "peer_id": "p", "results": 3}),
                       ("/api/v1/pull", {"task_id": "a" * 64, "peer_id": "p",
                                         "results": [{"piece": "x", "src": "s", "ok": True}]}),
                       ("/api/v1/report", {"peer_id": "p"}),
                       ("/api/v1/service_down", {}), ("/api/v1/heartbeat", {}),
                       ("/api/v1/heartbeat", {"peer_id": 12}),
                       ("/api/v1/error", {"task_id": "a" * 64, "peer_id": "p"})):
        expect(sn, "POST", path, body, 400)
    # unknown routes
    for path in ("/", "/api", "/api/v1", "/api/v1/nope", "/api/v2/register", "/api/v1/register/x",
                 "/healthz/x", "/api/v1/tasks/" + "0" * 64, "/api/v1/tasks/..%2f..%2fetc",
                 "/peer/registry"):
        expect(sn, "GET", path, None, 404)
    st = sn.request("GET", "/" + "a" * 3000)[0]
    T.check(st in (404, 414), f"GET of a 3000-byte path -> {st}")
    # wrong methods
    for method, path in (("GET", "/api/v1/register"), ("PUT", "/api/v1/register"),
                         ("GET", "/api/v1/pull"), ("DELETE", "/api/v1/tasks"),
                         ("POST", "/api/v1/tasks"), ("POST", "/healthz"), ("POST", "/metrics"),
                         ("PUT", "/api/v1/peers")):
        expect(sn, method, path, b"{}" if method != "GET" else None, 405)
    # unknown task / peer on a well-formed pull
    st, j = sn.api("POST", "/api/v1/pull", {"task_id": "b" * 64, "peer_id": "nobody-1.2.3.4-1",
                                           "results": [], "running": 0, "want": 1})
    T.check(st == 404 and isinstance(j, dict) and j.get("error") in ("unknown_task", "unknown_peer"),
            f"pull for an unknown task -> {st} {j}")
    st, j = sn.api("POST", "/api/v1/heartbeat", {"peer_id": "nobody-1.2.3.4-1"})
    T.check(st == 404 and isinstance(j, dict) and j.get("error") == "unknown_peer",
            f"heartbeat of an unknown peer -> {st} {j}")
    T.check(sn.healthy(), "GET /healthz not 200 after bad requests")


@T.timeout(120)
def test_api_oversized_and_slow_bodies(env):
    sn = env.supernode()
    big = b'{"url": "http://127.0.0.1:1/x", "pad": "' + b"a" * (70 * 1024) + b'"}'
    head = (f"POST /api/v1/register HTTP/1.1\r\nHost: {H}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(big)}\r\n\r\n").encode()
    st, resp = T.raw_request(sn.port, head, body=big)
    T.check(st == 413, f"70 KiB body -> {st}: {resp[:200]!r}")
    # A huge declared length must be refused without waiting for the body.
    t0 = time.monotonic()
    head = (f"POST /api/v1/register HTTP/1.1\r\nHost: {H}\r\nContent-Length: 1000000000000\r\n"
            f"\r\n").encode()
    st, resp = T.raw_request(sn.port, head, timeout=10)
    T.check(st == 413 and time.monotonic() - t0 < 5,
            f"declared 1 TB body -> {st} after {time.monotonic() - t0:.1f}s")
    # Exactly 64 KiB of valid JSON is within the limit (answer is not 413).
    pad = 64 * 1024 - len(b'{"url": "http://127.0.0.1:1/x", "pad": ""}')
    ok = b'{"url": "http://127.0.0.1:1/x", "pad": "' + b"b" * pad + b'"}'
    st, _, _ = sn.request("POST", "/api/v1/register", body=ok,
                          headers={"Content-Type": "application/json"}, timeout=60)
    T.check(st != 413, f"a 64 KiB body was refused as too large")
    # Garbage request lines / headers.
    for raw in (b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                b"POST /api/v1/register HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Content-Length: 7\r\n\r\n{}{}{}{",
                b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"h" * (200 * 1024) + b"\r\n\r\n"):
        st, resp = T.raw_request(sn.port, raw, timeout=10)
        T.check(st is None or 400 <= st < 500 or st == 505,
                f"{raw[:40]!r}... -> {st}: {resp[:120]!r}")
    # A client that sends half a request and stalls must not block others.
    stall = socket.create_connection((H, sn.port), timeout=5)
    try:
        stall.sendall(b"POST /api/v1/register HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        T.check(sn.request("GET", "/healthz", timeout=5)[0] == 200, "healthz with a stalled client")
        T.check(time.monotonic() - t0 < 2, "healthz slow while another client stalls")
    finally:
        stall.close()
    T.check(sn.healthy(), "GET /healthz not 200 afterwards")


def check_upload_server(port, task_id, info, label):
    """The /peer/file/ contract on any upload server holding the complete task."""
    def get(path, rng=None):
        head = f"GET {path} HTTP/1.1\r\nHost: {H}\r\nConnection: close\r\n"
        if rng is not None:
            head += f"Range: {rng}\r\n"
        st, resp = T.raw_request(port, (head + "\r\n").encode(), timeout=15)
        T.check(b"root:" not in resp, f"{label}: {path} leaked a system file")
        body = resp.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in resp else b""
        return st, body

    base = f"/peer/file/{task_id}"
    n = info.size
    st, body = get(base, "bytes=0-99")
    T.check(st == 206 and body == T.read_range(info.path, 0, 99), f"{label}: first 100 bytes -> {st}")
    st, body = get(base, f"bytes={n - 10}-{n - 1}")
    T.check(st == 206 and body == T.read_range(info.path, n - 10, n - 1),
            f"{label}: last 10 bytes -> {st}")
    st, body = get(base, f"bytes={4 * T.MiB - 3}-{4 * T.MiB + 2}")  # across a piece boundary
    T.check(st == 206 and body == T.read_range(info.path, 4 * T.MiB - 3, 4 * T.MiB + 2),
            f"{label}: range across pieces -> {st}")
    st, body = get(base)
    T.check(st == 200 and len(body) == n, f"{label}: whole file -> {st}, {len(body)} bytes")
    # escapes and junk paths
    for path in ("/peer/file/../../../../etc/passwd", "/peer/file/%2e%2e/%2e%2e/etc/passwd",
                 "/peer/file/..%2f..%2f..%2fetc%2fpasswd", "/peer/file//etc/passwd",
                 "/peer/file/%2Fetc%2Fpasswd", f"/peer/file/{task_id}/../{task_id}",
                 f"/peer/file/{task_id}/", f"/peer/file/{task_id}/x", f"/peer/file/{task_id[:-1]}",
                 f"/peer/file/{task_id}0", "/peer/file/" + "0" * 64, "/peer/file/",
                 "/peer/file/" + "g" * 64, f"/peer/file/./{task_id}",
                 f"/peer/file/{task_id}%00", "/../../etc/passwd", "/etc/passwd",
                 f"/peer/../peer/file/{task_id}"):
        st, _ = get(path, "bytes=0-9")
        T.check(st == 404 or st == 400, f"{label}: GET {path} -> {st}, want 404")
    st, _ = get("/peer/file/" + "0" * 64, "bytes=0-9")
    T.check(st == 404, f"{label}: unknown task -> {st}, want 404")
    # ranges past the end
    for rng in (f"bytes={n}-{n + 10}", f"bytes={n}-", f"bytes={n + 1000000}-{n + 2000000}"):
        st, _ = get(base, rng)
        T.check(st == 416, f"{label}: Range {rng} (size {n}) -> {st}, want 416")
    # malformed ranges
    for rng in ("bytes=abc", "bytes=-", "items=0-9", "bytes=0-9x", "bytes 0-9", "bytes=--1",
                "bytes=0x10-0x20"):
        st, _ = get(base, rng)
        T.check(st == 400, f"{label}: Range {rng!r} -> {st}, want 400")
    for rng in ("bytes=9-0", "bytes=0-1,5-6", "bytes=99999999999999999999999-1"):
        st, _ = get(base, rng)
        T.check(st is not None and 400 <= st < 500, f"{label}: Range {rng!r} -> {st}, want 4xx")


@T.timeout(150)
def test_supernode_upload_server(env):
    o = env.origin()
    info = o.add_file("u.bin", 9 * T.MiB + 1)
    sn = env.supernode()
    r = env.dfget(o.url("u.bin"), env.path("u.bin"), node=sn.addr, timeout=90)
    r.expect_ok(info)
    check_upload_server(sn.port, r.json["task_id"], info, "supernode")
    T.check(sn.healthy(), "supernode unhealthy after upload-server abuse")


@T.timeout(150)
def test_dfdaemon_upload_server(env):
    o = env.origin()
    info = o.add_file("u.bin", 9 * T.MiB + 1)
    sn = env.supernode()
    d = env.dfdaemon(sn.addr)
    r = env.dfget(o.url("u.bin"), env.path("u.bin"), node=sn.addr, home=d.home, timeout=90)
    r.expect_ok(info)
    check_upload_server(d.upload_port, r.json["task_id"], info, "dfdaemon")
    T.check(d.proc.alive(), f"dfdaemon died:\n{d.proc.tail()}")


METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE_RE = re.compile(rf"^({METRIC_NAME})(\{{(?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\.)*\""
                       rf"(?:,[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\.)*\")*,?)?\}})?"
                       rf" ([-+]?(?:[0-9.]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))( -?[0-9]+)?$")


def validate_prometheus(text):
    """A strict-enough check of the Prometheus text exposition format 0.0.4."""
    T.check(text.endswith("\n"), "metrics must end with a newline")
    types, helps, samples = {}, set(), []
    for i, line in enumerate(text.split("\n")[:-1], 1):
        if not line:
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            T.check(len(parts) == 4 and re.fullmatch(METRIC_NAME, parts[2]) and
                    parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"),
                    f"line {i}: bad TYPE line {line!r}")
            T.check(parts[2] not in types, f"line {i}: second TYPE for {parts[2]}")
            T.check(not any(s == parts[2] for s in samples),
                    f"line {i}: TYPE for {parts[2]} after its samples")
            types[parts[2]] = parts[3]
        elif line.startswith("# HELP "):
            parts = line.split(" ", 3)
            T.check(len(parts) >= 3 and re.fullmatch(METRIC_NAME, parts[2]),
                    f"line {i}: bad HELP line {line!r}")
            T.check(parts[2] not in helps, f"line {i}: second HELP for {parts[2]}")
            helps.add(parts[2])
        elif line.startswith("#"):
            continue
        else:
            m = SAMPLE_RE.match(line)
            T.check(m, f"line {i}: not a valid sample line: {line!r}")
            name = m.group(1)
            fam = name
            for suf in ("_bucket", "_sum", "_count", "_total", "_created"):
                if name.endswith(suf) and name[: -len(suf)] in types:
                    fam = name[: -len(suf)]
            if types.get(fam) == "counter":
                T.check(float(m.group(3)) >= 0, f"line {i}: negative counter {line!r}")
            samples.append(fam)
    T.check(types, "no '# TYPE' lines at all")
    T.check(samples, "no samples at all")
    untyped = sorted(set(s for s in samples if s not in types))
    T.check(not untyped, f"samples without a TYPE line: {untyped}")
    return types


@T.timeout(150)
def test_metrics_format(env):
    o = env.origin()
    info = o.add_file("m.bin", 5 * T.MiB)
    sn = env.supernode()
    validate_prometheus(sn.metrics())  # valid before any traffic too
    env.dfget(o.url("m.bin"), env.path("m.bin"), node=sn.addr, timeout=90).expect_ok(info)
    env.dfget(o.url("m.bin", "missing"), env.path("x.bin"), node=sn.addr, timeout=60).expect_fail()
    st, h, data = sn.request("GET", "/metrics")
    T.check(st == 200, f"/metrics -> {st}")
    T.check(h.get("content-type", "").startswith("text/plain"),
            f"/metrics Content-Type {h.get('content-type')!r}, want text/plain")
    types = validate_prometheus(data.decode("utf-8"))
    T.log(f"metric families: {sorted(types)}")
    T.check(any(t == "counter" for t in types.values()), "no counter at all")


def metric_values(text):
    """{'name{labels}': value} of every sample line."""
    out = {}
    for line in text.split("\n"):
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out


def dfdaemon_metrics(d):
    st, h, data = T.http_request(d.port, "GET", "/metrics")
    T.check(st == 200, f"dfdaemon GET /metrics -> {st}")
    T.check(h.get("content-type", "").startswith("text/plain"),
            f"dfdaemon /metrics Content-Type {h.get('content-type')!r}, want text/plain")
    text = data.decode("utf-8")
    types = validate_prometheus(text)
    return types, metric_values(text)


@T.timeout(200)
def test_dfdaemon_metrics(env):
    """A dfdaemon's /metrics counts what its downloads report: bytes by source
    equal to the dfget JSON, downloads by result, pieces, uploads, store."""
    o = env.origin()
    info = o.add_file("dm.bin", 9 * T.MiB + 3)
    sn = env.supernode()
    d1 = env.dfdaemon(sn.addr)
    d2 = env.dfdaemon(sn.addr)
    types, m = dfdaemon_metrics(d1)  # valid before any traffic too
    T.check(m.get("dfly_dfdaemon_up") == 1, f"dfly_dfdaemon_up: {m}")
    T.check(types.get("dfly_dfdaemon_download_bytes") == "counter" or
            types.get("dfly_dfdaemon_download_bytes_total") == "counter",
            f"download bytes is not a counter: {types}")
    T.check(m.get('dfly_dfdaemon_download_bytes_total{source="peer"}') == 0, f"fresh daemon: {m}")

    r1 = env.dfget(o.url("dm.bin"), env.path("dm1.bin"), home=d1.home, timeout=90)
    r1.expect_ok(info)
    r2 = env.dfget(o.url("dm.bin"), env.path("dm2.bin"), home=d2.home, timeout=90)
    r2.expect_ok(info)
    env.dfget(o.url("dm.bin", "missing"), env.path("dmx.bin"), home=d2.home,
              timeout=60).expect_fail()

    for d, r, failed in ((d1, r1, 0), (d2, r2, 1)):
        _, m = dfdaemon_metrics(d)
        T.log(f"dfget {r.describe()}; dfdaemon: " + ", ".join(
            f"{k}={v:g}" for k, v in m.items() if "bytes" in k or "total" in k))
        for src, key in (("peer", "bytes_from_peers"), ("supernode", "bytes_from_supernode"),
                         ("origin", "bytes_from_origin")):
            got = m.get(f'dfly_dfdaemon_download_bytes_total{{source="{src}"}}')
            T.check(got == r.json[key], f"source={src}: /metrics says {got}, dfget said "
                    f"{r.json[key]} ({r.describe()})")
        T.check(m.get('dfly_dfdaemon_downloads_total{result="ok"}') == 1, f"ok downloads: {m}")
        T.check(m.get('dfly_dfdaemon_downloads_total{result="failed"}') == failed,
                f"failed downloads: {m}")
        T.check(m.get("dfly_dfdaemon_downloads_active") == 0, f"active downloads: {m}")
        T.check(m.get("dfly_dfdaemon_back_source_total") == (1 if r.json["back_source"] else 0),
                f"back_source: {m}")
        T.check(m.get("dfly_dfdaemon_pieces_verified_total", 0) > 0, f"pieces verified: {m}")
        T.check(m.get("dfly_dfdaemon_digest_failures_total") == 0, f"digest failures: {m}")
        T.check(m.get("dfly_dfdaemon_store_tasks") == 1, f"store tasks: {m}")
        T.check(m.get("dfly_dfdaemon_store_bytes") == info.size, f"store bytes: {m}")
    # Every byte d2 took from a peer came from d1, the only other peer.
    _, m1 = dfdaemon_metrics(d1)
    T.check(m1.get("dfly_dfdaemon_upload_bytes_total", 0) >= r2.json["bytes_from_peers"],
            f"d1 uploaded {m1.get('dfly_dfdaemon_upload_bytes_total')}, d2 got "
            f"{r2.json['bytes_from_peers']} from peers")
    T.check(m1.get("dfly_dfdaemon_upload_requests_total", 0) >= (1 if r2.json["bytes_from_peers"] else 0),
            f"upload requests: {m1}")


@T.timeout(120)
def test_parked_pull_client_gone(env):
    """PullPiece is a long-poll: with nothing to assign (the seed reads a
    2 KiB/s origin) the supernode holds the request.  A client that goes away
    meanwhile is noticed at once -- its pull is forgotten, counted, and its
    connection freed -- not only when the answer would be written (a second
    later).  Under ASan: no leak of the dropped requests, no use after free."""
    o = env.origin()
    o.add_file("c.bin", 4 * T.MiB)
    sn = env.supernode()
    st, reg = sn.api("POST", "/api/v1/register", json.dumps(
        {"url": o.url("c.bin", "crawl"), "peer": {"ip": T.LOCALHOST, "port": 40000, "hostname": "x"}}).encode())
    T.check(st == 200, f"register -> {st} {reg}")
    body = json.dumps({"task_id": reg["task_id"], "peer_id": reg["peer_id"]}).encode()
    head = b"POST /api/v1/pull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    n = 20

    def value(series):
        m = re.search(rf"(?m)^{re.escape(series)} ([0-9.e+]+)$", sn.metrics())
        return int(float(m.group(1))) if m else None

    T.check(value("dfly_supernode_pulls_parked_gone_total") == 0, "parked-gone counter missing or not 0")
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((T.LOCALHOST, sn.port), timeout=5.0)
            s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            socks.append(s)
        T.wait_for(lambda: value("dfly_supernode_pulls_parked") == n, 10.0, what=f"{n} parked pulls")
        # A pull answered (after its 1 s hold) before we close it is not "gone".
        answered = 0
        for s in socks:
            s.setblocking(False)
            try:
                answered += bool(s.recv(1, socket.MSG_PEEK))
            except BlockingIOError:
                pass
            s.close()
    finally:
        for s in socks:
            s.close()
    T.wait_for(lambda: value("dfly_supernode_pulls_parked") == 0, 10.0, what="no parked pull left")
    gone = value("dfly_supernode_pulls_parked_gone_total")
    T.log(f"{n} clients closed while parked: {gone} noticed gone, {answered} answered first")
    T.check(gone == n - answered and gone > 0, f"{gone} pulls counted gone, want {n - answered}")
    T.check(sn.healthy(), "supernode unhealthy after the clients left")


if __name__ == "__main__":
    T.main([test_api_rejects_bad_requests, test_api_oversized_and_slow_bodies, test_parked_pull_client_gone,
            test_supernode_upload_server, test_dfdaemon_upload_server, test_metrics_format, test_dfdaemon_metrics])
