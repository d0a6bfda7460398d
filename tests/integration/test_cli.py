#!/usr/bin/env python3
"""dfget's command line: version/help, usage errors, patterns, output modes,
task identity (--identifier, --filter), --header."""

import hashlib
import os
import signal
import time

import dflytest as T


def dfget_plain(env, args, timeout=20):
    return env.run([T.find_binary("dfget")] + args, timeout=timeout)


@T.timeout(60)
def test_version_and_help(env):
    rc, out, err = dfget_plain(env, ["--version"])
    T.check(rc == 0, f"--version -> {rc}: {err}")
    T.check(any(c.isdigit() for c in out + err) and "." in out + err,
            f"--version prints no version: {out!r} {err!r}")
    rc, out, err = dfget_plain(env, ["--help"])
    T.check(rc == 0, f"--help -> {rc}: {err}")
    text = out + err
    for flag in ("--url", "--output", "--node", "--digest", "--locallimit", "--pattern", "--json"):
        T.check(flag in text, f"--help does not mention {flag}")


@T.timeout(90)
def test_usage_errors(env):
    url = "http://127.0.0.1:1/f.bin"
    out = env.path("never.bin")
    cases = {
        "unknown flag": ["-u", url, "-o", out, "--no-such-flag"],
        "bad rate suffix": ["-u", url, "-o", out, "--locallimit", "4Q"],
        "bad rate number": ["-u", url, "-o", out, "--locallimit", "fast"],
        "bad total rate": ["-u", url, "-o", out, "--totallimit", "-3M"],
        "missing -u": ["-o", out],
        "-u without value": ["-o", out, "-u"],
        "bad pattern": ["-u", url, "-o", out, "--pattern", "torrent"],
        "bad timeout": ["-u", url, "-o", out, "--timeout", "soon"],
        "bad node": ["-u", url, "-o", out, "--node", "127.0.0.1:notaport"],
        "non-http url": ["-u", "ftp://127.0.0.1/f.bin", "-o", out],
        "bad header": ["-u", url, "-o", out, "--header", "no colon here"],
    }
    for name, args in cases.items():
        rc, so, se = dfget_plain(env, args)
        T.check(rc not in (0, None) and rc > 0, f"{name}: exit {rc}, want a non-zero exit")
        if name != "non-http url":
            T.check("usage" in (se + so).lower(), f"{name}: no usage message on stderr: {se!r}")
        T.check(se.strip(), f"{name}: nothing on stderr")
        T.check(not os.path.exists(out), f"{name}: created the output")


@T.timeout(90)
def test_pattern_source(env):
    """--pattern source: straight from the origin, the supernode is not asked."""
    o = env.origin()
    info = o.add_file("s.bin", 6 * T.MiB + 3)
    sn = env.supernode()
    r = env.dfget(o.url("s.bin"), env.path("s.bin"), node=sn.addr,
                  extra=["--pattern", "source"], timeout=60)
    r.expect_ok(info)
    T.check(r.json["bytes_from_origin"] == info.size, f"bytes_from_origin: {r.describe()}")
    T.check(r.json["bytes_from_peers"] == 0 and r.json["bytes_from_supernode"] == 0, r.describe())
    T.check(o.bytes_served("/s.bin") == info.size, f"origin served {o.bytes_served('/s.bin')}")
    st, tasks = sn.api("GET", "/api/v1/tasks")
    T.check(st == 200 and isinstance(tasks, dict) and tasks.get("tasks") == [],
            f"--pattern source registered with the supernode: {tasks}")


@T.timeout(90)
def test_pattern_cdn(env):
    """--pattern cdn: every byte from the supernode, none from peers or the origin."""
    o = env.origin()
    info = o.add_file("c.bin", 9 * T.MiB + 3)
    sn = env.supernode()
    r = env.dfget(o.url("c.bin"), env.path("c.bin"), node=sn.addr,
                  extra=["--pattern", "cdn"], timeout=60)
    r.expect_ok(info)
    T.check(r.json["bytes_from_supernode"] == info.size, f"cdn: {r.describe()}")
    T.check(r.json["back_source"] is False, r.describe())
    T.check(o.bytes_served("/c.bin") <= 1.1 * info.size, "origin hit more than once")


@T.timeout(60)
def test_without_json(env):
    """Without --json: nothing on stdout, a summary line on stderr."""
    o = env.origin()
    info = o.add_file("q.bin", 1 * T.MiB)
    sn = env.supernode()
    r = env.dfget(o.url("q.bin"), env.path("q.bin"), node=sn.addr, json_out=False, timeout=45)
    r.expect_ok(info)
    T.check(r.stdout == "", f"stdout not empty without --json: {r.stdout[:200]!r}")
    T.check(r.stderr.strip(), "no summary line on stderr")


@T.timeout(60)
def test_output_is_directory(env):
    o = env.origin()
    o.add_file("x.bin", 1 * T.MiB)
    sn = env.supernode()
    d = env.mkdir("adir")
    r = env.dfget(o.url("x.bin"), d, node=sn.addr, timeout=45)
    r.expect_fail(no_output=False)
    T.check(os.path.isdir(d) and os.listdir(d) == [], "the directory was changed")


@T.timeout(120)
def test_task_identity(env):
    """Task id = sha256("<url minus filtered keys>\\n<digest|identifier|''>")."""
    o = env.origin()
    info = o.add_file("i.bin", 1 * T.MiB)
    sn = env.supernode()
    url = o.url("i.bin")

    def tid(u, extra=()):
        r = env.dfget(u, env.path(f"i{env.homes}.bin"), node=sn.addr, extra=list(extra),
                      timeout=45)
        r.expect_ok(info)
        return r.json["task_id"]

    plain = tid(url)
    want = hashlib.sha256(f"{url}\n".encode()).hexdigest()
    T.check(plain == want, f"task id {plain}, want sha256(url + '\\n') = {want}")
    T.check(tid(url) == plain, "same url gives a different task id")
    a = tid(url, ["--identifier", "a"])
    b = tid(url, ["--identifier", "b"])
    T.check(len({plain, a, b}) == 3, "--identifier does not change the task id")
    T.check(a == hashlib.sha256(f"{url}\na".encode()).hexdigest(), "identifier task id formula")
    t1 = tid(url + "?token=abc&v=1", ["--filter", "token&sig"])
    t2 = tid(url + "?token=xyz&v=1&sig=q", ["--filter", "token&sig"])
    t3 = tid(url + "?token=xyz&v=2", ["--filter", "token&sig"])
    T.check(t1 == t2, "--filter keys still change the task id")
    T.check(t1 != t3, "non-filtered keys must change the task id")
    d = tid(url, ["--digest", info.digest("sha256")])
    T.check(d == hashlib.sha256(f"{url}\n{info.digest('sha256')}".encode()).hexdigest(),
            "digest task id formula")


@T.timeout(90)
def test_header_reaches_origin(env):
    """--header is used for the origin fetch (here: Basic auth), in p2p and source."""
    o = env.origin()
    info = o.add_file("a.bin", 3 * T.MiB)
    sn = env.supernode()
    hdr = ["--header", f"Authorization: {o.basic_auth()}", "--header", "X-Dfly-Test: 1"]
    r = env.dfget(o.url("a.bin", "auth"), env.path("a1.bin"), node=sn.addr, extra=hdr, timeout=60)
    r.expect_ok(info)
    T.check(r.json["back_source"] is False, f"auth via supernode fell back: {r.describe()}")
    r = env.dfget(o.url("a.bin", "auth"), env.path("a2.bin"), node=sn.addr, timeout=60,
                  extra=hdr + ["--pattern", "source"])
    r.expect_ok(info)




@T.timeout(120)
def test_output_appears_only_verified(env):
    """An in-process dfget writes pieces into a temporary file next to the
    output (unnamed, O_TMPFILE: only its descriptor shows it): the output path
    never exists before the file is verified, the temporary file becomes it by
    a link, and a stopped download leaves nothing behind."""
    o = env.origin()
    info = o.add_file("p.bin", 12 * T.MiB)  # /slow/: 4 MiB/s, about 3 s
    sn = env.supernode()
    d = env.mkdir("partial")
    out = os.path.join(d, "p.bin")

    def temps():
        return [t for t in T.fds_in(run.proc.pid, d) if t.endswith(" (deleted)")]

    run = env.start_dfget(o.url("p.bin", "slow"), out, node=sn.addr, timeout=90)
    T.wait_for(lambda: temps(), 30, what="the temporary file next to the output", proc=run.proc)
    T.check(not os.path.exists(out), "the output exists before the download is verified")
    run.kill(signal.SIGTERM)
    r = run.wait()
    r.expect_fail("cancel|interrupt")
    T.check(os.listdir(d) == [], f"a stopped download left {os.listdir(d)}")

    # Whenever the output path exists while dfget runs (after the link,
    # before the exit), it is the whole file; no other name ever shows.
    sizes, saw_temp, names = [], False, set()
    run = env.start_dfget(o.url("p.bin", "slow"), out, node=sn.addr, timeout=90)
    deadline = time.monotonic() + 90
    while run.proc.alive() and time.monotonic() < deadline:
        saw_temp = saw_temp or bool(temps())
        names.update(os.listdir(d))
        try:
            sizes.append(os.stat(out).st_size)
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    r = run.wait()
    r.expect_ok(info)
    T.check(saw_temp, "no temporary file was seen next to the output")
    T.check(all(n == info.size for n in sizes), f"the output was visible with sizes {set(sizes)}")
    T.check(names <= {"p.bin"}, f"names seen next to the output while downloading: {names}")
    T.check(os.listdir(d) == ["p.bin"], f"left next to the output: {os.listdir(d)}")


if __name__ == "__main__":
    T.main([test_version_and_help, test_usage_errors, test_pattern_source, test_pattern_cdn,
            test_without_json, test_output_is_directory, test_task_identity,
            test_header_reaches_origin, test_output_appears_only_verified])
