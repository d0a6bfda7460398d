#!/usr/bin/env python3
"""Registry mirror with a full disk: dfdaemon's piece store cannot write
(ENOSPC from pwrite, an LD_PRELOAD shim armed by a file the test creates).
The client still gets the right bytes, from the registry, through the same
access check; dfdaemon says why and counts it.  When the registry answers the
request for the rest wrong, the client's connection is cut: a short body,
never a complete wrong blob."""

import hashlib
import http.client
import http.server
import os
import re
import shutil
import subprocess
import threading

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


def hit_full_disk(d, digest):
    """Whether the daemon's download of digest failed on the full disk (a
    download can also finish before the test fills the disk: when its
    pieces arrived so that the prefix the client waits for came last)."""
    return f"{digest} failed: writing piece" in daemon_log(d)


TRIES = 3  # blobs to try for a disk filling mid-download


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
    M.make_oci_image(layout, SIZE, more=(SIZE,) * TRIES)
    image = M.push(env, reg, layout)
    a, *bs = sorted(image["layers"], key=lambda dg: image["sizes"][dg])[-1 - TRIES:]
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
    for b in bs:
        os.unlink(arm)
        path = f"/v2/test/img/blobs/{b}"
        st, h, body = get_blob(d.port, path, auth, first=(1 << 20, lambda: open(arm, "w").close()))
        T.check(st == 200, f"blob filling the disk -> {st}")
        T.check(len(body) == image["sizes"][b], f"{len(body)} B of {image['sizes'][b]}")
        T.check("sha256:" + hashlib.sha256(body).hexdigest() == b, "the blob from the mirror has the wrong digest")
        if hit_full_disk(d, b):
            break
        T.log("the download ended before the disk filled; again with another blob")
    else:
        T.check(False, f"no download met the full disk in {TRIES} tries")
    m = M.daemon_metrics(d)
    T.log("mirror counters: " + "; ".join(l for l in m.splitlines() if l.startswith("dfly_dfdaemon_mirror")))
    T.check(M.metric(m, "dfly_dfdaemon_mirror_resumed_total") == 1, f"resumed:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_aborted_total") == 0, f"aborted:\n{m}")
    T.check(reg.count("GET", "/blobs/" + b, 206) == 1, f"no Range GET for the rest: {reg.access()}")

    # Space again: the blob comes whole (P2P or relayed, but never short).
    os.unlink(arm)
    st, h, body = get_blob(d.port, path, auth)
    T.check(st == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == b, f"blob after the disk emptied -> {st}, {len(body)} B")


class BadRangeRegistry(http.server.ThreadingHTTPServer):
    """A registry that serves whole blobs right but answers Range requests
    wrong, each blob its own way (by BLOBS[digest]["mode"]):
      ignore   200 with the whole blob, as a server without Range support
      corrupt  206 with the right Content-Range and one byte flipped
      short    206 with the right headers, closed halfway through the body."""

    daemon_threads = True

    def __init__(self, blobs):
        self.blobs, self.ranges = blobs, []
        super().__init__((T.LOCALHOST, T.free_port()), BadRangeHandler)

    def handle_error(self, request, client_address):
        pass  # dfdaemon drops the connection of an answer it refuses: expected


class BadRangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _blob(self):
        m = re.fullmatch(r"/v2/test/img/blobs/(sha256:[0-9a-f]{64})", self.path.split("?", 1)[0])
        return (m.group(1), self.server.blobs.get(m.group(1))) if m else (None, None)

    def _head(self, code, length, extra=()):
        self.send_response(code)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self):
        dg, b = self._blob()
        if self.path.startswith("/v2/") and self.path.rstrip("/") == "/v2":
            self._head(200, 0)
        elif not b:
            self._head(404, 0)
        else:
            self._head(200, len(b["data"]), [("Docker-Content-Digest", dg)])

    def do_GET(self):
        dg, b = self._blob()
        if not b:
            self._head(404, 0)
            return
        data, rng = b["data"], self.headers.get("Range")
        if not rng:
            self._head(200, len(data), [("Docker-Content-Digest", dg)])
            self.wfile.write(data)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
        self.server.ranges.append((dg, start))
        rest = data[start:]
        cr = [("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")]
        if b["mode"] == "ignore":
            self._head(200, len(data))
            self.wfile.write(data)
        elif b["mode"] == "corrupt":
            self._head(206, len(rest), cr)
            self.wfile.write(rest[:-2] + bytes([rest[-2] ^ 0x40]) + rest[-1:])
        else:
            self._head(206, len(rest), cr)
            self.wfile.write(rest[:len(rest) // 2])
            self.wfile.flush()
            self.close_connection = True


@T.timeout(180)
def test_mirror_disk_full_bad_registry(env):
    """The disk fills mid-blob and the registry answers the Range request
    for the rest wrong (ignores the Range, corrupts a byte, or closes
    early): each time the client's connection is cut before the blob's last
    byte (it sees a short body, never a complete wrong blob),
    mirror_aborted_total counts it and mirror_resumed_total does not."""
    blobs = {}
    reg = BadRangeRegistry(blobs)
    th = threading.Thread(target=reg.serve_forever, daemon=True)
    th.start()
    try:
        arm = env.path("disk-full")
        sn = env.supernode()
        d = env.dfdaemon(sn.addr, extra=["--registry", f"http://{T.LOCALHOST}:{reg.server_address[1]}",
                                         "--totallimit", "4M"], environ=shim_env(env, arm))
        for n, mode in enumerate(("ignore", "corrupt", "short"), 1):
            for _ in range(TRIES):
                if os.path.exists(arm):
                    os.unlink(arm)
                blobs.clear()  # one blob at a time in memory
                data = os.urandom(8 * T.MiB)
                dg = "sha256:" + hashlib.sha256(data).hexdigest()
                b = blobs[dg] = {"data": data, "mode": mode}
                got = None
                try:
                    st, _, body = get_blob(d.port, f"/v2/test/img/blobs/{dg}", "Basic eDp5",
                                           first=(1 << 20, lambda: open(arm, "w").close()))
                    got = len(body)
                    T.check(body == data, f"{mode}: a complete reply with the wrong bytes")
                except http.client.IncompleteRead as e:
                    T.log(f"{mode}: cut after {(1 << 20) + len(e.partial)} of {len(data)} B")
                if hit_full_disk(d, dg):
                    break
                T.log("the download ended before the disk filled; again with another blob")
            else:
                T.check(False, f"{mode}: no download met the full disk in {TRIES} tries")
            T.check(got is None, f"{b['mode']}: the client got a complete reply of {got} B")
            T.check(any(r[0] == dg for r in reg.ranges), f"{b['mode']}: no Range request: {reg.ranges}")
            m = M.daemon_metrics(d)
            T.check(M.metric(m, "dfly_dfdaemon_mirror_aborted_total") == n, f"{b['mode']}: aborted:\n{m}")
            T.check(M.metric(m, "dfly_dfdaemon_mirror_resumed_total") == 0, f"{b['mode']}: resumed:\n{m}")
        T.check("does not match" in daemon_log(d) and "answered the rest with HTTP 200" in daemon_log(d),
                f"the log does not say why:\n{daemon_log(d)[-3000:]}")
    finally:
        reg.shutdown()
        reg.server_close()
        th.join(10.0)


if __name__ == "__main__":
    T.main([test_mirror_disk_full, test_mirror_disk_full_bad_registry])
