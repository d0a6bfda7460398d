/*
 * dfdaemon: the long-lived peer of a host.  It holds one df_peer (piece store,
 * upload server, host-wide rate limit), serves dfget's downloads over the
 * control socket <home>/dfdaemon.sock, and listens on an HTTP port: GET
 * /healthz, GET /metrics (the peer's statistics as rendered by
 * df_peer_metrics_render(), then the mirror's), and everything else is the
 * registry mirror (df_proxy_*): blobs through P2P, the rest relayed to the
 * registry.
 *
 * Configuration: an optional YAML file (--config) whose keys are the long
 * flags below, then the command line.  Both go through set_option(), so a
 * key means the same in either place and a flag overrides the file.
 *
 * Shutdown (SIGINT/SIGTERM): the loop stops, then the HTTP listener, the peer
 * (which cancels its downloads without callbacks) and the control socket
 * (which then releases every session) are freed in that order.
 */
#include <dfly/dfly.h>

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#define DEFAULT_LISTEN "127.0.0.1:65001"
#define DEFAULT_NODE "127.0.0.1:8002"
#define DEFAULT_GOSSIP_LISTEN "0.0.0.0:7946"

typedef struct {
    char *home;
    char **nodes;           /* df_parse_node_list() */
    char *config;
    char listen_host[256];
    uint16_t listen_port;
    char *upload_host;
    uint16_t upload_port;
    char *advertise_ip;
    uint64_t total_limit;
    uint64_t upload_limit;
    uint64_t cache_limit;
    uint64_t cache_max_age_ms;
    df_log_level_t level;
    char *registry;
    char *registry_ca;
    bool registry_insecure;
    bool http_proxy;
    char **rules;           /* NULL-terminated, or NULL for the default */
    size_t nrules;
    bool rules_from_flags;  /* --rule replaces the file's rules, not adds to them */
    char **hosts;           /* --registry-host specs, NULL-terminated, or NULL */
    size_t nhosts;
    bool hosts_from_flags;  /* likewise for --registry-host */
    bool gossip;            /* --mode gossip */
    char gossip_listen[280];/* HOST:PORT */
    char **joins;           /* df_parse_node_list() of --join, or NULL */
    char *encrypt;
    char *gossip_dns;
    char *gossip_dns_server;
    uint64_t gossip_dns_interval_ms;
    char *gossip_name;
    bool gossip_forward_headers; /* hand origin headers to an owner in clear (no key) */
    char **hijack;          /* --hijack-host regexes, NULL-terminated, or NULL */
    size_t nhijack;
    bool hijack_from_flags; /* likewise for --hijack-host */
    char *hijack_ca_cert;
    char *hijack_ca_key;
} opts_t;

#define HIJACK_MAX 64

#define RULES_MAX 64

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dfdaemon [options]\n"
            "      --home DIR            work home: piece store, control socket\n"
            "                            (default $HOME/.dfly)\n"
            "      --node H:P[,H:P...]   supernodes (default " DEFAULT_NODE ")\n"
            "      --config FILE         YAML file with the keys of the long flags;\n"
            "                            flags override it\n"
            "      --listen HOST:PORT    HTTP port (default " DEFAULT_LISTEN ")\n"
            "      --upload-port PORT    peer upload server port (default: ephemeral)\n"
            "      --upload-host HOST    peer upload server address (default 0.0.0.0)\n"
            "      --advertise-ip IP     address other peers use to reach this one\n"
            "      --totallimit RATE     host-wide download rate limit (e.g. 100M)\n"
            "      --upload-limit RATE   host-wide upload rate limit, all peers together (e.g. 50M)\n"
            "      --cache-limit SIZE    piece store budget (e.g. 10G)\n"
            "      --cache-max-age DUR   evict finished tasks unused this long (e.g. 24h)\n"
            "      --registry URL        upstream registry of the mirror\n"
            "                            (default " DF_PROXY_DEFAULT_REGISTRY ")\n"
            "      --registry-ca FILE    CA bundle for the registry's TLS certificate\n"
            "      --registry-insecure   do not verify the registry's TLS certificate\n"
            "      --http-proxy          also act as an HTTP proxy (http:// targets,\n"
            "                            same rules); off by default\n"
            "      --hijack-host REGEX   with --http-proxy: CONNECTs to a matching HOST:PORT\n"
            "                            are TLS-terminated and served like the mirror\n"
            "                            (blobs by P2P); others are tunnelled (repeatable)\n"
            "      --hijack-ca-cert FILE CA certificate (PEM) the clients trust\n"
            "      --hijack-ca-key FILE  its private key (PEM)\n"
            "      --registry-host \"HOST[:PORT] [http|https] [insecure] [ca=FILE]\"\n"
            "                            how to reach a registry named by ?ns= (repeatable)\n"
            "      --rule \"ACTION METHOD REGEX\"\n"
            "                            mirror rule, repeatable, first match wins:\n"
            "                            p2p GET REGEX or direct METHOD|* REGEX on the\n"
            "                            path; default \"p2p GET ^/v2/.+/blobs/sha256:[0-9a-f]{64}$\"\n"
            "      --mode MODE           supernode (default) or gossip: no supernode, the\n"
            "                            dfdaemons find each other over Serf's gossip\n"
            "      --gossip-listen HOST:PORT  gossip UDP+TCP address (default " DEFAULT_GOSSIP_LISTEN ")\n"
            "      --join H:P[,H:P...]   gossip members to join at start\n"
            "      --encrypt KEY         gossip encryption key (base64, 16/24/32 bytes)\n"
            "      --gossip-dns NAME:PORT|SRVNAME  join the A/AAAA records of NAME, or the\n"
            "                            targets of SRV records (no :PORT, e.g.\n"
            "                            _serf._tcp.example), re-resolved periodically\n"
            "      --gossip-dns-server IP[:PORT]  DNS server for --gossip-dns (default:\n"
            "                            resolv.conf and /etc/hosts)\n"
            "      --gossip-dns-interval DUR  re-resolution period (default 30s)\n"
            "      --gossip-name NAME    member name (default <hostname>-<upload port>)\n"
            "      --gossip-forward-headers  without --encrypt, still hand a request's origin\n"
            "                            headers (credentials) to the task's owner, in clear\n"
            "      --log-level L         error, warn, info (default) or debug\n"
            "      --version             print the version and exit\n"
            "  -h, --help                this help\n");
}

static int replace_str(char **slot, const char *value)
{
    char *s = strdup(value);
    if (!s)
        return -ENOMEM;
    free(*slot);
    *slot = s;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    if (strcasecmp(s, "true") == 0 || strcasecmp(s, "yes") == 0 || strcmp(s, "1") == 0)
        *out = true;
    else if (strcasecmp(s, "false") == 0 || strcasecmp(s, "no") == 0 || strcmp(s, "0") == 0)
        *out = false;
    else
        return -EINVAL;
    return 0;
}

static int add_rule(opts_t *o, const char *value)
{
    char **n;

    /* A YAML sequence reaches us joined with ',', which a regex may
     * contain: rules in a file are a mapping (rules.NAME: SPEC). */
    if (strstr(value, ",p2p ") || strstr(value, ",direct ") || o->nrules >= RULES_MAX)
        return -EINVAL;
    n = realloc(o->rules, (o->nrules + 2) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    o->rules = n;
    o->rules[o->nrules] = strdup(value);
    if (!o->rules[o->nrules])
        return -ENOMEM;
    o->rules[++o->nrules] = NULL;
    return 0;
}

/* Appends a copy of value to a NULL-terminated list of at most max. */
static int add_str(char ***list, size_t *n, size_t max, const char *value)
{
    char **l;

    if (*n >= max)
        return -EINVAL;
    l = realloc(*list, (*n + 2) * sizeof(*l));
    if (!l)
        return -ENOMEM;
    *list = l;
    l[*n] = strdup(value);
    if (!l[*n])
        return -ENOMEM;
    l[++*n] = NULL;
    return 0;
}

static void free_strs(char ***list, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        free((*list)[i]);
    free(*list);
    *list = NULL;
    *n = 0;
}

static int add_host(opts_t *o, const char *value)
{
    return add_str(&o->hosts, &o->nhosts, DF_PROXY_HOSTS_MAX, value);
}

static void free_hosts(opts_t *o)
{
    free_strs(&o->hosts, &o->nhosts);
}

static void free_rules(opts_t *o)
{
    for (size_t i = 0; i < o->nrules; i++)
        free(o->rules[i]);
    free(o->rules);
    o->rules = NULL;
    o->nrules = 0;
}

static int parse_port(const char *s, uint16_t *out)
{
    char *end;
    unsigned long v;

    if (!*s || *s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end || v > 65535)
        return -EINVAL;
    *out = (uint16_t)v;
    return 0;
}

/* Applies one setting by its long-flag name.  0, -EINVAL (bad value, message
 * printed), -ENOENT (unknown key) or -ENOMEM. */
static int set_option(opts_t *o, const char *key, const char *value, const char *where)
{
    struct in6_addr a6;
    struct in_addr a4;
    int rc = -EINVAL;

    if (strcmp(key, "home") == 0) {
        rc = *value ? replace_str(&o->home, value) : -EINVAL;
    } else if (strcmp(key, "node") == 0) {
        char **nodes = NULL;
        rc = df_parse_node_list(value, &nodes);
        if (rc > 0) {
            df_node_list_free(o->nodes);
            o->nodes = nodes;
        }
    } else if (strcmp(key, "listen") == 0) {
        rc = df_parse_hostport(value, o->listen_host, sizeof(o->listen_host), &o->listen_port);
    } else if (strcmp(key, "upload-port") == 0) {
        rc = parse_port(value, &o->upload_port);
    } else if (strcmp(key, "upload-host") == 0) {
        rc = *value ? replace_str(&o->upload_host, value) : -EINVAL;
    } else if (strcmp(key, "advertise-ip") == 0) {
        if (inet_pton(AF_INET, value, &a4) == 1 || inet_pton(AF_INET6, value, &a6) == 1)
            rc = replace_str(&o->advertise_ip, value);
    } else if (strcmp(key, "totallimit") == 0) {
        rc = df_parse_size(value, &o->total_limit);
    } else if (strcmp(key, "upload-limit") == 0) {
        rc = df_parse_size(value, &o->upload_limit);
    } else if (strcmp(key, "cache-limit") == 0) {
        rc = df_parse_size(value, &o->cache_limit);
    } else if (strcmp(key, "mode") == 0) {
        rc = 0;
        if (strcmp(value, "gossip") == 0)
            o->gossip = true;
        else if (strcmp(value, "supernode") == 0)
            o->gossip = false;
        else
            rc = -EINVAL;
    } else if (strcmp(key, "gossip-listen") == 0) {
        char host[256];
        uint16_t port;
        rc = df_parse_hostport(value, host, sizeof(host), &port);
        if (rc == 0 && (size_t)snprintf(o->gossip_listen, sizeof(o->gossip_listen), "%s", value) >=
                           sizeof(o->gossip_listen))
            rc = -EINVAL;
    } else if (strcmp(key, "join") == 0) {
        char **joins = NULL;
        rc = df_parse_node_list(value, &joins);
        if (rc > 0) {
            df_node_list_free(o->joins);
            o->joins = joins;
        }
    } else if (strcmp(key, "encrypt") == 0) {
        rc = *value ? replace_str(&o->encrypt, value) : -EINVAL;
    } else if (strcmp(key, "gossip-dns") == 0) {
        char host[256];
        uint16_t port;
        /* NAME:PORT, or an SRV name (no port); dns_watch checks it further. */
        rc = strchr(value, ':') ? df_parse_hostport(value, host, sizeof(host), &port)
                                : (*value && strlen(value) <= 253 ? 0 : -EINVAL);
        if (rc == 0)
            rc = replace_str(&o->gossip_dns, value);
    } else if (strcmp(key, "gossip-dns-server") == 0) {
        rc = *value ? replace_str(&o->gossip_dns_server, value) : -EINVAL;
    } else if (strcmp(key, "gossip-dns-interval") == 0) {
        rc = df_parse_duration_ms(value, &o->gossip_dns_interval_ms);
        if (rc == 0 && o->gossip_dns_interval_ms < 100)
            rc = -EINVAL;
    } else if (strcmp(key, "gossip-forward-headers") == 0) {
        rc = parse_bool(value, &o->gossip_forward_headers);
    } else if (strcmp(key, "gossip-name") == 0) {
        rc = *value && strlen(value) <= 64 ? replace_str(&o->gossip_name, value) : -EINVAL;
    } else if (strcmp(key, "cache-max-age") == 0) {
        rc = df_parse_duration_ms(value, &o->cache_max_age_ms);
    } else if (strcmp(key, "log-level") == 0) {
        rc = df_parse_log_level(value, &o->level);
    } else if (strcmp(key, "registry") == 0) {
        rc = *value ? replace_str(&o->registry, value) : -EINVAL;
    } else if (strcmp(key, "registry-ca") == 0) {
        rc = *value ? replace_str(&o->registry_ca, value) : -EINVAL;
    } else if (strcmp(key, "registry-insecure") == 0) {
        rc = parse_bool(value, &o->registry_insecure);
    } else if (strcmp(key, "http-proxy") == 0) {
        rc = parse_bool(value, &o->http_proxy);
    } else if (strcmp(key, "rule") == 0 || strncmp(key, "rules.", 6) == 0) {
        if (*where == '\0' && !o->rules_from_flags) {
            free_rules(o);
            o->rules_from_flags = true;
        }
        rc = add_rule(o, value);
    } else if (strcmp(key, "registry-host") == 0 || strncmp(key, "registry-hosts.", 15) == 0) {
        if (*where == '\0' && !o->hosts_from_flags) {
            free_hosts(o);
            o->hosts_from_flags = true;
        }
        rc = add_host(o, value);
    } else if (strcmp(key, "hijack-host") == 0 || strncmp(key, "hijack-hosts.", 13) == 0) {
        if (*where == '\0' && !o->hijack_from_flags) {
            free_strs(&o->hijack, &o->nhijack);
            o->hijack_from_flags = true;
        }
        rc = *value ? add_str(&o->hijack, &o->nhijack, HIJACK_MAX, value) : -EINVAL;
    } else if (strcmp(key, "hijack-ca-cert") == 0) {
        rc = *value ? replace_str(&o->hijack_ca_cert, value) : -EINVAL;
    } else if (strcmp(key, "hijack-ca-key") == 0) {
        rc = *value ? replace_str(&o->hijack_ca_key, value) : -EINVAL;
    } else {
        fprintf(stderr, "dfdaemon: %sunknown setting \"%s\"\n", where, key);
        return -ENOENT;
    }
    if (rc == -ENOMEM)
        fprintf(stderr, "dfdaemon: out of memory\n");
    else if (rc < 0)
        fprintf(stderr, "dfdaemon: %sbad %s \"%s\"\n", where, key, value);
    return rc < 0 ? (rc == -ENOMEM ? rc : -EINVAL) : 0;
}

static int on_config_entry(const char *key, const char *value, unsigned line, void *arg)
{
    opts_t *o = arg;
    char where[PATH_MAX + 32];

    snprintf(where, sizeof(where), "%s:%u: ", o->config, line);
    return set_option(o, key, value, where) < 0 ? DF_ECONFIG : 0;
}

static const struct option long_opts[] = {
    {"home", required_argument, NULL, 0},
    {"node", required_argument, NULL, 0},
    {"config", required_argument, NULL, 0},
    {"listen", required_argument, NULL, 0},
    {"upload-port", required_argument, NULL, 0},
    {"upload-host", required_argument, NULL, 0},
    {"advertise-ip", required_argument, NULL, 0},
    {"totallimit", required_argument, NULL, 0},
    {"upload-limit", required_argument, NULL, 0},
    {"cache-limit", required_argument, NULL, 0},
    {"cache-max-age", required_argument, NULL, 0},
    {"log-level", required_argument, NULL, 0},
    {"mode", required_argument, NULL, 0},
    {"gossip-listen", required_argument, NULL, 0},
    {"join", required_argument, NULL, 0},
    {"encrypt", required_argument, NULL, 0},
    {"gossip-dns", required_argument, NULL, 0},
    {"gossip-dns-server", required_argument, NULL, 0},
    {"gossip-dns-interval", required_argument, NULL, 0},
    {"gossip-name", required_argument, NULL, 0},
    {"gossip-forward-headers", no_argument, NULL, 0},
    {"registry", required_argument, NULL, 0},
    {"registry-ca", required_argument, NULL, 0},
    {"registry-insecure", no_argument, NULL, 0},
    {"http-proxy", no_argument, NULL, 0},
    {"rule", required_argument, NULL, 0},
    {"registry-host", required_argument, NULL, 0},
    {"hijack-host", required_argument, NULL, 0},
    {"hijack-ca-cert", required_argument, NULL, 0},
    {"hijack-ca-key", required_argument, NULL, 0},
    {"version", no_argument, NULL, 'V'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static void opts_free(opts_t *o)
{
    free(o->home);
    df_node_list_free(o->nodes);
    free(o->config);
    free(o->upload_host);
    free(o->advertise_ip);
    free(o->registry);
    free(o->registry_ca);
    free_rules(o);
    free_hosts(o);
    df_node_list_free(o->joins);
    free(o->encrypt);
    free(o->gossip_dns);
    free(o->gossip_dns_server);
    free(o->gossip_name);
    free_strs(&o->hijack, &o->nhijack);
    free(o->hijack_ca_cert);
    free(o->hijack_ca_key);
}

static int usage_error(void)
{
    fputs("usage: dfdaemon [options]; 'dfdaemon --help' lists them\n", stderr);
    return 2;
}

/* Two passes over argv: the first finds --config (and --help/--version),
 * the file is applied, then the second pass applies every flag on top.
 * Returns -1 to go on, else an exit code. */
static int parse_args(int argc, char **argv, opts_t *o)
{
    char err[512];
    int c, idx, rc;

    memset(o, 0, sizeof(*o));
    o->level = DF_LOG_INFO;
    if (df_parse_hostport(DEFAULT_LISTEN, o->listen_host, sizeof(o->listen_host), &o->listen_port) < 0)
        return 1;
    snprintf(o->gossip_listen, sizeof(o->gossip_listen), "%s", DEFAULT_GOSSIP_LISTEN);
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", long_opts, &idx)) != -1) {
        switch (c) {
        case 0:
            if (strcmp(long_opts[idx].name, "config") == 0 && replace_str(&o->config, optarg) < 0)
                return 1;
            break;
        case 'V': printf("dfdaemon %s\n", df_version()); return 0;
        case 'h': usage(stdout); return 0;
        case ':': fprintf(stderr, "dfdaemon: option %s needs a value\n", argv[optind - 1]); return usage_error();
        default: fprintf(stderr, "dfdaemon: unknown option %s\n", argv[optind - 1]); return usage_error();
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dfdaemon: unexpected argument \"%s\"\n", argv[optind]);
        return usage_error();
    }
    if (o->config) {
        rc = df_config_load_flat(o->config, on_config_entry, o, err, sizeof(err));
        if (rc < 0) {
            if (err[0])
                fprintf(stderr, "dfdaemon: %s\n", err);
            return rc == -ENOMEM ? 1 : 2;
        }
    }
    optind = 0; /* glibc: a full rescan */
    while ((c = getopt_long(argc, argv, ":h", long_opts, &idx)) != -1) {
        if (c != 0 || strcmp(long_opts[idx].name, "config") == 0)
            continue;
        rc = set_option(o, long_opts[idx].name, optarg ? optarg : "true", "");
        if (rc < 0)
            return rc == -ENOMEM ? 1 : usage_error();
    }
    if (!o->home) {
        char buf[PATH_MAX];
        if (df_default_home(buf, sizeof(buf)) < 0) {
            fprintf(stderr, "dfdaemon: $HOME is too long\n");
            return 2;
        }
        if (replace_str(&o->home, buf) < 0)
            return 1;
    }
    if (!o->nodes && df_parse_node_list(DEFAULT_NODE, &o->nodes) < 0)
        return 1;
    return -1;
}

/* ------------------------------------------------------------------ HTTP */

typedef struct {
    df_peer_t *peer;
    df_proxy_t *proxy;
} http_ctx_t;

/* The mirror's counters, appended to the peer's metrics. */
static int render_proxy_metrics(df_proxy_t *proxy, struct evbuffer *out)
{
    df_proxy_stats_t s;
    const struct {
        const char *name, *help;
        uint64_t v;
    } m[] = {
        {"mirror_requests_total", "Requests the registry mirror handled.", 0},
        {"mirror_p2p_total", "Blob requests served from a P2P download.", 0},
        {"mirror_direct_total", "Requests relayed to the registry (fallbacks included).", 0},
        {"mirror_fallbacks_total", "P2P downloads that failed before the first byte and were relayed.", 0},
        {"mirror_denied_total", "Blob requests the registry refused for the client's credentials.", 0},
        {"mirror_aborted_total", "Replies cut after their first byte because the P2P download failed.", 0},
        {"mirror_p2p_bytes_total", "Body bytes sent from P2P downloads.", 0},
        {"mirror_direct_bytes_total", "Body bytes relayed from the registry.", 0},
        {"mirror_shared_total", "Blob requests that joined a P2P download already running for the same blob.", 0},
        {"mirror_proxy_requests_total", "Requests received as an HTTP proxy (absolute-form target).", 0},
        {"mirror_connect_tunnels_total", "CONNECTs tunnelled untouched (host not listed for interception).", 0},
        {"mirror_connect_intercepted_total", "CONNECTs TLS-terminated with a minted certificate (--hijack-host).", 0},
        {"mirror_intercepted_requests_total", "Requests read from intercepted CONNECTs.", 0},
        {"mirror_resumed_total", "Replies whose P2P download failed after their first byte, finished from the registry.", 0},
        {"mirror_p2p_ranges_total", "P2P replies to a Range request (206).", 0},
    };
    uint64_t v[15];

    df_proxy_stats(proxy, &s);
    v[0] = s.requests, v[1] = s.p2p, v[2] = s.direct, v[3] = s.fallbacks;
    v[4] = s.denied, v[5] = s.aborted, v[6] = s.p2p_bytes, v[7] = s.direct_bytes, v[8] = s.shared, v[9] = s.proxied;
    v[10] = s.tunnels, v[11] = s.intercepted, v[12] = s.intercepted_requests, v[13] = s.resumed, v[14] = s.ranges;
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
        if (evbuffer_add_printf(out, "# HELP dfly_dfdaemon_%s %s\n# TYPE dfly_dfdaemon_%s counter\ndfly_dfdaemon_%s %llu\n",
                                m[i].name, m[i].help, m[i].name, m[i].name, (unsigned long long)v[i]) < 0)
            return -ENOMEM;
    return 0;
}

static void on_http(struct evhttp_request *req, void *arg)
{
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *body = evhttp_request_get_output_buffer(req);
    struct evkeyvalq *hdrs = evhttp_request_get_output_headers(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    size_t plen = strcspn(uri, "?");
    http_ctx_t *ctx = arg;
    df_peer_t *peer = ctx->peer;

    if (plen == 8 && strncmp(uri, "/healthz", 8) == 0) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD)
            goto not_allowed;
        evhttp_add_header(hdrs, "Content-Type", "text/plain");
        evbuffer_add_printf(body, "ok\n");
        evhttp_send_reply(req, 200, "OK", body);
        return;
    }
    if (plen == 8 && strncmp(uri, "/metrics", 8) == 0) {
        char *text = NULL;
        size_t len = 0;
        int rc;

        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD)
            goto not_allowed;
        rc = df_peer_metrics_render(peer, &text, &len);
        if (rc < 0) {
            fprintf(stderr, "dfdaemon: /metrics: %s\n", df_strerror(rc));
            evhttp_send_error(req, 500, "Internal Server Error");
            return;
        }
        evhttp_add_header(hdrs, "Content-Type", DF_PEER_METRICS_CONTENT_TYPE);
        evbuffer_add(body, text, len);
        free(text);
        if (render_proxy_metrics(ctx->proxy, body) < 0) {
            evbuffer_drain(body, evbuffer_get_length(body));
            evhttp_send_error(req, 500, "Internal Server Error");
            return;
        }
        evhttp_send_reply(req, 200, "OK", body);
        return;
    }
    df_proxy_handle(ctx->proxy, req);
    return;
not_allowed:
    evhttp_add_header(hdrs, "Allow", "GET, HEAD");
    evhttp_send_reply(req, 405, "Method Not Allowed", NULL);
}

static void on_left(void *arg)
{
    event_base_loopbreak(arg);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    fprintf(stderr, "dfdaemon: signal %d, stopping\n", (int)sig);
    event_base_loopbreak(arg);
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    struct event_base *base = NULL;
    struct event *sigint = NULL, *sigterm = NULL;
    struct evhttp *http = NULL;
    struct evhttp_bound_socket *bound;
    df_peer_t *peer = NULL;
    df_daemon_t *daemon = NULL;
    df_proxy_t *proxy = NULL;
    df_proxy_config_t xc;
    http_ctx_t ctx;
    char err[512];
    df_peer_config_t pc;
    char sock[PATH_MAX + 16];
    int rc, status = 1;
    opts_t o;

    signal(SIGPIPE, SIG_IGN);
    rc = parse_args(argc, argv, &o);
    if (rc >= 0) {
        opts_free(&o);
        return rc;
    }
    df_log_setup("dfdaemon", o.level);
    if (snprintf(sock, sizeof(sock), "%s/dfdaemon.sock", o.home) >= (int)sizeof(sock)) {
        fprintf(stderr, "dfdaemon: --home path too long\n");
        goto out;
    }
    rc = df_mkdir_p(o.home, 0700);
    if (rc < 0) {
        fprintf(stderr, "dfdaemon: cannot create %s: %s\n", o.home, df_strerror(rc));
        goto out;
    }
    base = event_base_new();
    if (!base) {
        fprintf(stderr, "dfdaemon: cannot create the event loop\n");
        goto out;
    }
    df_peer_config_init(&pc);
    pc.home_dir = o.home;
    pc.nodes = (const char **)o.nodes;
    if (o.gossip) {
        pc.gossip_listen = o.gossip_listen;
        pc.gossip_join = (const char *const *)o.joins;
        pc.gossip_encrypt = o.encrypt;
        pc.gossip_dns = o.gossip_dns;
        pc.gossip_dns_server = o.gossip_dns_server;
        pc.gossip_dns_interval_ms = o.gossip_dns_interval_ms;
        pc.gossip_name = o.gossip_name;
        pc.gossip_forward_headers = o.gossip_forward_headers;
    }
    if (o.upload_host)
        pc.upload_host = o.upload_host;
    pc.upload_port = o.upload_port;
    if (o.advertise_ip)
        pc.advertise_ip = o.advertise_ip;
    pc.total_limit_bps = o.total_limit;
    pc.upload_limit_bps = o.upload_limit;
    pc.cache_limit_bytes = o.cache_limit;
    pc.cache_max_age_ms = o.cache_max_age_ms;
    pc.serve = true;
    rc = df_peer_new(base, &pc, &peer);
    if (rc < 0) {
        fprintf(stderr, "dfdaemon: cannot start the peer: %s\n", df_strerror(rc));
        goto out;
    }
    rc = df_daemon_new(base, peer, sock, &daemon);
    if (rc == -EADDRINUSE) {
        fprintf(stderr, "dfdaemon: another dfdaemon already runs with home %s\n", o.home);
        goto out;
    } else if (rc < 0) {
        fprintf(stderr, "dfdaemon: cannot serve %s: %s\n", sock, df_strerror(rc));
        goto out;
    }
    df_proxy_config_init(&xc);
    if (o.registry)
        xc.registry = o.registry;
    xc.registry_ca = o.registry_ca;
    xc.registry_insecure = o.registry_insecure;
    xc.http_proxy = o.http_proxy;
    xc.rules = (const char *const *)o.rules;
    xc.hosts = (const char *const *)o.hosts;
    xc.hijack_hosts = (const char *const *)o.hijack;
    xc.hijack_ca_cert = o.hijack_ca_cert;
    xc.hijack_ca_key = o.hijack_ca_key;
    rc = df_proxy_new(base, peer, &xc, &proxy, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "dfdaemon: registry mirror: %s\n", err[0] ? err : df_strerror(rc));
        status = rc == DF_ECONFIG ? 2 : 1;
        goto out;
    }
    http = evhttp_new(base);
    if (!http) {
        fprintf(stderr, "dfdaemon: cannot create the HTTP server\n");
        goto out;
    }
    /* Header cap as for every listener of ours; the mirror sets the body
     * cap (it serves pulls) and closes TLS attempts on this plain port. */
    evhttp_set_max_headers_size(http, 16 * 1024);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                         EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                         EVHTTP_REQ_CONNECT);
    evhttp_set_timeout(http, 60);
    df_proxy_attach(proxy, http);
    ctx.peer = peer;
    ctx.proxy = proxy;
    evhttp_set_gencb(http, on_http, &ctx);
    bound = evhttp_bind_socket_with_handle(http, o.listen_host, o.listen_port);
    if (!bound) {
        fprintf(stderr, "dfdaemon: cannot listen on %s:%u: %s\n", o.listen_host, (unsigned)o.listen_port,
                strerror(errno));
        goto out;
    }
    {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        unsigned port = o.listen_port;
        if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sl) == 0)
            port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                  : ((struct sockaddr_in *)&ss)->sin_port);
        fprintf(stderr, "dfdaemon: ready: http %s:%u, control %s, upload port %u, registry %s\n",
                o.listen_host, port, sock, (unsigned)df_peer_upload_port(peer),
                o.registry ? o.registry : DF_PROXY_DEFAULT_REGISTRY);
    }
    sigint = evsignal_new(base, SIGINT, on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    if (!sigint || !sigterm || evsignal_add(sigint, NULL) < 0 || evsignal_add(sigterm, NULL) < 0) {
        fprintf(stderr, "dfdaemon: cannot watch signals\n");
        goto out;
    }
    if (event_base_dispatch(base) < 0) {
        fprintf(stderr, "dfdaemon: event loop failure\n");
        goto out;
    }
    /* ServiceDown to the supernode (bounded to 1 s by the engine), so no
     * peer is sent here for pieces after we are gone; stop taking work
     * meanwhile.  A second signal cuts it short. */
    evhttp_free(http);
    http = NULL;
    if (df_peer_leave(peer, on_left, base) == 0)
        event_base_dispatch(base);
    status = 0;
out:
    if (http)
        evhttp_free(http);
    /* Mirror before peer (its downloads' callbacks point into it), peer
     * before daemon: see df_daemon_free. */
    df_proxy_free(proxy);
    df_peer_free(peer);
    df_daemon_free(daemon);
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    if (base)
        event_base_free(base);
    opts_free(&o);
    return status;
}
