#!/usr/bin/env python3
"""The supernode's cache when the origin breaks at a revalidation (docs/DESIGN.md,
"Stale if error"): a complete, verified copy is served when the origin answers
5xx, closes the connection or times out, and a download in progress is never
broken by it; 404 still fails the task, and once the origin is back the copy is
revalidated, not fetched again; an interrupted seed resumes with Range.

The origin is authorigin.py, switched between faults with GET /_mode/<mode>."""

import re
import time

import dflytest as T
from test_faults import AuthOrigin

BOUND = 90.0
FRESH_S = 10.0   # the supernode's freshness window (DF_SN_FRESH_MS)
RETRY_S = 3.0    # a revalidation failure or a task error holds this long (DF_SN_RETRY_MS)
GOOD = "Bearer good-token"


def set_mode(o, mode):
    st, _, body = T.http_request(o.port, "GET", f"/_mode/{mode}", headers={"Authorization": GOOD})
    T.check(st == 200, f"origin /_mode/{mode} -> {st} {body!r}")


def answers(o):
    """Statuses of the origin's /file answers, in order ('closed', 'cut', 'hung' or a number)."""
    out = []
    for line in o.proc.stdout().splitlines():
        p = line.split(" ", 3)
        if len(p) == 4 and p[1] == "/file":
            out.append(int(p[2]) if p[2].isdigit() else p[2])
    return out


def ranges(o):
    return [line.split(" ", 1)[1] for line in o.proc.stdout().splitlines() if line.startswith("range ")]


def metric(sn, series):
    m = re.search(rf"(?m)^{re.escape(series)} ([0-9.e+]+)$", sn.metrics())
    return int(float(m.group(1))) if m else None


def dfget(env, sn, o, name, extra=(), start=False):
    args = dict(node=sn.addr, timeout=BOUND, extra=["--header", f"Authorization: {GOOD}", "--notbs"] + list(extra))
    return (env.start_dfget if start else env.dfget)(o.url, env.path(name), **args)


@T.timeout(180)
def test_revalidation_failure_serves_cache(env):
    """A fetches the file.  P starts downloading it slowly (inside the
    freshness window, no revalidation).  Past the window the origin answers
    503 and B (a fresh home) registers: the revalidation fails, B gets the
    cached copy and P goes on.  Then the origin closes connections (C), then
    hangs past --origin-timeout (D): the same.  Back to normal, E's
    revalidation is answered 304: the file was read from the origin once."""
    info = T.make_random_file(env.path("src.bin"), 4 * T.MiB + 5)
    o = AuthOrigin(env, info, GOOD)
    sn = env.supernode(extra=["--origin-timeout", "2s"])
    dfget(env, sn, o, "a.bin").expect_ok(info)
    t_fetched = time.monotonic()
    # 4 MiB at 256 KiB/s: still running well after the freshness window.
    p = dfget(env, sn, o, "p.bin", extra=["--locallimit", "256K"], start=True)

    time.sleep(max(0.0, t_fetched + FRESH_S + 1.0 - time.monotonic()))
    set_mode(o, "503")
    b = dfget(env, sn, o, "b.bin")
    T.check(p.proc.alive(), "P ended before the revalidation failed: the test proves nothing about it")
    b.expect_ok(info)
    T.check(b.json["bytes_from_origin"] == 0, f"B read the origin: {b.describe()}")
    T.check(answers(o) == [200, 503], f"origin answers: {answers(o)}")
    T.check(metric(sn, 'dfly_supernode_revalidation_failures_total{reason="origin_http"}') == 1,
            "revalidation failure (503) not counted")

    time.sleep(RETRY_S + 0.5)
    set_mode(o, "close")
    dfget(env, sn, o, "c.bin").expect_ok(info)
    T.check(answers(o) == [200, 503, "closed"], f"origin answers: {answers(o)}")
    T.check(metric(sn, 'dfly_supernode_revalidation_failures_total{reason="origin_connect"}') == 1,
            "revalidation failure (connection closed) not counted")

    time.sleep(RETRY_S + 0.5)
    set_mode(o, "hang")
    dfget(env, sn, o, "d.bin").expect_ok(info)
    T.check(metric(sn, 'dfly_supernode_revalidation_failures_total{reason="origin_timeout"}') == 1,
            "revalidation failure (timeout) not counted")

    rp = p.wait()
    rp.expect_ok(info)
    T.check(rp.json["bytes_from_origin"] == 0, f"P read the origin: {rp.describe()}")
    T.log(f"P took {rp.seconds:.1f} s, across three failed revalidations")

    time.sleep(RETRY_S + 0.5)
    set_mode(o, "ok")
    dfget(env, sn, o, "e.bin").expect_ok(info)
    done = answers(o)
    T.log(f"origin answered: {done}")
    T.check(done == [200, 503, "closed", "hung", 304], f"expected one 200, three faults and a 304: {done}")
    log = sn.proc.stdout() + sn.proc.stderr()
    T.check("revalidation failed" in log, "the supernode did not warn about the failed revalidation")
    T.check(sn.healthy(), "supernode unhealthy")


@T.timeout(150)
def test_revalidation_404_fails_then_revalidates(env):
    """An origin that answers a revalidation with 404 deleted the file: the
    task fails with that error (the cache is not served).  When the file is
    back, the next Register revalidates the cached copy (304) instead of
    reading the whole file again."""
    info = T.make_random_file(env.path("src.bin"), 3 * T.MiB + 1)
    o = AuthOrigin(env, info, GOOD)
    sn = env.supernode()
    dfget(env, sn, o, "a.bin").expect_ok(info)
    time.sleep(FRESH_S + 1.0)
    set_mode(o, "404")
    dfget(env, sn, o, "b.bin").expect_fail("404")
    set_mode(o, "ok")
    time.sleep(RETRY_S + 0.5)
    c = dfget(env, sn, o, "c.bin")
    c.expect_ok(info)
    T.check(c.json["bytes_from_origin"] == 0, f"C read the origin: {c.describe()}")
    done = answers(o)
    T.log(f"origin answered: {done}")
    T.check(done == [200, 404, 304], f"expected 200, the 404, then a 304 revalidation: {done}")
    T.check(sn.healthy(), "supernode unhealthy")


@T.timeout(150)
def test_interrupted_seed_resumes_with_range(env):
    """The origin closes the connection half way through the seed's fetch:
    the task fails.  Once the origin is whole again, the next Register
    resumes from the verified prefix (Range + If-Range, 206), not from 0."""
    size = 8 * T.MiB + 3
    info = T.make_random_file(env.path("src.bin"), size)
    o = AuthOrigin(env, info, GOOD)
    sn = env.supernode(extra=["--piece-size", "1M"])
    set_mode(o, "cut")
    dfget(env, sn, o, "a.bin").expect_fail()
    set_mode(o, "ok")
    time.sleep(RETRY_S + 0.5)
    dfget(env, sn, o, "b.bin").expect_ok(info)
    done, rs = answers(o), ranges(o)
    T.log(f"origin answered: {done}, ranges asked: {rs}")
    T.check(done == ["cut", 206], f"expected the cut fetch, then a 206 resume: {done}")
    T.check(len(rs) == 1 and rs[0] != "bytes=0-", f"expected one Range from the verified prefix: {rs}")
    first = int(rs[0][6:-1])
    T.check(0 < first <= size // 2 and first % T.MiB == 0,
            f"resume at byte {first}: expected a piece boundary within the half that was sent")
    origin_bytes = metric(sn, "dfly_supernode_origin_bytes_total")
    T.check(origin_bytes is not None and origin_bytes <= size // 2 + (size - first),
            f"origin bytes {origin_bytes}: more than the cut half plus the resumed rest")


if __name__ == "__main__":
    T.main([test_revalidation_failure_serves_cache, test_revalidation_404_fails_then_revalidates,
            test_interrupted_seed_resumes_with_range])
