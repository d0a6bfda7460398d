#!/usr/bin/env python3
"""Registry mirror benchmark (loopback), driven by bench/mirror.sh.

A real Docker Distribution registry holds one image of several layers of
random bytes (nothing compresses or dedups).  Two measurements, each mode
measured in turn within every round (direct, dfly, then dfly, direct, ...):

pull   N skopeo clients copy the image at once (docker:// -> dir:), either
       straight from the registry (direct) or each through its own dfdaemon
       (dfly: a fresh supernode and N fresh dfdaemons per round, one per
       "host", each with its own home and ports; the client talks to its
       daemon's --listen port as a registry).  Recorded: the wall time until
       the last client is done and the mean client time, the bytes the
       registry sent for blob GETs (its access log), the daemons' counters
       (/metrics).  Every blob of every client is checked (size, sha256).
ttfb   curl of the largest layer, straight from the registry or through a
       cold dfdaemon (fresh supernode and daemon, nothing cached):
       time_starttransfer and time_total.

Processes are started through the integration tests' harness (dflytest):
stopped by PID at the end, on failure, Ctrl-C and SIGTERM, and killed with
this interpreter if it dies (PR_SET_PDEATHSIG).  Every wait is bounded.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import dflytest as T  # noqa: E402
import mirrorlib as M  # noqa: E402

REF = "bench/img:1"
PULL_TIMEOUT = 600.0
ACCESS_RE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-)')


def registry_log_offset(reg):
    return os.path.getsize(reg.proc.out_path)


def registry_blob_bytes(reg, offset):
    """(bytes, requests) of blob GETs in the registry's access log after offset."""
    with open(reg.proc.out_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    total = n = 0
    for m in ACCESS_RE.finditer(text):
        if m.group(1) == "GET" and "/blobs/" in m.group(2) and m.group(4) != "-":
            total += int(m.group(4))
            n += 1
    return total, n


def stop(procs, grace=5.0):
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        if p.wait(deadline - time.monotonic()) is None:
            p.signal(signal.SIGKILL)
            p.wait(2.0)


def pull_all(env, ports, tag):
    """N concurrent skopeo copies, client i from 127.0.0.1:ports[i].
    Returns (outdirs, seconds until the last one ended, mean seconds)."""
    M.need("skopeo")
    outs = [env.path(f"{tag}-{i}") for i in range(len(ports))]
    envs = []
    for i in range(len(ports)):
        e = dict(os.environ)
        e["HOME"] = env.mkdir(f"skopeo-home{i}")
        envs.append(e)
    t0 = time.monotonic()
    procs = [env.procs.start("skopeo", ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                                        f"docker://{T.LOCALHOST}:{port}/{REF}", f"dir:{out}"], env=e)
             for port, out, e in zip(ports, outs, envs)]
    deadline = t0 + PULL_TIMEOUT
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.01)
    late = [p for p in procs if p.poll() is None]
    if late:
        stop(late, grace=1.0)
        raise T.TestFailure(f"{len(late)} skopeo pull(s) did not end within {PULL_TIMEOUT:.0f}s")
    for i, p in enumerate(procs):
        T.check(p.poll() == 0, f"{tag} client {i}: skopeo rc={p.poll()}:\n{p.tail()}")
    times = [p.ended - t0 for p in procs]
    return outs, max(times), statistics.mean(times)


def verify(outs, blobs):
    """Every client holds every blob with the manifest's size and digest."""
    for out in outs:
        for digest, size in blobs.items():
            path = os.path.join(out, digest.split(":", 1)[1])
            T.check(os.path.isfile(path), f"{out} lacks blob {digest}")
            T.check(os.path.getsize(path) == size, f"{out}: {digest} has {os.path.getsize(path)} bytes, want {size}")
            T.check("sha256:" + T.file_hash(path) == digest, f"{out}: {digest} has another sha256")
        shutil.rmtree(out)


def daemon_metrics(d):
    st, _, body = T.http_request(d.port, "GET", "/metrics")
    T.check(st == 200, f"dfdaemon /metrics -> {st}")
    text = body.decode()

    def get(series):
        return M.metric(text, series) or 0
    return {"p2p": get("dfly_dfdaemon_mirror_p2p_total"),
            "direct": get("dfly_dfdaemon_mirror_direct_total"),
            "fallbacks": get("dfly_dfdaemon_mirror_fallbacks_total"),
            "shared": get("dfly_dfdaemon_mirror_shared_total"),
            "peer": get('dfly_dfdaemon_download_bytes_total{source="peer"}'),
            "supernode": get('dfly_dfdaemon_download_bytes_total{source="supernode"}'),
            "origin": get('dfly_dfdaemon_download_bytes_total{source="origin"}')}


def start_dfly(env, reg, n):
    sn = T.Supernode(env, extra=["--log-level", "warn"]).start()
    ds = [T.Dfdaemon(env, sn.addr, extra=["--registry", reg.url, "--log-level", "warn"]).start()
          for _ in range(n)]
    return sn, ds


def stop_dfly(sn, ds):
    stop([d.proc for d in ds] + [sn.proc])
    for d in ds:
        shutil.rmtree(d.home, ignore_errors=True)
    shutil.rmtree(sn.data_dir, ignore_errors=True)


def run_pull(env, reg, blobs, mode, n):
    sn, ds = start_dfly(env, reg, n) if mode == "dfly" else (None, [])
    try:
        off = registry_log_offset(reg)
        ports = [d.port for d in ds] if ds else [reg.port] * n
        outs, wall, mean = pull_all(env, ports, mode)
        ms = [daemon_metrics(d) for d in ds]
    finally:
        if sn:
            stop_dfly(sn, ds)
    time.sleep(0.3)  # the registry logs a request once its handler returned
    rbytes, rgets = registry_blob_bytes(reg, off)
    verify(outs, blobs)
    row = {"wall": wall, "mean": mean, "reg_bytes": rbytes, "reg_gets": rgets}
    for k in ("p2p", "direct", "fallbacks", "shared", "peer", "supernode", "origin"):
        row[k] = sum(m[k] for m in ms)
    return row


def curl_blob(port, path):
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", "300",
            "-w", "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
            f"http://{T.LOCALHOST}:{port}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=330.0)
    T.check(out.returncode == 0, f"curl {argv[-1]}: rc={out.returncode} {out.stderr}")
    code, ttfb, total, size = out.stdout.split()
    return int(code), float(ttfb), float(total), int(size)


def run_ttfb(env, reg, path, size, mode):
    sn, ds = start_dfly(env, reg, 1) if mode == "dfly" else (None, [])
    try:
        code, ttfb, total, got = curl_blob(ds[0].port if ds else reg.port, path)
        m = daemon_metrics(ds[0]) if ds else None
    finally:
        if sn:
            stop_dfly(sn, ds)
    T.check(code == 200 and got == size, f"{mode}: HTTP {code}, {got} of {size} bytes")
    if m:
        T.check(m["p2p"] == 1 and m["fallbacks"] == 0, f"the blob was not served by P2P: {m}")
    return {"ttfb": ttfb, "total": total}


def spread(xs, fmt="{:.2f}"):
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per N (each: direct and dfly)")
    ap.add_argument("--ns", default="1 4 8", help="numbers of concurrent clients")
    ap.add_argument("--ttfb-rounds", type=int, default=5)
    ap.add_argument("--layers-mib", default="100 30 15", help="random layers (MiB), plus two tiny ones")
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split()]
    sizes = [int(x) for x in a.layers_mib.split()]
    T.check(a.rounds >= 1 and a.ttfb_rounds >= 0 and ns and sizes and all(x > 0 for x in ns + sizes),
            "bad arguments")
    M.need("docker-registry", "skopeo", "curl")

    env = T.Env("mirror-bench")
    failed = True
    try:
        reg = M.Registry(env).start()
        layout = env.mkdir("oci")
        M.make_oci_image(layout, sizes[0] * T.MiB, more=[s * T.MiB for s in sizes[1:]])
        image = M.push(env, reg, layout, ref=REF)
        shutil.rmtree(layout)
        blobs = dict(image["sizes"])
        st, _, cfg = T.http_request(reg.port, "GET", f"/v2/bench/img/blobs/{image['config']}")
        T.check(st == 200, f"config blob -> {st}")
        blobs[image["config"]] = len(cfg)
        total = sum(blobs.values())
        T.log(f"image: {len(image['layers'])} layers + config, {total} bytes ({total / T.MiB:.1f} MiB); "
              f"layer sizes {sorted(image['sizes'].values(), reverse=True)}")
        T.log(f"load average at start: {loadavg()}")

        res = {}
        for n in ns:
            for r in range(a.rounds):
                for mode in (("direct", "dfly") if r % 2 == 0 else ("dfly", "direct")):
                    row = run_pull(env, reg, blobs, mode, n)
                    res.setdefault((n, mode), []).append(row)
                    extra = ""
                    if mode == "dfly":
                        extra = (f", daemons: {row['p2p']} P2P replies, {row['fallbacks']} fallbacks, "
                                 f"{row['peer'] / T.MiB:.0f} MiB from peers, {row['supernode'] / T.MiB:.0f} MiB "
                                 f"from the supernode, {row['origin'] / T.MiB:.0f} MiB from the registry")
                    T.log(f"N={n} round {r + 1} {mode:6}: all done {row['wall']:.2f} s, mean {row['mean']:.2f} s, "
                          f"registry blob bytes {row['reg_bytes'] / total:.2f} x image "
                          f"({row['reg_gets']} GETs){extra}")

        big = image["big"]
        path = f"/v2/bench/img/blobs/{big}"
        tt = {"direct": [], "dfly": []}
        for r in range(a.ttfb_rounds):
            for mode in (("direct", "dfly") if r % 2 == 0 else ("dfly", "direct")):
                row = run_ttfb(env, reg, path, image["sizes"][big], mode)
                tt[mode].append(row)
                T.log(f"TTFB round {r + 1} {mode:6}: first byte {row['ttfb'] * 1000:.1f} ms, "
                      f"whole blob {row['total']:.2f} s")
        T.log(f"load average at end: {loadavg()}")

        T.log("")
        T.log(f"Pull of the whole image ({total / T.MiB:.1f} MiB), medians over {a.rounds} rounds (min-max):")
        T.log("| N | direct: all done s | direct: mean s | dfly: all done s | dfly: mean s | time dfly/direct "
              "| registry bytes direct (x image) | registry bytes dfly (x image) | registry bytes dfly/direct |")
        T.log("|---|---|---|---|---|---|---|---|---|")
        for n in ns:
            d, f = res[(n, "direct")], res[(n, "dfly")]
            dw, fw = [x["wall"] for x in d], [x["wall"] for x in f]
            db, fb = [x["reg_bytes"] / total for x in d], [x["reg_bytes"] / total for x in f]
            T.log(f"| {n} | {spread(dw)} | {spread([x['mean'] for x in d])} | {spread(fw)} | "
                  f"{spread([x['mean'] for x in f])} | {statistics.median(fw) / statistics.median(dw):.2f} | "
                  f"{spread(db)} | {spread(fb)} | {statistics.median(fb) / statistics.median(db):.3f} |")
        if a.ttfb_rounds:
            dt = [x["ttfb"] * 1000 for x in tt["direct"]]
            ft = [x["ttfb"] * 1000 for x in tt["dfly"]]
            T.log("")
            T.log(f"First byte of the {image['sizes'][big] / T.MiB:.1f} MiB layer, medians over "
                  f"{a.ttfb_rounds} rounds (min-max):")
            T.log("| | direct | dfly, cold | dfly/direct |")
            T.log("|---|---|---|---|")
            T.log(f"| time to first byte, ms | {spread(dt, '{:.1f}')} | {spread(ft, '{:.1f}')} | "
                  f"{statistics.median(ft) / statistics.median(dt):.1f} |")
            dtt, ftt = [x["total"] for x in tt["direct"]], [x["total"] for x in tt["dfly"]]
            T.log(f"| whole blob, s | {spread(dtt)} | {spread(ftt)} | "
                  f"{statistics.median(ftt) / statistics.median(dtt):.1f} |")
        failed = False
    except (T.TestFailure, KeyboardInterrupt, SystemExit) as e:
        T.log(f"FAILED: {type(e).__name__}: {e}")
    finally:
        env.close(failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
