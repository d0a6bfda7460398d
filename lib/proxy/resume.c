/*
 * Finishing a P2P reply from the registry.  The P2P download of a blob
 * failed (the piece store's disk is full, the file cannot be read back)
 * after the client got the reply line and a verified prefix [0, pos) of its
 * range.  Instead of cutting the connection, the rest comes from the
 * registry, and the blob is still checked whole:
 *
 *   HASH    the blob's bytes before pos are hashed back from the download's
 *           file (verified pieces), a few chunks per pump turn so the loop
 *           stays responsive;
 *   RANGE   GET of the blob with the client's own headers (its
 *           Authorization: the registry checks this client again) and
 *           Range: bytes=pos-, following redirects to storage.  Only a 206
 *           whose Content-Range is exactly "bytes pos-(len-1)/len" is used;
 *   STREAM  its body goes to the client as it comes, hashed, with the same
 *           backpressure as a relay; the blob's last byte is held until the
 *           whole blob matches the digest in the path.
 *
 * Anything else (no sha256 digest in the path, a reply that ends before the
 * blob does, another answer, a short body, a wrong digest) cuts the
 * connection as before: the client sees a short body, never a complete
 * wrong blob.
 */
#include "proxy/proxy_internal.h"

#include "piece/digest.h"


#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Prefix bytes hashed back per pump turn. */
#define RESUME_HASH_TURN (16u * DF_PROXY_READ_CHUNK)

bool df__proxy_resume_possible(const xch_t *x)
{
    const flight_t *f = x->fl;

    return f && f->fd >= 0 && f->length > 0 && x->replying && x->end == f->length && x->pos < x->end &&
           x->pos <= f->contiguous && strncmp(x->digest, "sha256:", 7) == 0;
}

void df__proxy_resume_start(xch_t *x, const char *why)
{
    DF_LOG_W("mirror: %s: P2P failed at byte %" PRIu64 " of %" PRIu64 " of the reply (%s); "
             "fetching the rest from the registry", x->url, x->pos, x->end, why);
    x->rs_len = x->fl->length;
    x->rs_hash = df_hasher_new(DF_DIGEST_SHA256);
    if (!x->rs_hash) {
        df__proxy_abort(x);
        return;
    }
    x->rs_hashed = 0;
    x->state = XS_RESUME;
    df__proxy_kick(x);
}

static int up_headers(df_http_req_t *req, long code, void *arg)
{
    xch_t *x = arg;
    const char *cr = df_http_header(req, "Content-Range");
    char want[96];

    if (!x->req)
        return DF_ECANCELED;
    snprintf(want, sizeof(want), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, x->pos, x->rs_len - 1, x->rs_len);
    if (code != 206 || !cr || strcmp(cr, want) != 0) {
        DF_LOG_W("mirror: %s: the registry answered the rest with HTTP %ld, Content-Range %s (want 206, %s)",
                 x->url, code, cr ? cr : "none", want);
        return -EPROTO;
    }
    return 0;
}

static int up_data(df_http_req_t *req, const void *data, size_t len, void *arg)
{
    xch_t *x = arg;
    size_t send;

    if (!x->req)
        return DF_ECANCELED;
    if (x->rs_held || len > x->rs_len - x->pos)
        return -EPROTO; /* more than the blob */
    if (df__proxy_queued(x) >= DF_PROXY_CONN_BUFFER) {
        x->up_paused = true;
        x->writing = true; /* on_written resumes us */
        return DF_EAGAIN;
    }
    df_hasher_update(x->rs_hash, data, len);
    send = len;
    if (x->pos + len == x->rs_len) {
        /* The blob's last byte waits for the digest. */
        x->rs_last = ((const unsigned char *)data)[len - 1];
        x->rs_held = true;
        send--;
    }
    if (send == 0)
        return 0;
    x->pos += send;
    return df__proxy_send_chunk(x, data, send);
}

static void up_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    xch_t *x = arg;
    df_digest_t want, got;

    x->up = NULL;
    if (!x->req)
        return;
    if (res->status < 0 || !x->rs_held) {
        DF_LOG_W("mirror: %s: the rest from the registry ended short (%s): connection cut", x->url,
                 res->status < 0 ? (res->error ? res->error : df_strerror(res->status)) : "short body");
        df__proxy_abort(x);
        return;
    }
    df_hasher_final(x->rs_hash, &got);
    if (df_digest_parse(x->digest, &want) < 0 || !df_digest_equal(&want, &got)) {
        DF_LOG_W("mirror: %s: the blob completed from the registry does not match %s: connection cut", x->url,
                 x->digest);
        df__proxy_abort(x);
        return;
    }
    if (df__proxy_send_chunk(x, &x->rs_last, 1) < 0) {
        df__proxy_abort(x);
        return;
    }
    x->pos++;
    x->px->stats.resumed++;
    x->state = XS_DONE;
    evhttp_send_reply_end(x->req); /* on_complete ends the client side once written */
}

static void start_rest(xch_t *x)
{
    static const df_http_cbs_t cbs = {.on_headers = up_headers, .on_data = up_data, .on_done = up_done};
    df_http_opts_t o = {0};

    o.url = x->url;
    o.headers = (const char *const *)x->hdrs; /* the client's, without its Range */
    o.has_range_from = true;
    o.range_from = x->pos;
    o.follow_redirects = true;
    o.stall_timeout_ms = 60000;
    o.insecure = x->insecure;
    o.ca_file = x->ca_file;
    x->rs_started = true;
    x->px->stats.direct++;
    if (df_http_start(x->px->http, &o, &cbs, x, &x->up) < 0) {
        x->up = NULL;
        DF_LOG_W("mirror: %s: cannot ask the registry for the rest: connection cut", x->url);
        df__proxy_abort(x);
    }
}

void df__proxy_resume_pump(xch_t *x)
{
    if (x->state != XS_RESUME || !x->req)
        return;
    if (!x->rs_started && x->rs_hashed < x->pos) {
        uint64_t stop = DF_MIN(x->pos, x->rs_hashed + RESUME_HASH_TURN);
        unsigned char chunk[64 * 1024];

        while (x->rs_hashed < stop) {
            size_t n = (size_t)DF_MIN(stop - x->rs_hashed, (uint64_t)sizeof(chunk));
            ssize_t got = pread(x->fl->fd, chunk, n, (off_t)x->rs_hashed);

            if (got <= 0) {
                DF_LOG_W("mirror: %s: reading back the bytes already sent failed: connection cut", x->url);
                df__proxy_abort(x);
                return;
            }
            df_hasher_update(x->rs_hash, chunk, (size_t)got);
            x->rs_hashed += (uint64_t)got;
        }
        df__proxy_kick(x);
        return;
    }
    if (!x->rs_started) {
        df__proxy_blob_detach(x); /* the download's file is no longer needed */
        start_rest(x);
        return;
    }
    if (x->up && x->up_paused && df__proxy_queued(x) < DF_PROXY_CONN_BUFFER) {
        x->up_paused = false;
        df_http_resume(x->up);
    }
}
