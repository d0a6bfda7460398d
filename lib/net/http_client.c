/*
 * Outbound HTTP over libcurl's multi_socket API on a libevent loop.
 *
 * Design: one CURLM per df_http_t.  curl tells us which sockets to watch
 * (socket_cb) and when to wake (timer_cb); libevent tells curl when a socket
 * is ready (event_cb).  Completed transfers are collected by check_done(),
 * which runs each request's on_done and frees it.  Everything runs on the
 * loop's thread; no locking.
 *
 * Header handling: raw response header lines are kept in a capped buffer that
 * is reset at every status line, so after redirects and 100-continue it holds
 * only the final response's headers.  on_headers fires at the blank line that
 * ends a final response's header block (not a 1xx, not a followed redirect).
 *
 * libcurl forbids adding or removing easy handles from inside its callbacks,
 * but our on_headers/on_data callbacks run there and may start or cancel
 * requests.  Such adds and frees are deferred to a libevent callback
 * (run_deferred) that runs right after, outside curl.
 */
#include "net/http_client.h"

#include <curl/curl.h>
#include <event2/event.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEADER_CAP (64u * 1024u)
#define DEFAULT_BODY_CAP (1u * 1024u * 1024u)

struct df_http {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    df_http_req_t *reqs;        /* every live request, for df_http_free */
    int in_check;               /* check_done() re-entrancy guard */
    int in_curl_cb;             /* >0 while inside a curl callback */
    struct event *deferred;     /* runs deferred adds and frees, outside curl */
};

struct df_http_req {
    df_http_t *http;
    CURL *easy;
    df_http_cbs_t cbs;
    void *arg;
    struct curl_slist *hdrs;
    df_buf_t headers;           /* raw header lines of the current response */
    df_buf_t body;              /* buffered mode only */
    bool streaming;
    bool headers_fired;
    bool follow;
    bool paused;                /* by the caller (on_data returned DF_EAGAIN) */
    bool yielded;               /* by us, until the next turn of the loop */
    uint64_t burst;             /* bytes delivered since the last yield */
    struct event *yield_ev;
    bool cancelled;             /* no more callbacks; freed by run_deferred */
    bool pending_add;           /* started inside a curl callback; added later */
    int abort_rc;               /* set when a callback aborted */
    uint64_t bytes;
    char value[1024];           /* df_http_header() result storage */
    char errbuf[CURL_ERROR_SIZE];
    df_http_req_t *prev, *next;
};

typedef struct {
    struct event *ev;
} sock_ctx_t;

static void check_done(df_http_t *http);
static void req_free(df_http_req_t *req);

static void run_deferred(evutil_socket_t fd, short what, void *arg)
{
    df_http_t *http = arg;
    df_http_req_t *req, *next;
    int running = 0;

    for (req = http->reqs; req; req = next) {
        next = req->next;
        if (req->cancelled) {
            req_free(req);
        } else if (req->pending_add) {
            req->pending_add = false;
            if (curl_multi_add_handle(http->multi, req->easy) != CURLM_OK) {
                req->abort_rc = -EIO;
                /* Report the failure through on_done like any other. */
                if (req->cbs.on_done) {
                    df_http_result_t res = {.status = -EIO, .error = "cannot start transfer"};
                    req->cbs.on_done(req, &res, req->arg);
                }
                req_free(req);
            }
        }
    }
    curl_multi_socket_action(http->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(http);
}

static void defer(df_http_t *http)
{
    event_active(http->deferred, EV_TIMEOUT, 0);
}

static void event_cb(evutil_socket_t fd, short what, void *arg)
{
    df_http_t *http = arg;
    int running = 0, flags = 0;

    if (what & EV_READ)
        flags |= CURL_CSELECT_IN;
    if (what & EV_WRITE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(http->multi, fd, flags, &running);
    check_done(http);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
    df_http_t *http = arg;
    int running = 0;

    curl_multi_socket_action(http->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(http);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    df_http_t *http = userp;
    struct timeval tv;

    if (timeout_ms < 0) {
        evtimer_del(http->timer);
        return 0;
    }
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    evtimer_add(http->timer, &tv);
    return 0;
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    df_http_t *http = userp;
    sock_ctx_t *ctx = socketp;
    short kind;

    if (what == CURL_POLL_REMOVE) {
        if (ctx) {
            event_free(ctx->ev);
            free(ctx);
            curl_multi_assign(http->multi, s, NULL);
        }
        return 0;
    }
    kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (!ctx) {
        ctx = calloc(1, sizeof(*ctx));
        if (!ctx)
            return -1;
        curl_multi_assign(http->multi, s, ctx);
    } else {
        event_free(ctx->ev);
    }
    ctx->ev = event_new(http->base, s, kind, event_cb, http);
    if (!ctx->ev)
        return -1;
    event_add(ctx->ev, NULL);
    return 0;
}

/* libcurl (and through it OpenSSL and every library it pulls in) is set up
 * at the first request, not when the client is made: a dfdaemon that has
 * not downloaded anything yet does not pay their memory (docs/BENCHMARKS.md,
 * "Memory"). */
static int ensure_multi(df_http_t *http)
{
    static bool global_done;

    if (http->multi)
        return 0;
    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return -ENOMEM;
        global_done = true;
    }
    http->multi = curl_multi_init();
    if (!http->multi)
        return -ENOMEM;
    curl_multi_setopt(http->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(http->multi, CURLMOPT_SOCKETDATA, http);
    curl_multi_setopt(http->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(http->multi, CURLMOPT_TIMERDATA, http);
    /* Enough cached connections for kept-alive links to many peers. */
    curl_multi_setopt(http->multi, CURLMOPT_MAXCONNECTS, 256L);
    return 0;
}

int df_http_new(struct event_base *base, df_http_t **out)
{
    df_http_t *http;

    http = calloc(1, sizeof(*http));
    if (!http)
        return -ENOMEM;
    http->base = base;
    http->timer = evtimer_new(base, timer_event_cb, http);
    http->deferred = event_new(base, -1, 0, run_deferred, http);
    if (!http->timer || !http->deferred) {
        df_http_free(http);
        return -ENOMEM;
    }
    *out = http;
    return 0;
}

static void req_unlink(df_http_req_t *req)
{
    if (req->prev)
        req->prev->next = req->next;
    else if (req->http->reqs == req)
        req->http->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

static void req_free(df_http_req_t *req)
{
    if (!req)
        return;
    req_unlink(req);
    if (req->easy) {
        if (!req->pending_add)
            curl_multi_remove_handle(req->http->multi, req->easy);
        curl_easy_cleanup(req->easy);
    }
    if (req->yield_ev)
        event_free(req->yield_ev);
    curl_slist_free_all(req->hdrs);
    df_buf_free(&req->headers);
    df_buf_free(&req->body);
    free(req);
}

void df_http_free(df_http_t *http)
{
    if (!http)
        return;
    while (http->reqs)
        req_free(http->reqs);
    if (http->multi)
        curl_multi_cleanup(http->multi);
    if (http->timer)
        event_free(http->timer);
    if (http->deferred)
        event_free(http->deferred);
    free(http);
}

static bool is_followed_redirect(const df_http_req_t *req, long code)
{
    return req->follow && (code == 301 || code == 302 || code == 303 || code == 307 || code == 308);
}

static int fire_headers(df_http_req_t *req)
{
    long code = 0;
    int rc = 0;

    if (req->headers_fired)
        return 0;
    req->headers_fired = true;
    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &code);
    if (req->cbs.on_headers)
        rc = req->cbs.on_headers(req, code, req->arg);
    if (rc < 0)
        req->abort_rc = rc;
    return rc;
}

static size_t header_line(df_http_req_t *req, char *data, size_t len)
{
    long code = 0;

    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0)
        df_buf_reset(&req->headers);
    if (len <= 2 && (data[0] == '\r' || data[0] == '\n')) {
        curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200 && !is_followed_redirect(req, code) && fire_headers(req) < 0)
            return 0;
        return len;
    }
    if (df_buf_append(&req->headers, data, len) < 0) {
        req->abort_rc = DF_ETOOBIG;
        return 0;
    }
    return len;
}

static size_t header_cb(char *data, size_t size, size_t n, void *userp)
{
    df_http_req_t *req = userp;
    size_t ret;

    if (req->cancelled)
        return 0;
    req->http->in_curl_cb++;
    ret = header_line(req, data, size * n);
    req->http->in_curl_cb--;
    return ret;
}

static void yield_cb(evutil_socket_t fd, short what, void *arg)
{
    df_http_req_t *req = arg;

    req->yielded = false;
    if (req->cancelled || req->paused)
        return; /* df_http_resume unpauses later */
    curl_easy_pause(req->easy, CURLPAUSE_CONT);
}

/* Fairness.  curl keeps reading a socket while it stays readable (up to 100
 * buffers per wake-up), so a fast stream -- the seed reading a local origin
 * -- could hold the loop for tens of megabytes while every upload and API
 * request waits.  After DF_HTTP_YIELD_BYTES a streaming transfer pauses (curl keeps
 * the chunk and hands it over again) and continues from a zero timer, which
 * runs only after the loop has polled every other socket once. */
static bool yield_now(df_http_req_t *req)
{
    static const struct timeval zero = {0, 0};

    if (req->burst < DF_HTTP_YIELD_BYTES)
        return false;
    if (!req->yield_ev && !(req->yield_ev = evtimer_new(req->http->base, yield_cb, req)))
        return false; /* no memory: just go on */
    req->burst = 0;
    req->yielded = true;
    evtimer_add(req->yield_ev, &zero);
    return true;
}

static size_t body_chunk(df_http_req_t *req, char *data, size_t len)
{
    int rc;

    if (!req->headers_fired && fire_headers(req) < 0)
        return 0;
    if (req->cancelled)
        return 0;
    if (req->streaming) {
        if (yield_now(req))
            return CURL_WRITEFUNC_PAUSE;
        rc = req->cbs.on_data(req, data, len, req->arg);
        if (rc == DF_EAGAIN) {
            req->paused = true;
            return CURL_WRITEFUNC_PAUSE;
        }
        if (rc < 0) {
            req->abort_rc = rc;
            return 0;
        }
        req->burst += len;
    } else if (df_buf_append(&req->body, data, len) < 0) {
        req->abort_rc = DF_ETOOBIG;
        return 0;
    }
    req->bytes += len;
    return len;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp)
{
    df_http_req_t *req = userp;
    size_t ret;

    if (req->cancelled)
        return 0;
    req->http->in_curl_cb++;
    ret = body_chunk(req, data, size * n);
    req->http->in_curl_cb--;
    return ret;
}

static int map_curl_error(CURLcode cc)
{
    switch (cc) {
    case CURLE_OPERATION_TIMEDOUT:
        return DF_ETIMEOUT;
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -EHOSTUNREACH;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return -EINVAL;
    case CURLE_TOO_MANY_REDIRECTS:
        return DF_EORIGIN;
    default:
        return -EIO;
    }
}

static void check_done(df_http_t *http)
{
    CURLMsg *msg;
    int left;

    if (http->in_check || !http->multi)
        return;
    http->in_check = 1;
    while ((msg = curl_multi_info_read(http->multi, &left))) {
        df_http_req_t *req = NULL;
        df_http_result_t res;
        CURLcode cc;

        if (msg->msg != CURLMSG_DONE)
            continue;
        cc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&req);
        if (!req || req->cancelled)
            continue;
        curl_multi_remove_handle(http->multi, req->easy);
        memset(&res, 0, sizeof(res));
        curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &res.http_code);
        if (req->abort_rc < 0) {
            res.status = req->abort_rc;
            res.error = df_strerror(req->abort_rc);
        } else if (cc != CURLE_OK) {
            res.status = map_curl_error(cc);
            res.error = req->errbuf[0] ? req->errbuf : curl_easy_strerror(cc);
        } else {
            if (!req->headers_fired)
                fire_headers(req);
            if (req->abort_rc < 0) {
                res.status = req->abort_rc;
                res.error = df_strerror(req->abort_rc);
            }
        }
        res.body = req->streaming ? NULL : &req->body;
        res.bytes = req->bytes;
        if (req->cbs.on_done)
            req->cbs.on_done(req, &res, req->arg);
        req_free(req);
    }
    http->in_check = 0;
}

int df_http_start(df_http_t *http, const df_http_opts_t *opts, const df_http_cbs_t *cbs, void *arg,
                  df_http_req_t **out)
{
    df_http_req_t *req;
    const char *method = opts->method ? opts->method : "GET";
    char range[64];
    int rc = -ENOMEM;

    if (!opts->url)
        return -EINVAL;
    rc = ensure_multi(http);
    if (rc < 0)
        return rc;
    rc = -ENOMEM;
    req = calloc(1, sizeof(*req));
    if (!req)
        return -ENOMEM;
    req->http = http;
    req->cbs = *cbs;
    req->arg = arg;
    req->streaming = cbs->on_data != NULL;
    req->follow = opts->follow_redirects;
    df_buf_init(&req->headers, HEADER_CAP);
    df_buf_init(&req->body, opts->max_body ? opts->max_body : DEFAULT_BODY_CAP);
    req->easy = curl_easy_init();
    if (!req->easy)
        goto fail;

    for (const char *const *h = opts->headers; h && *h; h++) {
        struct curl_slist *n = curl_slist_append(req->hdrs, *h);
        if (!n)
            goto fail;
        req->hdrs = n;
    }
    /* We never want curl's "Expect: 100-continue" round trip for our small bodies. */
    if (opts->body) {
        struct curl_slist *n = curl_slist_append(req->hdrs, "Expect:");
        if (!n)
            goto fail;
        req->hdrs = n;
    }

    curl_easy_setopt(req->easy, CURLOPT_URL, opts->url);
    curl_easy_setopt(req->easy, CURLOPT_PRIVATE, req);
    curl_easy_setopt(req->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(req->easy, CURLOPT_ERRORBUFFER, req->errbuf);
    curl_easy_setopt(req->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(req->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(req->easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(req->easy, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(req->easy, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(req->easy, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_BUFFERSIZE, 256L * 1024L);
    curl_easy_setopt(req->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(req->easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(req->easy, CURLOPT_USERAGENT, "dfly/" DF_VERSION_STRING);
    curl_easy_setopt(req->easy, CURLOPT_CONNECTTIMEOUT_MS,
                     opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000L);
    if (opts->timeout_ms > 0)
        curl_easy_setopt(req->easy, CURLOPT_TIMEOUT_MS, opts->timeout_ms);
    if (opts->stall_timeout_ms > 0) {
        curl_easy_setopt(req->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(req->easy, CURLOPT_LOW_SPEED_TIME,
                         opts->stall_timeout_ms >= 1000 ? opts->stall_timeout_ms / 1000 : 1L);
    }
    if (opts->follow_redirects) {
        curl_easy_setopt(req->easy, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(req->easy, CURLOPT_MAXREDIRS, 5L);
    }
    if (opts->insecure) {
        curl_easy_setopt(req->easy, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(req->easy, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (opts->ca_pem && opts->ca_pem_len) {
        struct curl_blob blob = {.data = (void *)opts->ca_pem, .len = opts->ca_pem_len,
                                 .flags = CURL_BLOB_COPY};
        curl_easy_setopt(req->easy, CURLOPT_CAINFO_BLOB, &blob);
    } else if (opts->ca_file) {
        curl_easy_setopt(req->easy, CURLOPT_CAINFO, opts->ca_file);
    }
    if (opts->has_range && opts->range_len > 0) {
        snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)opts->range_off,
                 (unsigned long long)(opts->range_off + opts->range_len - 1));
        curl_easy_setopt(req->easy, CURLOPT_RANGE, range);
    } else if (opts->has_range_from) {
        snprintf(range, sizeof(range), "%llu-", (unsigned long long)opts->range_from);
        curl_easy_setopt(req->easy, CURLOPT_RANGE, range);
    }
    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(req->easy, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(req->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)opts->body_len);
        curl_easy_setopt(req->easy, CURLOPT_COPYPOSTFIELDS, opts->body ? (const char *)opts->body : "");
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(req->easy, CURLOPT_CUSTOMREQUEST, method);
        if (opts->body) {
            curl_easy_setopt(req->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)opts->body_len);
            curl_easy_setopt(req->easy, CURLOPT_COPYPOSTFIELDS, (const char *)opts->body);
        }
    }
    if (req->hdrs)
        curl_easy_setopt(req->easy, CURLOPT_HTTPHEADER, req->hdrs);

    if (http->in_curl_cb) {
        req->pending_add = true;
        defer(http);
    } else if (curl_multi_add_handle(http->multi, req->easy) != CURLM_OK) {
        rc = -EIO;
        goto fail;
    }
    req->next = http->reqs;
    if (http->reqs)
        http->reqs->prev = req;
    http->reqs = req;
    if (out)
        *out = req;
    return 0;
fail:
    req_free(req);
    return rc;
}

void df_http_cancel(df_http_req_t *req)
{
    if (!req)
        return;
    if (req->http->in_curl_cb || req->http->in_check) {
        /* Inside a curl callback (or between two on_done calls while curl
         * holds messages): free it from run_deferred instead. */
        req->cancelled = true;
        memset(&req->cbs, 0, sizeof(req->cbs));
        if (!req->pending_add)
            curl_easy_pause(req->easy, CURLPAUSE_ALL);
        defer(req->http);
        return;
    }
    req_free(req);
}

void df_http_resume(df_http_req_t *req)
{
    if (!req || !req->paused || req->cancelled)
        return;
    req->paused = false;
    if (req->yielded)
        return; /* yield_cb unpauses */
    /* May deliver buffered data synchronously through on_data; curl then
     * schedules its own timer for the rest. */
    curl_easy_pause(req->easy, CURLPAUSE_CONT);
}

const char *df_http_header(const df_http_req_t *req, const char *name)
{
    df_http_req_t *r = (df_http_req_t *)req;
    const char *p, *end, *found = NULL;
    size_t nlen = strlen(name), vlen = 0;

    if (!req->headers.data)
        return NULL;
    p = req->headers.data;
    end = p + req->headers.len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *lend = eol ? eol : end;
        if ((size_t)(lend - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0) {
            const char *v = p + nlen + 1, *ve = lend;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            found = v;
            vlen = (size_t)(ve - v);
        }
        p = eol ? eol + 1 : end;
    }
    if (!found || vlen >= sizeof(r->value))
        return NULL;
    memcpy(r->value, found, vlen);
    r->value[vlen] = '\0';
    return r->value;
}

int df_http_header_foreach(const df_http_req_t *req, df_http_header_cb cb, void *arg)
{
    const char *p, *end;

    if (!req->headers.data)
        return 0;
    p = req->headers.data;
    end = p + req->headers.len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *lend = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(lend - p));

        /* Skip the status line (no colon before a space), folded lines and
         * anything without a name. */
        if (colon && colon > p && *p != ' ' && *p != '\t' && !memchr(p, ' ', (size_t)(colon - p))) {
            const char *v = colon + 1, *ve = lend;
            int rc;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            rc = cb(p, (size_t)(colon - p), v, (size_t)(ve - v), arg);
            if (rc < 0)
                return rc;
        }
        p = eol ? eol + 1 : end;
    }
    return 0;
}

const char *df_http_effective_url(const df_http_req_t *req)
{
    char *url = NULL;
    curl_easy_getinfo(req->easy, CURLINFO_EFFECTIVE_URL, &url);
    return url;
}

const char *df_http_local_ip(const df_http_req_t *req)
{
    char *ip = NULL;
    curl_easy_getinfo(req->easy, CURLINFO_LOCAL_IP, &ip);
    return ip;
}
