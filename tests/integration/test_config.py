#!/usr/bin/env python3
"""The example config files of docs/examples/ load: a supernode and a dfdaemon
start from them (ports and directories overridden by flags, which take
precedence over the file) and serve a download; the same files with one
unknown key are refused, which shows the file is really read."""

import os

import dflytest as T

EXAMPLES = os.path.join(T.SOURCE_DIR, "docs", "examples")


def example(name):
    path = os.path.join(EXAMPLES, name)
    T.check(os.path.isfile(path), f"missing example config {path}")
    return path


def with_bogus_key(env, name):
    """A copy of the example with one unknown key at the end."""
    with open(example(name)) as f:
        text = f.read()
    path = env.path("bogus-" + name)
    with open(path, "w") as f:
        f.write(text + "no-such-key: 1\n")
    return path


@T.timeout(120)
def test_example_configs_load(env):
    o = env.origin()
    info = o.add_file("cfg.bin", 3 * T.MiB + 5)
    sn = env.supernode(extra=["--config", example("supernode.yml")])
    st, _, data = sn.request("GET", "/metrics")
    T.check(st == 200 and b"dfly_supernode_tasks" in data, f"supernode /metrics -> {st}")
    d = env.dfdaemon(sn.addr, extra=["--config", example("dfdaemon.yml")])
    st, _, _ = T.http_request(d.port, "GET", "/healthz")
    T.check(st == 200, f"dfdaemon /healthz -> {st}")
    r = env.dfget(o.url("cfg.bin"), env.path("cfg.bin"), home=d.home, timeout=60)
    r.expect_ok(info)
    T.check(d.proc.alive() and sn.proc.alive(), "a daemon died")


@T.timeout(60)
def test_example_configs_are_read(env):
    for prog, name, flags in (
            ("supernode", "supernode.yml", ["--listen", f"{T.LOCALHOST}:{T.free_port()}",
                                            "--data-dir", env.mkdir("sn")]),
            ("dfdaemon", "dfdaemon.yml", ["--home", env.mkdir("dd"),
                                          "--listen", f"{T.LOCALHOST}:{T.free_port()}"])):
        path = with_bogus_key(env, name)
        rc, _, err = env.run([T.find_binary(prog), "--config", path] + flags, timeout=20)
        T.check(rc == 2, f"{prog} with an unknown key in {path}: exit {rc}, want 2: {err[-300:]}")
        T.check("no-such-key" in err, f"{prog} did not name the unknown key: {err[-300:]}")


if __name__ == "__main__":
    T.main([test_example_configs_load, test_example_configs_are_read])
