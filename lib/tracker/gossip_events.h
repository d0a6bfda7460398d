/*
 * The payload of dfly's Serf user events (event name DF_GEV_NAME) in
 * gossip mode: who holds which pieces of which task.  Sans-I/O encode and
 * decode, every count capped; the decoder is fuzzed
 * (tests/fuzz/fuzz_gossip_events.c).
 *
 * Layout (all integers LEB128 varints of at most 10 bytes unless noted):
 *   u8 version (1) | u8 kind | u8 name_len | name (the sender's member name;
 *   Serf user events do not carry their sender)
 *   START   task(32 raw bytes) | length | piece_size | u16-be url_len | url
 *           length 0 = "I want this task, owner please read it" (url given);
 *           length > 0 = the owner's shape of the task.
 *   HAVE    task | u8 full | nruns | nruns x (first, count)
 *           pieces the sender now holds (verified); full = the whole set
 *           (after a recover), else a delta to add.
 *   DIGEST  task | first | n | n x 32-byte sha256 of pieces first..first+n-1
 *           (only the task's owner sends these)
 *   REMOVE  task: the sender no longer serves the task.
 *   RECOVER (nothing): the sender restarted; everyone re-announces.
 *   SYNC    task | u8 what | first: the payload of a Serf *query* (never a
 *           user event): what 1 = "answer with your HAVE (full)", 2 = "owner,
 *           answer with your DIGESTs from piece `first`, or with FILE when
 *           first >= the piece count"; 3 = "owner, answer with your shape
 *           (a START)".  Answers are query responses, sent
 *           point to point to the asker, so repair costs no broadcast.
 *   FILE    task | 32-byte sha256 of the whole file (only the owner sends it)
 * Serf's default user-event limit is 512 bytes (name + payload): encoders
 * take a byte budget and stop before it.
 */
#ifndef DF_TRACKER_GOSSIP_EVENTS_H
#define DF_TRACKER_GOSSIP_EVENTS_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DF_GEV_NAME "dfly"
#define DF_GEV_VERSION 1
#define DF_GEV_SENDER_MAX 64    /* member names we accept in events */
#define DF_GEV_URL_MAX 4096
#define DF_GEV_RUNS_MAX 128
#define DF_GEV_DIGESTS_MAX 64

typedef enum {
    DF_GEV_START = 1,
    DF_GEV_HAVE = 2,
    DF_GEV_DIGEST = 3,
    DF_GEV_REMOVE = 4,
    DF_GEV_RECOVER = 5,
    DF_GEV_SYNC = 6,
    DF_GEV_FILE = 7,
} df_gev_kind_t;

#define DF_GEV_SYNC_HAVE 1
#define DF_GEV_SYNC_DIGEST 2
#define DF_GEV_SYNC_SHAPE 3

typedef struct {
    uint32_t first, count;
} df_gev_run_t;

/* A decoded event.  Pointers point into the decoded buffer. */
typedef struct {
    df_gev_kind_t kind;
    char sender[DF_GEV_SENDER_MAX + 1];
    uint8_t task[32];
    /* START */
    uint64_t length, piece_size;
    const char *url;            /* not NUL-terminated: url_len bytes */
    size_t url_len;
    /* HAVE */
    bool full;
    df_gev_run_t runs[DF_GEV_RUNS_MAX];
    size_t nruns;
    /* DIGEST, SYNC */
    uint32_t first;
    const uint8_t *digests;     /* DIGEST: ndigests x 32 bytes; FILE: 32 bytes */
    size_t ndigests;
    /* SYNC */
    uint8_t what;               /* DF_GEV_SYNC_HAVE, _DIGEST or _SHAPE */
} df_gev_t;

/* 0, or DF_EPROTO for anything malformed (unknown version or kind, a count
 * over its cap, trailing bytes, a run past 2^20 pieces). */
int df_gev_decode(const uint8_t *buf, size_t len, df_gev_t *out);

/* Encoders write into out (cap bytes) and return the length, or DF_ETOOBIG
 * when even the fixed part does not fit. */
int df_gev_encode_start(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32], uint64_t length,
                        uint64_t piece_size, const char *url);
int df_gev_encode_simple(uint8_t *out, size_t cap, df_gev_kind_t kind, const char *sender,
                         const uint8_t task[32]);
/* HAVE from bitmap bits set in `bits` (piece_count bits) starting at piece
 * *cursor; as many runs as fit; *cursor is advanced past the last piece
 * covered (== piece_count when everything fit). */
int df_gev_encode_have(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32], bool full,
                       const uint8_t *bits, uint32_t piece_count, uint32_t *cursor);
/* DIGEST for pieces first..first+n-1 (n chosen by the caller to fit; at
 * most DF_GEV_DIGESTS_MAX). */
int df_gev_encode_digest(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32], uint32_t first,
                         const uint8_t *digests, size_t n);
/* SYNC (what: DF_GEV_SYNC_*) and FILE. */
int df_gev_encode_sync(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32], uint8_t what,
                       uint32_t first);
int df_gev_encode_file(uint8_t *out, size_t cap, const char *sender, const uint8_t task[32],
                       const uint8_t sha256[32]);
/* How many digests fit in cap bytes for this sender. */
size_t df_gev_digests_fit(size_t cap, const char *sender);

#endif
