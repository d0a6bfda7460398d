/*
 * Endgame policy of one download: when a piece fetch is so slow that the
 * download is better off abandoning it and asking for the piece again.
 * Pure functions over counts and times (no I/O, no clock), so the decision
 * is tested with numbers (tests/unit/test_endgame.c); lib/engine/download.c
 * feeds them from its fetches once a second.
 *
 * Policy:
 *  1. only in the endgame: every piece the download lacks is being fetched
 *     or hashed, so no free piece is left to give a faster source;
 *  2. only a fetch at least DF_ENDGAME_MIN_AGE_MS old (its rate so far
 *     means something; a transfer starts slowly);
 *  3. abandoned when the time it still needs at its own rate so far is more
 *     than DF_ENDGAME_SLOWDOWN times what a whole piece takes at its share
 *     (1/inflight) of the download's average rate; a fetch with no byte yet
 *     needs "forever";
 *  4. at most DF_ENDGAME_MAX_DROPS fetches per download (the caller counts),
 *     so a download whose every source is slow does not churn.
 */
#ifndef DF_SCHED_ENDGAME_H
#define DF_SCHED_ENDGAME_H
#ifndef DF_INTERNAL
#error "private to libdfly"
#endif

#include <stdbool.h>
#include <stdint.h>

#define DF_ENDGAME_MIN_AGE_MS 3000u
#define DF_ENDGAME_SLOWDOWN 3u
#define DF_ENDGAME_MAX_DROPS 4u
/* How long a source abandoned as slow is avoided by the download that
 * abandoned it (and, told by ReportError "slow", by the supernode for that
 * requester): long enough for the rest of an endgame, short enough that a
 * peer busy for a moment is used again. */
#define DF_ENDGAME_AVOID_MS 30000u

/* Rule 1: true when every piece the download lacks is in flight or being
 * hashed (have + inflight + hashing >= piece_count) and something is in
 * flight. */
bool df_endgame_active(uint32_t piece_count, uint32_t have, uint32_t inflight, uint32_t hashing);

typedef struct {
    uint64_t age_ms;      /* since the fetch started */
    uint64_t got;         /* bytes of the piece received so far */
    uint64_t length;      /* the piece's length */
    uint32_t inflight;    /* fetches of the download in flight, this one included */
    uint64_t elapsed_ms;  /* since the download started */
    uint64_t done;        /* bytes of the download verified */
} df_endgame_fetch_t;

/* Rules 2 and 3 for one fetch in the endgame.  False when the download has
 * no rate yet (done or elapsed_ms 0) or the input is impossible (got >
 * length, inflight 0). */
bool df_endgame_should_abandon(const df_endgame_fetch_t *f);

#endif
