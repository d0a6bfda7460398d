#!/usr/bin/env python3
"""Whole-file verification: --digest and --md5."""

import os

import dflytest as T

SIZE = 9 * T.MiB + 123  # three pieces, the last one short
ZERO256 = "sha256:" + "0" * 64


def setup(env):
    o = env.origin()
    info = o.add_file("d.bin", SIZE)
    sn = env.supernode()
    return o, info, sn


def out_dir(env, name):
    return env.mkdir(name)


def only_file(d, name):
    left = sorted(os.listdir(d))
    T.check(left == ([name] if name else []), f"{d} should hold {name or 'nothing'}: {left}")


@T.timeout(120)
def test_wrong_digest_fails(env):
    o, info, sn = setup(env)
    d = out_dir(env, "wrong")
    out = os.path.join(d, "f.bin")
    r = env.dfget(o.url("d.bin"), out, node=sn.addr, extra=["--digest", ZERO256], timeout=90)
    r.expect_fail("digest")
    only_file(d, None)  # no partial or temporary file left next to the target


@T.timeout(120)
def test_wrong_md5_fails(env):
    o, info, sn = setup(env)
    d = out_dir(env, "wrong")
    out = os.path.join(d, "f.bin")
    r = env.dfget(o.url("d.bin"), out, node=sn.addr, extra=["--md5", "f" * 32], timeout=90)
    r.expect_fail("digest|md5")
    only_file(d, None)


@T.timeout(120)
def test_wrong_digest_back_source_fails(env):
    """Verification also applies when the bytes come straight from the origin."""
    o, info, sn = setup(env)
    d = out_dir(env, "wrong")
    out = os.path.join(d, "f.bin")
    r = env.dfget(o.url("d.bin"), out, node=sn.addr, timeout=90,
                  extra=["--digest", ZERO256, "--pattern", "source"])
    r.expect_fail("digest")
    only_file(d, None)


@T.timeout(120)
def test_wrong_digest_keeps_existing_file(env):
    """A failed download never replaces what is already at the output path."""
    o, info, sn = setup(env)
    d = out_dir(env, "keep")
    out = os.path.join(d, "f.bin")
    with open(out, "wb") as f:
        f.write(b"precious\n")
    r = env.dfget(o.url("d.bin"), out, node=sn.addr, extra=["--digest", ZERO256], timeout=90)
    r.expect_fail("digest", no_output=False)
    with open(out, "rb") as f:
        T.check(f.read() == b"precious\n", "existing output file was modified")
    only_file(d, "f.bin")


@T.timeout(180)
def test_right_digests_succeed(env):
    o, info, sn = setup(env)
    url = o.url("d.bin")
    cases = [("sha256", ["--digest", info.digest("sha256")]),
             ("sha512", ["--digest", info.digest("sha512")]),
             ("md5-digest", ["--digest", info.digest("md5")]),
             ("md5", ["--md5", info.md5])]
    for name, extra in cases:
        d = out_dir(env, name)
        r = env.dfget(url, os.path.join(d, "f.bin"), node=sn.addr, extra=extra, timeout=90)
        try:
            r.expect_ok(info)
        except T.TestFailure as e:
            raise T.TestFailure(f"case {name}: {e}")
        only_file(d, "f.bin")


@T.timeout(240)
def test_seed_hashing_modes(env):
    """The seed's digests are the same whether it hashes on a thread (the
    default) or on its event loop: the whole-file digest it publishes, and its
    check of a registered digest (right and wrong, sha256 and md5)."""
    o = env.origin()
    size = 13 * T.MiB + 7  # 53 pieces of 256 KiB, the last one short
    for threads in ("1", "0"):
        info = o.add_file(f"h{threads}.bin", size)
        url = o.url(f"h{threads}.bin")
        sn = env.supernode(extra=["--hash-threads", threads])
        d = out_dir(env, f"plain{threads}")
        env.dfget(url, os.path.join(d, "f.bin"), node=sn.addr, timeout=90).expect_ok(info)
        st, tasks = sn.api("GET", "/api/v1/tasks")
        T.check(st == 200 and len(tasks["tasks"]) == 1, f"hash-threads {threads}: tasks {tasks}")
        T.check(tasks["tasks"][0].get("digest") == info.digest("sha256"),
                f"hash-threads {threads}: seed digest {tasks['tasks'][0]} != {info.digest('sha256')}")
        T.check(tasks["tasks"][0]["seed_pieces"] == tasks["tasks"][0]["piece_count"] == 53,
                f"hash-threads {threads}: {tasks}")
        for name, extra, ok in (("md5", ["--md5", info.md5], True),
                                ("wrongmd5", ["--md5", "f" * 32], False),
                                ("wrong256", ["--digest", ZERO256], False)):
            d = out_dir(env, f"{name}{threads}")
            r = env.dfget(url, os.path.join(d, "f.bin"), node=sn.addr, extra=extra, timeout=90)
            try:
                r.expect_ok(info) if ok else r.expect_fail("digest|md5")
            except T.TestFailure as e:
                raise T.TestFailure(f"hash-threads {threads}, case {name}: {e}")
            only_file(d, "f.bin" if ok else None)
    for bad in ("2", "", "x"):
        rc, _, err = env.run([T.find_binary("supernode"), "--hash-threads", bad], timeout=10)
        T.check(rc == 2 and "--hash-threads" in err, f"--hash-threads {bad!r}: rc {rc}, {err!r}")


@T.timeout(60)
def test_malformed_digest_rejected(env):
    o = env.origin()
    o.add_file("d.bin", 1024)
    node = f"127.0.0.1:{T.free_port()}"
    for bad in (["--digest", "sha256:xyz"], ["--digest", "crc32:12345678"],
                ["--digest", "sha256:" + "0" * 63], ["--md5", "nothex"], ["--digest", ""]):
        out = env.path("m.bin")
        r = env.dfget(o.url("d.bin"), out, node=node, extra=bad, timeout=20)
        try:
            r.expect_fail()
        except T.TestFailure as e:
            raise T.TestFailure(f"{bad}: {e}")
    T.check(o.bytes_served("/d.bin") == 0, "a malformed digest must be rejected before any download")


if __name__ == "__main__":
    T.main([test_wrong_digest_fails, test_wrong_md5_fails, test_wrong_digest_back_source_fails,
            test_wrong_digest_keeps_existing_file, test_right_digests_succeed,
            test_seed_hashing_modes, test_malformed_digest_rejected])
