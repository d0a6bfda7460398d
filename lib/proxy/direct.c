/*
 * Direct relay: the client's request goes to the registry (the client's
 * method, target minus ?ns=, headers minus hop-by-hop ones, body), and the
 * registry's answer comes back as it arrives: status and headers at once,
 * then the body chunk by chunk.  Redirects are not followed here: a 307 to
 * a storage URL goes back to the client, which follows it itself, as it
 * would without a mirror.
 *
 * Backpressure: when the client connection holds more than
 * DF_PROXY_CONN_BUFFER queued bytes, the curl transfer is paused (on_data
 * returns DF_EAGAIN, curl keeps the chunk) and resumed from the pump once
 * the connection drained.  So a slow client costs at most about that much
 * memory, whatever the blob size.
 */
#include "proxy/proxy_internal.h"

#include <event2/buffer.h>

#include <errno.h>
#include <string.h>

void df__proxy_direct_pump(xch_t *x)
{
    if (x->up && x->up_paused && df__proxy_queued(x) < DF_PROXY_CONN_BUFFER) {
        x->up_paused = false;
        df_http_resume(x->up);
    }
}

static int up_headers(df_http_req_t *req, long code, void *arg)
{
    xch_t *x = arg;

    if (!x->req)
        return DF_ECANCELED;
    df__proxy_copy_response_headers(req, evhttp_request_get_output_headers(x->req));
    x->replying = true;
    evhttp_send_reply_start(x->req, (int)code, NULL);
    return 0;
}

static int up_data(df_http_req_t *req, const void *data, size_t len, void *arg)
{
    xch_t *x = arg;
    if (!x->req)
        return DF_ECANCELED;
    if (df__proxy_queued(x) >= DF_PROXY_CONN_BUFFER) {
        x->up_paused = true;
        x->writing = true; /* on_written resumes us */
        return DF_EAGAIN;
    }
    return df__proxy_send_chunk(x, data, len);
}

static void up_done(df_http_req_t *req, const df_http_result_t *res, void *arg)
{
    xch_t *x = arg;

    x->up = NULL; /* freed by the client after we return */
    if (!x->req)
        return;
    if (res->status < 0) {
        DF_LOG_W("mirror: %s: %s", x->url, res->error ? res->error : df_strerror(res->status));
        if (x->replying)
            df__proxy_abort(x); /* a partial body must not look complete */
        else
            df__proxy_send_error(x, 502, "the registry did not answer");
        return;
    }
    if (!x->replying) {
        df__proxy_send_error(x, 502, "the registry did not answer");
        return;
    }
    evhttp_send_reply_end(x->req); /* on_complete ends the client side once written */
}

int df__proxy_direct_start(xch_t *x)
{
    static const df_http_cbs_t cbs = {.on_headers = up_headers, .on_data = up_data, .on_done = up_done};
    struct evbuffer *in = evhttp_request_get_input_buffer(x->req);
    df_http_opts_t o = {0};
    size_t blen = in ? evbuffer_get_length(in) : 0;
    int rc;

    if (!x->hdrs) {
        x->hdrs = df__proxy_request_headers(x->req, NULL);
        if (!x->hdrs)
            return -ENOMEM;
    }
    switch (evhttp_request_get_command(x->req)) {
    case EVHTTP_REQ_HEAD: o.method = "HEAD"; break;
    case EVHTTP_REQ_POST: o.method = "POST"; break;
    case EVHTTP_REQ_PUT: o.method = "PUT"; break;
    case EVHTTP_REQ_PATCH: o.method = "PATCH"; break;
    case EVHTTP_REQ_DELETE: o.method = "DELETE"; break;
    case EVHTTP_REQ_OPTIONS: o.method = "OPTIONS"; break;
    default: o.method = "GET"; break;
    }
    o.url = x->url;
    o.headers = (const char *const *)x->hdrs;
    if (blen > 0) {
        o.body = evbuffer_pullup(in, -1);
        o.body_len = blen;
    }
    o.stall_timeout_ms = 60000;
    o.insecure = x->insecure;
    o.ca_file = x->ca_file;
    x->state = XS_DIRECT;
    x->px->stats.direct++;
    rc = df_http_start(x->px->http, &o, &cbs, x, &x->up);
    if (rc < 0) {
        x->up = NULL;
        x->state = XS_DONE;
    }
    return rc;
}
