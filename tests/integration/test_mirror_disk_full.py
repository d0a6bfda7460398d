#!/usr/bin/env python3
"""Registry mirror with a full disk: dfdaemon's piece store cannot write
(ENOSPC from pwrite, an LD_PRELOAD shim armed by a file the test creates).
The client still gets the right bytes, from the registry, through the same
access check; dfdaemon says why and counts it."""

import hashlib
import http.client
import os
import shutil
import subprocess

import dflytest as T
import mirrorlib as M

SIZE = 24 * T.MiB


def shim_env(env, arm):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise T.Skip("no C compiler for the pwrite shim")
    shim = env.path("enospc.so")
    subprocess.run([cc, "-shared", "-fPIC", "-o", shim, os.path.join(T.HERE, "shims", "enospc.c"), "-ldl"],
                   check=True)
    return dict(os.environ, LD_PRELOAD=shim, DF_FAULT_PWRITE_FROM="0", DF_FAULT_PWRITE_ARM=arm,
                ASAN_OPTIONS=(os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0").lstrip(":"))


def get_blob(port, path, auth, first=None):
    """GET path; after `first` body bytes, calls first() and reads on.
    Returns (status, headers, body); a body cut short raises IncompleteRead."""
    conn = http.client.HTTPConnection(T.LOCALHOST, port, timeout=60.0)
    try:
        conn.request("GET", path, headers={"Authorization": auth})
        r = conn.getresponse()
        body = b""
        if first:
            n, hook = first
            body = r.read(n)
            hook()
        body += r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


def daemon_log(d):
    return d.proc.stdout() + d.proc.stderr()


@T.timeout(180)
def test_mirror_disk_full(env):
    """(a) The disk is full before the blob starts: the client's GET is
    relayed to the registry (200, whole and right blob; without credentials
    still the registry's 401), the log names the full disk and
    mirror_fallbacks_total counts it.  (b) The disk fills once the client
    has received a prefix of a slowly downloading blob: the reply goes on
    from the registry with a Range request for the rest (the registry
    answers 206), the client gets the whole blob with the right digest,
    nothing is cut (mirror_aborted_total 0) and mirror_resumed_total counts
    it.  Afterwards, with space again, the blob is served whole."""
    reg = M.Registry(env, auth=True).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, SIZE, more=(SIZE,))
    image = M.push(env, reg, layout)
    a, b = sorted(image["layers"], key=lambda dg: image["sizes"][dg])[-2:]
    arm = env.path("disk-full")
    sn = env.supernode()
    # Slow enough (8 MiB/s) that the client holds a prefix well before the end.
    d = env.dfdaemon(sn.addr, extra=["--registry", reg.url, "--totallimit", "8M"],
                     environ=shim_env(env, arm))
    auth = reg.basic()

    # (a) full from the start
    open(arm, "w").close()
    path = f"/v2/test/img/blobs/{a}"
    st, h, body = get_blob(d.port, path, auth)
    T.check(st == 200, f"blob with a full disk -> {st}")
    T.check(len(body) == image["sizes"][a] and "sha256:" + hashlib.sha256(body).hexdigest() == a,
            f"blob with a full disk: {len(body)} B, wrong bytes")
    st, _, _ = T.http_request(d.port, "GET", path, timeout=30.0)
    T.check(st == 401, f"no credentials with a full disk -> {st} (the access check was skipped)")
    m = M.daemon_metrics(d)
    T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 1, f"fallbacks:\n{m}")
    T.check(reg.count("GET", "/blobs/" + a, 200) >= 1, f"registry: {reg.access()}")
    log = daemon_log(d)
    T.check("full" in log and "relaying" in log, f"no clear line about the full disk:\n{log[-3000:]}")

    # (b) fills after the client has 1 MiB
    os.unlink(arm)
    path = f"/v2/test/img/blobs/{b}"
    st, h, body = get_blob(d.port, path, auth, first=(1 << 20, lambda: open(arm, "w").close()))
    T.check(st == 200, f"blob filling the disk -> {st}")
    T.check(len(body) == image["sizes"][b], f"{len(body)} B of {image['sizes'][b]}")
    T.check("sha256:" + hashlib.sha256(body).hexdigest() == b, "the blob continued from the registry has the wrong digest")
    m = M.daemon_metrics(d)
    T.log("mirror counters: " + "; ".join(l for l in m.splitlines() if l.startswith("dfly_dfdaemon_mirror")))
    T.check(M.metric(m, "dfly_dfdaemon_mirror_resumed_total") == 1, f"resumed:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_aborted_total") == 0, f"aborted:\n{m}")
    T.check(reg.count("GET", "/blobs/" + b, 206) == 1, f"no Range GET for the rest: {reg.access()}")

    # Space again: the blob comes whole (P2P or relayed, but never short).
    os.unlink(arm)
    st, h, body = get_blob(d.port, path, auth)
    T.check(st == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == b, f"blob after the disk emptied -> {st}, {len(body)} B")


if __name__ == "__main__":
    T.main([test_mirror_disk_full])
