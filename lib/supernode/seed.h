/*
 * The seed: the supernode reads each task's file from the origin once,
 * streaming it into the piece store, and announces every piece to the
 * swarm the moment its sha256 is known.  Also: reuse of a cached task after
 * revalidating it at the origin (If-None-Match / If-Modified-Since), resume
 * of an interrupted seed (Range: bytes=N- with If-Range), origin errors
 * turned into task errors.
 *
 * Per task, one seed state (task->seed) owned by this module; it holds a
 * reference on the task's stored copy for as long as the in-memory task
 * exists, so store GC never evicts a task the swarm serves.
 */
#ifndef DF_SUPERNODE_SEED_H
#define DF_SUPERNODE_SEED_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "net/http_client.h"
#include "piece/piece_store.h"
#include "supernode/swarm.h"

#include <stdbool.h>
#include <stdint.h>

struct event_base;

/* How long a completed task is trusted without asking the origin again. */
#define DF_SN_FRESH_MS 10000u
/* A failed task answers with its cached error for this long before a new
 * Register retries the origin (no thundering herd on a broken origin). */
#define DF_SN_RETRY_MS 3000u

/* Error kinds, for dfly_supernode_errors_total{kind=...}. */
#define DF_SN_SEED_ERRORS(X)                                                                       \
    X(ORIGIN_HTTP, "origin_http")                                                                  \
    X(ORIGIN_CONNECT, "origin_connect")                                                            \
    X(ORIGIN_TIMEOUT, "origin_timeout")                                                            \
    X(LENGTH_MISMATCH, "length_mismatch")                                                          \
    X(DIGEST_MISMATCH, "digest_mismatch")                                                          \
    X(STORE, "store")

typedef enum {
#define DF_X_(name, text) DF_SN_SEED_ERR_##name,
    DF_SN_SEED_ERRORS(DF_X_)
#undef DF_X_
        DF_SN_SEED_ERR_COUNT
} df_sn_seed_err_t;

const char *df_sn_seed_err_name(df_sn_seed_err_t e);

typedef struct df_sn_seeder df_sn_seeder_t;

/* Called (from the loop, never from inside df_sn_seed_start) when a task
 * may have become ready for its waiting Registers: see df_sn_seed_ready(). */
typedef void (*df_sn_seed_ready_cb)(df_sn_task_t *task, void *arg);

typedef struct {
    struct event_base *base;     /* borrowed: for the stall watchdog */
    df_http_t *http;             /* borrowed */
    df_store_t *store;           /* borrowed */
    const char *partial_dir;     /* spool for origins without Content-Length (created) */
    uint64_t origin_timeout_ms;  /* no response or no body byte for this long fails the seed */
    uint64_t piece_size;         /* 0 = df_piece_size_for(length) */
    uint64_t spool_limit;        /* max bytes of a chunked origin; 0 = no limit */
    unsigned hash_threads;       /* 0: pieces and the file hashed on the loop as bytes
                                  * stream in; else one hash thread (needs base) */
    df_sn_seed_ready_cb ready_cb;
    df_sn_seed_ready_cb piece_cb; /* after each piece the seed verified (may be NULL) */
    void *arg;
} df_sn_seeder_opts_t;

/* opts strings are copied.  0 or -errno. */
int df_sn_seeder_new(const df_sn_seeder_opts_t *opts, df_sn_seeder_t **out);
/* Every task's seed must have been stopped first (df_sn_seed_stop). */
void df_sn_seeder_free(df_sn_seeder_t *s);

/* Makes sure the task's content is (being) fetched, on each Register: first
 * time -> cache lookup, then resume / revalidate / fresh fetch; completed
 * and older than DF_SN_FRESH_MS -> revalidate; failed and older than
 * DF_SN_RETRY_MS -> retry (revalidating a copy that is still complete,
 * resuming what was verified otherwise).  Otherwise nothing.  A
 * revalidation the origin cannot answer (5xx, 429, connection error,
 * timeout) leaves a complete task complete, fresh for DF_SN_RETRY_MS.
 * Never calls ready_cb synchronously.  0 or -errno (the task is then
 * failed, with a message). */
int df_sn_seed_start(df_sn_seeder_t *s, df_sn_task_t *task, uint64_t now_ms);

/* true when a Register for this task can be answered now: the task failed,
 * or its length is known and no origin answer is awaited (connecting,
 * revalidating, resuming, or streaming a body of unknown length). */
bool df_sn_seed_ready(const df_sn_task_t *task);

/* For a Register that registered the task's headers generation `gen`
 * (task->headers_gen right after its Register replaced them): the origin's
 * 401 or 403 to a request of the current round (a request and its repeats
 * with newer headers) made with those headers or older ones, with *msg
 * (valid until the next round), or 0.  It answers the Registers whose
 * credentials were refused, not the task: a refused revalidation leaves the
 * task complete, and a repeat with newer headers may have succeeded. */
long df_sn_seed_refusal(const df_sn_task_t *task, uint64_t gen, const char **msg);

/* true while an origin request for the task is running. */
bool df_sn_seed_active(const df_sn_task_t *task);

/* The stored copy of the task (borrowed; NULL before the origin answered). */
df_stored_task_t *df_sn_seed_stored(const df_sn_task_t *task);

/* Re-reads piece idx from the store and checks its sha256 (after a peer
 * reported the seed served a bad piece).  A bad piece is forgotten and the
 * task failed so that the next Register re-fetches from there.  Returns 0
 * when the piece is fine, DF_EDIGEST when it was bad. */
int df_sn_seed_check_piece(df_sn_seeder_t *s, df_sn_task_t *task, uint32_t idx, uint64_t now_ms);

/* Cancels any origin request and releases the task's seed state.  Safe on a
 * task that never started. */
void df_sn_seed_stop(df_sn_seeder_t *s, df_sn_task_t *task);

/* Counters for metrics. */
uint64_t df_sn_seeder_origin_bytes(const df_sn_seeder_t *s);
uint64_t df_sn_seeder_errors(const df_sn_seeder_t *s, df_sn_seed_err_t e);
/* Revalidations the origin could not answer (ORIGIN_HTTP: 5xx or 429,
 * ORIGIN_CONNECT, ORIGIN_TIMEOUT) after which the cached copy was served;
 * each is also counted in df_sn_seeder_errors. */
uint64_t df_sn_seeder_revalidation_failures(const df_sn_seeder_t *s, df_sn_seed_err_t e);

#endif
