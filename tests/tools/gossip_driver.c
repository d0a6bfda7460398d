/*
 * gossip_driver: runs one df_gossip node (lib/gossip/gossip_node.h) on real
 * sockets, for the interop test against a real `serf agent`
 * (tests/integration/test_gossip_interop.py).  A test tool: built by CMake,
 * never installed.
 *
 *   gossip_driver --name N --bind IP:PORT [--join IP:PORT]... [--tag K=V]...
 *                 [--encrypt BASE64] [--query-reply TEXT] [--control FIFO]
 *
 * The sockets, streams and timers are lib/gossip/gossip_io.c's, as in
 * dfdaemon's gossip mode.  Every node event is printed on stdout as one
 * JSON line ({"ev": "member-join", ...}, {"ev": "user", ...}, ...) with its
 * wall-clock time "t" (bench/gossip_vs_serf.py times delivery with it).
 * Commands, one per line on the control FIFO: `event NAME PAYLOAD`,
 * `event-cc NAME PAYLOAD`, `query NAME PAYLOAD`, `members`, `leave`.
 * SIGTERM/SIGINT leave gracefully (then exit 0); SIGKILL is a crash.
 */
#include "core/core.h"
#include "gossip/gossip_codec.h"
#include "gossip/gossip_crypto.h"
#include "gossip/gossip_io.h"
#include "gossip/gossip_node.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define MAX_TAGS 16
#define MAX_JOINS 8

static struct {
    struct event_base *base;
    df_gossip_io_t *io;
    df_gossip_node_t *node;
    struct event *left_ev, *ctl_ev, *sigterm, *sigint;
    const char *query_reply;
    int ctl_fd;
    struct evbuffer *ctl_buf;
    bool leaving;
} G;

static void pump(void);

static int parse_hostport(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *c = strrchr(s, ':');
    uint64_t port;

    if (!c || (size_t)(c - s) >= sizeof(host))
        return -EINVAL;
    memcpy(host, s, (size_t)(c - s));
    host[c - s] = '\0';
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1 || df_parse_u64(c + 1, &port) < 0 || port == 0 || port > 65535)
        return -EINVAL;
    sa->sin_port = htons((uint16_t)port);
    return 0;
}

/* ------------------------------------------------------------- output */

/* Every line carries "t": the wall-clock time (CLOCK_REALTIME, seconds) it
 * was printed at, so that a benchmark can time delivery across processes. */
static void emit(json_t *o)
{
    struct timespec ts;
    char *s;

    clock_gettime(CLOCK_REALTIME, &ts);
    json_object_set_new(o, "t", json_real((double)ts.tv_sec + (double)ts.tv_nsec / 1e9));
    s = json_dumps(o, JSON_COMPACT);

    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(s);
    }
    json_decref(o);
}

/* Tags as a JSON object (keys are copied through a bounded buffer). */
static int tag_cb2(df_gossip_bytes_t k, df_gossip_bytes_t v, void *arg)
{
    char key[DF_GOSSIP_META_MAX + 1];

    memcpy(key, k.p, k.len);
    key[k.len] = '\0';
    json_object_set_new(arg, key, json_stringn((const char *)v.p, v.len));
    return 0;
}

static json_t *addr_json(const uint8_t *addr, size_t alen)
{
    char text[INET6_ADDRSTRLEN];

    if (!inet_ntop(alen == 4 ? AF_INET : AF_INET6, addr, text, sizeof(text)))
        return json_string("?");
    return json_string(text);
}

static json_t *tags_json(const uint8_t *meta, size_t len)
{
    json_t *t = json_object();

    if (meta && len)
        df_serf_tags_decode(meta, len, tag_cb2, t);
    return t;
}

static void print_member_cb(const df_gossip_member_t *m, void *arg)
{
    json_array_append_new(arg, json_pack("{s:s, s:o, s:i, s:s, s:i, s:o}", "name", m->name, "addr",
                                         addr_json(m->addr, m->addr_len), "port", (int)m->port, "status",
                                         df_gossip_status_name(m->status), "incarnation", (int)m->incarnation,
                                         "tags", tags_json(m->meta, m->meta_len)));
}

static const char *ev_name(df_gossip_ev_kind_t k)
{
    switch (k) {
    case DF_GOSSIP_EV_MEMBER_JOIN: return "member-join";
    case DF_GOSSIP_EV_MEMBER_UPDATE: return "member-update";
    case DF_GOSSIP_EV_MEMBER_LEAVE: return "member-leave";
    case DF_GOSSIP_EV_MEMBER_FAILED: return "member-failed";
    case DF_GOSSIP_EV_USER: return "user";
    case DF_GOSSIP_EV_QUERY: return "query";
    case DF_GOSSIP_EV_QUERY_ACK: return "query-ack";
    case DF_GOSSIP_EV_QUERY_RESPONSE: return "query-response";
    case DF_GOSSIP_EV_QUERY_DONE: return "query-done";
    }
    return "?";
}

static void print_event(const df_gossip_event_t *ev)
{
    json_t *o = json_pack("{s:s, s:s}", "ev", ev_name(ev->kind), "name", ev->name);

    switch (ev->kind) {
    case DF_GOSSIP_EV_MEMBER_JOIN:
    case DF_GOSSIP_EV_MEMBER_UPDATE:
    case DF_GOSSIP_EV_MEMBER_LEAVE:
    case DF_GOSSIP_EV_MEMBER_FAILED:
        json_object_set_new(o, "addr", addr_json(ev->addr, ev->addr_len));
        json_object_set_new(o, "port", json_integer(ev->port));
        json_object_set_new(o, "tags", tags_json(ev->meta, ev->meta_len));
        break;
    default:
        json_object_set_new(o, "payload", json_stringn((const char *)ev->payload, ev->payload_len));
        json_object_set_new(o, "ltime", json_integer((json_int_t)ev->ltime));
        json_object_set_new(o, "id", json_integer(ev->query_id));
        if (ev->kind == DF_GOSSIP_EV_USER)
            json_object_set_new(o, "coalesce", json_boolean(ev->coalesce));
        break;
    }
    emit(o);
}

/* ---------------------------------------------------------------- node */

static void on_event(const df_gossip_event_t *ev, void *arg)
{
    (void)arg;
    print_event(ev);
    if (ev->kind == DF_GOSSIP_EV_QUERY && G.query_reply)
        df_gossip_respond(G.node, ev->ltime, ev->query_id, (const uint8_t *)G.query_reply, strlen(G.query_reply),
                          df_now_ms());
}

static void pump(void)
{
    df_gossip_io_pump(G.io);
}

/* The end of a graceful leave shows no event: poll for it. */
static void left_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (df_gossip_has_left(G.node)) {
        emit(json_pack("{s:s}", "ev", "left"));
        event_base_loopexit(G.base, NULL);
    }
}

static void start_leave(void)
{
    if (!G.leaving) {
        G.leaving = true;
        df_gossip_leave(G.node, df_now_ms());
    }
    pump();
}

static void do_command(char *line)
{
    char *cmd = line, *a1 = NULL, *a2 = NULL, *sp;
    uint32_t id;
    int rc = 0;

    if ((sp = strchr(cmd, ' '))) {
        *sp = '\0';
        a1 = sp + 1;
        if ((sp = strchr(a1, ' '))) {
            *sp = '\0';
            a2 = sp + 1;
        }
    }
    if ((strcmp(cmd, "event") == 0 || strcmp(cmd, "event-cc") == 0) && a1) {
        rc = df_gossip_user_event(G.node, a1, (const uint8_t *)(a2 ? a2 : ""), a2 ? strlen(a2) : 0,
                                  strcmp(cmd, "event-cc") == 0, df_now_ms());
    } else if (strcmp(cmd, "query") == 0 && a1) {
        rc = df_gossip_query(G.node, a1, (const uint8_t *)(a2 ? a2 : ""), a2 ? strlen(a2) : 0, NULL, 0, true, 0,
                             df_now_ms(), &id);
        if (rc == 0)
            emit(json_pack("{s:s, s:s, s:i}", "ev", "query-sent", "name", a1, "id", (json_int_t)id));
    } else if (strcmp(cmd, "members") == 0) {
        json_t *arr = json_array();
        df_gossip_member_foreach(G.node, print_member_cb, arr);
        emit(json_pack("{s:s, s:o}", "ev", "members", "members", arr));
    } else if (strcmp(cmd, "leave") == 0) {
        start_leave();
        return;
    } else {
        rc = -EINVAL;
    }
    if (rc < 0)
        emit(json_pack("{s:s, s:s, s:s}", "ev", "error", "command", cmd, "error", df_strerror(rc)));
    pump();
}

static void ctl_cb(evutil_socket_t fd, short what, void *arg)
{
    char *line;
    size_t n;

    (void)what;
    (void)arg;
    if (evbuffer_read(G.ctl_buf, fd, 4096) <= 0)
        return;
    if (evbuffer_get_length(G.ctl_buf) > 65536)
        evbuffer_drain(G.ctl_buf, evbuffer_get_length(G.ctl_buf)); /* a runaway writer */
    while ((line = evbuffer_readln(G.ctl_buf, &n, EVBUFFER_EOL_LF))) {
        do_command(line);
        free(line);
    }
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    start_leave();
}

__attribute__((noreturn)) static void usage(void)
{
    fprintf(stderr, "usage: gossip_driver --name N --bind IP:PORT [--join IP:PORT]... [--tag K=V]...\n"
                    "                     [--encrypt BASE64] [--query-reply TEXT] [--control FIFO]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    df_gossip_config_t cfg;
    df_gossip_keyring_t kr;
    struct sockaddr_in bind_sa, joins[MAX_JOINS];
    const char *keys[MAX_TAGS], *vals[MAX_TAGS], *control = NULL;
    char *tagbuf[MAX_TAGS];
    size_t ntags = 0, njoins = 0, i;
    df_gossip_io_opts_t io_opts;
    bool have_bind = false;
    int a, rc;

    signal(SIGPIPE, SIG_IGN);
    df_gossip_config_default(&cfg);
    df_gossip_keyring_init(&kr);
    for (a = 1; a < argc; a += 2) {
        const char *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (!v)
            usage();
        if (strcmp(argv[a], "--name") == 0) {
            cfg.name = v;
        } else if (strcmp(argv[a], "--bind") == 0) {
            if (parse_hostport(v, &bind_sa) < 0)
                usage();
            have_bind = true;
        } else if (strcmp(argv[a], "--join") == 0) {
            if (njoins == MAX_JOINS || parse_hostport(v, &joins[njoins++]) < 0)
                usage();
        } else if (strcmp(argv[a], "--tag") == 0) {
            char *eq = NULL;
            if (ntags == MAX_TAGS || !(tagbuf[ntags] = strdup(v)) || !(eq = strchr(tagbuf[ntags], '=')))
                usage();
            *eq = '\0';
            keys[ntags] = tagbuf[ntags];
            vals[ntags] = eq + 1;
            ntags++;
        } else if (strcmp(argv[a], "--encrypt") == 0) {
            uint8_t key[32];
            size_t klen;
            if (df_gossip_key_parse_base64(v, key, &klen) < 0 || df_gossip_keyring_add(&kr, key, klen, true) < 0)
                usage();
        } else if (strcmp(argv[a], "--query-reply") == 0) {
            G.query_reply = v;
        } else if (strcmp(argv[a], "--control") == 0) {
            control = v;
        } else {
            usage();
        }
    }
    if (!cfg.name || !have_bind)
        usage();
    memcpy(cfg.addr, &bind_sa.sin_addr, 4);
    cfg.addr_len = 4;
    cfg.port = ntohs(bind_sa.sin_port);
    cfg.tag_keys = keys;
    cfg.tag_values = vals;
    cfg.ntags = ntags;
    cfg.keyring = kr.n ? &kr : NULL;
    cfg.seed = (uint64_t)getpid() ^ df_now_ms();

    G.base = event_base_new();
    if (!G.base)
        return 1;
    memset(&io_opts, 0, sizeof(io_opts));
    io_opts.base = G.base;
    memcpy(&io_opts.bind, &bind_sa, sizeof(bind_sa));
    io_opts.cfg = cfg;
    io_opts.event_cb = on_event;
    rc = df_gossip_io_new(&io_opts, &G.io);
    if (rc < 0) {
        fprintf(stderr, "gossip_driver: %s\n", df_strerror(rc));
        return 1;
    }
    G.node = df_gossip_io_node(G.io);
    G.left_ev = event_new(G.base, -1, EV_PERSIST, left_cb, NULL);
    event_add(G.left_ev, &(struct timeval){0, 100000});
    G.sigterm = evsignal_new(G.base, SIGTERM, signal_cb, NULL);
    G.sigint = evsignal_new(G.base, SIGINT, signal_cb, NULL);
    event_add(G.sigterm, NULL);
    event_add(G.sigint, NULL);
    if (control) {
        /* O_RDWR keeps the FIFO open for reading when writers come and go. */
        G.ctl_fd = open(control, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (G.ctl_fd < 0) {
            fprintf(stderr, "gossip_driver: %s: %s\n", control, strerror(errno));
            return 1;
        }
        G.ctl_buf = evbuffer_new();
        G.ctl_ev = event_new(G.base, G.ctl_fd, EV_READ | EV_PERSIST, ctl_cb, NULL);
        event_add(G.ctl_ev, NULL);
    }
    emit(json_pack("{s:s, s:s, s:i}", "ev", "ready", "name", cfg.name, "port", (int)cfg.port));
    for (i = 0; i < njoins; i++) {
        rc = df_gossip_io_join(G.io, (const uint8_t *)&joins[i].sin_addr, 4, ntohs(joins[i].sin_port));
        if (rc < 0)
            fprintf(stderr, "gossip_driver: join: %s\n", df_strerror(rc));
    }
    pump();
    event_base_dispatch(G.base);

    df_gossip_io_free(G.io);
    event_base_loop(G.base, EVLOOP_NONBLOCK); /* runs the deferred frees */
    if (G.ctl_ev)
        event_free(G.ctl_ev);
    if (G.ctl_buf)
        evbuffer_free(G.ctl_buf);
    if (G.ctl_fd > 0)
        close(G.ctl_fd);
    event_free(G.left_ev);
    event_free(G.sigterm);
    event_free(G.sigint);
    event_base_free(G.base);
    for (i = 0; i < ntags; i++)
        free(tagbuf[i]);
    df_gossip_keyring_clear(&kr);
    return 0;
}
