/*
 * CONNECT on dfdaemon's port (HTTPS proxy use, with --http-proxy): what
 * HTTPS_PROXY=http://dfdaemon makes docker, containerd, curl and skopeo send
 * for https:// URLs.
 *
 *   tunnel     a host:port matching no --hijack-host regex (or no CA
 *              configured): connect to it, answer 200, then copy bytes both
 *              ways untouched.  The client's TLS session is with the origin
 *              (it sees the origin's own certificate); we see nothing.
 *   intercept  a listed host:port: answer 200, terminate the client's TLS
 *              with a leaf certificate minted for the host (mint.c), and
 *              splice the decrypted bytes into the proxy's own plain-HTTP
 *              listener on 127.0.0.1 (the "decrypting side", proxy.c).  Its
 *              requests go through the same rules as the mirror's, with
 *              upstream https://host:port: blobs by P2P, the rest relayed.
 *              Handing the plaintext to a second evhttp, instead of parsing
 *              HTTP here, keeps one HTTP server implementation (keep-alive,
 *              caps, backpressure) for every path.  The decrypting side
 *              learns which host a connection is for from its peer port:
 *              ours, recorded when we connected (df__proxy_tunnel_authority).
 *
 * Taking the connection from evhttp: the CONNECT arrives as an evhttp
 * request.  Until the upstream is connected evhttp owns it (an error is an
 * ordinary evhttp reply).  Then we "hijack" its bufferevent: remove the
 * TLS-sniffing hook (the client's ClientHello is now expected), replace
 * evhttp's callbacks with ours and write the 200 ourselves.  The
 * evhttp_connection stays allocated, parked with its unanswered request,
 * until the tunnel ends and we free it -- which also frees and closes the
 * socket; if evhttp frees it first (evhttp_free at shutdown), its close
 * callback tells us and the tunnel drops its pointers.
 *
 * Bounds: at most DF_PROXY_TUNNELS_MAX tunnels (503 beyond), at most
 * DF_PROXY_TUNNEL_BUFFER bytes queued towards either side (reading from the
 * other side stops until it drains), connect timeout, idle timeout.  A
 * tunnel is freed from its own "reap" event, never inside a bufferevent
 * callback of its own.
 */
#include "proxy/proxy_internal.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CONNECT_TIMEOUT_S 30
#define IDLE_TIMEOUT_S 300

typedef enum {
    TS_CONNECTING,              /* upstream connect running; the CONNECT is evhttp's */
    TS_OPEN,                    /* hijacked, splicing */
    TS_CLOSING,                 /* one side ended: flushing the rest to the other */
    TS_DEAD                     /* reap scheduled */
} tunnel_state_t;

struct tunnel {
    df_proxy_t *px;
    tunnel_t *prev, *next;
    tunnel_state_t state;
    bool intercept;
    struct evhttp_request *req;       /* the CONNECT while unanswered, else NULL */
    struct evhttp_connection *evcon;  /* client connection; ours to free once hijacked */
    bool hijacked;
    struct bufferevent *raw;          /* evcon's bufferevent (freed with evcon) */
    struct bufferevent *tls;          /* TLS server filter over raw, or NULL */
    SSL *ssl;                         /* tls's session, freed after it */
    struct evbuffer_cb_entry *raw_drain; /* closing: watches raw's output (intercept) */
    struct bufferevent *client;       /* raw or tls: the client side we splice */
    struct bufferevent *up;           /* the origin, or the decrypting listener */
    struct event *reap;
    char host[256];
    uint16_t port;
    char authority[300];              /* for URLs: "host[:port]", no port when 443 */
    uint16_t local_port;              /* intercept: our end towards the decrypting side */
};

static const char established[] = "HTTP/1.1 200 Connection established\r\n\r\n";

static void reap_cb(evutil_socket_t fd, short what, void *arg);

static void unlist(tunnel_t *t)
{
    df_proxy_t *px = t->px;

    if (t->prev)
        t->prev->next = t->next;
    else if (px->tunnels == t)
        px->tunnels = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
    px->ntunnels--;
}

/* Releases everything but evcon (the caller's business: see below). */
static void release_io(tunnel_t *t)
{
    if (t->raw_drain) {
        evbuffer_remove_cb_entry(bufferevent_get_output(t->raw), t->raw_drain);
        t->raw_drain = NULL;
    }
    if (t->up) {
        bufferevent_free(t->up);
        t->up = NULL;
    }
    if (t->tls) {
        /* Unlinks from raw at once (its callbacks reset); the filter's
         * memory and its reference on raw go when libevent finalizes it.
         * Without BEV_OPT_CLOSE_ON_FREE it never touches the SSL again. */
        bufferevent_free(t->tls);
        t->tls = NULL;
    }
    if (t->ssl) {
        SSL_free(t->ssl);
        t->ssl = NULL;
    }
    t->client = NULL;
}

static void tunnel_free(tunnel_t *t)
{
    unlist(t);
    release_io(t);
    if (t->evcon) {
        evhttp_connection_set_closecb(t->evcon, NULL, NULL);
        if (t->hijacked) {
            bufferevent_disable(t->raw, EV_READ | EV_WRITE);
            evhttp_connection_free(t->evcon); /* frees the parked CONNECT and raw */
        }
    }
    if (t->reap)
        event_free(t->reap);
    free(t);
}

/* Schedules the end of t (idempotent). */
static void kill_tunnel(tunnel_t *t)
{
    if (t->state == TS_DEAD)
        return;
    t->state = TS_DEAD;
    if (t->client)
        bufferevent_disable(t->client, EV_READ | EV_WRITE);
    if (t->up)
        bufferevent_disable(t->up, EV_READ | EV_WRITE);
    event_active(t->reap, EV_TIMEOUT, 0);
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    tunnel_free(arg);
}

/* evhttp frees the client connection: before the hijack the client left
 * (or evhttp_free); after it only evhttp_free can do that. */
static void on_evcon_close(struct evhttp_connection *evcon, void *arg)
{
    tunnel_t *t = arg;

    (void)evcon;
    release_io(t); /* the filter must let go of raw before evhttp frees it */
    t->evcon = NULL;
    t->req = NULL;
    t->raw = NULL;
    kill_tunnel(t);
}

/* ---- splicing */

static struct bufferevent *other(tunnel_t *t, struct bufferevent *bev)
{
    return bev == t->client ? t->up : t->client;
}

static void splice_read_cb(struct bufferevent *from, void *arg)
{
    tunnel_t *t = arg;
    struct bufferevent *to = other(t, from);
    struct evbuffer *out;

    if (t->state != TS_OPEN || !to)
        return;
    out = bufferevent_get_output(to);
    evbuffer_add_buffer(out, bufferevent_get_input(from));
    if (evbuffer_get_length(out) >= DF_PROXY_TUNNEL_BUFFER) {
        /* Backpressure: stop reading until `to` drained to half. */
        bufferevent_disable(from, EV_READ);
        bufferevent_setwatermark(to, EV_WRITE, DF_PROXY_TUNNEL_BUFFER / 2, 0);
    }
}

/* Everything for `to` has reached the kernel.  The TLS filter's output
 * empties into raw's (encrypted), which raw writes: for the intercepted
 * client side both must be empty, or ending the tunnel drops the tail of
 * the last reply (clients that send "Connection: close", as skopeo does,
 * see a short body). */
static bool flushed(const tunnel_t *t, struct bufferevent *to)
{
    if (evbuffer_get_length(bufferevent_get_output(to)) > 0)
        return false;
    return to != t->tls || !t->raw || evbuffer_get_length(bufferevent_get_output(t->raw)) == 0;
}

static void raw_drain_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    tunnel_t *t = arg;

    (void)buf, (void)info;
    if (t->state == TS_CLOSING && t->tls && flushed(t, t->tls))
        kill_tunnel(t);
}

/* Closing: ends the tunnel once `to` is flushed, else waits for it (its
 * write callback, and for the TLS side raw's output callback). */
static void end_when_flushed(tunnel_t *t, struct bufferevent *to)
{
    if (flushed(t, to)) {
        kill_tunnel(t);
        return;
    }
    if (to == t->tls && t->raw && !t->raw_drain) {
        t->raw_drain = evbuffer_add_cb(bufferevent_get_output(t->raw), raw_drain_cb, t);
        if (!t->raw_drain)
            kill_tunnel(t); /* ENOMEM: nothing would tell us when it drained */
    }
}

static void splice_write_cb(struct bufferevent *to, void *arg)
{
    tunnel_t *t = arg;
    struct bufferevent *from = other(t, to);

    if (t->state == TS_CLOSING) {
        end_when_flushed(t, to);
        return;
    }
    if (t->state == TS_OPEN && from) {
        bufferevent_setwatermark(to, EV_WRITE, 0, 0);
        bufferevent_enable(from, EV_READ);
    }
}

static void splice_event_cb(struct bufferevent *bev, short what, void *arg)
{
    tunnel_t *t = arg;
    struct bufferevent *to = other(t, bev);

    /* CONNECTED on the client side: the TLS handshake is done. */
    if (t->state != TS_OPEN || !(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)))
        return;
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT) || !to) {
        DF_LOG_D("mirror: CONNECT %s: %s on the %s side", t->authority,
                 what & BEV_EVENT_TIMEOUT ? "idle timeout" : "error or reset",
                 bev == t->client ? "client" : "upstream");
        kill_tunnel(t);
        return;
    }
    /* EOF: pass on what is left, then end both sides (HTTP clients do not
     * half-close; a TLS close_notify has already gone through as data). */
    evbuffer_add_buffer(bufferevent_get_output(to), bufferevent_get_input(bev));
    t->state = TS_CLOSING;
    bufferevent_disable(bev, EV_READ);
    bufferevent_setwatermark(to, EV_WRITE, 0, 0);
    bufferevent_enable(to, EV_WRITE);
    end_when_flushed(t, to);
}

static void setup_splice(tunnel_t *t, struct bufferevent *bev)
{
    struct timeval idle = {IDLE_TIMEOUT_S, 0};

    bufferevent_setcb(bev, splice_read_cb, splice_write_cb, splice_event_cb, t);
    bufferevent_setwatermark(bev, EV_READ, 0, DF_PROXY_TUNNEL_BUFFER);
    bufferevent_set_timeouts(bev, &idle, &idle);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

/* ---- the hijack */

static void fail_connect(tunnel_t *t, int code, const char *why)
{
    DF_LOG_I("mirror: CONNECT %s: %s", t->authority, why);
    if (t->req && t->evcon) {
        struct evhttp_request *req = t->req;
        evhttp_connection_set_closecb(t->evcon, NULL, NULL);
        t->req = NULL;
        t->evcon = NULL; /* evhttp's again: it answers and goes on */
        evhttp_send_error(req, code, NULL);
    }
    kill_tunnel(t);
}

static int hijack(tunnel_t *t)
{
    df_proxy_t *px = t->px;

    t->raw = evhttp_connection_get_bufferevent(t->evcon);
    if (!t->raw)
        return -EINVAL;
    df__proxy_tls_sniff_off(t->raw);
    t->hijacked = true;
    t->req = NULL; /* parked on evcon, freed with it */
    bufferevent_setcb(t->raw, NULL, NULL, NULL, NULL);
    bufferevent_set_timeouts(t->raw, NULL, NULL);
    if (bufferevent_write(t->raw, established, sizeof(established) - 1) < 0)
        return -ENOMEM;
    if (!t->intercept) {
        t->client = t->raw;
        px->stats.tunnels++;
    } else {
        /* The 200 is queued on raw before the filter exists, so it goes
         * out in clear ahead of anything TLS. */
        t->ssl = df__mint_ssl(px->mint, t->host);
        if (!t->ssl)
            return -ENOMEM;
        t->tls = bufferevent_openssl_filter_new(px->base, t->raw, t->ssl, BUFFEREVENT_SSL_ACCEPTING, 0);
        if (!t->tls)
            return -ENOMEM;
        bufferevent_openssl_set_allow_dirty_shutdown(t->tls, 1);
        /* The filter moves its output into raw's, encrypted, as far as
         * raw's write high-water mark lets it (none by default): without
         * one a stalled client would have the whole reply queued here. */
        bufferevent_setwatermark(t->raw, EV_WRITE, 0, DF_PROXY_TUNNEL_BUFFER);
        t->client = t->tls;
        px->stats.intercepted++;
    }
    bufferevent_enable(t->raw, EV_READ | EV_WRITE);
    t->state = TS_OPEN;
    setup_splice(t, t->client);
    setup_splice(t, t->up);
    /* Bytes the client sent right behind the CONNECT (evhttp read them
     * with the request) wait in raw's input; no read event will announce
     * them, so run raw's read callback (ours or the filter's) once. */
    if (evbuffer_get_length(bufferevent_get_input(t->raw)) > 0)
        bufferevent_trigger(t->raw, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
    return 0;
}

static void up_connect_cb(struct bufferevent *bev, short what, void *arg)
{
    tunnel_t *t = arg;
    char why[160];
    int dns;

    if (t->state != TS_CONNECTING)
        return;
    if (!(what & BEV_EVENT_CONNECTED)) {
        dns = bufferevent_socket_get_dns_error(bev);
        if (dns)
            snprintf(why, sizeof(why), "cannot resolve: %s", evutil_gai_strerror(dns));
        else
            snprintf(why, sizeof(why), "cannot connect: %s",
                     what & BEV_EVENT_TIMEOUT ? "timeout" : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        fail_connect(t, 502, why);
        return;
    }
    if (!t->evcon) {
        kill_tunnel(t);
        return;
    }
    if (hijack(t) < 0) {
        DF_LOG_W("mirror: CONNECT %s: cannot set up the %s", t->authority, t->intercept ? "TLS interception" : "tunnel");
        kill_tunnel(t);
    }
}

static int local_port_of(struct bufferevent *bev, uint16_t *port)
{
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);
    evutil_socket_t fd = bufferevent_getfd(bev);

    if (fd < 0 || getsockname(fd, (struct sockaddr *)&sin, &sl) < 0 || sin.sin_family != AF_INET)
        return -EINVAL;
    *port = ntohs(sin.sin_port);
    return 0;
}

static bool intercepted(const df_proxy_t *px, const char *hostport)
{
    if (!px->mint)
        return false;
    for (size_t i = 0; i < px->nhijack; i++)
        if (regexec(&px->hijack[i], hostport, 0, NULL, 0) == 0)
            return true;
    return false;
}

void df__proxy_connect(df_proxy_t *px, struct evhttp_request *req)
{
    const char *target = evhttp_request_get_uri(req);
    struct timeval ct = {CONNECT_TIMEOUT_S, 0};
    char hostport[300];
    tunnel_t *t;
    int rc;

    if (px->ntunnels >= DF_PROXY_TUNNELS_MAX) {
        evhttp_send_error(req, 503, NULL);
        return;
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        evhttp_send_error(req, 503, NULL);
        return;
    }
    if (!target || df_proxy_parse_connect(target, strlen(target), t->host, sizeof(t->host), &t->port) < 0 ||
        df_proxy_format_authority(t->host, t->port, false, hostport, sizeof(hostport)) < 0 ||
        df_proxy_format_authority(t->host, t->port, true, t->authority, sizeof(t->authority)) < 0) {
        free(t);
        evhttp_send_error(req, 400, NULL);
        return;
    }
    t->px = px;
    t->req = req;
    t->evcon = evhttp_request_get_connection(req);
    t->intercept = intercepted(px, hostport);
    t->state = TS_CONNECTING;
    t->next = px->tunnels;
    if (px->tunnels)
        px->tunnels->prev = t;
    px->tunnels = t;
    px->ntunnels++;
    t->reap = event_new(px->base, -1, 0, reap_cb, t);
    t->up = bufferevent_socket_new(px->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!t->reap || !t->up || !t->evcon) {
        rc = -ENOMEM;
        goto fail;
    }
    bufferevent_setcb(t->up, NULL, NULL, up_connect_cb, t);
    bufferevent_set_timeouts(t->up, &ct, &ct);
    evhttp_connection_set_closecb(t->evcon, on_evcon_close, t);
    DF_LOG_D("mirror: CONNECT %s: %s", hostport, t->intercept ? "intercepting" : "tunnelling");
    if (t->intercept) {
        rc = bufferevent_socket_connect(t->up, (struct sockaddr *)&px->mitm_addr, sizeof(px->mitm_addr));
        if (rc == 0)
            rc = local_port_of(t->up, &t->local_port);
    } else {
        rc = bufferevent_socket_connect_hostname(t->up, px->dns, AF_UNSPEC, t->host, t->port);
    }
    if (rc < 0) {
        rc = -ECONNREFUSED;
        goto fail;
    }
    return;
fail:
    if (t->reap) {
        fail_connect(t, rc == -ENOMEM ? 503 : 502, "cannot start the upstream connection");
    } else {
        if (t->evcon)
            evhttp_connection_set_closecb(t->evcon, NULL, NULL);
        t->evcon = NULL;
        tunnel_free(t);
        evhttp_send_error(req, 503, NULL);
    }
}

const char *df__proxy_tunnel_authority(const df_proxy_t *px, uint16_t peer_port)
{
    for (const tunnel_t *t = px->tunnels; t; t = t->next)
        if (t->intercept && t->state != TS_DEAD && t->local_port == peer_port)
            return t->authority;
    return NULL;
}

void df__proxy_tunnels_free(df_proxy_t *px)
{
    while (px->tunnels) {
        tunnel_t *t = px->tunnels;
        if (t->evcon && !t->hijacked) {
            /* Unanswered: evhttp's connection, closed by evhttp's owner. */
            evhttp_connection_set_closecb(t->evcon, NULL, NULL);
            t->evcon = NULL;
        }
        tunnel_free(t);
    }
}
