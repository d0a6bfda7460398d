#!/usr/bin/env python3
"""--locallimit caps a download's rate, dfdaemon --upload-limit what a host
serves (only lower bounds on time are asserted)."""

import time

import dflytest as T


@T.timeout(150)
def test_locallimit_p2p(env):
    """32 MiB at --locallimit 4M through the swarm (supernode seed) takes >= 7 s."""
    o = env.origin()
    info = o.add_file("r.bin", 32 * T.MiB)
    sn = env.supernode()
    r = env.dfget(o.url("r.bin"), env.path("r.bin"), node=sn.addr,
                  extra=["--locallimit", "4M"], timeout=120)
    r.expect_ok(info)
    T.check(r.json["back_source"] is False, f"should not fall back: {r.describe()}")
    T.check(r.json["bytes_from_origin"] == 0, f"bytes came from the origin: {r.describe()}")
    T.check(r.seconds >= 7.0, f"32 MiB at 4M/s took only {r.seconds:.2f}s")
    T.check(r.json["seconds"] >= 6.5, f"JSON seconds {r.json['seconds']} < wall time")


@T.timeout(120)
def test_locallimit_back_source(env):
    """The limit also applies when downloading straight from the origin."""
    o = env.origin()
    info = o.add_file("s.bin", 16 * T.MiB)
    r = env.dfget(o.url("s.bin"), env.path("s.bin"), node=f"127.0.0.1:{T.free_port()}",
                  extra=["--locallimit", "4M", "--pattern", "source"], timeout=90)
    r.expect_ok(info)
    T.check(r.seconds >= 3.3, f"16 MiB at 4M/s from the origin took only {r.seconds:.2f}s")


@T.timeout(120)
def test_locallimit_units(env):
    """K suffix: 2 MiB at 512K takes >= 3 s."""
    o = env.origin()
    info = o.add_file("k.bin", 2 * T.MiB)
    sn = env.supernode()
    r = env.dfget(o.url("k.bin"), env.path("k.bin"), node=sn.addr,
                  extra=["--locallimit", "512K"], timeout=90)
    r.expect_ok(info)
    T.check(r.seconds >= 3.0, f"2 MiB at 512K/s took only {r.seconds:.2f}s")



def timed_range_gets(port, task_id, ranges, cap):
    """GETs each (first, last) range of /peer/file/<task_id> from port at
    once; returns (seconds until the last one ended, [body])."""
    import http.client
    import threading
    bodies = [None] * len(ranges)

    def get(i, a, b):
        c = http.client.HTTPConnection(T.LOCALHOST, port, timeout=cap)
        try:
            c.request("GET", f"/peer/file/{task_id}", headers={"Range": f"bytes={a}-{b}"})
            r = c.getresponse()
            bodies[i] = (r.status, r.read())
        finally:
            c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=get, args=(i, a, b)) for i, (a, b) in enumerate(ranges)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(cap)
    return time.monotonic() - t0, bodies


@T.timeout(150)
def test_upload_limit_dfdaemon(env):
    """dfdaemon --upload-limit 1M: what it serves to other peers, all
    connections together, goes at no more than 1 MiB/s (lower bounds only)."""
    o = env.origin()
    info = o.add_file("u.bin", 8 * T.MiB)
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--upload-limit", "1M"])
    r = env.dfget(o.url("u.bin"), env.path("u.bin"), node=sn.addr, home=d.home, timeout=90)
    r.expect_ok(info)
    task = r.json["task_id"]
    with open(info.path, "rb") as f:
        want = f.read(4 * T.MiB)

    # one request: 3 MiB at 1 MiB/s (less the bucket's 64 KiB) >= 2.9 s
    secs, bodies = timed_range_gets(d.upload_port, task, [(0, 3 * T.MiB - 1)], 60)
    T.log(f"3 MiB from the upload server in {secs:.2f}s")
    T.check(bodies[0] and bodies[0][0] == 206 and bodies[0][1] == want[:3 * T.MiB],
            f"wrong answer from the upload server: {bodies[0] and bodies[0][0]}")
    T.check(secs >= 2.9, f"3 MiB at --upload-limit 1M took only {secs:.2f}s")

    # two at once share the limit (host-wide, not per connection): 2 x 2 MiB >= 3.9 s
    secs, bodies = timed_range_gets(d.upload_port, task, [(0, 2 * T.MiB - 1), (2 * T.MiB, 4 * T.MiB - 1)], 60)
    T.log(f"2 x 2 MiB at once from the upload server in {secs:.2f}s")
    T.check(all(b and b[0] == 206 for b in bodies), f"wrong answers: {[b and b[0] for b in bodies]}")
    T.check(bodies[0][1] + bodies[1][1] == want, "the two ranges do not give the file's bytes")
    T.check(secs >= 3.9, f"2 x 2 MiB at once at --upload-limit 1M took only {secs:.2f}s")
    T.check(d.proc.alive(), f"dfdaemon died:\n{d.proc.tail()}")


if __name__ == "__main__":
    T.main([test_locallimit_p2p, test_locallimit_back_source, test_locallimit_units,
            test_upload_limit_dfdaemon])
