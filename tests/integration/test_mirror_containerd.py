#!/usr/bin/env python3
"""Registry mirror with containerd: `ctr images pull --hosts-dir` through
dfdaemon, whose hosts.toml names the dfdaemon mirror.  containerd resolves
with HEAD on the manifest, fetches by digest with ?ns=<registry> on every
mirror request, up to 3 blobs at once, and resumes with Range."""

import os
import time

import dflytest as T
import mirrorlib as M

BIG = 50 * T.MiB



@T.timeout(300)
def test_mirror_containerd_pull(env):
    """Two dfdaemons, each in front of its own containerd namespace (content
    isolated), pull the same image at once from a registry with token auth
    that redirects blobs to storage: containerd does the anonymous token
    dance through the mirror's challenge, every blob in each namespace has
    its digest, the image unpacks, the registry answered the big layer's GET
    once and storage served it once (both to the seed), and the daemons
    served the blobs from P2P."""
    # Built like Docker Hub: token auth with anonymous pulls of test/*, blobs
    # redirected (307) to storage.
    ts = M.TokenServer(env, public="test/").start()
    storage = M.Storage(env)
    reg = M.Registry(env, token=ts, redirect=storage.url)
    storage.start(reg.data)
    reg.start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, BIG)
    image = M.push(env, reg, layout)
    sn = env.supernode()
    ds = [env.dfdaemon(sn.addr, extra=["--registry", reg.url]) for _ in range(2)]
    ctd = M.Containerd(env).start()
    ref = f"{reg.addr}/test/img:1"
    hosts = [ctd.hosts_dir(reg.addr, d.port, name=f"hosts{i}") for i, d in enumerate(ds)]
    t0 = time.monotonic()
    pulls = [ctd.start_pull(f"ns{i}", ref, h) for i, h in enumerate(hosts)]
    for i, p in enumerate(pulls):
        rc = p.wait(240.0)
        T.check(rc == 0, f"ctr pull through dfdaemon {i} failed rc={rc}:\n{p.tail()}\n{p.stdout()[-2000:]}")
    dt = time.monotonic() - t0
    for i in range(len(ds)):
        have = ctd.content(f"ns{i}")
        for dg in image["layers"] + [image["config"]]:
            T.check(dg in have, f"namespace ns{i} lacks {dg}: {have}")
        out = env.path(f"big{i}.bin")
        ctd.blob(f"ns{i}", image["big"], out)
        T.check("sha256:" + T.file_hash(out) == image["big"], f"ns{i}: big layer has the wrong digest")
        os.unlink(out)
    big = image["big"]
    gets = reg.count("GET", "/blobs/" + big, 307)
    p2p = 0
    for d in ds:
        m = M.daemon_metrics(d)
        p2p += M.metric(m, "dfly_dfdaemon_mirror_p2p_bytes_total") or 0
        T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")
        T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
                f"a daemon fetched from the registry itself:\n{m}")
    T.log(f"2 concurrent ctr pulls in {dt:.1f}s; registry: {gets} GET of the {BIG >> 20} MiB layer; "
          f"mirrors sent {p2p} B from P2P")
    T.check(gets == 1, f"the registry served the big layer {gets} times (want 1): {reg.access()}")
    T.check(p2p >= 2 * BIG, f"P2P bytes sent {p2p} < 2 x {BIG}")
    T.check(all("ns=" not in p for _, p, _ in reg.access()), "ns reached the registry")
    anon = [sc for u, st, sc in ts.issued() if u == "-" and st == 200]
    T.check(len(anon) >= 2, f"containerd did not fetch anonymous tokens: {ts.issued()}")
    time.sleep(0.5)  # nginx logs a request when it ends
    reads = [r for r in storage.requests() if r[0] == "GET" and r[1].endswith(big.split(":", 1)[1] + "/data")]
    T.check(len(reads) == 1, f"storage reads of the big layer (want 1, the seed's): {storage.requests()}")


if __name__ == "__main__":
    T.main([test_mirror_containerd_pull])
