#!/usr/bin/env python3
"""Decentralized mode: dfdaemons in gossip mode (no supernode) on loopback,
one nginx origin shaped as in test_swarm.  Every dfget through its own
daemon gets the right bytes, the origin serves the file about once (the
task's owner reads it), most bytes move between peers; and when the owner
is killed mid-transfer the others still finish correctly."""

import hashlib
import re
import signal
import time

import dflytest as T

SIZE = 64 * T.MiB
NO_SUPERNODE = "127.0.0.1:1"  # --node is ignored in gossip mode


def metric(d, name, labels=""):
    st, _, body = T.http_request(d.port, "GET", "/metrics")
    T.check(st == 200, f"/metrics of {d.port} -> {st}")
    pat = re.compile(r"^" + re.escape(name + labels) + r" (\S+)$", re.M)
    m = pat.search(body.decode())
    return float(m.group(1)) if m else None


def gossip_daemon(env, name, join=None, join_host="127.0.0.1", extra=(), more=()):
    """extra, more: further dfdaemon arguments."""
    port = T.free_port()
    argv = ["--mode", "gossip", "--gossip-listen", f"127.0.0.1:{port}", "--gossip-name", name] + list(extra) \
        + list(more)
    if join:
        argv += ["--join", f"{join_host}:{join}"]
    d = env.dfdaemon(NO_SUPERNODE, extra=argv)
    d.gossip_port = port
    return d


# Nodes that join at the same time learn of each other by gossip; one whose
# alive message it missed (a full UDP buffer on a loaded machine) is learned
# at the latest by the next push/pull with a member that knows it, every
# 30 s in memberlist's LAN profile.  So the wait covers one push/pull period
# and some slack, not a guess about how fast gossip usually is.
CONVERGE_S = 45


def wait_alive(daemons, n):
    for d in daemons:
        T.wait_for(lambda d=d: metric(d, "dfly_dfdaemon_gossip_members", '{state="alive"}') == n, CONVERGE_S,
                   what=f"{n} alive members seen by {d.port}", proc=d.proc)


def gossip_cluster(env, n):
    daemons = [gossip_daemon(env, "n0")]
    for i in range(1, n):
        # every other node joins by name (resolved by c-ares, /etc/hosts)
        daemons.append(gossip_daemon(env, f"n{i}", daemons[0].gossip_port,
                                     "localhost" if i % 2 else "127.0.0.1"))
    wait_alive(daemons, n)
    return daemons


def rendezvous_score(task_id, name):
    """tracker_gossip.c's score(task, UINT32_MAX, name): FNV-1a over the
    task id's bytes, the piece number and the name, then a finalizer."""
    m64 = (1 << 64) - 1
    h = 0xcbf29ce484222325
    for b in bytes.fromhex(task_id) + b"\xff\xff\xff\xff" + name.encode():
        h = ((h ^ b) * 0x100000001b3) & m64
    h = ((h ^ (h >> 30)) * 0xbf58476d1ce4e5b9) & m64
    h = ((h ^ (h >> 27)) * 0x94d049bb133111eb) & m64
    return h ^ (h >> 31)


def task_id_of(url):
    return hashlib.sha256(url.encode() + b"\n").hexdigest()


def owner_of(daemons):
    """The daemons that read the task from the origin as its owner (a seed
    download that started but lost ownership before reading reads nothing)."""
    return [i for i, d in enumerate(daemons)
            if (metric(d, "dfly_dfdaemon_gossip_seeds_total") or 0) >= 1
            and (metric(d, "dfly_dfdaemon_download_bytes_total", '{source="origin"}') or 0) > 0]


def check_results(origin, info, url, results, label, owners, origin_max=1.1):
    """owners: indexes in results of daemons that owned the task.  The owner's
    own dfget finds the pieces its daemon's seed download wrote into the
    shared store (counted as bytes from the owner: its seed), so its daemon's
    counters, which counted them as origin bytes, are not compared."""
    for i, r in enumerate(results):
        try:
            if i in owners:
                T.check(r.rc == 0 and r.json and r.json["status"] == "ok", f"owner: {r.describe()}")
                T.check(T.file_hash(r.out) == info.sha256, f"owner output differs: {r.describe()}")
            else:
                r.expect_ok(info)
            # the owner's whole-file digest reached every node
            want = "sha256:" + info.sha256
            T.check(r.json["digest"] == want, f"JSON digest {r.json['digest']!r}, want the owner's {want}")
        except T.TestFailure as e:
            raise T.TestFailure(f"{label} peer {i}: {e}")
    served = origin.bytes_served(url)
    got = sum(r.json["length"] for i, r in enumerate(results) if i not in owners)
    from_peers = sum(r.json["bytes_from_peers"] for r in results)
    T.log(f"{label}: origin served {served} B; peers gave {from_peers} of {got} B fetched over the network; "
          + "; ".join(f"p{i}{'(owner)' if i in owners else ''}: peers={r.json['bytes_from_peers']}"
                      f" owner={r.json['bytes_from_supernode']} origin={r.json['bytes_from_origin']}"
                      f" {r.seconds:.1f}s" for i, r in enumerate(results)))
    T.check(served <= origin_max * info.size,
            f"{label}: origin served {served} bytes of {url}, more than {origin_max} x {info.size}")
    ids = {r.json["task_id"] for r in results}
    T.check(len(ids) == 1, f"{label}: peers disagree on the task id: {ids}")
    return from_peers, got


def run_swarm(env, n):
    o = env.origin(slow_rate="16m")
    info = o.add_file("swarm.bin", SIZE)
    url = o.url("swarm.bin", "slow")
    daemons = gossip_cluster(env, n)
    t0 = time.monotonic()
    runs = [env.start_dfget(url, env.path(f"out{i}.bin"), home=d.home) for i, d in enumerate(daemons)]
    results = [r.wait() for r in runs]
    T.log(f"{n} gossip peers: all done in {time.monotonic() - t0:.1f}s")
    owners = owner_of(daemons)
    T.check(len(owners) == 1, f"daemons that read the origin as owner: {owners} (want exactly one)")
    owner = owners[0]
    from_peers, got = check_results(o, info, url, results, f"gossip swarm of {n}", [owner])
    T.check(from_peers >= 0.5 * got, f"only {from_peers} of {got} bytes came from peers (want >= 50%)")
    od = metric(daemons[owner], "dfly_dfdaemon_download_bytes_total", '{source="origin"}')
    T.check(od == SIZE, f"the owner's daemon read {od} bytes from the origin, want {SIZE}")
    # Every daemon's /metrics tells the sources apart (in gossip mode the
    # seed's bytes are the owner's) and matches what its dfget reported.
    for i, (d, r) in enumerate(zip(daemons, results)):
        for name, labels in [("dfly_dfdaemon_gossip_members", '{state="failed"}'),
                             ("dfly_dfdaemon_gossip_events_total", '{result="dropped"}'),
                             ("dfly_dfdaemon_gossip_sync_total", '{result="sent"}'),
                             ("dfly_dfdaemon_gossip_sync_total", '{result="answered"}'),
                             ("dfly_dfdaemon_gossip_probe_failures_total", ""),
                             ("dfly_dfdaemon_gossip_tasks_owned", "")]:
            T.check(metric(d, name, labels) is not None, f"n{i}: no {name}{labels} on /metrics")
        T.check(metric(d, "dfly_dfdaemon_download_bytes_total", '{source="supernode"}') is None,
                f"n{i}: a supernode byte count in gossip mode")
        if i == owner:
            continue
        for src, key in [("peer", "bytes_from_peers"), ("owner", "bytes_from_supernode"),
                         ("origin", "bytes_from_origin")]:
            v = metric(d, "dfly_dfdaemon_download_bytes_total", f'{{source="{src}"}}')
            T.check(v == r.json[key], f"n{i}: /metrics says {v} bytes from {src}, dfget's {key} says {r.json[key]}")
    sent = [metric(d, "dfly_dfdaemon_gossip_events_total", '{result="sent"}') for d in daemons]
    T.check(all(v and v > 0 for v in sent), f"events sent per daemon: {sent}")
    for d in daemons:
        T.check(d.proc.alive(), f"dfdaemon {d.port} died:\n{d.proc.tail()}")


@T.timeout(120)
def test_gossip_swarm_4(env):
    run_swarm(env, 4)


@T.timeout(240)
def test_gossip_swarm_10(env):
    run_swarm(env, 10)


def run_owner_killed(env, n):
    """The owner dies mid-transfer: the next member in rendezvous order takes
    over from the pieces that exist, the others finish correctly."""
    o = env.origin(slow_rate="8m")
    info = o.add_file("kill.bin", SIZE)
    url = o.url("kill.bin", "slow")
    daemons = gossip_cluster(env, n)
    runs = [env.start_dfget(url, env.path(f"out{i}.bin"), home=d.home) for i, d in enumerate(daemons)]
    owner = None

    def find_owner():
        nonlocal owner
        owners = owner_of(daemons)
        owner = owners[0] if owners else None
        return owner is not None

    T.wait_for(find_owner, 30, what="an owner reading the origin")
    time.sleep(2.5)  # about a third of the file at 8 MiB/s
    T.log(f"killing the owner n{owner}")
    daemons[owner].proc.signal(signal.SIGKILL)
    results = [r.wait() for i, r in enumerate(runs)]
    survivors = [i for i in range(len(daemons)) if i != owner]
    others = [results[i] for i in survivors]
    new_owners = [k for k, i in enumerate(survivors)
                  if (metric(daemons[i], "dfly_dfdaemon_gossip_seeds_total") or 0) >= 1]
    T.log(f"survivors that took over the task: {[survivors[k] for k in new_owners]}")
    T.check(len(new_owners) >= 1, "no survivor took the task over")
    # Correct bytes everywhere; the origin serves more than once here: the
    # new owner reads from its first missing piece to the end, and the dead
    # owner had read about a third (what it read but never passed on is
    # read again).  1.5x catches a second owner reading the whole file.
    check_results(o, info, url, others, "owner killed", new_owners, origin_max=1.5)
    for i in survivors:
        T.check(daemons[i].proc.alive(), f"dfdaemon {daemons[i].port} died:\n{daemons[i].proc.tail()}")


@T.timeout(240)
def test_gossip_late_top_joiner(env):
    """A daemon that ranks first for the task joins mid-transfer and asks
    for it too: the owner stays the one that is reading the origin (no
    second read), and everybody finishes correctly."""
    o = env.origin(slow_rate="8m")
    info = o.add_file("late.bin", SIZE)
    url = o.url("late.bin", "slow")
    tid = task_id_of(url)
    daemons = gossip_cluster(env, 6)
    top = max(rendezvous_score(tid, f"n{i}") for i in range(6))
    # The top of 6 scores is beaten by none of K random names with
    # probability 6 / (K + 6): 0.6 % for K = 1000, 0.012 % for 50000.
    late = next(f"late{k}" for k in range(50000) if rendezvous_score(tid, f"late{k}") > top)
    runs = [env.start_dfget(url, env.path(f"out{i}.bin"), home=d.home) for i, d in enumerate(daemons)]
    T.wait_for(lambda: len(owner_of(daemons)) == 1, 30, what="an owner reading the origin")
    first_owner = owner_of(daemons)[0]
    time.sleep(1)
    T.log(f"n{first_owner} owns the task; {late} (ranked above every member) joins")
    d = gossip_daemon(env, late, daemons[0].gossip_port)
    daemons.append(d)
    wait_alive([d], 7)  # the joiner knows everyone (the others learn of it by gossip)
    runs.append(env.start_dfget(url, env.path("out-late.bin"), home=d.home))
    results = [r.wait() for r in runs]
    T.check(results[0].json and results[0].json["task_id"] == tid, "the test's task id is not the daemons'")
    T.check(owner_of(daemons) == [first_owner], f"daemons that read the origin as owner: {owner_of(daemons)}")
    check_results(o, info, url, results, "late top joiner", [first_owner])


@T.timeout(240)
def test_gossip_owner_killed_10(env):
    run_owner_killed(env, 10)


@T.timeout(180)
def test_gossip_owner_dfget_waits_for_seed(env):
    """The owner's own dfget gets its pieces from its daemon's seed download
    (the shared store), which reads the origin for longer than the engine's
    20 s stall limit here: the pieces the seed writes are progress, so the
    dfget neither falls back nor reads the origin a second time."""
    size = 24 * T.MiB
    o = env.origin(slow_rate="1m")  # 24 s for the file
    info = o.add_file("own.bin", size)
    url = o.url("own.bin", "slow")
    daemons = gossip_cluster(env, 2)
    # the owner is the member ranked first for the task
    tid = task_id_of(url)
    owner = max(range(2), key=lambda i: rendezvous_score(tid, f"n{i}"))
    t0 = time.monotonic()
    r = env.start_dfget(url, env.path("own.bin"), home=daemons[owner].home).wait()
    T.log(f"the owner's dfget took {time.monotonic() - t0:.1f}s: {r.describe()}")
    T.check(r.rc == 0 and r.json and r.json["status"] == "ok", f"owner: {r.describe()}")
    T.check(T.file_hash(r.out) == info.sha256, f"owner output differs: {r.describe()}")
    T.check(owner_of(daemons) == [owner], f"daemons that read the origin as owner: {owner_of(daemons)}")
    T.check(r.seconds > 20, f"the origin read took {r.seconds:.1f}s, not over the 20 s stall limit: "
            "the test proves nothing")
    T.check(r.json["back_source"] is False, f"the owner's dfget fell back to the origin: {r.describe()}")
    # Its bytes came from its daemon's seed: counted as the owner's.
    T.check(r.json["bytes_from_supernode"] == size and r.json["bytes_from_peers"] == 0
            and r.json["bytes_from_origin"] == 0, f"the owner's dfget miscounts its bytes: {r.json}")
    served = o.bytes_served(url)
    T.check(served <= 1.05 * size, f"origin served {served} bytes of a {size}-byte file")



@T.timeout(180)
def test_gossip_slow_holder_endgame(env):
    """A holder whose uploads are throttled (--upload-limit 64K) is preferred
    over the owner, so a requester's last pieces hang on it: its endgame
    abandons them, this host's tracker leaves the holder alone for a while
    (reported "slow"), and the owner serves them.  The file is right and
    nothing is read from the origin again (had the tracker kept offering
    the slow holder, the download would stall and read the origin)."""
    o = env.origin()
    info = o.add_file("slow.bin", 12 * T.MiB + 5)  # 49 pieces of 256 KiB
    url = o.url("slow.bin")
    tid = task_id_of(url)
    top = max(rendezvous_score(tid, n) for n in ("slow", "req"))
    own = next(f"own{k}" for k in range(1000) if rendezvous_score(tid, f"own{k}") > top)
    owner = gossip_daemon(env, own)
    slow = gossip_daemon(env, "slow", owner.gossip_port, more=["--upload-limit", "64K"])
    req = gossip_daemon(env, "req", owner.gossip_port)
    wait_alive([owner, slow, req], 3)
    r = env.dfget(url, env.path("owner.bin"), home=owner.home, timeout=90)
    # the owner's dfget finds the pieces its daemon's seed download wrote: bytes_from_* stay 0
    T.check(r.rc == 0 and r.json and r.json["status"] == "ok", f"owner: {r.describe()}")
    T.check(T.file_hash(r.out) == info.sha256, f"owner output differs: {r.describe()}")
    env.dfget(url, env.path("slow.bin"), home=slow.home, timeout=90).expect_ok(info)
    T.check(owner_of([owner, slow, req]) == [0], f"the owner is not {own}: {owner_of([owner, slow, req])}")

    r = env.dfget(url, env.path("req.bin"), home=req.home, timeout=120)
    r.expect_ok(info)
    T.check(not r.json["back_source"] and r.json["bytes_from_origin"] == 0,
            f"the requester read the origin: {r.describe()}")
    lines = [l for l in req.proc.stderr().splitlines() if "endgame:" in l]
    T.log("endgame: " + " | ".join(lines))
    T.check(lines, "no endgame line although pieces hung on a holder uploading at 64K")
    T.check(all(" from slow has " in l for l in lines), f"an endgame line names another source: {lines}")
    T.check(len(lines) <= 4, f"more than 4 fetches abandoned in one download: {lines}")
    for d in (owner, slow, req):
        T.check(d.proc.alive(), f"dfdaemon {d.port} died:\n{d.proc.tail()}")

if __name__ == "__main__":
    T.main([test_gossip_swarm_4, test_gossip_swarm_10, test_gossip_late_top_joiner, test_gossip_owner_killed_10,
            test_gossip_slow_holder_endgame,
            test_gossip_owner_dfget_waits_for_seed])
