/*
 * The peer: what every host runs, whether inside dfdaemon (for its whole
 * life) or inside one dfget (for one download).  It owns the piece store,
 * the upload server that serves the store's verified pieces to other peers,
 * the tracker client, the HTTP client every transfer shares, and the
 * host-wide download rate limit.
 *
 * The address other peers use (advertise_ip) is, unless configured, the
 * local address the kernel picks to reach the first supernode: found with
 * a connected UDP socket, which sends nothing.
 *
 * A 1-second tick sends a heartbeat to the tracker every 10 s (so a peer
 * that only serves stays known) and runs the store's GC every 30 s,
 * telling the tracker about every task it evicts (ServiceDown).
 */
#include "engine/peer_internal.h"

#include "engine/upload_server.h"

#include <event2/http.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HEARTBEAT_MS 10000u
#define GC_MS 30000u

void df_peer_config_init(df_peer_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->upload_host = "0.0.0.0";
    cfg->fetch_parallel = 8;
    cfg->stall_timeout_ms = 20000;
    cfg->serve = true;
}

/* The local address used to reach host:port (no packet is sent). */
static int route_local_ip(const char *hostport, char *out, size_t cap)
{
    char host[256];
    uint16_t port;
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM}, *ai = NULL;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char portstr[8];
    int fd = -1, rc;

    if (df_parse_hostport(hostport, host, sizeof(host), &port) < 0)
        return -EINVAL;
    snprintf(portstr, sizeof(portstr), "%u", port);
    if (getaddrinfo(host, portstr, &hints, &ai) != 0 || !ai)
        return -EHOSTUNREACH;
    fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
        rc = -errno;
        goto out;
    }
    if (ss.ss_family == AF_INET)
        rc = inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, (socklen_t)cap) ? 0 : -EINVAL;
    else
        rc = inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, (socklen_t)cap) ? 0 : -EINVAL;
out:
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return rc;
}

static void evicted_cb(const char *task_id, void *arg)
{
    df_peer_t *peer = arg;
    DF_LOG_I("store: evicted task %.16s", task_id);
    if (peer->tracker && peer->peer_id[0])
        peer->tracker->ops->service_down(peer->tracker, peer->peer_id, task_id, NULL, NULL);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    df_peer_t *peer = arg;
    uint64_t now = df_now_ms();

    if (peer->tracker && peer->peer_id[0] && now - peer->last_heartbeat_ms >= HEARTBEAT_MS) {
        peer->last_heartbeat_ms = now;
        peer->tracker->ops->heartbeat(peer->tracker, peer->peer_id, NULL, NULL);
    }
    if (peer->gc_soon || now - peer->last_gc_ms >= GC_MS) {
        peer->gc_soon = false;
        peer->last_gc_ms = now;
        df_store_flush(peer->store);
        df_store_gc(peer->store, evicted_cb, peer);
    }
}

static void http_cb(struct evhttp_request *req, void *arg)
{
    df_peer_t *peer = arg;
    if (!df_upload_server_handle(peer->up, req))
        evhttp_send_error(req, HTTP_NOTFOUND, "not found");
}

static int start_upload_server(df_peer_t *peer)
{
    struct evhttp_bound_socket *bs;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int rc;

    peer->evh = evhttp_new(peer->base);
    if (!peer->evh)
        return -ENOMEM;
    evhttp_set_max_headers_size(peer->evh, 16 * 1024);
    evhttp_set_max_body_size(peer->evh, 4 * 1024);
    evhttp_set_timeout(peer->evh, 60);
    evhttp_set_allowed_methods(peer->evh, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_gencb(peer->evh, http_cb, peer);
    bs = evhttp_bind_socket_with_handle(peer->evh, peer->cfg.upload_host, peer->cfg.upload_port);
    if (!bs)
        return -EADDRINUSE;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) < 0)
        return -errno;
    peer->upload_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                       : ((struct sockaddr_in *)&ss)->sin_port);
    rc = df_upload_server_new(peer->base, NULL, peer->store, &peer->up);
    if (rc < 0)
        return rc;
    df_upload_server_set_rate_limit(peer->up, peer->cfg.upload_limit_bps);
    return 0;
}

int df_peer_new(struct event_base *base, const df_peer_config_t *cfg, df_peer_t **out)
{
    df_peer_t *peer;
    char path[4096];
    size_t n = 0;
    struct timeval one = {1, 0};
    int rc = -ENOMEM;

    if (!cfg->home_dir)
        return -EINVAL;
    peer = calloc(1, sizeof(*peer));
    if (!peer)
        return -ENOMEM;
    peer->base = base;
    peer->cfg = *cfg;
    peer->home_dir = strdup(cfg->home_dir);
    if (!peer->home_dir)
        goto fail;
    while (cfg->nodes && cfg->nodes[n])
        n++;
    peer->nodes = calloc(n + 1, sizeof(char *));
    if (!peer->nodes)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        peer->nodes[i] = strdup(cfg->nodes[i]);
        if (!peer->nodes[i])
            goto fail;
    }
    peer->cfg.home_dir = peer->home_dir;
    peer->cfg.nodes = (const char **)peer->nodes;
    peer->cfg.advertise_ip = NULL;
    peer->upload_host = strdup(cfg->upload_host && cfg->upload_host[0] ? cfg->upload_host : "0.0.0.0");
    if (!peer->upload_host)
        goto fail;
    peer->cfg.upload_host = peer->upload_host;
    if (gethostname(peer->hostname, sizeof(peer->hostname)) < 0)
        df_strlcpy(peer->hostname, "localhost", sizeof(peer->hostname));

    rc = df_mkdirs(peer->home_dir);
    if (rc < 0)
        goto fail;
    if (snprintf(path, sizeof(path), "%s/store", peer->home_dir) >= (int)sizeof(path)) {
        rc = -ENAMETOOLONG;
        goto fail;
    }
    rc = df_store_open(path, cfg->cache_limit_bytes, &peer->store);
    if (rc < 0)
        goto fail;
    df_store_set_max_age(peer->store, cfg->cache_max_age_ms);
    rc = df_http_new(base, &peer->http);
    if (rc < 0)
        goto fail;
    if (n > 0) {
        rc = df_tracker_supernode_new(peer->http, (const char *const *)peer->nodes, &peer->tracker);
        if (rc < 0)
            goto fail;
    }
    if (cfg->advertise_ip && cfg->advertise_ip[0]) {
        df_strlcpy(peer->advertise_ip, cfg->advertise_ip, sizeof(peer->advertise_ip));
    } else {
        df_strlcpy(peer->advertise_ip, "127.0.0.1", sizeof(peer->advertise_ip));
        for (size_t i = 0; i < n; i++)
            if (route_local_ip(peer->nodes[i], peer->advertise_ip, sizeof(peer->advertise_ip)) == 0)
                break;
    }
    df_rate_limit_init(&peer->host_rl, cfg->total_limit_bps, df_now_ms());
    if (cfg->serve) {
        rc = start_upload_server(peer);
        if (rc < 0)
            goto fail;
    }
    peer->tick = event_new(base, -1, EV_PERSIST, tick_cb, peer);
    if (!peer->tick) {
        rc = -ENOMEM;
        goto fail;
    }
    evtimer_add(peer->tick, &one);
    peer->last_gc_ms = peer->last_heartbeat_ms = df_now_ms();
    DF_LOG_I("peer ready: store %s, uploads on %s:%u (advertised as %s)", path,
             cfg->serve ? peer->cfg.upload_host : "-", peer->upload_port, peer->advertise_ip);
    *out = peer;
    return 0;
fail:
    df_peer_free(peer);
    return rc;
}

uint16_t df_peer_upload_port(const df_peer_t *peer)
{
    return peer->upload_port;
}

void df_peer_stats(const df_peer_t *peer, df_peer_stats_t *out)
{
    df_upload_stats_t up = {0};

    *out = peer->stats;
    out->downloads_active = df__download_count_active(peer);
    if (peer->up)
        df_upload_server_stats(peer->up, &up);
    out->upload_requests = up.requests;
    out->upload_errors = up.errors;
    out->upload_bytes = up.bytes_served;
    out->store_bytes = df_store_bytes(peer->store);
    out->store_tasks = (uint32_t)df_store_task_count(peer->store);
    out->store_evicted = df_store_evicted(peer->store);
}

void df_peer_free(df_peer_t *peer)
{
    if (!peer)
        return;
    df__download_cancel_all(peer);
    if (peer->tick)
        event_free(peer->tick);
    if (peer->leave_timer)
        event_free(peer->leave_timer);
    df_upload_server_free(peer->up);
    if (peer->evh)
        evhttp_free(peer->evh);
    if (peer->tracker)
        peer->tracker->ops->free(peer->tracker);
    df_http_free(peer->http);
    df_store_close(peer->store);
    for (size_t i = 0; peer->nodes && peer->nodes[i]; i++)
        free(peer->nodes[i]);
    free(peer->nodes);
    free(peer->home_dir);
    free(peer->upload_host);
    free(peer);
}

/* ServiceDown for everything, then cb; bounded by a 1 s timer so a dead
 * supernode cannot hold the exit.  State lives in the peer, so whichever of
 * the tracker's answer and the timer comes second finds it still valid. */
static void leave_fire(df_peer_t *peer)
{
    if (peer->leave_fired || !peer->leave_cb)
        return;
    peer->leave_fired = true;
    peer->leave_cb(peer->leave_arg);
}

static void leave_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    leave_fire(arg);
}

static void leave_done_cb(int status, void *arg)
{
    leave_fire(arg);
}

int df_peer_leave(df_peer_t *peer, void (*cb)(void *arg), void *arg)
{
    struct timeval tv = {1, 0};

    if (!peer->tracker || !peer->peer_id[0])
        return -ENOENT;
    if (peer->leave_cb)
        return -EALREADY;
    if (!peer->leave_timer)
        peer->leave_timer = evtimer_new(peer->base, leave_timer_cb, peer);
    if (!peer->leave_timer)
        return -ENOMEM;
    if (peer->tracker->ops->service_down(peer->tracker, peer->peer_id, NULL, leave_done_cb, peer) < 0)
        return -EIO; /* nothing pending: a later call may try again */
    peer->leave_cb = cb;
    peer->leave_arg = arg;
    peer->leave_fired = false;
    evtimer_add(peer->leave_timer, &tv);
    return 0;
}
