#!/usr/bin/env python3
"""Registry mirror in front of a registry with token (Bearer) auth, as Docker
Hub has: docker-registry with `auth: token` and tokenserver.py as its realm
(JWTs signed RS256, the signing certificate in the registry's
rootcertbundle).  Clients do the token dance with the token server
themselves; dfdaemon only carries their Bearer token to the registry (the
access check) and to the seed."""

import re

import dflytest as T
import mirrorlib as M

BIG = 30 * T.MiB



def challenge_fields(value):
    return dict(re.findall(r'(\w+)="([^"]*)"', value))


@T.timeout(300)
def test_mirror_token_auth(env):
    """Two skopeo pulls with credentials through two dfdaemons: each does
    the token dance, the blobs come by P2P (the registry served the big
    layer once, to the seed, with a client's token).  Without a token, with
    an anonymous token (no access) or a forged one, the registry's 401 and
    its `WWW-Authenticate: Bearer` challenge reach the client unchanged,
    before and after the layer is in the P2P cache; skopeo without
    credentials fails.  curl's own token dance through the mirror works."""
    ts = M.TokenServer(env).start()
    reg = M.Registry(env, token=ts).start()
    layout = env.mkdir("oci")
    M.make_oci_image(layout, BIG)
    image = M.push(env, reg, layout)
    big = image["big"]
    path = f"/v2/test/img/blobs/{big}"
    sn = env.supernode()
    ds = [env.dfdaemon(sn.addr, extra=["--registry", reg.url]) for _ in range(2)]

    def refused(port, hdrs):
        st, h, body = T.http_request(port, "GET", path, headers=hdrs, timeout=30.0)
        return st, h.get("www-authenticate"), body

    anon = "Bearer " + ts.get("repository:test/img:pull")
    forged = anon[:-8] + ("AAAAAAAA" if not anon.endswith("AAAAAAAA") else "BBBBBBBB")
    cases = {"no token": {}, "anonymous token": {"Authorization": anon},
             "forged token": {"Authorization": forged}}

    def check_refusals(when):
        for what, hdrs in cases.items():
            want = refused(reg.port, hdrs)
            got = refused(ds[0].port, hdrs)
            T.check(want[0] == 401 and want[1] and want[1].startswith("Bearer "),
                    f"registry, {what}: {want[0]} {want[1]}")
            T.check(got[0] == 401, f"{when}, {what}: mirror -> {got[0]}")
            T.check(got[1] == want[1], f"{when}, {what}: challenge changed: {got[1]!r} != {want[1]!r}")
            T.check(got[2] == want[2], f"{when}, {what}: body changed: {got[2][:200]!r}")
        return want[1]

    check_refusals("uncached")
    ch = challenge_fields(refused(reg.port, {})[1])
    T.check(ch.get("realm") == ts.realm and ch.get("service") == ts.SERVICE
            and ch.get("scope") == "repository:test/img:pull", f"challenge fields: {ch}")
    T.check(reg.count("GET", "/blobs/" + big, 200) == 0, "a refused request got the blob")

    creds = f"{reg.USER}:{reg.PASSWORD}"
    p2p = M.pull_all_p2p(env, ds, image, creds)
    gets = reg.count("GET", "/blobs/" + big, 200)
    users = [u for u, st, _ in ts.issued() if st == 200]
    T.log(f"token auth: 2 skopeo pulls, {len(users)} tokens issued ({users.count(reg.USER)} to {reg.USER}); "
          f"registry served the {BIG >> 20} MiB layer {gets} time(s); mirrors sent {p2p} B from P2P")
    T.check(users.count(reg.USER) >= 2, f"skopeo did not get tokens: {ts.issued()}")
    T.check(gets == 1, f"the registry served the big layer {gets} times (want 1): {reg.access()}")
    T.check(p2p >= 2 * BIG, f"P2P bytes sent {p2p} < 2 x {BIG}")

    # The layer is cached on both daemons now: refusals are unchanged.
    check_refusals("cached")
    m = M.daemon_metrics(ds[0])
    T.check(M.metric(m, "dfly_dfdaemon_mirror_denied_total") >= 6, f"denied counter:\n{m}")
    p = M.start_pull(env, ds[0].port, env.path("nocreds"))
    T.check(p.wait(120.0) not in (0, None), "a skopeo pull without credentials succeeded")

    # curl's token dance through the mirror: challenge, token, blob by P2P.
    M.need("curl")
    base = f"http://{T.LOCALHOST}:{ds[1].port}"
    rc, out, err = env.run(["curl", "-sS", "-o", "/dev/null", "-D", "-", base + path])
    T.check(rc == 0 and " 401" in out.splitlines()[0], f"curl without a token: {rc} {out} {err}")
    m = re.search(r"(?im)^www-authenticate: Bearer (.*?)\r?$", out)
    T.check(m is not None, f"no Bearer challenge: {out}")
    f = challenge_fields(m.group(1))
    rc, tok, err = env.run(["curl", "-sS", "-f", "-u", creds, "-G", f["realm"], "--data-urlencode",
                            f"service={f['service']}", "--data-urlencode", f"scope={f['scope']}"])
    T.check(rc == 0, f"curl token request: {err}")
    tok = __import__("json").loads(tok)["token"]
    before = M.metric(M.daemon_metrics(ds[1]), "dfly_dfdaemon_mirror_p2p_total")
    out = env.path("curl-big.bin")
    rc, _, err = env.run(["curl", "-sS", "-f", "-H", f"Authorization: Bearer {tok}", "-o", out, base + path],
                         timeout=120.0)
    T.check(rc == 0, f"curl with the token: {err}")
    T.check("sha256:" + T.file_hash(out) == big, "blob by curl has the wrong digest")
    T.check(M.metric(M.daemon_metrics(ds[1]), "dfly_dfdaemon_mirror_p2p_total") == before + 1, "curl's blob not by P2P")
    T.check(reg.count("GET", "/blobs/" + big, 200) == 1, f"registry: {reg.access()}")


if __name__ == "__main__":
    T.main([test_mirror_token_auth])
