#!/usr/bin/env python3
"""Helpers for bench/swarm/swarm.sh (standard library only).

  swarmlib.py mktorrent FILE ANNOUNCE PIECE_LEN OUT.torrent   -> prints the hex infohash
  swarmlib.py scrape URL HEX_INFOHASH                        -> prints 'complete' count (0 on error)
  swarmlib.py aria2-upload RPC_URL                           -> prints uploadLength summed over gids
  swarmlib.py metrics URL NAME[,NAME...]                     -> prints 'name{labels} value' lines
  swarmlib.py row ...                                        -> one TSV row (see cmd_row)
  swarmlib.py tmin F_BYTES US_BPS N UC_SUM_BPS DC_MIN_BPS     -> fluid bound in seconds
  swarmlib.py mdtable RESULTS.tsv                            -> the rows as a Markdown table (docs)
"""
import hashlib
import json
import math
import os
import sys
import urllib.parse
import urllib.request


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        out = b"d"
        for k in sorted(v, key=lambda k: k.encode() if isinstance(k, str) else k):
            out += bencode(k) + bencode(v[k])
        return out + b"e"
    raise TypeError(type(v))


def bdecode(data, i=0):
    c = data[i:i + 1]
    if c == b"i":
        j = data.index(b"e", i)
        return int(data[i + 1:j]), j + 1
    if c == b"l":
        i += 1
        out = []
        while data[i:i + 1] != b"e":
            v, i = bdecode(data, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i += 1
        out = {}
        while data[i:i + 1] != b"e":
            k, i = bdecode(data, i)
            v, i = bdecode(data, i)
            out[k] = v
        return out, i + 1
    j = data.index(b":", i)
    n = int(data[i:j])
    return data[j + 1:j + 1 + n], j + 1 + n


def cmd_mktorrent(path, announce, piece_len, out):
    piece_len = int(piece_len)
    pieces = []
    with open(path, "rb") as f:
        while True:
            b = f.read(piece_len)
            if not b:
                break
            pieces.append(hashlib.sha1(b).digest())
    info = {"name": os.path.basename(path), "length": os.path.getsize(path),
            "piece length": piece_len, "pieces": b"".join(pieces)}
    meta = {"announce": announce, "info": info, "created by": "dfly bench/swarm"}
    with open(out, "wb") as f:
        f.write(bencode(meta))
    print(hashlib.sha1(bencode(info)).hexdigest())


def cmd_scrape(url, hexhash):
    q = urllib.parse.quote_from_bytes(bytes.fromhex(hexhash))
    try:
        data = urllib.request.urlopen(url + "?info_hash=" + q, timeout=2).read()
        d, _ = bdecode(data)
        files = d.get(b"files", {})
        for _, st in files.items():
            print(st.get(b"complete", 0))
            return
    except Exception:
        pass
    print(0)


def cmd_aria2_upload(rpc):
    total = 0
    for method, params in (("aria2.tellActive", [["uploadLength"]]),
                           ("aria2.tellStopped", [0, 100, ["uploadLength"]])):
        body = json.dumps({"jsonrpc": "2.0", "id": "q", "method": method, "params": params}).encode()
        try:
            r = urllib.request.urlopen(urllib.request.Request(rpc, body, {"Content-Type": "application/json"}),
                                       timeout=3)
            for e in json.loads(r.read())["result"]:
                total += int(e.get("uploadLength", 0))
        except Exception:
            pass
    print(total)


def cmd_metrics(url, names):
    want = names.split(",")
    try:
        text = urllib.request.urlopen(url, timeout=3).read().decode()
    except Exception:
        return
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if any(line.startswith(n) for n in want):
            print(line)


def tmin(f, us, n, uc_sum, dc_min):
    """Fluid bound (Kumar & Ross): max(F/u_s, F/d_min, N*F/(u_s + sum u_c)); rates in bit/s."""
    bits = 8.0 * f
    return max(bits / us, bits / dc_min, n * bits / (us + uc_sum))


def pct(sorted_vals, p):
    """Nearest-rank percentile."""
    if not sorted_vals:
        return float("nan")
    k = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def cmd_row(argv):
    """row KEY=VALUE... ; CLIENTS=<file with 'idx secs ok ...' lines> ; prints header with HEADER=1."""
    kv = dict(a.split("=", 1) for a in argv)
    cols = ["mode", "n", "run", "file_bytes", "origin_mbit", "client_mbit", "hetero", "late",
            "t_min_s", "mean_s", "p50_s", "p95_s", "max_s",
            "mean_x", "p50_x", "p95_x", "max_x",
            "done", "sha_ok", "origin_bytes", "origin_x_F", "origin_wire_bytes",
            "seed_bytes", "peer_bytes", "cpu_busy_pct", "cpu_softirq_pct", "proc_cpu_s", "wall_s"]
    if kv.get("HEADER") == "1":
        print("\t".join(cols))
        return
    times, ok = [], 0
    with open(kv["CLIENTS"]) as f:
        for line in f:
            p = line.split()
            if len(p) < 3:
                continue
            if p[1] != "-":
                times.append(float(p[1]))
            if p[2] == "ok":
                ok += 1
    times.sort()
    n = int(kv["n"])
    t = float(kv["t_min_s"])
    fb = int(kv["file_bytes"])
    mean = sum(times) / len(times) if times else float("nan")
    vals = {"mean_s": mean, "p50_s": pct(times, 50), "p95_s": pct(times, 95),
            "max_s": times[-1] if times else float("nan")}
    row = dict(kv)
    for k, v in vals.items():
        row[k] = "%.2f" % v
        row[k.replace("_s", "_x")] = "%.3f" % (v / t)
    row["t_min_s"] = "%.2f" % t
    row["done"] = "%d/%d" % (len(times), n)
    row["sha_ok"] = "%d/%d" % (ok, n)
    ob = kv.get("origin_bytes", "")
    row["origin_x_F"] = "%.3f" % (int(ob) / fb) if ob.isdigit() else "-"
    print("\t".join(str(row.get(c, "-")) for c in cols))


def cmd_mdtable(path):
    """The columns docs/BENCHMARKS.md shows, one Markdown row per TSV row."""
    show = [("mode", "mode"), ("n", "N"), ("t_min_s", "T_min s"), ("mean_s", "mean s"), ("max_s", "max s"),
            ("mean_x", "mean/T_min"), ("p50_x", "p50/T_min"), ("p95_x", "p95/T_min"), ("max_x", "max/T_min"),
            ("sha_ok", "sha ok"), ("origin_x_F", "origin bytes / F"), ("seed_x_F", "seed bytes / F"),
            ("cpu", "machine CPU busy % (softirq %)"), ("proc_cpu_s", "own CPU s")]
    print("| " + " | ".join(h for _, h in show) + " |")
    print("|" + "---|" * len(show))
    with open(path) as f:
        head = f.readline().rstrip("\n").split("\t")
        for line in f:
            r = dict(zip(head, line.rstrip("\n").split("\t")))
            if r.get("mode") == "mode":
                continue
            sb = r.get("seed_bytes", "-")
            r["seed_x_F"] = "%.2f" % (int(sb) / int(r["file_bytes"])) if sb.isdigit() else "-"
            r["cpu"] = "%s (%s)" % (r.get("cpu_busy_pct", "-"), r.get("cpu_softirq_pct", "-"))
            print("| " + " | ".join(r.get(k, "-") for k, _ in show) + " |")


def main():
    a = sys.argv[1:]
    if not a:
        print(__doc__)
        sys.exit(2)
    c = a[0]
    if c == "mktorrent":
        cmd_mktorrent(*a[1:5])
    elif c == "scrape":
        cmd_scrape(a[1], a[2])
    elif c == "aria2-upload":
        cmd_aria2_upload(a[1])
    elif c == "metrics":
        cmd_metrics(a[1], a[2])
    elif c == "tmin":
        print("%.4f" % tmin(int(a[1]), float(a[2]), int(a[3]), float(a[4]), float(a[5])))
    elif c == "row":
        cmd_row(a[1:])
    elif c == "mdtable":
        cmd_mdtable(a[1])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
