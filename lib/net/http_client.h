/*
 * Outbound HTTP: libcurl's multi interface driven by a libevent event_base
 * (curl's "multi_socket" API), so every request of a process shares one loop
 * and one connection cache (kept-alive connections to peers and origins).
 *
 * Contract: df_http_start() returning 0 calls on_done exactly once, later,
 * from the loop -- unless the request is cancelled first, in which case no
 * callback runs after df_http_cancel() returns.  Callbacks may start new
 * requests; they may cancel any request except the one they were called for
 * (return a negative code from on_headers/on_data to abort that one).
 */
#ifndef DF_NET_HTTP_CLIENT_H
#define DF_NET_HTTP_CLIENT_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "core/core.h"

#include <stdbool.h>
#include <stdint.h>

struct event_base;

/* A streamed transfer (on_data) hands over at most about this many bytes
 * (plus one chunk from curl) before it lets the loop poll its other
 * sockets and timers; then it goes on by itself. */
#define DF_HTTP_YIELD_BYTES (1u << 20)

typedef struct df_http df_http_t;
typedef struct df_http_req df_http_req_t;

int df_http_new(struct event_base *base, df_http_t **out);
/* Cancels every request still running (no callbacks), then frees. */
void df_http_free(df_http_t *http);

typedef struct {
    const char *method;        /* "GET" (default), "HEAD", "POST", "PUT", "DELETE" */
    const char *url;
    const char *const *headers;/* "K: V" lines, NULL-terminated; may be NULL */
    const void *body;          /* request body (copied); with body_len */
    size_t body_len;
    bool has_range;            /* adds Range: bytes=range_off-(range_off+range_len-1) */
    uint64_t range_off, range_len;
    uint64_t range_from;       /* when has_range_from: Range: bytes=range_from- */
    bool has_range_from;
    long connect_timeout_ms;   /* default 5000 */
    long timeout_ms;           /* whole request; 0 = none */
    long stall_timeout_ms;     /* abort when < 1 byte/s for this long; 0 = none */
    bool follow_redirects;     /* default false; at most 5 hops when true */
    size_t max_body;           /* buffered mode (no on_data): body cap, default 1 MiB */
    bool insecure;             /* skip TLS verification */
    const char *ca_file;       /* CA bundle (PEM file) used instead of the system's */
    const void *ca_pem;        /* the same from memory (ca_pem_len bytes; copied); wins
                                * over ca_file */
    size_t ca_pem_len;
} df_http_opts_t;

typedef struct {
    int status;                /* 0 when a response was received (any HTTP code); else -err */
    long http_code;            /* 0 when no response */
    const char *error;         /* curl's text when status < 0; valid during the callback */
    const df_buf_t *body;      /* buffered mode: the response body; else NULL */
    uint64_t bytes;            /* body bytes received */
} df_http_result_t;

typedef struct {
    /* Called once the response status and headers are in (after redirects).
     * Return < 0 to abort (on_done then reports that code). */
    int (*on_headers)(df_http_req_t *req, long http_code, void *arg);
    /* Streaming mode when set: body bytes as they arrive.  Return 0 to go
     * on, DF_EAGAIN to pause (nothing of this chunk is consumed; the same
     * bytes are delivered again after df_http_resume()), < 0 to abort. */
    int (*on_data)(df_http_req_t *req, const void *data, size_t len, void *arg);
    void (*on_done)(df_http_req_t *req, const df_http_result_t *res, void *arg);
} df_http_cbs_t;

int df_http_start(df_http_t *http, const df_http_opts_t *opts, const df_http_cbs_t *cbs, void *arg,
                  df_http_req_t **out);
/* Stops a request; no callback runs for it afterwards.  NULL is fine. */
void df_http_cancel(df_http_req_t *req);
/* Resumes a request paused by on_data returning DF_EAGAIN. */
void df_http_resume(df_http_req_t *req);
/* A response header's value (case-insensitive name, last occurrence), or
 * NULL.  Valid from on_headers until on_done returns. */
const char *df_http_header(const df_http_req_t *req, const char *name);
/* Calls cb(name, nlen, value, vlen, arg) for every header of the final
 * response, in the order received (names and values are not NUL-terminated;
 * values without surrounding blanks; obs-fold continuation lines are
 * skipped).  Valid from on_headers until on_done returns.  A negative
 * return from cb stops the walk and is returned; else 0. */
typedef int (*df_http_header_cb)(const char *name, size_t nlen, const char *value, size_t vlen, void *arg);
int df_http_header_foreach(const df_http_req_t *req, df_http_header_cb cb, void *arg);
/* The final URL after redirects; valid until on_done returns. */
const char *df_http_effective_url(const df_http_req_t *req);
/* The local IP address of the request's connection (to learn our address
 * as a peer sees it); valid from on_headers until on_done returns. */
const char *df_http_local_ip(const df_http_req_t *req);

#endif
