"""Helpers for the registry-mirror tests: a real Docker Distribution registry
(`docker-registry serve`) on a random loopback port with storage and config in
the test's temp dir, OCI image layouts written by hand (tar layers, sha256,
config, manifest, index) and pushed with skopeo, and skopeo pulls."""

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile

import dflytest as T

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def need(*progs):
    for p in progs:
        if not shutil.which(p):
            raise T.MissingBinary(f"{p} not found (run scripts/install-deps.sh)")


class Registry:
    """docker-registry serve CONFIG; access log (combined format) on stdout.
    auth: htpasswd (Basic); token: a started TokenServer (Bearer auth, the
    same user and password at the token server); redirect: a base URL the
    blob GETs and HEADs are redirected to (307, the `redirect` storage
    middleware: BASE/docker/registry/v2/blobs/sha256/XX/HEX/data under the
    storage root, as Docker Hub sends clients to its CDN)."""

    USER, PASSWORD = "dfly", "s3cret-pw"

    def __init__(self, env, auth=False, tls=None, token=None, redirect=None):
        need("docker-registry")
        self.env, self.auth, self.tls = env, auth or token is not None, tls
        self.token, self.redirect = token, redirect
        self.port = T.free_port()
        self.dir = env.mkdir(f"registry-{self.port}")
        self.proc = None

    @property
    def addr(self):
        return f"{T.LOCALHOST}:{self.port}"

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://{self.addr}"

    def start(self, timeout=20.0):
        auth = ""
        if self.auth:
            need("htpasswd")
            pw = os.path.join(self.dir, "htpasswd")
            rc, _, err = self.env.run(["htpasswd", "-Bbc", pw, self.USER, self.PASSWORD])
            T.check(rc == 0, f"htpasswd failed: {err}")
            auth = f"auth:\n  htpasswd:\n    realm: dfly-test\n    path: {pw}\n"
        if self.token:
            t = self.token
            auth = (f"auth:\n  token:\n    realm: {t.realm}\n    service: {t.SERVICE}\n"
                    f"    issuer: {t.ISSUER}\n    rootcertbundle: {t.cert}\n")
        middleware = ""
        if self.redirect:
            middleware = (f"middleware:\n  storage:\n    - name: redirect\n"
                          f"      options:\n        baseurl: {self.redirect}\n")
        tls = ""
        if self.tls:
            tls = f"  tls:\n    certificate: {self.tls.cert}\n    key: {self.tls.key}\n"
        conf = os.path.join(self.dir, "config.yml")
        with open(conf, "w") as f:
            f.write(f"""version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {self.dir}/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {self.addr}
{tls}{auth}{middleware}""")
        self.proc = self.env.procs.start("registry", ["docker-registry", "serve", conf])

        def ready():
            if self.tls:
                return T.port_open(self.port)
            try:
                return T.http_request(self.port, "GET", "/v2/", timeout=1.0)[0] in (200, 401)
            except OSError:
                return False
        T.wait_for(ready, timeout, what=f"registry on {self.addr}", proc=self.proc)
        return self

    @property
    def data(self):
        """The storage root (what a redirect's base URL serves)."""
        return os.path.join(self.dir, "data")

    def basic(self):
        import base64
        return "Basic " + base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()

    def credentials(self, repo="test/img", actions="pull"):
        """The Authorization value a client with the password sends: Basic,
        or a Bearer token from the token server for repository:REPO:ACTIONS."""
        if self.token:
            return "Bearer " + self.token.get(f"repository:{repo}:{actions}", self.basic())
        return self.basic()

    def access(self):
        """[(method, path, status)] from the access log (stdout)."""
        out = []
        for m in re.finditer(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3})', self.proc.stdout()):
            out.append((m.group(1), m.group(2).split("?", 1)[0], int(m.group(3))))
        return out

    def count(self, method, path_suffix, status=None):
        return sum(1 for m, p, s in self.access()
                   if m == method and p.endswith(path_suffix) and (status is None or s == status))


class TokenServer:
    """tokenserver.py on a loopback port: an RSA key and a self-signed
    certificate (the registry's rootcertbundle) made with openssl; tokens for
    Registry.USER / PASSWORD grant what they ask, anonymous ones nothing but
    pull on repositories under public (a name prefix), if given.  lifetime:
    seconds the registry accepts a token (tokens that expire during a test)."""

    SERVICE, ISSUER = "dfly-test-registry", "dfly-test-token-issuer"

    def __init__(self, env, public=None, lifetime=None):
        need("openssl")
        self.env, self.public, self.lifetime = env, public, lifetime
        self.port = T.free_port()
        d = env.mkdir(f"token-{self.port}")
        self.key, self.cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
        rc, _, err = env.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
                              "-out", self.cert, "-days", "2", "-subj", "/CN=dfly test token issuer"])
        T.check(rc == 0, f"openssl (token key) failed: {err}")
        self.proc = None

    @property
    def realm(self):
        return f"http://{T.LOCALHOST}:{self.port}/token"

    def start(self, timeout=15.0):
        import sys
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenserver.py")
        opts = [f"--lifetime={self.lifetime}"] if self.lifetime else []
        self.proc = self.env.procs.start("tokenserver", [
            sys.executable, script] + opts + [str(self.port), self.key, self.cert, self.SERVICE, self.ISSUER,
            f"{Registry.USER}:{Registry.PASSWORD}"] + ([self.public] if self.public else []))
        T.wait_for(lambda: T.port_open(self.port), timeout, what="token server", proc=self.proc)
        return self

    def get(self, scope, authorization=None):
        """A token for scope (anonymous without authorization)."""
        import urllib.parse
        q = urllib.parse.urlencode({"service": self.SERVICE, "scope": scope})
        hdrs = {"Authorization": authorization} if authorization else {}
        st, _, body = T.http_request(self.port, "GET", f"/token?{q}", headers=hdrs)
        T.check(st == 200, f"token server -> {st} {body[:200]!r}")
        return json.loads(body)["token"]

    def issued(self):
        """[(user, status, scopes)] of the requests so far ('-' = anonymous)."""
        out = []
        for line in self.proc.stdout().splitlines():
            parts = line.split(" ")
            if len(parts) >= 3 and parts[0] == "token":
                out.append((parts[1], int(parts[2]), parts[3:]))
        return out


class Storage:
    """nginx serving a registry's storage root, where the registry's
    `redirect` middleware sends blob requests (Docker Hub's CDN).  Access
    log: request, status, body bytes, and whether an Authorization header
    came (a client's registry token must not leak to storage)."""

    def __init__(self, env):
        self.env = env
        self.port = T.free_port()
        self.dir = env.mkdir(f"storage-{self.port}")
        self.log = os.path.join(self.dir, "access.log")
        self.proc = None

    @property
    def url(self):
        return f"http://{T.LOCALHOST}:{self.port}"

    def start(self, root, timeout=15.0):
        d = self.dir
        os.makedirs(root, exist_ok=True)
        for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(d, "tmp", t), exist_ok=True)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""{user}daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    log_format dfly "$request\\t$status\\t$body_bytes_sent\\t[$http_authorization]";
    access_log {self.log} dfly;
    server {{
        listen {T.LOCALHOST}:{self.port};
        root {root};
        location / {{ }}
    }}
}}
""")
        self.proc = self.env.procs.start("storage-nginx", [T.find_nginx(), "-p", d + "/", "-c", conf,
                                                           "-e", f"{d}/error.log"])
        T.wait_for(lambda: T.port_open(self.port), timeout, what="storage nginx", proc=self.proc)
        return self

    def requests(self):
        """[(method, path, status, bytes, authorization)]; nginx logs a
        request as it ends, so settle first when counting just-served ones."""
        out = []
        try:
            with open(self.log) as f:
                lines = f.read().splitlines()
        except OSError:
            return out
        for line in lines:
            parts = line.split("\t")
            if len(parts) == 4 and len(parts[0].split()) >= 2:
                m, p = parts[0].split()[:2]
                out.append((m, p, int(parts[1]), int(parts[2]), parts[3][1:-1]))
        return out


class TestCA:
    """A throw-away CA (EC P-256, made with openssl) and a server certificate
    it signed for 127.0.0.1 / localhost and the host names given."""

    def __init__(self, env, name="ca", names=()):
        need("openssl")
        d = env.mkdir(name)
        self.ca_key, self.ca = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
        self.key, self.cert = os.path.join(d, "server.key"), os.path.join(d, "server.pem")
        csr, ext = os.path.join(d, "server.csr"), os.path.join(d, "ext.cnf")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost" + "".join(f",DNS:{n}" for n in names) + "\n"
                    "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for argv in (["openssl", "req", "-x509"] + ec + ["-keyout", self.ca_key, "-out", self.ca, "-days", "2",
                                                         "-subj", "/CN=dfly test CA"],
                     ["openssl", "req"] + ec + ["-keyout", self.key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                     ["openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                      "-CAcreateserial", "-out", self.cert, "-days", "2", "-extfile", ext]):
            rc, _, err = env.run(argv)
            T.check(rc == 0, f"{' '.join(argv)}: {err}")

    def get(self, port, path, headers=None, timeout=30.0):
        """GET over TLS verified with this CA: (status, body)."""
        import http.client
        import ssl
        ctx = ssl.create_default_context(cafile=self.ca)
        c = http.client.HTTPSConnection(T.LOCALHOST, port, context=ctx, timeout=timeout)
        try:
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


HOSTS_NS_VAR = "DF_TEST_HOSTS_NS"


def private_hosts(names):
    """Re-executes this test script in a private mount namespace whose
    /etc/hosts also maps names to 127.0.0.1, so that clients which never
    proxy or mirror a loopback literal (Go's HTTP_PROXY rules, Docker Hub's
    host names) can be pointed at servers on this machine, and nothing is
    asked of a real name server.  Every process the test starts inherits the
    namespace; the machine's /etc/hosts is untouched.  Returns only inside
    the namespace (needs root: unshare(CLONE_NEWNS) and a bind mount)."""
    import sys
    import tempfile
    if os.environ.get(HOSTS_NS_VAR) == "1":
        return
    need("unshare", "mount")
    with open("/etc/hosts") as f:
        base = f.read()
    fd, path = tempfile.mkstemp(prefix="dfly-hosts-")
    with os.fdopen(fd, "w") as f:
        f.write(base.rstrip("\n") + "\n# dfly test names\n" + "".join(f"127.0.0.1 {n}\n" for n in names))
    os.chmod(path, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[HOSTS_NS_VAR] = "1"
    # The bind mount keeps the file's inode: the name can go at once.
    os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          'mount --bind "$0" /etc/hosts; rc=$?; rm -f "$0"; [ "$rc" = 0 ] || '
                          '{ echo "cannot bind-mount a hosts file over /etc/hosts" >&2; exit 1; }; exec "$@"',
                          path, sys.executable, os.path.abspath(sys.argv[0])] + sys.argv[1:])


def _blob(layout, data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", h), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + h, "size": len(data)}


def _tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 1700000000, 0o644
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def make_oci_image(layout, big_size, tag="1", more=()):
    """An OCI image layout with one layer of big_size random bytes, one more
    layer of random bytes per size in `more`, and two small layers.  Returns
    {"layers": [digest...], "big": digest, "sizes": {..}}."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    layers = [
        _tar([("etc/dfly-hello.txt", b"hello from the dfly mirror test\n")]),
        _tar([("data/big.bin", os.urandom(big_size))]),
    ] + [_tar([(f"data/more{i}.bin", os.urandom(n))]) for i, n in enumerate(more)] + [
        _tar([("etc/dfly-small.txt", os.urandom(3000))]),
    ]
    descs = [dict(_blob(layout, l), mediaType=OCI_LAYER) for l in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]},
    }, sort_keys=True).encode()
    cdesc = dict(_blob(layout, config), mediaType=OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": cdesc, "layers": descs}, sort_keys=True).encode()
    mdesc = dict(_blob(layout, manifest), mediaType=OCI_MANIFEST,
                 annotations={"org.opencontainers.image.ref.name": tag})
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [mdesc]}, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return {"layers": [d["digest"] for d in descs], "big": descs[1]["digest"],
            "sizes": {d["digest"]: d["size"] for d in descs}, "config": cdesc["digest"]}


def skopeo(env, args, timeout=180.0):
    need("skopeo")
    e = dict(os.environ)
    e["HOME"] = env.mkdir("skopeo-home")
    p = env.procs.start("skopeo", ["skopeo", "--insecure-policy"] + list(args), env=e)
    rc = p.wait(timeout)
    if rc is None:
        p.signal(9)
        p.wait(5.0)
    return rc, p


def push(env, reg, layout, ref="test/img:1"):
    """Pushes the layout and returns the image as the registry has it (skopeo
    compresses uncompressed layers on the way): {"layers", "big", "sizes",
    "config"} with the registry's digests."""
    args = ["copy", "--dest-tls-verify=false"]
    if reg.auth:
        args += ["--dest-creds", f"{reg.USER}:{reg.PASSWORD}"]
    rc, p = skopeo(env, args + [f"oci:{layout}:1", f"docker://{reg.addr}/{ref}"])
    T.check(rc == 0, f"skopeo push failed rc={rc}:\n{p.tail()}")
    name, tag = ref.rsplit(":", 1)
    hdrs = {"Accept": OCI_MANIFEST}
    if reg.auth:
        hdrs["Authorization"] = reg.credentials(name)
    if reg.tls:
        st, body = reg.tls.get(reg.port, f"/v2/{name}/manifests/{tag}", hdrs)
    else:
        st, _, body = T.http_request(reg.port, "GET", f"/v2/{name}/manifests/{tag}", headers=hdrs)
    T.check(st == 200, f"manifest from the registry -> {st}")
    man = json.loads(body)
    layers = [l["digest"] for l in man["layers"]]
    sizes = {l["digest"]: l["size"] for l in man["layers"]}
    big = max(man["layers"], key=lambda l: l["size"])["digest"]
    return {"layers": layers, "big": big, "sizes": sizes, "config": man["config"]["digest"]}


def start_pull(env, mirror_port, out, creds=None, ref="test/img:1"):
    args = ["copy", "--src-tls-verify=false"]
    if creds:
        args += ["--src-creds", creds]
    need("skopeo")
    e = dict(os.environ)
    e["HOME"] = env.mkdir("skopeo-home")
    return env.procs.start("skopeo", ["skopeo", "--insecure-policy"] + args +
                           [f"docker://{T.LOCALHOST}:{mirror_port}/{ref}", f"dir:{out}"], env=e)


def example(*parts):
    """The text of a file of docs/examples (the tests use the documented
    configurations, with this machine's addresses put in)."""
    with open(os.path.join(T.SOURCE_DIR, "docs", "examples", *parts)) as f:
        return f.read()


def swap(text, old, new):
    """text with old replaced by new; old must be there."""
    T.check(old in text, f"the example no longer contains {old!r}")
    return text.replace(old, new)


def registries_conf(registry, mirror):
    """docs/examples/registries.conf for registry (host:port) pulled through
    mirror (dfdaemon's host:port); the test registry speaks plain HTTP, so
    its own entry gets insecure = true as well."""
    text = swap(example("registries.conf"), 'location = "docker.io"',
                f'location = "{registry}"\ninsecure = true')
    return swap(text, "127.0.0.1:65001", mirror)


def tls_registry(env, big_size, names=()):
    """A TLS registry (its own CA; the certificate also names names) holding
    test/img:1 with a big layer of big_size, and a second, hijack CA for a
    dfdaemon that intercepts it: (ca, hijack, registry, image)."""
    ca = TestCA(env, names=names)
    hj = TestCA(env, name="hijack-ca")
    reg = Registry(env, tls=ca).start()
    layout = env.mkdir("oci")
    make_oci_image(layout, big_size)
    return ca, hj, reg, push(env, reg, layout)


def https_proxy_conf(env, authority, hijack, registry_ca):
    """docs/examples/dfdaemon-https-proxy.yml (path of a copy) intercepting
    authority ("host:port") with the hijack TestCA, reaching the registry
    with registry_ca (the harness's flags override its listen address)."""
    conf = swap(example("dfdaemon-https-proxy.yml"), r"^registry\.example\.com:5000$",
                "^" + authority.replace(".", r"\.") + "$")
    for old, new in (("registry.example.com:5000", authority), ("/etc/dfly/hijack-ca.pem", hijack.ca),
                     ("/etc/dfly/hijack-ca.key", hijack.ca_key), ("/etc/dfly/registry-ca.pem", registry_ca)):
        conf = swap(conf, old, new)
    path = env.path("dfdaemon-https-proxy.yml")
    with open(path, "w") as f:
        f.write(conf)
    return path


def hub_like_registry(env, public=None):
    """Built like Docker Hub: a registry with token auth (anonymous pulls of
    names starting with public, when given) that redirects blob GETs (307)
    to an nginx serving its storage: (token server, storage, registry)."""
    ts = TokenServer(env, public=public).start()
    storage = Storage(env)
    reg = Registry(env, token=ts, redirect=storage.url)
    storage.start(reg.data)
    reg.start()
    return ts, storage, reg


def pull_all_p2p(env, daemons, image, creds, what="blobs"):
    """One skopeo pull with creds through each dfdaemon at once: every pull
    succeeds with the image's digests, every daemon served blobs by P2P with
    no fallback and fetched nothing from the registry itself.  Returns the
    P2P bytes the daemons served."""
    pulls = [start_pull(env, d.port, env.path(f"pull{i}"), creds=creds) for i, d in enumerate(daemons)]
    for i, p in enumerate(pulls):
        T.check(p.wait(240.0) == 0, f"skopeo pull through dfdaemon {i} failed:\n{p.tail()}")
        check_pulled(env.path(f"pull{i}"), image)
    p2p = 0
    for d in daemons:
        m = daemon_metrics(d)
        p2p += metric(m, "dfly_dfdaemon_mirror_p2p_bytes_total") or 0
        T.check(metric(m, "dfly_dfdaemon_mirror_p2p_total") >= 3, f"{what} not served by P2P:\n{m}")
        T.check(metric(m, "dfly_dfdaemon_mirror_fallbacks_total") == 0, f"fallbacks:\n{m}")
        T.check((metric(m, 'dfly_dfdaemon_download_bytes_total{source="origin"}') or 0) == 0,
                f"a daemon fetched from the registry itself:\n{m}")
    return p2p


def check_pulled(out, image):
    for d in image["layers"] + [image["config"]]:
        path = os.path.join(out, d.split(":", 1)[1])
        T.check(os.path.isfile(path), f"pulled image lacks blob {d} in {out}")
        got = "sha256:" + T.file_hash(path)
        T.check(got == d, f"blob {d} pulled with digest {got}")


def daemon_metrics(d):
    """A dfdaemon's /metrics text."""
    st, _, body = T.http_request(d.port, "GET", "/metrics")
    T.check(st == 200, f"dfdaemon /metrics -> {st}")
    return body.decode()


def metric(text, series):
    """The value of one series, e.g. 'x_total{source="peer"}' (exact text)."""
    m = re.search(rf"(?m)^{re.escape(series)} ([0-9.e+]+)$", text)
    return int(float(m.group(1))) if m else None


class Containerd:
    """A private containerd (Debian's 1.6): its own root, state and sockets in
    the test's temp dir, the CRI plugin disabled (no kubelet here), content
    isolated per namespace (so two namespaces pull the same blobs twice, as
    two hosts would), the native snapshotter for unpacking (works without
    overlayfs).  Pulls with `ctr images pull --hosts-dir`."""

    def __init__(self, env, name="containerd"):
        need("containerd", "ctr")
        self.env = env
        self.dir = env.mkdir(name)
        self.sock = os.path.join(self.dir, "containerd.sock")
        self.proc = None

    def start(self, timeout=30.0):
        conf = os.path.join(self.dir, "config.toml")
        with open(conf, "w") as f:
            f.write(f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = "{self.sock}.debug"
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
""")
        self.proc = self.env.procs.start("containerd", ["containerd", "--config", conf])
        T.wait_for(lambda: os.path.exists(self.sock) and self.ctr_ok(), timeout,
                   what="containerd socket", proc=self.proc)
        return self

    def ctr_ok(self):
        try:
            return subprocess.run(["ctr", "--address", self.sock, "version"], capture_output=True,
                                  timeout=5.0).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def hosts_dir(self, registry_addr, mirror_port, name="hosts"):
        """docs/examples/containerd/certs.d/docker.io/hosts.toml for
        registry_addr (plain HTTP) whose host is the dfdaemon mirror
        (containerd then adds ?ns=<registry_addr> to its requests)."""
        d = self.env.mkdir(name, registry_addr)
        text = swap(example("containerd", "certs.d", "docker.io", "hosts.toml"),
                    'server = "https://registry-1.docker.io"', f'server = "http://{registry_addr}"')
        with open(os.path.join(d, "hosts.toml"), "w") as f:
            f.write(swap(text, "127.0.0.1:65001", f"{T.LOCALHOST}:{mirror_port}"))
        return os.path.dirname(d)

    def start_pull(self, namespace, ref, hosts_dir, platform=None):
        plat = ["--platform", platform] if platform else []
        return self.env.procs.start("ctr", ["ctr", "--address", self.sock, "--namespace", namespace,
                                            "images", "pull", "--hosts-dir", hosts_dir,
                                            "--snapshotter", "native"] + plat + [ref])

    def content(self, namespace):
        """{digest: size} of the namespace's content store."""
        out = subprocess.run(["ctr", "--address", self.sock, "--namespace", namespace, "content", "ls"],
                             capture_output=True, timeout=30.0, text=True).stdout
        res = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("sha256:"):
                res[parts[0]] = parts[1]
        return res

    def blob(self, namespace, digest, path):
        with open(path, "wb") as f:
            rc = subprocess.run(["ctr", "--address", self.sock, "--namespace", namespace, "content", "get",
                                 digest], stdout=f, timeout=60.0).returncode
        T.check(rc == 0, f"ctr content get {digest} failed")


def registry_blobs(reg, name, ref, accept=OCI_MANIFEST):
    """[config digest, layer digests...] of the manifest name:ref the
    registry holds (plain HTTP, no auth)."""
    st, _, body = T.http_request(reg.port, "GET", f"/v2/{name}/manifests/{ref}", headers={"Accept": accept})
    T.check(st == 200, f"manifest {name}:{ref} from the registry -> {st}")
    man = json.loads(body)
    return [man["config"]["digest"]] + [l["digest"] for l in man["layers"]]


def registry_index(reg, name, ref, kind=OCI_INDEX, child=OCI_MANIFEST):
    """{arch: [config + layer digests]} of the two-platform index (or Docker
    manifest list: kind=DOCKER_LIST, child=DOCKER_V2) the registry holds,
    asked for with that media type alone in Accept; its mediaType must be
    kind."""
    st, h, body = T.http_request(reg.port, "GET", f"/v2/{name}/manifests/{ref}", headers={"Accept": kind})
    T.check(st == 200, f"index {name}:{ref} -> {st}")
    idx = json.loads(body)
    T.check(idx.get("mediaType") == kind and h.get("content-type") == kind and len(idx["manifests"]) == 2,
            f"not a 2-entry {kind} ({h.get('content-type')}): {idx}")
    return {m["platform"]["architecture"]: registry_blobs(reg, name, m["digest"], accept=child)
            for m in idx["manifests"]}


def api_put_blob(reg, name, data):
    """Uploads data as a blob of repository name with the registry's API (a
    monolithic POST + PUT, plain HTTP, no auth); returns its descriptor."""
    dg = "sha256:" + hashlib.sha256(data).hexdigest()
    st, h, _ = T.http_request(reg.port, "POST", f"/v2/{name}/blobs/uploads/")
    T.check(st == 202 and "location" in h, f"blob upload start -> {st}")
    loc = h["location"]
    loc = loc[loc.index("/v2/"):] if "://" in loc else loc
    st, _, body = T.http_request(reg.port, "PUT", f"{loc}{'&' if '?' in loc else '?'}digest={dg}", body=data,
                                 headers={"Content-Type": "application/octet-stream"}, timeout=60.0)
    T.check(st == 201, f"blob upload {dg} -> {st} {body[:200]!r}")
    return {"digest": dg, "size": len(data)}


def api_put_manifest(reg, name, ref, media_type, doc):
    """PUTs the manifest doc (a dict, serialised here) as name:ref with its
    media type; returns its descriptor."""
    data = json.dumps(doc, sort_keys=True).encode()
    st, _, body = T.http_request(reg.port, "PUT", f"/v2/{name}/manifests/{ref}", body=data,
                                 headers={"Content-Type": media_type})
    T.check(st == 201, f"manifest PUT {name}:{ref} ({media_type}) -> {st} {body[:300]!r}")
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def push_multi(reg, name, tag, docker, sizes):
    """Pushes, with the registry's API, a two-platform image name:tag: an OCI
    index of OCI manifests, or (docker) a Docker manifest list of Docker
    schema 2 manifests.  linux/amd64 has two small layers; linux/arm64 one
    gzip layer of random bytes per size in sizes, plus a small one.  Returns
    {arch: {"layers": [...], "config": digest, "sizes": {digest: size}}}."""
    import gzip
    man_t, cfg_t, layer_t, list_t = ((DOCKER_V2, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST) if docker else
                                     (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER + "+gzip", OCI_INDEX))
    entries, out = [], {}
    for arch, lsizes in (("amd64", [200000, 300000]), ("arm64", list(sizes) + [3000])):
        tars = [_tar([(f"data/{arch}-{i}.bin", os.urandom(n))]) for i, n in enumerate(lsizes)]
        # Level 0: random bytes do not compress; a real gzip stream all the same.
        descs = [dict(api_put_blob(reg, name, gzip.compress(t, compresslevel=0, mtime=0)), mediaType=layer_t)
                 for t in tars]
        config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                             "rootfs": {"type": "layers",
                                        "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]}},
                            sort_keys=True).encode()
        cdesc = dict(api_put_blob(reg, name, config), mediaType=cfg_t)
        mdesc = api_put_manifest(reg, name, f"{tag}-{arch}", man_t,
                                 {"schemaVersion": 2, "mediaType": man_t, "config": cdesc, "layers": descs})
        entries.append(dict(mdesc, platform={"os": "linux", "architecture": arch}))
        out[arch] = {"layers": [d["digest"] for d in descs], "config": cdesc["digest"],
                     "sizes": {d["digest"]: d["size"] for d in descs}}
    api_put_manifest(reg, name, tag, list_t, {"schemaVersion": 2, "mediaType": list_t, "manifests": entries})
    return out
