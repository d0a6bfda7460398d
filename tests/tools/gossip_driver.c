/*
 * gossip_driver: runs one df_gossip node (lib/gossip/gossip_node.h) on real
 * sockets, for the interop test against a real `serf agent`
 * (tests/integration/test_gossip_interop.py).  A test tool: built by CMake,
 * never installed.
 *
 *   gossip_driver --name N --bind IP:PORT [--join IP:PORT]... [--tag K=V]...
 *                 [--encrypt BASE64] [--query-reply TEXT] [--control FIFO]
 *
 * One libevent loop: a UDP socket and a TCP listener on the same IP:port
 * (memberlist's layout), one bufferevent per TCP exchange, one timer armed
 * at the node's next wake-up.  Every node event is printed on stdout as one
 * JSON line ({"ev": "member-join", ...}, {"ev": "user", ...}, ...).
 * Commands, one per line on the control FIFO: `event NAME PAYLOAD`,
 * `event-cc NAME PAYLOAD`, `query NAME PAYLOAD`, `members`, `leave`.
 * SIGTERM/SIGINT leave gracefully (then exit 0); SIGKILL is a crash.
 */
#include "core/core.h"
#include "gossip/gossip_codec.h"
#include "gossip/gossip_crypto.h"
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
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define MAX_TAGS 16
#define MAX_JOINS 8

typedef struct conn {
    struct conn *next;
    struct bufferevent *bev;
    uint64_t id;
    bool inbound, closing, done;
    struct sockaddr_storage peer;
} conn_t;

static struct {
    struct event_base *base;
    df_gossip_node_t *node;
    int udp;
    struct event *udp_ev, *timer, *ctl_ev, *sigterm, *sigint;
    struct evconnlistener *lst;
    conn_t *conns;
    uint64_t next_inbound;
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

static void to_sockaddr(const uint8_t *addr, size_t alen, uint16_t port, struct sockaddr_storage *ss,
                        socklen_t *sl)
{
    memset(ss, 0, sizeof(*ss));
    if (alen == 4) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, addr, 4);
        s4->sin_port = htons(port);
        *sl = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, addr, 16);
        s6->sin6_port = htons(port);
        *sl = sizeof(*s6);
    }
}

static void from_sockaddr(const struct sockaddr_storage *ss, uint8_t *addr, size_t *alen, uint16_t *port)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        memcpy(addr, &s4->sin_addr, 4);
        *alen = 4;
        *port = ntohs(s4->sin_port);
    } else {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        memcpy(addr, &s6->sin6_addr, 16);
        *alen = 16;
        *port = ntohs(s6->sin6_port);
    }
}

/* ------------------------------------------------------------- output */

static void emit(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);

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

/* ---------------------------------------------------------------- TCP */

static void conn_free_cb(evutil_socket_t fd, short what, void *arg)
{
    conn_t *c = arg;

    (void)fd;
    (void)what;
    bufferevent_free(c->bev);
    free(c);
}

/* Unlinks c and frees it from the next loop iteration: a bufferevent is
 * never freed inside its own callback.  An outbound exchange that did not
 * get its reply is reported to the node as failed. */
static void conn_close(conn_t *c)
{
    static const struct timeval zero = {0, 0};
    conn_t **pp;

    for (pp = &G.conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (!c->inbound && !c->done)
        df_gossip_stream_failed(G.node, c->id, df_now_ms());
    c->done = true;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
    if (event_base_once(G.base, -1, EV_TIMEOUT, conn_free_cb, c, &zero) < 0)
        conn_free_cb(-1, 0, c); /* cannot defer: nothing of c is used after this */
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    conn_t *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in), msglen;
    uint8_t from[16];
    size_t alen;
    uint16_t port;
    const uint8_t *p;
    int rc;

    if (c->done || len == 0)
        return;
    if (len > DF_GOSSIP_STREAM_MAX + 64) {
        conn_close(c);
        return;
    }
    p = evbuffer_pullup(in, -1);
    rc = df_gossip_stream_msg_len(p, len, &msglen);
    if (rc == DF_EAGAIN)
        return;
    if (rc < 0) {
        fprintf(stderr, "gossip_driver: bad stream message: %s\n", df_strerror(rc));
        conn_close(c);
        pump();
        return;
    }
    from_sockaddr(&c->peer, from, &alen, &port);
    c->done = true;
    rc = df_gossip_recv_stream(G.node, c->id, c->inbound, from, alen, port, p, msglen, df_now_ms());
    if (rc < 0)
        fprintf(stderr, "gossip_driver: stream from peer rejected: %s\n", df_strerror(rc));
    evbuffer_drain(in, msglen);
    if (!c->inbound) {
        conn_close(c); /* one exchange per connection */
        pump();
        return;
    }
    /* The reply (if any) comes out of pump(); the connection closes once
     * it is written, or now when there is none (c stays allocated until the
     * next loop iteration either way). */
    c->closing = true;
    bufferevent_disable(bev, EV_READ);
    pump();
    if (!c->done && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_close(c);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    conn_t *c = arg;

    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_close(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    conn_t *c = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED)
        return;
    conn_close(c);
    pump();
}

static conn_t *conn_new(evutil_socket_t fd, bool inbound, uint64_t id)
{
    conn_t *c = calloc(1, sizeof(*c));
    struct timeval tv = {10, 0};

    if (!c)
        return NULL;
    c->bev = bufferevent_socket_new(G.base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        free(c);
        return NULL;
    }
    c->id = id;
    c->inbound = inbound;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->next = G.conns;
    G.conns = c;
    return c;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    conn_t *c;

    (void)l;
    (void)arg;
    c = conn_new(fd, true, ++G.next_inbound);
    if (!c) {
        close(fd);
        return;
    }
    memcpy(&c->peer, sa, (size_t)salen < sizeof(c->peer) ? (size_t)salen : sizeof(c->peer));
}

/* ---------------------------------------------------------------- pump */

static void handle_output(const df_gossip_output_t *o)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    conn_t *c;

    to_sockaddr(o->addr, o->addr_len, o->port, &ss, &sl);
    switch (o->kind) {
    case DF_GOSSIP_OUT_UDP:
        if (sendto(G.udp, o->data, o->len, 0, (struct sockaddr *)&ss, sl) < 0)
            fprintf(stderr, "gossip_driver: sendto: %s\n", strerror(errno));
        break;
    case DF_GOSSIP_OUT_STREAM_OPEN:
        c = conn_new(-1, false, o->stream_id);
        if (!c) {
            df_gossip_stream_failed(G.node, o->stream_id, df_now_ms());
            break;
        }
        c->peer = ss;
        bufferevent_write(c->bev, o->data, o->len);
        if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ss, (int)sl) < 0)
            conn_close(c);
        break;
    case DF_GOSSIP_OUT_STREAM_REPLY:
        for (c = G.conns; c; c = c->next)
            if (c->inbound && c->id == o->stream_id)
                break;
        if (c) {
            bufferevent_enable(c->bev, EV_WRITE);
            bufferevent_write(c->bev, o->data, o->len);
        }
        break;
    }
}

static void pump(void)
{
    df_gossip_output_t o;
    df_gossip_event_t ev;
    uint64_t now, wake;
    struct timeval tv;

    while (df_gossip_next_output(G.node, &o))
        handle_output(&o);
    while (df_gossip_next_event(G.node, &ev)) {
        print_event(&ev);
        if (ev.kind == DF_GOSSIP_EV_QUERY && G.query_reply)
            df_gossip_respond(G.node, ev.ltime, ev.query_id, (const uint8_t *)G.query_reply, strlen(G.query_reply),
                              df_now_ms());
    }
    while (df_gossip_next_output(G.node, &o)) /* responses to queries */
        handle_output(&o);
    if (df_gossip_has_left(G.node)) {
        emit(json_pack("{s:s}", "ev", "left"));
        event_base_loopexit(G.base, NULL);
        return;
    }
    now = df_now_ms();
    wake = df_gossip_next_wakeup_ms(G.node);
    if (wake == UINT64_MAX)
        wake = now + 1000;
    wake = wake > now ? wake - now : 0;
    tv.tv_sec = (time_t)(wake / 1000);
    tv.tv_usec = (suseconds_t)((wake % 1000) * 1000);
    evtimer_add(G.timer, &tv);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    df_gossip_tick(G.node, df_now_ms());
    pump();
}

static void udp_cb(evutil_socket_t fd, short what, void *arg)
{
    static uint8_t buf[65536];
    struct sockaddr_storage ss;
    socklen_t sl;
    uint8_t from[16];
    size_t alen;
    uint16_t port;
    ssize_t n;
    int i;

    (void)what;
    (void)arg;
    for (i = 0; i < 64; i++) {
        sl = sizeof(ss);
        n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&ss, &sl);
        if (n < 0)
            break;
        from_sockaddr(&ss, from, &alen, &port);
        df_gossip_recv_packet(G.node, from, alen, port, buf, (size_t)n, df_now_ms());
    }
    pump();
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
    bool have_bind = false;
    int a, rc, one = 1;

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
    G.udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (!G.base || G.udp < 0)
        return 1;
    setsockopt(G.udp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(G.udp, (struct sockaddr *)&bind_sa, sizeof(bind_sa)) < 0) {
        fprintf(stderr, "gossip_driver: bind udp: %s\n", strerror(errno));
        return 1;
    }
    G.lst = evconnlistener_new_bind(G.base, accept_cb, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 128,
                                    (struct sockaddr *)&bind_sa, sizeof(bind_sa));
    if (!G.lst) {
        fprintf(stderr, "gossip_driver: bind tcp: %s\n", strerror(errno));
        return 1;
    }
    rc = df_gossip_node_new(&cfg, df_now_ms(), &G.node);
    if (rc < 0) {
        fprintf(stderr, "gossip_driver: node: %s\n", df_strerror(rc));
        return 1;
    }
    G.udp_ev = event_new(G.base, G.udp, EV_READ | EV_PERSIST, udp_cb, NULL);
    G.timer = evtimer_new(G.base, timer_cb, NULL);
    G.sigterm = evsignal_new(G.base, SIGTERM, signal_cb, NULL);
    G.sigint = evsignal_new(G.base, SIGINT, signal_cb, NULL);
    event_add(G.udp_ev, NULL);
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
        rc = df_gossip_join(G.node, (const uint8_t *)&joins[i].sin_addr, 4, ntohs(joins[i].sin_port), false,
                            df_now_ms());
        if (rc < 0)
            fprintf(stderr, "gossip_driver: join: %s\n", df_strerror(rc));
    }
    pump();
    event_base_dispatch(G.base);

    while (G.conns)
        conn_close(G.conns);
    event_base_loop(G.base, EVLOOP_NONBLOCK); /* runs the deferred frees */
    df_gossip_node_free(G.node);
    if (G.ctl_ev)
        event_free(G.ctl_ev);
    if (G.ctl_buf)
        evbuffer_free(G.ctl_buf);
    if (G.ctl_fd > 0)
        close(G.ctl_fd);
    event_free(G.udp_ev);
    event_free(G.timer);
    event_free(G.sigterm);
    event_free(G.sigint);
    evconnlistener_free(G.lst);
    close(G.udp);
    event_base_free(G.base);
    for (i = 0; i < ntags; i++)
        free(tagbuf[i]);
    df_gossip_keyring_clear(&kr);
    return 0;
}
