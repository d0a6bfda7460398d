/*
 * dfdaemon's control socket: dfget hands a download to the running daemon
 * over a Unix stream socket and reads back progress and the result.  The
 * wire format is described in daemon_ctl.h; this file holds the codec, the
 * server (libevent, on the daemon's loop) and the client (blocking I/O, in
 * dfget).
 *
 * Server design.  One session per connection: it reads exactly one request
 * line (capped, with a read timeout so an idle client cannot hold a slot),
 * starts the download on the peer, forwards progress (at most one line per
 * DF_CTL_PROGRESS_MS) and finally one result line, then closes once the
 * output buffer drained.  A client that disconnects mid-download does not
 * stop the download -- the pieces land in the peer's store, which is what a
 * cache is for -- but nothing more is written for it.
 *
 * The engine writes to a private name next to the requested output
 * (".<name>.dfdaemon.<pid>.<seq>"); the session renames it into place only
 * if its client is still connected when the download ends, and removes it
 * otherwise.  So a dfget that was interrupted (Ctrl-C) never finds a file
 * appearing later at its output path, and a second dfget that reuses the path
 * meanwhile is not clobbered by the first one's late completion.
 *
 * Lifetime: sessions belong to the daemon.  A download whose done_cb has not
 * run keeps its session alive after its client left.  df_daemon_free()
 * releases every session, so it must run after df_peer_free() (a freed peer
 * cancels its downloads without calling back) or when no download runs.
 *
 * The socket file is created with mode 0600 (only the daemon's user may hand
 * it work: the daemon writes wherever the request says).  A lock file next to
 * it (<path>.lock, flock) tells a live daemon from a stale socket without
 * races between two daemons starting at once; the lock file is never removed,
 * which is what keeps that scheme race-free.
 */
#include "core/core.h"
#include "engine/daemon_ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define DF_CTL_PROGRESS_MS 200      /* progress lines at most ~5 per second */
#define DF_CTL_REQUEST_TIMEOUT_S 10 /* a client must send its request within this */
#define DF_CTL_MAX_SESSIONS 256     /* concurrent connections; more are refused */
#define DF_CTL_CLIENT_SLACK_MS 60000 /* client waits timeout_ms + this for the daemon */

/* ================================================================ codec */

static void seterr(char *err, size_t errcap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errcap, const char *fmt, ...)
{
    va_list ap;
    if (!err || errcap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
}

int df__pattern_parse(const char *name, df_pattern_t *out)
{
    if (strcmp(name, "p2p") == 0)
        *out = DF_PATTERN_P2P;
    else if (strcmp(name, "cdn") == 0)
        *out = DF_PATTERN_CDN;
    else if (strcmp(name, "source") == 0)
        *out = DF_PATTERN_SOURCE;
    else
        return -EINVAL;
    return 0;
}

const char *df__pattern_name(df_pattern_t p)
{
    switch (p) {
    case DF_PATTERN_CDN: return "cdn";
    case DF_PATTERN_SOURCE: return "source";
    default: return "p2p";
    }
}

/* Optional string field: absent or null leaves *out NULL. */
static int opt_string(json_t *doc, const char *key, const char **out, char *err, size_t errcap)
{
    json_t *v = json_object_get(doc, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        seterr(err, errcap, "\"%s\" must be a string", key);
        return DF_EPROTO;
    }
    *out = json_string_value(v);
    return 0;
}

static int opt_u64(json_t *doc, const char *key, uint64_t *out, char *err, size_t errcap)
{
    json_t *v = json_object_get(doc, key);
    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        seterr(err, errcap, "\"%s\" must be a non-negative integer", key);
        return DF_EPROTO;
    }
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* Optional array of non-empty strings -> NULL-terminated malloc'ed vector
 * pointing into doc. */
static int opt_list(json_t *doc, const char *key, bool headers, const char ***out, char *err,
                    size_t errcap)
{
    json_t *v = json_object_get(doc, key), *item;
    const char **vec;
    size_t i, n;

    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v)) {
        seterr(err, errcap, "\"%s\" must be an array of strings", key);
        return DF_EPROTO;
    }
    n = json_array_size(v);
    if (n > DF_CTL_LIST_MAX) {
        seterr(err, errcap, "\"%s\" has more than %u entries", key, DF_CTL_LIST_MAX);
        return DF_ETOOBIG;
    }
    vec = calloc(n + 1, sizeof(*vec));
    if (!vec)
        return -ENOMEM;
    json_array_foreach(v, i, item) {
        const char *s = json_string_value(item);
        if (!s || !*s || (headers && !df_header_line_ok(s))) {
            seterr(err, errcap, "\"%s\"[%zu] must be a non-empty string%s", key, i,
                   headers ? " of the form \"Name: value\"" : "");
            free(vec);
            return DF_EPROTO;
        }
        vec[i] = s;
    }
    *out = vec;
    return 0;
}

void df__ctl_request_free(df__ctl_request_t *r)
{
    if (!r)
        return;
    free(r->filter);
    free(r->headers);
    json_decref(r->doc);
    memset(r, 0, sizeof(*r));
}

int df__ctl_request_decode(const char *line, size_t len, df__ctl_request_t *out, char *err,
                           size_t errcap)
{
    df_download_req_t *req = &out->req;
    json_error_t jerr;
    const char *pattern;
    json_t *v;
    int rc;

    memset(out, 0, sizeof(*out));
    if (err && errcap)
        err[0] = '\0';
    if (len > DF_CTL_LINE_MAX) {
        seterr(err, errcap, "request line exceeds %u bytes", DF_CTL_LINE_MAX);
        return DF_ETOOBIG;
    }
    /* Duplicate keys are refused: two "output"s are either a bug or an
     * attempt to make two readers disagree. */
    out->doc = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!out->doc) {
        seterr(err, errcap, "malformed JSON: %s", jerr.text);
        return DF_EPROTO;
    }
    if (!json_is_object(out->doc)) {
        seterr(err, errcap, "request must be a JSON object");
        rc = DF_EPROTO;
        goto out;
    }
    if ((rc = opt_string(out->doc, "url", &req->url, err, errcap)) < 0 ||
        (rc = opt_string(out->doc, "output", &req->output, err, errcap)) < 0 ||
        (rc = opt_string(out->doc, "digest", &req->digest, err, errcap)) < 0 ||
        (rc = opt_string(out->doc, "identifier", &req->identifier, err, errcap)) < 0 ||
        (rc = opt_string(out->doc, "call_system", &req->call_system, err, errcap)) < 0 ||
        (rc = opt_string(out->doc, "pattern", &pattern, err, errcap)) < 0 ||
        (rc = opt_u64(out->doc, "local_limit_bps", &req->local_limit_bps, err, errcap)) < 0 ||
        (rc = opt_u64(out->doc, "timeout_ms", &req->timeout_ms, err, errcap)) < 0 ||
        (rc = opt_list(out->doc, "filter", false, &out->filter, err, errcap)) < 0 ||
        (rc = opt_list(out->doc, "headers", true, &out->headers, err, errcap)) < 0)
        goto out;
    req->filter = out->filter;
    req->headers = out->headers;
    if (!req->url || !*req->url) {
        seterr(err, errcap, "\"url\" is required");
        rc = DF_EPROTO;
        goto out;
    }
    if (!req->output || !*req->output) {
        seterr(err, errcap, "\"output\" is required");
        rc = DF_EPROTO;
        goto out;
    }
    /* The daemon's working directory means nothing to the client. */
    if (req->output[0] != '/') {
        seterr(err, errcap, "\"output\" must be an absolute path");
        rc = -EINVAL;
        goto out;
    }
    if (strlen(req->output) >= PATH_MAX) {
        seterr(err, errcap, "\"output\" is too long");
        rc = -ENAMETOOLONG;
        goto out;
    }
    req->pattern = DF_PATTERN_P2P;
    if (pattern && df__pattern_parse(pattern, &req->pattern) < 0) {
        seterr(err, errcap, "unknown pattern \"%.32s\"", pattern);
        rc = DF_EPROTO;
        goto out;
    }
    v = json_object_get(out->doc, "no_back_source");
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            seterr(err, errcap, "\"no_back_source\" must be a boolean");
            rc = DF_EPROTO;
            goto out;
        }
        req->no_back_source = json_is_true(v);
    }
    v = json_object_get(out->doc, "durable");
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            seterr(err, errcap, "\"durable\" must be a boolean");
            rc = DF_EPROTO;
            goto out;
        }
        req->durable = json_is_true(v);
    }
    rc = 0;
out:
    if (rc < 0) {
        if (err && errcap && !err[0])
            seterr(err, errcap, "%s", df_strerror(rc));
        df__ctl_request_free(out);
    }
    return rc;
}

static json_t *list_json(const char **list)
{
    json_t *a = json_array();
    for (size_t i = 0; a && list && list[i]; i++) {
        if (json_array_append_new(a, json_string(list[i])) < 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

int df__ctl_request_encode(const df_download_req_t *req, char **out, size_t *len_out)
{
    json_t *o;
    char *s = NULL;
    int rc = 0;

    *out = NULL;
    if (!req->url || !req->output)
        return -EINVAL;
    o = json_object();
    if (!o)
        return -ENOMEM;
    /* json_string() fails (NULL -> set_new error) on invalid UTF-8, which the
     * daemon could not decode either: report it as -EINVAL. */
    if (json_object_set_new(o, "url", json_string(req->url)) < 0 ||
        json_object_set_new(o, "output", json_string(req->output)) < 0 ||
        (req->digest && json_object_set_new(o, "digest", json_string(req->digest)) < 0) ||
        (req->identifier && json_object_set_new(o, "identifier", json_string(req->identifier)) < 0) ||
        (req->filter && json_object_set_new(o, "filter", list_json(req->filter)) < 0) ||
        (req->headers && json_object_set_new(o, "headers", list_json(req->headers)) < 0) ||
        json_object_set_new(o, "local_limit_bps",
                            json_integer((json_int_t)DF_MIN(req->local_limit_bps, (uint64_t)INT64_MAX))) < 0 ||
        json_object_set_new(o, "timeout_ms",
                            json_integer((json_int_t)DF_MIN(req->timeout_ms, (uint64_t)INT64_MAX))) < 0 ||
        json_object_set_new(o, "pattern", json_string(df__pattern_name(req->pattern))) < 0 ||
        json_object_set_new(o, "no_back_source", json_boolean(req->no_back_source)) < 0 ||
        json_object_set_new(o, "durable", json_boolean(req->durable)) < 0 ||
        (req->call_system && json_object_set_new(o, "call_system", json_string(req->call_system)) < 0)) {
        rc = -EINVAL;
        goto out;
    }
    s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s) {
        rc = -ENOMEM;
        goto out;
    }
    if (strlen(s) > DF_CTL_LINE_MAX) {
        rc = DF_ETOOBIG;
        goto out;
    }
    *len_out = strlen(s);
    *out = s;
    s = NULL;
out:
    free(s);
    json_decref(o);
    return rc;
}

/* Encodes {"<key>": obj} + "\n" (steals obj).  malloc'ed or NULL. */
static char *wrap_line(const char *key, json_t *obj, size_t *len_out)
{
    json_t *o = json_object();
    char *s = NULL;
    size_t n;

    if (!o || !obj || json_object_set_new(o, key, obj) < 0) {
        if (!o)
            json_decref(obj);
        goto out;
    }
    obj = NULL;
    s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s)
        goto out;
    n = strlen(s);
    {
        char *t = realloc(s, n + 2);
        if (!t) {
            free(s);
            s = NULL;
            goto out;
        }
        s = t;
    }
    s[n] = '\n';
    s[n + 1] = '\0';
    *len_out = n + 1;
out:
    json_decref(o);
    return s;
}

/* =============================================================== server */

typedef struct df_ctl_session df_ctl_session_t;

struct df_daemon {
    struct event_base *base;
    df_peer_t *peer;                 /* not owned */
    struct evconnlistener *lev;
    char *path;
    int lock_fd;                     /* flock on <path>.lock, held for life */
    dev_t dev;                       /* identity of our socket file: only */
    ino_t ino;                       /* that file is unlinked at free */
    df_ctl_session_t *sessions;      /* doubly linked */
    unsigned nsessions;
    uint64_t seq;                    /* temp-name counter */
};

struct df_ctl_session {
    df_daemon_t *d;
    df_ctl_session_t *prev, *next;
    struct bufferevent *bev;         /* NULL once the client is gone */
    bool have_request;               /* the one request line was read */
    bool running;                    /* df_peer_download accepted; done_cb pending */
    bool closing;                    /* result queued; free when flushed */
    uint64_t last_progress_ms;
    char *output;                    /* the client's final path */
    char *tmp_output;                /* where the engine writes */
};

static void session_free(df_ctl_session_t *s)
{
    df_daemon_t *d = s->d;

    if (s->prev)
        s->prev->next = s->next;
    else
        d->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    d->nsessions--;
    if (s->bev)
        bufferevent_free(s->bev);
    free(s->output);
    free(s->tmp_output);
    free(s);
}

/* The client is gone (EOF, error, timeout): stop writing to it.  The
 * session lives on while its download runs. */
static void client_gone(df_ctl_session_t *s)
{
    if (s->bev) {
        bufferevent_free(s->bev);
        s->bev = NULL;
    }
    if (!s->running)
        session_free(s);
}

static void on_flushed(struct bufferevent *bev, void *arg)
{
    df_ctl_session_t *s = arg;
    if (s->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        session_free(s);
}

static void send_line(df_ctl_session_t *s, const char *key, json_t *obj)
{
    size_t n;
    char *line = wrap_line(key, obj, &n);

    if (!line) {
        DF_LOG_W("control: out of memory encoding a %s line", key);
        return;
    }
    if (s->bev && bufferevent_write(s->bev, line, n) < 0)
        DF_LOG_W("control: cannot queue a %s line", key);
    free(line);
}

/* Sends the result and closes once it is flushed.  Never called while the
 * download runs. */
static void finish(df_ctl_session_t *s, const df_download_result_t *res)
{
    if (!s->bev) {
        session_free(s);
        return;
    }
    s->closing = true;
    send_line(s, "result", df__download_result_to_json(res));
    /* Stop reading; the write callback frees the session once drained. */
    bufferevent_disable(s->bev, EV_READ);
    bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
    on_flushed(s->bev, s);
}

static void fail(df_ctl_session_t *s, int code, const char *why)
{
    df_download_result_t res;

    memset(&res, 0, sizeof(res));
    res.status = code;
    df_strlcpy(res.reason, why, sizeof(res.reason));
    finish(s, &res);
}

static void on_progress(const df_progress_t *p, void *arg)
{
    df_ctl_session_t *s = arg;
    uint64_t now = df_now_ms();
    json_t *o;

    if (!s->bev || s->closing)
        return;
    /* Throttle, but never hide the last step: 100% is worth a line. */
    if (now - s->last_progress_ms < DF_CTL_PROGRESS_MS && !(p->length && p->done == p->length))
        return;
    s->last_progress_ms = now;
    o = json_object();
    if (!o || json_object_set_new(o, "length", json_integer((json_int_t)DF_MIN(p->length, (uint64_t)INT64_MAX))) < 0 ||
        json_object_set_new(o, "done", json_integer((json_int_t)DF_MIN(p->done, (uint64_t)INT64_MAX))) < 0) {
        json_decref(o);
        return;
    }
    send_line(s, "progress", o);
}

static void on_done(const df_download_result_t *res_in, void *arg)
{
    df_ctl_session_t *s = arg;
    df_download_result_t res = *res_in;

    s->running = false;
    if (res.status == 0 && s->bev) {
        if (rename(s->tmp_output, s->output) < 0) {
            res.status = -errno;
            snprintf(res.reason, sizeof(res.reason), "cannot move the file into place: %s",
                     strerror(errno));
            DF_LOG_W("control: rename %s -> %s: %s", s->tmp_output, s->output, strerror(errno));
            unlink(s->tmp_output);
        }
    } else {
        /* Failed (nothing should be there) or nobody waits for the file any
         * more: the data stays in the peer's store, the copy goes. */
        if (unlink(s->tmp_output) < 0 && errno != ENOENT)
            DF_LOG_W("control: unlink %s: %s", s->tmp_output, strerror(errno));
    }
    if (res.status == 0)
        DF_LOG_I("control: %s done%s", s->output, s->bev ? "" : " (client gone, copy dropped)");
    else
        DF_LOG_I("control: %s failed: %s%s", s->output, df_strerror(res.status),
                 s->bev ? "" : " (client gone)");
    finish(s, &res);
}

/* "<dir>/.<name>.dfdaemon.<pid>.<seq>" next to output, so the final rename
 * stays on one file system. */
static int make_tmp_name(df_ctl_session_t *s)
{
    const char *slash = strrchr(s->output, '/');
    size_t dirlen = (size_t)(slash - s->output) + 1;
    char buf[PATH_MAX];
    int n;

    n = snprintf(buf, sizeof(buf), "%.*s.%s.dfdaemon.%d.%llu", (int)dirlen, s->output, slash + 1,
                 (int)getpid(), (unsigned long long)++s->d->seq);
    if (n < 0 || (size_t)n >= sizeof(buf))
        return -ENAMETOOLONG;
    s->tmp_output = strdup(buf);
    return s->tmp_output ? 0 : -ENOMEM;
}

static void start(df_ctl_session_t *s, const char *line, size_t len)
{
    df__ctl_request_t r;
    char err[256];
    int rc;

    rc = df__ctl_request_decode(line, len, &r, err, sizeof(err));
    if (rc < 0) {
        DF_LOG_W("control: bad request: %s", err);
        fail(s, rc, err);
        return;
    }
    s->output = strdup(r.req.output);
    if (!s->output) {
        rc = -ENOMEM;
        goto out;
    }
    if (r.req.output[strlen(r.req.output) - 1] == '/') {
        rc = -EISDIR;
        goto out;
    }
    if ((rc = make_tmp_name(s)) < 0)
        goto out;
    r.req.output = s->tmp_output;
    DF_LOG_I("control: %s -> %s (%s)", r.req.url, s->output,
             r.req.call_system ? r.req.call_system : "dfget");
    rc = df_peer_download(s->d->peer, &r.req, on_progress, on_done, s);
    if (rc == 0)
        s->running = true;
out:
    df__ctl_request_free(&r);
    if (rc < 0) {
        DF_LOG_W("control: cannot start the download: %s", df_strerror(rc));
        fail(s, rc, df_strerror(rc));
        return;
    }
    /* The request arrived: no more read deadline (the download may take
     * hours); reading goes on only to notice the client leaving. */
    bufferevent_set_timeouts(s->bev, NULL, NULL);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    df_ctl_session_t *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_ptr eol;
    size_t eol_len = 0, avail = evbuffer_get_length(in);
    char *line;

    if (s->have_request || s->closing) {
        /* The protocol has one request per connection: ignore the rest. */
        evbuffer_drain(in, avail);
        return;
    }
    eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
    if (eol.pos < 0) {
        if (avail > DF_CTL_LINE_MAX) {
            s->have_request = true;
            evbuffer_drain(in, avail);
            fail(s, DF_ETOOBIG, "request line too long");
        }
        return;
    }
    s->have_request = true;
    if ((size_t)eol.pos > DF_CTL_LINE_MAX) {
        evbuffer_drain(in, avail);
        fail(s, DF_ETOOBIG, "request line too long");
        return;
    }
    line = malloc((size_t)eol.pos + 1);
    if (!line) {
        fail(s, -ENOMEM, "out of memory");
        return;
    }
    evbuffer_remove(in, line, (size_t)eol.pos);
    evbuffer_drain(in, eol_len);
    line[eol.pos] = '\0';
    start(s, line, (size_t)eol.pos);
    free(line);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    df_ctl_session_t *s = arg;

    if (what & BEV_EVENT_TIMEOUT)
        DF_LOG_D("control: client sent no request in time");
    else if (what & BEV_EVENT_ERROR)
        DF_LOG_D("control: client connection error: %s", strerror(EVUTIL_SOCKET_ERROR()));
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        client_gone(s);
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    df_daemon_t *d = arg;
    df_ctl_session_t *s;
    struct timeval tv = {DF_CTL_REQUEST_TIMEOUT_S, 0};

    if (d->nsessions >= DF_CTL_MAX_SESSIONS) {
        DF_LOG_W("control: %u connections open, refusing another", d->nsessions);
        evutil_closesocket(fd);
        return;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        evutil_closesocket(fd);
        return;
    }
    s->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!s->bev) {
        evutil_closesocket(fd);
        free(s);
        return;
    }
    s->d = d;
    s->next = d->sessions;
    if (d->sessions)
        d->sessions->prev = s;
    d->sessions = s;
    d->nsessions++;
    /* Read at most one line past the cap before the read callback judges. */
    bufferevent_setwatermark(s->bev, EV_READ, 0, DF_CTL_LINE_MAX + 2);
    bufferevent_setcb(s->bev, on_read, on_flushed, on_event, s);
    bufferevent_set_timeouts(s->bev, &tv, NULL);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    /* EMFILE and friends: log and keep listening; libevent retries. */
    DF_LOG_W("control: accept: %s", strerror(err));
}

/* Whether something answers on path: 1 yes, 0 no (stale or absent), <0 error. */
static int probe_live(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), rc;

    if (fd < 0)
        return -errno;
    rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0 ? 1 : 0;
    if (rc == 0 && errno != ECONNREFUSED && errno != ENOENT)
        rc = -errno;
    close(fd);
    return rc;
}

int df_daemon_new(struct event_base *base, df_peer_t *peer, const char *socket_path, df_daemon_t **out)
{
    struct sockaddr_un sa;
    char lockpath[PATH_MAX];
    df_daemon_t *d = NULL;
    struct stat st;
    mode_t old_mask;
    int fd = -1, rc;

    *out = NULL;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (df_strlcpy(sa.sun_path, socket_path, sizeof(sa.sun_path)) < 0)
        return -ENAMETOOLONG;
    if (snprintf(lockpath, sizeof(lockpath), "%s.lock", socket_path) >= (int)sizeof(lockpath))
        return -ENAMETOOLONG;
    d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    d->base = base;
    d->peer = peer;
    d->lock_fd = -1;
    d->path = strdup(socket_path);
    if (!d->path) {
        rc = -ENOMEM;
        goto out;
    }
    d->lock_fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->lock_fd < 0) {
        rc = -errno;
        goto out;
    }
    if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        rc = errno == EWOULDBLOCK ? -EADDRINUSE : -errno;
        goto out;
    }
    /* We hold the lock, so no daemon of ours runs here; still refuse to
     * delete something that is not a socket or that answers. */
    if (lstat(socket_path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            rc = -EEXIST;
            goto out;
        }
        rc = probe_live(&sa);
        if (rc != 0) {
            rc = rc > 0 ? -EADDRINUSE : rc;
            goto out;
        }
        DF_LOG_I("control: replacing stale socket %s", socket_path);
        if (unlink(socket_path) < 0 && errno != ENOENT) {
            rc = -errno;
            goto out;
        }
    } else if (errno != ENOENT) {
        rc = -errno;
        goto out;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    /* The socket file is born 0600: a chmod after bind() would leave a
     * window in which anyone could connect.  umask is process-wide, but the
     * library runs on one thread (dfly.h). */
    old_mask = umask(0177);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
    umask(old_mask);
    if (rc < 0)
        goto out;
    if (chmod(socket_path, 0600) < 0 || stat(socket_path, &st) < 0 || listen(fd, 64) < 0) {
        rc = -errno;
        unlink(socket_path);
        goto out;
    }
    d->dev = st.st_dev;
    d->ino = st.st_ino;
    /* backlog 0: the socket already listens. */
    d->lev = evconnlistener_new(base, on_accept, d, LEV_OPT_CLOSE_ON_FREE, 0, fd);
    if (!d->lev) {
        rc = -ENOMEM;
        unlink(socket_path);
        goto out;
    }
    fd = -1;
    evconnlistener_set_error_cb(d->lev, on_accept_error);
    DF_LOG_I("control: listening on %s", socket_path);
    *out = d;
    d = NULL;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    df_daemon_free(d);
    return rc;
}

void df_daemon_free(df_daemon_t *d)
{
    struct stat st;

    if (!d)
        return;
    if (d->lev) {
        evconnlistener_free(d->lev);
        /* Unlink only our own socket: a successor may have replaced it. */
        if (stat(d->path, &st) == 0 && st.st_dev == d->dev && st.st_ino == d->ino)
            unlink(d->path);
    }
    while (d->sessions) {
        df_ctl_session_t *s = d->sessions;
        if (s->running && s->tmp_output)
            unlink(s->tmp_output);
        session_free(s);
    }
    if (d->lock_fd >= 0)
        close(d->lock_fd);
    free(d->path);
    free(d);
}

/* =============================================================== client */

static int send_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Handles one line from the daemon: 1 when it was the result, 0 to go on. */
static int handle_line(const char *line, size_t len, df_download_progress_cb progress_cb, void *arg,
                       df_download_result_t *res)
{
    json_t *doc = json_loadb(line, len, 0, NULL), *v;
    int rc = 0;

    if (!json_is_object(doc)) {
        rc = DF_EPROTO;
        goto out;
    }
    if ((v = json_object_get(doc, "result")) != NULL) {
        rc = df__download_result_from_json(v, res);
        if (rc == 0)
            rc = 1;
    } else if ((v = json_object_get(doc, "progress")) != NULL) {
        json_t *l = json_object_get(v, "length"), *dn = json_object_get(v, "done");
        df_progress_t p;
        if (!json_is_integer(l) || !json_is_integer(dn) || json_integer_value(l) < 0 ||
            json_integer_value(dn) < 0) {
            rc = DF_EPROTO;
            goto out;
        }
        p.length = (uint64_t)json_integer_value(l);
        p.done = (uint64_t)json_integer_value(dn);
        if (progress_cb)
            progress_cb(&p, arg);
    }
    /* Other objects: a newer daemon's additions; ignored. */
out:
    json_decref(doc);
    return rc;
}

int df_daemon_download(const char *socket_path, const df_download_req_t *req,
                       df_download_progress_cb progress_cb, void *arg, df_download_result_t *res)
{
    struct sockaddr_un sa;
    char *reqline = NULL, *buf = NULL;
    size_t reqlen = 0, used = 0;
    const size_t bufcap = DF_CTL_LINE_MAX + 2;
    int fd = -1, rc;

    memset(res, 0, sizeof(*res));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (df_strlcpy(sa.sun_path, socket_path, sizeof(sa.sun_path)) < 0)
        return -ENAMETOOLONG;
    if ((rc = df__ctl_request_encode(req, &reqline, &reqlen)) < 0)
        goto out;
    buf = malloc(bufcap);
    if (!buf) {
        rc = -ENOMEM;
        goto out;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        rc = -errno;
        goto out;
    }
    if (req->timeout_ms) {
        /* The daemon enforces timeout_ms; this only guards against a daemon
         * that stopped answering altogether. */
        uint64_t ms = req->timeout_ms + DF_CTL_CLIENT_SLACK_MS;
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    if ((rc = send_all(fd, reqline, reqlen)) < 0 || (rc = send_all(fd, "\n", 1)) < 0)
        goto out;
    for (;;) {
        char *nl;
        ssize_t n;

        /* Consume every complete line in the buffer. */
        while ((nl = memchr(buf, '\n', used)) != NULL) {
            size_t linelen = (size_t)(nl - buf);
            if (linelen > DF_CTL_LINE_MAX) {
                rc = DF_ETOOBIG;
                goto out;
            }
            rc = handle_line(buf, linelen, progress_cb, arg, res);
            if (rc < 0)
                goto out;
            if (rc == 1) {
                rc = 0;
                goto out;
            }
            used -= linelen + 1;
            memmove(buf, nl + 1, used);
        }
        if (used >= bufcap) {
            rc = DF_ETOOBIG;
            goto out;
        }
        n = read(fd, buf + used, bufcap - used);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = (errno == EAGAIN || errno == EWOULDBLOCK) ? DF_ETIMEOUT : -errno;
            goto out;
        }
        if (n == 0) {
            /* The daemon went away before it sent the result. */
            rc = -ECONNRESET;
            goto out;
        }
        used += (size_t)n;
    }
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    free(reqline);
    return rc;
}
