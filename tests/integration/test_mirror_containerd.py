#!/usr/bin/env python3
"""Registry mirror with containerd: `ctr images pull --hosts-dir` through
dfdaemon, whose hosts.toml names the dfdaemon mirror.  containerd resolves
with HEAD on the manifest, fetches by digest with ?ns=<registry> on every
mirror request, up to 3 blobs at once, and resumes an interrupted layer with
Range: bytes=N- (its partial ingest stays in the content store)."""

import glob
import os
import signal
import time

import dflytest as T
import mirrorlib as M

BIG = 50 * T.MiB


@T.timeout(300)
def test_mirror_containerd_pull(env):
    """Three dfdaemons, each in front of its own containerd namespace (content
    isolated), pull the same image at once from a registry with token auth
    that redirects blobs to storage: containerd does the anonymous token
    dance through the mirror's challenge, every blob in each namespace has
    its digest, the image unpacks, the registry answered the big layer's GET
    once and storage served it once (both to the seed), and the daemons
    served the blobs from P2P."""
    # Built like Docker Hub: token auth with anonymous pulls of test/*, blobs
    # redirected (307) to storage.
    ts, storage, reg = M.hub_like_registry(env, public="test/")
    layout = env.mkdir("oci")
    M.make_oci_image(layout, BIG)
    image = M.push(env, reg, layout)
    sn = env.supernode()
    ds = [env.dfdaemon(sn.addr, extra=["--registry", reg.url]) for _ in range(3)]
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
    T.log(f"{len(ds)} concurrent ctr pulls in {dt:.1f}s; registry: {gets} GET of the {BIG >> 20} MiB layer; "
          f"mirrors sent {p2p} B from P2P")
    T.check(gets == 1, f"the registry served the big layer {gets} times (want 1): {reg.access()}")
    T.check(p2p >= len(ds) * BIG, f"P2P bytes sent {p2p} < {len(ds)} x {BIG}")
    T.check(all("ns=" not in p for _, p, _ in reg.access()), "ns reached the registry")
    anon = [sc for u, st, sc in ts.issued() if u == "-" and st == 200]
    T.check(len(anon) >= len(ds), f"containerd did not fetch anonymous tokens: {ts.issued()}")
    time.sleep(0.5)  # nginx logs a request when it ends
    reads = [r for r in storage.requests() if r[0] == "GET" and r[1].endswith(big.split(":", 1)[1] + "/data")]
    T.check(len(reads) == 1, f"storage reads of the big layer (want 1, the seed's): {storage.requests()}")


def ingested(ctd, digest):
    """Bytes containerd's content store holds in its ingest (a partial
    download) of the blob digest, or None without one."""
    hexd = digest.split(":", 1)[1]
    for ref in glob.glob(os.path.join(ctd.dir, "root", "io.containerd.content.v1.content", "ingest", "*", "ref")):
        try:
            with open(ref) as f:
                if hexd in f.read():
                    return os.path.getsize(os.path.join(os.path.dirname(ref), "data"))
        except FileNotFoundError:
            # containerd writes an ingest's ref before its data (and removes
            # both when done): not there yet, or gone
            continue
    return None


@T.timeout(240)
def test_mirror_containerd_resume(env):
    """containerd's pull of a big layer, served slowly by dfdaemon
    (--totallimit), is killed (SIGKILL on `ctr images pull`) once
    containerd's ingest holds part of the layer.  The partial ingest stays;
    a new `ctr images pull` resumes it with Range: bytes=N- through the
    mirror (a 206 from P2P, counted in mirror_p2p_ranges_total, and fewer
    P2P bytes than the layer), and the layer has its digest."""
    reg = M.Registry(env).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, 32 * T.MiB)
    image = M.push(env, reg, layout)
    big, size = image["big"], image["sizes"][image["big"]]
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", reg.url, "--totallimit", "6M"])
    ctd = M.Containerd(env).start()
    ref = f"{reg.addr}/test/img:1"
    hosts = ctd.hosts_dir(reg.addr, d.port)
    p = ctd.start_pull("ns0", ref, hosts)
    T.wait_for(lambda: (ingested(ctd, big) or 0) >= 4 * T.MiB, 120.0,
               what="containerd's ingest of the big layer to hold 4 MiB", proc=p)
    p.signal(signal.SIGKILL)
    T.check(p.wait(10.0) is not None, "ctr did not die")
    # The ingest stops growing once containerd saw its client go.
    def settled():
        n = ingested(ctd, big)
        time.sleep(0.3)
        return ingested(ctd, big) == n
    T.wait_for(settled, 20.0, what="the partial ingest to settle")
    have = ingested(ctd, big)
    T.check(have is not None and 0 < have < size, f"no partial ingest kept: {have} of {size}")
    T.check(big not in ctd.content("ns0"), "the big layer was committed before the kill")
    m0 = M.daemon_metrics(d)
    bytes0 = M.metric(m0, "dfly_dfdaemon_mirror_p2p_bytes_total") or 0
    ranges0 = M.metric(m0, "dfly_dfdaemon_mirror_p2p_ranges_total") or 0

    p = ctd.start_pull("ns0", ref, hosts)
    rc = p.wait(180.0)
    T.check(rc == 0, f"the second ctr pull failed rc={rc}:\n{p.tail()}\n{p.stdout()[-2000:]}")
    out = env.path("big.bin")
    ctd.blob("ns0", big, out)
    T.check("sha256:" + T.file_hash(out) == big, "the resumed layer has the wrong digest")
    m1 = M.daemon_metrics(d)
    sent = (M.metric(m1, "dfly_dfdaemon_mirror_p2p_bytes_total") or 0) - bytes0
    ranges = (M.metric(m1, "dfly_dfdaemon_mirror_p2p_ranges_total") or 0) - ranges0
    T.log(f"containerd held {have} of {size} B; the second pull got {sent} B through "
          f"{ranges} Range request(s)")
    T.check(ranges >= 1, f"containerd did not resume with a Range request:\n{m1}")
    # The rest of the layer (plus any small blob not committed before the kill), not all of it.
    T.check(size - have <= sent < size, f"the second pull got {sent} B; {size - have} B were missing")
    T.check(M.metric(m1, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m1}")


if __name__ == "__main__":
    T.main([test_mirror_containerd_pull, test_mirror_containerd_resume])
