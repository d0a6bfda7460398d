/*
 * libevent glue for a df_gossip node (see gossip_io.h for the contract).
 *
 * Design: one UDP socket read in batches (64 datagrams per wake-up, so a
 * flood cannot starve the loop), one TCP listener, and one conn_t per TCP
 * exchange.  memberlist does one exchange per connection: an outbound
 * connection writes the node's message and reads ONE framed reply; an
 * inbound one reads ONE framed message, writes the node's reply if any,
 * and closes.  A conn_t is unlinked at once and freed from the next loop
 * iteration (a bufferevent is never freed inside its own callback).  The
 * node's own timers become one evtimer re-armed after every pump.
 */
#include "gossip/gossip_io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

typedef struct conn {
    struct conn *next;
    df_gossip_io_t *io;
    struct bufferevent *bev;
    uint64_t id;
    bool inbound, closing, done;
    struct sockaddr_storage peer;
} conn_t;

struct df_gossip_io {
    struct event_base *base;
    df_gossip_node_t *node;
    int udp;
    uint16_t port;
    struct event *udp_ev, *timer;
    struct evconnlistener *lst;
    conn_t *conns;
    size_t nconns;
    uint64_t next_inbound;
    uint32_t tcp_timeout_ms;
    df_gossip_io_event_cb event_cb;
    void *arg;
    int pump_depth;
    bool pump_again;
    df_gossip_io_stats_t stats;
    df_gossip_rx_errors_t rx_seen; /* the node's refusal counters at the last check */
    uint64_t rx_warned_ms;         /* last refusal warning (at most one per RX_WARN_MS) */
};

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

/* A key mismatch leaves a node alone and silent unless someone says why:
 * after each message, a counter of the node's refusals that grew gives one
 * warning naming the peer and the reason (rate-limited: every probe of a
 * node with another key would repeat it). */
#define RX_WARN_MS 10000u

static void check_rx_errors(df_gossip_io_t *io, const uint8_t *addr, size_t alen, uint16_t port)
{
    df_gossip_rx_errors_t now;
    const char *why = NULL;
    char ip[INET6_ADDRSTRLEN] = "?";
    uint64_t t;

    df_gossip_rx_errors(io->node, &now);
    if (now.wrong_key > io->rx_seen.wrong_key)
        why = "it is encrypted with a key we do not have: the cluster uses another --encrypt key";
    else if (now.unencrypted > io->rx_seen.unencrypted)
        why = "it is not encrypted but we are (--encrypt): the sender has no key";
    else if (now.encrypted > io->rx_seen.encrypted)
        why = "it is encrypted but we have no key: set the cluster's --encrypt key";
    else if (now.err_replies > io->rx_seen.err_replies)
        why = now.last_err;
    io->rx_seen = now;
    t = df_now_ms();
    if (!why || (io->rx_warned_ms && t - io->rx_warned_ms < RX_WARN_MS))
        return;
    io->rx_warned_ms = t;
    inet_ntop(alen == 4 ? AF_INET : AF_INET6, addr, ip, sizeof(ip));
    if (why == now.last_err)
        DF_LOG_W("gossip: %s:%u refused our message: \"%s\"", ip, port, why);
    else
        DF_LOG_W("gossip: message from %s:%u dropped: %s", ip, port, why);
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

/* Unlinks c and frees it from the next loop iteration.  An outbound
 * exchange that did not get its reply is reported to the node as failed. */
static void conn_close(conn_t *c)
{
    static const struct timeval zero = {0, 0};
    df_gossip_io_t *io = c->io;
    conn_t **pp;

    for (pp = &io->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            io->nconns--;
            break;
        }
    if (!c->inbound && !c->done)
        df_gossip_stream_failed(io->node, c->id, df_now_ms());
    c->done = true;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
    if (event_base_once(io->base, -1, EV_TIMEOUT, conn_free_cb, c, &zero) < 0)
        conn_free_cb(-1, 0, c); /* cannot defer: nothing of c is used after this */
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    conn_t *c = arg;
    df_gossip_io_t *io = c->io;
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
        io->stats.stream_errors++;
        conn_close(c);
        df_gossip_io_pump(io);
        return;
    }
    p = evbuffer_pullup(in, -1);
    rc = df_gossip_stream_msg_len(p, len, &msglen);
    if (rc == DF_EAGAIN)
        return;
    if (rc < 0) {
        io->stats.stream_errors++;
        DF_LOG_D("gossip: bad stream message: %s", df_strerror(rc));
        conn_close(c);
        df_gossip_io_pump(io);
        return;
    }
    from_sockaddr(&c->peer, from, &alen, &port);
    c->done = true;
    rc = df_gossip_recv_stream(io->node, c->id, c->inbound, from, alen, port, p, msglen, df_now_ms());
    if (rc < 0) {
        io->stats.stream_errors++;
        DF_LOG_D("gossip: stream message rejected: %s", df_strerror(rc));
    }
    check_rx_errors(io, from, alen, port);
    evbuffer_drain(in, msglen);
    if (!c->inbound) {
        conn_close(c); /* one exchange per connection */
        df_gossip_io_pump(io);
        return;
    }
    /* The reply (if any) comes out of pump; the connection closes once it
     * is written, or now when there is none. */
    c->closing = true;
    c->done = false; /* marks "reply not yet queued" for the check below */
    bufferevent_disable(bev, EV_READ);
    df_gossip_io_pump(io);
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
    df_gossip_io_t *io = c->io;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED)
        return;
    conn_close(c);
    df_gossip_io_pump(io);
}

static conn_t *conn_new(df_gossip_io_t *io, evutil_socket_t fd, bool inbound, uint64_t id)
{
    conn_t *c;
    struct timeval tv = {.tv_sec = io->tcp_timeout_ms / 1000, .tv_usec = (io->tcp_timeout_ms % 1000) * 1000};

    if (io->nconns >= DF_GOSSIP_IO_CONNS_MAX)
        return NULL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->bev = bufferevent_socket_new(io->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        free(c);
        return NULL;
    }
    c->io = io;
    c->id = id;
    c->inbound = inbound;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->next = io->conns;
    io->conns = c;
    io->nconns++;
    return c;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    df_gossip_io_t *io = arg;
    conn_t *c;

    (void)l;
    c = conn_new(io, fd, true, ++io->next_inbound);
    if (!c) {
        io->stats.tcp_refused++;
        close(fd);
        return;
    }
    io->stats.tcp_in++;
    memcpy(&c->peer, sa, (size_t)salen < sizeof(c->peer) ? (size_t)salen : sizeof(c->peer));
}

/* ---------------------------------------------------------------- pump */

static void handle_output(df_gossip_io_t *io, const df_gossip_output_t *o)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    conn_t *c;

    to_sockaddr(o->addr, o->addr_len, o->port, &ss, &sl);
    switch (o->kind) {
    case DF_GOSSIP_OUT_UDP:
        if (sendto(io->udp, o->data, o->len, 0, (struct sockaddr *)&ss, sl) < 0)
            io->stats.udp_errors++;
        else
            io->stats.udp_out++;
        break;
    case DF_GOSSIP_OUT_STREAM_OPEN:
        c = conn_new(io, -1, false, o->stream_id);
        if (!c) {
            io->stats.tcp_refused++;
            df_gossip_stream_failed(io->node, o->stream_id, df_now_ms());
            break;
        }
        io->stats.tcp_out++;
        c->peer = ss;
        bufferevent_write(c->bev, o->data, o->len);
        if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ss, (int)sl) < 0)
            conn_close(c);
        break;
    case DF_GOSSIP_OUT_STREAM_REPLY:
        for (c = io->conns; c; c = c->next)
            if (c->inbound && c->id == o->stream_id)
                break;
        if (c) {
            c->done = true;
            bufferevent_enable(c->bev, EV_WRITE);
            bufferevent_write(c->bev, o->data, o->len);
        }
        break;
    }
}

void df_gossip_io_pump(df_gossip_io_t *io)
{
    df_gossip_output_t o;
    df_gossip_event_t ev;
    uint64_t now, wake;
    struct timeval tv;

    if (io->pump_depth > 0) {
        io->pump_again = true;
        return;
    }
    io->pump_depth++;
    do {
        io->pump_again = false;
        while (df_gossip_next_output(io->node, &o))
            handle_output(io, &o);
        while (df_gossip_next_event(io->node, &ev)) {
            if (io->event_cb)
                io->event_cb(&ev, io->arg);
            /* outputs the callback caused (responses, events) */
            while (df_gossip_next_output(io->node, &o))
                handle_output(io, &o);
        }
    } while (io->pump_again);
    io->pump_depth--;
    now = df_now_ms();
    wake = df_gossip_next_wakeup_ms(io->node);
    if (wake == UINT64_MAX)
        wake = now + 1000;
    wake = wake > now ? wake - now : 0;
    tv.tv_sec = (time_t)(wake / 1000);
    tv.tv_usec = (suseconds_t)((wake % 1000) * 1000);
    evtimer_add(io->timer, &tv);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    df_gossip_io_t *io = arg;

    (void)fd;
    (void)what;
    df_gossip_tick(io->node, df_now_ms());
    df_gossip_io_pump(io);
}

static void udp_cb(evutil_socket_t fd, short what, void *arg)
{
    static uint8_t buf[DF_GOSSIP_PACKET_MAX];
    df_gossip_io_t *io = arg;
    struct sockaddr_storage ss;
    socklen_t sl;
    uint8_t from[16];
    size_t alen;
    uint16_t port;
    ssize_t n;
    int i;

    (void)what;
    for (i = 0; i < 64; i++) {
        sl = sizeof(ss);
        n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&ss, &sl);
        if (n < 0)
            break;
        io->stats.udp_in++;
        from_sockaddr(&ss, from, &alen, &port);
        df_gossip_recv_packet(io->node, from, alen, port, buf, (size_t)n, df_now_ms());
        check_rx_errors(io, from, alen, port);
    }
    df_gossip_io_pump(io);
}

/* ---------------------------------------------------------------- API */

int df_gossip_io_new(const df_gossip_io_opts_t *opts, df_gossip_io_t **out)
{
    df_gossip_io_t *io;
    df_gossip_config_t cfg = opts->cfg;
    struct sockaddr_storage ss = opts->bind;
    socklen_t sl = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    uint8_t addr[16];
    size_t alen;
    uint16_t port;
    int one = 1, rc;

    if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
        return -EINVAL;
    io = calloc(1, sizeof(*io));
    if (!io)
        return -ENOMEM;
    io->udp = -1;
    io->base = opts->base;
    io->event_cb = opts->event_cb;
    io->arg = opts->arg;
    io->tcp_timeout_ms = cfg.tcp_timeout_ms ? cfg.tcp_timeout_ms : 10000;
    io->udp = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (io->udp < 0) {
        rc = -errno;
        goto fail;
    }
    setsockopt(io->udp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(io->udp, (struct sockaddr *)&ss, sl) < 0 || getsockname(io->udp, (struct sockaddr *)&ss, &sl) < 0) {
        rc = -errno;
        goto fail;
    }
    from_sockaddr(&ss, addr, &alen, &port);
    io->port = port;
    io->lst = evconnlistener_new_bind(io->base, accept_cb, io, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 128,
                                      (struct sockaddr *)&ss, (int)sl);
    if (!io->lst) {
        rc = errno ? -errno : -EADDRINUSE;
        goto fail;
    }
    if (cfg.addr_len == 0) {
        memcpy(cfg.addr, addr, alen);
        cfg.addr_len = alen;
    }
    cfg.port = port;
    rc = df_gossip_node_new(&cfg, df_now_ms(), &io->node);
    if (rc < 0)
        goto fail;
    io->udp_ev = event_new(io->base, io->udp, EV_READ | EV_PERSIST, udp_cb, io);
    io->timer = evtimer_new(io->base, timer_cb, io);
    if (!io->udp_ev || !io->timer) {
        rc = -ENOMEM;
        goto fail;
    }
    event_add(io->udp_ev, NULL);
    df_gossip_io_pump(io);
    *out = io;
    return 0;
fail:
    df_gossip_io_free(io);
    return rc;
}

void df_gossip_io_free(df_gossip_io_t *io)
{
    if (!io)
        return;
    while (io->conns) {
        conn_t *c = io->conns;
        io->conns = c->next;
        bufferevent_free(c->bev); /* not deferred: the io goes away now */
        free(c);
    }
    if (io->udp_ev)
        event_free(io->udp_ev);
    if (io->timer)
        event_free(io->timer);
    if (io->lst)
        evconnlistener_free(io->lst);
    if (io->udp >= 0)
        close(io->udp);
    df_gossip_node_free(io->node);
    free(io);
}

df_gossip_node_t *df_gossip_io_node(df_gossip_io_t *io)
{
    return io->node;
}

uint16_t df_gossip_io_port(const df_gossip_io_t *io)
{
    return io->port;
}

void df_gossip_io_stats(const df_gossip_io_t *io, df_gossip_io_stats_t *out)
{
    *out = io->stats;
}

int df_gossip_io_join(df_gossip_io_t *io, const uint8_t *addr, size_t addr_len, uint16_t port)
{
    int rc = df_gossip_join(io->node, addr, addr_len, port, false, df_now_ms());

    df_gossip_io_pump(io);
    return rc;
}
