#!/usr/bin/env python3
"""Registry mirror: dfdaemon's --listen port in front of a real Docker
Distribution registry, pulled from with skopeo.  Blobs go through P2P (the
registry serves the big layer about once for three pulls), everything else is
relayed; credentials are checked by the registry for every client; Range
requests on blobs are answered 206; TLS on the plain port is closed at once."""

import os
import socket
import time

import dflytest as T
import mirrorlib as M

BIG = 50 * T.MiB


def setup(env, auth=False, daemons=3):
    reg = M.Registry(env, auth=auth).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, BIG)
    image = M.push(env, reg, layout)
    sn = env.supernode()
    ds = [env.dfdaemon(sn.addr, extra=["--registry", reg.url]) for _ in range(daemons)]
    return reg, image, sn, ds



@T.timeout(300)
def test_mirror_skopeo_pull_p2p(env):
    """Three dfdaemons pull the same image at once with skopeo: every blob
    digest checks, the registry served the big layer once, and the daemons'
    bytes came from the supernode and each other, not the registry."""
    reg, image, sn, ds = setup(env)
    big = image["big"]
    t0 = time.monotonic()
    pulls = [M.start_pull(env, d.port, env.path(f"pull{i}")) for i, d in enumerate(ds)]
    for i, p in enumerate(pulls):
        rc = p.wait(240.0)
        T.check(rc == 0, f"skopeo pull through dfdaemon {i} failed rc={rc}:\n{p.tail()}")
    dt = time.monotonic() - t0
    for i in range(len(ds)):
        M.check_pulled(env.path(f"pull{i}"), image)
    # GETs that sent the layer: the supernode revalidates a cached task
    # with a conditional GET (304, no body) once it is 10 s old, which a
    # loaded machine reaches within this test.
    gets = reg.count("GET", "/blobs/" + big, 200)
    heads = reg.count("HEAD", "/blobs/" + big)
    peers = sn_bytes = origin = 0
    for d in ds:
        m = M.daemon_metrics(d)
        peers += M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="peer"}') or 0
        sn_bytes += M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="supernode"}') or 0
        origin += M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0
        T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") >= 3, f"mirror counters:\n{m}")
        T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")
    T.log(f"3 concurrent skopeo pulls in {dt:.1f}s; registry: {gets} GET / {heads} HEAD of the "
          f"{BIG >> 20} MiB layer; daemons got {peers} B from peers, {sn_bytes} B from the "
          f"supernode, {origin} B from the registry")
    T.check(gets == 1, f"the registry served the big layer {gets} times (want 1): {reg.access()}")
    T.check(heads >= 3, f"expected an access check (HEAD) per pull, saw {heads}")
    T.check(origin == 0, f"daemons fetched {origin} bytes from the registry themselves")
    T.check(peers + sn_bytes >= 3 * BIG, f"P2P bytes {peers}+{sn_bytes} < 3 x {BIG}")

    # A second round through the first daemon is served from its store: the
    # registry sees one more access check, and at most a revalidation (304)
    # when the first round ended more than 10 s ago, but not the layer again.
    p = M.start_pull(env, ds[0].port, env.path("again"))
    T.check(p.wait(120.0) == 0, f"second pull failed:\n{p.tail()}")
    M.check_pulled(env.path("again"), image)
    T.check(reg.count("GET", "/blobs/" + big, 200) == 1, f"the cached layer was fetched again: {reg.access()}")
    T.check(reg.count("GET", "/blobs/" + big) == reg.count("GET", "/blobs/" + big, 200) +
            reg.count("GET", "/blobs/" + big, 304), f"a GET of the layer neither sent it nor 304: {reg.access()}")


@T.timeout(300)
def test_mirror_auth(env):
    """Registry with basic auth (htpasswd -B): a pull with credentials works
    through P2P; without them, or with wrong ones, the registry's 401 (with
    its challenge) reaches the client, also once the layer is cached."""
    reg, image, sn, ds = setup(env, auth=True, daemons=1)
    d = ds[0]
    big = image["big"]
    path = f"/v2/test/img/blobs/{big}"
    st, h, _ = T.http_request(d.port, "GET", path)
    T.check(st == 401 and "www-authenticate" in h, f"uncached blob without creds -> {st} {h}")
    p = M.start_pull(env, d.port, env.path("pull"), creds=f"{reg.USER}:{reg.PASSWORD}")
    T.check(p.wait(240.0) == 0, f"pull with credentials failed:\n{p.tail()}")
    M.check_pulled(env.path("pull"), image)
    T.check(reg.count("GET", "/blobs/" + big, 200) == 1, f"registry: {reg.access()}")
    for hdrs in ({}, {"Authorization": "Basic ZGZseTp3cm9uZw=="}):
        st, h, body = T.http_request(d.port, "GET", path, headers=hdrs, timeout=30.0)
        T.check(st == 401, f"cached blob with {hdrs or 'no creds'} -> {st}")
        T.check(h.get("www-authenticate", "").startswith("Basic realm="), f"challenge lost: {h}")
        T.check(len(body) < 4096, "a refused client got a body that looks like the blob")
    p = M.start_pull(env, d.port, env.path("nocreds"))
    T.check(p.wait(60.0) not in (0, None), "a pull without credentials succeeded")
    st, h, body = T.http_request(d.port, "GET", path, headers={"Authorization": reg.basic()},
                                 timeout=60.0)
    T.check(st == 200 and len(body) == image["sizes"][big], f"with creds -> {st}, {len(body)} B")
    T.check(h.get("docker-content-digest") == big, f"digest header: {h}")


@T.timeout(240)
def test_mirror_range_and_ns(env):
    """Range: bytes=N- on a blob -> 206 with the right bytes, on a blob not
    yet cached (served from the stream) and once cached; ?ns= selects the
    registry per request and is not passed on."""
    reg, image, sn, ds = setup(env, daemons=1)
    d = ds[0]
    big = image["big"]
    whole = env.path("whole.bin")
    st, _, body = T.http_request(reg.port, "GET", f"/v2/test/img/blobs/{big}", timeout=60.0)
    T.check(st == 200, f"blob straight from the registry -> {st}")
    with open(whole, "wb") as f:
        f.write(body)
    size = image["sizes"][big]
    for start in (size // 3, size - 10, 0):
        st, h, body = T.http_request(d.port, "GET", f"/v2/test/img/blobs/{big}",
                                     headers={"Range": f"bytes={start}-"}, timeout=60.0)
        T.check(st == 206, f"Range bytes={start}- -> {st}")
        T.check(h.get("content-range") == f"bytes {start}-{size - 1}/{size}", f"headers: {h}")
        T.check(body == T.read_range(whole, start, size - 1), f"wrong bytes for bytes={start}-")
    st, h, _ = T.http_request(d.port, "GET", f"/v2/test/img/blobs/{big}",
                              headers={"Range": f"bytes={size}-"})
    T.check(st == 416, f"unsatisfiable range -> {st}")
    # one GET above by the test itself, one by the supernode's seed
    T.check(reg.count("GET", "/blobs/" + big, 200) == 2, f"registry: {reg.access()}")

    st, _, body = T.http_request(d.port, "GET", f"/v2/test/img/manifests/1?ns={reg.addr}",
                                 headers={"Accept": M.OCI_MANIFEST})
    T.check(st == 200 and big.encode() in body, f"manifest with ns={reg.addr} -> {st}")
    T.check(all("ns=" not in p for _, p, _ in reg.access()), "ns reached the registry")
    st, _, _ = T.http_request(d.port, "GET", "/v2/test/img/manifests/1?ns=127.0.0.1:1", timeout=30.0)
    T.check(st == 502, f"manifest with ns of a dead registry -> {st}")
    st, _, _ = T.http_request(d.port, "GET", "/v2/test/img/manifests/1?ns=evil@host/x")
    T.check(st == 400, f"bad ns -> {st}")


@T.timeout(120)
def test_mirror_tls_and_malformed(env):
    """A TLS ClientHello on the plain port is closed at once; malformed and
    oversized requests get 4xx; the daemon keeps serving."""
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", "http://127.0.0.1:9"])
    hello = bytes.fromhex("16030100a5010000a10303") + os.urandom(32) + b"\x00\x00\x02\x13\x01\x01\x00" \
        + bytes(120)
    for _ in range(3):
        t0 = time.monotonic()
        with socket.create_connection((T.LOCALHOST, d.port), timeout=5.0) as s:
            s.sendall(hello)
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
        dt = time.monotonic() - t0
        T.check(data == b"" and dt < 2.0, f"TLS hello: got {data!r} after {dt:.1f}s")
    st, _ = T.raw_request(d.port, b"GARBAGE\r\n\r\n")
    T.check(st is not None and 400 <= st < 500, f"garbage request line -> {st}")
    st, _ = T.raw_request(d.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    T.check(st is None or 400 <= st < 500, f"oversized headers -> {st}")
    st, _, _ = T.http_request(d.port, "GET", "/healthz")
    T.check(st == 200, f"healthz after abuse -> {st}")
    st, _, _ = T.http_request(d.port, "GET", "/v2/", timeout=30.0)
    T.check(st == 502, f"dead registry -> {st}")


@T.timeout(240)
def test_mirror_shared_download(env):
    """Five clients ask one dfdaemon for the same uncached blob at once (one
    with a Range): each passes its own access check, then all ride one P2P
    download -- one engine download, four joins -- and each gets its bytes."""
    import hashlib
    import threading
    reg, image, sn, ds = setup(env, daemons=1)
    d = ds[0]
    big = image["big"]
    size = image["sizes"][big]
    path = f"/v2/test/img/blobs/{big}?ns={reg.addr}"
    results = [None] * 5

    def get(i):
        hdrs = {"Range": f"bytes={size // 2}-"} if i == 4 else {}
        try:
            st, _, body = T.http_request(d.port, "GET", path, headers=hdrs, timeout=120.0)
            results[i] = (st, hashlib.sha256(body).hexdigest(), len(body))
        except OSError as e:
            results[i] = (None, str(e), 0)
    threads = [threading.Thread(target=get, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150.0)
    for i in range(4):
        T.check(results[i] is not None and results[i][0] == 200 and "sha256:" + results[i][1] == big,
                f"client {i}: {results[i]}")
    T.check(results[4] is not None and results[4][0] == 206 and results[4][2] == size - size // 2,
            f"range client: {results[4]}")
    m = M.daemon_metrics(d)
    shared = M.metric(m, "dfly_dfdaemon_mirror_shared_total")
    dls = M.metric(m, 'dfly_dfdaemon_downloads_total{result="ok"}')
    T.log(f"5 concurrent requests for one {size >> 20} MiB blob: {dls} download(s), {shared} joined")
    T.check(shared == 4 and dls == 1, f"want 1 download and 4 joins:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") == 5, f"mirror counters:\n{m}")
    T.check(reg.count("HEAD", "/blobs/" + big) == 5, "one access check per client expected")
    T.check(reg.count("GET", "/blobs/" + big, 200) == 1, f"registry: {reg.access()}")


@T.timeout(240)
def test_mirror_http_proxy(env):
    """dfdaemon --http-proxy as curl's HTTP proxy: a blob GET by absolute URI
    goes through P2P (the registry is asked once, by the seed), a manifest
    is relayed; without --http-proxy an absolute-form request is 400."""
    M.need("curl")
    reg, image, sn, ds = setup(env, daemons=1)
    d = env.dfdaemon(sn.addr, extra=["--registry", "http://127.0.0.1:9", "--http-proxy"])
    big = image["big"]
    out = env.path("big.bin")
    url = f"http://{reg.addr}/v2/test/img/blobs/{big}"
    for i in range(2):
        rc, _, err = env.run(["curl", "-sS", "-f", "--noproxy", "", "--proxy", f"http://{T.LOCALHOST}:{d.port}",
                              "-o", out, url], timeout=120.0)
        T.check(rc == 0, f"curl through the proxy failed: {err}")
        T.check("sha256:" + T.file_hash(out) == big, "blob through the proxy has the wrong digest")
    rc, man, err = env.run(["curl", "-sS", "-f", "--noproxy", "", "--proxy", f"http://{T.LOCALHOST}:{d.port}",
                            "-H", f"Accept: {M.OCI_MANIFEST}", f"http://{reg.addr}/v2/test/img/manifests/1"])
    T.check(rc == 0 and big in man, f"manifest through the proxy: rc={rc} {err}")
    m = M.daemon_metrics(d)
    T.log(f"HTTP proxy: {M.metric(m, 'dfly_dfdaemon_mirror_proxy_requests_total')} requests, "
          f"{M.metric(m, 'dfly_dfdaemon_mirror_p2p_bytes_total')} B from P2P")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") == 2, f"blob not served by P2P:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_proxy_requests_total") == 3, f"proxy counter:\n{m}")
    T.check(reg.count("GET", "/blobs/" + big, 200) == 1, f"registry: {reg.access()}")
    st, _ = T.raw_request(ds[0].port, f"GET {url} HTTP/1.1\r\nHost: {reg.addr}\r\n\r\n".encode())
    T.check(st == 400, f"absolute-form request without --http-proxy -> {st}")


@T.timeout(240)
def test_mirror_tls_registry_hosts(env):
    """A registry over TLS with a private CA, named by ?ns= and listed with
    --registry-host "HOST:PORT ca=FILE": manifests are relayed and blobs
    served (the CA reaches the access check and the download's own origin
    requests); a daemon without the entry refuses the unknown certificate
    (502), one with "insecure" does not check it."""
    ca = M.TestCA(env)
    reg = M.Registry(env, tls=ca).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, 2 * T.MiB)
    image = M.push(env, reg, layout)
    sn = env.supernode()
    good = env.dfdaemon(sn.addr, extra=["--registry", "http://127.0.0.1:9",
                                        "--registry-host", f"{reg.addr} ca={ca.ca}"])
    lax = env.dfdaemon(sn.addr, extra=["--registry", "http://127.0.0.1:9",
                                       "--registry-host", f"{reg.addr} https insecure"])
    plain = env.dfdaemon(sn.addr, extra=["--registry", "http://127.0.0.1:9"])
    man = f"/v2/test/img/manifests/1?ns={reg.addr}"
    for d in (good, lax):
        st, _, body = T.http_request(d.port, "GET", man, headers={"Accept": M.OCI_MANIFEST}, timeout=30.0)
        T.check(st == 200 and image["big"].encode() in body, f"manifest through a TLS host entry -> {st}")
    st, _, _ = T.http_request(plain.port, "GET", man, timeout=30.0)
    T.check(st == 502, f"unknown CA without a host entry -> {st}")
    big = image["big"]
    for d in (good, lax):
        st, h, body = T.http_request(d.port, "GET", f"/v2/test/img/blobs/{big}?ns={reg.addr}", timeout=60.0)
        T.check(st == 200 and len(body) == image["sizes"][big], f"blob over TLS -> {st}, {len(body)} B")
        T.check("sha256:" + __import__("hashlib").sha256(body).hexdigest() == big, "blob bytes differ")
        m = M.daemon_metrics(d)
        T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") == 1, f"blob not served by the P2P path:\n{m}")
        # the supernode's seed used the CA (or insecure) it was sent: no back-source
        T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
                f"the daemon fetched the blob from the registry itself:\n{m}")
    bad = env.run([T.find_binary("dfdaemon"), "--registry-host", "127.0.0.1:1 ca", "--home", env.new_home()])
    T.check(bad[0] == 2 and "registry host" in bad[2], f"bad --registry-host -> {bad}")


if __name__ == "__main__":
    T.main([test_mirror_skopeo_pull_p2p, test_mirror_auth, test_mirror_range_and_ns,
            test_mirror_tls_and_malformed, test_mirror_tls_registry_hosts, test_mirror_shared_download,
            test_mirror_http_proxy])
