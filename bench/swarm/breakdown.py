#!/usr/bin/env python3
"""Where a dfly run's bytes came from, per client (from swarm.sh --details files).

  bench/swarm/breakdown.py DETAILS/dfly-n40-r1.clients [more...]

Prints, per file: the sum over clients of bytes from peers / supernode (seed) /
origin in copies of the file, the spread of the seed share per client, how
many clients fell back to the origin, and the slowest clients with their
breakdown.
"""
import sys


def main():
    for path in sys.argv[1:]:
        rows = []
        for line in open(path):
            if line.startswith("#"):
                continue
            p = line.split()
            if len(p) < 9 or p[5] == "-":
                continue
            rows.append({"idx": int(p[0]), "secs": float(p[1]) if p[1] != "-" else float("inf"),
                         "peers": int(p[5]), "sn": int(p[6]), "origin": int(p[7]), "back": p[8]})
        if not rows:
            print(f"{path}: no dfly per-client data")
            continue
        size = rows[0]["peers"] + rows[0]["sn"] + rows[0]["origin"]
        n = len(rows)
        tp, ts, to = (sum(r[k] for r in rows) / size for k in ("peers", "sn", "origin"))
        shares = sorted(r["sn"] / size for r in rows)
        print(f"{path}: {n} clients, file {size} B")
        print(f"  copies of the file: from peers {tp:.2f}, from supernode seed {ts:.2f}, from origin {to:.2f}"
              f"  (seed share of all bytes {ts / (tp + ts + to):.1%})")
        print(f"  seed share per client: min {shares[0]:.1%} median {shares[n // 2]:.1%} max {shares[-1]:.1%};"
              f" back_source {sum(r['back'] == 'true' for r in rows)}")
        rows.sort(key=lambda r: r["secs"])
        for label, sel in (("fastest", rows[:3]), ("slowest", rows[-3:])):
            print(f"  {label}: " + "; ".join(
                f"c{r['idx']} {r['secs']:.1f}s seed {r['sn'] / size:.0%}" for r in sel))


if __name__ == "__main__":
    main()
