#!/usr/bin/env python3
"""HTTPS proxy mode with a Go client: skopeo with HTTPS_PROXY=dfdaemon
pulling from a TLS registry.  Go never sends requests for 127.0.0.1 or
localhost through a proxy, so the registry is named registry.dfly.test,
which resolves to 127.0.0.1 in this script's private mount namespace
(mirrorlib.private_hosts).  dfdaemon intercepts the CONNECT (--hijack-host)
with a leaf from the hijack CA, which skopeo trusts (--src-cert-dir)."""

import os
import shutil

import dflytest as T
import mirrorlib as M

NAME = "registry.dfly.test"
BIG = 30 * T.MiB


def skopeo_proxy_pull(env, proxy_port, ref, out, cert_dir):
    e = dict(os.environ)
    e["HOME"] = env.mkdir("skopeo-home")
    e["HTTPS_PROXY"] = f"http://{T.LOCALHOST}:{proxy_port}"
    e["NO_PROXY"] = ""
    p = env.procs.start("skopeo", ["skopeo", "--insecure-policy", "copy", "--src-cert-dir", cert_dir,
                                   f"docker://{ref}", f"dir:{out}"], env=e)
    rc = p.wait(180.0)
    if rc is None:
        p.signal(9)
        p.wait(5.0)
    return rc, p


def cert_dir(env, name, ca):
    """A containers-certs.d(5) style directory trusting ca."""
    d = env.mkdir(name)
    shutil.copy(ca, os.path.join(d, "ca.crt"))
    return d


@T.timeout(300)
def test_mirror_https_proxy_skopeo(env):
    """skopeo through HTTPS_PROXY: the CONNECT to registry.dfly.test:PORT is
    intercepted, the blobs come by P2P (the seed read the big layer once,
    the daemon nothing itself), the image's digests check.  Trusting only
    the registry's CA, the same pull fails on the certificate: the
    connection really was intercepted."""
    M.need("skopeo")
    ca, hj, reg, image = M.tls_registry(env, BIG, names=[NAME])
    big, nblobs = image["big"], len(image["layers"]) + 1
    authority = f"{NAME}:{reg.port}"
    sn = env.supernode()
    conf = M.https_proxy_conf(env, authority, hj, ca.ca)
    d = env.dfdaemon(sn.addr, extra=["--config", conf, "--registry", "http://127.0.0.1:9"])
    ref = f"{authority}/test/img:1"
    out = env.path("pull")
    rc, p = skopeo_proxy_pull(env, d.port, ref, out, cert_dir(env, "certs-hijack", hj.ca))
    T.check(rc == 0, f"skopeo through HTTPS_PROXY failed rc={rc}:\n{p.tail()}")
    M.check_pulled(out, image)
    m = M.daemon_metrics(d)
    T.log(f"skopeo via HTTPS_PROXY: {M.metric(m, 'dfly_dfdaemon_mirror_connect_intercepted_total')} CONNECT(s) "
          f"intercepted, {M.metric(m, 'dfly_dfdaemon_mirror_intercepted_requests_total')} requests, "
          f"{M.metric(m, 'dfly_dfdaemon_mirror_p2p_bytes_total')} B by P2P")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_connect_intercepted_total") >= 1, f"not intercepted:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_connect_tunnels_total") == 0, f"tunnelled:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") == nblobs, f"blobs not by P2P:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_bytes_total") >= BIG, f"P2P bytes:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")
    T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
            f"the daemon fetched from the registry itself:\n{m}")
    T.check(reg.count("GET", "/blobs/" + big, 200) == 1, f"registry (one GET by the seed): {reg.access()}")

    rc, p = skopeo_proxy_pull(env, d.port, ref, env.path("pull2"), cert_dir(env, "certs-registry", ca.ca))
    T.check(rc not in (0, None) and "certificate" in p.stderr(),
            f"a pull trusting only the registry's CA: rc={rc} {p.tail()}")
    T.check(M.metric(M.daemon_metrics(d), "dfly_dfdaemon_mirror_connect_intercepted_total") >= 2, "not intercepted")


if __name__ == "__main__":
    M.private_hosts([NAME])
    T.main([test_mirror_https_proxy_skopeo])
