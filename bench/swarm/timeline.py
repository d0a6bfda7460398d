#!/usr/bin/env python3
"""Where a dfly run waited, from the per-piece debug trace (swarm.sh --details DIR
--dfly-log-level debug keeps DIR/<tag>.fulllogs).

  bench/swarm/timeline.py DIR/dfly-n40-r1.fulllogs [--clients c3,c17]

Per run: how busy the downloads and the uplinks were (time-averaged pieces in
flight per client, share of each client's time with nothing in flight, share of
each uploader's time with no upload), the pull round trips, the piece transfer
times, and what the slowest clients did in their last seconds.  Times are from
each download's own start (the t= field of the dfdaemon trace).
"""
import re
import sys
from collections import defaultdict

PIECE = re.compile(r"^(c\d+) \S+ dfdaemon\[\d+\] debug: task \S+: piece (\d+) from (\S+): (\d+) B in (\d+) ms, "
                   r"t=(\d+) ms, (\d+) in flight, status (-?\d+)/(-?\d+)")
PULL = re.compile(r"^(c\d+) \S+ dfdaemon\[\d+\] debug: task \S+: pull answered in (\d+) ms: state (\d+), "
                  r"(\d+) assigned, t=(\d+) ms, (\d+) in flight")
CLOCK = re.compile(r"^(c\d+) (\d+):(\d+):(\d+\.\d+) dfdaemon\[\d+\] debug: task \S+: piece")
PORT = re.compile(r"^(c\d+) \S+ dfdaemon\[\d+\] info: peer ready: .* uploads on \S+:(\d+) \(advertised as (\S+)\)")
# decentralized mode: the task's owner (a client) runs the seed download
OWNER = re.compile(r"^(c\d+) (\d+):(\d+):(\d+\.\d+) dfdaemon\[\d+\] info: gossip: this node owns task \S+: seeding")
SEED_DONE = re.compile(r"^(c\d+) (\d+):(\d+):(\d+\.\d+) dfdaemon\[\d+\] info: gossip: seed of task \S+ done")


def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))]


def main():
    args = sys.argv[1:]
    want = None
    if "--clients" in args:
        i = args.index("--clients")
        want = set(args[i + 1].split(","))
        del args[i:i + 2]
    for path in args:
        pieces = defaultdict(list)   # client -> [(start_ms, end_ms, src, bytes, ok)]
        pulls = defaultdict(list)    # client -> [(t_ms, rtt_ms, state, nassign, inflight)]
        abs0 = {}                    # client -> wall clock (s) of its t = 0
        idof = {}                    # "vm-IP-PORT" -> client name
        seed = "supernode"           # the uploader that reads the origin
        seed_t = {}                  # "start"/"done" -> wall clock (s) of the gossip owner's seed
        for line in open(path, errors="replace"):
            m = OWNER.match(line) or SEED_DONE.match(line)
            if m:
                if m.re is OWNER:
                    seed = m.group(1)
                seed_t["start" if m.re is OWNER else "done"] = \
                    int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
                continue
            m = PORT.match(line)
            if m:
                idof[f"vm-{m.group(3)}-{m.group(2)}"] = m.group(1)
                continue
            m = PIECE.match(line)
            if m:
                c, p, src, b, dur, t = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5)), \
                    int(m.group(6))
                ok = m.group(8) == "0" and m.group(9) == "206"
                pieces[c].append((t - dur, t, src, b, ok, p))
                k = CLOCK.match(line)
                if k and c not in abs0:
                    abs0[c] = int(k.group(2)) * 3600 + int(k.group(3)) * 60 + float(k.group(4)) - t / 1000.0
                continue
            m = PULL.match(line)
            if m:
                pulls[m.group(1)].append((int(m.group(5)), int(m.group(2)), int(m.group(3)), int(m.group(4)),
                                          int(m.group(6))))
        if not pieces:
            print(f"{path}: no per-piece trace (needs --dfly-log-level debug)")
            continue
        t00 = min(abs0.values()) if abs0 else 0.0
        print(f"{path}: {len(pieces)} clients, {sum(len(v) for v in pieces.values())} piece fetches")
        # per client: busy share and mean pieces in flight
        rows = []
        for c, lst in pieces.items():
            end = max(e for _, e, *_ in lst)
            ev = sorted([(s, 1) for s, *_ in lst] + [(e, -1) for _, e, *_ in lst])
            cur, last, idle, area = 0, 0, 0, 0
            for t, d in ev:
                if cur == 0:
                    idle += t - last
                area += cur * (t - last)
                cur += d
                last = t
            durs = [e - s for s, e, _, b, ok, _ in lst if ok]
            tail = [x for x in lst if x[1] > end - 0.2 * end]
            rows.append((end, c, idle / end, area / end, pct(durs, 50), pct(durs, 95), len(lst), tail))
        rows.sort()
        print("  client  end_s  idle%  mean_inflight  piece_ms_p50  piece_ms_p95  fetches  start_s(abs)")
        show = rows if want is None else [r for r in rows if r[1] in want]
        if want is None and len(rows) > 12:
            show = rows[:4] + rows[len(rows) // 2 - 1:len(rows) // 2 + 1] + rows[-6:]
        for end, c, idle, mif, p50, p95, n, _ in show:
            print(f"  {c:6} {end / 1000:6.1f} {100 * idle:6.1f} {mif:14.2f} {p50:13.0f} {p95:13.0f} {n:8}"
                  f"  {abs0.get(c, t00) - t00:6.2f}")
        allp = [e - s for v in pieces.values() for s, e, _, b, ok, _ in v if ok]
        bad = sum(1 for v in pieces.values() for x in v if not x[4])
        print(f"  piece transfer ms: p10 {pct(allp, 10):.0f} p50 {pct(allp, 50):.0f} p90 {pct(allp, 90):.0f}"
              f" p99 {pct(allp, 99):.0f}; failed fetches {bad}")
        rtts = [r[1] for v in pulls.values() for r in v]
        waits = sum(1 for v in pulls.values() for r in v if r[2] != 0)
        print(f"  pulls {len(rtts)}: answered in ms p50 {pct(rtts, 50):.0f} p90 {pct(rtts, 90):.0f}"
              f" p99 {pct(rtts, 99):.0f}; non-assign answers {waits}")
        # uploaders on the absolute clock: share of the run each one had >= 1 upload
        up = defaultdict(list)
        for c, lst in pieces.items():
            base = (abs0.get(c, t00) - t00) * 1000
            for s, e, src, b, ok, _ in lst:
                up[idof.get(src, src)].append((base + s, base + e))
        t_end = max(max(e for _, e in v) for v in up.values())
        busy = {}
        for src, iv in up.items():
            iv.sort()
            tot, cs, ce = 0, None, None
            for s, e in iv:
                if cs is None or s > ce:
                    if cs is not None:
                        tot += ce - cs
                    cs, ce = s, e
                else:
                    ce = max(ce, e)
            if cs is not None:
                tot += ce - cs
            busy[src] = tot
        peers = [v / t_end for k, v in busy.items() if k != seed]
        if seed != "supernode":
            print(f"  seed: the gossip owner {seed}" +
                  "".join(f", seed {k} at {seed_t[k] - t00:.1f} s" for k in ("start", "done") if k in seed_t))
        sent = defaultdict(int)      # piece -> fetches served by the seed
        for v in pieces.values():
            for s, e, src, b, ok, p in v:
                if idof.get(src, src) == seed:
                    sent[p] += 1
        if sent:
            mult = defaultdict(int)
            for n in sent.values():
                mult[n] += 1
            print(f"  seed uploads: {sum(sent.values())} fetches of {len(sent)} pieces (pieces by times sent: " +
                  ", ".join(f"{k}x {mult[k]}" for k in sorted(mult)) + ")")
        print(f"  uploaders: seed busy {100 * busy.get(seed, 0) / t_end:.0f}% of the run;"
              f" peers busy p10 {100 * pct(peers, 10):.0f}% p50 {100 * pct(peers, 50):.0f}%"
              f" p90 {100 * pct(peers, 90):.0f}% (of {t_end / 1000:.1f} s; a done peer still serves)")
        # per second: how many uploads each uploader ran, summed (swarm-wide concurrency)
        for end, c, idle, mif, p50, p95, n, tail in rows[-3:]:
            if want is not None and c not in want:
                continue
            print(f"  {c} last 20% ({len(tail)} fetches):")
            for s, e, src, b, ok, p in sorted(tail)[-12:]:
                print(f"     piece {p:4} {s / 1000:6.1f}-{e / 1000:6.1f} s  {(e - s):6} ms  from {idof.get(src, src)}"
                      f"{'' if ok else ' FAILED'}")
            pl = [r for r in pulls[c] if r[0] > end - 0.2 * end]
            print("     pulls: " + ", ".join(f"{r[0] / 1000:.1f}s rtt {r[1]} st {r[2]} +{r[3]} if {r[4]}" for r in pl[-12:]))


if __name__ == "__main__":
    main()
