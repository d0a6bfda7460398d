/*
 * The piece upload server: answers `GET|HEAD /peer/file/<task id>` from the
 * local piece store (docs/API.md, "Piece transfer").  Every peer runs one,
 * and the supernode serves its seed pieces with one on the same evhttp as
 * its API.
 *
 * It owns no socket: it answers requests of an evhttp the caller owns.
 * Either pass that evhttp to df_upload_server_new() (the server becomes its
 * generic callback, answering 404 to anything else: a peer's upload port),
 * or pass NULL and call df_upload_server_handle() first from your own
 * generic callback (the supernode: one port for API and pieces).
 *
 * Bytes go out with sendfile(2) (evbuffer file segments over a dup of the
 * task's data fd).  While a reply is in flight the task is referenced, so
 * store GC will not evict it.  With an upload rate limit the body is sent
 * in chunks paced by a host-wide token bucket; without one in a single
 * write queue entry.
 *
 * Lifetime: free the upload server before the store.  Replies in flight
 * when the server is freed: unpaced ones finish on their own (they hold
 * their own fd), paced ones have their connection closed.  While a reply is
 * in flight the server sets the connection's close callback
 * (evhttp_connection_set_closecb) and clears it when the reply ends: do not
 * use that callback on the same evhttp for requests under /peer/file/.
 */
#ifndef DF_ENGINE_UPLOAD_SERVER_H
#define DF_ENGINE_UPLOAD_SERVER_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "piece/piece_store.h"

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct evhttp;
struct evhttp_request;

typedef struct df_upload_server df_upload_server_t;

typedef struct {
    uint64_t requests;     /* requests under /peer/file/ answered */
    uint64_t errors;       /* of which answered 4xx/5xx */
    uint64_t bytes_served; /* body bytes queued for sending (206/200) */
    uint32_t active;       /* replies being sent now */
} df_upload_stats_t;

/* Creates a server answering from store (borrowed: it must outlive the
 * server).  http: see above; NULL to route requests yourself. 0 or -ENOMEM. */
int df_upload_server_new(struct event_base *base, struct evhttp *http, df_store_t *store,
                         df_upload_server_t **out);

/* Resets the evhttp's generic callback if new() installed it, ends paced
 * replies, releases every task reference.  NULL is fine. */
void df_upload_server_free(df_upload_server_t *srv);

/* Answers req and returns true when its path is under "/peer/file/";
 * returns false without touching req otherwise.  For a chained generic
 * callback. */
bool df_upload_server_handle(df_upload_server_t *srv, struct evhttp_request *req);

/* Host-wide upload limit in bytes per second; 0 = unlimited (the default).
 * Applies to replies started afterwards and to paced replies in flight. */
void df_upload_server_set_rate_limit(df_upload_server_t *srv, uint64_t bytes_per_sec);

void df_upload_server_stats(const df_upload_server_t *srv, df_upload_stats_t *out);

#endif
