/*
 * The supernode: one evhttp on one port answering the tracker API
 * (docs/API.md), the listings, /healthz, /metrics, and -- through the upload
 * server -- the seed's pieces at /peer/file/<task id>.
 *
 * Wiring: requests are decoded by api_codec.c, applied to the bookkeeping in
 * swarm.c, and the seed (seed.c) is started by Register.  Register answers
 * are deferred until the seed knows the file's length (or failed): the
 * evhttp request is parked on the task's waiter list and answered from the
 * seed's ready callback.  Everything runs on the caller's event loop.
 *
 * PullPiece is a long-poll: when there is nothing to assign, the request is
 * parked on the task (up to PARK_MS) and answered as soon as something that
 * could change the answer happens -- the seed verified a piece, a peer
 * reported pieces or released slots, the task completed or failed.  A peer
 * ahead of the seed thus gets the next piece the moment it lands instead of
 * after a polling interval (Dragonfly 1.x slept up to 1.6 s here).
 *
 * Robustness: evhttp enforces the header (16 KiB) and body (64 KiB) caps and
 * answers 413 itself; every handler validates its input before touching
 * state and answers 400/404/405/409 with a JSON error body; nothing a client
 * sends can make us allocate beyond the caps in api_codec.h and swarm.h.
 *
 * Timers: a one-second sweep removes silent peers, frees in-flight pieces
 * nobody reported, forgets idle tasks (releasing their hold on the cache so
 * store GC may evict them), flushes store metadata and runs store GC.
 */
#include "core/core.h"
#include "core/metrics.h"
#include "engine/upload_server.h"
#include "net/http_client.h"
#include "piece/piece.h"
#include "piece/piece_store.h"
#include "supernode/api_codec.h"
#include "supernode/preheat.h"
#include "supernode/seed.h"
#include "supernode/swarm.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define HEADERS_MAX (16u * 1024u)
#define CONN_TIMEOUT_S 120
#define WAITERS_MAX 4096u          /* parked Registers per task */
#define TASK_IDLE_MS (5u * 60u * 1000u)
#define WAIT_MS_SEEDING 100
#define WAIT_MS_BUSY 200
#define SPOOL_LIMIT_DEFAULT (64ull << 30) /* 64 GiB: chunked origins without --cache-limit */
#define PARK_MS 1000u              /* longest a PullPiece is held waiting for work */
#define PARKED_MAX 65536u          /* parked PullPieces, all tasks */
#define METRICS_CAP (4u * 1024u * 1024u)
#define PIECES_LISTING_MAX (8u * 1024u * 1024u) /* chars of bitmaps in a task listing */

typedef struct waiter {
    struct evhttp_request *req;
    df_sn_register_req_t r;
    uint64_t gen;                /* the task's headers generation with this Register's headers */
    struct waiter *next;
} waiter_t;

struct df_supernode {
    struct event_base *base;
    df_supernode_config_t cfg;
    char *listen_host, *advertise_ip, *data_dir;
    struct evhttp *http;
    uint16_t port;
    df_http_t *client;
    df_store_t *store;
    df_sn_swarm_t *swarm;
    df_sn_seeder_t *seeder;
    df_upload_server_t *upload;
    df_sn_preheats_t *preheats;
    df_metrics_t *metrics;
    struct event *sweep;
    uint32_t sweeps;
    bool closing;
    struct event *wake;          /* re-runs parked pulls of tasks marked dirty */
    uint32_t nparked;
    uint64_t parked_gone;        /* parked pulls whose client went away */

    df_metric_t *m_parked, *m_parked_gone;
    df_metric_t *m_tasks, *m_peers, *m_sched_seed, *m_sched_peer, *m_seed_bytes, *m_origin_bytes;
    df_metric_t *m_sched_seconds, *m_seed_err[DF_SN_SEED_ERR_COUNT];
    df_metric_t *m_reval_fail[DF_SN_SEED_ERR_COUNT]; /* origin kinds only, others NULL */
    df_metric_t *m_up_ok, *m_up_err;
    df_metric_t *m_preheats[DF_SN_PREHEAT_NSTATES];
};

/* ------------------------------------------------------------ replies */

static const char *reason(int code)
{
    switch (code) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default: return "";
    }
}

static void count_request(df_supernode_t *sn, const char *route, int code)
{
    char code_s[16];
    df_metric_label_t labels[2] = {{"route", route}, {"code", code_s}};
    df_metric_t *m = NULL;

    snprintf(code_s, sizeof(code_s), "%d", code);
    if (df_metrics_counter(sn->metrics, "dfly_supernode_http_requests_total",
                           "HTTP requests answered, by route and status code", labels, 2, &m) == 0)
        df_metric_inc(m);
}

static void count_error(df_supernode_t *sn, const char *kind)
{
    df_metric_label_t label = {"kind", kind};
    df_metric_t *m = NULL;

    if (df_metrics_counter(sn->metrics, "dfly_supernode_errors_total",
                           "Errors by kind (origin, request, report)", &label, 1, &m) == 0)
        df_metric_inc(m);
}

/* Sends text with a content type; counts the request first (req may be
 * freed inside evhttp_send_reply when its connection is gone). */
static void send_text(df_supernode_t *sn, struct evhttp_request *req, const char *route, int code,
                      const char *ctype, const char *text, size_t len)
{
    struct evbuffer *b = evbuffer_new();

    count_request(sn, route, code);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    if (b && len)
        evbuffer_add(b, text, len);
    evhttp_send_reply(req, code, reason(code), b);
    if (b)
        evbuffer_free(b);
}

/* Sends doc (reference stolen) as JSON. */
static void send_json(df_supernode_t *sn, struct evhttp_request *req, const char *route, int code,
                      json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;

    json_decref(doc);
    if (!text) {
        static const char oom[] = "{\"error\":\"internal\",\"message\":\"out of memory\"}";
        send_text(sn, req, route, 500, "application/json", oom, sizeof(oom) - 1);
        return;
    }
    send_text(sn, req, route, code, "application/json", text, strlen(text));
    free(text);
}

static void send_error(df_supernode_t *sn, struct evhttp_request *req, const char *route, int code,
                       const char *kind, const char *message)
{
    json_t *doc = json_pack("{s:s}", "error", kind);

    if (doc && message)
        json_object_set_new(doc, "message", json_string(message));
    count_error(sn, kind);
    send_json(sn, req, route, code, doc);
}

static void send_empty(df_supernode_t *sn, struct evhttp_request *req, const char *route)
{
    send_text(sn, req, route, 200, "application/json", "{}", 2);
}

/* The request body, NUL-terminated (evhttp capped it at DF_SN_BODY_MAX). */
static const char *body_of(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    static const char nul = '\0';
    unsigned char *p;

    *len = evbuffer_get_length(in);
    if (*len == 0)
        return &nul;
    if (evbuffer_add(in, &nul, 1) < 0)
        return NULL;
    p = evbuffer_pullup(in, -1);
    return (const char *)p;
}

/* --------------------------------------------------------- register */

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Answers one Register for a ready task (see df_sn_seed_ready). */
static void answer_register(df_supernode_t *sn, df_sn_task_t *task, struct evhttp_request *req,
                            const df_sn_register_req_t *r, uint64_t gen)
{
    static const char *route = "/api/v1/register";
    df_sn_member_t *m;
    json_t *doc;
    const char *refusal = NULL;
    long refused = df_sn_seed_refusal(task, gen, &refusal); /* this Register's headers refused */
    int rc;

    if (task->state == DF_SN_TASK_FAILED || refused) {
        bool failed = task->state == DF_SN_TASK_FAILED;
        const char *kind = failed && task->error_kind ? task->error_kind : "origin";
        long status = failed ? task->origin_status : refused;
        doc = json_pack("{s:s, s:s}", "error", kind, "message", failed ? task->error : refusal);
        if (doc && status > 0)
            json_object_set_new(doc, "origin_status", json_integer(status));
        count_error(sn, failed ? "register_failed_task" : "register_refused");
        send_json(sn, req, route, 502, doc);
        return;
    }
    rc = df_sn_join(sn->swarm, task, r->peer_ip, r->peer_port, r->peer_hostname,
                    r->peer_port != 0 && r->pattern == DF_PATTERN_P2P, df_now_ms(), &m);
    if (rc < 0) {
        send_error(sn, req, route, rc == -ENOSPC ? 503 : 500, rc == -ENOSPC ? "busy" : "internal",
                   rc == -ENOSPC ? "too many peers" : df_strerror(rc));
        return;
    }
    doc = json_pack("{s:s, s:s, s:I, s:I, s:I}", "task_id", task->id, "peer_id", m->peer->id,
                    "length", (json_int_t)task->length, "piece_size", (json_int_t)task->piece_size,
                    "piece_count", (json_int_t)task->piece_count);
    if (doc && task->state == DF_SN_TASK_COMPLETE && task->file_digest[0])
        json_object_set_new(doc, "digest", json_string(task->file_digest));
    DF_LOG_D("register: %s joins %.12s", m->peer->id, task->id);
    send_json(sn, req, route, 200, doc);
}

static void flush_waiters(df_supernode_t *sn, df_sn_task_t *task, bool unavailable)
{
    waiter_t *w = task->waiters, *next;

    task->waiters = NULL;
    for (; w; w = next) {
        next = w->next;
        if (unavailable)
            send_error(sn, w->req, "/api/v1/register", 503, "unavailable", "supernode shutting down");
        else
            answer_register(sn, task, w->req, &w->r, w->gen);
        df_sn_register_req_clear(&w->r);
        free(w);
    }
}

static uint32_t count_waiters(const df_sn_task_t *task)
{
    uint32_t n = 0;
    for (const waiter_t *w = task->waiters; w; w = w->next)
        n++;
    return n;
}

static void mark_task_changed(df_supernode_t *sn, df_sn_task_t *task);
static void flush_parked(df_supernode_t *sn, df_sn_task_t *task);

static void on_seed_ready(df_sn_task_t *task, void *arg)
{
    df_supernode_t *sn = arg;

    if (df_sn_seed_ready(task))
        flush_waiters(sn, task, false);
    mark_task_changed(sn, task); /* completed or failed: parked pulls learn it */
    df_sn_preheats_kick(sn->preheats);
}

static void on_seed_piece(df_sn_task_t *task, void *arg)
{
    mark_task_changed(arg, task);
}

static void on_task_free(df_sn_task_t *task, void *arg)
{
    df_supernode_t *sn = arg;

    df_sn_seed_stop(sn->seeder, task);
    flush_waiters(sn, task, true);
    flush_parked(sn, task);
}

/* Finds the task of (url, filter, digest, identifier) -- its id is the
 * task id rule of docs/API.md -- or creates it with these origin headers
 * and TLS settings (*root_ca, PEM or NULL, is moved into a new task), then
 * makes sure its seed runs (df_sn_seed_start).  Register and preheat both
 * come through here.  0, or -EEXIST (the id belongs to a different task),
 * -ENOSPC, -ENOMEM with a message in err. */
static int open_task(df_supernode_t *sn, const char *url, char *const *filter, size_t nfilter, const char *digest,
                     const char *identifier, char *const *headers, size_t nheaders, df_pattern_t pattern,
                     bool insecure, char **root_ca, size_t root_ca_len, uint64_t now, df_sn_task_t **out, char *err,
                     size_t errcap)
{
    char *task_url = df_sn_task_url(url, filter, nfilter);
    df_sn_task_t *task;
    char id[65];
    int rc = 0;

    if (!task_url || df_sn_task_id(task_url, digest, identifier, id) < 0) {
        rc = -ENOMEM;
        snprintf(err, errcap, "out of memory");
        goto out;
    }
    task = df_sn_task_find(sn->swarm, id);
    if (task) {
        if (strcmp(task->task_url, task_url) != 0 || !same_str(task->digest, digest) ||
            !same_str(task->identifier, identifier)) {
            rc = -EEXIST;
            snprintf(err, errcap, "the task id is already used by a different url, digest or identifier");
            goto out;
        }
        /* The next origin request (a revalidation, a retry) goes out with
         * this registrant's headers: a first registrant's credentials may
         * have expired, and this one's were just vouched for by its client
         * (the mirror's access check).  Out of memory keeps the old ones. */
        if (df_sn_task_set_headers(task, headers, nheaders) < 0)
            DF_LOG_W("task %.12s: out of memory; the origin headers stay the previous registrant's", id);
    } else {
        rc = df_sn_task_create(sn->swarm, id, url, task_url, digest, identifier, headers, nheaders, pattern, now,
                               &task);
        if (rc < 0) {
            snprintf(err, errcap, "%s", rc == -ENOSPC ? "too many tasks" : df_strerror(rc));
            goto out;
        }
        /* Unlike the headers, the TLS settings stay the first registrant's
         * (the digest a registrant may give still checks the bytes). */
        task->insecure = insecure;
        if (root_ca) {
            task->root_ca = *root_ca;
            task->root_ca_len = root_ca_len;
            *root_ca = NULL;
        }
        DF_LOG_I("task %.12s: new, url %s", id, task_url);
    }
    task->last_access_ms = now;
    df_sn_seed_start(sn->seeder, task, now); /* a failure is recorded on the task */
    *out = task;
out:
    free(task_url);
    return rc;
}

static void h_register(df_supernode_t *sn, struct evhttp_request *req)
{
    static const char *route = "/api/v1/register";
    df_sn_register_req_t r;
    df_sn_task_t *task;
    char err[256];
    const char *body;
    size_t len;
    uint64_t now = df_now_ms();
    int rc;

    body = body_of(req, &len);
    if (!body) {
        send_error(sn, req, route, 500, "internal", "out of memory");
        return;
    }
    rc = df_sn_decode_register(body, len, &r, err, sizeof(err));
    if (rc < 0) {
        send_error(sn, req, route, rc == DF_EPROTO ? 400 : 500, "bad_request", err);
        return;
    }
    rc = open_task(sn, r.url, r.filter, r.nfilter, r.digest, r.identifier, r.headers, r.nheaders, r.pattern,
                   r.insecure, &r.root_ca, r.root_ca_len, now, &task, err, sizeof(err));
    if (rc < 0) {
        send_error(sn, req, route, rc == -EEXIST ? 409 : rc == -ENOSPC ? 503 : 500,
                   rc == -EEXIST ? "conflict" : rc == -ENOSPC ? "busy" : "internal", err);
        goto out;
    }
    task->last_access_ms = now;
    if (df_sn_seed_ready(task)) {
        answer_register(sn, task, req, &r, task->headers_gen);
    } else {
        waiter_t *w;
        if (count_waiters(task) >= WAITERS_MAX || !(w = calloc(1, sizeof(*w)))) {
            send_error(sn, req, route, 503, "busy", "too many registrations waiting for the origin");
            goto out;
        }
        w->req = req;
        w->gen = task->headers_gen; /* open_task just set this Register's headers */
        w->r = r; /* moved */
        memset(&r, 0, sizeof(r));
        w->next = task->waiters;
        task->waiters = w;
    }
out:
    df_sn_register_req_clear(&r);
}

/* ------------------------------------------------------------- pull */

/* Finds the task and the requesting member, answering 404 when either is
 * unknown.  Touches the peer (any request counts as contact). */
static bool lookup(df_supernode_t *sn, struct evhttp_request *req, const char *route,
                   const char *task_id, const char *peer_id, df_sn_task_t **task, df_sn_member_t **m)
{
    df_sn_peer_t *peer = df_sn_peer_find(sn->swarm, peer_id);
    uint64_t now = df_now_ms();

    if (peer)
        df_sn_peer_touch(peer, now);
    *task = df_sn_task_find(sn->swarm, task_id);
    if (!*task) {
        send_error(sn, req, route, 404, "unknown_task", "the supernode does not know this task");
        return false;
    }
    *m = peer ? df_sn_task_member(*task, peer) : NULL;
    if (!*m) {
        send_error(sn, req, route, 404, "unknown_peer", "the peer is not registered for this task");
        return false;
    }
    (*task)->last_access_ms = now;
    return true;
}

static json_t *source_json(df_supernode_t *sn, const df_sn_peer_t *src)
{
    if (!src)
        return json_pack("{s:s, s:s, s:i}", "id", DF_SN_SEED_ID, "ip", sn->advertise_ip, "port",
                         (int)sn->port);
    return json_pack("{s:s, s:s, s:i}", "id", src->id, "ip", src->ip, "port", (int)src->port);
}

/* A PullPiece waiting for work.  Owned by its task's `pulls` list; the
 * request is answered exactly once: by a wake, its timer, the client going
 * away (then it is dropped, never answered), or the task going away. */
typedef struct parked {
    df_supernode_t *sn;
    df_sn_task_t *task;
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    struct event *timer;
    struct event *watch;         /* the client's socket readable: gone, or more requests */
    char peer_id[DF_SN_PEER_ID_MAX];
    uint32_t want;
    struct parked *next, *prev;
} parked_t;

static void parked_unlink_free(parked_t *p)
{
    df_sn_task_t *t = p->task;
    if (p->prev)
        p->prev->next = p->next;
    else if (t->pulls == p)
        t->pulls = p->next;
    if (p->next)
        p->next->prev = p->prev;
    if (p->evcon)
        evhttp_connection_set_closecb(p->evcon, NULL, NULL);
    if (p->timer)
        event_free(p->timer);
    if (p->watch)
        event_free(p->watch);
    p->sn->nparked--;
    free(p);
}

/* Runs the scheduler for (task, member) and answers req unless the answer
 * would be "wait" and may_wait: then returns false and sends nothing. */
static bool answer_pull(df_supernode_t *sn, struct evhttp_request *req, df_sn_task_t *task, df_sn_member_t *m,
                        uint32_t want, bool may_wait)
{
    static const char *route = "/api/v1/pull";
    df_sn_assign_t assign[DF_SN_INFLIGHT_MAX];
    df_sn_pull_state_t state;
    json_t *doc = NULL, *pieces;
    size_t n = 0;
    double t0 = df_now_s();

    df_sn_pull(sn->swarm, task, m, want, df_now_ms(), assign, &n, &state);
    df_metric_observe(sn->m_sched_seconds, df_now_s() - t0);
    if (state == DF_SN_PULL_WAIT && may_wait)
        return false;
    switch (state) {
    case DF_SN_PULL_ASSIGN:
        pieces = json_array();
        for (size_t i = 0; pieces && i < n; i++) {
            char hex[65];
            df_hex(assign[i].sha256, 32, hex);
            json_array_append_new(pieces,
                                  json_pack("{s:I, s:I, s:I, s:s, s:o}", "piece", (json_int_t)assign[i].piece,
                                            "offset", (json_int_t)assign[i].offset, "length",
                                            (json_int_t)assign[i].length, "sha256", hex, "src",
                                            source_json(sn, assign[i].src)));
        }
        doc = json_pack("{s:s, s:o}", "state", "assign", "pieces", pieces);
        break;
    case DF_SN_PULL_WAIT:
        /* After a long-poll the client may ask again at once. */
        doc = json_pack("{s:s, s:i}", "state", "wait", "wait_ms",
                        may_wait ? (task->state == DF_SN_TASK_SEEDING ? WAIT_MS_SEEDING : WAIT_MS_BUSY) : 10);
        break;
    case DF_SN_PULL_DONE:
        doc = json_pack("{s:s, s:s}", "state", "done", "digest", task->file_digest);
        break;
    case DF_SN_PULL_ERROR:
        doc = json_pack("{s:s, s:s}", "state", "error", "message", task->error);
        break;
    }
    send_json(sn, req, route, 200, doc);
    return true;
}

/* Answers a parked pull now (final: "wait" allowed) or, when `retry`, only
 * if there is something better than "wait".  Frees p when answered. */
static bool settle_parked(parked_t *p, bool retry)
{
    df_supernode_t *sn = p->sn;
    df_sn_peer_t *peer = df_sn_peer_find(sn->swarm, p->peer_id);
    df_sn_member_t *m = peer ? df_sn_task_member(p->task, peer) : NULL;

    if (!m) {
        send_error(sn, p->req, "/api/v1/pull", 404, "unknown_peer", "the peer is not registered for this task");
    } else if (!answer_pull(sn, p->req, p->task, m, p->want, retry)) {
        return false;
    }
    parked_unlink_free(p);
    return true;
}

static void parked_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    settle_parked(arg, false);
}

/* The connection of a parked pull is going away (parked_watch_cb saw its
 * client leave, or libevent closes it): the pull is forgotten without an
 * answer.  If libevent detached the request from the dying connection (an
 * EOF or timeout it noticed itself), the request is left to us (its
 * connection is then NULL) and freed here; otherwise it is still queued on
 * the connection and libevent frees it right after this callback. */
static void parked_close_cb(struct evhttp_connection *evcon, void *arg)
{
    parked_t *p = arg;
    struct evhttp_request *req = p->req;

    (void)evcon;
    p->evcon = NULL;
    p->sn->parked_gone++;
    DF_LOG_D("pull of %s: the client went away while parked", p->peer_id);
    parked_unlink_free(p);
    if (!evhttp_request_get_connection(req))
        evhttp_request_free(req);
}

/* libevent does not read a connection whose request awaits its answer, so
 * it would notice a client that left only when the answer is written, up to
 * PARK_MS later, while the pull still counted for its task and took one of
 * the PARKED_MAX places.  This watch reads the socket itself: end of file
 * (or an error) means the client is gone and the connection is freed now
 * (parked_close_cb forgets the pull); bytes mean the client sent its next
 * request already, which evhttp reads after the answer, so watching stops. */
static void parked_watch_cb(evutil_socket_t fd, short what, void *arg)
{
    parked_t *p = arg;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

    (void)what;
    if (n > 0)
        return; /* pipelined: not gone */
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        event_add(p->watch, NULL);
        return;
    }
    if (p->evcon) {
        /* Forget the pull first (which also takes our close callback off),
         * then free the connection and, with it, the request. */
        struct evhttp_connection *evcon = p->evcon;
        p->sn->parked_gone++;
        DF_LOG_D("pull of %s: the client went away while parked", p->peer_id);
        parked_unlink_free(p);
        evhttp_connection_free(evcon);
    }
}

/* Something changed in task: re-run its parked pulls soon (coalesced). */
static void mark_task_changed(df_supernode_t *sn, df_sn_task_t *task)
{
    if (!task->pulls || sn->closing)
        return;
    task->pulls_dirty = true;
    event_active(sn->wake, EV_TIMEOUT, 0);
}

typedef struct {
    parked_t *p;
    uint32_t progress;           /* pieces held or in flight */
} wake_order_t;

static int cmp_wake(const void *a, const void *b)
{
    const wake_order_t *x = a, *y = b;
    return x->progress < y->progress ? -1 : x->progress > y->progress;
}

/* Re-runs the parked pulls of task, the requester furthest behind (fewest
 * pieces held or in flight) first, ties longest parked first: a slot that
 * just freed goes to the download that needs it most, which evens out the
 * finishing times (the last client, not only the mean; see fair_share in
 * swarm.c).  Pulls that would certainly be "wait" are not scheduled. */
static void wake_task(df_supernode_t *sn, df_sn_task_t *t)
{
    wake_order_t *order;
    size_t n = 0, cap = 0, skipped = 0, settled = 0;

    t->pulls_dirty = false;
    for (parked_t *p = t->pulls; p; p = p->next)
        cap++;
    if (cap == 0)
        return;
    order = malloc(cap * sizeof(*order));
    if (!order) {
        for (parked_t *p = t->pulls, *next; p; p = next) {
            next = p->next;
            settle_parked(p, true);
        }
        return;
    }
    /* The list is newest first: walking it backwards puts the oldest first,
     * and the stable insertion below keeps that order among equals. */
    for (parked_t *p = t->pulls; p; p = p->next) {
        df_sn_peer_t *peer = df_sn_peer_find(sn->swarm, p->peer_id);
        df_sn_member_t *m = peer ? df_sn_task_member(t, peer) : NULL;
        order[n].p = p;
        order[n].progress = m && m->have ? df_bitmap_count(m->have, t->piece_count) + m->ninflight : 0;
        n++;
    }
    for (size_t i = 0; i < n / 2; i++) {
        wake_order_t tmp = order[i];
        order[i] = order[n - 1 - i];
        order[n - 1 - i] = tmp;
    }
    /* insertion sort: stable, and n is the number of parked pulls of one task */
    for (size_t i = 1; i < n; i++) {
        wake_order_t v = order[i];
        size_t j = i;
        while (j > 0 && cmp_wake(&order[j - 1], &v) > 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = v;
    }
    for (size_t i = 0; i < n; i++) {
        parked_t *p = order[i].p;
        df_sn_peer_t *peer = df_sn_peer_find(sn->swarm, p->peer_id);
        df_sn_member_t *m = peer ? df_sn_task_member(t, peer) : NULL;
        if (m && !df_sn_pull_may_assign(sn->swarm, t, m)) {
            skipped++;
            continue;
        }
        settled += settle_parked(p, true);
    }
    DF_LOG_D("task %.12s: wake: %zu parked, %zu could not be given work, %zu answered", t->id, n, skipped,
             settled);
    free(order);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    df_supernode_t *sn = arg;

    for (df_sn_task_t *t = df_sn_swarm_tasks(sn->swarm); t; t = t->next)
        if (t->pulls_dirty)
            wake_task(sn, t);
}

/* Answers every parked pull of task at once (the task is going away). */
static void flush_parked(df_supernode_t *sn, df_sn_task_t *task)
{
    while (task->pulls) {
        parked_t *p = task->pulls;
        send_error(sn, p->req, "/api/v1/pull", 404, "unknown_task", "the supernode dropped this task");
        parked_unlink_free(p);
    }
}

static bool park_pull(df_supernode_t *sn, struct evhttp_request *req, df_sn_task_t *task, const char *peer_id,
                      uint32_t want)
{
    struct timeval tv = {.tv_sec = PARK_MS / 1000, .tv_usec = (PARK_MS % 1000) * 1000};
    parked_t *p;

    if (sn->nparked >= PARKED_MAX || sn->closing)
        return false;
    p = calloc(1, sizeof(*p));
    if (!p)
        return false;
    p->timer = evtimer_new(sn->base, parked_timer_cb, p);
    if (!p->timer || df_strlcpy(p->peer_id, peer_id, sizeof(p->peer_id)) < 0) {
        if (p->timer)
            event_free(p->timer);
        free(p);
        return false;
    }
    p->sn = sn;
    p->task = task;
    p->req = req;
    p->want = want;
    p->evcon = evhttp_request_get_connection(req);
    if (p->evcon) {
        struct bufferevent *bev = evhttp_connection_get_bufferevent(p->evcon);
        evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
        evhttp_connection_set_closecb(p->evcon, parked_close_cb, p);
        if (fd >= 0 && (p->watch = event_new(sn->base, fd, EV_READ, parked_watch_cb, p)))
            event_add(p->watch, NULL); /* without it, a departure is noticed at the answer */
    }
    p->next = task->pulls;
    if (task->pulls)
        ((parked_t *)task->pulls)->prev = p;
    task->pulls = p;
    sn->nparked++;
    evtimer_add(p->timer, &tv);
    return true;
}

static void h_pull(df_supernode_t *sn, struct evhttp_request *req)
{
    static const char *route = "/api/v1/pull";
    df_sn_pull_req_t r;
    df_sn_task_t *task;
    df_sn_member_t *m;
    char err[256];
    const char *body;
    size_t len;
    uint32_t want;
    int rc;

    body = body_of(req, &len);
    if (!body) {
        send_error(sn, req, route, 500, "internal", "out of memory");
        return;
    }
    rc = df_sn_decode_pull(body, len, &r, err, sizeof(err));
    if (rc < 0) {
        send_error(sn, req, route, rc == DF_EPROTO ? 400 : 500, "bad_request", err);
        return;
    }
    if (!lookup(sn, req, route, r.task_id, r.peer_id, &task, &m))
        goto out;

    want = r.has_want ? r.want : 0;
    df_sn_apply_results(task, m, r.results, r.nresults, true, r.running);
    /* Pieces to offer, or slots freed: the parked pulls get them before
     * this requester, furthest behind first, so that slots do not stick to
     * whoever just freed them. */
    if (r.nresults > 0 && task->pulls)
        wake_task(sn, task);
    /* Nothing to hand out now: hold the request until something changes. */
    if (!answer_pull(sn, req, task, m, want, true) && !park_pull(sn, req, task, r.peer_id, want))
        answer_pull(sn, req, task, m, want, false);
out:
    df_sn_pull_req_clear(&r);
}

static void h_report(df_supernode_t *sn, struct evhttp_request *req)
{
    static const char *route = "/api/v1/report";
    df_sn_pull_req_t r;
    df_sn_task_t *task;
    df_sn_member_t *m;
    char err[256];
    const char *body;
    size_t len;
    int rc;

    body = body_of(req, &len);
    if (!body) {
        send_error(sn, req, route, 500, "internal", "out of memory");
        return;
    }
    rc = df_sn_decode_pull(body, len, &r, err, sizeof(err));
    if (rc < 0) {
        send_error(sn, req, route, rc == DF_EPROTO ? 400 : 500, "bad_request", err);
        return;
    }
    if (lookup(sn, req, route, r.task_id, r.peer_id, &task, &m)) {
        df_sn_apply_results(task, m, r.results, r.nresults, false, 0);
        mark_task_changed(sn, task);
        send_empty(sn, req, route);
    }
    df_sn_pull_req_clear(&r);
}

static void h_service_down(df_supernode_t *sn, struct evhttp_request *req)
{
    static const char *route = "/api/v1/service_down";
    df_sn_down_req_t r;
    df_sn_peer_t *peer;
    char err[256];
    const char *body;
    size_t len;
    int rc;

    body = body_of(req, &len);
    if (!body) {
        send_error(sn, req, route, 500, "internal", "out of memory");
        return;
    }
    rc = df_sn_decode_service_down(body, len, &r, err, sizeof(err));
    if (rc < 0) {
        send_error(sn, req, route, rc == DF_EPROTO ? 400 : 500, "bad_request", err);
        return;
    }
    /* Idempotent: an unknown peer or task has nothing left to stop. */
    peer = df_sn_peer_find(sn->swarm, r.peer_id);
    if (peer && r.task_id) {
        df_sn_task_t *task = df_sn_task_find(sn->swarm, r.task_id);
        df_sn_peer_touch(peer, df_now_ms());
        if (task)
            df_sn_service_down(sn->swarm, peer, task);
    } else if (peer) {
        DF_LOG_D("service down: %s leaves every task", peer->id);
        df_sn_peer_remove(sn->swarm, peer);
    }
    send_empty(sn, req, route);
    df_sn_down_req_clear(&r);
}

static void h_error(df_supernode_t *sn, struct evhttp_request *req)
{
    static const char *route = "/api/v1/error";
    static const char *kinds[] = {"report_digest", "report_missing", "report_io", "slow"};
    df_sn_error_req_t r;
    df_sn_task_t *task;
    df_sn_member_t *m;
    char err[256];
    const char *body;
    size_t len;
    int rc;

    body = body_of(req, &len);
    if (!body) {
        send_error(sn, req, route, 500, "internal", "out of memory");
        return;
    }
    rc = df_sn_decode_error(body, len, &r, err, sizeof(err));
    if (rc < 0) {
        send_error(sn, req, route, rc == DF_EPROTO ? 400 : 500, "bad_request", err);
        return;
    }
    if (lookup(sn, req, route, r.task_id, r.peer_id, &task, &m)) {
        if (r.kind == DF_SN_ERR_SLOW) {
            /* not an error of anybody's: a requester's endgame gave up
             * waiting on a source that may just be busy */
            df_metric_t *c = NULL;
            if (df_metrics_counter(sn->metrics, "dfly_supernode_slow_reports_total",
                                   "Sources a requester abandoned as slow (ReportError kind slow)", NULL, 0,
                                   &c) == 0)
                df_metric_inc(c);
        } else {
            count_error(sn, kinds[r.kind]);
        }
        DF_LOG_I("task %.12s: %s reports %s for piece %u from %s", task->id, m->peer->id,
                 r.kind == DF_SN_ERR_SLOW ? kinds[r.kind] : kinds[r.kind] + 7, r.piece, r.src);
        if (df_sn_report_error(task, m, r.src, r.piece, r.kind, df_now_ms()) == 1 && r.kind != DF_SN_ERR_IO)
            df_sn_seed_check_piece(sn->seeder, task, r.piece, df_now_ms());
        send_empty(sn, req, route);
    }
    df_sn_error_req_clear(&r);
}

static void h_heartbeat(df_supernode_t *sn, struct evhttp_request *req)
{
    static const char *route = "/api/v1/heartbeat";
    df_sn_heartbeat_req_t r;
    df_sn_peer_t *peer;
    char err[256];
    const char *body;
    size_t len;
    int rc;

    body = body_of(req, &len);
    if (!body) {
        send_error(sn, req, route, 500, "internal", "out of memory");
        return;
    }
    rc = df_sn_decode_heartbeat(body, len, &r, err, sizeof(err));
    if (rc < 0) {
        send_error(sn, req, route, rc == DF_EPROTO ? 400 : 500, "bad_request", err);
        return;
    }
    peer = df_sn_peer_find(sn->swarm, r.peer_id);
    if (!peer) {
        send_error(sn, req, route, 404, "unknown_peer", "register again");
    } else {
        df_sn_peer_touch(peer, df_now_ms());
        send_empty(sn, req, route);
    }
    df_sn_heartbeat_req_clear(&r);
}

/* ---------------------------------------------------------- preheat */

/* Preheat's way into the seed: the Register path (open_task), for a task
 * nobody registered yet (the preheat's headers become the seed's). */
static int preheat_seed(const df_download_req_t *r, char *const *headers, size_t nheaders, bool insecure,
                        const char *root_ca, size_t root_ca_len, char id[65], char *err, size_t errcap, void *arg)
{
    df_supernode_t *sn = arg;
    char *ca = NULL;
    size_t nfilter = 0;
    df_sn_task_t *task;
    int rc;

    while (r->filter && r->filter[nfilter])
        nfilter++;
    if (root_ca && !(ca = malloc(root_ca_len))) {
        snprintf(err, errcap, "out of memory");
        return -ENOMEM;
    }
    if (ca)
        memcpy(ca, root_ca, root_ca_len);
    rc = open_task(sn, r->url, (char *const *)r->filter, nfilter, r->digest, r->identifier, headers, nheaders,
                   DF_PATTERN_P2P, insecure, &ca, root_ca_len, df_now_ms(), &task, err, errcap);
    free(ca); /* NULL when a new task took it */
    if (rc == 0)
        memcpy(id, task->id, 65);
    return rc;
}

/* POST /preheats (create) and GET /preheats (list). */
static void h_preheats(df_supernode_t *sn, struct evhttp_request *req)
{
    static const char *route = "/preheats";
    df_sn_preheat_req_t r;
    char err[256], id[65];
    const char *body;
    size_t len;
    int rc;

    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        send_json(sn, req, route, 200, df_sn_preheats_json(sn->preheats));
        return;
    }
    body = body_of(req, &len);
    rc = body ? df_sn_decode_preheat(body, len, &r, err, sizeof(err)) : -ENOMEM;
    if (rc < 0) {
        send_error(sn, req, route, rc == DF_EPROTO ? 400 : 500, "bad_request", rc == DF_EPROTO ? err : df_strerror(rc));
        return;
    }
    rc = df_sn_preheat_create(sn->preheats, &r, id);
    df_sn_preheat_req_clear(&r);
    if (rc < 0)
        send_error(sn, req, route, rc == -ENOSPC ? 503 : 500, rc == -ENOSPC ? "busy" : "internal",
                   rc == -ENOSPC ? "too many preheats running" : df_strerror(rc));
    else
        send_json(sn, req, route, rc == 0 ? 201 : 200, json_pack("{s:s}", "ID", id));
}

/* GET / DELETE /preheats/<id> */
static void h_preheat(df_supernode_t *sn, struct evhttp_request *req)
{
    static const char *route = "/preheats/<id>";
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    const char *id = path + (strncmp(path, "/api/v1/", 8) == 0 ? 7 : 0) + strlen("/preheats/");
    json_t *doc = df_sn_is_task_id(id) ? df_sn_preheat_json(sn->preheats, id) : NULL;

    if (!doc) {
        send_error(sn, req, route, 404, "not_found", "no such preheat");
    } else if (evhttp_request_get_command(req) == EVHTTP_REQ_DELETE) {
        json_decref(doc);
        df_sn_preheat_delete(sn->preheats, id);
        send_empty(sn, req, route);
    } else {
        send_json(sn, req, route, 200, doc);
    }
}

/* ---------------------------------------------------------- listings */

static json_t *task_json(const df_sn_task_t *t)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:i}", "id", t->id, "url", t->task_url,
                          "state", df_sn_task_state_name(t->state), "piece_size",
                          (json_int_t)t->piece_size, "piece_count", (json_int_t)t->piece_count,
                          "seed_pieces", (json_int_t)t->seed_pieces, "peers", (int)t->nmembers);
    if (!o)
        return NULL;
    /* Unknown until the origin said (or, without Content-Length, until the
     * whole file arrived). */
    json_object_set_new(o, "length", t->shaped ? json_integer((json_int_t)t->length) : json_null());
    if (t->state == DF_SN_TASK_COMPLETE && t->file_digest[0])
        json_object_set_new(o, "digest", json_string(t->file_digest));
    return o;
}

static json_t *bits_json(const uint8_t *bm, uint32_t n)
{
    char *s = malloc((size_t)n + 1);
    json_t *j;

    if (!s)
        return NULL;
    for (uint32_t i = 0; i < n; i++)
        s[i] = bm && df_bitmap_test(bm, i) ? '1' : '0';
    s[n] = '\0';
    j = json_stringn_nocheck(s, n);
    free(s);
    return j;
}

static void h_tasks(df_supernode_t *sn, struct evhttp_request *req)
{
    json_t *arr = json_array();

    for (df_sn_task_t *t = df_sn_swarm_tasks(sn->swarm); arr && t; t = t->next)
        json_array_append_new(arr, task_json(t));
    send_json(sn, req, "/api/v1/tasks", 200, json_pack("{s:o}", "tasks", arr));
}

static void h_task(df_supernode_t *sn, struct evhttp_request *req, const char *id)
{
    static const char *route = "/api/v1/tasks/<id>";
    df_sn_task_t *t = df_sn_is_task_id(id) ? df_sn_task_find(sn->swarm, id) : NULL;
    json_t *o, *pieces, *peers;

    if (!t) {
        send_error(sn, req, route, 404, "unknown_task", "the supernode does not know this task");
        return;
    }
    o = task_json(t);
    if (o && t->state == DF_SN_TASK_FAILED) {
        json_object_set_new(o, "error", json_string(t->error));
        if (t->origin_status > 0)
            json_object_set_new(o, "origin_status", json_integer(t->origin_status));
    }
    if (o && t->shaped) {
        uint64_t total = (uint64_t)t->piece_count * (t->nmembers + 1);
        pieces = json_pack("{s:o}", "seed", bits_json(t->seed_have, t->piece_count));
        peers = json_object();
        /* Bitmaps of a huge swarm would make a huge answer: cap it. */
        if (total <= PIECES_LISTING_MAX) {
            for (uint32_t i = 0; peers && i < t->nmembers; i++)
                json_object_set_new(peers, t->members[i]->peer->id,
                                    bits_json(t->members[i]->have, t->piece_count));
        } else {
            json_object_set_new(o, "pieces_truncated", json_true());
        }
        if (pieces)
            json_object_set_new(pieces, "peers", peers ? peers : json_object());
        json_object_set_new(o, "pieces", pieces ? pieces : json_object());
    }
    send_json(sn, req, route, 200, o);
}

static void h_peers(df_supernode_t *sn, struct evhttp_request *req)
{
    json_t *arr = json_array();
    uint64_t now = df_now_ms();

    for (df_sn_peer_t *p = df_sn_swarm_peers(sn->swarm); arr && p; p = p->next)
        json_array_append_new(arr, json_pack("{s:s, s:s, s:i, s:s, s:i, s:I}", "id", p->id, "ip", p->ip,
                                             "port", (int)p->port, "hostname", p->hostname, "tasks",
                                             (int)p->ntasks, "last_seen_ms",
                                             (json_int_t)(now - p->last_seen_ms)));
    send_json(sn, req, "/api/v1/peers", 200, json_pack("{s:o}", "peers", arr));
}

static void h_metrics(df_supernode_t *sn, struct evhttp_request *req)
{
    df_buf_t b;

    df_buf_init(&b, METRICS_CAP);
    count_request(sn, "/metrics", 200); /* before rendering: this scrape counts itself */
    df_metrics_render(sn->metrics, &b);
    {
        struct evbuffer *out = evbuffer_new();
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          DF_METRICS_CONTENT_TYPE);
        if (out && b.len)
            evbuffer_add(out, b.data, b.len);
        evhttp_send_reply(req, 200, "OK", out);
        if (out)
            evbuffer_free(out);
    }
    df_buf_free(&b);
}

static void collect(df_metrics_t *m, void *arg)
{
    df_supernode_t *sn = arg;
    df_upload_stats_t up;
    uint64_t from_seed, from_peers;

    (void)m;
    df_metric_set(sn->m_tasks, df_sn_swarm_ntasks(sn->swarm));
    df_metric_set(sn->m_parked, sn->nparked);
    df_metric_set(sn->m_parked_gone, (double)sn->parked_gone);
    df_metric_set(sn->m_peers, df_sn_swarm_npeers(sn->swarm));
    df_sn_swarm_counters(sn->swarm, &from_seed, &from_peers);
    df_metric_set(sn->m_sched_seed, (double)from_seed);
    df_metric_set(sn->m_sched_peer, (double)from_peers);
    df_metric_set(sn->m_origin_bytes, (double)df_sn_seeder_origin_bytes(sn->seeder));
    for (int i = 0; i < DF_SN_SEED_ERR_COUNT; i++)
        df_metric_set(sn->m_seed_err[i], (double)df_sn_seeder_errors(sn->seeder, (df_sn_seed_err_t)i));
    for (int i = 0; i < DF_SN_SEED_ERR_COUNT; i++)
        if (sn->m_reval_fail[i])
            df_metric_set(sn->m_reval_fail[i],
                          (double)df_sn_seeder_revalidation_failures(sn->seeder, (df_sn_seed_err_t)i));
    df_upload_server_stats(sn->upload, &up);
    df_metric_set(sn->m_seed_bytes, (double)up.bytes_served);
    df_metric_set(sn->m_up_ok, (double)(up.requests - up.errors));
    df_metric_set(sn->m_up_err, (double)up.errors);
    {
        uint64_t n[DF_SN_PREHEAT_NSTATES];
        df_sn_preheats_count(sn->preheats, n);
        for (int i = 0; i < DF_SN_PREHEAT_NSTATES; i++)
            df_metric_set(sn->m_preheats[i], (double)n[i]);
    }
}

static int metrics_setup(df_supernode_t *sn)
{
    static const double sched_buckets[] = {0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01,
                                           0.05, 0.1, 0.5};
    df_metric_label_t src_seed = {"source", "seed"}, src_peer = {"source", "peer"};
    df_metric_label_t up_ok[2] = {{"route", "/peer/file"}, {"code", "2xx"}};
    df_metric_label_t up_err[2] = {{"route", "/peer/file"}, {"code", "4xx+"}};
    int rc;

    rc = df_metrics_new(&sn->metrics);
    if (rc < 0)
        return rc;
    rc = df_metrics_gauge(sn->metrics, "dfly_supernode_tasks", "Tasks the supernode tracks", NULL, 0,
                          &sn->m_tasks);
    if (rc == 0)
        rc = df_metrics_gauge(sn->metrics, "dfly_supernode_peers", "Peers the supernode tracks", NULL,
                              0, &sn->m_peers);
    if (rc == 0)
        rc = df_metrics_gauge(sn->metrics, "dfly_supernode_pulls_parked",
                              "PullPieces held waiting for work (the long-poll)", NULL, 0, &sn->m_parked);
    if (rc == 0)
        rc = df_metrics_counter(sn->metrics, "dfly_supernode_pulls_parked_gone_total",
                                "Parked PullPieces whose client went away before the answer", NULL, 0,
                                &sn->m_parked_gone);
    if (rc == 0)
        rc = df_metrics_counter(sn->metrics, "dfly_supernode_pieces_scheduled_total",
                                "Piece assignments handed out, by source", &src_seed, 1,
                                &sn->m_sched_seed);
    if (rc == 0)
        rc = df_metrics_counter(sn->metrics, "dfly_supernode_pieces_scheduled_total", NULL, &src_peer,
                                1, &sn->m_sched_peer);
    if (rc == 0)
        rc = df_metrics_counter(sn->metrics, "dfly_supernode_seed_bytes_served_total",
                                "Seed piece bytes sent to peers", NULL, 0, &sn->m_seed_bytes);
    if (rc == 0)
        rc = df_metrics_counter(sn->metrics, "dfly_supernode_origin_bytes_total",
                                "Bytes read from origins", NULL, 0, &sn->m_origin_bytes);
    if (rc == 0)
        rc = df_metrics_histogram(sn->metrics, "dfly_supernode_schedule_seconds",
                                  "Time to answer one pull (results + scheduling)", sched_buckets,
                                  DF_ARRAY_LEN(sched_buckets), NULL, 0, &sn->m_sched_seconds);
    for (int i = 0; rc == 0 && i < DF_SN_SEED_ERR_COUNT; i++) {
        df_metric_label_t kind = {"kind", df_sn_seed_err_name((df_sn_seed_err_t)i)};
        rc = df_metrics_counter(sn->metrics, "dfly_supernode_errors_total",
                                "Errors by kind (origin, request, report)", &kind, 1,
                                &sn->m_seed_err[i]);
    }
    {
        /* Counted later by count_error() and the ReportError handler; made
         * here so that each series is exported at 0 from the start (a
         * Prometheus rate() needs the zero). */
        static const char *const later[] = {"report_digest", "report_missing", "report_io",
                                            "register_failed_task", "register_refused"};
        df_metric_t *m = NULL;
        for (size_t i = 0; rc == 0 && i < DF_ARRAY_LEN(later); i++) {
            df_metric_label_t kind = {"kind", later[i]};
            rc = df_metrics_counter(sn->metrics, "dfly_supernode_errors_total",
                                    "Errors by kind (origin, request, report)", &kind, 1, &m);
        }
        if (rc == 0)
            rc = df_metrics_counter(sn->metrics, "dfly_supernode_slow_reports_total",
                                    "Sources a requester abandoned as slow (ReportError kind slow)", NULL, 0, &m);
    }
    {
        static const df_sn_seed_err_t kinds[] = {DF_SN_SEED_ERR_ORIGIN_HTTP, DF_SN_SEED_ERR_ORIGIN_CONNECT,
                                                 DF_SN_SEED_ERR_ORIGIN_TIMEOUT};
        for (size_t i = 0; rc == 0 && i < DF_ARRAY_LEN(kinds); i++) {
            df_metric_label_t reason = {"reason", df_sn_seed_err_name(kinds[i])};
            rc = df_metrics_counter(sn->metrics, "dfly_supernode_revalidation_failures_total",
                                    i == 0 ? "Revalidations the origin could not answer (5xx, 429, no "
                                             "connection, timeout); the cached copy was served"
                                           : NULL,
                                    &reason, 1, &sn->m_reval_fail[kinds[i]]);
        }
    }
    if (rc == 0)
        rc = df_metrics_counter(sn->metrics, "dfly_supernode_http_requests_total",
                                "HTTP requests answered, by route and status code", up_ok, 2,
                                &sn->m_up_ok);
    if (rc == 0)
        rc = df_metrics_counter(sn->metrics, "dfly_supernode_http_requests_total", NULL, up_err, 2,
                                &sn->m_up_err);
    for (int i = 0; rc == 0 && i < DF_SN_PREHEAT_NSTATES; i++) {
        char st[16];
        df_metric_label_t status = {"status", st};
        const char *name = df_sn_preheat_state_name((df_sn_preheat_state_t)i);
        size_t k = 0;
        for (; name[k] && k + 1 < sizeof(st); k++)
            st[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
        st[k] = '\0';
        rc = df_metrics_gauge(sn->metrics, "dfly_supernode_preheats",
                              "Preheats in the table, by status", &status, 1, &sn->m_preheats[i]);
    }
    if (rc == 0)
        rc = df_metrics_add_collector(sn->metrics, collect, sn);
    return rc;
}

/* ------------------------------------------------------------ routing */

typedef enum { M_GET = 1, M_POST = 2, M_DELETE = 4 } method_mask_t;

typedef struct {
    const char *path;
    bool prefix;
    unsigned methods;
    void (*handler)(df_supernode_t *sn, struct evhttp_request *req);
    const char *label;           /* metrics route label of a prefix route */
} route_t;

static void h_healthz(df_supernode_t *sn, struct evhttp_request *req)
{
    send_text(sn, req, "/healthz", 200, "text/plain", "ok\n", 3);
}

/* Dragonfly's health check (Harbor's Dragonfly provider probes it). */
static void h_ping(df_supernode_t *sn, struct evhttp_request *req)
{
    send_text(sn, req, "/_ping", 200, "text/plain", "OK", 2);
}

static void h_task_route(df_supernode_t *sn, struct evhttp_request *req)
{
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    h_task(sn, req, path + strlen("/api/v1/tasks/"));
}

static const route_t routes[] = {
    {"/api/v1/register", false, M_POST, h_register, NULL},
    {"/api/v1/pull", false, M_POST, h_pull, NULL},
    {"/api/v1/report", false, M_POST, h_report, NULL},
    {"/api/v1/service_down", false, M_POST, h_service_down, NULL},
    {"/api/v1/error", false, M_POST, h_error, NULL},
    {"/api/v1/heartbeat", false, M_POST, h_heartbeat, NULL},
    {"/api/v1/peers", false, M_GET, h_peers, NULL},
    {"/api/v1/tasks", false, M_GET, h_tasks, NULL},
    {"/api/v1/tasks/", true, M_GET, h_task_route, "/api/v1/tasks/<id>"},
    {"/preheats", false, M_GET | M_POST, h_preheats, NULL},
    {"/preheats/", true, M_GET | M_DELETE, h_preheat, "/preheats/<id>"},
    {"/api/v1/preheats", false, M_GET | M_POST, h_preheats, NULL},
    {"/api/v1/preheats/", true, M_GET | M_DELETE, h_preheat, "/preheats/<id>"},
    {"/_ping", false, M_GET, h_ping, NULL},
    {"/healthz", false, M_GET, h_healthz, NULL},
    {"/metrics", false, M_GET, h_metrics, NULL},
};

static void on_request(struct evhttp_request *req, void *arg)
{
    df_supernode_t *sn = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    unsigned m = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD ? M_GET
                 : cmd == EVHTTP_REQ_POST                        ? M_POST
                 : cmd == EVHTTP_REQ_DELETE                      ? M_DELETE
                                                                 : 0;

    if (sn->closing) {
        send_error(sn, req, "other", 503, "unavailable", "supernode shutting down");
        return;
    }
    if (!path) {
        send_error(sn, req, "other", 400, "bad_request", "no path");
        return;
    }
    if (df_upload_server_handle(sn->upload, req))
        return;
    for (size_t i = 0; i < DF_ARRAY_LEN(routes); i++) {
        const route_t *r = &routes[i];
        bool match = r->prefix ? strncmp(path, r->path, strlen(r->path)) == 0 && path[strlen(r->path)]
                               : strcmp(path, r->path) == 0;
        if (!match)
            continue;
        if (!(r->methods & m)) {
            char allow[32];
            snprintf(allow, sizeof(allow), "%s%s%s", r->methods & M_GET ? "GET, HEAD, " : "",
                     r->methods & M_POST ? "POST, " : "", r->methods & M_DELETE ? "DELETE, " : "");
            allow[strlen(allow) - 2] = '\0';
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
            send_error(sn, req, r->label ? r->label : r->path, 405, "method_not_allowed",
                       "wrong method for this route");
            return;
        }
        r->handler(sn, req);
        return;
    }
    send_error(sn, req, "other", 404, "not_found", "no such route");
}

/* ------------------------------------------------------------- sweep */

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    df_supernode_t *sn = arg;
    uint64_t now = df_now_ms();
    bool over_budget;
    df_sn_task_t *t, *next;
    uint32_t removed;

    (void)fd;
    (void)what;
    removed = df_sn_sweep(sn->swarm, now, sn->cfg.peer_timeout_ms, sn->cfg.peer_timeout_ms);
    if (removed)
        DF_LOG_I("removed %u peer(s) not heard from for %llu ms", removed,
                 (unsigned long long)sn->cfg.peer_timeout_ms);
    over_budget = sn->cfg.cache_limit_bytes && df_store_bytes(sn->store) > sn->cfg.cache_limit_bytes;
    /* Forget tasks nobody uses; their cached files stay and are found again
     * (and revalidated) by the next Register, or evicted by store GC. */
    for (t = df_sn_swarm_tasks(sn->swarm); t; t = next) {
        next = t->next;
        if (t->nmembers == 0 && !t->waiters && !df_sn_seed_active(t) &&
            (over_budget || now - t->last_access_ms >= TASK_IDLE_MS)) {
            DF_LOG_D("task %.12s: idle, forgotten", t->id);
            df_sn_task_remove(sn->swarm, t);
        }
    }
    df_sn_preheats_kick(sn->preheats); /* timeouts, seeds forgotten meanwhile */
    if (++sn->sweeps % 5 == 0 || over_budget) {
        df_store_flush(sn->store);
        if (sn->cfg.cache_limit_bytes)
            df_store_gc(sn->store, NULL, NULL);
    }
}

/* ---------------------------------------------------------- lifecycle */

void df_supernode_config_init(df_supernode_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen_host = "0.0.0.0";
    cfg->listen_port = 8002;
    cfg->advertise_ip = NULL;
    cfg->data_dir = "/var/lib/dfly/supernode";
    cfg->cache_limit_bytes = 0;
    cfg->peer_timeout_ms = 60000;
    cfg->origin_timeout_ms = 30000;
    cfg->peer_upload_slots = 4;
    cfg->seed_upload_slots = 16;
    cfg->seed_piece_limit = 1;
    cfg->batch_pieces = 8;
    cfg->piece_size = 0;
    cfg->hash_threads = 1;
}

static uint16_t bound_port(struct evhttp_bound_socket *bs)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &len) < 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

int df_supernode_new(struct event_base *base, const df_supernode_config_t *cfg, df_supernode_t **out)
{
    df_supernode_t *sn;
    struct evhttp_bound_socket *bs;
    df_sn_swarm_opts_t so;
    df_sn_seeder_opts_t seo;
    char path[PATH_MAX];
    const char *adv;
    int rc;

    if (!cfg->data_dir || !*cfg->data_dir || !cfg->listen_host)
        return DF_ECONFIG;
    if (cfg->piece_size && (cfg->piece_size < 4096 || cfg->piece_size > DF_PIECE_SIZE_MAX)) {
        DF_LOG_E("piece size %llu is outside 4 KiB..%u MiB", (unsigned long long)cfg->piece_size,
                 DF_PIECE_SIZE_MAX >> 20);
        return DF_ECONFIG;
    }
    sn = calloc(1, sizeof(*sn));
    if (!sn)
        return -ENOMEM;
    sn->base = base;
    sn->cfg = *cfg;
    if (!sn->cfg.peer_timeout_ms)
        sn->cfg.peer_timeout_ms = 60000;
    if (!sn->cfg.origin_timeout_ms)
        sn->cfg.origin_timeout_ms = 30000;
    if (!sn->cfg.peer_upload_slots)
        sn->cfg.peer_upload_slots = 4;
    if (!sn->cfg.seed_upload_slots)
        sn->cfg.seed_upload_slots = 16;
    if (!sn->cfg.batch_pieces)
        sn->cfg.batch_pieces = 8;
    adv = cfg->advertise_ip && *cfg->advertise_ip ? cfg->advertise_ip
          : strcmp(cfg->listen_host, "0.0.0.0") == 0 || strcmp(cfg->listen_host, "::") == 0 ||
                  !*cfg->listen_host
              ? "127.0.0.1"
              : cfg->listen_host;
    sn->listen_host = strdup(cfg->listen_host);
    sn->advertise_ip = strdup(adv);
    sn->data_dir = strdup(cfg->data_dir);
    rc = -ENOMEM;
    if (!sn->listen_host || !sn->advertise_ip || !sn->data_dir)
        goto fail;
    sn->cfg.listen_host = sn->listen_host;
    sn->cfg.advertise_ip = sn->advertise_ip;
    sn->cfg.data_dir = sn->data_dir;

    rc = df_mkdirs(sn->data_dir);
    if (rc < 0) {
        DF_LOG_E("cannot create %s: %s", sn->data_dir, df_strerror(rc));
        goto fail;
    }
    rc = df_store_open(sn->data_dir, sn->cfg.cache_limit_bytes, &sn->store);
    if (rc < 0) {
        DF_LOG_E("cannot open the cache in %s: %s", sn->data_dir, df_strerror(rc));
        goto fail;
    }
    rc = df_http_new(base, &sn->client);
    if (rc < 0)
        goto fail;
    so.peer_upload_slots = sn->cfg.peer_upload_slots;
    so.seed_upload_slots = sn->cfg.seed_upload_slots;
    so.batch_pieces = sn->cfg.batch_pieces;
    so.seed_piece_limit = sn->cfg.seed_piece_limit;
    rc = df_sn_swarm_new(&so, on_task_free, sn, &sn->swarm);
    if (rc < 0)
        goto fail;
    snprintf(path, sizeof(path), "%s/partial", sn->data_dir);
    memset(&seo, 0, sizeof(seo));
    seo.base = base;
    seo.http = sn->client;
    seo.store = sn->store;
    seo.partial_dir = path;
    seo.origin_timeout_ms = sn->cfg.origin_timeout_ms;
    seo.piece_size = sn->cfg.piece_size;
    seo.hash_threads = sn->cfg.hash_threads;
    /* An origin without Content-Length is spooled before it is cut into
     * pieces; bound it even when the cache itself is unbounded. */
    seo.spool_limit = sn->cfg.cache_limit_bytes ? sn->cfg.cache_limit_bytes : SPOOL_LIMIT_DEFAULT;
    seo.ready_cb = on_seed_ready;
    seo.piece_cb = on_seed_piece;
    seo.arg = sn;
    rc = df_sn_seeder_new(&seo, &sn->seeder);
    if (rc < 0)
        goto fail;
    rc = df_upload_server_new(base, NULL, sn->store, &sn->upload);
    if (rc < 0)
        goto fail;
    {
        df_sn_preheat_opts_t po = {.base = base, .http = sn->client, .swarm = sn->swarm,
                                   .seed = preheat_seed, .arg = sn};
        rc = df_sn_preheats_new(&po, &sn->preheats);
        if (rc < 0)
            goto fail;
    }
    rc = metrics_setup(sn);
    if (rc < 0)
        goto fail;

    rc = -ENOMEM;
    sn->http = evhttp_new(base);
    if (!sn->http)
        goto fail;
    evhttp_set_max_headers_size(sn->http, HEADERS_MAX);
    evhttp_set_max_body_size(sn->http, DF_SN_BODY_MAX);
    evhttp_set_timeout(sn->http, CONN_TIMEOUT_S);
    /* Every method reaches on_request, which answers 405 itself (libevent
     * would answer 501 to the ones it does not allow). */
    evhttp_set_allowed_methods(sn->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                             EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                             EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(sn->http, on_request, sn);
    bs = evhttp_bind_socket_with_handle(sn->http, sn->listen_host, sn->cfg.listen_port);
    if (!bs) {
        rc = errno ? -errno : -EADDRINUSE;
        DF_LOG_E("cannot listen on %s:%u: %s", sn->listen_host, (unsigned)sn->cfg.listen_port,
                 df_strerror(rc));
        goto fail;
    }
    sn->port = bound_port(bs);

    sn->wake = event_new(base, -1, 0, wake_cb, sn);
    if (!sn->wake) {
        rc = -ENOMEM;
        goto fail;
    }
    sn->sweep = event_new(base, -1, EV_PERSIST, sweep_cb, sn);
    if (!sn->sweep)
        goto fail;
    {
        struct timeval one = {1, 0};
        event_add(sn->sweep, &one);
    }
    *out = sn;
    return 0;
fail:
    df_supernode_free(sn);
    return rc;
}

uint16_t df_supernode_port(const df_supernode_t *sn)
{
    return sn->port;
}

void df_supernode_free(df_supernode_t *sn)
{
    if (!sn)
        return;
    sn->closing = true;
    if (sn->sweep)
        event_free(sn->sweep);
    /* Parked Registers hold evhttp requests: answer them while their
     * connections still exist. */
    if (sn->swarm)
        for (df_sn_task_t *t = df_sn_swarm_tasks(sn->swarm); t; t = t->next) {
            flush_waiters(sn, t, true);
            flush_parked(sn, t);
        }
    if (sn->wake)
        event_free(sn->wake);
    df_sn_preheats_free(sn->preheats); /* cancels its requests before the client goes */
    df_upload_server_free(sn->upload);
    if (sn->http)
        evhttp_free(sn->http);
    df_sn_swarm_free(sn->swarm); /* stops every seed */
    df_sn_seeder_free(sn->seeder);
    df_http_free(sn->client);
    if (sn->store) {
        df_store_flush(sn->store);
        df_store_close(sn->store);
    }
    df_metrics_free(sn->metrics);
    free(sn->listen_host);
    free(sn->advertise_ip);
    free(sn->data_dir);
    free(sn);
}
