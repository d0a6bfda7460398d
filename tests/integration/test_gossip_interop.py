#!/usr/bin/env python3
"""Gossip interop: lib/gossip's node (run by tests/tools/gossip_driver on real
UDP/TCP sockets) in a cluster with a real Debian `serf agent` (Serf 0.9.4,
memberlist 0.2.2), following shared/specs/serf-wire.md section 6:

  - the driver joins the agent (and the agent joins the driver): `serf
    members` lists it alive with its tags and protocol range [2, 5];
  - `serf event` reaches the driver; the driver's event reaches the agent's
    event handler; a `serf query` gets the driver's ack and response, and the
    driver's query is acked by the agent;
  - a graceful stop (SIGTERM) shows "left"; a restart under the same name
    refutes its old state; SIGKILL is marked "failed" by the agent;
  - all of it again with -encrypt (AES-GCM keyring).
Skipped when `serf` is not installed (scripts/install-deps.sh installs it)."""

import json
import os
import shutil
import signal
import subprocess
import time

import dflytest as T

SERF = shutil.which("serf")


def driver_bin():
    path = os.path.join(T.BIN_DIR, "tests", "gossip_driver")
    if not os.access(path, os.X_OK):
        raise T.MissingBinary(f"{path} not built")
    return path


def serf_cli(env, *args, timeout=15.0):
    r = subprocess.run([SERF, *args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


class Agent:
    def __init__(self, env, name, key=None, join=None):
        self.env, self.name = env, name
        self.port, self.rpc = T.free_port(), T.free_port()
        self.handler_log = env.path(f"{name}-handler.log")
        handler = env.path(f"{name}-handler.sh")
        with open(handler, "w") as f:
            f.write("#!/bin/sh\n"
                    f"{{ echo \"EVENT=$SERF_EVENT USER=$SERF_USER_EVENT LTIME=$SERF_USER_LTIME\"; cat; echo; }}"
                    f" >> {self.handler_log}\n")
        os.chmod(handler, 0o755)
        argv = [SERF, "agent", f"-node={name}", f"-bind=127.0.0.1:{self.port}",
                f"-rpc-addr=127.0.0.1:{self.rpc}", "-tag", "role=web", "-log-level=debug",
                f"-event-handler={handler}"]
        if key:
            argv.append(f"-encrypt={key}")
        if join:
            argv.append(f"-join={join}")
        self.proc = env.procs.start(f"serf-{name}", argv)
        T.wait_for(lambda: T.port_open(self.rpc), 15.0, what=f"serf agent {name} RPC", proc=self.proc)

    def rpc_addr(self):
        return f"-rpc-addr=127.0.0.1:{self.rpc}"

    def members(self):
        rc, out = serf_cli(self.env, "members", self.rpc_addr(), "-format=json")
        T.check(rc == 0, f"serf members failed: {out}")
        return {m["name"]: m for m in json.loads(out)["members"]}

    def log(self):
        return self.proc.stdout() + self.proc.stderr()

    def handler(self):
        try:
            with open(self.handler_log) as f:
                return f.read()
        except OSError:
            return ""


class Driver:
    def __init__(self, env, name="cnode", key=None, join=None, port=None):
        self.env, self.name = env, name
        self.port = port or T.free_port()
        self.ctl = env.path(f"{name}-{self.port}.ctl")
        if not os.path.exists(self.ctl):
            os.mkfifo(self.ctl)
        argv = [driver_bin(), "--name", name, "--bind", f"127.0.0.1:{self.port}", "--tag", "role=c",
                "--tag", "lang=c", "--control", self.ctl, "--query-reply", f"hello-from-{name}"]
        if key:
            argv += ["--encrypt", key]
        if join:
            argv += ["--join", join]
        self.proc = env.procs.start(name, argv)
        T.wait_for(lambda: self.events("ready"), 10.0, what="driver ready", proc=self.proc)

    def events(self, kind=None):
        out = []
        for line in self.proc.stdout().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if kind is None or e.get("ev") == kind:
                out.append(e)
        return out

    def command(self, line):
        fd = os.open(self.ctl, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def wait_status(agent, name, status, timeout, what=None):
    t0 = time.monotonic()
    T.wait_for(lambda: agent.members().get(name, {}).get("status") == status, timeout, interval=0.25,
               what=what or f"{name} {status} in `serf members`", proc=agent.proc)
    return time.monotonic() - t0


def scenario(env, key=None):
    a = Agent(env, "a", key=key)
    c = Driver(env, key=key, join=f"127.0.0.1:{a.port}")

    # Join: the agent lists the driver alive with its tags and protocol range.
    dt = wait_status(a, "cnode", "alive", 10.0)
    m = a.members()["cnode"]
    T.check(m["tags"] == {"role": "c", "lang": "c"}, f"tags seen by serf: {m}")
    T.check(m["port"] == c.port and m["addr"].startswith("127.0.0.1"), f"address seen by serf: {m}")
    T.check(m["protocol"]["version"] == 5 and m["protocol"]["min"] == 2 and m["protocol"]["max"] == 5,
            f"protocol seen by serf: {m}")
    T.wait_for(lambda: any(e["name"] == "a" for e in c.events("member-join")), 5.0, what="driver sees a",
               proc=c.proc)
    T.log(f"driver listed alive by serf {dt:.2f}s after start")

    # serf event -> driver (coalescing is an agent-side delivery detail).
    rc, out = serf_cli(env, "event", a.rpc_addr(), "deploy", "v42")
    T.check(rc == 0, out)
    rc, out = serf_cli(env, "event", a.rpc_addr(), "-coalesce=false", "restart", "now")
    T.check(rc == 0, out)
    T.wait_for(lambda: {(e["name"], e["payload"]) for e in c.events("user")} >= {("deploy", "v42"),
                                                                                   ("restart", "now")},
               5.0, what="serf events at the driver", proc=c.proc)

    # driver event -> agent's event handler.
    c.command("event fromc hello-from-cnode")
    T.wait_for(lambda: "USER=fromc" in a.handler() and "hello-from-cnode" in a.handler(), 10.0,
               what="driver event in the agent's handler", proc=a.proc)

    # serf query -> driver answers (ack + response).
    rc, out = serf_cli(env, "query", a.rpc_addr(), "-node=cnode", "-timeout=3s", "whoami", "hi")
    T.check(rc == 0 and "Ack from 'cnode'" in out and "Response from 'cnode': hello-from-cnode" in out,
            f"serf query output:\n{out}")
    # driver query -> agent acks it.
    c.command("query ping-q x")
    T.wait_for(lambda: any(e["name"] == "a" for e in c.events("query-ack")), 10.0, what="agent's query ack",
               proc=c.proc)

    # Graceful stop: left.
    c.proc.signal(signal.SIGTERM)
    T.check(c.proc.wait(15.0) == 0, "driver did not exit 0 after SIGTERM")
    dt = wait_status(a, "cnode", "left", 10.0)
    T.log(f"graceful stop: 'left' {dt:.2f}s after the driver exited")

    # Restart at the same address; this time the agent joins the driver.
    c2 = Driver(env, key=key, port=c.port)
    rc, out = serf_cli(env, "join", a.rpc_addr(), f"127.0.0.1:{c2.port}")
    T.check(rc == 0, f"serf join to the driver: {out}")
    wait_status(a, "cnode", "alive", 10.0, what="restarted driver alive again")

    # Crash: failed.
    c2.proc.signal(signal.SIGKILL)
    c2.proc.wait(5.0)
    dt = wait_status(a, "cnode", "failed", 30.0)
    T.log(f"SIGKILL: 'failed' {dt:.2f}s after the kill (2-node cluster: suspicion 4 s)")
    T.check("Marking cnode as failed" in a.log(), "agent log lacks the failure")


@T.timeout(150)
def test_interop_plain(env):
    if not SERF:
        raise T.Skip("serf not installed (scripts/install-deps.sh)")
    scenario(env)


@T.timeout(150)
def test_interop_encrypted(env):
    if not SERF:
        raise T.Skip("serf not installed (scripts/install-deps.sh)")
    rc, key = serf_cli(env, "keygen")
    T.check(rc == 0, key)
    scenario(env, key=key.strip())


if __name__ == "__main__":
    T.main([test_interop_plain, test_interop_encrypted])
