#!/usr/bin/env python3
"""HTTPS proxy mode: dfdaemon --http-proxy as curl's proxy for https:// URLs
(CONNECT).  A host listed with --hijack-host is TLS-terminated with a leaf
minted from the hijack CA and its blob GETs go through P2P; any other host
is a plain tunnel (the client talks TLS with the registry itself)."""

import os
import socket

import dflytest as T
import mirrorlib as M


def connect_status(port, data, timeout=10.0):
    """Sends a raw request and returns the status of the reply head (evhttp
    keeps the connection of a refused CONNECT open: do not wait for EOF)."""
    head = b""
    with socket.create_connection((T.LOCALHOST, port), timeout=timeout) as s:
        s.sendall(data)
        while b"\r\n\r\n" not in head and len(head) < 65536:
            b = s.recv(4096)
            if not b:
                break
            head += b
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def curl(env, d, cacert, *args, timeout=120.0):
    M.need("curl")
    return env.run(["curl", "-sS", "-f", "--noproxy", "", "--proxy", f"http://{T.LOCALHOST}:{d.port}",
                    "--cacert", cacert] + list(args), timeout=timeout)


def hijack_setup(env, big_size):
    """A TLS registry (own CA) holding test/img:1 and a dfdaemon proxy that
    intercepts localhost:PORT with a leaf from a second, hijack CA."""
    ca, hj, reg, image = M.tls_registry(env, big_size)
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", "http://127.0.0.1:9", "--http-proxy",
                                     "--hijack-host", rf"^localhost:{reg.port}$",
                                     "--hijack-ca-cert", hj.ca, "--hijack-ca-key", hj.ca_key,
                                     "--registry-host", f"localhost:{reg.port} ca={ca.ca}"])
    return ca, hj, reg, image, sn, d


@T.timeout(300)
def test_mirror_https_connect(env):
    """curl --proxy dfdaemon https://localhost:PORT/v2/.../blobs/...: the
    blob bytes come by P2P (the seed fetched it; the daemon did not go to
    the registry), verified with the hijack CA (the registry's CA fails:
    the connection was intercepted); the manifest on the same connection is
    relayed; https://127.0.0.1:PORT (not listed) is tunnelled: only the
    registry's CA verifies it."""
    ca, hj, reg, image, sn, d = hijack_setup(env, 6 * T.MiB)
    big = image["big"]
    base = f"https://localhost:{reg.port}/v2/test/img"
    out, man = env.path("big.bin"), env.path("manifest.json")
    # two requests on one intercepted connection (curl reuses it)
    rc, _, err = curl(env, d, hj.ca, "-o", out, f"{base}/blobs/{big}",
                      "-H", f"Accept: {M.OCI_MANIFEST}", "-o", man, f"{base}/manifests/1")
    T.check(rc == 0, f"curl through the CONNECT proxy failed: {err}")
    T.check("sha256:" + T.file_hash(out) == big, "blob through the intercepted connection has the wrong digest")
    with open(man) as f:
        T.check(big in f.read(), "manifest through the intercepted connection lacks the layer")
    st, _, body = T.http_request(d.port, "GET", "/metrics")
    m = body.decode()
    T.check(M.metric(m, "dfly_dfdaemon_mirror_connect_intercepted_total") == 1, f"not intercepted:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_intercepted_requests_total") == 2, f"requests:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") == 1, f"blob not served by P2P:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_bytes_total") == image["sizes"][big], f"P2P bytes:\n{m}")
    T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
            f"the daemon fetched the blob from the registry itself:\n{m}")
    T.check(reg.count("GET", "/blobs/" + big, 200) == 1, f"registry (one GET by the seed): {reg.access()}")
    # the registry's own CA does not verify the intercepted connection
    rc, _, err = curl(env, d, ca.ca, "-o", env.path("x"), f"{base}/blobs/{big}")
    T.check(rc == 60, f"intercepted connection verified with the registry's CA? rc={rc} {err}")

    # not listed: a tunnel, end to end TLS with the registry
    tun = f"https://{T.LOCALHOST}:{reg.port}/v2/test/img"
    rc, _, err = curl(env, d, ca.ca, "-o", env.path("big2.bin"), f"{tun}/blobs/{big}")
    T.check(rc == 0, f"curl through the tunnel failed: {err}")
    T.check("sha256:" + T.file_hash(env.path("big2.bin")) == big, "blob through the tunnel has the wrong digest")
    rc, _, err = curl(env, d, hj.ca, "-o", env.path("y"), f"{tun}/blobs/{big}")
    T.check(rc == 60, f"tunnelled connection verified with the hijack CA? rc={rc} {err}")
    st, _, body = T.http_request(d.port, "GET", "/metrics")
    m = body.decode()
    T.check(M.metric(m, "dfly_dfdaemon_mirror_connect_tunnels_total") == 2, f"tunnels:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") == 1, f"tunnel went through P2P?\n{m}")
    T.check(reg.count("GET", "/blobs/" + big, 200) == 2, f"registry: {reg.access()}")

    # malformed or refused CONNECTs
    st = connect_status(d.port, b"CONNECT localhost HTTP/1.1\r\nHost: localhost\r\n\r\n")
    T.check(st == 400, f"CONNECT without a port -> {st}")
    st = connect_status(d.port, b"CONNECT a@b:443 HTTP/1.1\r\nHost: b\r\n\r\n")
    T.check(st == 400, f"CONNECT with userinfo -> {st}")
    st = connect_status(d.port, f"CONNECT 127.0.0.1:{T.free_port()} HTTP/1.1\r\n\r\n".encode())
    T.check(st == 502, f"CONNECT to a closed port -> {st}")
    plain = env.dfdaemon(sn.addr, extra=["--registry", "http://127.0.0.1:9"])
    st = connect_status(plain.port, f"CONNECT {reg.addr} HTTP/1.1\r\n\r\n".encode())
    T.check(st == 405, f"CONNECT without --http-proxy -> {st}")
    bad = env.run([T.find_binary("dfdaemon"), "--http-proxy", "--hijack-host", "x", "--home", env.new_home()])
    T.check(bad[0] == 2 and "hijack" in bad[2], f"--hijack-host without a CA -> {bad}")
    bad = env.run([T.find_binary("dfdaemon"), "--http-proxy", "--hijack-host", "x", "--hijack-ca-cert", ca.cert,
                   "--hijack-ca-key", ca.key, "--home", env.new_home()])
    T.check(bad[0] == 2 and "CA" in bad[2], f"a leaf certificate as hijack CA -> {bad}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@T.timeout(240)
def test_mirror_https_slow_client_close(env):
    """An intercepted client that asks for a 40 MiB blob with "Connection:
    close" (as skopeo and podman do: a new CONNECT per request) and then
    reads nothing for 3 s: the tunnel holds at most its buffer of the reply
    (dfdaemon's RSS grows by far less than the blob), and once the client
    reads, it gets the whole body although the decrypting side closed its
    end long before the client had it all."""
    import hashlib
    import ssl
    import time
    # Under AddressSanitizer freed memory waits in a quarantine (256 MiB),
    # so RSS would count every chunk that went through: none, here.
    saved = os.environ.get("ASAN_OPTIONS")
    os.environ["ASAN_OPTIONS"] = (saved or "") + ":quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
    try:
        ca, hj, reg, image, sn, d = hijack_setup(env, 40 * T.MiB)
    finally:
        if saved is None:
            del os.environ["ASAN_OPTIONS"]
        else:
            os.environ["ASAN_OPTIONS"] = saved
    big = image["big"]
    size = image["sizes"][big]
    # Cache the blob first, so the reply runs at disk speed.
    st, _, body = T.http_request(d.port, "GET", f"/v2/test/img/blobs/{big}?ns=localhost:{reg.port}", timeout=60.0)
    T.check(st == 200 and len(body) == size, f"warm-up GET -> {st}")
    del body
    rss0 = rss_kib(d.proc.pid)
    raw = socket.create_connection((T.LOCALHOST, d.port), timeout=60.0)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.sendall(f"CONNECT localhost:{reg.port} HTTP/1.1\r\nHost: localhost:{reg.port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = raw.recv(1)
        T.check(chunk, "CONNECT answer cut")
        head += chunk
    T.check(head.startswith(b"HTTP/1.1 200"), f"CONNECT -> {head!r}")
    s = ssl.create_default_context(cafile=hj.ca).wrap_socket(raw, server_hostname="localhost")
    try:
        s.sendall(f"GET /v2/test/img/blobs/{big} HTTP/1.1\r\nHost: localhost:{reg.port}\r\n"
                  "Connection: close\r\n\r\n".encode())
        time.sleep(3.0)
        grown = rss_kib(d.proc.pid) - rss0
        data = bytearray()
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    hdr, _, body = bytes(data).partition(b"\r\n\r\n")
    T.log(f"slow client: dfdaemon RSS grew {grown} KiB while the client read nothing; "
          f"got {len(body)} of {size} B after the pause")
    T.check(hdr.startswith(b"HTTP/1.1 200"), f"reply head: {hdr[:200]!r}")
    T.check(len(body) == size, f"body cut: {len(body)} of {size} B")
    T.check("sha256:" + hashlib.sha256(body).hexdigest() == big, "body has the wrong digest")
    T.check(grown < 16 * 1024, f"dfdaemon buffered {grown} KiB for one stalled client (blob {size >> 10} KiB)")


if __name__ == "__main__":
    T.main([test_mirror_https_connect, test_mirror_https_slow_client_close])
