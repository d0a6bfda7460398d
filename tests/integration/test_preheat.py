#!/usr/bin/env python3
"""Preheat on the supernode (POST /preheats, Dragonfly 1.x's shape, which
Harbor's preheat policies call): the supernode resolves an image's manifest
(an OCI index to every platform's manifest, or to one platform) at a real
Docker Distribution registry and seeds the config and every layer as the very
tasks dfdaemon's mirror registers, so the first pull through a dfdaemon reads
no layer bytes from the registry.  Failures (a missing tag) end FAILED with
the registry's status; malformed requests get 400, unknown ids 404."""

import hashlib
import json
import os
import time

import dflytest as T
import mirrorlib as M

def preheat(sn, body, want=(201,)):
    st, doc = sn.api("POST", "/preheats", body)
    T.check(st in want and isinstance(doc, dict) and len(doc.get("ID", "")) == 64,
            f"POST /preheats {body} -> {st} {doc}")
    return doc["ID"]


def wait_preheat(sn, pid, timeout=120.0):
    """Polls GET /preheats/<id> until it is finished; returns the last answer."""
    last = {}

    def done():
        nonlocal last
        st, doc = sn.api("GET", f"/preheats/{pid}")
        T.check(st == 200, f"GET /preheats/{pid} -> {st} {doc}")
        T.check(doc["status"] in ("WAITING", "RUNNING", "SUCCESS", "FAILED"), f"status: {doc}")
        last = doc
        return doc["status"] in ("SUCCESS", "FAILED")
    T.wait_for(done, timeout, interval=0.1, what=f"preheat {pid[:12]} to finish", proc=sn.proc)
    return last


def blob_gets(reg, digests, since=0):
    """Blob GETs the registry answered with bytes (2xx) for these digests,
    among its access-log entries from index `since` on."""
    return [(m, p, s) for m, p, s in reg.access()[since:]
            if m == "GET" and 200 <= s < 300 and any(p.endswith("/blobs/" + d) for d in digests)]


def make_index_layout(layout):
    """An OCI layout whose tag "1" is an index of two images, linux/amd64 and
    linux/arm64, each with its own config and two layers.  Returns
    {"amd64": [blob digests], "arm64": [...]} as written (before the push)."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    entries, out = [], {}
    for arch in ("amd64", "arm64"):
        layers = [M._tar([(f"etc/{arch}-{i}.bin", os.urandom(300000 + i))]) for i in range(2)]
        descs = [dict(M._blob(layout, l), mediaType=M.OCI_LAYER) for l in layers]
        config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]}},
                            sort_keys=True).encode()
        cdesc = dict(M._blob(layout, config), mediaType=M.OCI_CONFIG)
        man = json.dumps({"schemaVersion": 2, "mediaType": M.OCI_MANIFEST, "config": cdesc,
                          "layers": descs}, sort_keys=True).encode()
        entries.append(dict(M._blob(layout, man), mediaType=M.OCI_MANIFEST,
                            platform={"os": "linux", "architecture": arch}))
        out[arch] = [cdesc["digest"]] + [d["digest"] for d in descs]
    index = json.dumps({"schemaVersion": 2, "mediaType": M.OCI_INDEX, "manifests": entries},
                       sort_keys=True).encode()
    idesc = dict(M._blob(layout, index), mediaType=M.OCI_INDEX,
                 annotations={"org.opencontainers.image.ref.name": "1"})
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [idesc]}, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return out


@T.timeout(300)
def test_preheat_image_then_pull(env):
    """Preheat an image (OCI manifest, three layers, one of 20 MiB), wait for
    SUCCESS, then pull it with skopeo through a dfdaemon mirror: every blob
    checks, and the registry served no blob bytes during the pull (only the
    mirror's HEAD access checks)."""
    reg = M.Registry(env).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, 20 * T.MiB)
    image = M.push(env, reg, layout)
    blobs = image["layers"] + [image["config"]]
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", reg.url])

    before = len(reg.access())
    pid = preheat(sn, {"type": "image", "url": f"{reg.url}/v2/test/img/manifests/1",
                       "headers": {"X-Preheat-Test": "1"}})
    doc = wait_preheat(sn, pid)
    T.check(doc["status"] == "SUCCESS", f"preheat ended {doc}")
    T.check(doc["errorMsg"] == "" and doc["startTime"] <= doc["finishTime"], f"times/error: {doc}")
    T.check(doc["blobs"] == len(blobs) == doc["blobsDone"], f"blob count {doc} vs {len(blobs)}")
    seeded = blob_gets(reg, blobs, before)
    T.check(len(seeded) == len(blobs), f"the seed fetched {seeded}, want each of {len(blobs)} blobs once")
    st, lst = sn.api("GET", "/preheats")
    T.check(st == 200 and [p["ID"] for p in lst] == [pid], f"GET /preheats -> {st} {lst}")
    T.check(M.metric(sn.metrics(), 'dfly_supernode_preheats{status="success"}') == 1, "preheat metric")

    mark = len(reg.access())
    t0 = time.monotonic()
    p = M.start_pull(env, d.port, env.path("pull"))
    T.check(p.wait(120.0) == 0, f"skopeo pull through the mirror failed:\n{p.tail()}")
    M.check_pulled(env.path("pull"), image)
    during = reg.access()[mark:]
    T.log(f"pull after preheat: {time.monotonic() - t0:.1f}s; registry saw {during}")
    T.check(not blob_gets(reg, blobs, mark), f"the registry served blob bytes during the pull: {during}")
    T.check(sum(1 for m, p_, s in during if m == "HEAD" and "/blobs/" in p_) >= len(blobs),
            f"expected the mirror's access checks (HEAD) per blob: {during}")
    m = T.http_request(d.port, "GET", "/metrics")[2].decode()
    T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
            f"the daemon read from the registry itself:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")

    # The same preheat again is a new run that finds every seed complete.
    pid2 = preheat(sn, {"type": "image", "url": f"{reg.url}/v2/test/img/manifests/1"})
    T.check(pid2 == pid, "the same preheat got another id")
    T.check(wait_preheat(sn, pid)["status"] == "SUCCESS", "re-run of a done preheat")


@T.timeout(300)
def test_preheat_index_platforms(env):
    """An OCI index with linux/amd64 and linux/arm64: a preheat with
    "platform": "linux/arm64" seeds that platform's blobs only; one without a
    platform seeds both; then every blob GET through the mirror is served
    without blob bytes from the registry."""
    reg = M.Registry(env).start()
    layout = env.mkdir("oci")
    make_index_layout(layout)
    rc, p = M.skopeo(env, ["copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:1",
                           f"docker://{reg.addr}/multi/img:1"])
    T.check(rc == 0, f"skopeo push of the index failed rc={rc}:\n{p.tail()}")
    plat = M.registry_index(reg, "multi/img", "1")
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", reg.url])
    url = f"{reg.url}/v2/multi/img/manifests/1"

    mark = len(reg.access())
    pid = preheat(sn, {"type": "image", "url": url, "platform": "linux/arm64"})
    doc = wait_preheat(sn, pid)
    T.check(doc["status"] == "SUCCESS" and doc["blobs"] == len(plat["arm64"]), f"arm64 preheat: {doc}")
    T.check(len(blob_gets(reg, plat["arm64"], mark)) == len(plat["arm64"]), f"arm64 blobs: {reg.access()[mark:]}")
    T.check(not blob_gets(reg, plat["amd64"], mark), f"amd64 blobs fetched: {reg.access()[mark:]}")

    pid_all = preheat(sn, {"type": "image", "url": url})
    T.check(pid_all != pid, "platform must be part of the preheat id")
    doc = wait_preheat(sn, pid_all)
    T.check(doc["status"] == "SUCCESS" and doc["blobs"] == len(plat["arm64"]) + len(plat["amd64"]),
            f"all-platform preheat: {doc}")
    T.check(len(blob_gets(reg, plat["amd64"], mark)) == len(plat["amd64"]), f"amd64: {reg.access()[mark:]}")
    T.check(len(blob_gets(reg, plat["arm64"], mark)) == len(plat["arm64"]), "arm64 blobs fetched twice")

    def get_all(daemon):
        for arch, digests in sorted(plat.items()):
            for dg in digests:
                st, h, body = T.http_request(daemon.port, "GET", f"/v2/multi/img/blobs/{dg}", timeout=60.0)
                T.check(st == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == dg,
                        f"{arch} blob {dg} through the mirror -> {st}, {len(body)} B")
    every = plat["amd64"] + plat["arm64"]
    mark = len(reg.access())
    get_all(d)
    T.check(not blob_gets(reg, every, mark), f"the registry served blob bytes after the preheat: {reg.access()[mark:]}")

    # Past the supernode's 10 s freshness window a Register revalidates the
    # cached blob (conditional GET): the registry answers 304, still no bytes.
    time.sleep(11.0)
    d2 = env.dfdaemon(sn.addr, extra=["--registry", reg.url])
    mark = len(reg.access())
    get_all(d2)
    later = reg.access()[mark:]
    T.check(not blob_gets(reg, every, mark), f"the registry served blob bytes on revalidation: {later}")
    revalidated = sum(1 for m, p_, st in later if m == "GET" and st == 304)
    T.log(f"after the freshness window: {revalidated} conditional GET(s) answered 304 for {len(every)} blobs")
    T.check(revalidated == len(every), f"expected one 304 revalidation per blob: {later}")


def check_p2p_pull(env, reg, d, image, creds, out):
    """A skopeo pull with credentials through dfdaemon d: every blob checks,
    the registry served no blob bytes meanwhile (only the mirror's HEAD
    access checks, and conditional GETs it answered without a body), and
    dfdaemon's counters show every blob by P2P, nothing from the registry.
    Returns the registry's access-log entries of the pull."""
    blobs = image["layers"] + [image["config"]]
    mark = len(reg.access())
    before = M.metric(M.daemon_metrics(d), "dfly_dfdaemon_mirror_p2p_total") or 0
    p = M.start_pull(env, d.port, env.path(out), creds=creds)
    T.check(p.wait(120.0) == 0, f"skopeo pull with credentials through the mirror failed:\n{p.tail()}")
    M.check_pulled(env.path(out), image)
    during = reg.access()[mark:]
    T.check(not blob_gets(reg, blobs, mark), f"the registry served blob bytes during the pull: {during}")
    T.check(sum(1 for m, p_, s in during if m == "HEAD" and "/blobs/" in p_ and s == 200) >= len(blobs),
            f"expected the mirror's access checks (HEAD) per blob: {during}")
    m = M.daemon_metrics(d)
    T.check((M.metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
            f"the daemon read from the registry itself:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")
    T.check(M.metric(m, "dfly_dfdaemon_mirror_p2p_total") - before >= len(blobs), f"blobs not by P2P:\n{m}")
    return during


def token_setup(env, big, lifetime=None):
    """A registry with token auth (tokens living `lifetime` seconds) holding
    test/img:1 with a layer of `big` bytes, a supernode and a dfdaemon whose
    --registry is that registry: (token server, registry, image, blobs,
    supernode, dfdaemon)."""
    ts = M.TokenServer(env, lifetime=lifetime).start()
    reg = M.Registry(env, token=ts).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, big)
    image = M.push(env, reg, layout)
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", reg.url])
    return ts, reg, image, image["layers"] + [image["config"]], sn, d


@T.timeout(240)
def test_preheat_token_registry(env):
    """A registry with token (Bearer) auth: a preheat without credentials
    gets an anonymous token from the realm, which grants nothing, and ends
    FAILED with the registry's 401; with Basic credentials in its headers it
    gets a token for them and SUCCEEDS; a skopeo pull with credentials
    through a dfdaemon then reads no blob bytes from the registry."""
    ts, reg, image, blobs, sn, d = token_setup(env, 4 * T.MiB)
    url = f"{reg.url}/v2/test/img/manifests/1"

    issued = len(ts.issued())
    pid = preheat(sn, {"type": "image", "url": url})
    doc = wait_preheat(sn, pid)
    T.check(doc["status"] == "FAILED" and "401" in doc["errorMsg"] and "token from its realm" in doc["errorMsg"],
            f"preheat without credentials: {doc}")
    T.check([(u, st) for u, st, _ in ts.issued()[issued:]] == [("-", 200)],
            f"expected one anonymous token request: {ts.issued()[issued:]}")
    T.check(not blob_gets(reg, blobs), f"a refused preheat fetched blobs: {reg.access()}")

    issued, mark = len(ts.issued()), len(reg.access())
    T.check(preheat(sn, {"type": "image", "url": url, "headers": {"Authorization": reg.basic()}}) == pid,
            "the same preheat with credentials got another id")
    doc = wait_preheat(sn, pid)
    T.check(doc["status"] == "SUCCESS" and doc["blobs"] == len(blobs) == doc["blobsDone"],
            f"preheat with credentials: {doc}")
    T.check([(u, st) for u, st, _ in ts.issued()[issued:]] == [(reg.USER, 200)],
            f"expected one token for {reg.USER}: {ts.issued()[issued:]}")
    seeded = blob_gets(reg, blobs, mark)
    T.check(len(seeded) == len(blobs), f"the seed fetched {seeded}, want each of {len(blobs)} blobs once")

    check_p2p_pull(env, reg, d, image, f"{reg.USER}:{reg.PASSWORD}", "pull")


@T.timeout(240)
def test_preheat_token_expired(env):
    """The seed revalidates a cached blob (past the 10 s freshness window)
    with the headers of the registrant that asked for it, not with the first
    one's: tokens live 5 s here, so the preheat's token has expired when a
    pull comes.  A dfget bringing an expired token is refused (the registry's
    401, no bytes), and that refusal does not stick to the task: a skopeo
    pull with credentials right after gets every blob by P2P, revalidated
    with its own token (304), no blob bytes from the registry."""
    lifetime = 5
    ts, reg, image, blobs, sn, d = token_setup(env, 2 * T.MiB, lifetime)
    stale = reg.credentials()  # a token for test/img, expired by the time it is used
    t0 = time.monotonic()

    pid = preheat(sn, {"type": "image", "url": f"{reg.url}/v2/test/img/manifests/1",
                       "headers": {"Authorization": reg.basic()}})
    doc = wait_preheat(sn, pid)
    T.check(doc["status"] == "SUCCESS" and doc["blobs"] == len(blobs), f"preheat: {doc}")

    # Past the freshness window and every token issued so far.
    time.sleep(max(0.0, 11.0 - (time.monotonic() - t0)))
    st, _, _ = T.http_request(reg.port, "HEAD", f"/v2/test/img/blobs/{image['big']}", headers={"Authorization": stale})
    T.check(st == 401, f"the registry still accepts a token older than its {lifetime} s lifetime: {st}")

    mark = len(reg.access())
    r = env.dfget(f"{reg.url}/v2/test/img/blobs/{image['big']}", env.path("stale.bin"), node=sn.addr,
                  extra=["--digest", image["big"], "--header", f"Authorization: {stale}"], timeout=60)
    T.check(r.rc != 0 and "401" in r.message() and not os.path.exists(env.path("stale.bin")),
            f"dfget with an expired token was not refused: {r.describe()}")
    refused = reg.access()[mark:]
    T.check(not blob_gets(reg, blobs, mark) and any(m == "GET" and st == 401 for m, _, st in refused),
            f"expected the seed's revalidation refused (401), no bytes: {refused}")

    during = check_p2p_pull(env, reg, d, image, f"{reg.USER}:{reg.PASSWORD}", "pull")
    revalidated = sum(1 for m, p_, st in during if m == "GET" and "/blobs/" in p_ and st == 304)
    T.log(f"after the token expired: dfget refused; the pull revalidated {revalidated} of {len(blobs)} blobs (304)")
    T.check(revalidated == len(blobs), f"expected one 304 revalidation per blob: {during}")
    T.check(not any(m == "GET" and "/blobs/" in p_ and st == 401 for m, p_, st in during),
            f"a revalidation used an expired token: {during}")


@T.timeout(180)
def test_preheat_tls_registry(env):
    """A registry over TLS with a private CA: without "rootCAs" the preheat
    fails on the certificate; with them (base64 PEM, as a Register's) it
    succeeds, and a dfdaemon trusting the same CA (--registry-host ... ca=)
    then serves every blob, named with ?ns=, without blob bytes from the
    registry."""
    import base64
    ca = M.TestCA(env)
    reg = M.Registry(env, tls=ca).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, 2 * T.MiB)
    image = M.push(env, reg, layout)
    blobs = image["layers"] + [image["config"]]
    sn = env.supernode()
    d = env.dfdaemon(sn.addr, extra=["--registry", "http://127.0.0.1:9", "--registry-host", f"{reg.addr} ca={ca.ca}"])
    url = f"https://{reg.addr}/v2/test/img/manifests/1"
    pid = preheat(sn, {"type": "image", "url": url})
    doc = wait_preheat(sn, pid)
    T.check(doc["status"] == "FAILED" and "certificate" in doc["errorMsg"].lower(), f"untrusted CA: {doc}")
    with open(ca.ca, "rb") as f:
        pem = base64.b64encode(f.read()).decode()
    T.check(preheat(sn, {"type": "image", "url": url, "rootCAs": [pem]}) == pid, "same preheat, another id")
    doc = wait_preheat(sn, pid)
    T.check(doc["status"] == "SUCCESS" and doc["blobs"] == len(blobs), f"with rootCAs: {doc}")
    mark = len(reg.access())
    for dg in blobs:
        st, _, body = T.http_request(d.port, "GET", f"/v2/test/img/blobs/{dg}?ns={reg.addr}", timeout=60.0)
        T.check(st == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == dg, f"blob {dg} -> {st}")
    T.check(not blob_gets(reg, blobs, mark), f"the registry served blob bytes: {reg.access()[mark:]}")


@T.timeout(180)
def test_preheat_file(env):
    """Type "file" (nginx origin, a filtered query key): the preheat seeds the
    task a Register of that url and filter gets; a dfget afterwards reads
    nothing from the origin.  A second POST while it runs joins it (200, same
    ID); a missing file ends FAILED with the origin's 404."""
    o = env.origin(slow_rate="8m")
    info = o.add_file("f.bin", 12 * T.MiB)
    sn = env.supernode()
    url = o.url("f.bin", "slow") + "?token=abc"
    pid = preheat(sn, {"type": "file", "url": url, "filter": "token"})
    pid2 = preheat(sn, {"type": "file", "url": o.url("f.bin", "slow") + "?token=other", "filter": "token"},
                   want=(200,))
    T.check(pid2 == pid, "a running preheat was not joined")
    doc = wait_preheat(sn, pid)
    T.check(doc["status"] == "SUCCESS" and "token" not in doc["url"], f"file preheat: {doc}")
    served = o.bytes_served(url)
    T.check(served == info.size, f"the origin served {served} B for the preheat, want {info.size}")
    r = env.dfget(o.url("f.bin", "slow") + "?token=xyz", env.path("f.bin"), node=sn.addr,
                  extra=["--filter", "token"], timeout=90)
    r.expect_ok(info)
    T.check(r.json["bytes_from_origin"] == 0 and o.bytes_served(url) == info.size,
            f"dfget after the preheat read the origin: {r.describe()}")
    gone = preheat(sn, {"type": "file", "url": o.url("nope.bin", "missing")})
    doc = wait_preheat(sn, gone)
    T.check(doc["status"] == "FAILED" and "404" in doc["errorMsg"], f"missing file: {doc}")


@T.timeout(120)
def test_preheat_errors(env):
    """A missing tag ends FAILED with the registry's 404 in errorMsg; a dead
    registry FAILED too; malformed bodies are 400; unknown ids 404; DELETE
    forgets; /_ping answers as Dragonfly's."""
    reg = M.Registry(env).start()
    sn = env.supernode()
    st, _, body = sn.request("GET", "/_ping")
    T.check(st == 200 and body == b"OK", f"/_ping -> {st} {body!r}")

    pid = preheat(sn, {"type": "image", "url": f"{reg.url}/v2/test/none/manifests/nope"})
    doc = wait_preheat(sn, pid)
    T.check(doc["status"] == "FAILED" and "404" in doc["errorMsg"] and "/v2/test/none/manifests/nope" in doc["errorMsg"],
            f"missing tag: {doc}")
    T.check("finishTime" in doc, f"no finishTime: {doc}")
    dead = preheat(sn, {"type": "image", "url": "http://127.0.0.1:9/v2/a/manifests/1"})
    doc = wait_preheat(sn, dead)
    T.check(doc["status"] == "FAILED" and "127.0.0.1:9" in doc["errorMsg"], f"dead registry: {doc}")
    T.check(M.metric(sn.metrics(), 'dfly_supernode_preheats{status="failed"}') == 2, "failed metric")

    bad = [b"not json", b"[]", b"{}",
           {"type": "image"},
           {"type": "video", "url": f"{reg.url}/v2/a/manifests/1"},
           {"type": "image", "url": "ftp://x/v2/a/manifests/1"},
           {"type": "image", "url": f"{reg.url}/v2/a/blobs/sha256:00"},
           {"type": "image", "url": f"{reg.url}/v2/a/manifests/1", "platform": "linux"},
           {"type": "image", "url": f"{reg.url}/v2/a/manifests/1", "headers": {"A": 1}},
           {"type": "image", "url": f"{reg.url}/v2/a/manifests/1", "headers": {"A": "x\r\nB: y"}},
           {"type": "image", "url": f"{reg.url}/v2/a/manifests/1", "headers": ["A: b"]},
           {"type": "file", "url": "http://x/" + "a" * 9000},
           {"type": "file", "url": "http://127.0.0.1/f", "platform": "linux/amd64"}]
    for b in bad:
        st, doc = sn.api("POST", "/preheats", b)
        T.check(st == 400 and doc.get("error") == "bad_request", f"POST {str(b)[:80]} -> {st} {doc}")
    st, doc = sn.api("GET", "/preheats/" + "0" * 64)
    T.check(st == 404, f"unknown id -> {st} {doc}")
    st, doc = sn.api("GET", "/preheats/xyz")
    T.check(st == 404, f"malformed id -> {st}")
    st, _, _ = sn.request("PUT", "/preheats")
    T.check(st == 405, f"PUT /preheats -> {st}")
    st, doc = sn.api("DELETE", f"/preheats/{pid}")
    T.check(st == 200, f"DELETE -> {st} {doc}")
    T.check(sn.api("GET", f"/api/v1/preheats/{pid}")[0] == 404, "deleted preheat still there")
    T.check(sn.api("GET", f"/api/v1/preheats/{dead}")[0] == 200, "/api/v1 prefix")


if __name__ == "__main__":
    T.main([test_preheat_image_then_pull, test_preheat_index_platforms, test_preheat_token_registry,
            test_preheat_token_expired, test_preheat_tls_registry, test_preheat_file, test_preheat_errors])
