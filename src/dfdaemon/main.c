/*
 * dfdaemon: the long-lived peer of a host.  It holds one df_peer (piece store,
 * upload server, host-wide rate limit), serves dfget's downloads over the
 * control socket <home>/dfdaemon.sock, and listens on an HTTP port (for now
 * GET /healthz and GET /metrics, the peer's statistics as rendered by
 * df_peer_metrics_render(); the registry-mirror / proxy surface comes later
 * on the same listener).
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
    uint64_t cache_limit;
    df_log_level_t level;
} opts_t;

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
            "      --cache-limit SIZE    piece store budget (e.g. 10G)\n"
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
    } else if (strcmp(key, "cache-limit") == 0) {
        rc = df_parse_size(value, &o->cache_limit);
    } else if (strcmp(key, "log-level") == 0) {
        rc = df_parse_log_level(value, &o->level);
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
    {"cache-limit", required_argument, NULL, 0},
    {"log-level", required_argument, NULL, 0},
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
        rc = set_option(o, long_opts[idx].name, optarg, "");
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

static void on_http(struct evhttp_request *req, void *arg)
{
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *body = evhttp_request_get_output_buffer(req);
    struct evkeyvalq *hdrs = evhttp_request_get_output_headers(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    size_t plen = strcspn(uri, "?");
    df_peer_t *peer = arg;

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
        evhttp_send_reply(req, 200, "OK", body);
        return;
    }
    evhttp_add_header(hdrs, "Content-Type", "text/plain");
    evbuffer_add_printf(body, "not found\n");
    evhttp_send_reply(req, 404, "Not Found", body);
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
    if (o.upload_host)
        pc.upload_host = o.upload_host;
    pc.upload_port = o.upload_port;
    if (o.advertise_ip)
        pc.advertise_ip = o.advertise_ip;
    pc.total_limit_bps = o.total_limit;
    pc.cache_limit_bytes = o.cache_limit;
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
    http = evhttp_new(base);
    if (!http) {
        fprintf(stderr, "dfdaemon: cannot create the HTTP server\n");
        goto out;
    }
    /* Small caps: nothing on this listener needs a request body yet. */
    evhttp_set_max_headers_size(http, 16 * 1024);
    evhttp_set_max_body_size(http, 64 * 1024);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                         EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS);
    evhttp_set_timeout(http, 60);
    evhttp_set_gencb(http, on_http, peer);
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
        fprintf(stderr, "dfdaemon: ready: http %s:%u, control %s, upload port %u\n", o.listen_host, port,
                sock, (unsigned)df_peer_upload_port(peer));
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
    /* Peer before daemon: see df_daemon_free. */
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
