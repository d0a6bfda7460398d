#!/usr/bin/python3
"""Gossip: our node (lib/gossip through tests/tools/gossip_driver, the same
gossip_node + gossip_io that dfdaemon --mode gossip runs) against real
`serf agent`s (Debian's Serf 0.9.4), N of each on 127.0.0.1 with distinct
ports, both with memberlist's LAN defaults (probe 1 s / 500 ms, gossip 200 ms
to 3 nodes, suspicion mult 4 (max x6), retransmit mult 4, push/pull 30 s).
Both clusters run at the same time and rounds alternate (ours, serf; then
serf, ours) so the machine's noise falls on both.

  event:   a user event sent from node 0; the time until every other node
           has it.  Ours: the "t" (wall clock) of each driver's JSON line.
           Serf: `-coalesce=false` event over RPC, each agent streams user
           events over its RPC connection; arrival time in this process.
  failure: SIGKILL of one node; the time until every survivor marks it
           failed.  Ours: the member-failed line's "t".  Serf: each agent
           polled over RPC (members-filtered Status=failed) every 50 ms (its
           member-failed events are coalesced by the agent: 1-3 s late).
  cpu/rss: at the largest N: utime+stime from /proc/PID/stat per node over
           an idle window and over a burst of user events; VmRSS per node.

Medians over rounds (spread = min..max), ratios ours/serf from this run.
Needs python3-msgpack (Debian) for Serf's RPC; run with /usr/bin/python3.

    bench/gossip_vs_serf.sh BUILD_DIR [--ns "10 30"] [--rounds 5] [--event-rounds K]
"""

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROCS = []  # every process started, stopped by PID at exit


def start(argv, out, err):
    with open(out, "wb") as o, open(err, "wb") as e:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e, start_new_session=True)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in PROCS:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def free_port():
    """A port free for TCP and UDP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def wait_until(pred, timeout, what, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = pred()
        if r:
            return r
        time.sleep(step)
    raise RuntimeError(f"timed out ({timeout:.0f} s): {what}")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Cluster:
    """N nodes in self.nodes, each {"name", "port", "proc", ...}."""

    def pids(self, alive_only=True):
        return [n["proc"].pid for n in self.nodes if not alive_only or n["proc"].poll() is None]

    def kill(self, i):
        t0 = time.time()
        self.nodes[i]["proc"].send_signal(signal.SIGKILL)
        self.nodes[i]["proc"].wait(5)
        return t0


# ------------------------------------------------------------------- ours


class Ours(Cluster):
    label = "ours"

    def __init__(self, n, work, driver):
        self.nodes = []
        for i in range(n):
            port = free_port()
            ctl = os.path.join(work, f"d{i}.ctl")
            os.mkfifo(ctl)
            argv = [driver, "--name", f"d{i}", "--bind", f"127.0.0.1:{port}", "--control", ctl]
            if i > 0:
                argv += ["--join", f"127.0.0.1:{self.nodes[0]['port']}"]
            out = os.path.join(work, f"d{i}.out")
            p = start(argv, out, os.path.join(work, f"d{i}.err"))
            node = {"name": f"d{i}", "port": port, "proc": p, "out": out, "off": 0, "ev": [], "ctl": ctl}
            self.nodes.append(node)
            wait_until(lambda: any(e.get("ev") == "ready" for e in self.read(node)), 10, f"driver d{i} ready")

    def read(self, node):
        """New JSON lines of a node's stdout, appended to node['ev']."""
        with open(node["out"]) as f:
            f.seek(node["off"])
            data = f.read()
        end = data.rfind("\n") + 1
        node["off"] += len(data[:end].encode())
        for line in data[:end].splitlines():
            try:
                node["ev"].append(json.loads(line))
            except ValueError:
                pass
        return node["ev"]

    def converged(self):
        n = len(self.nodes)
        for node in self.nodes:
            seen = {e["name"] for e in self.read(node) if e.get("ev") == "member-join"}
            if len(seen - {node["name"]}) < n - 1:
                return False
        return True

    def send_event(self, name):
        fd = os.open(self.nodes[0]["ctl"], os.O_WRONLY | os.O_NONBLOCK)
        try:
            t0 = time.time()
            os.write(fd, f"event {name} x\n".encode())
        finally:
            os.close(fd)
        return t0

    def event_times(self, name, idx):
        out = {}
        for i in idx:
            for e in self.read(self.nodes[i]):
                if e.get("ev") == "user" and e.get("name") == name:
                    out[i] = e["t"]
                    break
        return out

    def failed_times(self, victim, idx):
        out = {}
        name = self.nodes[victim]["name"]
        for i in idx:
            for e in self.read(self.nodes[i]):
                if e.get("ev") == "member-failed" and e.get("name") == name:
                    out[i] = e["t"]
                    break
        return out


# ------------------------------------------------------------------- serf


class Rpc:
    """Serf's msgpack RPC (handshake, then header [+ body] per message)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.unp = msgpack.Unpacker(raw=False)
        self.seq = 0
        self.call("handshake", {"Version": 1})

    def send(self, cmd, body=None):
        self.seq += 1
        data = msgpack.packb({"Command": cmd, "Seq": self.seq}, use_bin_type=True)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=True)
        self.sock.sendall(data)
        return self.seq

    def next_obj(self):
        while True:
            for obj in self.unp:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("serf RPC closed")
            self.unp.feed(data)

    def call(self, cmd, body=None, has_body=False):
        seq = self.send(cmd, body)
        hdr = self.next_obj()
        if hdr.get("Seq") != seq or hdr.get("Error"):
            raise RuntimeError(f"serf RPC {cmd}: {hdr}")
        return self.next_obj() if has_body else None


class Serf(Cluster):
    label = "serf"

    def __init__(self, n, work, serf):
        self.nodes = []
        self.lock = threading.Lock()
        for i in range(n):
            port, rpc = free_port(), free_port()
            argv = [serf, "agent", f"-node=s{i}", f"-bind=127.0.0.1:{port}", f"-rpc-addr=127.0.0.1:{rpc}",
                    "-log-level=warn"]
            if i > 0:
                argv.append(f"-join=127.0.0.1:{self.nodes[0]['port']}")
            p = start(argv, os.path.join(work, f"s{i}.out"), os.path.join(work, f"s{i}.err"))
            node = {"name": f"s{i}", "port": port, "rpc": rpc, "proc": p, "user": {}}
            self.nodes.append(node)
            # -join fails (and the agent exits) unless node 0 is up: wait for each, like the drivers.
            node["ctl"] = wait_until(lambda: self.connect(rpc), 20, f"serf s{i} RPC")
        for node in self.nodes:
            node["stream"] = self.connect(node["rpc"])
            node["stream"].call("stream", {"Type": "user"})
            node["stream"].sock.setblocking(False)
        self.stop = False
        self.thread = threading.Thread(target=self.pump, daemon=True)
        self.thread.start()

    @staticmethod
    def connect(port):
        try:
            return Rpc(port)
        except OSError:
            return None

    def pump(self):
        """Timestamps user events as they arrive on the stream connections."""
        sel = selectors.DefaultSelector()
        for node in self.nodes:
            sel.register(node["stream"].sock, selectors.EVENT_READ, node)
        while not self.stop:
            for key, _ in sel.select(0.2):
                node = key.data
                try:
                    data = node["stream"].sock.recv(65536)
                except (BlockingIOError, OSError):
                    continue
                t = time.time()
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                node["stream"].unp.feed(data)
                for obj in node["stream"].unp:
                    if isinstance(obj, dict) and obj.get("Event") == "user":
                        with self.lock:
                            node["user"].setdefault(obj["Name"], t)

    def converged(self):
        n = len(self.nodes)
        for node in self.nodes:
            m = node["ctl"].call("members-filtered", {"Tags": {}, "Status": "alive", "Name": ""}, has_body=True)
            if len(m["Members"]) < n:
                return False
        return True

    def send_event(self, name):
        t0 = time.time()
        self.nodes[0]["ctl"].call("event", {"Name": name, "Payload": b"x", "Coalesce": False})
        return t0

    def event_times(self, name, idx):
        with self.lock:
            return {i: self.nodes[i]["user"][name] for i in idx if name in self.nodes[i]["user"]}

    def failed_times(self, victim, idx):
        """One poll of every survivor not yet marked; the caller loops."""
        self.failed = getattr(self, "failed", {})
        name = self.nodes[victim]["name"]
        for i in idx:
            if (victim, i) in self.failed:
                continue
            m = self.nodes[i]["ctl"].call("members-filtered", {"Tags": {}, "Status": "failed", "Name": name},
                                          has_body=True)
            if m["Members"]:
                self.failed[(victim, i)] = time.time()
        return {i: self.failed[(victim, i)] for i in idx if (victim, i) in self.failed}


# ----------------------------------------------------------------- rounds


def measure_event(c, name, limit=30.0):
    idx = [i for i in range(1, len(c.nodes)) if c.nodes[i]["proc"].poll() is None]
    t0 = c.send_event(name)
    got = wait_until(lambda: (lambda d: d if len(d) == len(idx) else None)(c.event_times(name, idx)), limit,
                     f"{c.label}: event {name} everywhere", step=0.02)
    return max(got.values()) - t0


def measure_failure(c, victim, limit=90.0):
    idx = [i for i in range(len(c.nodes)) if i != victim and c.nodes[i]["proc"].poll() is None]
    t0 = c.kill(victim)
    got = wait_until(lambda: (lambda d: d if len(d) == len(idx) else None)(c.failed_times(victim, idx)), limit,
                     f"{c.label}: {c.nodes[victim]['name']} failed everywhere", step=0.05)
    return max(got.values()) - t0


def cpu_window(pids, seconds, during=None):
    """CPU ms per second over a window: per node (median, min, max) and all nodes' sum.  /proc
    counts in clock ticks (10 ms): the sum is the finer figure."""
    before = {p: cpu_ticks(p) for p in pids}
    t0 = time.monotonic()
    if during:
        during()
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    dt = time.monotonic() - t0
    per = [(cpu_ticks(p) - before[p]) * 1000.0 / CLK_TCK / dt for p in pids]
    return statistics.median(per), min(per), max(per), sum(per)


def fmt(vals, unit="s"):
    return f"{statistics.median(vals):.3f} {unit} ({min(vals):.3f}..{max(vals):.3f}, n={len(vals)})"


def ratio(a, b):
    return statistics.median(a) / statistics.median(b) if statistics.median(b) else float("nan")


def run_n(n, rounds, args, work, results, resources):
    ours = Ours(n, os.path.join(work, f"ours{n}"), args.driver)
    serf = Serf(n, os.path.join(work, f"serf{n}"), args.serf)
    for c in (ours, serf):
        t0 = time.monotonic()
        wait_until(c.converged, 120, f"{c.label}: {n} members everywhere", step=0.25)
        print(f"N={n} {c.label}: converged {time.monotonic() - t0:.1f} s after the last start", flush=True)
    time.sleep(3)
    ev = {"ours": [], "serf": []}
    for r in range(args.event_rounds):
        for c in ((ours, serf) if r % 2 == 0 else (serf, ours)):
            ev[c.label].append(measure_event(c, f"bench{n}-{r}"))
            time.sleep(0.5)
    if resources is not None:
        # Both idle at once: the same window for both.
        idle = {}
        before = {c.label: {p: cpu_ticks(p) for p in c.pids()} for c in (ours, serf)}
        t0 = time.monotonic()
        time.sleep(args.idle)
        dt = time.monotonic() - t0
        for c in (ours, serf):
            per = [(cpu_ticks(p) - t) * 1000.0 / CLK_TCK / dt for p, t in before[c.label].items()]
            idle[c.label] = (statistics.median(per), min(per), max(per), sum(per))
        burst = {}
        for c in (ours, serf):
            def send(c=c):
                for k in range(args.burst):
                    c.send_event(f"burst{n}-{k}")
                    time.sleep(0.2)
            burst[c.label] = cpu_window(c.pids(), args.burst * 0.2 + 3.0, during=send)
        rss = {c.label: [rss_kib(p) for p in c.pids()] for c in (ours, serf)}
        resources.update(idle=idle, burst=burst, rss=rss)
    fail = {"ours": [], "serf": []}
    for r in range(rounds):
        victim = n - 1 - r
        for c in ((ours, serf) if r % 2 == 0 else (serf, ours)):
            fail[c.label].append(measure_failure(c, victim))
    serf.stop = True
    for p in ours.pids() + serf.pids():
        os.kill(p, signal.SIGKILL)
    results[n] = (ev, fail)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--serf", default=shutil.which("serf"))
    ap.add_argument("--ns", default="10 30")
    ap.add_argument("--rounds", type=int, default=5, help="failure rounds (one node killed each)")
    ap.add_argument("--event-rounds", type=int, help="event rounds (default: --rounds)")
    ap.add_argument("--idle", type=float, default=20.0, help="idle CPU window, seconds")
    ap.add_argument("--burst", type=int, default=25, help="user events in the CPU burst (5 per second)")
    args = ap.parse_args()
    if args.event_rounds is None:
        args.event_rounds = args.rounds
    if not args.serf:
        sys.exit("serf not installed (apt-get install serf)")
    ns = [int(x) for x in args.ns.split()]
    work = tempfile.mkdtemp(prefix="dfly-gossip-bench.")
    results, resources = {}, {}
    try:
        for n in ns:
            os.makedirs(os.path.join(work, f"ours{n}"))
            os.makedirs(os.path.join(work, f"serf{n}"))
            run_n(n, args.rounds, args, work, results, resources if n == max(ns) else None)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print()
    for n, (ev, fail) in results.items():
        print(f"N={n}  event to all:   ours {fmt(ev['ours'])}   serf {fmt(ev['serf'])}   "
              f"ratio {ratio(ev['ours'], ev['serf']):.2f}")
        print(f"N={n}  events that took over 2 s to reach all: ours {sum(x > 2 for x in ev['ours'])} "
              f"serf {sum(x > 2 for x in ev['serf'])} of {len(ev['ours'])}")
        if fail["ours"]:
            print(f"N={n}  failure seen:   ours {fmt(fail['ours'])}   serf {fmt(fail['serf'])}   "
                  f"ratio {ratio(fail['ours'], fail['serf']):.2f}")
        print(f"N={n}  raw event ours {[round(x, 3) for x in ev['ours']]} serf {[round(x, 3) for x in ev['serf']]}")
        print(f"N={n}  raw fail  ours {[round(x, 2) for x in fail['ours']]} serf {[round(x, 2) for x in fail['serf']]}")
    if resources:
        n = max(ns)
        for kind in ("idle", "burst"):
            o, s = resources[kind]["ours"], resources[kind]["serf"]
            print(f"N={n}  CPU {kind:5s} ms/s per node: ours {o[0]:.2f} ({o[1]:.2f}..{o[2]:.2f})   "
                  f"serf {s[0]:.2f} ({s[1]:.2f}..{s[2]:.2f})   ratio {o[0] / s[0] if s[0] else float('nan'):.2f};  "
                  f"all {n} nodes: ours {o[3]:.1f} serf {s[3]:.1f} ms/s, ratio {o[3] / s[3] if s[3] else float('nan'):.2f}")
        o, s = resources["rss"]["ours"], resources["rss"]["serf"]
        print(f"N={n}  RSS per node: ours {statistics.median(o) / 1024:.1f} MiB ({min(o) / 1024:.1f}.."
              f"{max(o) / 1024:.1f})   serf {statistics.median(s) / 1024:.1f} MiB ({min(s) / 1024:.1f}.."
              f"{max(s) / 1024:.1f})   ratio {statistics.median(o) / statistics.median(s):.2f}")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
