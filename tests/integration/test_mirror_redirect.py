#!/usr/bin/env python3
"""Registry mirror in front of a registry that answers blob requests with a
307 to a storage URL, as Docker Hub does (its CDN): docker-registry's
`redirect` storage middleware pointing at an nginx serving the registry's
storage root, with token auth in front as on Docker Hub.  The layers must
still travel P2P: storage serves each blob once (to the seed), the clients'
Bearer tokens never reach storage."""

import time

import dflytest as T
import mirrorlib as M

BIG = 30 * T.MiB



@T.timeout(300)
def test_mirror_redirect_to_storage(env):
    """Three skopeo pulls at once (with credentials, token auth) through
    three dfdaemons of a registry redirecting blobs to storage: every
    digest checks, the registry answered one 307 GET for the big layer (the
    seed's) plus one 307 HEAD per pull (the access checks), storage served
    the big layer's data once and never saw an Authorization header, the
    daemons served >= 3x the layer from P2P and fetched nothing themselves."""
    ts, storage, reg = M.hub_like_registry(env)
    layout = env.mkdir("oci")
    M.make_oci_image(layout, BIG)
    image = M.push(env, reg, layout)
    big = image["big"]
    hexd = big.split(":", 1)[1]
    data_path = f"/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"

    # The registry really redirects (with a token; without one it is 401).
    auth = {"Authorization": reg.credentials()}
    for method in ("GET", "HEAD"):
        st, h, _ = T.http_request(reg.port, method, f"/v2/test/img/blobs/{big}", headers=auth)
        T.check(st == 307 and h.get("location") == storage.url + data_path, f"registry {method} -> {st} {h}")
    before = len(storage.requests())

    sn = env.supernode()
    ds = [env.dfdaemon(sn.addr, extra=["--registry", reg.url]) for _ in range(3)]
    p2p = M.pull_all_p2p(env, ds, image, f"{reg.USER}:{reg.PASSWORD}")
    time.sleep(0.5)  # nginx logs a request when it ends
    reads = [r for r in storage.requests()[before:] if r[1] == data_path]
    gets307 = reg.count("GET", "/blobs/" + big, 307)
    heads307 = reg.count("HEAD", "/blobs/" + big, 307)
    T.log(f"redirecting registry: 3 skopeo pulls; registry: {gets307} GET / {heads307} HEAD answered 307 for the "
          f"{BIG >> 20} MiB layer; storage: {len(reads)} read(s) of it, {sum(r[3] for r in reads)} B; "
          f"mirrors sent {p2p} B from P2P")
    T.check(len(reads) == 1 and reads[0][0] == "GET" and reads[0][2] == 200 and reads[0][3] == image["sizes"][big],
            f"storage reads of the big layer: {reads}")
    for dg in image["layers"] + [image["config"]]:
        h = dg.split(":", 1)[1]
        n = sum(1 for r in storage.requests()[before:] if r[1].endswith(f"/{h}/data"))
        T.check(n == 1, f"storage served {dg} {n} times (want 1, to the seed): {storage.requests()}")
    T.check(gets307 == 2, f"registry GETs of the big layer (want 2: the check above, the seed): {reg.access()}")
    T.check(heads307 >= 4, f"registry HEADs (the check above, one access check per pull): {reg.access()}")
    T.check(all(not r[4] or r[4] == "-" for r in storage.requests()),
            f"a registry token reached storage: {storage.requests()}")
    T.check(p2p >= 3 * BIG, f"P2P bytes sent {p2p} < 3 x {BIG}")


if __name__ == "__main__":
    T.main([test_mirror_redirect_to_storage])
