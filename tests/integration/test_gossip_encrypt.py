#!/usr/bin/env python3
"""dfdaemon's gossip encryption (--encrypt, or `encrypt:` in its config
file) in a cluster with a real Debian `serf agent -encrypt` (Serf 0.9.4):

  - two dfdaemons, one keyed on the command line and one by its YAML config
    file, join the agent: `serf members` lists both alive with their
    dfly-port tag, each daemon counts three alive members;
  - a dfdaemon with a wrong key, and one with no key, joining the agent and
    a keyed daemon: neither joins, both say why (a warning naming the peer
    and the reason, dfly_dfdaemon_gossip_rejected_total by reason), and the
    keyed side says why too (serf's log, the keyed daemon's warning).
Skipped when `serf` is not installed (scripts/install-deps.sh installs it)."""

import time

import dflytest as T
from test_gossip_interop import SERF, Agent, serf_cli, wait_status
from test_gossip_swarm import NO_SUPERNODE, metric


def gossip_daemon(env, name, key=None, join=None, config=None):
    gport = T.free_port()
    extra = ["--mode", "gossip", "--gossip-listen", f"127.0.0.1:{gport}", "--gossip-name", name]
    if key:
        extra += ["--encrypt", key]
    if join:
        extra += ["--join", join]
    if config:
        path = env.path(f"{name}.yml")
        with open(path, "w") as f:
            f.write(config.format(gport=gport))
        extra = ["--config", path]
    d = env.dfdaemon(NO_SUPERNODE, extra=extra)
    d.gport = gport
    return d


def alive(d):
    return metric(d, "dfly_dfdaemon_gossip_members", '{state="alive"}')


def rejected(d, reason):
    return metric(d, "dfly_dfdaemon_gossip_rejected_total", f'{{reason="{reason}"}}') or 0


def keygen(env):
    rc, key = serf_cli(env, "keygen")
    T.check(rc == 0, key)
    return key.strip()


@T.timeout(120)
def test_encrypt_with_serf(env):
    if not SERF:
        raise T.Skip("serf not installed (scripts/install-deps.sh)")
    key = keygen(env)
    a = Agent(env, "a", key=key)
    d1 = gossip_daemon(env, "d1", key=key, join=f"127.0.0.1:{a.port}")
    # The same settings as YAML keys (the long flags' names).
    d2 = gossip_daemon(env, "d2", config=("mode: gossip\ngossip-listen: 127.0.0.1:{gport}\ngossip-name: d2\n"
                                           f"encrypt: {key}\njoin:\n  - 127.0.0.1:{a.port}\n"))
    for name, d in (("d1", d1), ("d2", d2)):
        wait_status(a, name, "alive", 20.0)
        m = a.members()[name]
        T.check(m["tags"].get("dfly-port") == str(d.upload_port), f"{name} as serf sees it: {m}")
        T.check(m["port"] == d.gport, f"{name}'s gossip port as serf sees it: {m}")
    for d in (d1, d2):
        T.wait_for(lambda d=d: alive(d) == 3, 20.0, interval=0.2, what=f"3 alive at {d.port}", proc=d.proc)
        T.check(rejected(d, "wrong_key") == 0 and rejected(d, "refused_by_peer") == 0,
                f"{d.port} counted rejections in a cluster sharing one key")
    T.check("Encrypted: true" in a.log(), "serf agent does not report its encryption:\n" + a.log()[:1500])


@T.timeout(120)
def test_encrypt_wrong_key(env):
    if not SERF:
        raise T.Skip("serf not installed (scripts/install-deps.sh)")
    key, other = keygen(env), keygen(env)
    T.check(key != other, "serf keygen gave the same key twice")
    a = Agent(env, "a", key=key)
    good = gossip_daemon(env, "good", key=key, join=f"127.0.0.1:{a.port}")
    T.wait_for(lambda: alive(good) == 2, 20.0, interval=0.2, what="good daemon joined", proc=good.proc)

    seeds = f"127.0.0.1:{a.port},127.0.0.1:{good.gport}"
    bad = gossip_daemon(env, "bad", key=other, join=seeds)
    plain = gossip_daemon(env, "plain", join=seeds)

    # Each says why it stays alone; the join is retried every 5 s while alone.
    T.wait_for(lambda: rejected(bad, "wrong_key") >= 2, 30.0, interval=0.25,
               what="the wrong-key daemon counting undecryptable replies", proc=bad.proc)
    T.wait_for(lambda: rejected(plain, "unexpected_encryption") >= 2, 30.0, interval=0.25,
               what="the keyless daemon counting encrypted replies", proc=plain.proc)
    T.check("another --encrypt key" in bad.proc.stderr(),
            "the wrong-key daemon does not say why:\n" + bad.proc.stderr()[-2000:])
    T.check("we have no key" in plain.proc.stderr(),
            "the keyless daemon does not say why:\n" + plain.proc.stderr()[-2000:])
    # The keyed side: serf logs memberlist's reason, our daemon warns and counts.
    T.check("No installed keys could decrypt the message" in a.log(), "serf did not log the wrong key")
    T.check("remote state is not encrypted" in a.log(), "serf did not log the plain join")
    T.check(rejected(good, "wrong_key") >= 1 and rejected(good, "not_encrypted") >= 1,
            f"the keyed daemon counted wrong_key={rejected(good, 'wrong_key')} "
            f"not_encrypted={rejected(good, 'not_encrypted')}")
    T.check("another --encrypt key" in good.proc.stderr() or "not encrypted but we are" in good.proc.stderr(),
            "the keyed daemon does not say why:\n" + good.proc.stderr()[-2000:])

    # A serf agent with the other key, joining our keyed daemon: our errResp
    # (in our key) is one it cannot open either, and `serf join` says so.
    b = Agent(env, "b", key=other)
    rc, out = serf_cli(env, "join", b.rpc_addr(), f"127.0.0.1:{good.gport}")
    T.check(rc != 0 and "No installed keys could decrypt the message" in out,
            f"serf join with the other key to our daemon: rc={rc}\n{out}")

    # And none of them got in.
    time.sleep(1.0)
    members = a.members()
    T.check("bad" not in members and "plain" not in members, f"serf lists a node without the key: {members}")
    T.check(alive(bad) == 1 and alive(plain) == 1, "a node without the key has members")
    T.check(alive(good) == 2, f"the keyed daemon sees {alive(good)} alive members, not 2")


if __name__ == "__main__":
    T.main([test_encrypt_with_serf, test_encrypt_wrong_key])
