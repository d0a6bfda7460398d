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
#include "tracker/seed_forward.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <openssl/crypto.h>

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
    cfg->hash_threads = 1;
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

/* POST /peer/seed (gossip mode): a member hands us origin headers for
 * the seed of a task we own (tracker/seed_forward.h).  The body is wiped
 * once read: it may hold credentials in clear. */
static bool seed_route(df_peer_t *peer, struct evhttp_request *req)
{
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *in, *out;
    char msg[200] = "";
    unsigned char *body;
    size_t len;
    int code;

    if (!uri || strcmp(uri, DF_SEEDFWD_PATH) != 0)
        return false;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        evhttp_send_error(req, 405, "method not allowed");
        return true;
    }
    if (!peer->gossip || !peer->tracker) {
        evhttp_send_error(req, HTTP_NOTFOUND, "not in gossip mode");
        return true;
    }
    in = evhttp_request_get_input_buffer(req);
    len = evbuffer_get_length(in);
    body = evbuffer_pullup(in, -1);
    if (len && !body) {
        evhttp_send_error(req, 503, "out of memory");
        return true;
    }
    code = df_tracker_gossip_seed_request(peer->tracker, body, len, msg, sizeof(msg));
    if (body)
        OPENSSL_cleanse(body, len);
    evbuffer_drain(in, len);
    if (code == 204) {
        evhttp_send_reply(req, 204, "No Content", NULL);
        return true;
    }
    out = evbuffer_new();
    if (out)
        evbuffer_add_printf(out, "%s\n", msg);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, code, code == 403 ? "Forbidden" : code == 409 ? "Conflict" : "Refused", out);
    if (out)
        evbuffer_free(out);
    return true;
}

static void http_cb(struct evhttp_request *req, void *arg)
{
    df_peer_t *peer = arg;
    if (!seed_route(peer, req) && !df_upload_server_handle(peer->up, req))
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
    evhttp_set_max_body_size(peer->evh, DF_SEEDFWD_BODY_MAX); /* POST /peer/seed */
    evhttp_set_timeout(peer->evh, 60);
    evhttp_set_allowed_methods(peer->evh, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
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

/* ------------------------------------------------------------ gossip mode */

/* One running seed download (this node owns its task): the context its done
 * callback needs, kept in a list so df_peer_free releases the contexts of
 * downloads it cancels (their callbacks never run). */
typedef struct seed_ctx {
    df_peer_t *peer;
    char task_id[65];
    struct seed_ctx *next;
} seed_ctx_t;

static void seed_unlink(df_peer_t *peer, seed_ctx_t *sc)
{
    for (seed_ctx_t **pp = &peer->seeds; *pp; pp = &(*pp)->next)
        if (*pp == sc) {
            *pp = sc->next;
            return;
        }
}

static void seed_done_cb(const df_download_result_t *res, void *arg)
{
    seed_ctx_t *sc = arg;
    df_peer_t *peer = sc->peer;

    if (res->status < 0)
        DF_LOG_W("gossip: seed of task %.16s failed: %s", sc->task_id, res->reason);
    else
        DF_LOG_I("gossip: seed of task %.16s done (%llu bytes from the origin)", sc->task_id,
                 (unsigned long long)res->bytes_from_origin);
    seed_unlink(peer, sc);
    if (peer->tracker)
        df_tracker_gossip_seed_done(peer->tracker, sc->task_id, res->status);
    free(sc);
}

/* The gossip tracker's start_seed: an engine download that only fills the
 * store (stream mode, no output).  Its Register reaches the tracker from
 * inside this call, which is how the tracker knows it is the seed. */
static int start_seed(void *arg, const char *url, const char *task_id, const char *const *headers)
{
    df_peer_t *peer = arg;
    df_download_req_t req = {0};
    seed_ctx_t *sc = calloc(1, sizeof(*sc));
    int rc;

    if (!sc)
        return -ENOMEM;
    sc->peer = peer;
    df_strlcpy(sc->task_id, task_id, sizeof(sc->task_id));
    req.url = url;
    req.headers = (const char **)headers; /* copied by df_peer_download */
    req.stream = true;
    req.call_system = "gossip-seed";
    sc->next = peer->seeds;
    peer->seeds = sc;
    rc = df_peer_download(peer, &req, NULL, seed_done_cb, sc);
    if (rc < 0) {
        seed_unlink(peer, sc);
        free(sc);
    }
    return rc;
}

static int start_gossip(df_peer_t *peer, const df_peer_config_t *cfg)
{
    df_tracker_gossip_opts_t o = {0};
    char name[192];
    size_t n = 0;

    while (cfg->gossip_join && cfg->gossip_join[n])
        n++;
    peer->gossip_join = calloc(n + 1, sizeof(char *));
    if (!peer->gossip_join)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (!(peer->gossip_join[i] = strdup(cfg->gossip_join[i])))
            return -ENOMEM;
    if (cfg->gossip_name && cfg->gossip_name[0])
        df_strlcpy(name, cfg->gossip_name, sizeof(name));
    else
        snprintf(name, sizeof(name), "%.128s-%u", peer->hostname, peer->upload_port);
    o.base = peer->base;
    o.http = peer->http;
    o.store = peer->store;
    o.name = name;
    o.listen = cfg->gossip_listen;
    o.advertise_ip = peer->advertise_ip;
    o.upload_port = peer->upload_port;
    o.join = (const char *const *)peer->gossip_join;
    o.encrypt = cfg->gossip_encrypt;
    o.dns_name = cfg->gossip_dns;
    o.dns_server = cfg->gossip_dns_server;
    o.dns_interval_ms = cfg->gossip_dns_interval_ms;
    o.forward_headers = cfg->gossip_forward_headers;
    o.start_seed = start_seed;
    o.seed_arg = peer;
    peer->gossip = true;
    return df_tracker_gossip_new(&o, &peer->tracker);
}

int df_peer_gossip_stats(const df_peer_t *peer, df_peer_gossip_stats_t *out)
{
    df_tracker_gossip_stats_t s;

    if (!peer->gossip || !peer->tracker)
        return -ENOENT;
    df_tracker_gossip_stats(peer->tracker, &s);
    out->members_alive = s.members_alive;
    out->members_leaving = s.members_leaving;
    out->members_left = s.members_left;
    out->members_failed = s.members_failed;
    out->events_sent = s.events_sent;
    out->events_received = s.events_received;
    out->events_dropped = s.events_dropped;
    out->probe_failures = s.probe_failures;
    out->tasks_owned = s.tasks_owned;
    out->seeds_started = s.seeds_started;
    out->health_score = s.health_score;
    out->dns_rounds = s.dns_rounds;
    out->dns_failures = s.dns_failures;
    out->dns_joins = s.dns_joins;
    out->rx_wrong_key = s.rx_wrong_key;
    out->rx_unencrypted = s.rx_unencrypted;
    out->rx_encrypted = s.rx_encrypted;
    out->rx_refused = s.rx_refused;
    out->rx_malformed = s.rx_malformed;
    out->bcast_pruned = s.bcast_pruned;
    out->sync_sent = s.sync_sent;
    out->sync_answered = s.sync_answered;
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
    peer->cfg.gossip_listen = NULL; /* used during df_peer_new only */
    peer->cfg.gossip_join = NULL;
    peer->cfg.gossip_encrypt = NULL;
    peer->cfg.gossip_dns = NULL;
    peer->cfg.gossip_dns_server = NULL;
    peer->cfg.gossip_name = NULL;
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
    if (cfg->ephemeral)
        df_store_set_ephemeral(peer->store);
    rc = df_http_new(base, &peer->http);
    if (rc < 0)
        goto fail;
    if (cfg->hash_threads > 0) {
        /* cap: a few pieces per thread queued is enough to keep them busy;
         * past it a download hashes on the loop (df_workq_submit -EAGAIN) */
        rc = df_workq_new(base, DF_MIN(cfg->hash_threads, 16u), 64, &peer->hashq);
        if (rc < 0)
            goto fail;
    }
    if (n > 0 && !cfg->gossip_listen) {
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
    if (cfg->gossip_listen) {
        if (!(cfg->advertise_ip && cfg->advertise_ip[0]) && cfg->gossip_join && cfg->gossip_join[0])
            route_local_ip(cfg->gossip_join[0], peer->advertise_ip, sizeof(peer->advertise_ip));
        rc = start_gossip(peer, cfg);
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
    /* First: the hash jobs' completions run now (cancelled or finished)
     * while their downloads still exist; then the downloads go. */
    df_workq_free(peer->hashq);
    peer->hashq = NULL;
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
    while (peer->seeds) {
        seed_ctx_t *sc = peer->seeds;
        peer->seeds = sc->next;
        free(sc);
    }
    for (size_t i = 0; peer->gossip_join && peer->gossip_join[i]; i++)
        free(peer->gossip_join[i]);
    free(peer->gossip_join);
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
