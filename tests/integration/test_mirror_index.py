#!/usr/bin/env python3
"""Multi-platform images through the registry mirror: a Docker Distribution
registry holds an OCI index and a Docker manifest list (schema 2 children),
each of linux/amd64 and linux/arm64, pushed with the registry's API.  Both
are pulled for linux/arm64 through dfdaemon mirrors (a supernode and two
dfdaemons) by containerd (`ctr images pull --platform`) and by skopeo
(`--override-arch arm64`): the client must see the list's own media type
(Accept passed through, Content-Type passed back, on HEAD and GET), pick the
arm64 manifest, and get its layers from P2P."""

import os
import time

import dflytest as T
import mirrorlib as M

BIG = 50 * T.MiB


def layer_gets(reg, digests, since):
    """{digest: GETs the registry answered with bytes} from access-log entry since."""
    acc = reg.access()[since:]
    return {d: sum(1 for m, p, s in acc if m == "GET" and 200 <= s < 300 and p.endswith("/blobs/" + d))
            for d in digests}


def p2p_bytes(d):
    m = M.daemon_metrics(d)
    T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")
    T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
            f"a daemon fetched from the registry itself:\n{m}")
    return M.metric(m, "dfly_dfdaemon_mirror_p2p_bytes_total") or 0


def check_list_via_mirror(d, name, kind):
    """HEAD and GET of the list through the mirror with the list type alone
    in Accept answer that type (clients choose their parser by it)."""
    for method in ("HEAD", "GET"):
        st, h, _ = T.http_request(d.port, method, f"/v2/{name}/manifests/1", headers={"Accept": kind})
        T.check(st == 200 and h.get("content-type") == kind,
                f"{method} of the list through the mirror -> {st} {h.get('content-type')}")


@T.timeout(300)
def test_mirror_index_and_manifest_list(env):
    """An OCI index (multi/oci:1) and a Docker manifest list (multi/docker:1);
    for each, containerd pulls linux/arm64 through dfdaemon 0, then skopeo
    copies linux/arm64 through dfdaemon 1 into dir:.  Every arm64 blob has
    its digest in both clients' stores, no amd64 layer is fetched, the
    arm64 layers' bytes went out of the mirrors from P2P (each daemon sent at
    least the layers' size), and the registry served each layer's bytes at
    most once."""
    reg = M.Registry(env).start()
    kinds = {"oci": (M.OCI_INDEX, M.OCI_MANIFEST), "docker": (M.DOCKER_LIST, M.DOCKER_V2)}
    images = {}
    for k, (kind, child) in kinds.items():
        images[k] = M.push_multi(reg, f"multi/{k}", "1", docker=(k == "docker"), sizes=[BIG, 4 * T.MiB])
        held = M.registry_index(reg, f"multi/{k}", "1", kind=kind, child=child)
        for arch in ("amd64", "arm64"):
            T.check(held[arch] == [images[k][arch]["config"]] + images[k][arch]["layers"],
                    f"{k} {arch}: the registry holds {held[arch]}")
    sn = env.supernode()
    ds = [env.dfdaemon(sn.addr, extra=["--registry", reg.url]) for _ in range(2)]
    ctd = M.Containerd(env).start()
    hosts = ctd.hosts_dir(reg.addr, ds[0].port)

    for k, (kind, _) in kinds.items():
        name = f"multi/{k}"
        arm, amd = images[k]["arm64"], images[k]["amd64"]
        size = sum(arm["sizes"].values())
        check_list_via_mirror(ds[0], name, kind)
        mark = len(reg.access())
        before = [p2p_bytes(d) for d in ds]
        t0 = time.monotonic()

        p = ctd.start_pull(f"ns-{k}", f"{reg.addr}/{name}:1", hosts, platform="linux/arm64")
        rc = p.wait(120.0)
        T.check(rc == 0, f"ctr pull of the {k} list failed rc={rc}:\n{p.tail()}\n{p.stdout()[-2000:]}")
        have = ctd.content(f"ns-{k}")
        for dg in arm["layers"] + [arm["config"]]:
            T.check(dg in have, f"containerd ({k}) lacks arm64 blob {dg}: {have}")
        for dg in amd["layers"]:
            T.check(dg not in have, f"containerd ({k}) fetched amd64 layer {dg}")
        out = env.path(f"big-{k}.bin")
        ctd.blob(f"ns-{k}", arm["layers"][0], out)
        T.check("sha256:" + T.file_hash(out) == arm["layers"][0], f"{k}: the big layer has the wrong digest")
        os.unlink(out)

        out = env.path(f"skopeo-{k}")
        rc, p = M.skopeo(env, ["--override-arch", "arm64", "--override-os", "linux", "copy",
                               "--src-tls-verify=false", f"docker://{T.LOCALHOST}:{ds[1].port}/{name}:1",
                               f"dir:{out}"], timeout=120.0)
        T.check(rc == 0, f"skopeo copy of the {k} list failed rc={rc}:\n{p.tail()}")
        M.check_pulled(out, arm)
        for dg in amd["layers"]:
            T.check(not os.path.exists(os.path.join(out, dg.split(":", 1)[1])), f"skopeo fetched amd64 {dg}")
        dt = time.monotonic() - t0

        sent = [p2p_bytes(d) - b for d, b in zip(ds, before)]
        gets = layer_gets(reg, arm["layers"] + amd["layers"], mark)
        T.log(f"{k}: ctr + skopeo arm64 pulls in {dt:.1f}s; P2P bytes per daemon {sent} "
              f"(layers {size} B); registry layer GETs {list(gets.values())}")
        for i, s in enumerate(sent):
            T.check(s >= size, f"{k}: dfdaemon {i} sent {s} B from P2P, want >= {size}")
        for dg, n in gets.items():
            want = 0 if dg in amd["layers"] else 1
            T.check(n <= want, f"{k}: the registry served {dg} {n} times: {reg.access()[mark:]}")


if __name__ == "__main__":
    T.main([test_mirror_index_and_manifest_list])
