#!/usr/bin/env python3
"""Registry mirror configured the way podman and skopeo users do it: a
registries.conf whose [[registry]] for the registry has a
[[registry.mirror]] naming dfdaemon.  containers/image tries the mirror
first and silently falls back to the registry when the mirror fails, so a
pull that succeeded proves nothing: dfdaemon's counters must show the blobs
went through it (and the registry that only the seed read the layer)."""

import os
import shutil
import tempfile

import dflytest as T
import mirrorlib as M

BIG = 30 * T.MiB


def registries_conf(env, name, registry, mirror):
    path = env.path(name)
    with open(path, "w") as f:
        f.write(M.registries_conf(registry, mirror))
    return path


def client_env(env, conf):
    e = dict(os.environ)
    e["HOME"] = env.mkdir("client-home")
    e["XDG_RUNTIME_DIR"] = env.mkdir("client-run")
    e["CONTAINERS_REGISTRIES_CONF"] = conf
    return e


def run(env, name, argv, e, timeout=180.0):
    p = env.procs.start(name, argv, env=e)
    rc = p.wait(timeout)
    if rc is None:
        p.signal(9)
        p.wait(5.0)
    return rc, p


def skopeo_pull(env, name, registry, mirror, ref, image):
    """skopeo copy docker://ref dir:... with --registries-conf naming mirror
    for registry (skopeo's own flag; podman reads CONTAINERS_REGISTRIES_CONF)."""
    conf = registries_conf(env, f"{name}.conf", registry, mirror)
    out = env.path(f"{name}-pull")
    rc, p = run(env, "skopeo", ["skopeo", "--insecure-policy", "--registries-conf", conf, "copy",
                                f"docker://{ref}", f"dir:{out}"], client_env(env, conf))
    T.check(rc == 0, f"skopeo pull with the registries.conf mirror {mirror} failed rc={rc}:\n{p.tail()}")
    M.check_pulled(out, image)


def podman_pull(env, reg, d, ref, image, nblobs, pd, short):
    """podman (rootful, vfs, its own root) pulls ref with a registries.conf
    mirror entry for d; the image's blobs must have come through d by P2P."""
    big = image["big"]
    conf = registries_conf(env, "podman.conf", reg.addr, f"{T.LOCALHOST}:{d.port}")
    podman = ["podman", "--root", f"{pd}/root", "--runroot", f"{short}/run", "--tmpdir", f"{short}/tmp",
              "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    rc, p = run(env, "podman", podman + ["pull", ref], client_env(env, conf))
    T.check(rc == 0, f"podman pull with a registries.conf mirror failed rc={rc}:\n{p.tail()}")
    rc, p = run(env, "podman", podman + ["image", "inspect", "--format", "{{.Id}} {{.Size}}", ref],
                client_env(env, conf), timeout=60.0)
    T.check(rc == 0 and p.stdout().strip(), f"podman image inspect: rc={rc} {p.stdout()} {p.tail()}")
    T.check(p.stdout().split()[0] == image["config"].split(":", 1)[1], f"image id {p.stdout()} != config digest")
    m = M.daemon_metrics(d)
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") >= nblobs, f"podman's blobs not by P2P:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_bytes_total") >= BIG, f"P2P bytes:\n{m}")
    T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
            f"the daemon fetched from the registry itself:\n{m}")
    T.check(reg.count("GET", "/blobs/" + big, 200) == 1, f"registry served the layer again: {reg.access()}")
    T.log(f"podman via registries.conf: {M.metric(m, 'dfly_dfdaemon_mirror_requests_total')} requests to the "
          f"mirror, {M.metric(m, 'dfly_dfdaemon_mirror_p2p_bytes_total')} B by P2P")


@T.timeout(300)
def test_mirror_registries_conf(env):
    """skopeo and podman (its own root, vfs storage) pull
    REGISTRY/test/img:1 with a registries.conf mirror entry for dfdaemon:
    the pulls succeed, each daemon served the image's blobs from P2P (its
    counters), the registry served the big layer once (to the seed).  The
    control: with the mirror entry naming a closed port, skopeo still
    succeeds -- from the registry, which is why the counters are checked."""
    M.need("skopeo")
    reg = M.Registry(env).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, BIG)
    image = M.push(env, reg, layout)
    big, nblobs = image["big"], len(image["layers"]) + 1
    sn = env.supernode()
    ds = [env.dfdaemon(sn.addr, extra=["--registry", reg.url]) for _ in range(2)]
    ref = f"{reg.addr}/test/img:1"

    skopeo_pull(env, "skopeo", reg.addr, f"{T.LOCALHOST}:{ds[0].port}", ref, image)
    m = M.daemon_metrics(ds[0])
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") == nblobs, f"skopeo's blobs not by P2P:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_bytes_total") >= BIG, f"P2P bytes:\n{m}")
    T.check(reg.count("GET", "/blobs/" + big, 200) == 1, f"registry: {reg.access()}")
    T.log(f"skopeo via registries.conf: {M.metric(m, 'dfly_dfdaemon_mirror_requests_total')} requests to the "
          f"mirror, {M.metric(m, 'dfly_dfdaemon_mirror_p2p_bytes_total')} B by P2P")

    # podman, rootful, in its own storage.
    if not shutil.which("podman"):
        raise T.MissingBinary("podman not found (run scripts/install-deps.sh)")
    pd = env.mkdir("podman")
    # podman refuses a runroot longer than 50 characters: a short one of
    # its own, removed at the end.
    short = tempfile.mkdtemp(prefix="dfly-pm-")
    try:
        podman_pull(env, reg, ds[1], ref, image, nblobs, pd, short)
    finally:
        shutil.rmtree(short, ignore_errors=True)

    # The control: a dead mirror, and skopeo quietly pulls from the registry.
    skopeo_pull(env, "dead", reg.addr, f"{T.LOCALHOST}:{T.free_port()}", ref, image)
    T.check(reg.count("GET", "/blobs/" + big, 200) == 2, f"the fallback pull did not read the registry: {reg.access()}")


if __name__ == "__main__":
    T.main([test_mirror_registries_conf])
