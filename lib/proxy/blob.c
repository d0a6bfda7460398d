/*
 * The P2P path of the mirror: a blob GET served from a streaming download
 * of the peer (df_peer_download with stream and no output).
 *
 *   CHECK   HEAD on the blob at the registry with the client's own headers
 *           (its Authorization): the P2P cache is shared by every client of
 *           this host, so each one must prove it may read the blob.  2xx or
 *           3xx: go on.  Anything else (401 with its Bearer challenge, 403,
 *           404, 5xx, no answer): the client's request is relayed directly,
 *           so it gets the registry's own answer, body and all.
 *   P2P     the download runs with the client's Authorization (the seed
 *           fetches with it; the engine follows redirects to storage) and
 *           the digest from the path, so the whole blob is verified.  The
 *           reply (200, or 206 for a Range) starts when the first requested
 *           byte is readable, with Content-Length and Docker-Content-Digest;
 *           bytes go out as the verified prefix grows, read with pread from
 *           a dup of the download's fd, at most DF_PROXY_CONN_BUFFER queued
 *           per connection.
 *
 * Sharing: a request for a blob whose download is already running on this
 * daemon (same digest) attaches to that flight after its own access check,
 * and reads the same verified prefix from its own position; so N clients
 * pulling one layer at once cost one download (proxy_internal.h).
 *
 * Integrity: the last byte of the blob is held back until the download
 * ended verified, so a client never receives a complete wrong blob.  A
 * download that fails before the reply started (a full disk, no source) is
 * relayed directly instead (fallback); one that fails after has the rest of
 * the blob fetched from the registry with a Range request and checked whole
 * (resume.c), or, where that cannot be checked, its connection closed (the
 * client sees a short body).
 */
#include "proxy/proxy_internal.h"

#include "piece/range.h"
#include "proxy/registry.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static void go_direct(xch_t *x, bool fallback)
{
    df__proxy_blob_detach(x);
    if (fallback) {
        x->px->stats.fallbacks++;
        DF_LOG_W("mirror: %s: P2P failed before the reply; relaying it from the registry", x->url);
    }
    if (df__proxy_direct_start(x) < 0) {
        x->state = XS_DONE;
        df__proxy_send_error(x, 502, "cannot reach the registry");
    }
}

/* ---- flights: one P2P download shared by the requests for the same blob */

static void flight_unlist(flight_t *f)
{
    df_proxy_t *px = f->px;

    if (!f->listed)
        return;
    if (f->prev)
        f->prev->next = f->next;
    else
        px->flights = f->next;
    if (f->next)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
    f->listed = false;
    px->nflights--;
}

static void flight_free(flight_t *f)
{
    flight_unlist(f);
    if (f->fd >= 0)
        close(f->fd);
    free(f);
}

static void flight_unref(flight_t *f)
{
    if (--f->refs == 0)
        flight_free(f);
}

void df__proxy_blob_detach(xch_t *x)
{
    flight_t *f = x->fl;

    if (!f)
        return;
    if (x->fprev)
        x->fprev->fnext = x->fnext;
    else
        f->waiters = x->fnext;
    if (x->fnext)
        x->fnext->fprev = x->fprev;
    x->fprev = x->fnext = NULL;
    x->fl = NULL;
    flight_unref(f);
}

static void attach(xch_t *x, flight_t *f)
{
    x->fl = f;
    f->refs++;
    x->fnext = f->waiters;
    x->fprev = NULL;
    if (f->waiters)
        f->waiters->fprev = x;
    f->waiters = x;
}

void df__proxy_flights_free(df_proxy_t *px)
{
    while (px->flights) {
        flight_t *f = px->flights;
        /* Exchanges are gone by now (df_proxy_free frees them first). */
        flight_free(f);
    }
}

static void kick_all(flight_t *f)
{
    for (xch_t *x = f->waiters; x; x = x->fnext)
        if (x->req)
            df__proxy_kick(x);
}

static void dl_progress(const df_progress_t *p, void *arg)
{
    flight_t *f = arg;

    if (f->fd < 0 && p->fd >= 0)
        f->fd = fcntl(p->fd, F_DUPFD_CLOEXEC, 0); /* -1 on failure: replies wait, then fall back */
    if (p->length)
        f->length = p->length;
    if (p->contiguous > f->contiguous)
        f->contiguous = p->contiguous;
    kick_all(f);
}

static void dl_done(const df_download_result_t *res, void *arg)
{
    flight_t *f = arg;

    f->running = false;
    f->status = res->status;
    if (res->status == 0) {
        f->length = res->length;
        f->contiguous = res->length;
    } else {
        DF_LOG_W("mirror: P2P download of %s failed: %s", f->key,
                 res->reason[0] ? res->reason : df_strerror(res->status));
    }
    /* Finished: the next request for this blob starts afresh (from the
     * store when it succeeded, or a new try when it failed). */
    flight_unlist(f);
    kick_all(f);
    flight_unref(f); /* the download's reference */
}

static flight_t *find_flight(df_proxy_t *px, const char *key)
{
    for (flight_t *f = px->flights; f; f = f->next)
        if (f->running && f->shareable && strcmp(f->key, key) == 0)
            return f;
    return NULL;
}

static void start_download(xch_t *x)
{
    const char *hdrs[2] = {x->auth[0] ? x->auth : NULL, NULL};
    const char *key = x->digest[0] ? x->digest : x->url;
    df_proxy_t *px = x->px;
    df_download_req_t r = {0};
    flight_t *f;
    int rc;

    x->state = XS_P2P;
    f = find_flight(px, key);
    if (f) {
        /* This client passed its own access check; the bytes are the same
         * blob (the digest is verified), so it rides along. */
        px->stats.shared++;
        attach(x, f);
        df__proxy_kick(x);
        return;
    }
    f = calloc(1, sizeof(*f));
    if (!f) {
        go_direct(x, true);
        return;
    }
    f->px = px;
    f->fd = -1;
    f->running = true;
    f->refs = 1; /* the download's */
    /* Every running flight is listed (df_proxy_free frees them); only
     * those with a whole key, within the cap, are found by others. */
    f->shareable = df_strlcpy(f->key, key, sizeof(f->key)) == 0 && px->nflights < DF_PROXY_FLIGHTS_MAX;
    f->next = px->flights;
    if (px->flights)
        px->flights->prev = f;
    px->flights = f;
    f->listed = true;
    px->nflights++;
    /* The task's identity is the registry module's rule, which the
     * supernode's preheat uses too: a preheated blob is this very task. */
    df_registry_blob_task(&r, x->url, x->digest[0] ? x->digest : NULL);
    r.stream = true;
    r.headers = hdrs;
    r.call_system = "dfdaemon-mirror";
    r.insecure = x->insecure; /* the upstream's TLS settings for back-source and the seed */
    r.ca_file = x->ca_file;
    rc = df_peer_download(px->peer, &r, dl_progress, dl_done, f);
    if (rc < 0) {
        DF_LOG_W("mirror: cannot start the P2P download of %s: %s", x->url, df_strerror(rc));
        flight_free(f);
        go_direct(x, true);
        return;
    }
    attach(x, f);
}

static void check_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    xch_t *x = arg;

    x->up = NULL;
    if (res->status == 0 && res->http_code >= 200 && res->http_code < 400) {
        start_download(x);
        return;
    }
    if (res->status == 0 && (res->http_code == 401 || res->http_code == 403 || res->http_code == 404))
        x->px->stats.denied++;
    else
        DF_LOG_W("mirror: access check of %s: %s", x->url,
                 res->status < 0 ? (res->error ? res->error : df_strerror(res->status)) : "unexpected status");
    /* The client's own request, relayed: it gets the registry's answer. */
    go_direct(x, false);
}

void df__proxy_blob_start(xch_t *x)
{
    static const char *const skip[] = {"Range", "If-Range", NULL};
    static const df_http_cbs_t cbs = {.on_done = check_done};
    struct evkeyvalq *in = evhttp_request_get_input_headers(x->req);
    const char *auth = evhttp_find_header(in, "Authorization");
    const char *range = evhttp_find_header(in, "Range");
    df_http_opts_t o = {0};
    int rc;

    if (range && df_strlcpy(x->range_buf, range, sizeof(x->range_buf)) < 0)
        x->range_buf[0] = '\0'; /* too long to be a range we serve: ignored, as RFC 9110 allows */
    if (auth && snprintf(x->auth, sizeof(x->auth), "Authorization: %s", auth) >= (int)sizeof(x->auth)) {
        go_direct(x, false);
        return;
    }
    x->hdrs = df__proxy_request_headers(x->req, skip);
    if (!x->hdrs) {
        df__proxy_send_error(x, 503, "out of memory");
        return;
    }
    o.method = "HEAD";
    o.url = x->url;
    o.headers = (const char *const *)x->hdrs;
    o.timeout_ms = 30000;
    o.insecure = x->insecure;
    o.ca_file = x->ca_file;
    x->state = XS_CHECK;
    rc = df_http_start(x->px->http, &o, &cbs, x, &x->up);
    if (rc < 0) {
        x->up = NULL;
        go_direct(x, false);
    }
}

/* Reply line and headers, once the first requested byte is readable. */
static void start_reply(xch_t *x, bool done_ok)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(x->req);
    const flight_t *f = x->fl;
    uint64_t off = 0, len = f->length;
    bool partial = false;
    char num[96];
    int rc;

    if (x->range_buf[0] && f->length > 0) {
        rc = df_range_parse(x->range_buf, f->length, &off, &len);
        if (rc == -ERANGE) {
            snprintf(num, sizeof(num), "bytes */%" PRIu64, f->length);
            evhttp_add_header(h, "Content-Range", num);
            x->state = XS_DONE;
            df__proxy_send_error(x, 416, "range not satisfiable");
            return;
        }
        partial = rc == 0;
        if (!partial) {
            off = 0;
            len = f->length;
        }
    }
    if (!done_ok && f->contiguous <= off)
        return; /* nothing to send yet */
    snprintf(num, sizeof(num), "%" PRIu64, len);
    evhttp_add_header(h, "Content-Length", num);
    evhttp_add_header(h, "Content-Type", "application/octet-stream");
    evhttp_add_header(h, "Accept-Ranges", "bytes");
    evhttp_add_header(h, "Docker-Distribution-Api-Version", "registry/2.0");
    if (x->digest[0]) {
        char etag[96];
        evhttp_add_header(h, "Docker-Content-Digest", x->digest);
        snprintf(etag, sizeof(etag), "\"%s\"", x->digest);
        evhttp_add_header(h, "Etag", etag);
    }
    if (partial) {
        snprintf(num, sizeof(num), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, off, off + len - 1, f->length);
        evhttp_add_header(h, "Content-Range", num);
    }
    x->pos = off;
    x->end = off + len;
    x->replying = true;
    x->px->stats.p2p++;
    if (partial)
        x->px->stats.ranges++;
    evhttp_send_reply_start(x->req, partial ? 206 : 200, NULL);
}

void df__proxy_blob_pump(xch_t *x)
{
    flight_t *f = x->fl;
    bool done_ok;
    uint64_t limit;

    if (x->state != XS_P2P || !x->req || !f)
        return;
    done_ok = !f->running && f->status == 0;
    if (!f->running && f->status < 0) {
        if (x->replying && df__proxy_resume_possible(x))
            df__proxy_resume_start(x, df_strerror(f->status));
        else if (x->replying)
            df__proxy_abort(x); /* never let a short or wrong body look complete */
        else
            go_direct(x, true);
        return;
    }
    if (f->fd < 0 && !(done_ok && f->length == 0)) {
        if (done_ok && !x->replying)
            go_direct(x, true); /* verified, but we never got its file */
        return;
    }
    if (!x->replying) {
        if (f->length == 0 && !done_ok)
            return;
        start_reply(x, done_ok);
        if (!x->replying || x->state != XS_P2P || !x->req)
            return;
    }
    /* The blob's last byte waits for the verdict on the whole blob. */
    limit = done_ok ? f->length : DF_MIN(f->contiguous, f->length - 1);
    limit = DF_MIN(limit, x->end);
    while (x->pos < limit && df__proxy_queued(x) < DF_PROXY_CONN_BUFFER) {
        size_t n = (size_t)DF_MIN(limit - x->pos, (uint64_t)DF_PROXY_READ_CHUNK);
        struct evbuffer *buf = evbuffer_new();
        struct evbuffer_iovec v;
        ssize_t got = -1;

        if (buf && evbuffer_reserve_space(buf, (ev_ssize_t)n, &v, 1) == 1) {
            got = pread(f->fd, v.iov_base, n, (off_t)x->pos);
            if (got > 0) {
                v.iov_len = (size_t)got;
                evbuffer_commit_space(buf, &v, 1);
            }
        }
        if (got <= 0) {
            DF_LOG_W("mirror: reading the download of %s at %" PRIu64 " failed", x->url, x->pos);
            if (buf)
                evbuffer_free(buf);
            if (df__proxy_resume_possible(x))
                df__proxy_resume_start(x, "reading the download's file failed");
            else
                df__proxy_abort(x);
            return;
        }
        x->pos += (uint64_t)got;
        x->px->stats.p2p_bytes += (uint64_t)got;
        x->writing = true;
        evhttp_send_reply_chunk_with_cb(x->req, buf, df__proxy_on_written, x);
        evbuffer_free(buf);
    }
    if (x->pos == x->end && done_ok) {
        x->state = XS_DONE;
        evhttp_send_reply_end(x->req); /* on_complete ends the client side once written */
    }
}
