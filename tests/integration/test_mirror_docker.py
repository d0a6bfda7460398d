#!/usr/bin/env python3
"""Registry mirror with the Docker engine: a private dockerd (Debian's
docker.io) with its own data root, exec root, pid file and socket, no
iptables and no bridge, pulling through dfdaemon two ways:

  - registry-mirrors = [dfdaemon] (docs/examples/docker-daemon.json):
    `docker pull NAME:TAG` means docker.io/library/NAME:TAG, from a registry
    built like Docker Hub (token auth, anonymous pulls of library/*, blobs
    redirected to storage);
  - HTTPS_PROXY = dfdaemon intercepting a TLS registry
    (docs/examples/dfdaemon-https-proxy.yml), the hijack CA in
    /etc/docker/certs.d/HOST:PORT/ca.crt.

The script runs in a private mount namespace (mirrorlib.private_hosts)
whose /etc/hosts maps the Docker Hub host names and the TLS registry's name
to 127.0.0.1, so nothing leaves the machine and a pull that bypassed the
mirror would fail; each engine also gets a directory of the test bound over
/etc/docker (its certs.d and key.json), so the machine's is untouched."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import dflytest as T
import mirrorlib as M

DOCKER_HUB = ["registry-1.docker.io", "auth.docker.io", "index.docker.io", "docker.io",
              "registry.docker.io", "production.cloudflare.docker.com"]
NAME = "registry.dfly.test"
BIG = 30 * T.MiB


def docker_cli():
    # Debian's client matches the engine; any other on PATH negotiates the API.
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")


def engine_json(conf, data_root, short):
    """conf plus what a second engine on a shared machine needs (own roots
    and socket, no network setup)."""
    conf = dict(conf)
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


def with_dockerd(env, conf, etc_docker, body, proxy=None):
    """Starts dockerd with daemon.json = conf (+ engine_json) and the test's
    etc_docker bound over /etc/docker, runs body(sock, proc), then stops
    the engine and undoes the mount.  proxy: HTTPS_PROXY for the engine."""
    M.need("dockerd", "mount", "umount")
    if not docker_cli():
        raise T.MissingBinary("docker (client) not found (run scripts/install-deps.sh)")
    T.check(os.environ.get(M.HOSTS_NS_VAR) == "1", "not in the private mount namespace")
    # Unix socket paths are short (108 bytes): the engine's sockets live in
    # a short directory of their own, removed at the end.
    short = tempfile.mkdtemp(prefix="dfly-dk-")
    path = env.path("daemon.json")
    with open(path, "w") as f:
        json.dump(engine_json(conf, env.mkdir("docker-data"), short), f, indent=2)
    sock = f"{short}/docker.sock"
    rc = subprocess.run(["mount", "--bind", etc_docker, "/etc/docker"], capture_output=True, text=True)
    T.check(rc.returncode == 0, f"cannot bind a directory over /etc/docker: {rc.stderr}")
    proc = None
    try:
        e = dict(os.environ)
        if proxy:
            e.update(HTTPS_PROXY=proxy, NO_PROXY="")
        proc = env.procs.start("dockerd", ["dockerd", "--config-file", path], env=e)

        def up():
            if not os.path.exists(sock):
                return False
            return run_docker(env, sock, ["version"], timeout=10.0)[0] == 0
        try:
            T.wait_for(up, 60.0, what="dockerd", proc=proc)
        except T.TestFailure as err:
            raise T.TestFailure(f"dockerd did not start here: {err}\n{proc.tail(40)}")
        body(sock, proc)
    finally:
        if proc:
            stop(proc)
        subprocess.run(["umount", "/etc/docker"], capture_output=True)
        shutil.rmtree(short, ignore_errors=True)


def check_image(env, sock, ref, image):
    rc, p = run_docker(env, sock, ["image", "inspect", "--format", "{{.Id}} {{.RepoTags}}", ref])
    T.check(rc == 0 and p.stdout().split()[0] == image["config"], f"image inspect: {p.stdout()} {p.tail()}")
    # The layers were unpacked: docker save exports them from the engine's storage.
    out = env.path("saved.tar")
    rc, p = run_docker(env, sock, ["save", "-o", out, ref], timeout=120.0)
    T.check(rc == 0 and os.path.getsize(out) > BIG, f"docker save: rc={rc} {p.tail()}")
    os.unlink(out)


def check_p2p(reg, d, image, what, status=200):
    big, nblobs = image["big"], len(image["layers"]) + 1
    m = M.daemon_metrics(d)
    T.log(f"dockerd via {what}: {M.metric(m, 'dfly_dfdaemon_mirror_requests_total')} requests to the "
          f"mirror, {M.metric(m, 'dfly_dfdaemon_mirror_p2p_total')} blobs / "
          f"{M.metric(m, 'dfly_dfdaemon_mirror_p2p_bytes_total')} B by P2P; registry GETs of the big layer: "
          f"{reg.count('GET', '/blobs/' + big, status)}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") >= nblobs, f"blobs not by P2P:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_bytes_total") >= BIG, f"P2P bytes:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")
    T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
            f"the daemon fetched from the registry itself:\n{m}")
    T.check(reg.count("GET", "/blobs/" + big, status) == 1, f"registry: {reg.access()}")
    return m


def pull(env, sock, proc, ref):
    rc, p = run_docker(env, sock, ["pull", ref], timeout=180.0)
    T.check(rc == 0, f"docker pull {ref} failed rc={rc}:\n{p.stdout()}\n{p.tail()}\ndockerd:\n{proc.tail(30)}")


@T.timeout(300)
def test_mirror_dockerd_pull(env):
    """dockerd with registry-mirrors = dfdaemon pulls dflytest:1
    (docker.io/library/dflytest:1) from a registry built like Docker Hub:
    token auth with anonymous pulls of library/*, blobs redirected (307) to
    storage.  The engine does the anonymous token dance through the mirror's
    challenge; the image's id is its config digest, every blob came through
    dfdaemon by P2P (its counters), the registry answered the big layer's
    GET once (the seed's, with the engine's token) and storage served each
    blob once."""
    ts, storage, reg = M.hub_like_registry(env, public="library/")
    layout = env.mkdir("oci")
    M.make_oci_image(layout, BIG)
    image = M.push(env, reg, layout, ref="library/dflytest:1")
    before = len(storage.requests())
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", reg.url])
    conf = json.loads(M.swap(M.example("docker-daemon.json"), "127.0.0.1:65001", f"{T.LOCALHOST}:{d.port}"))

    def body(sock, proc):
        rc, p = run_docker(env, sock, ["info", "--format", "{{json .RegistryConfig.Mirrors}}"])
        T.check(rc == 0 and f"{T.LOCALHOST}:{d.port}" in p.stdout(), f"docker info: {p.stdout()} {p.tail()}")
        pull(env, sock, proc, "dflytest:1")
        check_image(env, sock, "dflytest:1", image)
    with_dockerd(env, conf, env.mkdir("etc-docker"), body)
    check_p2p(reg, d, image, "registry-mirrors", status=307)
    anon = [sc for u, st, sc in ts.issued() if u == "-" and st == 200]
    T.check(any("repository:library/dflytest:pull" in sc for sc in anon), f"no anonymous token: {ts.issued()}")
    time.sleep(0.5)  # nginx logs a request when it ends
    for dg in image["layers"] + [image["config"]]:
        h = dg.split(":", 1)[1]
        n = sum(1 for r in storage.requests()[before:] if r[1].endswith(f"/{h}/data"))
        T.check(n == 1, f"storage served {dg} {n} times (want 1, to the seed): {storage.requests()}")


@T.timeout(300)
def test_mirror_dockerd_https_proxy(env):
    """dockerd with HTTPS_PROXY = dfdaemon (no mirror configured) pulls
    registry.dfly.test:PORT/test/img:1 from a TLS registry: the CONNECT is
    intercepted, the engine trusts the hijack CA from
    /etc/docker/certs.d/HOST:PORT/ca.crt, and the blobs come by P2P."""
    ca, hj, reg, image = M.tls_registry(env, BIG, names=[NAME])
    authority = f"{NAME}:{reg.port}"
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--config", M.https_proxy_conf(env, authority, hj, ca.ca),
                                     "--registry", "http://127.0.0.1:9"])
    etc = env.mkdir("etc-docker")
    os.makedirs(os.path.join(etc, "certs.d", authority))
    shutil.copy(hj.ca, os.path.join(etc, "certs.d", authority, "ca.crt"))
    ref = f"{authority}/test/img:1"

    def body(sock, proc):
        pull(env, sock, proc, ref)
        check_image(env, sock, ref, image)
    with_dockerd(env, {}, etc, body, proxy=f"http://{T.LOCALHOST}:{d.port}")
    m = check_p2p(reg, d, image, "HTTPS_PROXY")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_connect_intercepted_total") >= 1, f"not intercepted:\n{m}")


if __name__ == "__main__":
    M.private_hosts(DOCKER_HUB + [NAME])
    T.main([test_mirror_dockerd_pull, test_mirror_dockerd_https_proxy])
