#!/usr/bin/env python3
"""HTTPS proxy mode: dfdaemon --http-proxy as curl's proxy for https:// URLs
(CONNECT).  A host listed with --hijack-host is TLS-terminated with a leaf
minted from the hijack CA and its blob GETs go through P2P; any other host
is a plain tunnel (the client talks TLS with the registry itself)."""

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


@T.timeout(300)
def test_mirror_https_connect(env):
    """curl --proxy dfdaemon https://localhost:PORT/v2/.../blobs/...: the
    blob bytes come by P2P (the seed fetched it; the daemon did not go to
    the registry), verified with the hijack CA (the registry's CA fails:
    the connection was intercepted); the manifest on the same connection is
    relayed; https://127.0.0.1:PORT (not listed) is tunnelled: only the
    registry's CA verifies it."""
    ca = M.TestCA(env)
    hj = M.TestCA(env, name="hijack-ca")
    reg = M.Registry(env, tls=ca).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, 6 * T.MiB)
    image = M.push(env, reg, layout)
    big = image["big"]
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", "http://127.0.0.1:9", "--http-proxy",
                                     "--hijack-host", rf"^localhost:{reg.port}$",
                                     "--hijack-ca-cert", hj.ca, "--hijack-ca-key", hj.ca_key,
                                     "--registry-host", f"localhost:{reg.port} ca={ca.ca}"])
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
    T.check(reg.count("GET", "/blobs/" + big) == 1, f"registry (one GET by the seed): {reg.access()}")
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
    T.check(reg.count("GET", "/blobs/" + big) == 2, f"registry: {reg.access()}")

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


if __name__ == "__main__":
    T.main([test_mirror_https_connect])
