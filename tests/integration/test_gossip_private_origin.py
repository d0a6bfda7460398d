#!/usr/bin/env python3
"""Decentralized mode with a private origin (authorigin.py: a bearer token
or 401).  The task's owner reads the origin with the headers of a request
for the task: its own, or those a member handed it (POST /peer/seed, sealed
with the cluster key).  Every node checks its own headers against the
origin before it takes bytes from P2P.  Without a key and without
--gossip-forward-headers, headers stay on their node: it reads the origin
itself and says why."""

import base64
import os
import time

import dflytest as T
from test_faults import AuthOrigin
from test_gossip_swarm import gossip_daemon, metric, rendezvous_score, task_id_of, wait_alive

GOOD = "Bearer good-token"
BOUND = 60.0


def cluster(env, n, extra):
    daemons = [gossip_daemon(env, "n0", extra=extra)]
    for i in range(1, n):
        daemons.append(gossip_daemon(env, f"n{i}", daemons[0].gossip_port, extra=extra))
    wait_alive(daemons, n)
    return daemons


def owner_index(url, n):
    tid = task_id_of(url)
    return max(range(n), key=lambda i: rendezvous_score(tid, f"n{i}"))


def gets(o):
    """The Authorization of each GET the origin answered 200 (each sends
    the whole file; HEADs are access checks and send no body)."""
    out = []
    for line in o.proc.stdout().splitlines():
        p = line.split(" ", 3)
        if len(p) == 4 and p[0] == "GET" and p[2] == "200":
            out.append(p[3])
    return out


@T.timeout(120)
def test_gossip_private_origin_encrypted(env):
    """4 nodes with --encrypt.  The three non-owners fetch with the token;
    the owner has no request of its own, so its seed can only read the
    origin with the headers a member handed it.  The origin sends the file
    once.  Then the owner's own dfget takes the file from its store, and
    requests with a wrong token or none get the origin's 401 and no
    file.  Then another file, fetched by all four at once: once again."""
    info = T.make_random_file(env.path("src.bin"), 6 * T.MiB + 5)
    o = AuthOrigin(env, info, GOOD)
    key = base64.b64encode(os.urandom(32)).decode()
    daemons = cluster(env, 4, ["--encrypt", key])
    own = owner_index(o.url, 4)
    others = [i for i in range(4) if i != own]
    T.log(f"owner n{own}")
    runs = {i: env.start_dfget(o.url, env.path(f"out{i}.bin"), home=daemons[i].home, timeout=BOUND,
                               extra=["--header", f"Authorization: {GOOD}"]) for i in others}
    results = {i: r.wait() for i, r in runs.items()}
    for i, r in results.items():
        r.expect_ok(info)
        T.log(f"n{i}: {r.json}")
        T.check(r.json["back_source"] is False, f"n{i} fell back to the origin: {r.describe()}")
    done = o.log()[0]
    T.check(gets(o) == [GOOD], f"the origin should have sent the file once, to the token: {done}")
    T.check(sum(1 for st, _ in done if st == 401) == 0, f"a request without the token reached the origin: {done}")
    od = metric(daemons[own], "dfly_dfdaemon_download_bytes_total", '{source="origin"}')
    T.check(od == info.size, f"the owner's seed read {od} bytes from the origin, want {info.size}")
    T.check("handed us 1 origin header line(s)" in daemons[own].proc.stderr(),
            "the owner does not say it was handed the headers")
    T.check(GOOD not in daemons[own].proc.stderr() and all(GOOD not in daemons[i].proc.stderr() for i in others),
            "a daemon logged the token")

    # The owner's own dfget, with the token: the file is in its store
    # already (a cache hit: nothing moved, so every bytes_from_* is 0).
    r = env.dfget(o.url, env.path("own.bin"), home=daemons[own].home, timeout=BOUND,
                  extra=["--header", f"Authorization: {GOOD}"])
    T.check(r.rc == 0 and r.json and r.json["status"] == "ok", f"owner: {r.describe()}")
    T.check(T.file_hash(r.out) == info.sha256, f"owner output differs: {r.describe()}")
    T.check(r.json["bytes_from_peers"] + r.json["bytes_from_supernode"] + r.json["bytes_from_origin"] == 0,
            f"the owner's cache hit counts transferred bytes: {r.json}")

    # Refused: a wrong token on a non-owner and on the owner, and no token.
    bad = [(others[0], ["--header", "Authorization: Bearer wrong"]), (own, ["--header", "Authorization: Bearer no"]),
           (others[1], [])]
    for k, (i, extra) in enumerate(bad):
        r = env.dfget(o.url, env.path(f"bad{k}.bin"), home=daemons[i].home, timeout=BOUND, extra=extra)
        r.expect_fail("401")
    T.check(gets(o) == [GOOD], f"the origin sent the file again: {o.log()[0]}")

    # The route refuses what a member did not seal, and other methods.
    plain = {"v": 1, "to": f"n{own}", "from": "x", "url": o.url, "task_id": task_id_of(o.url),
             "ts": int(time.time() * 1000), "headers": ["Authorization: Bearer stolen"]}
    up = daemons[own].upload_port
    for body in (plain, os.urandom(200)):
        st, _, text = T.http_request(up, "POST", "/peer/seed", body)
        T.check(st == 403 and b"stolen" not in text, f"POST /peer/seed of an unsealed body: {st} {text!r}")
    st, _, _ = T.http_request(up, "GET", "/peer/seed")
    T.check(st == 405, f"GET /peer/seed: {st}")
    T.check("stolen" not in daemons[own].proc.stderr(), "the owner logged a refused header value")

    # Every node at once, the owner too: its seed has its own request's
    # headers, and its dfget counts the seed's bytes as the owner's.
    info2 = T.make_random_file(env.path("src2.bin"), 5 * T.MiB + 3)
    o2 = AuthOrigin(env, info2, GOOD)
    own2 = owner_index(o2.url, 4)
    runs = [env.start_dfget(o2.url, env.path(f"all{i}.bin"), home=d.home, timeout=BOUND,
                            extra=["--header", f"Authorization: {GOOD}"]) for i, d in enumerate(daemons)]
    for i, run in enumerate(runs):
        # the owner's seed, started by the others' wants, may have the whole
        # file in its store before the owner's own dfget asks: then that
        # dfget moved no byte (all bytes_from_* 0)
        r = run.wait().expect_ok(info2, cached_ok=i == own2)
        T.check(r.json["back_source"] is False, f"n{i} fell back to the origin: {r.describe()}")
        if i == own2:
            T.check(r.json["bytes_from_supernode"] in (info2.size, 0), f"the owner's dfget: {r.json}")
    T.check(gets(o2) == [GOOD], f"all at once: the origin should have sent the file once: {o2.log()[0]}")

    # An origin without HEAD: access cannot be checked, so the node reads
    # the origin itself (and says why) rather than failing.
    r = env.dfget(o2.url.replace("/file", "/nohead"), env.path("nohead.bin"), home=daemons[others[0]].home,
                  timeout=BOUND, extra=["--header", f"Authorization: {GOOD}"])
    r.expect_ok(info2)
    T.check(r.json["back_source"] is True and "HEAD" in r.json["reason"], f"no HEAD at the origin: {r.json}")
    for d in daemons:
        T.check(d.proc.alive(), f"dfdaemon {d.port} died:\n{d.proc.tail()}")


@T.timeout(120)
def test_gossip_private_origin_no_key(env):
    """3 nodes, no key, no opt-in: headers are not handed to the owner, so
    each non-owner reads the origin itself with its token (the owner, with
    no request of its own, could not), and its daemon logs why.  Then with
    --gossip-forward-headers on every node the headers go in clear and
    the origin sends the file once."""
    info = T.make_random_file(env.path("src.bin"), 3 * T.MiB + 1)
    o = AuthOrigin(env, info, GOOD)
    daemons = cluster(env, 3, [])
    own = owner_index(o.url, 3)
    others = [i for i in range(3) if i != own]
    runs = {i: env.start_dfget(o.url, env.path(f"out{i}.bin"), home=daemons[i].home, timeout=BOUND,
                               extra=["--header", f"Authorization: {GOOD}"]) for i in others}
    for i, run in runs.items():
        r = run.wait()
        r.expect_ok(info)
        T.check(r.json["back_source"] is True and r.json["bytes_from_origin"] == info.size,
                f"n{i} should have read the origin itself: {r.json}")
        T.check("--gossip-forward-headers" in r.json["reason"], f"n{i}: the reason does not say why: {r.json}")
        T.check("no encryption key" in daemons[i].proc.stderr(), f"n{i}'s daemon does not log why")
    T.check(gets(o) == [GOOD] * len(others), f"origin log: {o.log()[0]}")
    plain = {"v": 1, "to": f"n{own}", "from": "x", "url": o.url, "task_id": task_id_of(o.url),
             "ts": int(time.time() * 1000), "headers": ["Authorization: Bearer x"]}
    st, _, text = T.http_request(daemons[own].upload_port, "POST", "/peer/seed", plain)
    T.check(st == 403, f"a node without key or opt-in took headers in clear: {st} {text!r}")

    # Opt-in: the same with --gossip-forward-headers, a fresh cluster and file.
    info2 = T.make_random_file(env.path("src2.bin"), 3 * T.MiB + 7)
    o2 = AuthOrigin(env, info2, GOOD)
    daemons2 = cluster(env, 3, ["--gossip-forward-headers"])
    own2 = owner_index(o2.url, 3)
    runs = [env.start_dfget(o2.url, env.path(f"opt{i}.bin"), home=daemons2[i].home, timeout=BOUND,
                            extra=["--header", f"Authorization: {GOOD}"]) for i in range(3) if i != own2]
    for run in runs:
        run.wait().expect_ok(info2)
    T.check(gets(o2) == [GOOD], f"with the opt-in the origin should send the file once: {o2.log()[0]}")
    for d in daemons + daemons2:
        T.check(d.proc.alive(), f"dfdaemon {d.port} died:\n{d.proc.tail()}")


@T.timeout(120)
def test_gossip_private_origin_takeover(env):
    """The owner dies mid-read and the member ranked next, which has no
    request of its own, takes the task over: the participants hand it
    their headers too, so its seed reads the private origin with the
    token, and the participants finish correctly."""
    size = 8 * T.MiB
    info = T.make_random_file(env.path("src.bin"), size + 3)
    o = AuthOrigin(env, info, GOOD, rate=2 * T.MiB)  # 4 s for the file
    key = base64.b64encode(os.urandom(16)).decode()
    daemons = cluster(env, 4, ["--encrypt", key])
    tid = task_id_of(o.url)
    rank = sorted(range(4), key=lambda i: rendezvous_score(tid, f"n{i}"), reverse=True)
    first, second, parts = rank[0], rank[1], rank[2:]
    T.log(f"owner n{first}, next n{second}, participants {parts}")
    runs = {i: env.start_dfget(o.url, env.path(f"out{i}.bin"), home=daemons[i].home, timeout=BOUND,
                               extra=["--header", f"Authorization: {GOOD}"]) for i in parts}
    T.wait_for(lambda: (metric(daemons[first], "dfly_dfdaemon_download_bytes_total", '{source="origin"}') or 0)
               >= 2 * T.MiB, 30, what="the owner reading the origin", proc=daemons[first].proc)
    daemons[first].proc.signal(9)
    for i, run in runs.items():
        r = run.wait().expect_ok(info)
        T.log(f"n{i}: {r.json}")
    od = metric(daemons[second], "dfly_dfdaemon_download_bytes_total", '{source="origin"}') or 0
    T.check(od > 0, f"the member ranked next read nothing from the origin: {od}")
    T.check("handed us 1 origin header line(s)" in daemons[second].proc.stderr(),
            "the new owner was not handed the headers")
    T.check(set(gets(o)) == {GOOD} and len(gets(o)) <= 3, f"origin GETs: {o.log()[0]}")
    for i in [second] + parts:
        T.check(daemons[i].proc.alive(), f"dfdaemon {daemons[i].port} died:\n{daemons[i].proc.tail()}")


if __name__ == "__main__":
    T.main([test_gossip_private_origin_encrypted, test_gossip_private_origin_no_key,
            test_gossip_private_origin_takeover])
