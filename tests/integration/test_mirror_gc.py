#!/usr/bin/env python3
"""dfdaemon's piece store GC behind the mirror: with --cache-limit the least
recently used finished blobs are evicted once a new download pushes the
store over the budget (the most recent stays), with --cache-max-age blobs
unused that long go; pulls of evicted blobs keep working (P2P again)."""

import hashlib
import time

import dflytest as T
import mirrorlib as M

MB = T.MiB


def metrics(d):
    st, _, body = T.http_request(d.port, "GET", "/metrics")
    T.check(st == 200, f"/metrics -> {st}")
    return body.decode()


def get_blob(d, name, digest, size):
    st, _, body = T.http_request(d.port, "GET", f"/v2/{name}/blobs/{digest}", timeout=60.0)
    T.check(st == 200 and len(body) == size, f"blob {digest[:19]} -> {st}, {len(body)} B")
    T.check("sha256:" + hashlib.sha256(body).hexdigest() == digest, "blob bytes differ")


def wait_metric(d, series, pred, what, timeout=10.0):
    end = time.monotonic() + timeout
    while True:
        m = metrics(d)
        v = M.metric(m, series) or 0
        if pred(v):
            return m
        if time.monotonic() > end:
            T.check(False, f"{what}: {series} = {v}\n{m}")
        time.sleep(0.2)


@T.timeout(300)
def test_mirror_gc_budget_and_age(env):
    reg = M.Registry(env).start()
    images = []
    for i in range(3):
        layout = env.mkdir(f"oci{i}")
        M.make_oci_image(layout, 3 * MB)
        images.append(M.push(env, reg, layout, ref=f"test/img{i}:1"))
    sn = env.supernode()
    # budget: two big layers, not three
    d = env.dfdaemon(sn.addr, extra=["--registry", reg.url, "--cache-limit", "7M"])
    for i in (0, 1, 2):
        get_blob(d, f"test/img{i}", images[i]["big"], images[i]["sizes"][images[i]["big"]])
    # img0's layer is the least recently used: evicted after the third download
    m = wait_metric(d, "dfly_dfdaemon_store_evicted_total", lambda v: v >= 1, "no eviction over the budget")
    T.check(M.metric(m, "dfly_dfdaemon_store_bytes") <= 7 * MB, f"store over budget:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_store_tasks") == 2, f"store tasks:\n{m}")
    before = M.metric(m, 'dfly_dfdaemon_downloads_total{result="ok"}')
    # the most recent layer is still here: served without a new download
    get_blob(d, "test/img2", images[2]["big"], images[2]["sizes"][images[2]["big"]])
    # the evicted one is downloaded again (P2P: the seed still has it)
    get_blob(d, "test/img0", images[0]["big"], images[0]["sizes"][images[0]["big"]])
    m = metrics(d)
    T.check(M.metric(m, 'dfly_dfdaemon_downloads_total{result="ok"}') == before + 1 or
            M.metric(m, 'dfly_dfdaemon_downloads_total{result="ok"}') == before + 2,
            f"downloads after eviction:\n{m}")
    T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
            f"a daemon went to the registry:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")

    # age: no budget, one second
    a = env.dfdaemon(sn.addr, extra=["--registry", reg.url, "--cache-max-age", "1s"])
    get_blob(a, "test/img0", images[0]["big"], images[0]["sizes"][images[0]["big"]])
    T.check(M.metric(metrics(a), "dfly_dfdaemon_store_tasks") == 1, "store after one pull")
    time.sleep(1.5)
    # any download's end runs the GC at the next tick (else every 30 s)
    small = min(images[1]["sizes"], key=images[1]["sizes"].get)
    get_blob(a, "test/img1", small, images[1]["sizes"][small])
    wait_metric(a, "dfly_dfdaemon_store_evicted_total", lambda v: v >= 1, "no eviction by age", timeout=40.0)
    get_blob(a, "test/img0", images[0]["big"], images[0]["sizes"][images[0]["big"]])
    T.log("budget: LRU layer evicted, recent one kept; age: evicted after 1 s; re-pulls by P2P")


if __name__ == "__main__":
    T.main([test_mirror_gc_budget_and_age])
