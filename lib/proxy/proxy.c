/*
 * The registry mirror's front: configuration, request intake and the
 * lifetime of exchanges (design in proxy_internal.h).
 *
 * evhttp (libevent 2.1) serves the port.  It does what a mirror needs --
 * streaming replies with a written callback for backpressure, keep-alive,
 * header and body caps, 400/413 for malformed or oversized requests -- and
 * its one gap, a TLS ClientHello on the plain port, is closed by our own
 * bufferevent callback (tls_sniff.c).  So no hand-written HTTP server.
 *
 * A reply ends exactly once, through one of: the request's on_complete
 * callback (everything written), the connection's close callback (client
 * gone, timeout, evhttp freed), df__proxy_abort() (we cut a partial reply)
 * or df_proxy_free().  Each ends the client side of the exchange.
 */
#include "proxy/proxy_internal.h"

#include "piece/digest.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/keyvalq_struct.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

void df_proxy_config_init(df_proxy_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->registry = DF_PROXY_DEFAULT_REGISTRY;
}

/* "http[s]://authority[/]" -> base without the slash, lower-case authority. */
static int parse_registry(const char *url, char *base, size_t basecap, char *auth, size_t authcap)
{
    const char *a;
    size_t n;

    if (strncasecmp(url, "http://", 7) == 0)
        a = url + 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        a = url + 8;
    else
        return -EINVAL;
    n = strlen(a);
    if (n > 0 && a[n - 1] == '/')
        n--;
    if (n == 0 || n >= authcap)
        return -EINVAL;
    memcpy(auth, a, n);
    auth[n] = '\0';
    if (!df_proxy_valid_host(auth))
        return -EINVAL;
    for (char *p = auth; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    if (snprintf(base, basecap, "%.*s%s", (int)(a - url), url, auth) >= (int)basecap)
        return -EINVAL;
    for (char *p = base; *p != ':'; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return 0;
}

static void mitm_cb(struct evhttp_request *req, void *arg);

/* The same caps and methods as dfdaemon's front listener. */
static void setup_http(df_proxy_t *px, struct evhttp *http)
{
    evhttp_set_max_headers_size(http, 16 * 1024);
    evhttp_set_max_body_size(http, DF_PROXY_MAX_BODY);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                         EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS);
    evhttp_set_timeout(http, 60);
    evhttp_set_default_content_type(http, NULL);
    evhttp_set_gencb(http, mitm_cb, px);
}

/* CONNECT support: the interception patterns and CA, the decrypting
 * listener, a resolver for tunnel targets.  Nothing without http_proxy. */
static int setup_connect(df_proxy_t *px, const df_proxy_config_t *cfg, char *err, size_t errcap)
{
    struct evhttp_bound_socket *bound;
    socklen_t sl = sizeof(px->mitm_addr);
    size_t n = 0;
    int rc;

    for (size_t i = 0; cfg->hijack_hosts && cfg->hijack_hosts[i]; i++)
        n++;
    if (!cfg->http_proxy) {
        if (n || cfg->hijack_ca_cert || cfg->hijack_ca_key) {
            if (err && errcap)
                snprintf(err, errcap, "hijack settings need the HTTP proxy mode (http-proxy)");
            return DF_ECONFIG;
        }
        return 0;
    }
    if (n > DF_PROXY_HIJACK_MAX || (n && (!cfg->hijack_ca_cert || !cfg->hijack_ca_key)) ||
        (!cfg->hijack_ca_cert != !cfg->hijack_ca_key)) {
        if (err && errcap)
            snprintf(err, errcap, "hijack-host needs hijack-ca-cert and hijack-ca-key (and at most %d hosts)",
                     DF_PROXY_HIJACK_MAX);
        return DF_ECONFIG;
    }
    if (n) {
        px->hijack = calloc(n, sizeof(*px->hijack));
        if (!px->hijack)
            return -ENOMEM;
        for (; px->nhijack < n; px->nhijack++) {
            if (regcomp(&px->hijack[px->nhijack], cfg->hijack_hosts[px->nhijack], REG_EXTENDED | REG_NOSUB) != 0) {
                if (err && errcap)
                    snprintf(err, errcap, "hijack-host \"%.200s\": bad regex", cfg->hijack_hosts[px->nhijack]);
                return DF_ECONFIG;
            }
        }
        rc = df__mint_new(cfg->hijack_ca_cert, cfg->hijack_ca_key, &px->mint, err, errcap);
        if (rc < 0)
            return rc;
        px->mitm_http = evhttp_new(px->base);
        if (!px->mitm_http)
            return -ENOMEM;
        setup_http(px, px->mitm_http);
        bound = evhttp_bind_socket_with_handle(px->mitm_http, "127.0.0.1", 0);
        if (!bound || getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&px->mitm_addr, &sl) < 0) {
            if (err && errcap)
                snprintf(err, errcap, "cannot listen on 127.0.0.1 for intercepted connections");
            return -EADDRNOTAVAIL;
        }
    }
    /* Nameservers from /etc/resolv.conf and names from /etc/hosts; with
     * no resolv.conf libevent falls back to 127.0.0.1 as resolver. */
    px->dns = evdns_base_new(px->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!px->dns)
        return -ENOMEM;
    return 0;
}

int df_proxy_new(struct event_base *base, df_peer_t *peer, const df_proxy_config_t *cfg, df_proxy_t **out,
                 char *err, size_t errcap)
{
    df_proxy_t *px;
    int rc;

    if (err && errcap)
        err[0] = '\0';
    px = calloc(1, sizeof(*px));
    if (!px)
        return -ENOMEM;
    px->base = base;
    px->peer = peer;
    px->registry_insecure = cfg->registry_insecure;
    px->http_proxy = cfg->http_proxy;
    rc = parse_registry(cfg->registry ? cfg->registry : DF_PROXY_DEFAULT_REGISTRY, px->registry,
                        sizeof(px->registry), px->registry_authority, sizeof(px->registry_authority));
    if (rc < 0) {
        if (err && errcap)
            snprintf(err, errcap, "registry \"%.200s\": want http://HOST[:PORT] or https://HOST[:PORT]",
                     cfg->registry);
        rc = DF_ECONFIG;
        goto fail;
    }
    if (cfg->registry_ca) {
        px->registry_ca = strdup(cfg->registry_ca);
        if (!px->registry_ca) {
            rc = -ENOMEM;
            goto fail;
        }
    }
    for (size_t i = 0; cfg->hosts && cfg->hosts[i]; i++)
        px->nhosts++;
    if (px->nhosts > DF_PROXY_HOSTS_MAX) {
        if (err && errcap)
            snprintf(err, errcap, "more than %d registry hosts", DF_PROXY_HOSTS_MAX);
        rc = DF_ECONFIG;
        goto fail;
    }
    if (px->nhosts) {
        px->hosts = calloc(px->nhosts, sizeof(*px->hosts));
        if (!px->hosts) {
            rc = -ENOMEM;
            goto fail;
        }
    }
    for (size_t i = 0; i < px->nhosts; i++) {
        if (df_proxy_host_parse(cfg->hosts[i], &px->hosts[i], err, errcap) < 0) {
            rc = DF_ECONFIG;
            goto fail;
        }
    }
    rc = setup_connect(px, cfg, err, errcap);
    if (rc < 0)
        goto fail;
    rc = df_proxy_rules_new(cfg->rules, &px->rules, err, errcap);
    if (rc < 0) {
        rc = rc == -ENOMEM ? rc : DF_ECONFIG;
        goto fail;
    }
    rc = df_http_new(base, &px->http);
    if (rc < 0)
        goto fail;
    *out = px;
    return 0;
fail:
    df_proxy_free(px);
    return rc;
}

void df_proxy_attach(df_proxy_t *proxy, struct evhttp *http)
{
    evhttp_set_bevcb(http, df__proxy_tls_sniff_bevcb, proxy);
    evhttp_set_max_body_size(http, DF_PROXY_MAX_BODY);
    /* Replies without a Content-Type get none, not evhttp's text/html. */
    evhttp_set_default_content_type(http, NULL);
}

void df_proxy_stats(const df_proxy_t *proxy, df_proxy_stats_t *out)
{
    *out = proxy->stats;
}

/* ---- exchange lifetime */

static void xch_free(xch_t *x)
{
    df_proxy_t *px = x->px;

    if (x->prev)
        x->prev->next = x->next;
    else if (px->xchs == x)
        px->xchs = x->next;
    if (x->next)
        x->next->prev = x->prev;
    df_http_cancel(x->up);
    df__proxy_blob_detach(x);
    df_hasher_free(x->rs_hash);
    if (x->pump)
        event_free(x->pump);
    free(x->url);
    df__proxy_free_lines(x->hdrs);
    free(x);
}

void df__proxy_xch_unref(xch_t *x)
{
    if (--x->refs == 0)
        xch_free(x);
}

/* The client side is over: no request, no connection from here on. */
static void client_gone(xch_t *x)
{
    x->req = NULL;
    x->evcon = NULL;
    if (x->up) {
        df_http_cancel(x->up);
        x->up = NULL;
    }
    x->state = XS_DONE;
    df__proxy_xch_unref(x);
}

static void on_complete(struct evhttp_request *req, void *arg)
{
    xch_t *x = arg;

    /* From evhttp_send_done, before evhttp frees req (and maybe the
     * connection): the close callback must not fire for this exchange. */
    evhttp_connection_set_closecb(x->evcon, NULL, NULL);
    client_gone(x);
}

static void on_close(struct evhttp_connection *evcon, void *arg)
{
    xch_t *x = arg;
    struct evhttp_request *req = x->req;

    evhttp_connection_set_closecb(evcon, NULL, NULL);
    evhttp_request_set_on_complete_cb(req, NULL, NULL);
    /* A request detached from its dying connection is ours to free; one
     * still attached goes with the connection. */
    if (evhttp_request_get_connection(req) == NULL)
        evhttp_send_reply_end(req);
    client_gone(x);
}

void df__proxy_abort(xch_t *x)
{
    struct evhttp_connection *evcon = x->evcon;

    if (!evcon)
        return;
    x->px->stats.aborted++;
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    evhttp_request_set_on_complete_cb(x->req, NULL, NULL);
    client_gone(x);
    evhttp_connection_free(evcon); /* frees the request too */
}

size_t df__proxy_queued(const xch_t *x)
{
    struct bufferevent *bev = x->evcon ? evhttp_connection_get_bufferevent(x->evcon) : NULL;
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
    xch_t *x = arg;

    if (x->state == XS_DIRECT)
        df__proxy_direct_pump(x);
    else if (x->state == XS_P2P || x->state == XS_CHECK)
        df__proxy_blob_pump(x);
    else if (x->state == XS_RESUME)
        df__proxy_resume_pump(x);
}

void df__proxy_kick(xch_t *x)
{
    event_active(x->pump, EV_TIMEOUT, 0);
}

void df__proxy_on_written(struct evhttp_connection *evcon, void *arg)
{
    xch_t *x = arg;

    /* evhttp calls this each time the connection's output drains. */
    if (!x->writing)
        return;
    x->writing = false;
    df__proxy_kick(x);
}

int df__proxy_send_chunk(xch_t *x, const void *data, size_t len)
{
    struct evbuffer *buf = evbuffer_new();

    if (!buf || evbuffer_add(buf, data, len) < 0) {
        if (buf)
            evbuffer_free(buf);
        return -ENOMEM;
    }
    x->px->stats.direct_bytes += len;
    x->writing = true;
    evhttp_send_reply_chunk_with_cb(x->req, buf, df__proxy_on_written, x);
    evbuffer_free(buf);
    return 0;
}

void df__proxy_send_error(xch_t *x, int code, const char *text)
{
    struct evbuffer *body;

    if (!x->req || x->replying)
        return;
    x->replying = true;
    body = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(x->req), "Content-Type", "text/plain");
    if (body && !x->head)
        evbuffer_add_printf(body, "%s\n", text);
    evhttp_send_reply(x->req, code, NULL, body); /* on_complete ends the client side */
    if (body)
        evbuffer_free(body);
}

/* ---- intake */

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    default: return NULL;
    }
}

/* One request of the front listener, or, with https_authority, of the
 * decrypting listener (an intercepted CONNECT to that host). */
static void serve(df_proxy_t *px, struct evhttp_request *req, const char *https_authority)
{
    const char *target = evhttp_request_get_uri(req);
    const char *method = method_name(evhttp_request_get_command(req));
    char origin[8192];
    xch_t *x;
    size_t plen;
    int rc;

    px->stats.requests++;
    if (!method) {
        evhttp_send_error(req, 405, NULL);
        return;
    }
    if (!target || (target[0] != '/' && !px->http_proxy)) {
        /* An absolute-form target is HTTP proxy use: off unless configured. */
        evhttp_send_error(req, 400, NULL);
        return;
    }
    x = calloc(1, sizeof(*x));
    if (!x) {
        evhttp_send_error(req, 503, NULL);
        return;
    }
    x->px = px;
    x->refs = 1;
    x->req = req;
    x->evcon = evhttp_request_get_connection(req);
    x->head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
    x->state = XS_DONE;
    x->pump = event_new(px->base, -1, 0, pump_cb, x);
    x->next = px->xchs;
    if (px->xchs)
        px->xchs->prev = x;
    px->xchs = x;
    if (!x->pump) {
        df__proxy_send_error(x, 503, "out of memory");
        goto hook;
    }
    if (https_authority) {
        px->stats.intercepted_requests++;
        rc = target[0] == '/' ? df__proxy_https_url(px, x, https_authority, target) : -EINVAL;
    } else if (target[0] == '/') {
        rc = df__proxy_upstream_url(px, x, target);
    } else {
        /* HTTP proxy: the client names the origin; the rules see its path. */
        px->stats.proxied++;
        rc = df__proxy_absolute_url(x, target, origin, sizeof(origin));
        target = origin;
    }
    if (rc < 0) {
        df__proxy_send_error(x, rc == -ENOMEM ? 503 : 400, "bad request target or ns parameter");
        goto hook;
    }
    plen = strcspn(target, "?");
    if (df_proxy_rules_match(px->rules, method, target, plen) == DF_PROXY_P2P) {
        df_proxy_blob_digest(target, plen, x->digest, sizeof(x->digest));
        df__proxy_blob_start(x);
    } else {
        rc = df__proxy_direct_start(x);
        if (rc < 0)
            df__proxy_send_error(x, 502, "cannot reach the registry");
    }
hook:
    /* Hooked last: a reply sent synchronously above ends through on_complete. */
    if (x->req && x->evcon) {
        evhttp_connection_set_closecb(x->evcon, on_close, x);
        evhttp_request_set_on_complete_cb(req, on_complete, x);
    }
}

void df_proxy_handle(df_proxy_t *px, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) == EVHTTP_REQ_CONNECT) {
        px->stats.requests++;
        if (!px->http_proxy) {
            evhttp_send_error(req, 405, NULL);
            return;
        }
        df__proxy_connect(px, req);
        return;
    }
    serve(px, req, NULL);
}

/* A request on the decrypting listener: only from our own intercepting
 * tunnels, recognized by the peer port; anyone else on this host who
 * finds the port gets 403. */
static void mitm_cb(struct evhttp_request *req, void *arg)
{
    df_proxy_t *px = arg;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    const char *authority = NULL;
    char *addr = NULL;
    ev_uint16_t port = 0;

    if (evcon) {
        evhttp_connection_get_peer(evcon, &addr, &port);
        if (addr && strcmp(addr, "127.0.0.1") == 0)
            authority = df__proxy_tunnel_authority(px, port);
    }
    if (!authority) {
        DF_LOG_D("mirror: request on the decrypting listener from %s:%u: no such tunnel", addr ? addr : "?",
                 (unsigned)port);
        evhttp_send_error(req, 403, NULL);
        return;
    }
    serve(px, req, authority);
}

void df_proxy_free(df_proxy_t *px)
{
    if (!px)
        return;
    while (px->xchs) {
        xch_t *x = px->xchs;
        if (x->evcon) {
            struct evhttp_connection *evcon = x->evcon;
            evhttp_connection_set_closecb(evcon, NULL, NULL);
            evhttp_request_set_on_complete_cb(x->req, NULL, NULL);
            evhttp_connection_free(evcon);
        }
        xch_free(x);
    }
    df__proxy_flights_free(px);
    df__proxy_tunnels_free(px);
    if (px->mitm_http)
        evhttp_free(px->mitm_http);
    if (px->dns)
        evdns_base_free(px->dns, 0);
    df__mint_free(px->mint);
    for (size_t i = 0; i < px->nhijack; i++)
        regfree(&px->hijack[i]);
    free(px->hijack);
    df_proxy_rules_free(px->rules);
    df_http_free(px->http);
    free(px->registry_ca);
    free(px->hosts);
    free(px);
}
