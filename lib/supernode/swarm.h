/*
 * The supernode's bookkeeping: tasks, peers, and each peer's state inside
 * each task (a "member"): which pieces it holds, which it is fetching from
 * whom, whom it must not be sent to again, how many bad pieces it served.
 *
 * Sans-I/O: no sockets, no disk, no clock -- callers pass `now_ms`.  The
 * seed (seed.c) tells a task which pieces it verified; the HTTP layer
 * (server.c) turns requests into the calls below; unit tests drive it
 * directly.  Scheduling itself is df_sched_pick() (lib/sched).
 *
 * Ownership: the swarm owns every task, peer and member.  Pointers to them
 * stay valid until df_sn_task_remove()/df_sn_peer_remove()/df_sn_sweep()
 * or df_sn_swarm_free() drops them.  Sources are remembered by their peer's
 * `serial` (never reused; 0 = the seed), so a removed peer cannot leave a
 * dangling reference in another member's in-flight list or exclusions.
 *
 * Invariants (checked by the unit tests):
 *  - a member's `busy` bitmap has exactly the pieces of its in-flight list;
 *  - a source's `load` (seed_load for the seed) equals the number of
 *    in-flight entries, over all members of the task, that name it;
 *  - `have` never has a bit >= piece_count.
 */
#ifndef DF_SUPERNODE_SWARM_H
#define DF_SUPERNODE_SWARM_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include "supernode/api_codec.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Hard caps: a hostile or runaway client population cannot grow these. */
#define DF_SN_TASKS_MAX 4096u
#define DF_SN_PEERS_MAX 65536u
#define DF_SN_MEMBERS_MAX 4096u      /* peers in one task */
#define DF_SN_INFLIGHT_MAX 64u       /* pieces in flight per requester */
#define DF_SN_EXCLUDED_MAX 32u       /* remembered bad sources per requester (oldest forgotten) */
#define DF_SN_DIGEST_ERROR_LIMIT 3u  /* bad pieces served before a source is dropped for all */
#define DF_SN_SLOW_MAX 8u            /* sources a requester avoids for a while as slow (oldest forgotten) */
#define DF_SN_SLOW_AVOID_MS 30000u   /* how long: the engine's DF_ENDGAME_AVOID_MS */

#define DF_SN_SEED_ID "supernode"

typedef enum { DF_SN_TASK_SEEDING = 0, DF_SN_TASK_COMPLETE, DF_SN_TASK_FAILED } df_sn_task_state_t;

typedef struct df_sn_peer {
    char id[DF_SN_PEER_ID_MAX];
    char ip[64];
    char hostname[DF_SN_HOSTNAME_MAX + 1];
    uint16_t port;
    uint64_t serial;             /* unique for the life of the process, never 0 */
    uint64_t last_seen_ms;
    uint32_t ntasks;             /* tasks it is a member of */
    struct df_sn_peer *hnext;    /* hash chain */
    struct df_sn_peer *next, *prev; /* all peers, oldest first */
} df_sn_peer_t;

typedef struct {
    uint32_t piece;
    uint64_t src;                /* source peer serial; 0 = the seed */
    uint64_t since_ms;
} df_sn_inflight_t;

typedef struct {
    df_sn_peer_t *peer;
    bool uploads;                /* port != 0 and pattern p2p: may be a source */
    bool down;                   /* ServiceDown for this task: no longer a source */
    uint8_t *have;               /* verified pieces it holds */
    uint8_t *busy;               /* pieces in flight to it */
    df_sn_inflight_t inflight[DF_SN_INFLIGHT_MAX];
    uint32_t ninflight;
    uint64_t excluded[DF_SN_EXCLUDED_MAX]; /* ring of source serials it must not use */
    uint32_t nexcluded, excluded_next;
    struct {
        uint64_t serial;
        uint64_t until_ms;       /* avoided while now < until_ms */
    } slow[DF_SN_SLOW_MAX];      /* ring of sources it reported slow */
    uint32_t slow_next;
    uint32_t load;               /* uploads in flight from it */
    uint32_t digest_errors;      /* bad pieces it was reported to serve */
    uint64_t joined_ms;
} df_sn_member_t;

typedef struct df_sn_task {
    char id[65];
    char *url;                   /* the url the seed fetches (first registrant's, unfiltered) */
    char *task_url;              /* filtered: the identity */
    char *digest;                /* registered whole-file digest "alg:hex", or NULL */
    char *identifier;            /* or NULL */
    char **headers;              /* origin request headers of the latest registrant */
    size_t nheaders;
    uint64_t headers_gen;        /* bumped whenever headers change */
    bool insecure;               /* the first registrant's TLS settings for the origin */
    char *root_ca;               /* PEM, or NULL */
    size_t root_ca_len;
    df_pattern_t pattern;

    df_sn_task_state_t state;
    char error[512];             /* when failed */
    const char *error_kind;      /* static: "origin", "digest", "store"; NULL unless failed */
    long origin_status;          /* origin's HTTP code for an origin error, else 0 */

    bool shaped;                 /* length and piece size known */
    uint64_t length, piece_size;
    uint32_t piece_count;
    uint8_t *seed_have;          /* pieces verified at the seed */
    uint8_t *piece_sha;          /* 32 bytes per piece, valid where seed_have */
    uint32_t seed_pieces;
    uint32_t seed_load;
    char file_digest[80];        /* "sha256:<hex>" once complete, else "" */

    df_sn_member_t **members;
    uint32_t nmembers, cap_members;

    uint64_t created_ms, last_access_ms, validated_ms, failed_ms;

    void *seed;                  /* owned by seed.c; NULL when idle */
    void *waiters;               /* owned by server.c: deferred Register replies */
    void *pulls;                 /* owned by server.c: parked PullPiece requests */
    bool pulls_dirty;            /* owned by server.c: something changed, re-run them */

    struct df_sn_task *hnext;
    struct df_sn_task *next, *prev;
} df_sn_task_t;

typedef struct {
    uint32_t peer_upload_slots;
    uint32_t seed_upload_slots;
    uint32_t batch_pieces;       /* max assignments per pull */
    uint32_t seed_piece_limit;   /* the seed holds back a piece this many uploading peers
                                  * hold or fetch (df_sched rule 6); 0 = never */
} df_sn_swarm_opts_t;

typedef struct df_sn_swarm df_sn_swarm_t;

/* Called for each task just before the swarm frees it (from
 * df_sn_task_remove, df_sn_swarm_free), so the owner of task->seed and
 * task->waiters can release them. */
typedef void (*df_sn_task_free_cb)(df_sn_task_t *task, void *arg);

int df_sn_swarm_new(const df_sn_swarm_opts_t *opts, df_sn_task_free_cb free_cb, void *arg,
                    df_sn_swarm_t **out);
void df_sn_swarm_free(df_sn_swarm_t *sw);

/* Iteration (oldest first) and counts. */
df_sn_task_t *df_sn_swarm_tasks(df_sn_swarm_t *sw);
df_sn_peer_t *df_sn_swarm_peers(df_sn_swarm_t *sw);
uint32_t df_sn_swarm_ntasks(const df_sn_swarm_t *sw);
uint32_t df_sn_swarm_npeers(const df_sn_swarm_t *sw);
/* Pieces scheduled so far from the seed / from peers (for metrics). */
void df_sn_swarm_counters(const df_sn_swarm_t *sw, uint64_t *from_seed, uint64_t *from_peers);

/* ---- tasks */

df_sn_task_t *df_sn_task_find(df_sn_swarm_t *sw, const char *id);
/* A new task in state SEEDING, unshaped.  Strings and headers are copied.
 * -EEXIST, -ENOSPC (DF_SN_TASKS_MAX), -ENOMEM. */
int df_sn_task_create(df_sn_swarm_t *sw, const char *id, const char *url, const char *task_url,
                      const char *digest, const char *identifier, char *const *headers,
                      size_t nheaders, df_pattern_t pattern, uint64_t now_ms, df_sn_task_t **out);
/* Replaces the task's origin request headers with a copy of these (a later
 * registrant's: its credentials are what the next origin request, e.g. a
 * revalidation, should carry).  headers_gen changes unless they are the same
 * lines.  0, or -ENOMEM (the old headers stay). */
int df_sn_task_set_headers(df_sn_task_t *task, char *const *headers, size_t nheaders);
/* Frees the task and its members (peers stay, with ntasks decremented). */
void df_sn_task_remove(df_sn_swarm_t *sw, df_sn_task_t *task);

/* Sets length and piece size (piece count <= DF_PIECE_COUNT_MAX, else
 * -EFBIG) and forgets every piece anybody held: used when the seed learns
 * the origin's length, and when content changed at the origin.  Members
 * stay, with empty bitmaps and nothing in flight. */
int df_sn_task_shape(df_sn_task_t *task, uint64_t length, uint64_t piece_size);
/* Back to "length unknown", nothing held (a chunked re-seed). */
void df_sn_task_unshape(df_sn_task_t *task);
/* The seed verified piece idx with this sha256: schedulable from now on. */
void df_sn_task_seed_piece(df_sn_task_t *task, uint32_t idx, const uint8_t sha256[32]);
/* The seed lost piece idx (found corrupt on disk). */
void df_sn_task_seed_unpiece(df_sn_task_t *task, uint32_t idx);
/* State changes.  fail: kind is a static string ("origin", "digest",
 * "store"), msg is copied, origin_status is 0 when not an HTTP error. */
void df_sn_task_set_seeding(df_sn_task_t *task);
void df_sn_task_complete(df_sn_task_t *task, const char *file_digest, uint64_t now_ms);
void df_sn_task_fail(df_sn_task_t *task, const char *kind, long origin_status, const char *msg,
                     uint64_t now_ms);
const char *df_sn_task_state_name(df_sn_task_state_t s);

df_sn_member_t *df_sn_task_member(df_sn_task_t *task, const df_sn_peer_t *peer);
df_sn_member_t *df_sn_task_member_by_serial(df_sn_task_t *task, uint64_t serial);

/* ---- peers */

df_sn_peer_t *df_sn_peer_find(df_sn_swarm_t *sw, const char *id);
/* Registers (or refreshes) the peer and makes it a member of task.  A peer
 * registering again for a task it is already in keeps its state (a client
 * retrying Register must not lose its pieces) but is "up" again.
 * -ENOSPC when a cap is hit, -ENOMEM. */
int df_sn_join(df_sn_swarm_t *sw, df_sn_task_t *task, const char *ip, uint16_t port,
               const char *hostname, bool uploads, uint64_t now_ms, df_sn_member_t **out);
void df_sn_peer_touch(df_sn_peer_t *peer, uint64_t now_ms);
/* Removes the peer from every task and forgets it: its own in-flight loads
 * are released, and pieces others were fetching from it are freed so they
 * get rescheduled. */
void df_sn_peer_remove(df_sn_swarm_t *sw, df_sn_peer_t *peer);
/* ServiceDown: the peer stops serving task (or every task when NULL).  It
 * stays a member but is never a source again there until it joins again;
 * pieces others were fetching from it are freed.  For one task it also
 * forgets the pieces the peer had (it evicted the task: a later join starts
 * from nothing); for every task (the peer leaving) they are kept, since its
 * store survives a restart. */
void df_sn_service_down(df_sn_swarm_t *sw, df_sn_peer_t *peer, df_sn_task_t *task);

/* ---- the piece protocol */

/* Applies a batch of results from member m: each releases the in-flight
 * entry for that piece (and its source's load); ok marks the piece held.
 * Pieces out of range are ignored.  Then, when m says it has only `running`
 * pieces in flight (has_running), older in-flight entries beyond that count
 * are released as lost. */
void df_sn_apply_results(df_sn_task_t *task, df_sn_member_t *m, const df_sn_result_t *results,
                         size_t n, bool has_running, uint32_t running);

typedef enum { DF_SN_PULL_ASSIGN = 0, DF_SN_PULL_WAIT, DF_SN_PULL_DONE, DF_SN_PULL_ERROR } df_sn_pull_state_t;

typedef struct {
    uint32_t piece;
    uint64_t offset, length;
    const uint8_t *sha256;       /* 32 bytes, owned by the task */
    const df_sn_peer_t *src;     /* NULL = the seed */
} df_sn_assign_t;

/* Decides the answer to a pull from m wanting up to `want` pieces (0 = the
 * batch size): assignments into out (capacity >= DF_SN_INFLIGHT_MAX), with
 * loads and in-flight entries recorded.  *state says which answer to give;
 * *nout the number of assignments (state ASSIGN only).  A requester gets
 * pieces only up to its fair share of the task's upload slots in flight
 * (the slots divided evenly among the members still downloading). */
void df_sn_pull(df_sn_swarm_t *sw, df_sn_task_t *task, df_sn_member_t *m, uint32_t want,
                uint64_t now_ms, df_sn_assign_t *out, size_t *nout, df_sn_pull_state_t *state);

/* false when a pull from m would certainly be answered "wait" while the
 * task is seeding or complete: m is at its fair share, or no source has a
 * free slot.  Cheap (O(members)); lets the server skip the scheduler when
 * it re-runs parked pulls. */
bool df_sn_pull_may_assign(const df_sn_swarm_t *sw, const df_sn_task_t *task, const df_sn_member_t *m);

/* ReportError from requester m about source src_id: m never gets src again;
 * for digest/missing the source no longer counts as holding that piece, and
 * digest errors count toward dropping the source for everybody.  "slow" is
 * no fault of the source (it may be busy serving others): m only avoids it
 * until now_ms + DF_SN_SLOW_AVOID_MS, nothing else changes, and no other
 * requester is affected.  The requester's in-flight entry for the piece is
 * released.  Returns 1 when the kind is digest, missing or io, the source
 * is the seed and the requester really had this piece in flight from it
 * (the caller then re-checks its copy on disk), else 0: a peer repeating
 * reports cannot make the supernode re-read its cache at will. */
int df_sn_report_error(df_sn_task_t *task, df_sn_member_t *m, const char *src_id, uint32_t piece,
                       df_sn_err_kind_t kind, uint64_t now_ms);

/* Timer work: removes peers not heard from for peer_timeout_ms, releases
 * in-flight entries older than assign_timeout_ms.  Returns peers removed. */
uint32_t df_sn_sweep(df_sn_swarm_t *sw, uint64_t now_ms, uint64_t peer_timeout_ms,
                     uint64_t assign_timeout_ms);

#endif
