#!/usr/bin/env python3
"""Gossip mode's DNS discovery (--gossip-dns) against a real dnsmasq on
loopback: dfdaemons started with no --join find each other only through DNS,
the way a Kubernetes headless service is found.

  - A records: three daemons on 127.0.0.2-4 (one gossip port) behind one name
    served from an addn-hosts file; a fourth daemon on 127.0.0.5 starts alone
    (no --gossip-dns, no --join) and is joined by the others once the file
    gains its address and dnsmasq is sent SIGHUP (re-resolution);
  - SRV + AAAA: three daemons on [::1] with distinct ports behind
    _serf._tcp.<domain> SRV records whose targets have only AAAA records; a
    fourth joins once dnsmasq restarts with its SRV record added;
  - a name that does not exist: the daemon stays alone, logs why and counts
    the failed rounds.
dnsmasq reads no system file (--conf-file=/dev/null --no-resolv --no-hosts)
and the daemons ask it through --gossip-dns-server: resolv.conf is not used.
Skipped when dnsmasq is not installed (scripts/install-deps.sh installs it)."""

import os
import shutil
import signal
import socket

import dflytest as T
from test_gossip_swarm import NO_SUPERNODE, metric

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.access("/usr/sbin/dnsmasq", os.X_OK) else None)
DOMAIN = "dfly.test"
INTERVAL = "1s"  # re-resolution period used by the daemons here


def free_port_on(hosts, family=socket.AF_INET):
    """A port free for UDP and TCP on every address in hosts."""
    for _ in range(50):
        port = T.free_port()
        try:
            for h in hosts:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(family, kind) as s:
                        s.bind((h, port))
            return port
        except OSError:
            continue
    raise T.TestFailure(f"no port free on all of {hosts}")


class Dnsmasq:
    def __init__(self, env, records=(), hosts_file=None):
        self.env = env
        self.port = free_port_on(["127.0.0.1"])
        self.hosts_file = hosts_file
        self.proc = None
        self.start(records)

    @property
    def server(self):
        return f"127.0.0.1:{self.port}"

    def start(self, records):
        argv = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--no-negcache", f"--local=/{DOMAIN}/", f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--pid-file=", "--log-facility=-", "--log-queries"]
        if os.getuid() == 0:
            argv.append("--user=root")  # no privilege drop: it rereads the test's files on SIGHUP
        if self.hosts_file:
            argv.append(f"--addn-hosts={self.hosts_file}")
        argv += list(records)
        self.proc = self.env.procs.start("dnsmasq", argv)
        T.wait_for(self.answers, 10.0, what="dnsmasq answering", proc=self.proc)

    def answers(self):
        """A query over UDP gets some reply (any rcode)."""
        q = bytes.fromhex("12340100000100000000000004646e7331") + b"\x04test\x00\x00\x01\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            try:
                s.sendto(q, ("127.0.0.1", self.port))
                return s.recv(512)[:2] == b"\x12\x34"
            except OSError:
                return False

    def restart(self, records):
        self.proc.signal(signal.SIGTERM)
        self.proc.wait(10.0)
        self.start(records)


def daemon(env, listen, advertise, name, extra=()):
    return env.dfdaemon(NO_SUPERNODE, extra=["--mode", "gossip", "--gossip-listen", listen, "--advertise-ip",
                                             advertise, "--gossip-name", name, *extra])


def dns_opts(target, server):
    return ["--gossip-dns", target, "--gossip-dns-server", server, "--gossip-dns-interval", INTERVAL]


def alive(d):
    return metric(d, "dfly_dfdaemon_gossip_members", '{state="alive"}')


def wait_alive(daemons, n, timeout, what):
    for d in daemons:
        T.wait_for(lambda d=d: alive(d) == n, timeout, interval=0.2, what=f"{what}: {n} alive at {d.port}",
                   proc=d.proc)


@T.timeout(120)
def test_dns_a_records(env):
    if not DNSMASQ:
        raise T.Skip("dnsmasq not installed (scripts/install-deps.sh)")
    ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    gport = free_port_on(ips)
    name = f"members.{DOMAIN}"
    hosts = env.path("members.hosts")
    with open(hosts, "w") as f:
        f.writelines(f"{ip} {name}\n" for ip in ips[:3])
    dns = Dnsmasq(env, hosts_file=hosts)

    first = [daemon(env, f"{ip}:{gport}", ip, f"a{i}", dns_opts(f"{name}:{gport}", dns.server))
             for i, ip in enumerate(ips[:3])]
    wait_alive(first, 3, 30.0, "A records")
    for d in first:
        T.check((metric(d, "dfly_dfdaemon_gossip_dns_rounds_total", '{result="ok"}') or 0) >= 1,
                f"{d.port}: no successful DNS round counted")
    T.check(f"query[A] {name}" in dns.proc.stderr() and f"query[AAAA] {name}" in dns.proc.stderr(),
            "dnsmasq saw no A and AAAA queries:\n" + dns.proc.stderr()[-2000:])

    # A fourth daemon, alone: it knows nobody and nobody knows it.
    late = daemon(env, f"{ips[3]}:{gport}", ips[3], "a3")
    rounds = metric(first[0], "dfly_dfdaemon_gossip_dns_rounds_total", '{result="ok"}')
    T.wait_for(lambda: metric(first[0], "dfly_dfdaemon_gossip_dns_rounds_total", '{result="ok"}') >= rounds + 2,
               15.0, what="re-resolution rounds", proc=first[0].proc)
    T.check(alive(late) == 1 and all(alive(d) == 3 for d in first),
            "the lone daemon was joined before its record existed")

    # Its record appears: the others' next round finds and joins it.
    with open(hosts, "a") as f:
        f.write(f"{ips[3]} {name}\n")
    dns.proc.signal(signal.SIGHUP)
    wait_alive(first + [late], 4, 30.0, "after the new A record")
    joins = sum(metric(d, "dfly_dfdaemon_gossip_dns_joins_total") or 0 for d in first)
    T.check(joins >= 3, f"only {joins} DNS joins counted over the three daemons")
    T.check(all(f"DNS discovery {name}:{gport}" in d.proc.stderr() for d in first),
            "a daemon did not log its DNS joins:\n" + first[0].proc.stderr()[-1500:])


@T.timeout(120)
def test_dns_srv_aaaa(env):
    if not DNSMASQ:
        raise T.Skip("dnsmasq not installed (scripts/install-deps.sh)")
    if not socket.has_ipv6:
        raise T.Skip("no IPv6")
    try:
        ports = [free_port_on(["::1"], socket.AF_INET6) for _ in range(4)]
    except OSError:
        raise T.Skip("::1 not usable")
    srv = f"_serf._tcp.{DOMAIN}"
    targets = [f"n{i}.{DOMAIN}" for i in range(4)]
    # Only AAAA records for the targets: the daemons must ask for both.
    records = [f"--host-record={t},::1" for t in targets]
    srv_recs = [f"--srv-host={srv},{targets[i]},{ports[i]},0,10" for i in range(4)]
    dns = Dnsmasq(env, records=records + srv_recs[:3])

    opts = ["--gossip-dns", srv, "--gossip-dns-server", dns.server, "--gossip-dns-interval", INTERVAL]
    ds = [daemon(env, f"[::1]:{ports[i]}", "::1", f"s{i}", opts) for i in range(3)]
    wait_alive(ds, 3, 30.0, "SRV records")
    T.check(f"query[SRV] {srv}" in dns.proc.stderr(), "dnsmasq saw no SRV query")

    # The fourth member starts alone; its SRV record is added by restarting
    # dnsmasq with one more --srv-host (dnsmasq rereads those only at start).
    late = daemon(env, f"[::1]:{ports[3]}", "::1", "s3")
    T.check(alive(late) == 1, "the lone daemon has members")
    dns.restart(records + srv_recs)
    wait_alive(ds + [late], 4, 30.0, "after the new SRV record")


@T.timeout(60)
def test_dns_unknown_name(env):
    if not DNSMASQ:
        raise T.Skip("dnsmasq not installed (scripts/install-deps.sh)")
    dns = Dnsmasq(env)
    gport = free_port_on(["127.0.0.1"])
    d = daemon(env, f"127.0.0.1:{gport}", "127.0.0.1", "lonely",
               dns_opts(f"nobody.{DOMAIN}:{gport}", dns.server))
    T.wait_for(lambda: (metric(d, "dfly_dfdaemon_gossip_dns_rounds_total", '{result="failed"}') or 0) >= 2,
               20.0, what="failed DNS rounds counted", proc=d.proc)
    T.check(alive(d) == 1, "a daemon with an unknown DNS name has members")
    T.check(f"DNS discovery nobody.{DOMAIN}:{gport}" in d.proc.stderr(),
            "the failure is not logged:\n" + d.proc.stderr()[-2000:])
    # A bad server address is a start-up error, not a silent daemon.
    argv = [T.find_binary("dfdaemon"), "--home", env.new_home(), "--node", NO_SUPERNODE,
            "--listen", f"127.0.0.1:{T.free_port()}", "--upload-port", "0", "--mode", "gossip",
            "--gossip-listen", f"127.0.0.1:{free_port_on(['127.0.0.1'])}",
            "--gossip-dns", f"x.{DOMAIN}:1", "--gossip-dns-server", "not-an-ip"]
    bad = env.procs.start("dfdaemon-bad", argv)
    T.check(bad.wait(15.0) not in (0, None), "dfdaemon started with --gossip-dns-server not-an-ip")
    T.check("DNS discovery" in bad.stderr(), "no reason given:\n" + bad.stderr()[-1500:])


if __name__ == "__main__":
    T.main([test_dns_a_records, test_dns_srv_aaaa, test_dns_unknown_name])
