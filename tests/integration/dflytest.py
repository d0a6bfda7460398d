"""dflytest: a small, stdlib-only harness for the dfly integration tests.

Every test script does

    import dflytest as T
    def test_something(env): ...
    if __name__ == "__main__":
        T.main([test_something, ...])

and `env` (an Env) gives each test its own temp dir and process registry:
nginx as origin, supernode, dfdaemon, dfget runs.  Everything started is
killed by PID when the test ends (and at interpreter exit, and - through
PR_SET_PDEATHSIG - if this interpreter dies).  Every wait is bounded.

Environment: DF_BIN_DIR (dir holding supernode, dfget, dfdaemon),
DF_SOURCE_DIR, DF_KEEP_TMP=1 (keep temp dirs), DF_TEST_BUDGET (seconds for the
whole script, default 540, under CTest's 600 s), DF_DEADLINE (epoch seconds after
which no further test starts), DF_TEST_ONLY (comma list of test names to run).
"""

import atexit
import ctypes
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

KiB = 1 << 10
MiB = 1 << 20

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("DF_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BIN_DIR = os.environ.get("DF_BIN_DIR") or os.path.join(SOURCE_DIR, "build")
KEEP_TMP = os.environ.get("DF_KEEP_TMP", "") not in ("", "0")
LOCALHOST = "127.0.0.1"

# Sanitizer reports in any program's stderr fail the test that started it.
SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)"
                          r"|runtime error: |WARNING: ThreadSanitizer")


class TestFailure(AssertionError):
    pass


class MissingBinary(TestFailure):
    pass


class TestTimeout(TestFailure):
    pass


class Skip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------ processes

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PRCTL = _LIBC.prctl
except (OSError, AttributeError):  # pragma: no cover - non-Linux
    _PRCTL = None


def _child_setup():
    # Runs in the child between fork and exec: die with the test script.
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def _children_map():
    m = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return m
    for d in names:
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        m.setdefault(ppid, []).append(int(d))
    return m


def descendants(pid):
    """PIDs of every live descendant of pid (bounded walk)."""
    m = _children_map()
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        for c in m.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def find_binary(name):
    path = os.path.join(BIN_DIR, name)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise MissingBinary(f"binary '{name}' not found at {path} "
                            f"(build the project; DF_BIN_DIR={BIN_DIR})")
    return path


def find_nginx():
    extra = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"])
    p = shutil.which("nginx", path=os.environ.get("PATH", "") + os.pathsep + extra)
    if not p:
        raise MissingBinary("nginx not found (run scripts/install-deps.sh)")
    return p


class Proc:
    """One started program; stdout/stderr go to files in the test's temp dir."""

    def __init__(self, name, argv, popen, out_path, err_path):
        self.name, self.argv, self.popen = name, argv, popen
        self.pid = popen.pid
        self.out_path, self.err_path = out_path, err_path
        self.started = time.monotonic()
        self.ended = None
        self.killed_by_test = False

    def poll(self):
        rc = self.popen.poll()
        if rc is not None and self.ended is None:
            self.ended = time.monotonic()
        return rc

    def alive(self):
        return self.poll() is None

    def wait(self, timeout):
        """Returns the exit code, or None if still running after timeout seconds."""
        try:
            rc = self.popen.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None
        self.poll()
        return rc

    def signal(self, sig):
        if self.alive():
            self.killed_by_test = True
            _kill(self.pid, sig)

    def stdout(self):
        return _read(self.out_path)

    def stderr(self):
        return _read(self.err_path)

    def tail(self, n=25):
        lines = self.stderr().splitlines()
        return "\n".join(lines[-n:])


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


_ALL_REGISTRIES = []


class Procs:
    """Registry of everything a test started; stop_all() kills by PID."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []
        self.counter = 0
        _ALL_REGISTRIES.append(self)

    def start(self, name, argv, cwd=None, env=None):
        self.counter += 1
        tag = f"{self.counter:02d}-{name}"
        out_path = os.path.join(self.logdir, tag + ".out")
        err_path = os.path.join(self.logdir, tag + ".err")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     cwd=cwd or self.logdir, env=env, close_fds=True,
                                     start_new_session=True, preexec_fn=_child_setup)
        p = Proc(name, argv, popen, out_path, err_path)
        self.procs.append(p)
        return p

    def stop_all(self, grace=5.0):
        live = [p for p in self.procs if p.alive()]
        kids = set()
        for p in live:
            kids.update(descendants(p.pid))
        for p in live:
            _kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            p.wait(deadline - time.monotonic())
        for p in live:
            if p.alive():
                _kill(p.pid, signal.SIGKILL)
                p.wait(2.0)
        for k in kids | set(d for p in live for d in descendants(p.pid)):
            _kill(k, signal.SIGKILL)
        for p in self.procs:
            p.poll()

    def sanitizer_reports(self):
        bad = []
        for p in self.procs:
            text = p.stderr()
            m = SANITIZER_RE.search(text)
            if m:
                start = max(0, m.start() - 200)
                bad.append(f"{p.name} (pid {p.pid}): sanitizer report:\n{text[start:start + 3000]}")
        return bad

    def dump(self, n=25):
        for p in self.procs:
            rc = p.poll()
            log(f"--- {p.name} pid={p.pid} rc={rc} argv={' '.join(p.argv)}")
            t = p.tail(n)
            if t:
                log(t)


@atexit.register
def _kill_everything():
    for reg in _ALL_REGISTRIES:
        try:
            reg.stop_all(grace=2.0)
        except Exception:  # pragma: no cover
            pass


def _on_sigterm(signum, frame):
    raise SystemExit(f"killed by signal {signum}")


signal.signal(signal.SIGTERM, _on_sigterm)

# ---------------------------------------------------------------- networking


_ports_given = set()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that
    this process has not handed out before: two calls before either port is
    bound (a daemon's --listen and --gossip-listen) would otherwise get the
    same port back from the kernel."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOCALHOST, 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    return port


def port_open(port, host=LOCALHOST, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_request(port, method, path, body=None, headers=None, host=LOCALHOST, timeout=10.0):
    """(status, headers dict lower-cased, body bytes).  Raises OSError on transport errors."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = dict(headers or {})
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def raw_request(port, data, host=LOCALHOST, timeout=10.0, body=None):
    """Sends raw bytes (request head, then optional body if the server has not
    answered yet) and returns (status or None, raw response bytes)."""
    resp = b""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        if body:
            # An early answer (413) may arrive before the body is sent.
            s.settimeout(0.3)
            try:
                resp = s.recv(65536)
            except socket.timeout:
                resp = b""
            s.settimeout(timeout)
            if not resp:
                try:
                    s.sendall(body)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.match(rb"HTTP/1\.[01] \d{3}[^\r\n]*\r\n(.*?)\r\n\r\n", resp, re.S)
            if m:
                cl = re.search(rb"(?im)^content-length:\s*(\d+)", m.group(1))
                if cl and len(resp) - m.end() >= int(cl.group(1)):
                    break
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not chunk:
                break
            resp += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3})", resp)
    return (int(m.group(1)) if m else None), resp


def wait_for(pred, timeout, interval=0.05, what="condition", proc=None):
    """Polls pred() until truthy (returns its value) or the deadline; fails early
    if proc (a Proc) exited."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if proc is not None and not proc.alive():
            raise TestFailure(f"{proc.name} exited with code {proc.poll()} while waiting for {what}\n"
                              f"{proc.tail()}")
        if time.monotonic() >= deadline:
            raise TestFailure(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------- files


class FileInfo:
    def __init__(self, name, path, size, sha256, md5, sha512):
        self.name, self.path, self.size = name, path, size
        self.sha256, self.md5, self.sha512 = sha256, md5, sha512

    def digest(self, algo="sha256"):
        return f"{algo}:{getattr(self, algo)}"


def make_random_file(path, size, chunk=4 * MiB):
    h256, h5, h512 = hashlib.sha256(), hashlib.md5(), hashlib.sha512()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            b = os.urandom(min(chunk, left))
            f.write(b)
            h256.update(b)
            h5.update(b)
            h512.update(b)
            left -= len(b)
    os.chmod(path, 0o644)
    return FileInfo(os.path.basename(path), path, size, h256.hexdigest(), h5.hexdigest(),
                    h512.hexdigest())


def fds_in(pid, d):
    """Targets of pid's open descriptors that are in directory d: how a test
    sees a file being written there that has no name yet (an O_TMPFILE file
    reads as "d/#<inode> (deleted)")."""
    out = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(d + "/"):
            out.append(target)
    return out


def file_hash(path, algo="sha256"):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


sha256_file = file_hash


def read_range(path, start, end_incl):
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end_incl - start + 1)


# ------------------------------------------------------------------- nginx


class Origin:
    """nginx serving files from its own prefix in the test's temp dir.

    Locations (each serves the same files from html/ unless noted):
      /<name>           plain
      /slow/<name>      limit_rate slow_rate (default 4m) per connection
      /crawl/<name>     limit_rate crawl_rate (default 2k): effectively stalls
      /auth/<name>      auth_basic (user/password below, {PLAIN} scheme)
      /chunked/<name>   no Content-Length (chunked; via a no-op sub_filter)
      /missing/...      return 404
      /denied/...       return 401
      /drop/...         return 444 (close the connection without an answer)
    Access log: one line per request, tab separated:
      $request  $status  $body_bytes_sent  $http_range
    """

    USER, PASSWORD = "dfly", "s3cret"

    def __init__(self, env, slow_rate="4m", crawl_rate="2k"):
        self.env = env
        self.prefix = env.mkdir("nginx")
        self.html = os.path.join(self.prefix, "html")
        os.makedirs(self.html, exist_ok=True)
        os.chmod(self.html, 0o755)
        self.port = free_port()
        self.slow_rate, self.crawl_rate = slow_rate, crawl_rate
        self.access_log = os.path.join(self.prefix, "access.log")
        self.error_log = os.path.join(self.prefix, "error.log")
        self.proc = None

    def basic_auth(self):
        import base64
        return "Basic " + base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()

    def add_file(self, name, size):
        return make_random_file(os.path.join(self.html, name), size)

    def url(self, name, loc=""):
        loc = loc.strip("/")
        return f"http://{LOCALHOST}:{self.port}/" + (f"{loc}/" if loc else "") + name

    def _conf(self):
        p, h = self.prefix, self.html
        user = "user root root;\n" if os.geteuid() == 0 else ""
        with open(os.path.join(p, "htpasswd"), "w") as f:
            f.write(f"{self.USER}:{{PLAIN}}{self.PASSWORD}\n")
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(p, "tmp", d), exist_ok=True)
        return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 512; }}
http {{
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    keepalive_timeout 15;
    server_tokens off;
    client_body_temp_path {p}/tmp/client_body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    log_format dfly "$request\\t$status\\t$body_bytes_sent\\t$http_range";
    access_log {self.access_log} dfly;
    server {{
        listen {LOCALHOST}:{self.port};
        root {h};
        location / {{ }}
        location /slow/ {{ alias {h}/; limit_rate {self.slow_rate}; }}
        location /crawl/ {{ alias {h}/; limit_rate {self.crawl_rate}; }}
        location /auth/ {{
            alias {h}/;
            auth_basic "dfly";
            auth_basic_user_file {p}/htpasswd;
        }}
        location /chunked/ {{
            alias {h}/;
            sub_filter_types *;
            sub_filter "dfly-never-matches-9f2b" "dfly-never-matches-9f2b";
        }}
        location /missing/ {{ return 404; }}
        location /denied/ {{ return 401; }}
        location /drop/ {{ return 444; }}
    }}
}}
"""

    def start(self, timeout=15.0):
        """Starts nginx.  The port came from free_port() and may have been taken
        since by another process of the test (an ephemeral upload port): then
        nginx exits with EADDRINUSE and is started again on a fresh port (at
        most 3 tries).  So take URLs (url()) after start()."""
        nginx = find_nginx()
        conf = os.path.join(self.prefix, "nginx.conf")
        for d in (self.env.tmp, self.prefix):
            os.chmod(d, 0o755)
        argv = [nginx, "-p", self.prefix + "/", "-c", conf, "-e", self.error_log]

        def ready():
            try:
                return http_request(self.port, "GET", "/missing/ping", timeout=1.0)[0] == 404
            except OSError:
                return False
        for attempt in range(3):
            with open(conf, "w") as f:
                f.write(self._conf())
            self.proc = self.env.procs.start("nginx", argv)
            try:
                wait_for(ready, timeout, what=f"nginx on port {self.port}", proc=self.proc)
                return self
            except TestFailure as e:
                log = _read(self.error_log)
                if attempt < 2 and not self.proc.alive() and "Address already in use" in log:
                    self.port = free_port()
                    continue
                raise TestFailure(f"{e}\nnginx error log:\n{log[-2000:]}")
        return self

    def requests(self):
        """Parsed access log: list of dicts {method, path, status, bytes, range}."""
        out = []
        for line in _read(self.access_log).splitlines():
            parts = line.split("\t")
            if len(parts) != 4:
                continue
            req = parts[0].split()
            path = req[1].split("?", 1)[0] if len(req) >= 2 else ""
            try:
                status, nbytes = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            out.append({"method": req[0] if req else "", "path": path, "status": status,
                        "bytes": nbytes, "range": parts[3]})
        return out

    def bytes_served(self, path, settle=0.3):
        """Sum of body bytes sent for requests of this path (no query).  nginx logs
        a request when it ends, a moment after the client got the last byte: wait
        (at most 3 s) until the sum has not changed for `settle` seconds."""
        if path.startswith("http://"):
            path = "/" + path.split("/", 3)[3]
        path = path.split("?", 1)[0]

        def total():
            return sum(r["bytes"] for r in self.requests() if r["path"] == path)
        last, deadline = total(), time.monotonic() + 3.0
        while settle > 0 and time.monotonic() < deadline:
            time.sleep(settle)
            now = total()
            if now == last:
                break
            last = now
        return last


# --------------------------------------------------------------- supernode


class Supernode:
    def __init__(self, env, port=None, extra=()):
        self.env = env
        self.port = port or free_port()
        self.data_dir = env.mkdir(f"supernode-{self.port}")
        self.extra = list(extra)
        self.proc = None

    @property
    def addr(self):
        return f"{LOCALHOST}:{self.port}"

    def start(self, timeout=30.0):
        exe = find_binary("supernode")
        argv = [exe, "--listen", self.addr, "--data-dir", self.data_dir,
                "--advertise-ip", LOCALHOST, "--log-level", "info"] + self.extra
        self.proc = self.env.procs.start("supernode", argv)
        wait_for(self.healthy, timeout, what=f"supernode GET /healthz on {self.addr}",
                 proc=self.proc)
        return self

    def healthy(self):
        try:
            return self.request("GET", "/healthz", timeout=1.0)[0] == 200
        except OSError:
            return False

    def request(self, method, path, body=None, headers=None, timeout=10.0):
        return http_request(self.port, method, path, body=body, headers=headers, timeout=timeout)

    def api(self, method, path, body=None, timeout=10.0):
        """(status, parsed JSON or None)."""
        st, _, data = self.request(method, path, body=body, timeout=timeout)
        try:
            return st, json.loads(data.decode() or "null")
        except ValueError:
            return st, None

    def metrics(self):
        st, _, data = self.request("GET", "/metrics")
        check(st == 200, f"GET /metrics -> {st}")
        return data.decode("utf-8", "replace")

    def kill(self, sig=signal.SIGKILL):
        self.proc.signal(sig)
        self.proc.wait(10.0)


# ---------------------------------------------------------------- dfdaemon


class Dfdaemon:
    def __init__(self, env, node, home=None, port=None, upload_port=None, extra=(), environ=None):
        self.env = env
        self.node = node
        self.environ = environ  # the process environment (None: ours)
        self.home = home or env.new_home()
        self.port = port or free_port()
        self.upload_port = upload_port or free_port()
        self.extra = list(extra)
        self.proc = None

    def start(self, timeout=30.0):
        exe = find_binary("dfdaemon")
        argv = [exe, "--home", self.home, "--node", self.node,
                "--listen", f"{LOCALHOST}:{self.port}", "--upload-port", str(self.upload_port),
                "--advertise-ip", LOCALHOST] + self.extra
        self.proc = self.env.procs.start("dfdaemon", argv, env=self.environ)
        wait_for(lambda: port_open(self.port) and port_open(self.upload_port), timeout,
                 what=f"dfdaemon listening on {self.port} and {self.upload_port}", proc=self.proc)
        return self


# ------------------------------------------------------------------- dfget

JSON_FIELDS = {"status": str, "task_id": str, "length": int, "seconds": (int, float),
               "bytes_from_peers": int, "bytes_from_supernode": int, "bytes_from_origin": int,
               "back_source": bool, "reason": str, "digest": str}


class DfgetResult:
    def __init__(self, run, rc, timed_out):
        self.argv, self.out = run.argv, run.out
        self.rc, self.timed_out = rc, timed_out
        self.stdout, self.stderr = run.proc.stdout(), run.proc.stderr()
        self.seconds = (run.proc.ended or time.monotonic()) - run.proc.started
        self.json, self.json_problem = None, None
        lines = [l for l in self.stdout.splitlines() if l.strip()]
        if len(lines) != 1:
            self.json_problem = f"expected exactly one JSON line on stdout, got {len(lines)}"
        else:
            try:
                j = json.loads(lines[0])
                if isinstance(j, dict):
                    self.json = j
                else:
                    self.json_problem = "stdout line is not a JSON object"
            except ValueError as e:
                self.json_problem = f"stdout is not JSON: {e}"

    def describe(self):
        err = "\n".join(self.stderr.splitlines()[-15:])
        return (f"dfget rc={self.rc} timed_out={self.timed_out} t={self.seconds:.1f}s\n"
                f"  argv: {' '.join(self.argv)}\n  stdout: {self.stdout.strip()[:1500]!r}\n"
                f"  json problem: {self.json_problem}\n  stderr tail:\n{err}")

    def message(self):
        """Everything the user was told: stderr and the JSON error."""
        m = self.stderr
        if self.json and isinstance(self.json.get("error"), str):
            m += "\n" + self.json["error"]
        return m

    def check_schema(self):
        check(self.json is not None, f"no JSON result: {self.describe()}")
        for k, t in JSON_FIELDS.items():
            check(k in self.json, f"JSON lacks '{k}': {self.describe()}")
            v = self.json[k]
            check(isinstance(v, t) and not (t is int and isinstance(v, bool)),
                  f"JSON '{k}' has type {type(v).__name__}: {self.describe()}")
        for k in ("length", "bytes_from_peers", "bytes_from_supernode", "bytes_from_origin"):
            check(self.json[k] >= 0, f"JSON '{k}' negative: {self.describe()}")

    def expect_ok(self, info=None, cached_ok=False):
        """Exit 0, valid JSON (if --json), status ok, file complete and matching info.
        The bytes_from_* add up to the file, or (cached_ok) are all 0: the file
        was complete in the daemon's store before this download asked."""
        check(not self.timed_out, f"dfget did not finish in time: {self.describe()}")
        check(self.rc == 0, f"dfget failed: {self.describe()}")
        if "--json" in self.argv:
            self.check_schema()
            check(self.json["status"] == "ok", f"status not ok: {self.describe()}")
        if info is not None:
            check(os.path.isfile(self.out), f"no output file {self.out}: {self.describe()}")
            size = os.path.getsize(self.out)
            check(size == info.size, f"output has {size} bytes, want {info.size}: {self.describe()}")
            got = file_hash(self.out)
            check(got == info.sha256, f"output sha256 {got} != {info.sha256}: {self.describe()}")
            if self.json:
                j = self.json
                check(j["length"] == info.size, f"JSON length {j['length']} != {info.size}")
                total = j["bytes_from_peers"] + j["bytes_from_supernode"] + j["bytes_from_origin"]
                check(total == info.size or (cached_ok and total == 0),
                      f"bytes_from_* add up to {total}, want {info.size}: {self.describe()}")
                algo = j["digest"].split(":", 1)[0]
                if algo in ("sha256", "sha512", "md5"):
                    check(j["digest"] == info.digest(algo),
                          f"JSON digest {j['digest']} != {info.digest(algo)}")
        return self

    def expect_fail(self, *words, no_output=True):
        """Non-zero exit within the bound, an error message containing every word
        (case-insensitive, alternatives separated by '|'), no file at the output."""
        check(not self.timed_out, f"dfget did not finish in time (hung?): {self.describe()}")
        check(self.rc not in (0, None), f"dfget should have failed: {self.describe()}")
        check(self.rc > 0, f"dfget died by signal {-self.rc}: {self.describe()}")
        msg = self.message().lower()
        check(msg.strip(), f"dfget failed without any message: {self.describe()}")
        for w in words:
            alts = w.lower().split("|")
            check(any(a in msg for a in alts), f"error message does not mention {w!r}: "
                  f"{self.describe()}")
        if "--json" in self.argv and self.json is not None:
            check(self.json.get("status") == "error", f"JSON status should be error: "
                  f"{self.describe()}")
            check(isinstance(self.json.get("error"), str) and self.json["error"],
                  f"JSON error should be a non-empty string: {self.describe()}")
        if no_output and self.out:
            check(not os.path.exists(self.out), f"failed dfget left a file at {self.out}")
        return self


class DfgetRun:
    def __init__(self, env, argv, out, timeout):
        self.env, self.argv, self.out, self.timeout = env, argv, out, timeout
        self.proc = env.procs.start("dfget", argv, cwd=env.tmp)
        self.result = None

    def wait(self, timeout=None):
        """Waits (bounded); kills the run and marks it timed out past the bound."""
        if self.result is not None:
            return self.result
        limit = self.timeout if timeout is None else timeout
        left = limit - (time.monotonic() - self.proc.started)
        rc = self.proc.wait(left)
        timed_out = rc is None
        if timed_out:
            self.proc.signal(signal.SIGKILL)
            rc = self.proc.wait(5.0)
        self.result = DfgetResult(self, rc, timed_out)
        return self.result

    def kill(self, sig=signal.SIGKILL):
        self.proc.signal(sig)


# --------------------------------------------------------------------- env


class Env:
    """Per-test context: temp dir, process registry, helpers to start things."""

    def __init__(self, name):
        self.name = name
        self.tmp = tempfile.mkdtemp(prefix=f"dfly-{name}-")
        os.chmod(self.tmp, 0o755)
        self.logdir = self.mkdir("logs")
        self.procs = Procs(self.logdir)
        self.homes = 0

    def mkdir(self, *parts):
        p = os.path.join(self.tmp, *parts)
        os.makedirs(p, exist_ok=True)
        return p

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def new_home(self):
        self.homes += 1
        return self.mkdir(f"home{self.homes}")

    def origin(self, **kw):
        return Origin(self, **kw).start()

    def supernode(self, **kw):
        return Supernode(self, **kw).start()

    def dfdaemon(self, node, **kw):
        return Dfdaemon(self, node, **kw).start()

    def dfget_argv(self, url, out, node=None, home=None, json_out=True, extra=()):
        argv = [find_binary("dfget"), "-u", url, "-o", out]
        if node:
            argv += ["--node", node]
        argv += ["--home", home or self.new_home()]
        if json_out:
            argv.append("--json")
        return argv + list(extra)

    def start_dfget(self, url, out, node=None, home=None, json_out=True, extra=(), timeout=180.0):
        argv = self.dfget_argv(url, out, node, home, json_out, extra)
        return DfgetRun(self, argv, out, timeout)

    def dfget(self, url, out, node=None, home=None, json_out=True, extra=(), timeout=180.0):
        return self.start_dfget(url, out, node, home, json_out, extra, timeout).wait()

    def run(self, argv, timeout=30.0):
        """Runs a program to completion (bounded); returns (rc, stdout, stderr)."""
        p = self.procs.start(os.path.basename(argv[0]), argv, cwd=self.tmp)
        rc = p.wait(timeout)
        if rc is None:
            p.signal(signal.SIGKILL)
            p.wait(5.0)
            raise TestFailure(f"{' '.join(argv)} did not exit within {timeout}s")
        return rc, p.stdout(), p.stderr()

    def close(self, failed):
        self.procs.stop_all()
        problems = self.procs.sanitizer_reports()
        if failed or problems:
            self.procs.dump()
        if KEEP_TMP:
            log(f"(kept {self.tmp})")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


# ------------------------------------------------------------------ runner


def timeout(seconds):
    """Decorator: per-test time limit (default 240 s)."""
    def deco(fn):
        fn.timeout = seconds
        return fn
    return deco


def _alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit")


def main(tests):
    budget = float(os.environ.get("DF_TEST_BUDGET", "540"))
    if os.environ.get("DF_DEADLINE"):  # epoch seconds set by scripts/test.sh for the whole run
        budget = min(budget, float(os.environ["DF_DEADLINE"]) - time.time())
    only = [t for t in os.environ.get("DF_TEST_ONLY", "").split(",") if t]
    t0 = time.monotonic()
    passed = failed = skipped = 0
    signal.signal(signal.SIGALRM, _alarm)
    log(f"DF_BIN_DIR={BIN_DIR}")
    for fn in tests:
        name = fn.__name__
        if only and name not in only:
            continue
        left = budget - (time.monotonic() - t0)
        if left < 15:
            log(f"FAIL {name}: no time left in the script's budget ({budget:.0f}s)")
            failed += 1
            continue
        limit = min(getattr(fn, "timeout", 240), left - 10)
        log(f"=== {name} (limit {limit:.0f}s)")
        env = Env(name)
        start = time.monotonic()
        ok, skip, err = False, None, None
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                fn(env)
                ok = True
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except Skip as e:
            skip = str(e)
        except MissingBinary as e:
            err = f"{e}"
        except TestFailure as e:
            err = f"{type(e).__name__}: {e}"
        except Exception:
            err = traceback.format_exc()
        problems = []
        try:
            problems = env.close(failed=not ok and skip is None)
        except Exception:
            problems = [traceback.format_exc()]
        dt = time.monotonic() - start
        if skip is not None:
            skipped += 1
            log(f"SKIP {name}: {skip}")
        elif ok and not problems:
            passed += 1
            log(f"PASS {name} ({dt:.1f}s)")
        else:
            failed += 1
            msg = err or ""
            if problems:
                msg += ("\n" if msg else "") + "\n".join(problems)
            log(f"FAIL {name} ({dt:.1f}s): {msg}")
    tail = f", {skipped} skipped" if skipped else ""
    log(f"{passed} passed, {failed} failed{tail}")
    sys.exit(0 if failed == 0 and passed + skipped > 0 else 1)
