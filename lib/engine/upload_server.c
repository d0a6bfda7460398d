/*
 * Piece upload server (contract in upload_server.h, protocol in docs/API.md).
 *
 * Request handling is synchronous: validate method, path, task and range,
 * then queue the whole reply.  What stays asynchronous is writing the body,
 * tracked by one reply_t per request in flight:
 *
 *   - unpaced (no rate limit, or HEAD): the headers and one evbuffer file
 *     segment covering the range go out with evhttp_send_reply(); the
 *     kernel copies the bytes with sendfile(2).
 *   - paced (rate limit set): evhttp_send_reply_start() with an explicit
 *     Content-Length -- libevent 2.1 then sends the body raw instead of
 *     chunked -- and evhttp_send_reply_chunk_with_cb() feeds one segment
 *     slice at a time.  The next slice is queued only after the previous
 *     one reached the kernel (the chunk callback) and the host-wide token
 *     bucket granted it; when the bucket is empty a timer waits for it.
 *     So at most one slice per reply is ever buffered.
 *
 * Lifetime of a reply: it ends exactly once, through one of
 *   - the request's on_complete callback (all bytes written),
 *   - the connection's close callback (peer went away, timeout, evhttp
 *     freed), or
 *   - df_upload_server_free().
 * Ending drops the task reference and our segment reference.  The file
 * segment owns a dup() of the task's data fd (EVBUF_FS_CLOSE_ON_FREE), so
 * bytes still queued in a connection never depend on the task or the store
 * staying open: a store that closes or recycles its fd cannot make us send
 * another file's bytes.
 *
 * When a connection dies in the middle of a paced reply, evhttp detaches
 * the request from it (userdone is still 0) instead of freeing it; the
 * request is then ours to free, with evhttp_send_reply_end().
 */
#include "engine/upload_server.h"

#include "core/core.h"
#include "piece/range.h"
#include "piece/rate_limit.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define SENDFILE_CHUNK (2u * 1024u * 1024u)
#define PREFIX "/peer/file/"
#define PREFIX_LEN (sizeof(PREFIX) - 1)
/* Largest slice a paced reply asks the bucket for at once. */
#define PACE_CHUNK (64u * 1024u)
/* Longest Range header value we look at; anything longer is malformed. */
#define RANGE_HEADER_MAX 256

typedef struct reply reply_t;

struct df_upload_server {
    struct event_base *base;
    struct evhttp *http;        /* set when new() installed the gencb */
    df_store_t *store;
    df_rate_limit_t limit;
    uint64_t limit_bps;
    reply_t *replies;           /* in flight, doubly linked */
    df_upload_stats_t stats;
};

struct reply {
    df_upload_server_t *srv;
    reply_t *prev, *next;
    df_stored_task_t *task;           /* referenced */
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    struct evbuffer_file_segment *seg; /* our reference; owns a dup'd fd */
    /* paced only */
    struct event *timer;
    uint64_t sent, len;               /* body progress, relative to the segment */
    bool paced;
    bool writing;                     /* a slice is queued, waiting for its callback */
};

/* ---- small helpers */

static void count_error(df_upload_server_t *srv)
{
    srv->stats.errors++;
}

/* A short text reply; the body is skipped for HEAD. */
static void send_status(df_upload_server_t *srv, struct evhttp_request *req, int code,
                        const char *reason, const char *text)
{
    struct evbuffer *body = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);

    if (code >= 400)
        count_error(srv);
    evhttp_add_header(h, "Content-Type", "text/plain");
    if (body && evhttp_request_get_command(req) != EVHTTP_REQ_HEAD)
        evbuffer_add_printf(body, "%s\n", text);
    evhttp_send_reply(req, code, reason, body);
    if (body)
        evbuffer_free(body);
}

/* The task id of a path "/peer/file/<64 lower-hex>" into id (65 bytes);
 * false for anything else (upper case, "..", trailing slash, ...). */
static bool parse_path(const char *path, char *id)
{
    const char *p = path + PREFIX_LEN;

    if (strlen(p) != DF_TASK_ID_LEN)
        return false;
    for (size_t i = 0; i < DF_TASK_ID_LEN; i++) {
        char c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    memcpy(id, p, DF_TASK_ID_LEN + 1);
    return true;
}

/* The request's path without query: from the parsed URI when evhttp has
 * one, else the raw request target cut at '?'.  Written into buf. */
static const char *request_path(struct evhttp_request *req, char *buf, size_t cap)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    size_t n;

    if (!path) {
        path = evhttp_request_get_uri(req);
        if (!path)
            return NULL;
    }
    n = strcspn(path, "?#");
    if (n >= cap)
        n = cap - 1; /* too long to be a valid path: still fails parse_path */
    memcpy(buf, path, n);
    buf[n] = '\0';
    return buf;
}

/* ---- reply lifetime */

static void reply_unlink(reply_t *r)
{
    df_upload_server_t *srv = r->srv;

    if (r->prev)
        r->prev->next = r->next;
    else
        srv->replies = r->next;
    if (r->next)
        r->next->prev = r->prev;
    srv->stats.active--;
}

/* Ends r: drops references and callbacks, frees it.  Touches neither the
 * request nor the connection: the caller decided what happens to them. */
static void reply_release(reply_t *r)
{
    reply_unlink(r);
    if (r->timer)
        event_free(r->timer);
    if (r->seg)
        evbuffer_file_segment_free(r->seg);
    df_stored_task_unref(r->task);
    free(r);
}

static void on_complete(struct evhttp_request *req, void *arg)
{
    reply_t *r = arg;

    /* Called from evhttp_send_done, before evhttp frees req and maybe the
     * connection: our close callback must not fire for this reply. */
    evhttp_connection_set_closecb(r->evcon, NULL, NULL);
    reply_release(r);
}

static void on_close(struct evhttp_connection *evcon, void *arg)
{
    reply_t *r = arg;

    DF_LOG_D("upload %s: connection closed after %" PRIu64 " of %" PRIu64 " bytes%s",
             df_stored_task_id(r->task), r->paced ? r->sent : r->len, r->len,
             r->paced ? "" : " (queued)");
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    evhttp_request_set_on_complete_cb(r->req, NULL, NULL);
    /* A request detached from its dying connection is ours to free; one
     * still attached is freed with the connection. */
    if (evhttp_request_get_connection(r->req) == NULL)
        evhttp_send_reply_end(r->req);
    reply_release(r);
}

/* An evbuffer whose file segments stay sendfile chains.  Without
 * EVBUFFER_FLAG_DRAINS_TO_FD, evbuffer_add_file_segment() materializes the
 * segment (mmap or read) at once; with it the chain stays a file reference,
 * keeps that state when evhttp moves it into the socket bufferevent's
 * output, and evbuffer_write() hands it to sendfile(2).  (So the evhttp must
 * write to a plain socket: an SSL bufferevent could not read these chains.) */
static struct evbuffer *new_fd_buffer(void)
{
    struct evbuffer *b = evbuffer_new();

    if (b && evbuffer_set_flags(b, EVBUFFER_FLAG_DRAINS_TO_FD) < 0) {
        evbuffer_free(b);
        b = NULL;
    }
    return b;
}

/* ---- paced sending */

static void pace(reply_t *r);

static void on_slice_written(struct evhttp_connection *evcon, void *arg)
{
    reply_t *r = arg;

    if (!r->writing)
        return;
    r->writing = false;
    pace(r);
}

static void on_pace_timer(evutil_socket_t fd, short what, void *arg)
{
    pace(arg);
}

/* Queues the next slice the bucket allows, waits for the bucket, or ends
 * the reply once everything was written. */
static void pace(reply_t *r)
{
    df_upload_server_t *srv = r->srv;
    df_rate_limit_t *rl = &srv->limit;
    struct evbuffer *buf;
    uint64_t want, got, wait_ms = 1;

    if (r->sent == r->len) {
        /* Output is empty (we only get here from the written callback), so
         * this calls on_complete, which frees r. */
        evhttp_send_reply_end(r->req);
        return;
    }
    want = DF_MIN(r->len - r->sent, (uint64_t)PACE_CHUNK);
    got = df_rate_limit_take(&rl, 1, want, df_now_ms(), &wait_ms);
    if (got == 0) {
        struct timeval tv = {.tv_sec = (time_t)(wait_ms / 1000),
                             .tv_usec = (suseconds_t)((wait_ms % 1000) * 1000)};
        evtimer_add(r->timer, &tv);
        return;
    }
    buf = new_fd_buffer();
    if (!buf || evbuffer_add_file_segment(buf, r->seg, (ev_off_t)r->sent, (ev_off_t)got) < 0) {
        /* Cannot continue the body: drop the connection (on_close ends r). */
        if (buf)
            evbuffer_free(buf);
        DF_LOG_W("upload %s: out of memory, closing connection", df_stored_task_id(r->task));
        evhttp_connection_free(r->evcon);
        return;
    }
    r->sent += got;
    srv->stats.bytes_served += got;
    r->writing = true;
    evhttp_send_reply_chunk_with_cb(r->req, buf, on_slice_written, r);
    evbuffer_free(buf);
}

/* ---- request handling */

/* Sends [off, off+len) of t (already validated) with status code. */
static void send_body(df_upload_server_t *srv, struct evhttp_request *req, df_stored_task_t *t,
                      int code, const char *reason, uint64_t off, uint64_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    bool head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
    bool paced = !head && len > 0 && srv->limit_bps > 0;
    struct evbuffer *body = NULL;
    reply_t *r = NULL;
    char num[64];
    int fd = -1, rc = -ENOMEM;

    snprintf(num, sizeof(num), "%" PRIu64, len);
    evhttp_add_header(h, "Content-Length", num);
    evhttp_add_header(h, "Content-Type", "application/octet-stream");
    evhttp_add_header(h, "Accept-Ranges", "bytes");
    if (code == 206) {
        char cr[96];
        snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, off, off + len - 1,
                 df_stored_task_length(t));
        evhttp_add_header(h, "Content-Range", cr);
    }
    if (head || len == 0) {
        /* No body bytes: nothing to hold a reference for. */
        evhttp_send_reply(req, code, reason, NULL);
        return;
    }

    r = calloc(1, sizeof(*r));
    body = new_fd_buffer();
    if (!r || !body)
        goto fail;
    fd = fcntl(df_stored_task_fd(t), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    r->seg = evbuffer_file_segment_new(fd, (ev_off_t)off, (ev_off_t)len,
                                       EVBUF_FS_CLOSE_ON_FREE | EVBUF_FS_DISABLE_LOCKING);
    if (!r->seg)
        goto fail;
    fd = -1; /* owned by the segment now */
    if (paced) {
        r->timer = evtimer_new(srv->base, on_pace_timer, r);
        if (!r->timer)
            goto fail;
    } else if (evbuffer_add_file_segment(body, r->seg, 0, (ev_off_t)len) < 0) {
        goto fail;
    }

    df_stored_task_ref(t);
    r->task = t;
    r->srv = srv;
    r->req = req;
    r->evcon = evhttp_request_get_connection(req);
    r->len = len;
    r->paced = paced;
    r->next = srv->replies;
    if (srv->replies)
        srv->replies->prev = r;
    srv->replies = r;
    srv->stats.active++;
    evhttp_connection_set_closecb(r->evcon, on_close, r);
    evhttp_request_set_on_complete_cb(req, on_complete, r);
    /* bufferevents write at most 16 KiB per call by default: one sendfile
     * per 16 KiB, each paying the page-cache lookup again.  Let the kernel
     * take up to SENDFILE_CHUNK at a time (nginx's sendfile_max_chunk). */
    if (r->evcon)
        bufferevent_set_max_single_write(evhttp_connection_get_bufferevent(r->evcon), SENDFILE_CHUNK);

    if (!paced) {
        srv->stats.bytes_served += len;
        evhttp_send_reply(req, code, reason, body);
    } else {
        /* Content-Length is set, so evhttp sends the body unchunked. */
        evhttp_send_reply_start(req, code, reason);
        pace(r);
    }
    evbuffer_free(body);
    return;

fail:
    DF_LOG_W("upload %s: cannot set up reply: %s", df_stored_task_id(t), df_strerror(rc));
    if (fd >= 0)
        close(fd);
    if (r) {
        if (r->timer)
            event_free(r->timer);
        if (r->seg)
            evbuffer_file_segment_free(r->seg);
        free(r);
    }
    if (body)
        evbuffer_free(body);
    evhttp_clear_headers(h);
    send_status(srv, req, 500, "Internal Server Error", "internal error");
}

bool df_upload_server_handle(df_upload_server_t *srv, struct evhttp_request *req)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char pathbuf[PREFIX_LEN + DF_TASK_ID_LEN + 2];
    char id[DF_TASK_ID_LEN + 1];
    const char *path, *range;
    df_stored_task_t *t = NULL;
    uint64_t size, off = 0, len = 0;
    int rc;

    path = request_path(req, pathbuf, sizeof(pathbuf));
    if (!path || strncmp(path, PREFIX, PREFIX_LEN) != 0)
        return false;
    srv->stats.requests++;

    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        send_status(srv, req, 405, "Method Not Allowed", "method not allowed");
        return true;
    }
    if (!parse_path(path, id)) {
        send_status(srv, req, 404, "Not Found", "not found");
        return true;
    }
    rc = df_store_task_get(srv->store, id, &t);
    if (rc < 0) {
        send_status(srv, req, 404, "Not Found", "unknown task");
        return true;
    }
    size = df_stored_task_length(t);

    range = evhttp_find_header(evhttp_request_get_input_headers(req), "Range");
    if (range) {
        rc = strlen(range) > RANGE_HEADER_MAX ? -EINVAL : df_range_parse(range, size, &off, &len);
        if (rc == -ERANGE) {
            char cr[48];
            snprintf(cr, sizeof(cr), "bytes */%" PRIu64, size);
            evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Range", cr);
            send_status(srv, req, 416, "Range Not Satisfiable", "range not satisfiable");
        } else if (rc < 0) {
            send_status(srv, req, 400, "Bad Request", "malformed range");
        } else if (!df_stored_task_range_ready(t, off, len)) {
            send_status(srv, req, 404, "Not Found", "range not available");
        } else {
            df_stored_task_touch(t);
            send_body(srv, req, t, 206, "Partial Content", off, len);
        }
    } else if (!df_stored_task_complete(t)) {
        send_status(srv, req, 404, "Not Found", "task not complete");
    } else {
        df_stored_task_touch(t);
        send_body(srv, req, t, 200, "OK", 0, size);
    }
    df_stored_task_unref(t);
    return true;
}

/* ---- lifecycle */

static void gencb(struct evhttp_request *req, void *arg)
{
    if (!df_upload_server_handle(arg, req))
        evhttp_send_error(req, HTTP_NOTFOUND, NULL);
}

int df_upload_server_new(struct event_base *base, struct evhttp *http, df_store_t *store,
                         df_upload_server_t **out)
{
    df_upload_server_t *srv = calloc(1, sizeof(*srv));

    if (!srv)
        return -ENOMEM;
    srv->base = base;
    srv->store = store;
    df_rate_limit_init(&srv->limit, 0, df_now_ms());
    if (http) {
        srv->http = http;
        evhttp_set_gencb(http, gencb, srv);
    }
    *out = srv;
    return 0;
}

void df_upload_server_free(df_upload_server_t *srv)
{
    if (!srv)
        return;
    if (srv->http)
        evhttp_set_gencb(srv->http, NULL, NULL);
    while (srv->replies) {
        reply_t *r = srv->replies;

        evhttp_connection_set_closecb(r->evcon, NULL, NULL);
        evhttp_request_set_on_complete_cb(r->req, NULL, NULL);
        if (r->paced) {
            /* Mid-body with nobody left to feed it: the connection must
             * go (this frees the request too). */
            evhttp_connection_free(r->evcon);
        }
        /* Unpaced: everything is queued with its own fd; evhttp finishes. */
        reply_release(r);
    }
    free(srv);
}

void df_upload_server_set_rate_limit(df_upload_server_t *srv, uint64_t bytes_per_sec)
{
    srv->limit_bps = bytes_per_sec;
    df_rate_limit_set_rate(&srv->limit, bytes_per_sec, df_now_ms());
}

void df_upload_server_stats(const df_upload_server_t *srv, df_upload_stats_t *out)
{
    *out = srv->stats;
}
