#!/usr/bin/env python3
"""--locallimit caps a download's rate (only lower bounds on time are asserted)."""

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


if __name__ == "__main__":
    T.main([test_locallimit_p2p, test_locallimit_back_source, test_locallimit_units])
