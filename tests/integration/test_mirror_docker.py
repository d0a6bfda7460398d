#!/usr/bin/env python3
"""Registry mirror with the Docker engine: a private dockerd (Debian's
docker.io) whose daemon.json has "registry-mirrors": ["http://dfdaemon"],
with its own data root, exec root, pid file and socket, no iptables and no
bridge.  `docker pull NAME:TAG` means docker.io/library/NAME:TAG: this
script runs in a private mount namespace whose /etc/hosts maps the Docker
Hub host names to 127.0.0.1 (mirrorlib.private_hosts), so nothing leaves
the machine and a pull that bypassed the mirror would fail.  dfdaemon's
upstream is a local registry holding library/NAME."""

import json
import os
import shutil
import signal
import tempfile

import dflytest as T
import mirrorlib as M

DOCKER_HUB = ["registry-1.docker.io", "auth.docker.io", "index.docker.io", "docker.io",
              "registry.docker.io", "production.cloudflare.docker.com"]
BIG = 30 * T.MiB


def docker_cli():
    # Debian's client matches the engine; any other on PATH negotiates the API.
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")


def daemon_json(mirror_port, data_root, short):
    """docs/examples/docker-daemon.json with dfdaemon's port, plus what a
    second engine on a shared machine needs (own roots and socket, no
    network setup)."""
    conf = json.loads(M.swap(M.example("docker-daemon.json"), "127.0.0.1:65001", f"{T.LOCALHOST}:{mirror_port}"))
    conf.update({
        "data-root": data_root,
        "exec-root": f"{short}/exec",
        "pidfile": f"{short}/docker.pid",
        "hosts": [f"unix://{short}/docker.sock"],
        "storage-driver": "vfs",
        "iptables": False,
        "ip-forward": False,
        "ip-masq": False,
        "bridge": "none",
        "log-level": "info",
    })
    return conf


def run_docker(env, sock, args, timeout=60.0):
    p = env.procs.start("docker", [docker_cli(), "-H", f"unix://{sock}"] + list(args))
    rc = p.wait(timeout)
    if rc is None:
        p.signal(9)
        p.wait(5.0)
    return rc, p


def stop(proc, grace=20.0):
    """Ends dockerd and what it started (its containerd), by PID."""
    kids = T.descendants(proc.pid)
    proc.signal(signal.SIGTERM)
    if proc.wait(grace) is None:
        proc.signal(signal.SIGKILL)
        proc.wait(5.0)
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except OSError:
            pass


def dockerd_pull(env, reg, d, image, short):
    conf = env.path("daemon.json")
    with open(conf, "w") as f:
        json.dump(daemon_json(d.port, env.mkdir("docker-data"), short), f, indent=2)
    sock = f"{short}/docker.sock"
    proc = env.procs.start("dockerd", ["dockerd", "--config-file", conf])
    try:
        pull_checks(env, reg, d, image, sock, proc)
    finally:
        stop(proc)


def pull_checks(env, reg, d, image, sock, proc):

    def up():
        if not os.path.exists(sock):
            return False
        return run_docker(env, sock, ["version"], timeout=10.0)[0] == 0
    try:
        T.wait_for(up, 60.0, what="dockerd", proc=proc)
    except T.TestFailure as e:
        raise T.TestFailure(f"dockerd did not start here: {e}\n{proc.tail(40)}")
    rc, p = run_docker(env, sock, ["info", "--format", "{{json .RegistryConfig.Mirrors}} {{.Driver}}"])
    T.check(rc == 0 and f"{T.LOCALHOST}:{d.port}" in p.stdout(), f"docker info: {p.stdout()} {p.tail()}")

    rc, p = run_docker(env, sock, ["pull", "dflytest:1"], timeout=180.0)
    T.check(rc == 0, f"docker pull through the mirror failed rc={rc}:\n{p.stdout()}\n{p.tail()}\n"
                     f"dockerd:\n{proc.tail(30)}")
    rc, p = run_docker(env, sock, ["image", "inspect", "--format", "{{.Id}} {{.RepoTags}}", "dflytest:1"])
    T.check(rc == 0 and p.stdout().split()[0] == image["config"], f"image inspect: {p.stdout()} {p.tail()}")
    # The layers were unpacked: docker save exports them from the engine's storage.
    rc, p = run_docker(env, sock, ["save", "-o", env.path("saved.tar"), "dflytest:1"], timeout=120.0)
    T.check(rc == 0 and os.path.getsize(env.path("saved.tar")) > BIG, f"docker save: rc={rc} {p.tail()}")
    big, nblobs = image["big"], len(image["layers"]) + 1
    m = M.daemon_metrics(d)
    T.log(f"dockerd via registry-mirrors: {M.metric(m, 'dfly_dfdaemon_mirror_requests_total')} requests to the "
          f"mirror, {M.metric(m, 'dfly_dfdaemon_mirror_p2p_total')} blobs / "
          f"{M.metric(m, 'dfly_dfdaemon_mirror_p2p_bytes_total')} B by P2P; registry GETs of the big layer: "
          f"{reg.count('GET', '/blobs/' + big)}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") >= nblobs, f"blobs not by P2P:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_bytes_total") >= BIG, f"P2P bytes:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")
    T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
            f"the daemon fetched from the registry itself:\n{m}")
    T.check(reg.count("GET", "/blobs/" + big) == 1, f"registry: {reg.access()}")


@T.timeout(300)
def test_mirror_dockerd_pull(env):
    """dockerd --config-file daemon.json (registry-mirrors = dfdaemon) pulls
    dflytest:1 (docker.io/library/dflytest:1): the image's id is its config
    digest, every blob came through dfdaemon by P2P (its counters), and the
    registry served the big layer once, to the supernode's seed."""
    M.need("dockerd")
    if not docker_cli():
        raise T.MissingBinary("docker (client) not found (run scripts/install-deps.sh)")
    reg = M.Registry(env).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, BIG)
    image = M.push(env, reg, layout, ref="library/dflytest:1")
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", reg.url])
    # Unix socket paths are short (108 bytes): the engine's sockets live in
    # a short directory of their own, removed at the end.
    short = tempfile.mkdtemp(prefix="dfly-dk-")
    try:
        dockerd_pull(env, reg, d, image, short)
    finally:
        shutil.rmtree(short, ignore_errors=True)

if __name__ == "__main__":
    M.private_hosts(DOCKER_HUB)
    T.main([test_mirror_dockerd_pull])
