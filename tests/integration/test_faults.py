#!/usr/bin/env python3
"""Faults: supernode absent or killed, origin errors, peers dying or lying."""

import json
import os
import signal
import sys
import time

import dflytest as T

BOUND = 60.0  # every dfget must end within this; past it the run is killed and fails


def dead_node():
    return f"{T.LOCALHOST}:{T.free_port()}"  # nothing listens there


@T.timeout(120)
def test_supernode_down_falls_back(env):
    o = env.origin()
    info = o.add_file("f.bin", 5 * T.MiB + 7)
    r = env.dfget(o.url("f.bin"), env.path("out.bin"), node=dead_node(), timeout=BOUND)
    r.expect_ok(info)
    j = r.json
    T.check(j["back_source"] is True, f"back_source should be true: {r.describe()}")
    T.check(j["reason"].strip() != "", f"back-source reason should be given: {r.describe()}")
    T.check(j["bytes_from_origin"] == info.size, f"all bytes from origin: {r.describe()}")
    T.check(r.seconds < 30, f"fallback took {r.seconds:.1f}s")


@T.timeout(120)
def test_supernode_down_notbs_fails(env):
    o = env.origin()
    o.add_file("f.bin", 1 * T.MiB)
    d = env.mkdir("o")
    out = os.path.join(d, "out.bin")
    r = env.dfget(o.url("f.bin"), out, node=dead_node(), extra=["--notbs"], timeout=BOUND)
    r.expect_fail("supernode|node|tracker|connect|refused|unreachable")
    T.check(os.listdir(d) == [], f"leftovers: {os.listdir(d)}")
    T.check(o.bytes_served("/f.bin") == 0, "--notbs must not touch the origin")


def origin_error_case(env, loc, code):
    o = env.origin()
    o.add_file("f.bin", 2 * T.MiB)
    sn = env.supernode()
    url = o.url("f.bin", loc)
    runs = [env.start_dfget(url, env.path(f"{loc}-{i}.bin"), node=sn.addr, timeout=BOUND)
            for i in range(3)]
    for i, run in enumerate(runs):
        r = run.wait()
        try:
            r.expect_fail(str(code))
        except T.TestFailure as e:
            raise T.TestFailure(f"peer {i} for origin {code}: {e}")
    T.check(sn.healthy(), "supernode unhealthy after origin errors")


@T.timeout(150)
def test_origin_404(env):
    origin_error_case(env, "missing", 404)


@T.timeout(150)
def test_origin_401(env):
    origin_error_case(env, "denied", 401)


@T.timeout(150)
def test_origin_auth_required(env):
    origin_error_case(env, "auth", 401)


@T.timeout(150)
def test_origin_drops_connection(env):
    o = env.origin()
    o.add_file("f.bin", 1 * T.MiB)
    sn = env.supernode()
    runs = [env.start_dfget(o.url("f.bin", "drop"), env.path(f"d{i}.bin"), node=sn.addr,
                            timeout=BOUND) for i in range(3)]
    for i, run in enumerate(runs):
        try:
            run.wait().expect_fail()
        except T.TestFailure as e:
            raise T.TestFailure(f"peer {i}: {e}")
    T.check(sn.healthy(), "supernode unhealthy")


@T.timeout(90)
def test_timeout_on_stalled_origin(env):
    """--timeout bounds the whole download even when the origin trickles."""
    o = env.origin(crawl_rate="1k")
    o.add_file("f.bin", 512 * T.KiB)
    sn = env.supernode()
    r = env.dfget(o.url("f.bin", "crawl"), env.path("t.bin"), node=sn.addr,
                  extra=["--timeout", "5s"], timeout=45)
    r.expect_fail()
    T.check(r.seconds < 30, f"--timeout 5s but dfget ran {r.seconds:.1f}s")


@T.timeout(150)
def test_origin_without_length(env):
    """A chunked origin (no Content-Length) still gives every peer a correct file."""
    o = env.origin()
    info = o.add_file("c.bin", 10 * T.MiB + 5)
    sn = env.supernode()
    runs = [env.start_dfget(o.url("c.bin", "chunked"), env.path(f"c{i}.bin"), node=sn.addr,
                            timeout=120) for i in range(3)]
    for i, run in enumerate(runs):
        try:
            run.wait().expect_ok(info)
        except T.TestFailure as e:
            raise T.TestFailure(f"peer {i}: {e}")


@T.timeout(200)
def test_supernode_killed_mid_swarm(env):
    o = env.origin(slow_rate="4m")
    info = o.add_file("s.bin", 24 * T.MiB)
    sn = env.supernode()
    url = o.url("s.bin", "slow")  # the seed alone takes ~6 s
    runs = [env.start_dfget(url, env.path(f"s{i}.bin"), node=sn.addr, timeout=150)
            for i in range(5)]
    time.sleep(2.0)
    T.check(all(r.proc.alive() for r in runs), "peers finished before the kill: too fast")
    sn.kill(signal.SIGKILL)
    for i, run in enumerate(runs):
        try:
            run.wait().expect_ok(info)
        except T.TestFailure as e:
            raise T.TestFailure(f"peer {i} after supernode SIGKILL: {e}")


@T.timeout(200)
def test_supernode_stopped_mid_seed(env):
    """SIGTERM while the seed streams (pieces waiting for or on the hash
    thread): a clean exit, then a new supernode on the same cache resumes the
    seed from the verified prefix and serves the right file."""
    o = env.origin(slow_rate="16m")
    info = o.add_file("m.bin", 64 * T.MiB)

    def seeded(sn):
        st, tasks = sn.api("GET", "/api/v1/tasks")
        return st == 200 and tasks["tasks"] and tasks["tasks"][0]["seed_pieces"] >= 2

    def stop(sn, what):
        sn.proc.signal(signal.SIGTERM)
        rc = sn.proc.wait(30.0)
        T.check(rc == 0, f"supernode stopped {what}: exit {rc}")

    # A fast origin: the hash thread is most likely behind the stream when
    # the signal comes (the sanitizer builds check that teardown).
    fast = env.supernode()
    run = env.start_dfget(o.url("m.bin"), env.path("m0.bin"), node=fast.addr, timeout=150)
    T.wait_for(lambda: seeded(fast), 60, what="the seed's first pieces")
    stop(fast, "mid-seed, fast origin")
    run.wait().expect_ok(info)

    url = o.url("m.bin", "slow")  # the seed alone takes ~4 s
    sn = env.supernode()
    run = env.start_dfget(url, env.path("m1.bin"), node=sn.addr, timeout=150)
    T.wait_for(lambda: seeded(sn), 60, what="the seed's first pieces")
    stop(sn, "mid-seed")
    run.wait().expect_ok(info)  # the peer goes on from the origin
    sn2 = env.supernode(port=sn.port)  # same data directory
    env.dfget(url, env.path("m2.bin"), node=sn2.addr, timeout=120).expect_ok(info)
    log = sn2.proc.stderr()
    T.check("resuming at byte" in log, f"the new supernode did not resume the seed:\n{log[-2000:]}")
    st, tasks = sn2.api("GET", "/api/v1/tasks")
    T.check(tasks["tasks"][0].get("digest") == info.digest("sha256"), f"resumed seed: {tasks}")


@T.timeout(200)
def test_peer_killed_mid_swarm(env):
    o = env.origin(slow_rate="4m")
    info = o.add_file("p.bin", 24 * T.MiB)
    sn = env.supernode()
    url = o.url("p.bin", "slow")
    runs = [env.start_dfget(url, env.path(f"p{i}.bin"), node=sn.addr, timeout=150)
            for i in range(6)]
    time.sleep(2.5)
    T.check(runs[0].proc.alive(), "peer 0 finished before the kill: too fast")
    runs[0].kill(signal.SIGKILL)
    for i, run in enumerate(runs[1:], 1):
        try:
            run.wait().expect_ok(info)
        except T.TestFailure as e:
            raise T.TestFailure(f"peer {i} after peer 0 was killed: {e}")
    T.check(sn.healthy(), "supernode unhealthy")


@T.timeout(200)
def test_corrupting_peer(env):
    """A registered peer claims every piece and serves flipped bytes.  The
    downloader must detect it, not use it again, and still produce the file."""
    o = env.origin()
    info = o.add_file("e.bin", 64 * T.MiB)
    # 16 pieces of 4 MiB, as the bound below counts them (by length alone
    # a 64 MiB file is cut into 64 pieces of 1 MiB).
    sn = env.supernode(extra=["--piece-size", "4M"])
    url = o.url("e.bin")
    state = env.path("evil.state")
    reqlog = env.path("evil.requests")
    open(reqlog, "w").close()
    evil = env.procs.start("evilpeer", [sys.executable, os.path.join(T.HERE, "evilpeer.py"),
                                        str(sn.port), url, info.path, state, reqlog])
    st = T.wait_for(lambda: os.path.exists(state) and json.load(open(state)), 90,
                    what="evil peer to claim the pieces", proc=evil)
    T.check("error" not in st, f"evil peer could not join: {st}")
    T.check(st.get("state") == "done", f"evil peer not done: {st}")

    r = env.dfget(url, env.path("good.bin"), node=sn.addr, timeout=120)
    r.expect_ok(info)

    reqs = [json.loads(l) for l in open(reqlog) if l.strip()]
    T.log(f"evil peer served {len(reqs)} requests: {[q['range'] for q in reqs]}")
    pieces = info.size // (4 * T.MiB)
    T.check(len(reqs) >= 1, "the supernode never scheduled the (claiming) evil peer, although "
                            "peers holding a piece are preferred over the seed")
    ranges = [q["range"] for q in reqs]
    T.check(len(set(ranges)) == len(ranges), f"a piece was fetched twice from the bad peer: {ranges}")
    T.check(len(reqs) <= pieces // 2,
            f"the bad peer kept being used after serving bad bytes: {len(reqs)} requests")
    # The only other source is the seed: the flipped bytes must not count as received.
    T.check(r.json["bytes_from_peers"] == 0,
            f"bytes from the bad peer were counted as received: {r.describe()}")
    T.check(sn.healthy(), "supernode unhealthy after the corrupting peer")
    st, task = sn.api("GET", f"/api/v1/tasks/{r.json['task_id']}")
    T.check(st == 200 and isinstance(task, dict), f"task detail -> {st}")
    T.log(f"task after the bad peer: peers={list(((task.get('pieces') or {}).get('peers') or {}))}")
    names = ("digest", "bad", "corrupt", "error")
    seen = [l for l in sn.metrics().splitlines()
            if l and not l.startswith("#") and any(w in l.split(" ")[0] for w in names)]
    T.log("supernode error-ish metrics: " + ("; ".join(seen) if seen else "(none exposed)"))


def sn_post(sn, path, body):
    st, _, data = sn.request("POST", path, body=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"}, timeout=30.0)
    try:
        return st, json.loads(data.decode() or "null")
    except ValueError:
        return st, None


SLOW_SLOTS = 2  # the slow peer's uploads: at most this many pieces hang on it


def slow_peer_swarm(env):
    """An origin with a file of 13 pieces of 1 MiB, a supernode, and a peer
    (evilpeer.py slow) that holds every piece and serves the right bytes
    at 16 KiB/s per request.  Returns (info, url, sn, peer state, request
    log path, peer process)."""
    o = env.origin()
    info = o.add_file("s.bin", 12 * T.MiB + 5)
    sn = env.supernode(extra=["--piece-size", "1m", "--peer-upload-slots", str(SLOW_SLOTS)])
    url = o.url("s.bin")
    state = env.path("slow.state")
    reqlog = env.path("slow.requests")
    open(reqlog, "w").close()
    slow = env.procs.start("slowpeer", [sys.executable, os.path.join(T.HERE, "evilpeer.py"),
                                        str(sn.port), url, info.path, state, reqlog, "slow"])
    st = T.wait_for(lambda: os.path.exists(state) and json.load(open(state)), 90,
                    what="slow peer to claim the pieces", proc=slow)
    T.check("error" not in st, f"slow peer could not join: {st}")
    T.check(st.get("state") == "done", f"slow peer not done: {st}")
    return info, url, sn, st, reqlog, slow


def check_slow_peer_download(r, info, st, reqlog):
    """The download r came out right, P2P, after abandoning fetches from the
    slow peer (described by st) in its endgame."""
    r.expect_ok(info)
    j = r.json
    T.check(not j["back_source"] and j["bytes_from_origin"] == 0,
            f"the download went to the origin instead of finishing P2P: {r.describe()}")
    reqs = [json.loads(l) for l in open(reqlog) if l.strip()]
    T.log(f"slow peer got {len(reqs)} requests: {[q['range'] for q in reqs]}")
    T.check(len(reqs) >= 1, "the supernode never scheduled the slow peer, although peers holding a "
                            "piece are preferred over the seed")
    # Its upload slots hold: pieces being hashed still count as assigned.
    T.check(max(q["concurrent"] for q in reqs) <= SLOW_SLOTS,
            f"the slow peer served more than its {SLOW_SLOTS} slots at once: {reqs}")
    lines = [l for l in r.stderr.splitlines() if "endgame:" in l]
    T.log("endgame: " + " | ".join(lines))
    T.check(lines, f"no endgame line although pieces hung on a 16 KiB/s peer: {r.describe()}")
    T.check(all(st["peer_id"] in l and "asking again" in l for l in lines),
            f"an endgame line names another source than the slow peer: {lines}")
    T.check(len(lines) <= 4, f"more than 4 fetches abandoned in one download: {lines}")
    # Bytes counted once: the abandoned partial pieces are not counted.
    T.check(j["bytes_from_peers"] + j["bytes_from_supernode"] == info.size,
            f"bytes from peers and supernode do not add up to the file: {r.describe()}")
    return lines


def sources_for_another_requester(sn, url):
    """The source ids the supernode assigns to a new requester of url (at
    most 8 pieces)."""
    st, reg = sn_post(sn, "/api/v1/register", {"url": url, "pattern": "p2p",
                                               "peer": {"ip": T.LOCALHOST, "port": T.free_port(),
                                                        "hostname": "other"}})
    T.check(st == 200 and isinstance(reg, dict) and "peer_id" in reg, f"register -> {st} {reg}")
    st, ans = sn_post(sn, "/api/v1/pull", {"task_id": reg["task_id"], "peer_id": reg["peer_id"],
                                           "results": [], "running": 0, "want": 8})
    T.check(st == 200 and isinstance(ans, dict) and ans.get("state") == "assign",
            f"pull of another requester -> {st} {ans}")
    srcs = [((p.get("src") or {}).get("id") or "") for p in ans.get("pieces", [])]
    T.log(f"another requester is assigned sources {srcs}")
    return srcs


@T.timeout(200)
def test_slow_peer_endgame(env):
    """A registered peer holds every piece and serves the right bytes, but
    crawls (16 KiB/s per request).  The requester's endgame abandons what it
    fetches from it, asks again (the seed serves), and the file is right; the
    peer is reported "slow", not as an error, and the supernode still
    schedules it for everybody else."""
    info, url, sn, st, reqlog, slow = slow_peer_swarm(env)
    r = env.dfget(url, env.path("good.bin"), node=sn.addr, extra=["--log-level", "info"], timeout=150)
    check_slow_peer_download(r, info, st, reqlog)

    # The supernode heard "slow", not an error, and says so in its log.
    T.wait_for(lambda: "reports slow for piece" in sn.proc.stderr() + sn.proc.stdout(), 10,
               what="the supernode to log the slow report", proc=sn.proc)
    metrics = sn.metrics()
    slow_reports = [l for l in metrics.splitlines() if l.startswith("dfly_supernode_slow_reports_total")]
    T.check(slow_reports and float(slow_reports[0].split()[-1]) >= 1,
            f"no slow report counted: {slow_reports}")
    io = [l for l in metrics.splitlines()
          if l.startswith("dfly_supernode_errors_total") and "report_" in l and float(l.split()[-1]) > 0]
    T.check(not io, f"the slow peer was reported as an error: {io}")

    T.check(st["peer_id"] in sources_for_another_requester(sn, url),
            "the slow peer is not offered to another requester")
    T.check(slow.alive(), "slow peer died")
    T.check(sn.healthy(), "supernode unhealthy")


@T.timeout(200)
def test_throttled_daemon_endgame(env):
    """The slow peer is a real dfdaemon whose uploads are throttled
    (--upload-limit 64K for the whole host): the requester's endgame
    abandons what it fetches from it, the file is right, and the daemon,
    reported slow, is still offered to others and keeps running."""
    o = env.origin()
    info = o.add_file("t.bin", 12 * T.MiB + 5)  # 13 pieces of 1 MiB
    sn = env.supernode(extra=["--piece-size", "1m", "--peer-upload-slots", str(SLOW_SLOTS)])
    url = o.url("t.bin")
    d = env.dfdaemon(sn.addr, extra=["--upload-limit", "64K"])
    env.dfget(url, env.path("daemon.bin"), node=sn.addr, home=d.home, timeout=90).expect_ok(info)
    me = f"{T.LOCALHOST}-{d.upload_port}"  # the daemon's peer id ends so

    r = env.dfget(url, env.path("good.bin"), node=sn.addr, extra=["--log-level", "info"], timeout=150)
    r.expect_ok(info)
    j = r.json
    T.check(not j["back_source"] and j["bytes_from_origin"] == 0,
            f"the download went to the origin instead of finishing P2P: {r.describe()}")
    lines = [l for l in r.stderr.splitlines() if "endgame:" in l]
    T.log("endgame: " + " | ".join(lines))
    T.check(lines, f"no endgame line although pieces hung on a daemon uploading at 64K: {r.describe()}")
    T.check(all(f"{me} has" in l for l in lines), f"an endgame line names another source: {lines}")
    T.check(len(lines) <= SLOW_SLOTS, f"more fetches abandoned than the daemon had slots: {lines}")
    T.check(j["bytes_from_peers"] + j["bytes_from_supernode"] == info.size,
            f"bytes from peers and supernode do not add up to the file: {r.describe()}")
    T.check(any(src.endswith(me) for src in sources_for_another_requester(sn, url)),
            "the throttled daemon is not offered to another requester")
    T.check(d.proc.alive(), f"dfdaemon died:\n{d.proc.tail()}")
    T.check(sn.healthy(), "supernode unhealthy")


class OlderSupernode:
    """A front for a supernode that answers ReportError "slow" 400, as a
    supernode that predates that kind does, and passes every other request
    on.  Runs on a thread of the test; records each ReportError body."""

    def __init__(self, sn):
        import http.client
        import http.server
        import threading
        self.reports, lock = [], threading.Lock()
        outer = self

        class Front(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def relay(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if self.path == "/api/v1/error" and body:
                    rep = json.loads(body)
                    with lock:
                        outer.reports.append(rep)
                    if rep.get("kind") == "slow":
                        self.answer(400, b'{"error":"bad_request","message":"kind must be digest, missing or io"}')
                        return
                c = http.client.HTTPConnection(T.LOCALHOST, sn.port, timeout=60)
                try:
                    c.request(self.command, self.path, body=body,
                              headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
                    res = c.getresponse()
                    self.answer(res.status, res.read())
                finally:
                    c.close()

            def answer(self, code, data):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = relay

        self.srv = http.server.ThreadingHTTPServer((T.LOCALHOST, 0), Front)
        self.srv.daemon_threads = True
        self.addr = f"{T.LOCALHOST}:{self.srv.server_address[1]}"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(10)


@T.timeout(200)
def test_slow_report_to_older_supernode(env):
    """A supernode that predates ReportError "slow" refuses it (400): the
    requester then reports the same source and piece as "io", which such a
    supernode understands, and the download still completes P2P."""
    info, url, sn, st, reqlog, slow = slow_peer_swarm(env)
    front = OlderSupernode(sn)
    try:
        r = env.dfget(url, env.path("good.bin"), node=front.addr, extra=["--log-level", "info"],
                      timeout=150)
        lines = check_slow_peer_download(r, info, st, reqlog)
        # A slow source offered again after its report is reported again
        # (the report may have been lost), so there may be more reports
        # than abandoned fetches; each slow one refused is followed by io.
        T.wait_for(lambda: sum(1 for q in front.reports if q.get("kind") == "io") >=
                   max(len(lines), sum(1 for q in front.reports if q.get("kind") == "slow")), 10,
                   what="an io report for every slow one refused")
        reports = list(front.reports)
    finally:
        front.close()
    T.log(f"reports: {[(q.get('kind'), q.get('piece')) for q in reports]}")
    slow_ones = [(q["src"], q["piece"]) for q in reports if q.get("kind") == "slow"]
    io_ones = [(q["src"], q["piece"]) for q in reports if q.get("kind") == "io"]
    T.check(len(slow_ones) >= len(lines), f"{len(lines)} fetches abandoned, {len(slow_ones)} slow reports")
    T.check({p for _, p in slow_ones} >= {int(l.split(" piece ")[1].split()[0]) for l in lines},
            f"an abandoned piece was not reported slow: {slow_ones} vs {lines}")
    T.check(sorted(slow_ones) == sorted(io_ones),
            f"each refused slow report must be followed by an io report: {slow_ones} vs {io_ones}")
    T.check(all(src == st["peer_id"] for src, _ in io_ones), f"a report names another source: {io_ones}")
    io = [l for l in sn.metrics().splitlines()
          if l.startswith('dfly_supernode_errors_total{kind="report_io"}')]
    T.check(io and float(io[0].split()[-1]) == len(io_ones), f"the supernode did not count the io reports: {io}")


@T.timeout(120)
def test_disk_full_while_fetching_pieces(env):
    """The piece store cannot write (a full disk, simulated by an LD_PRELOAD
    shim on pwrite): the download fails with the disk's error, promptly and
    cleanly (under ASan: no use of the freed fetch)."""
    import shutil
    import subprocess
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise T.Skip("no C compiler for the pwrite shim")
    shim = env.path("enospc.so")
    subprocess.run([cc, "-shared", "-fPIC", "-o", shim, os.path.join(T.HERE, "shims", "enospc.c"),
                    "-ldl"], check=True)
    o = env.origin()
    info = o.add_file("full.bin", 8 * T.MiB)
    sn = env.supernode()
    out = env.path("full.out")
    e = dict(os.environ, LD_PRELOAD=shim, DF_FAULT_PWRITE_FROM=str(1 * T.MiB),
             ASAN_OPTIONS=(os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0").lstrip(":"))
    argv = env.dfget_argv(o.url("full.bin"), out, node=sn.addr, extra=["--notbs"])
    p = env.procs.start("dfget", argv, env=e)
    rc = p.wait(BOUND)
    T.check(rc is not None, "dfget did not end with a full disk")
    T.check(rc != 0, f"dfget succeeded with a full disk: {p.stdout()[-500:]}")
    T.check(not os.path.exists(out), "an output appeared")
    T.check("No space left" in p.stdout() + p.stderr(),
            f"the disk's error is not reported: {p.stdout()[-500:]} {p.stderr()[-1500:]}")

@T.timeout(150)
def test_dfget_killed_leaves_nothing(env):
    """A dfget killed with SIGKILL in the middle of a download (slowed by
    --locallimit), by P2P and from the origin (--pattern source), leaves no
    file next to its output, hidden or not: the file it writes has no name
    until it is complete and verified.  A second run then downloads."""
    o = env.origin()
    info = o.add_file("k.bin", 8 * T.MiB + 3)
    sn = env.supernode()
    for case, extra in (("p2p", []), ("source", ["--pattern", "source"])):
        d = env.mkdir(f"out-{case}")
        out = os.path.join(d, "k.bin")
        run = env.start_dfget(o.url("k.bin"), out, node=sn.addr, timeout=BOUND,
                              extra=["--locallimit", "1M"] + extra)
        T.wait_for(lambda: T.fds_in(run.proc.pid, d), 20.0, what=f"{case}: dfget writing next to its output",
                   proc=run.proc)
        time.sleep(1.0)
        T.check(run.proc.alive(), f"{case}: dfget ended before it could be killed")
        T.log(f"{case}: dfget writes {T.fds_in(run.proc.pid, d)}")
        run.kill(signal.SIGKILL)
        r = run.wait()
        T.check(r.rc == -signal.SIGKILL, f"{case}: dfget was not killed: {r.describe()}")
        T.check(os.listdir(d) == [], f"{case}: left next to the output after SIGKILL: {os.listdir(d)}")
        env.dfget(o.url("k.bin"), out, node=sn.addr, timeout=BOUND, extra=extra).expect_ok(info)
        T.check(os.listdir(d) == ["k.bin"], f"{case}: next to the output after a download: {os.listdir(d)}")


class AuthOrigin:
    """authorigin.py serving one file to one Authorization value."""

    def __init__(self, env, info, good, rate=0):
        self.port = T.free_port()
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "authorigin.py")
        self.proc = env.procs.start("authorigin", [sys.executable, script, str(self.port), info.path, good]
                                    + ([str(rate)] if rate else []))
        T.wait_for(lambda: T.port_open(self.port), 15.0, what="auth origin", proc=self.proc)
        self.url = f"http://{T.LOCALHOST}:{self.port}/file"

    def log(self):
        """[(status, authorization)] of the answered requests, and the
        authorizations of the requests that arrived."""
        done, arrived = [], []
        for line in self.proc.stdout().splitlines():
            p = line.split(" ", 3)
            if p[0] == "arrived" and len(p) >= 2:
                arrived.append(line.split(" ", 1)[1])
            elif len(p) == 4 and p[2].isdigit():
                done.append((int(p[2]), p[3]))
        return done, arrived


@T.timeout(120)
def test_origin_refusal_per_registrant(env):
    """The seed revalidates (past the 10 s freshness window) with the
    headers of the Register that asked; an origin's 401 is an answer for
    that registrant only.  B registers with a refused token (the origin
    takes 2 s to say so) and C, with a good one, registers meanwhile: the
    refused request is repeated with C's headers (304), B fails with the
    401, C gets the file from the cache, the origin sends no body again."""
    info = T.make_random_file(env.path("src.bin"), 3 * T.MiB + 11)
    good = "Bearer good-token"
    o = AuthOrigin(env, info, good)
    sn = env.supernode()
    a = env.dfget(o.url, env.path("a.bin"), node=sn.addr, extra=["--header", f"Authorization: {good}"],
                  timeout=BOUND)
    a.expect_ok(info)
    T.check(o.log()[0] == [(200, good)], f"origin log after the first fetch: {o.log()}")

    time.sleep(11.0)  # past the supernode's freshness window
    b = env.start_dfget(o.url, env.path("b.bin"), node=sn.addr, timeout=BOUND,
                        extra=["--header", "Authorization: Bearer slow-expired"])
    T.wait_for(lambda: "Bearer slow-expired" in o.log()[1], 20.0, what="the revalidation with B's token")
    c = env.start_dfget(o.url, env.path("c.bin"), node=sn.addr, timeout=BOUND,
                        extra=["--header", f"Authorization: {good}"])
    rb, rc = b.wait(), c.wait()
    rb.expect_fail("401")
    rc.expect_ok(info)
    T.check(rc.json["bytes_from_origin"] == 0, f"C read the origin itself: {rc.describe()}")
    done = o.log()[0]
    T.log(f"origin answered: {done}")
    # The origin logs an answer when its handler ends: B's refusal (2 s late)
    # and C's 304 may be logged in either order on a loaded machine.
    T.check(done[0] == (200, good) and sorted(done[1:]) == sorted([(401, "Bearer slow-expired"), (304, good)]),
            f"expected B's revalidation refused and C's answered 304, no body sent again: {done}")
    T.check(sn.healthy(), "supernode unhealthy")


if __name__ == "__main__":
    T.main([test_supernode_down_falls_back, test_supernode_down_notbs_fails, test_origin_404,
            test_origin_401, test_origin_auth_required, test_origin_drops_connection,
            test_timeout_on_stalled_origin, test_origin_without_length,
            test_supernode_killed_mid_swarm, test_supernode_stopped_mid_seed,
            test_peer_killed_mid_swarm, test_corrupting_peer,
            test_slow_peer_endgame, test_throttled_daemon_endgame, test_slow_report_to_older_supernode,
            test_disk_full_while_fetching_pieces, test_origin_refusal_per_registrant,
            test_dfget_killed_leaves_nothing])
