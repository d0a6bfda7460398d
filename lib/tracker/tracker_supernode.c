/*
 * Tracker client for the supernode's HTTP/JSON API (docs/API.md).
 *
 * Register walks the configured nodes in order until one answers (a
 * transport failure or a 5xx other than an origin error moves on to the
 * next node); the node that answered becomes the current node for every
 * later call.  Each call is one POST through the shared df_http client; the
 * pending calls are kept in a list so free() can cancel them without
 * callbacks.
 */
#include "tracker/tracker.h"

#include "core/core.h"
#include "net/http_client.h"

#include <jansson.h>
#include <openssl/evp.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NODES 16
#define REPLY_CAP (256u * 1024u)

typedef struct call call_t;

typedef struct {
    df_tracker_t base;
    df_http_t *http;
    char *nodes[MAX_NODES];
    size_t nnodes;
    size_t current;               /* index of the node in use */
    call_t *calls;
} sn_tracker_t;

typedef enum { CALL_REGISTER, CALL_PULL, CALL_SIMPLE } call_kind_t;

struct call {
    sn_tracker_t *tr;
    call_kind_t kind;
    df_http_req_t *req;
    char *body;                   /* kept for retries on the next node */
    char *fallback;               /* sent instead once if the node answers 400, or NULL */
    size_t node;                  /* node being tried */
    bool try_all;                 /* Register: walk the remaining nodes on failure */
    const char *path;
    union {
        df_register_cb reg;
        df_pull_cb pull;
        df_tracker_done_cb done;
    } cb;
    void *arg;
    call_t *prev, *next;
};

static void call_unlink(call_t *c)
{
    sn_tracker_t *tr = c->tr;
    if (c->prev)
        c->prev->next = c->next;
    else if (tr->calls == c)
        tr->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
}

static void call_free(call_t *c)
{
    call_unlink(c);
    free(c->body);
    free(c->fallback);
    free(c);
}

static void on_done(df_http_req_t *req, const df_http_result_t *res, void *arg);

static int call_send(call_t *c)
{
    sn_tracker_t *tr = c->tr;
    char url[512];
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    df_http_opts_t opts = {0};
    df_http_cbs_t cbs = {.on_done = on_done};

    if (snprintf(url, sizeof(url), "http://%s%s", tr->nodes[c->node], c->path) >= (int)sizeof(url))
        return -ENAMETOOLONG;
    opts.method = "POST";
    opts.url = url;
    opts.headers = headers;
    opts.body = c->body;
    opts.body_len = strlen(c->body);
    opts.connect_timeout_ms = 3000;
    /* Register may wait for the origin's headers on the supernode side. */
    opts.timeout_ms = c->kind == CALL_REGISTER ? 120000 : 30000;
    opts.max_body = REPLY_CAP;
    return df_http_start(tr->http, &opts, &cbs, c, &c->req);
}

/* Sends body (taken) to path; fallback (taken, may be NULL) is sent instead,
 * once, if the node answers 400: a request a newer supernode understands,
 * with what an older one does. */
static int call_start(sn_tracker_t *tr, call_kind_t kind, const char *path, json_t *body, json_t *fallback,
                      void *cb, void *arg)
{
    call_t *c;
    int rc;

    c = calloc(1, sizeof(*c));
    if (!c) {
        json_decref(body);
        json_decref(fallback);
        return -ENOMEM;
    }
    c->tr = tr;
    c->kind = kind;
    c->path = path;
    c->arg = arg;
    c->node = kind == CALL_REGISTER ? 0 : tr->current;
    c->try_all = kind == CALL_REGISTER;
    if (kind == CALL_REGISTER)
        c->cb.reg = (df_register_cb)cb;
    else if (kind == CALL_PULL)
        c->cb.pull = (df_pull_cb)cb;
    else
        c->cb.done = (df_tracker_done_cb)cb;
    c->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    c->fallback = fallback ? json_dumps(fallback, JSON_COMPACT) : NULL;
    json_decref(fallback);
    if (!c->body || (fallback && !c->fallback)) {
        free(c->body);
        free(c->fallback);
        free(c);
        return -ENOMEM;
    }
    c->next = tr->calls;
    if (tr->calls)
        tr->calls->prev = c;
    tr->calls = c;
    rc = call_send(c);
    if (rc < 0)
        call_free(c);
    return rc;
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static uint64_t ju64(json_t *o, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(o, key));
    return v > 0 ? (uint64_t)v : 0;
}

static void finish_register(call_t *c, const df_http_result_t *res, json_t *doc, df_http_req_t *req)
{
    df_register_res_t out;
    const char *ip;

    memset(&out, 0, sizeof(out));
    if (res->status < 0) {
        out.status = DF_ETRACKER;
        snprintf(out.message, sizeof(out.message), "supernode %s: %s", c->tr->nodes[c->node],
                 res->error ? res->error : df_strerror(res->status));
    } else if (res->http_code == 200 && doc) {
        df_strlcpy(out.task_id, jstr(doc, "task_id"), sizeof(out.task_id));
        df_strlcpy(out.peer_id, jstr(doc, "peer_id"), sizeof(out.peer_id));
        df_strlcpy(out.digest, jstr(doc, "digest"), sizeof(out.digest));
        out.length = ju64(doc, "length");
        out.piece_size = ju64(doc, "piece_size");
        out.piece_count = (uint32_t)ju64(doc, "piece_count");
        ip = df_http_local_ip(req);
        if (ip)
            df_strlcpy(out.local_ip, ip, sizeof(out.local_ip));
        if (strlen(out.task_id) != 64 || !out.peer_id[0] || (out.length > 0 && out.piece_size == 0)) {
            out.status = DF_EPROTO;
            snprintf(out.message, sizeof(out.message), "supernode %s: malformed register answer",
                     c->tr->nodes[c->node]);
        }
    } else {
        const char *kind = doc ? jstr(doc, "error") : "";
        const char *msg = doc ? jstr(doc, "message") : "";
        if (strcmp(kind, "origin") == 0) {
            out.status = DF_EORIGIN;
            out.origin_status = (int)ju64(doc, "origin_status");
        } else {
            out.status = DF_ETASK;
        }
        snprintf(out.message, sizeof(out.message), "%s", msg[0] ? msg : "supernode refused the task");
        if (!msg[0])
            snprintf(out.message, sizeof(out.message), "supernode %s answered HTTP %ld",
                     c->tr->nodes[c->node], res->http_code);
    }
    c->cb.reg(&out, c->arg);
}

static int parse_assignment(json_t *p, df_assignment_t *a)
{
    json_t *src = json_object_get(p, "src");
    const char *hex = jstr(p, "sha256");
    json_int_t port;

    if (!json_is_object(src) || !json_is_integer(json_object_get(p, "piece")))
        return DF_EPROTO;
    a->piece = (uint32_t)ju64(p, "piece");
    a->offset = ju64(p, "offset");
    a->length = ju64(p, "length");
    a->has_sha256 = hex[0] && df_unhex(hex, a->sha256, 32) == 0;
    port = json_integer_value(json_object_get(src, "port"));
    if (a->length == 0 || port <= 0 || port > 65535)
        return DF_EPROTO;
    if (df_strlcpy(a->src_id, jstr(src, "id"), sizeof(a->src_id)) < 0 ||
        df_strlcpy(a->src_ip, jstr(src, "ip"), sizeof(a->src_ip)) < 0 || !a->src_ip[0])
        return DF_EPROTO;
    a->src_port = (uint16_t)port;
    a->src_is_seed = strcmp(a->src_id, "supernode") == 0;
    return 0;
}

static void finish_pull(call_t *c, const df_http_result_t *res, json_t *doc)
{
    df_pull_res_t *out = calloc(1, sizeof(*out));
    const char *state;

    if (!out) {
        df_pull_res_t oom = {.status = -ENOMEM};
        c->cb.pull(&oom, c->arg);
        return;
    }
    if (res->status < 0) {
        out->status = DF_ETRACKER;
        snprintf(out->message, sizeof(out->message), "supernode %s: %s", c->tr->nodes[c->node],
                 res->error ? res->error : df_strerror(res->status));
    } else if (res->http_code == 404) {
        out->state = DF_PULL_LOST;
    } else if (res->http_code != 200 || !doc) {
        out->status = DF_ETRACKER;
        snprintf(out->message, sizeof(out->message), "supernode %s answered HTTP %ld", c->tr->nodes[c->node],
                 res->http_code);
    } else {
        state = jstr(doc, "state");
        if (strcmp(state, "assign") == 0) {
            json_t *pieces = json_object_get(doc, "pieces");
            size_t i;
            json_t *p;
            out->state = DF_PULL_ASSIGN;
            json_array_foreach(pieces, i, p)
            {
                if (out->nassign >= DF_PULL_MAX_ASSIGN)
                    break;
                if (parse_assignment(p, &out->assign[out->nassign]) == 0)
                    out->nassign++;
            }
        } else if (strcmp(state, "wait") == 0) {
            out->state = DF_PULL_WAIT;
            out->wait_ms = (uint32_t)DF_MIN(ju64(doc, "wait_ms"), 5000);
        } else if (strcmp(state, "done") == 0) {
            out->state = DF_PULL_DONE;
            df_strlcpy(out->digest, jstr(doc, "digest"), sizeof(out->digest));
        } else if (strcmp(state, "error") == 0) {
            out->state = DF_PULL_ERROR;
            df_strlcpy(out->message, jstr(doc, "message"), sizeof(out->message));
        } else {
            out->status = DF_EPROTO;
            snprintf(out->message, sizeof(out->message), "supernode sent unknown state '%.40s'", state);
        }
    }
    c->cb.pull(out, c->arg);
    free(out);
}

static void on_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    call_t *c = arg;
    json_t *doc = NULL;
    bool node_failed;

    c->req = NULL;
    node_failed = res->status < 0 || (res->http_code >= 500 && res->http_code != 502);
    if (node_failed && c->try_all && c->node + 1 < c->tr->nnodes) {
        DF_LOG_W("supernode %s: %s; trying the next one", c->tr->nodes[c->node],
                 res->status < 0 ? (res->error ? res->error : df_strerror(res->status)) : "server error");
        c->node++;
        if (call_send(c) == 0)
            return;
    }
    if (res->status == 0 && res->body && res->body->data)
        doc = json_loadb(res->body->data, res->body->len, 0, NULL);
    if (c->kind == CALL_REGISTER && res->status == 0 && res->http_code == 200)
        c->tr->current = c->node;
    switch (c->kind) {
    case CALL_REGISTER:
        finish_register(c, res, doc, req);
        break;
    case CALL_PULL:
        finish_pull(c, res, doc);
        break;
    case CALL_SIMPLE:
        if (c->fallback && res->status == 0 && res->http_code == 400) {
            free(c->body);
            c->body = c->fallback;
            c->fallback = NULL;
            if (call_send(c) == 0) {
                json_decref(doc);
                return;
            }
        }
        if (c->cb.done)
            c->cb.done(res->status < 0 ? DF_ETRACKER : (res->http_code == 200 ? 0 : DF_ETRACKER), c->arg);
        break;
    }
    json_decref(doc);
    call_free(c);
}

static json_t *str_array(const char *const *v)
{
    json_t *a = json_array();
    for (; a && v && *v; v++)
        json_array_append_new(a, json_string(*v));
    return a;
}

static int sn_register(df_tracker_t *t, const df_register_req_t *req, df_register_cb cb, void *arg)
{
    json_t *body = json_pack("{s:s, s:o, s:o, s:s, s:{s:s, s:i, s:s}}", "url", req->url, "filter",
                             str_array(req->filter), "headers", str_array(req->headers), "pattern",
                             req->peer_port ? "p2p" : "cdn", "peer", "ip", req->peer_ip, "port",
                             (int)req->peer_port, "hostname", req->hostname ? req->hostname : "");
    if (!body)
        return -ENOMEM;
    if (req->digest)
        json_object_set_new(body, "digest", json_string(req->digest));
    if (req->identifier)
        json_object_set_new(body, "identifier", json_string(req->identifier));
    if (req->insecure)
        json_object_set_new(body, "insecure", json_true());
    if (req->root_ca && req->root_ca_len) {
        /* Dragonfly sends rootCAs as a list of byte strings: base64 in JSON. */
        size_t cap = 4 * ((req->root_ca_len + 2) / 3) + 1;
        unsigned char *b64;
        if (req->root_ca_len > DF_TRACKER_ROOT_CA_MAX) {
            json_decref(body);
            return -EFBIG;
        }
        b64 = malloc(cap);
        if (!b64) {
            json_decref(body);
            return -ENOMEM;
        }
        EVP_EncodeBlock(b64, (const unsigned char *)req->root_ca, (int)req->root_ca_len);
        json_object_set_new(body, "rootCAs", json_pack("[s]", (const char *)b64));
        free(b64);
    }
    return call_start((sn_tracker_t *)t, CALL_REGISTER, "/api/v1/register", body, NULL, (void *)cb, arg);
}

static json_t *pull_body(const df_pull_req_t *req)
{
    json_t *results = json_array();
    json_t *body;

    for (size_t i = 0; results && i < req->nresults; i++) {
        const df_piece_result_t *r = &req->results[i];
        json_array_append_new(results, json_pack("{s:i, s:s, s:b}", "piece", (json_int_t)r->piece, "src",
                                                 r->src, "ok", r->ok));
    }
    body = json_pack("{s:s, s:s, s:o, s:i, s:i}", "task_id", req->task_id, "peer_id", req->peer_id, "results",
                     results, "running", (json_int_t)req->running, "want", (json_int_t)req->want);
    return body;
}

static int sn_pull(df_tracker_t *t, const df_pull_req_t *req, df_pull_cb cb, void *arg)
{
    json_t *body = pull_body(req);
    if (!body)
        return -ENOMEM;
    return call_start((sn_tracker_t *)t, CALL_PULL, "/api/v1/pull", body, NULL, (void *)cb, arg);
}

static int sn_report(df_tracker_t *t, const df_pull_req_t *req, df_tracker_done_cb cb, void *arg)
{
    json_t *body = pull_body(req);
    if (!body)
        return -ENOMEM;
    return call_start((sn_tracker_t *)t, CALL_SIMPLE, "/api/v1/report", body, NULL, (void *)cb, arg);
}

static int sn_service_down(df_tracker_t *t, const char *peer_id, const char *task_id, df_tracker_done_cb cb,
                           void *arg)
{
    json_t *body = json_pack("{s:s}", "peer_id", peer_id);
    if (!body)
        return -ENOMEM;
    if (task_id)
        json_object_set_new(body, "task_id", json_string(task_id));
    return call_start((sn_tracker_t *)t, CALL_SIMPLE, "/api/v1/service_down", body, NULL, (void *)cb, arg);
}

static int sn_report_error(df_tracker_t *t, const char *task_id, const char *peer_id, const char *src_id,
                           uint32_t piece, df_report_kind_t kind, df_tracker_done_cb cb, void *arg)
{
    static const char *kinds[] = {"digest", "missing", "io", "slow"};
    json_t *body = json_pack("{s:s, s:s, s:s, s:i, s:s}", "task_id", task_id, "peer_id", peer_id, "src",
                             src_id, "piece", (json_int_t)piece, "kind", kinds[kind]);
    json_t *fallback = NULL;

    if (!body)
        return -ENOMEM;
    if (kind == DF_REPORT_SLOW) {
        /* A supernode older than "slow" answers 400: "io" then keeps it
         * from offering the slow source to this requester over and over
         * (the download refuses it for DF_ENDGAME_AVOID_MS). */
        fallback = json_deep_copy(body);
        if (!fallback || json_object_set_new(fallback, "kind", json_string("io")) < 0) {
            json_decref(fallback);
            json_decref(body);
            return -ENOMEM;
        }
    }
    return call_start((sn_tracker_t *)t, CALL_SIMPLE, "/api/v1/error", body, fallback, (void *)cb, arg);
}

static int sn_heartbeat(df_tracker_t *t, const char *peer_id, df_tracker_done_cb cb, void *arg)
{
    json_t *body = json_pack("{s:s}", "peer_id", peer_id);
    if (!body)
        return -ENOMEM;
    return call_start((sn_tracker_t *)t, CALL_SIMPLE, "/api/v1/heartbeat", body, NULL, (void *)cb, arg);
}

static void sn_free(df_tracker_t *t)
{
    sn_tracker_t *tr = (sn_tracker_t *)t;
    if (!tr)
        return;
    while (tr->calls) {
        call_t *c = tr->calls;
        df_http_cancel(c->req);
        call_free(c);
    }
    for (size_t i = 0; i < tr->nnodes; i++)
        free(tr->nodes[i]);
    free(tr);
}

static const df_tracker_ops_t sn_ops = {
    .register_task = sn_register,
    .pull_piece = sn_pull,
    .report_piece = sn_report,
    .service_down = sn_service_down,
    .report_error = sn_report_error,
    .heartbeat = sn_heartbeat,
    .free = sn_free,
};

int df_tracker_supernode_new(struct df_http *http, const char *const *nodes, df_tracker_t **out)
{
    sn_tracker_t *tr = calloc(1, sizeof(*tr));
    if (!tr)
        return -ENOMEM;
    tr->base.ops = &sn_ops;
    tr->http = http;
    for (; nodes && *nodes && tr->nnodes < MAX_NODES; nodes++) {
        tr->nodes[tr->nnodes] = strdup(*nodes);
        if (!tr->nodes[tr->nnodes]) {
            sn_free(&tr->base);
            return -ENOMEM;
        }
        tr->nnodes++;
    }
    if (tr->nnodes == 0) {
        sn_free(&tr->base);
        return -EINVAL;
    }
    *out = &tr->base;
    return 0;
}
