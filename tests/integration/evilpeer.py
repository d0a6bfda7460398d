#!/usr/bin/env python3
"""A misbehaving peer for test_faults: registers a task with the supernode,
claims every piece it is assigned (reporting them ok without fetching), then
serves /peer/file/<task_id> in one of two ways (MODE):
  flip  bit-flipped bytes (a corrupting peer; the default);
  slow  the right bytes, SLOW_CHUNK bytes every SLOW_EVERY seconds (a healthy
        peer that is busy: its uploads crawl but never stop).

usage: evilpeer.py SUPERNODE_PORT URL REAL_FILE STATE_FILE REQUEST_LOG [MODE]
STATE_FILE gets one JSON object once the supernode says the task is done for
this peer (or on failure, with "error").  Each piece request is appended to
REQUEST_LOG as a JSON line {"range": "...", "path": "...", "concurrent": N}, N
the requests being answered when it arrived, itself included.  Stdlib only; every
loop is bounded.
"""

import http.client
import http.server
import json
import os
import re
import sys
import threading
import time

SN_PORT, URL, REAL, STATE, REQLOG = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
MODE = sys.argv[6] if len(sys.argv) > 6 else "flip"
SIZE = os.path.getsize(REAL)
SLOW_CHUNK, SLOW_EVERY, SLOW_FOR = 4096, 0.25, 300.0  # 16 KiB/s per request, for at most 5 min
TASK = {"id": None}
LOCK = threading.Lock()
BUSY = [0]  # requests being answered


def api(path, body, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", SN_PORT, timeout=timeout)
    try:
        c.request("POST", path, body=json.dumps(body).encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data.decode() or "null")
        except ValueError:
            return r.status, {"raw": data.decode("utf-8", "replace")}
    finally:
        c.close()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        rng = self.headers.get("Range", "")
        with LOCK, open(REQLOG, "a") as f:
            BUSY[0] += 1
            f.write(json.dumps({"path": self.path, "range": rng, "concurrent": BUSY[0]}) + "\n")
        try:
            self.answer(rng)
        finally:
            with LOCK:
                BUSY[0] -= 1

    def answer(self, rng):
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng.strip())
        if not self.path.startswith("/peer/file/") or not m:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        a, b = int(m.group(1)), min(int(m.group(2)), SIZE - 1)
        with open(REAL, "rb") as f:
            f.seek(a)
            data = f.read(b - a + 1)
        body = data if MODE == "slow" else bytes(x ^ 0xFF for x in data)  # flip: every byte
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {a}-{b}/{SIZE}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if MODE != "slow":
                self.wfile.write(body)
                return
            end = time.monotonic() + SLOW_FOR
            for off in range(0, len(body), SLOW_CHUNK):
                if time.monotonic() > end:
                    break
                self.wfile.write(body[off:off + SLOW_CHUNK])
                self.wfile.flush()
                time.sleep(SLOW_EVERY)
        except OSError:
            pass  # the requester gave up on us


def write_state(obj):
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, STATE)


def main():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    st, reg = api("/api/v1/register", {"url": URL, "pattern": "p2p",
                                       "peer": {"ip": "127.0.0.1", "port": port,
                                                "hostname": "evil"}})
    if st != 200 or not isinstance(reg, dict) or "task_id" not in reg:
        write_state({"error": f"register -> {st} {reg}"})
        return 1
    task, me = reg["task_id"], reg["peer_id"]
    results, claimed, state = [], set(), None
    deadline = time.monotonic() + 90
    for _ in range(2000):
        if time.monotonic() > deadline:
            break
        st, ans = api("/api/v1/pull", {"task_id": task, "peer_id": me, "results": results,
                                       "running": 0, "want": 64})
        results = []
        if st != 200 or not isinstance(ans, dict):
            write_state({"error": f"pull -> {st} {ans}"})
            return 1
        state = ans.get("state")
        if state == "assign":
            for p in ans.get("pieces", []):
                src = (p.get("src") or {}).get("id", "")
                results.append({"piece": p["piece"], "src": src, "ok": True})
                claimed.add(p["piece"])
        elif state == "wait":
            time.sleep(min(max(ans.get("wait_ms", 200), 10), 1000) / 1000.0)
        elif state == "done":
            break
        else:
            write_state({"error": f"pull state {state}: {ans}"})
            return 1
    if results:
        api("/api/v1/report", {"task_id": task, "peer_id": me, "results": results})
    write_state({"port": port, "task_id": task, "peer_id": me, "state": state,
                 "claimed": sorted(claimed), "piece_count": reg.get("piece_count")})
    # Stay alive (bounded) and keep the supernode convinced.
    end = time.monotonic() + 600
    while time.monotonic() < end:
        time.sleep(5)
        try:
            api("/api/v1/heartbeat", {"peer_id": me}, timeout=5)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
