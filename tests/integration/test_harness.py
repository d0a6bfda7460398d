#!/usr/bin/env python3
"""Self-test of the integration harness (dflytest): nginx origin locations and
access-log accounting, process cleanup, bounded waits.  Needs no dfly binary."""

import os
import signal
import time

import dflytest as T


def test_origin_locations(env):
    o = env.origin(slow_rate="1m")
    f = o.add_file("blob.bin", 3 * T.MiB + 17)

    st, h, body = T.http_request(o.port, "GET", "/blob.bin")
    T.check(st == 200 and len(body) == f.size, f"plain GET -> {st}, {len(body)} bytes")
    T.check(h.get("content-length") == str(f.size), "plain GET has Content-Length")

    st, h, body = T.http_request(o.port, "GET", "/blob.bin", headers={"Range": "bytes=100-199"})
    T.check(st == 206 and body == T.read_range(f.path, 100, 199), f"range GET -> {st}")

    for path, want in (("/missing/blob.bin", 404), ("/denied/blob.bin", 401),
                       ("/auth/blob.bin", 401), ("/nothere.bin", 404)):
        st, _, _ = T.http_request(o.port, "GET", path)
        T.check(st == want, f"GET {path} -> {st}, want {want}")

    st, _, body = T.http_request(o.port, "GET", "/auth/blob.bin",
                                 headers={"Authorization": o.basic_auth()})
    T.check(st == 200 and len(body) == f.size, f"authorized GET -> {st}")

    st, h, body = T.http_request(o.port, "GET", "/chunked/blob.bin")
    T.check(st == 200 and len(body) == f.size, f"chunked GET -> {st} {len(body)}")
    T.check("content-length" not in h and h.get("transfer-encoding") == "chunked",
            f"/chunked/ must not declare a length: {h}")
    T.check(T.file_hash(f.path) == f.sha256, "chunked body intact")

    try:
        st = T.http_request(o.port, "GET", "/drop/blob.bin", timeout=5)[0]
        raise T.TestFailure(f"/drop/ answered {st}")
    except OSError:
        pass  # connection closed without an answer, as intended

    t0 = time.monotonic()
    st, _, body = T.http_request(o.port, "GET", "/slow/blob.bin", timeout=30)
    dt = time.monotonic() - t0
    T.check(st == 200 and len(body) == f.size, f"slow GET -> {st}")
    T.check(dt >= 2.0, f"/slow/ at 1m/s served {f.size} bytes in {dt:.2f}s")

    # accounting: plain (full + 100) + auth full + chunked full + slow full
    T.wait_for(lambda: o.bytes_served(o.url("blob.bin", "slow"), settle=0) == f.size, 5,
               what="slow request in the access log")
    T.check(o.bytes_served("/blob.bin") == f.size + 100, f"log sum {o.bytes_served('/blob.bin')}")
    T.check(sum(r["bytes"] for r in o.requests()
                if r["path"] == "/auth/blob.bin" and r["status"] == 200) == f.size, "auth log sum")
    reqs = o.requests()
    T.check(any(r["range"] == "bytes=100-199" and r["status"] == 206 for r in reqs),
            f"range logged: {reqs}")


def test_procs_cleanup(env):
    # A process ignoring SIGTERM, with a child: both must be gone after stop_all.
    code = ("import os,signal,subprocess,sys,time;signal.signal(signal.SIGTERM,signal.SIG_IGN);"
            "subprocess.Popen([sys.executable,'-c','import time;time.sleep(300)']);time.sleep(300)")
    p = env.procs.start("stubborn", [os.sys.executable, "-c", code])
    T.wait_for(lambda: T.descendants(p.pid), 10, what="child process")
    kids = T.descendants(p.pid)
    t0 = time.monotonic()
    env.procs.stop_all(grace=1.0)
    T.check(time.monotonic() - t0 < 10, "stop_all is bounded")
    T.check(not p.alive(), "stubborn process killed")
    for k in kids:
        T.wait_for(lambda: not os.path.exists(f"/proc/{k}") or
                   open(f"/proc/{k}/stat").read().split(")")[1].split()[0] == "Z",
                   5, what=f"child {k} to die")


def test_missing_binary_fails_fast(env):
    saved = T.BIN_DIR
    T.BIN_DIR = env.mkdir("no-binaries-here")
    try:
        t0 = time.monotonic()
        try:
            env.supernode()
            raise T.TestFailure("supernode started from an empty dir?")
        except T.MissingBinary as e:
            T.check("supernode" in str(e), str(e))
        T.check(time.monotonic() - t0 < 2, "missing binary detected at once")
    finally:
        T.BIN_DIR = saved


def test_exiting_server_fails_fast(env):
    # A "supernode" that exits at once must not make wait_for hang.
    p = env.procs.start("quitter", [os.sys.executable, "-c", "raise SystemExit(3)"])
    t0 = time.monotonic()
    try:
        T.wait_for(lambda: False, 30, what="never", proc=p)
        raise T.TestFailure("wait_for returned")
    except T.TestFailure as e:
        T.check("exited with code 3" in str(e), str(e))
    T.check(time.monotonic() - t0 < 5, "early exit detected quickly")


if __name__ == "__main__":
    T.main([test_origin_locations, test_procs_cleanup, test_missing_binary_fails_fast,
            test_exiting_server_fails_fast])
